// RMSNorm kernel (contract in norm.h): one warp per row, lanes stride over the row so every
// load instruction of the warp is one coalesced 128-byte (fp32) or 64-byte (bf16) access.
#pragma once

#include "norm/norm.h"

namespace kimi::cuda::norm {

__device__ inline float load_f(const float* p) { return *p; }
__device__ inline float load_f(const bf16* p) { return __bfloat162float(*p); }

template <typename T>
__global__ void __launch_bounds__(128) rmsnorm_kernel(RmsNormParams p) {
  const int row = blockIdx.x * 4 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= p.rows) return;
  const int src = p.row_index ? p.row_index[row] : row;
  const T* x = static_cast<const T*>(p.x) + int64_t(src) * p.x_stride;
  bf16* y = p.y ? p.y + int64_t(row) * p.y_stride : nullptr;
  float* yf = p.y_f32 ? p.y_f32 + int64_t(row) * p.y_stride : nullptr;
  float ss = 0.f;
  for (int d = lane; d < p.dim; d += 32) {
    const float v = load_f(x + d);
    ss += v * v;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  const float inv = rsqrtf(ss / float(p.dim) + p.eps);
  for (int d = lane; d < p.dim; d += 32) {
    const float v = load_f(x + d) * inv * p.weight[d];
    if (y) y[d] = __float2bfloat16(v);
    if (yf) yf[d] = v;
  }
}

}  // namespace kimi::cuda::norm
