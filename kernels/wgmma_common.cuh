// wgmma (sm_90a) building blocks shared by the kernel families that use them (MoE grouped GEMM,
// MLA expanded prefill): the shared-memory descriptor of a 128-byte-swizzled K-major tile and the
// fence / commit / wait instructions.
#pragma once

#include <cstdint>

namespace kimi::cuda {

// Shared-memory matrix descriptor: K-major tile with 128-byte swizzle, 8-row groups 1024 bytes
// apart (stride byte offset); the leading byte offset is unused for this layout.
__device__ __forceinline__ uint64_t wgmma_desc(uint32_t smem_addr) {
  return uint64_t((smem_addr & 0x3ffff) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) |
         (uint64_t(1) << 62);
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accumulator reads or writes across the asynchronous MMAs.
template <int N>
__device__ __forceinline__ void fence_acc(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

}  // namespace kimi::cuda
