// Device helpers shared by the KDA kernels (fp32 math on bf16 storage).
#pragma once

#include <cuda_bf16.h>

#include "async_copy.cuh"
#include "gemm/stream_mma.cuh"
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

// The decay α = exp(g) of a gate g = −exp(A_log)·softplus(f + dt_bias); x = f + dt_bias.
__device__ __forceinline__ float gate_decay(float a_log, float x) {
  return expf(-expf(a_log) * softplus(x));
}

// The decode kernels' folded up-projections (f = W_fb·f_low, z = W_gb·g_low): 16 rows of a
// [·, 128] bf16 weight times one 128-vector on the tensor cores, the weights as the A operand (as
// in gemm/stream_mma.cuh) and the vector as every column of B. k is permuted (a dot product does
// not care): lane (g = lane/4, t = lane%4) holds the 64-byte piece t of rows g and g + 8 (w[0..3],
// w[4..7]) and the same piece of the vector (x[0..3]); mma step s takes words 2s, 2s+1 of each as
// the fragments' logical k {2t, 2t+1} and {2t+8, 2t+9}.
__device__ __forceinline__ void load_up_rows(uint4 (&w)[8], const bf16* row0, int lane) {
  const uint4* r =
      reinterpret_cast<const uint4*>(row0 + size_t(lane >> 2) * kKdaD) + (lane & 3) * 4;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    w[i] = __ldg(r + i);
    w[4 + i] = __ldg(r + kKdaD + i);  // row g + 8: 8 rows of 16 pieces further
  }
}
// Rows g and g + 8 of the product (in every lane of quad g).
__device__ __forceinline__ float2 up_rows_apply(const uint4 (&w)[8], const uint4 (&x)[4]) {
  float c0[4] = {0.f, 0.f, 0.f, 0.f}, c1[4] = {0.f, 0.f, 0.f, 0.f};  // even and odd steps
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    gv_mma(c0, w[i].x, w[4 + i].x, w[i].y, w[4 + i].y, x[i].x, x[i].y);
    gv_mma(c1, w[i].z, w[4 + i].z, w[i].w, w[4 + i].w, x[i].z, x[i].w);
  }
  return make_float2(c0[0] + c1[0], c0[2] + c1[2]);
}

// One warp's share of the folded gates or z: rows ur and ur + 8 of the product with the 128-wide
// low-rank vector at src (this lane's piece, as load_up_rows takes them), stored by the quad's
// first lane: um 0 as the decays α into gate (dtb0, dtb1: the rows' dt_bias), um 1 into z.
__device__ __forceinline__ void up_rows_store(const uint4 (&w)[8], const uint4* src, int um, int ur,
                                              int lane, float a_log, float dtb0, float dtb1,
                                              float* gate, float* z) {
  uint4 xv[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) xv[i] = src[i];
  const float2 v = up_rows_apply(w, xv);
  if ((lane & 3) == 0) {
    if (um == 0) {
      gate[ur] = gate_decay(a_log, v.x + dtb0);
      gate[ur + 8] = gate_decay(a_log, v.y + dtb1);
    } else {
      z[ur] = v.x;
      z[ur + 8] = v.y;
    }
  }
}

__device__ __forceinline__ float4 fma4(float a, float4 x, float4 y) {
  return make_float4(fmaf(a, x.x, y.x), fmaf(a, x.y, y.y), fmaf(a, x.z, y.z), fmaf(a, x.w, y.w));
}

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
