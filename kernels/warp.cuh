// Warp-level reductions shared by the kernel families.
#pragma once

namespace kimi::cuda {

// Sum over the 32 lanes (every lane gets it), by xor butterfly.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

}  // namespace kimi::cuda
