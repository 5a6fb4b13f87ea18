// Kernels of the fused small-decode MLA chain (contracts in mla_layer.h).
//
// mla_q_prep_kernel: grid (5, max(H, T)), 256 threads.
//   CTA (s < 4, h): W_UK(h)'s 128 rows × columns 128s .. +128 (32 KB) in registers before the
//   PDL wait: thread (kg = tid / 16, cp = tid % 16) holds rows 8kg .. +8, columns 8cp .. +8 (a
//   warp reads two whole 256-byte row pieces). Per token: its 8 q_nope values (fp32 from L2,
//   rounded to bf16), 8 fp32 sums over its rows, then the 16 row groups add in order through
//   shared memory; threads < 128 store one column each in bf16.
//   CTA (4, y): head y's q rows in bf16 (y < H), token y's cache row (y < T; cache_write_token).
// mla_uv_kernel: grid (4, H), clusters of 4 along x (cluster rank = latent slice r: columns
//   k0 = 128r .. +128), 256 threads.
//   W_UV(h) rows 0..127 × columns k0 .. +128 (32 KB) in registers before the PDL wait: thread
//   (r0 = tid / 16, kp = tid % 16) holds rows r0 + 16i (i < 8), columns 8kp .. +8. Per token:
//     merge (num_splits > 0): M = max of the splits' m (every thread a stride of splits, block
//       reduction); warp g then sums the splits g, g + 8, ... with w = e^{m − M}: lane l its 4
//       columns (float4 from L2) and Σ w·l; the 8 warps add in order; u = bf16(acc / den);
//     or u read as written by the unsplit item;
//     product: 8 rows × 8 columns per thread, the 16 threads of a row add by shuffles; ranks 1-3
//       store their 128 sums into rank 0's shared memory (double-buffered by token) and a
//       cluster barrier hands them over; rank 0 adds ranks 0..3 in order and stores bf16.
//   The next launch (o_proj) may start at entry. Measured on H200 (docs/perf-log.md, session
//   10): a variant that let it start only after the product and merged the splits in one round
//   of loads (per-warp running maximum) ran the layer 1.4 us slower at batch 1, 4k.
#pragma once

#include <cuda_bf16.h>

#include "async_copy.cuh"
#include "mla/mla_cache_write.cuh"
#include "mla/mla_layer.h"
#include "pdl.cuh"

namespace kimi::cuda::mla {

constexpr int kLayerThreads = 256;
constexpr int kNope = 128, kVDim = 128;  // W_UK rows, W_UV rows per head

__device__ __forceinline__ float bf16_round(float x) {
  return __bfloat162float(__float2bfloat16(x));
}

__device__ __forceinline__ void bf16x8_unpack(const uint4& raw, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = __bfloat1622float2(h[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}

__device__ __forceinline__ uint32_t bf16x2_bits(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// A 32-bit store into the shared memory of another CTA of the cluster (addr from cluster_map).
__device__ __forceinline__ void st_cluster_f32(unsigned addr, float v) {
  asm volatile("st.shared::cluster.f32 [%0], %1;\n" ::"r"(addr), "f"(v) : "memory");
}

__global__ void __launch_bounds__(kLayerThreads) mla_q_prep_kernel(MlaQPrepParams p) {
  __shared__ float red[16][128];
  const int tid = threadIdx.x, slice = blockIdx.x, y = blockIdx.y;
  const int H = p.num_heads, T = p.num_tokens;
  pdl_launch_dependents();  // PDL (launch.h): the attention's prologue may start
  if (slice == 4) {
    pdl_wait();
    if (y < H)
      for (int i = tid; i < T * (kMlaQk / 8); i += kLayerThreads) {
        const int t = i / (kMlaQk / 8), c = i % (kMlaQk / 8);
        const int64_t off = (int64_t(t) * H + y) * kMlaQk + 8 * c;
        const float4 a = __ldcg(reinterpret_cast<const float4*>(p.q32 + off));
        const float4 b = __ldcg(reinterpret_cast<const float4*>(p.q32 + off) + 1);
        *reinterpret_cast<uint4*>(p.q + off) = make_uint4(
            bf16x2_bits(a.x, a.y), bf16x2_bits(a.z, a.w), bf16x2_bits(b.x, b.y), bf16x2_bits(b.z, b.w));
      }
    if (y < T) cache_write_token(p.cache, y);  // uniform over the CTA
    return;
  }
  if (y >= H) {
    pdl_wait();
    return;
  }
  const int cp = tid % 16, kg = tid / 16, n0 = 128 * slice;
  const bf16* W = p.kv_b + (int64_t(y) * 2 * kNope + 8 * kg) * kMlaLat + n0 + 8 * cp;
  uint4 w[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) w[i] = __ldg(reinterpret_cast<const uint4*>(W + i * kMlaLat));
  pdl_wait();
  for (int t = 0; t < T; ++t) {
    const float* qs = p.q32 + (int64_t(t) * H + y) * kMlaQk + 8 * kg;
    const float4 a = __ldcg(reinterpret_cast<const float4*>(qs));
    const float4 b = __ldcg(reinterpret_cast<const float4*>(qs) + 1);
    const float q[8] = {bf16_round(a.x), bf16_round(a.y), bf16_round(a.z), bf16_round(a.w),
                        bf16_round(b.x), bf16_round(b.y), bf16_round(b.z), bf16_round(b.w)};
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      float wf[8];
      bf16x8_unpack(w[i], wf);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] = fmaf(q[i], wf[j], acc[j]);
    }
    if (t > 0) __syncthreads();  // the previous token's sums are read
    *reinterpret_cast<float4*>(&red[kg][8 * cp]) = make_float4(acc[0], acc[1], acc[2], acc[3]);
    *reinterpret_cast<float4*>(&red[kg][8 * cp + 4]) = make_float4(acc[4], acc[5], acc[6], acc[7]);
    __syncthreads();
    if (tid < 128) {
      float s = 0.f;
#pragma unroll
      for (int g = 0; g < 16; ++g) s += red[g][tid];
      p.q_abs[(int64_t(t) * H + y) * kMlaLat + n0 + tid] = __float2bfloat16(s);
    }
  }
}

__global__ void __launch_bounds__(kLayerThreads) mla_uv_kernel(MlaUvParams p) {
  constexpr int kWarps = kLayerThreads / 32;
  __shared__ float4 acc_sh[kWarps][32];
  __shared__ float den_sh[kWarps], max_sh[kWarps];
  __shared__ __align__(16) float u_sh[128];
  __shared__ float part[128];
  __shared__ float recv[2][3][128];  // rank 0: ranks 1-3's sums, by token parity
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int h = blockIdx.y, H = p.num_heads, T = p.num_tokens;
  const unsigned rank = blockIdx.x;  // the cluster spans x: rank = slice
  const int k0 = 128 * int(rank);
  pdl_launch_dependents();  // PDL (launch.h): o_proj's weight prologue may start
  cluster_arrive_release();  // rank 0 runs before the first remote store (waited below)

  const int kp = tid % 16, r0 = tid / 16;
  const bf16* W = p.kv_b + (int64_t(h) * 2 * kNope + kNope + r0) * kMlaLat + k0 + 8 * kp;
  uint4 w[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) w[i] = __ldg(reinterpret_cast<const uint4*>(W + 16 * i * kMlaLat));
  pdl_wait();
  cluster_wait_acquire();

  const int64_t step = int64_t(H) * kMlaPartialStride;
  for (int t = 0; t < T; ++t) {
    const int ns = p.num_splits[t];
    if (ns > 0) {
      const float* P0 = p.partials + (int64_t(p.split_base[t]) * H + h) * kMlaPartialStride;
      float mx = -INFINITY;
      for (int k = tid; k < ns; k += kLayerThreads) mx = fmaxf(mx, __ldcg(P0 + k * step + kMlaLat));
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      if (lane == 0) max_sh[warp] = mx;
      __syncthreads();
      float M = max_sh[0];
#pragma unroll
      for (int g = 1; g < kWarps; ++g) M = fmaxf(M, max_sh[g]);
      float den = 0.f;
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
      for (int k = warp; k < ns; k += kWarps) {
        const float* P = P0 + k * step;
        const float mk = __ldcg(P + kMlaLat), lk = __ldcg(P + kMlaLat + 1);
        const float4 v = __ldcg(reinterpret_cast<const float4*>(P + k0) + lane);
        const float wk = mk == -INFINITY ? 0.f : __expf(mk - M);
        den += wk * lk;
        acc.x += wk * v.x;
        acc.y += wk * v.y;
        acc.z += wk * v.z;
        acc.w += wk * v.w;
      }
      acc_sh[warp][lane] = acc;
      if (lane == 0) den_sh[warp] = den;
      __syncthreads();
      if (tid < 32) {
        float4 s = acc_sh[0][tid];
        float d = den_sh[0];
#pragma unroll
        for (int g = 1; g < kWarps; ++g) {
          const float4 v = acc_sh[g][tid];
          d += den_sh[g];
          s.x += v.x;
          s.y += v.y;
          s.z += v.z;
          s.w += v.w;
        }
        const float inv = d > 0.f ? 1.f / d : 0.f;
        *reinterpret_cast<float4*>(&u_sh[4 * tid]) = make_float4(
            bf16_round(s.x * inv), bf16_round(s.y * inv), bf16_round(s.z * inv), bf16_round(s.w * inv));
      }
    } else if (tid < 128) {
      u_sh[tid] = __bfloat162float(__ldcg(p.u + (int64_t(t) * H + h) * kMlaLat + k0 + tid));
    }
    __syncthreads();
    float uk[8];
    {
      const float4 a = *reinterpret_cast<const float4*>(&u_sh[8 * kp]);
      const float4 b = *reinterpret_cast<const float4*>(&u_sh[8 * kp + 4]);
      uk[0] = a.x, uk[1] = a.y, uk[2] = a.z, uk[3] = a.w;
      uk[4] = b.x, uk[5] = b.y, uk[6] = b.z, uk[7] = b.w;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      float wf[8];
      bf16x8_unpack(w[i], wf);
      float s = 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) s = fmaf(wf[j], uk[j], s);
#pragma unroll
      for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (kp == 0) part[r0 + 16 * i] = s;
    }
    __syncthreads();
    const int buf = t & 1;
    if (rank > 0 && tid < 128) st_cluster_f32(cluster_map(&recv[buf][rank - 1][tid], 0), part[tid]);
    cluster_arrive_release();
    cluster_wait_acquire();
    if (rank == 0 && tid < 128) {
      const float s = part[tid] + recv[buf][0][tid] + recv[buf][1][tid] + recv[buf][2][tid];
      p.out[(int64_t(t) * H + h) * kVDim + tid] = __float2bfloat16(s);
    }
  }
}

}  // namespace kimi::cuda::mla
