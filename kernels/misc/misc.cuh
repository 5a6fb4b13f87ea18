// Element-wise kernels (contracts in misc.h). Grid-stride loops; every warp access is coalesced.
#pragma once

#include "misc/misc.h"
#include "pdl.cuh"

namespace kimi::cuda::misc {

__global__ void embedding_kernel(EmbeddingParams p) {
  pdl_launch_dependents();  // PDL (launch.h): everything below may depend on the previous kernel
  pdl_wait();
  const int64_t n = int64_t(p.num_tokens) * p.dim;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / p.dim, d = i % p.dim;
    const int id = p.ids[t];
    p.x[i] = (id >= 0 && id < p.vocab) ? __bfloat162float(p.table[int64_t(id) * p.dim + d]) : 0.f;
  }
}

__device__ inline void store_as(bf16* p, float v) { *p = __float2bfloat16(v); }
__device__ inline void store_as(float* p, float v) { *p = v; }

template <typename OUT>
__global__ void silu_mul_kernel(SiluMulParams<OUT> p) {
  pdl_launch_dependents();  // PDL (launch.h): everything below may depend on the previous kernel
  pdl_wait();
  const int64_t n = p.rows * p.dim;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / p.dim, d = i % p.dim;
    const float g = p.gate_up[r * 2 * p.dim + d];
    const float u = p.gate_up[r * 2 * p.dim + p.dim + d];
    store_as(p.out + i, g / (1.f + __expf(-g)) * u);
  }
}

__global__ void split_bf16_kernel(SplitParams p) {
  pdl_launch_dependents();  // PDL (launch.h): everything below may depend on the previous kernel
  pdl_wait();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float x = p.x[i];
    const bf16 hi = __float2bfloat16(x);
    p.hi[i] = hi;
    if (p.lo) p.lo[i] = __float2bfloat16(x - __bfloat162float(hi));  // x − hi is exact in fp32
  }
}

// splitmix64 finaliser: a counter-based generator (element i depends only on seed and i).
__device__ inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__global__ void random_fill_kernel(RandomFillParams p) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const uint64_t h = mix64(p.seed + 0x9e3779b97f4a7c15ull * uint64_t(i + 1));
    const float u1 = (float(uint32_t(h >> 40)) + 0.5f) * (1.f / 16777216.f);  // (0, 1)
    const float u2 = float(uint32_t(h & 0xffffffu)) * (1.f / 16777216.f);     // [0, 1)
    float v = 0.f;
    switch (p.dist) {
      case RandomDist::kNormal:
        v = p.a + p.b * sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
        break;
      case RandomDist::kUniform:
        v = p.a + (p.b - p.a) * u2;
        break;
      case RandomDist::kALog:
        v = logf(1.f + 15.f * u2);
        break;
      case RandomDist::kDtBias: {
        const float dt = expf(logf(1e-3f) + u2 * (logf(1e-1f) - logf(1e-3f)));
        v = dt + logf(-expm1f(-dt));
        break;
      }
    }
    if (p.out_bf16)
      static_cast<bf16*>(p.out)[i] = __float2bfloat16(v);
    else
      static_cast<float*>(p.out)[i] = v;
  }
}

}  // namespace kimi::cuda::misc
