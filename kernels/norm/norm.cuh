// RMSNorm kernel (contract in norm.h): one 256-thread CTA per row; thread i holds values
// i, i + 256, ... in registers (coalesced loads, all in flight at once).
#pragma once

#include "norm/norm.h"
#include "pdl.cuh"

namespace kimi::cuda::norm {

__device__ inline float load_f(const float* p) { return *p; }
__device__ inline float load_f(const bf16* p) { return __bfloat162float(*p); }

constexpr int kThreads = 256;
constexpr int kPerThread = 16;  // rows up to 256 · 16 = 4096 values stay in registers

// One CTA per row: every thread loads its (up to 16) values at once, so a row costs one memory
// latency instead of one per 32 values (a warp per row looped over 2304 values 72 times).
template <typename T>
__global__ void __launch_bounds__(kThreads) rmsnorm_kernel(RmsNormParams p) {
  pdl_launch_dependents();  // PDL (launch.h): everything below may depend on the previous kernel
  pdl_wait();
  const int row = blockIdx.x, tid = threadIdx.x;
  const int src = p.row_index ? p.row_index[row] : row;
  const T* x = static_cast<const T*>(p.x) + int64_t(src) * p.x_stride;
  bf16* y = p.y ? p.y + int64_t(row) * p.y_stride : nullptr;
  float* yf = p.y_f32 ? p.y_f32 + int64_t(row) * p.y_stride : nullptr;
  float v[kPerThread];
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int d = tid + i * kThreads;
    v[i] = d < p.dim ? load_f(x + d) : 0.f;
    ss += v[i] * v[i];
  }
  for (int d = tid + kPerThread * kThreads; d < p.dim; d += kThreads) {  // wider rows
    const float t = load_f(x + d);
    ss += t * t;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  __shared__ float warp_ss[kThreads / 32];
  if (threadIdx.x % 32 == 0) warp_ss[threadIdx.x / 32] = ss;
  __syncthreads();
  ss = 0.f;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) ss += warp_ss[w];
  const float inv = rsqrtf(ss / float(p.dim) + p.eps);
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int d = tid + i * kThreads;
    if (d < p.dim) {
      const float o = v[i] * inv * p.weight[d];
      if (y) y[d] = __float2bfloat16(o);
      if (yf) yf[d] = o;
    }
  }
  for (int d = tid + kPerThread * kThreads; d < p.dim; d += kThreads) {
    const float o = load_f(x + d) * inv * p.weight[d];
    if (y) y[d] = __float2bfloat16(o);
    if (yf) yf[d] = o;
  }
}

}  // namespace kimi::cuda::norm
