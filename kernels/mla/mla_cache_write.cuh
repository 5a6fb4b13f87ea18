// The latent cache write of one new token by one CTA (contract in mla.h, run_mla_cache_write):
// RMSNorm of ĉ (fp32 in), k_pe passed through, as a bf16 row or an fp8 record. Used by
// mla_cache_write_kernel (mla.cuh) and the fused decode q kernel (mla_layer.cuh).
#pragma once

#include <cuda_bf16.h>

#include "mla/mla.h"
#include "mla/mla_fp8.cuh"

namespace kimi::cuda::mla {

__device__ inline int seq_of_token(const int* cu, int num_seqs, int t) {
  int lo = 0, hi = num_seqs - 1;  // largest s with cu[s] <= t
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu[mid] <= t) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// New token t's latent row into the cache (normed ĉ and k_pe, bf16 or fp8 record) by the CTA's
// first 128 threads; every thread of the CTA (blockDim.x >= 128, a multiple of 32) must call it:
// the others only pass its barriers. Shared by mla_cache_write_kernel and the fused decode
// q kernel (mla_layer.cuh).
__device__ __forceinline__ void cache_write_token(const MlaCacheWriteParams& p, int t) {
  __shared__ float warp_ss[4];
  __shared__ float warp_mx[4][4];  // [warp][group]
  const int tid = threadIdx.x;
  const bool on = tid < 128;  // warp-uniform
  const int s = seq_of_token(p.cu_seqlens, p.num_seqs, t);
  const int n_new = p.cu_seqlens[s + 1] - p.cu_seqlens[s];
  const int pos = p.context_lens[s] - n_new + (t - p.cu_seqlens[s]);
  const int blk = p.block_tables[int64_t(s) * p.max_blocks_per_seq + pos / kMlaBlock];
  const int64_t row = int64_t(blk) * kMlaBlock + pos % kMlaBlock;
  const float* src = p.latent + int64_t(t) * kMlaRow;
  float v[4] = {0.f, 0.f, 0.f, 0.f}, ss = 0.f;
  if (on) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[i] = src[tid + 128 * i];
      ss += v[i] * v[i];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (tid % 32 == 0) warp_ss[tid / 32] = ss;
  }
  __syncthreads();
  ss = warp_ss[0] + warp_ss[1] + warp_ss[2] + warp_ss[3];
  const float inv = rsqrtf(ss / float(kMlaLat) + p.eps);
  if (!p.cache8) {
    if (!on) return;
    bf16* dst = p.cache + row * kMlaRow;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int c = tid + 128 * i;
      dst[c] = __float2bfloat16(v[i] * inv * p.norm_weight[c]);
    }
    if (tid < kMlaPe) dst[kMlaLat + tid] = __float2bfloat16(src[kMlaLat + tid]);
    return;
  }
  static_assert(kMlaLat / kMlaFp8Group == 4 && kMlaFp8Group == 128);
  uint8_t* dst = p.cache8 + row * kMlaFp8Row;
  float y[4], mx[4];
  if (on) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      y[i] = v[i] * inv * p.norm_weight[tid + 128 * i];
      mx[i] = fabsf(y[i]);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], o));
    }
    if (tid % 32 == 0)
#pragma unroll
      for (int i = 0; i < 4; ++i) warp_mx[tid / 32][i] = mx[i];
  }
  __syncthreads();
  if (!on) return;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float amax =
        fmaxf(fmaxf(warp_mx[0][i], warp_mx[1][i]), fmaxf(warp_mx[2][i], warp_mx[3][i]));
    // The steps of cpu::mla_fp8_quantize (power-of-two scale, exact scaling): equal codes.
    // k = e − 9 + (f > 0.875) for amax = f · 2^e, f in [0.5, 1), from the bits of a normal amax.
    const int bits = __float_as_int(amax), k = (bits >> 23) - 135 + ((bits & 0x7fffff) > 0x600000);
    const bool ok = amax >= 1.17549435e-38f && k > -127 && k < 127;  // else scale 0 (all zero)
    const float inv_s = ok ? __int_as_float((127 - k) << 23) : 0.f;
    dst[tid + 128 * i] = fp8_code(__fmul_rn(y[i], inv_s));
    if (tid == 0)
      reinterpret_cast<float*>(dst + kMlaFp8ScaleOff)[i] = ok ? __int_as_float((127 + k) << 23) : 0.f;
  }
  if (tid < kMlaPe)
    reinterpret_cast<bf16*>(dst + kMlaFp8PeOff)[tid] = __float2bfloat16(src[kMlaLat + tid]);
}

}  // namespace kimi::cuda::mla
