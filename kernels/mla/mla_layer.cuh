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
//     merge (num_splits > 0): warp g takes the splits g, g + 8, ..., 4 at a time with all their
//       loads (m, l and lane l's 4 columns, float4 from L2) in flight, and merges them online
//       (running maximum Mw, acc and Σ w·l rescaled when it moves): one round of L2 latency per 32
//       splits instead of a maximum pass before the sums; the 8 warps meet in order through
//       shared memory (each rescaled to the largest Mw); u = bf16(acc / den);
//     or u read as written by the unsplit item;
//     product: 8 rows × 8 columns per thread, the 16 threads of a row add by shuffles; ranks 1-3
//       store their 128 sums into rank 0's shared memory (double-buffered by token) and a
//       cluster barrier hands them over; rank 0 adds ranks 0..3 in order and stores bf16.
//   The next launch (o_proj) is let start after the last token's product: started at entry, its
//   CTAs (32 K registers each) took the SMs' slots during the attention and o_proj ran 1.2 us
//   longer after this kernel (bench_mla --layer, H200).
//   Both kernels are capped at 128 registers (2 CTAs, or one beside an o_proj CTA, per SM).
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

__global__ void __launch_bounds__(kLayerThreads, 2) mla_q_prep_kernel(MlaQPrepParams p) {
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

// kEarly: let the next launch (o_proj) start at entry rather than after the product (comparison).
template <bool kEarly>
__global__ void __launch_bounds__(kLayerThreads, 2) mla_uv_kernel(MlaUvParams p) {
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
  if (kEarly) pdl_launch_dependents();  // PDL (launch.h): o_proj's weight prologue may start
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
      // One round of loads: warp g merges its splits g, g + 8, ... online (running maximum Mw),
      // kBatch at a time with all their loads in flight; the warps' results meet at the end.
      constexpr int kBatch = 4;
      const float* P0 = p.partials + (int64_t(p.split_base[t]) * H + h) * kMlaPartialStride;
      float Mw = -INFINITY, den = 0.f;
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int kb = warp; kb < ns; kb += kBatch * kWarps) {
        float mk[kBatch], lk[kBatch];
        float4 v[kBatch];
#pragma unroll
        for (int j = 0; j < kBatch; ++j) {
          const int k = kb + j * kWarps;
          const float* P = P0 + (k < ns ? k : 0) * step;
          mk[j] = k < ns ? __ldcg(P + kMlaLat) : -INFINITY;
          lk[j] = k < ns ? __ldcg(P + kMlaLat + 1) : 0.f;
          v[j] = k < ns ? __ldcg(reinterpret_cast<const float4*>(P + k0) + lane)
                        : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int j = 0; j < kBatch; ++j) {
          if (mk[j] == -INFINITY) continue;  // an empty split (or none): weight 0
          if (mk[j] > Mw) {                  // warp-uniform
            const float r = Mw == -INFINITY ? 0.f : __expf(Mw - mk[j]);
            Mw = mk[j];
            den *= r;
            acc.x *= r;
            acc.y *= r;
            acc.z *= r;
            acc.w *= r;
          }
          const float wk = __expf(mk[j] - Mw);
          den += wk * lk[j];
          acc.x += wk * v[j].x;
          acc.y += wk * v[j].y;
          acc.z += wk * v[j].z;
          acc.w += wk * v[j].w;
        }
      }
      acc_sh[warp][lane] = acc;
      if (lane == 0) {
        den_sh[warp] = den;
        max_sh[warp] = Mw;
      }
      __syncthreads();
      if (tid < 32) {
        float M = max_sh[0];
#pragma unroll
        for (int g = 1; g < kWarps; ++g) M = fmaxf(M, max_sh[g]);
        float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
        float d = 0.f;
#pragma unroll
        for (int g = 0; g < kWarps; ++g) {
          if (max_sh[g] == -INFINITY) continue;  // a warp with no (non-empty) split
          const float r = __expf(max_sh[g] - M);
          const float4 v = acc_sh[g][tid];
          d += r * den_sh[g];
          s.x += r * v.x;
          s.y += r * v.y;
          s.z += r * v.z;
          s.w += r * v.w;
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
    if (!kEarly && t == T - 1) pdl_launch_dependents();  // o_proj's CTAs over the tail
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

// mla_o_proj_kernel: grid ceil(N / R), 256 threads, R·K·2 bytes of dynamic shared memory (the
// CTA's W_o rows n0 .. n0 + R, one bulk copy per row, issued by thread 0 before the PDL wait).
// Thread tid takes the 8-wide k pieces tid, tid + 256, ... (at most 4: K <= 8192).
__global__ void __launch_bounds__(kLayerThreads, 2) mla_o_proj_kernel(MlaOProjParams p, int R) {
  constexpr int kWarps = kLayerThreads / 32, kMaxPieces = 4;
  extern __shared__ __align__(128) unsigned char op_smem[];
  __shared__ uint64_t bar;
  __shared__ float red[kWarps][kMlaOProjMaxRows];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int K = p.in_dim, N = p.out_dim, P = K / 8;
  const int n0 = blockIdx.x * R, rows = min(R, N - n0);
  const bf16* ws = reinterpret_cast<const bf16*>(op_smem);  // [rows][K]
  if (tid == 0) {
    mbar_init(&bar, 1);
    fence_mbar_init();
    mbar_arrive_expect_tx(&bar, unsigned(rows) * K * 2);
    const uint64_t policy = policy_evict_first();
    for (int r = 0; r < rows; ++r)
      bulk_g2s(op_smem + size_t(r) * K * 2, p.w + int64_t(n0 + r) * K, unsigned(K) * 2, &bar, policy);
  }
  __syncthreads();  // the barrier is initialised
  pdl_wait();
  pdl_launch_dependents();
  for (int t = 0; t < p.num_tokens; ++t) {
    float a[kMaxPieces][8];
#pragma unroll
    for (int i = 0; i < kMaxPieces; ++i) {
      const int pc = tid + kLayerThreads * i;
      uint4 raw = make_uint4(0, 0, 0, 0);
      if (pc < P) raw = __ldcg(reinterpret_cast<const uint4*>(p.in + int64_t(t) * K) + pc);
      bf16x8_unpack(raw, a[i]);
    }
    if (t == 0) mbar_wait(&bar, 0);
    float acc[kMlaOProjMaxRows];
#pragma unroll
    for (int r = 0; r < kMlaOProjMaxRows; ++r) {
      acc[r] = 0.f;
      if (r >= rows) continue;
#pragma unroll
      for (int i = 0; i < kMaxPieces; ++i) {
        const int pc = tid + kLayerThreads * i;
        if (pc >= P) break;
        float wf[8];
        bf16x8_unpack(*reinterpret_cast<const uint4*>(ws + size_t(r) * K + 8 * pc), wf);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[r] = fmaf(wf[j], a[i][j], acc[r]);
      }
    }
    if (t > 0) __syncthreads();  // the previous token's red is read
#pragma unroll
    for (int r = 0; r < kMlaOProjMaxRows; ++r) {
      if (r >= rows) break;
      float v = acc[r];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0) red[warp][r] = v;
    }
    __syncthreads();
    if (tid < rows) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) s += red[w][tid];
      float* xp = p.x + int64_t(t) * N + n0 + tid;
      *xp = p.beta != 0.f ? fmaf(p.beta, __ldcg(xp), s) : s;
    }
  }
}

}  // namespace kimi::cuda::mla
