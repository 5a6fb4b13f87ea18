// Grid-wide barrier of a launch whose CTAs are all resident at once (the caller makes sure: a grid
// no larger than the occupancy API's count, and launch_dependents before any wait, so that a PDL
// dependent cannot take a multiprocessor a CTA of this grid still needs). Used by the fused MoE
// decode block (moe/moe_decode.cuh) and the KDA decode with o_proj (kda/kda_decode.cuh).
//
// Two counters, bar[0] and bar[1], zero before the launch: bar[0] counts arrivals during the
// launch (barrier b is passed once it reaches b·G), bar[1] counts CTAs that are done; the last one
// done zeroes both for the next launch (every CTA has passed its last wait by then). An arrival is
// one fire-and-forget release; work independent of the other CTAs goes between arrive and wait.
#pragma once

namespace kimi::cuda {

__device__ __forceinline__ unsigned ld_acquire_gpu(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void grid_arrive(unsigned* bar) {
  __syncthreads();  // the CTA's writes before the arrival
  if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(bar) : "memory");
}
__device__ __forceinline__ void grid_wait(const unsigned* bar, unsigned target) {
  if (threadIdx.x == 0)
    while (ld_acquire_gpu(bar) < target) {
    }
  __syncthreads();
}
__device__ __forceinline__ void grid_done(unsigned* bar, unsigned G) {
  if (threadIdx.x == 0 && atomicAdd(bar + 1, 1u) == G - 1) {
    atomicExch(bar, 0u);
    atomicExch(bar + 1, 0u);
  }
}

}  // namespace kimi::cuda
