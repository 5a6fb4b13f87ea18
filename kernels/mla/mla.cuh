// MLA kernels (contracts in mla.h).
//
// mla_cache_write_kernel: one 128-thread CTA per new token (cache_write_token): sum of squares
//   of ĉ (512 fp32) by a block reduction, then ĉ·rsqrt(mean + eps)·w and k_pe as bf16 into the
//   token's cache row.
//   fp8 cache: thread i's values i, i + 128, i + 256, i + 384 are one per scale group, so each
//   group's amax is one more block reduction; codes (scale 2^k, subnormal codes flushed), k_pe
//   and scales into the token's record.
//
// mla_attn_kernel<QB>: one CTA (8 warps) per (work item, group of 8 heads); warp w owns head
//   h0 + w and the item's QB query tokens. Lane l owns latent channels [16l, 16l + 16) and pe
//   channels [512 + 2l, 512 + 2l + 2), so a cache row read by the warp is one contiguous
//   1152-byte sweep. Per tile of 32 cache rows (staged in shared memory, shared by the 8 heads):
//     1. partial dots of the lane's 18 channels with each of the 32 rows,
//     2. a butterfly reduce-scatter leaves row (j0 + l)'s full score in lane l (31 shuffles),
//     3. online softmax (running max m, sum l, fp32), u ← u·α + Σ_j p_j ĉ_j on the lane's 16
//        channels, p_j broadcast by shuffles.
//   Shared memory: q [QB][8][576] bf16 + tile [32][576] bf16 = 45 KB (QB 1) or 110 KB (QB 4).
//
// mla_combine_kernel: CTAs per (token, head) that was split (and per slice of the 512 columns):
//   u = Σ_k e^{m_k−M} u_k / Σ_k e^{m_k−M} l_k.
#pragma once

#include <cfloat>

#include "mla/mla.h"
#include "mla/mla_cache_write.cuh"
#include "mla/mla_fp8.cuh"
#include "pdl.cuh"

namespace kimi::cuda::mla {

constexpr int kTile = 32;
constexpr int kChunks = kMlaRow / 8;  // 16-byte chunks per cache row

__global__ void __launch_bounds__(128) mla_cache_write_kernel(MlaCacheWriteParams p) {
  pdl_launch_dependents();  // PDL (launch.h): everything below may depend on the previous kernel
  pdl_wait();
  cache_write_token(p, blockIdx.x);
}

__device__ inline void bf16x8_to_float(const uint4& raw, float* f) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = __bfloat1622float2(h[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}

// One butterfly step: lanes with bit OFF set keep the upper half of their 2·OFF values, the
// others the lower half, each adding its partner's copy of the half it keeps.
template <int OFF>
__device__ __forceinline__ void reduce_scatter_step(float* part, int lane) {
  const bool upper = (lane & OFF) != 0;
#pragma unroll
  for (int k = 0; k < OFF; ++k) {
    const float send = upper ? part[k] : part[k + OFF];
    const float keep = upper ? part[k + OFF] : part[k];
    part[k] = keep + __shfl_xor_sync(0xffffffffu, send, OFF);
  }
}

template <int QB>
__global__ void __launch_bounds__(256) mla_attn_kernel(MlaAttnParams p) {
  extern __shared__ uint4 smem_raw[];
  bf16* q_s = reinterpret_cast<bf16*>(smem_raw);      // [QB][8][576]
  bf16* k_s = q_s + QB * kMlaHeadsPerCta * kMlaRow;   // [32][576]
  const MlaWorkItem it = p.items[blockIdx.x];
  const int H = p.num_heads;
  const int h0 = blockIdx.y * kMlaHeadsPerCta;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = h0 + warp;

  for (int idx = threadIdx.x; idx < QB * kMlaHeadsPerCta * kChunks; idx += blockDim.x) {
    const int i = idx / (kMlaHeadsPerCta * kChunks), g = (idx / kChunks) % kMlaHeadsPerCta;
    const int c = idx % kChunks;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (i < it.nq && h0 + g < H) {
      const int64_t th = int64_t(it.q_begin + i) * H + h0 + g;
      v = c < kMlaLat / 8 ? *reinterpret_cast<const uint4*>(p.q_abs + th * kMlaLat + c * 8)
                          : *reinterpret_cast<const uint4*>(p.q + th * kMlaQk + 128 + (c - 64) * 8);
    }
    *reinterpret_cast<uint4*>(q_s + (i * kMlaHeadsPerCta + g) * kMlaRow + c * 8) = v;
  }

  float u[QB][16], m[QB], l[QB];
#pragma unroll
  for (int i = 0; i < QB; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int c = 0; c < 16; ++c) u[i][c] = 0.f;
  }
  const int* table = p.block_tables + int64_t(it.seq) * p.max_blocks_per_seq;

  for (int j0 = it.kv_begin; j0 < it.kv_end; j0 += kTile) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kTile * kChunks; idx += blockDim.x) {
      const int r = idx / kChunks, c = idx % kChunks, pos = j0 + r;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (pos < it.kv_end) {
        const int blk = table[pos / kMlaBlock];
        v = *reinterpret_cast<const uint4*>(
            p.cache + (int64_t(blk) * kMlaBlock + pos % kMlaBlock) * kMlaRow + c * 8);
      }
      *reinterpret_cast<uint4*>(k_s + r * kMlaRow + c * 8) = v;
    }
    __syncthreads();
    if (h >= H) continue;
#pragma unroll
    for (int i = 0; i < QB; ++i) {
      if (i >= it.nq) break;
      float qv[18];
      {
        const bf16* qrow = q_s + (i * kMlaHeadsPerCta + warp) * kMlaRow;
        bf16x8_to_float(*reinterpret_cast<const uint4*>(qrow + lane * 16), qv);
        bf16x8_to_float(*reinterpret_cast<const uint4*>(qrow + lane * 16 + 8), qv + 8);
        const float2 pe = __bfloat1622float2(
            *reinterpret_cast<const __nv_bfloat162*>(qrow + kMlaLat + lane * 2));
        qv[16] = pe.x;
        qv[17] = pe.y;
      }
      float part[kTile];
#pragma unroll
      for (int jj = 0; jj < kTile; ++jj) {
        const bf16* row = k_s + jj * kMlaRow;
        float kv[16];
        bf16x8_to_float(*reinterpret_cast<const uint4*>(row + lane * 16), kv);
        bf16x8_to_float(*reinterpret_cast<const uint4*>(row + lane * 16 + 8), kv + 8);
        const float2 pe =
            __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(row + kMlaLat + lane * 2));
        float acc = qv[16] * pe.x + qv[17] * pe.y;
#pragma unroll
        for (int c = 0; c < 16; ++c) acc += qv[c] * kv[c];
        part[jj] = acc;
      }
      // Reduce-scatter: afterwards part[0] in lane l is the full score of row j0 + l.
      reduce_scatter_step<16>(part, lane);
      reduce_scatter_step<8>(part, lane);
      reduce_scatter_step<4>(part, lane);
      reduce_scatter_step<2>(part, lane);
      reduce_scatter_step<1>(part, lane);
      const int j = j0 + lane, pos_i = it.q_pos0 + i;
      const float s = (j < it.kv_end && j <= pos_i) ? part[0] * p.scale : -INFINITY;
      float mx = s;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_new = fmaxf(m[i], mx);
      if (m_new == -INFINITY) continue;
      const float alpha = m[i] == -INFINITY ? 0.f : __expf(m[i] - m_new);
      const float pj = s == -INFINITY ? 0.f : __expf(s - m_new);
      float psum = pj;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, o);
      l[i] = l[i] * alpha + psum;
      m[i] = m_new;
#pragma unroll
      for (int c = 0; c < 16; ++c) u[i][c] *= alpha;
#pragma unroll 4
      for (int jj = 0; jj < kTile; ++jj) {
        const float pb = __shfl_sync(0xffffffffu, pj, jj);
        const bf16* row = k_s + jj * kMlaRow;
        float kv[16];
        bf16x8_to_float(*reinterpret_cast<const uint4*>(row + lane * 16), kv);
        bf16x8_to_float(*reinterpret_cast<const uint4*>(row + lane * 16 + 8), kv + 8);
#pragma unroll
        for (int c = 0; c < 16; ++c) u[i][c] += pb * kv[c];
      }
    }
  }
  if (h >= H) return;
#pragma unroll
  for (int i = 0; i < QB; ++i) {
    if (i >= it.nq) break;
    const int t = it.q_begin + i;
    if (it.split < 0) {
      const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
      __align__(16) bf16 o[16];
#pragma unroll
      for (int c = 0; c < 16; ++c) o[c] = __float2bfloat16(u[i][c] * inv);
      uint4* dst = reinterpret_cast<uint4*>(p.u + (int64_t(t) * H + h) * kMlaLat + lane * 16);
      dst[0] = reinterpret_cast<const uint4*>(o)[0];
      dst[1] = reinterpret_cast<const uint4*>(o)[1];
    } else {
      const int slot = p.split_base[t] + it.split;
      float* P = p.partials + (int64_t(slot) * H + h) * kMlaPartialStride;
#pragma unroll
      for (int c = 0; c < 16; ++c) P[lane * 16 + c] = u[i][c];
      if (lane == 0) {
        P[kMlaLat] = m[i];
        P[kMlaLat + 1] = l[i];
      }
    }
  }
}

// kSlices CTAs per (token, head) each merge 512 / kSlices columns; a CTA's threads form groups
// of 128 / kSlices lanes (4 columns each, float4 loads), and the groups take every kGroups-th
// split, so a batch-1 step over 100+ splits keeps enough loads in flight. The splits' (m, l) are
// staged in shared memory a chunk at a time and merged online (running max M), so the kernel
// costs two dependent rounds of loads per chunk: (m, l), then the u rows.
template <int kSlices, int kThreads>
__global__ void __launch_bounds__(kThreads) mla_combine_kernel(MlaAttnParams p) {
  pdl_launch_dependents();  // PDL (launch.h): everything below may depend on the previous kernel
  pdl_wait();
  constexpr int kLanes = kMlaLat / 4 / kSlices, kGroups = kThreads / kLanes, kChunk = 512;
  static_assert(kLanes * kGroups == kThreads && kThreads % 32 == 0);
  const int t = blockIdx.x, h = blockIdx.y, H = p.num_heads, tid = threadIdx.x;
  const int ns = p.num_splits[t];
  if (ns <= 0) return;
  const int lane = tid % kLanes, grp = tid / kLanes;
  const int col = blockIdx.z * (kMlaLat / kSlices) + 4 * lane;
  const float* P0 = p.partials + (int64_t(p.split_base[t]) * H + h) * kMlaPartialStride;
  const int64_t step = int64_t(H) * kMlaPartialStride;
  __shared__ float m_sh[kChunk], l_sh[kChunk], den_sh[kGroups];
  __shared__ float4 acc_sh[kGroups][kLanes];
  float M = -INFINITY, den = 0.f;  // den: Σ w_k l_k over this group's splits
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int base = 0; base < ns; base += kChunk) {
    const int n = min(kChunk, ns - base);
    __syncthreads();  // the previous chunk's (m, l) are consumed
    for (int k = tid; k < n; k += kThreads) {
      const float* P = P0 + (base + k) * step;
      m_sh[k] = P[kMlaLat];
      l_sh[k] = P[kMlaLat + 1];
    }
    __syncthreads();
    // Every warp reduces the chunk's maxima itself: all threads hold the same M.
    float mc = -INFINITY;
    for (int k = tid % 32; k < n; k += 32) mc = fmaxf(mc, m_sh[k]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mc = fmaxf(mc, __shfl_xor_sync(0xffffffffu, mc, o));
    const float m_new = fmaxf(M, mc);
    if (m_new == -INFINITY) continue;  // only empty splits so far (uniform over the CTA)
    const float r = M == -INFINITY ? 0.f : __expf(M - m_new);
    M = m_new;
    den *= r;
    acc.x *= r;
    acc.y *= r;
    acc.z *= r;
    acc.w *= r;
#pragma unroll 8
    for (int j = grp; j < n; j += kGroups) {
      const float mk = m_sh[j];
      const float w = mk == -INFINITY ? 0.f : __expf(mk - M);
      const float4 v = *reinterpret_cast<const float4*>(P0 + (base + j) * step + col);
      den += w * l_sh[j];
      acc.x += w * v.x;
      acc.y += w * v.y;
      acc.z += w * v.z;
      acc.w += w * v.w;
    }
  }
  acc_sh[grp][lane] = acc;
  if (lane == 0) den_sh[grp] = den;
  __syncthreads();
  if (grp != 0) return;
  den = den_sh[0];
#pragma unroll
  for (int g = 1; g < kGroups; ++g) {
    const float4 v = acc_sh[g][lane];
    den += den_sh[g];
    acc.x += v.x;
    acc.y += v.y;
    acc.z += v.z;
    acc.w += v.w;
  }
  const float inv = den > 0.f ? 1.f / den : 0.f;
  __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(p.u + (int64_t(t) * H + h) * kMlaLat + col);
  dst[0] = __floats2bfloat162_rn(acc.x * inv, acc.y * inv);
  dst[1] = __floats2bfloat162_rn(acc.z * inv, acc.w * inv);
}

}  // namespace kimi::cuda::mla
