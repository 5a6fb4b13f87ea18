// Device helpers shared by the KDA kernels (fp32 math on bf16 storage).
#pragma once

#include <cuda_bf16.h>

#include "async_copy.cuh"
#include "kda/kda.h"
#include "warp.cuh"

namespace kimi::cuda::kda {

__device__ __forceinline__ float to_f(bf16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ void store_f(bf16* p, float x) { *p = __float2bfloat16(x); }
__device__ __forceinline__ void store_f(float* p, float x) { *p = x; }
// SiLU with the hardware exp2 and reciprocal (relative error ~1e-6 at most, far below the bf16
// rounding of every q, k, v it feeds; for x < −87 the quotient is x·0 = −0). The IEEE expf and
// division cost ~4x the instructions, and the prefill prep is instruction-bound.
__device__ __forceinline__ float silu(float x) {
  return __fdividef(x, 1.f + __expf(-x));
}
__device__ __forceinline__ float sigmoid(float x) {
  return 1.f / (1.f + expf(-x));
}
// PyTorch/FLA softplus: x itself above the threshold 20.
__device__ __forceinline__ float softplus(float x) {
  return x > 20.f ? x : log1pf(expf(x));
}

__device__ __forceinline__ float4 fma4(float a, float4 x, float4 y) {
  return make_float4(fmaf(a, x.x, y.x), fmaf(a, x.y, y.y), fmaf(a, x.z, y.z), fmaf(a, x.w, y.w));
}

// Sequence of token t in a cu_seqlens array of n+1 offsets (largest s with cu[s] <= t).
// Sums a float4 over the lanes of a warp that share (lane mod kFirstLane): the butterfly over
// xor distances kFirstLane, 2·kFirstLane, ... 16. Column sums of the state tiles use it.
template <int kFirstLane>
__device__ __forceinline__ void warp_sum_lanes(float4& v) {
#pragma unroll
  for (int off = kFirstLane; off < 32; off <<= 1) {
    v.x += __shfl_xor_sync(0xffffffffu, v.x, off);
    v.y += __shfl_xor_sync(0xffffffffu, v.y, off);
    v.z += __shfl_xor_sync(0xffffffffu, v.z, off);
    v.w += __shfl_xor_sync(0xffffffffu, v.w, off);
  }
}

__device__ __forceinline__ int find_seq(const int* cu, int n, int t) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (__ldg(cu + mid) <= t)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

}  // namespace kimi::cuda::kda
