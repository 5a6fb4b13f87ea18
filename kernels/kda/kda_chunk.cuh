// KDA chunked prefill (chunk C = 64, WY/UT form; model.md §3.5), two kernels.
//
// Per chunk and head, with Γ_i = Σ_{s<=i in chunk} g_s (fp32, per key channel, non-increasing):
//   L[i,j] = β_i Σ_d k_i k_j e^{Γ_i−Γ_j} (j < i),   M[i,j] = Σ_d q_i k_j e^{Γ_i−Γ_j} (j <= i)
//   T = (I + L)^-1 Diag(β),  W = T (e^{Γ} ⊙ K),  U = T V
//   then, sequentially over the chunks of a sequence, with the fp32 state S [K, V]:
//   V' = U − W S,   O = (Q ⊙ e^{Γ}) S + M V',   S ← Diag(e^{Γ_last}) S + (K ⊙ e^{Γ_last−Γ})ᵀ V'
// Every exponent is a difference Γ_i − Γ_j with j <= i (or Γ itself), so every exp is <= 1; masked
// pairs are never exponentiated.
//
// kda_chunk_intra_kernel: grid (num_chunks, H), 256 threads, ~180 KB dynamic shared memory, fp32
//   CUDA-core math. Writes one record per (chunk, head) into the workspace (ChunkRec below); rows
//   past a short last chunk are zero, so they contribute nothing downstream.
// kda_chunk_inter_kernel: grid (128 / kInterCols, H, num_seqs), 128 threads (4 warps). A CTA owns
//   kInterCols value columns of one head's state (columns of S are independent), keeps them in
//   mma accumulator registers in fp32, and walks the sequence's chunks with the next chunk's
//   record prefetched by cp.async into a second shared-memory stage. Products on tensor cores
//   (mma.sync m16n8k16 bf16, fp32 accumulate); S and V' enter them as bf16 hi + lo pairs, so the
//   state carries ~16 mantissa bits through them and only W, Q, K, U, M are rounded to bf16.
#pragma once

#include <cstdint>

#include "kda/kda_common.cuh"

namespace kimi::cuda::kda {

constexpr int kChunk = 64;
constexpr int kInterCols = 32;

// Byte offsets inside one (chunk, head) workspace record.
struct ChunkRec {
  static constexpr size_t kW = 0;                          // bf16 [64][128]  T (e^Γ ⊙ K)
  static constexpr size_t kQ = kW + 64 * 128 * 2;          // bf16 [64][128]  Q ⊙ e^Γ
  static constexpr size_t kKrT = kQ + 64 * 128 * 2;        // bf16 [128][64]  (K ⊙ e^{Γlast−Γ})ᵀ
  static constexpr size_t kU = kKrT + 128 * 64 * 2;        // bf16 [64][128]  T V
  static constexpr size_t kM = kU + 64 * 128 * 2;          // bf16 [64][64]   causal q·k decay
  static constexpr size_t kGl = kM + 64 * 64 * 2;          // f32 [128]       e^{Γlast}
  static constexpr size_t kBytes = kGl + 128 * 4;          // 74240
};

// ------------------------------------------------------------------------------------------------
// Shared helpers.
constexpr int kLdW = 136;  // bf16 rows of 128, padded: fragment loads hit 32 distinct banks
constexpr int kLdT = 72;   // bf16 rows of 64, padded
constexpr int kLdU = 40;   // bf16 rows of 32, padded

__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4],
                                         const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ uint32_t ld32(const bf16* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}
// A fragment (16×16) of a row-major [m][k] bf16 tile.
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const bf16* base, int ld, int r0, int k0,
                                       int lane) {
  const int g = lane >> 2, t = (lane & 3) * 2;
  a[0] = ld32(base + (r0 + g) * ld + k0 + t);
  a[1] = ld32(base + (r0 + g + 8) * ld + k0 + t);
  a[2] = ld32(base + (r0 + g) * ld + k0 + 8 + t);
  a[3] = ld32(base + (r0 + g + 8) * ld + k0 + 8 + t);
}
// B fragment (16×8) of a tile stored [n][k] (k contiguous).
__device__ __forceinline__ void load_b(uint32_t (&b)[2], const bf16* base, int ld, int n0, int k0,
                                       int lane) {
  const int g = lane >> 2, t = (lane & 3) * 2;
  b[0] = ld32(base + (n0 + g) * ld + k0 + t);
  b[1] = ld32(base + (n0 + g) * ld + k0 + 8 + t);
}

__device__ __forceinline__ void split_bf16(float x, bf16& hi, bf16& lo) {
  hi = __float2bfloat16(x);
  lo = __float2bfloat16(x - __bfloat162float(hi));
}

// ------------------------------------------------------------------------------------------------
// Intra-chunk kernel. Phases (256 threads, one chunk and head per CTA):
//   0. load k, q (bf16 tiles), vᵀ, g -> Γ = cumsum(g) (fp32), β
//   1. diagonal 16×16 blocks of L and M on CUDA cores, one exp per (i, j <= i, d)
//   2. off-diagonal blocks on tensor cores: for key block b and every later row i, with the
//      reference r = 16b + 15 (the end of block b):
//        L[i, j] = β_i Σ_d (k_i e^{Γ_i−Γ_r}) (k_j e^{Γ_r−Γ_j}),  M likewise with q_i; both factors <= 1
//   3. X = (I + L)^-1 by forward substitution (64 threads) while the others write Q ⊙ e^Γ,
//      (K ⊙ e^{Γlast−Γ})ᵀ, M and e^{Γlast}
//   4. T = X Diag(β) as bf16 hi + lo, (K ⊙ e^Γ)ᵀ
//   5. W = T (K ⊙ e^Γ), U = T V on tensor cores (T lower triangular: causal k-steps only)
constexpr int kLd = 129;  // fp32 [64][128] tiles, padded
constexpr int kLa = 65;   // fp32 [64][64] tiles, padded

struct IntraSmem {
  float G[kChunk * kLd];           // Γ
  float L[kChunk * kLa];           // L (strictly lower), then read by the solve
  float M[kChunk * kLa];           // M (lower incl. diagonal)
  float X[kChunk * kLa];           // (I + L)^-1
  float beta[kChunk];
  bf16 K[kChunk * kLdW];           // raw k [i][d]
  bf16 Q[kChunk * kLdW];           // raw q [i][d]
  bf16 VT[128 * kLdT];             // vᵀ [d][i]
  union {
    struct {                       // phase 2
      bf16 A[96 * kLdW];           // rows 0..47: k_i e^{Γ_i−Γ_r}; rows 48..95: q_i e^{Γ_i−Γ_r}
      bf16 B[16 * kLdW];           // k_j e^{Γ_r−Γ_j}, j in block b
    } off;
    struct {                       // phases 4, 5
      bf16 T_hi[kChunk * kLdT], T_lo[kChunk * kLdT];
      bf16 KeT[128 * kLdT];        // (K ⊙ e^Γ)ᵀ [d][j]
    } wu;
  } u;
};
constexpr size_t kIntraSmem = sizeof(IntraSmem);
constexpr int kIntraThreads = 512, kIntraWarps = kIntraThreads / 32;

__global__ void __launch_bounds__(kIntraThreads, 1) kda_chunk_intra_kernel(const KdaScanParams p,
                                                                 const int* chunk_seq,
                                                                 const int* chunk_start,
                                                                 unsigned char* ws) {
  constexpr int C = kChunk, D = kKdaD;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  IntraSmem& sm = *reinterpret_cast<IntraSmem*>(smem_raw);
  const int c = blockIdx.x, h = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int H = p.num_heads, HD = H * D;
  const int s = chunk_seq[c], t0 = chunk_start[c];
  const int len = min(C, p.cu_seqlens[s + 1] - t0);
  const int g8 = lane >> 2, t2 = (lane & 3) * 2;

  // 0. Loads (8 bf16 / 4 floats per access); rows past the sequence are zero.
  for (int idx = tid; idx < C * 16; idx += kIntraThreads) {
    const int i = idx >> 4, d0 = (idx & 15) * 8;
    uint4 kv = make_uint4(0, 0, 0, 0), qv = kv, vv = kv;
    float4 g0 = make_float4(0.f, 0.f, 0.f, 0.f), g1 = g0;
    if (i < len) {
      const size_t o = size_t(t0 + i) * HD + h * D + d0;
      kv = *reinterpret_cast<const uint4*>(p.k + o);
      qv = *reinterpret_cast<const uint4*>(p.q + o);
      vv = *reinterpret_cast<const uint4*>(p.v + o);
      g0 = *reinterpret_cast<const float4*>(p.g + o);
      g1 = *reinterpret_cast<const float4*>(p.g + o + 4);
    }
    *reinterpret_cast<uint4*>(sm.K + i * kLdW + d0) = kv;
    *reinterpret_cast<uint4*>(sm.Q + i * kLdW + d0) = qv;
    const bf16* vb = reinterpret_cast<const bf16*>(&vv);
#pragma unroll
    for (int e = 0; e < 8; ++e) sm.VT[(d0 + e) * kLdT + i] = vb[e];
    float* gr = sm.G + i * kLd + d0;
    gr[0] = g0.x; gr[1] = g0.y; gr[2] = g0.z; gr[3] = g0.w;
    gr[4] = g1.x; gr[5] = g1.y; gr[6] = g1.z; gr[7] = g1.w;
  }
  if (tid < C) sm.beta[tid] = tid < len ? p.beta[size_t(t0 + tid) * H + h] : 0.f;
  __syncthreads();
  if (tid < D) {
    float acc = 0.f;
#pragma unroll 8
    for (int i = 0; i < C; ++i) {
      acc += sm.G[i * kLd + tid];
      sm.G[i * kLd + tid] = acc;
    }
  }
  __syncthreads();

  // 1. Diagonal blocks: 4 blocks × 136 pairs (jj <= ii), each pair split over a quad of lanes by
  //    channel pairs and summed by shuffles. Everything else of L, M and X starts at zero.
  for (int idx = tid; idx < C * C; idx += kIntraThreads) {
    const int o = (idx >> 6) * kLa + (idx & 63);
    sm.L[o] = 0.f;
    sm.M[o] = 0.f;
    sm.X[o] = 0.f;
  }
  __syncthreads();
  static_assert((4 * 136 * 4) % 32 == 0, "whole warps per round: the shuffles use a full mask");
  for (int item = tid; item < 4 * 136 * 4; item += kIntraThreads) {
    const int pidx = item >> 2, quad = item & 3;
    const int a = pidx / 136;
    int r = pidx - a * 136, ii = 0;
    while (r > ii) {
      r -= ii + 1;
      ++ii;
    }
    const int i = 16 * a + ii, j = 16 * a + r;
    const float *gi = sm.G + i * kLd, *gj = sm.G + j * kLd;
    const bf16 *ki = sm.K + i * kLdW, *kj = sm.K + j * kLdW, *qi = sm.Q + i * kLdW;
    float l = 0.f, m = 0.f;
#pragma unroll 4
    for (int d = 2 * quad; d < D; d += 8) {
      const float2 kj2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(kj + d));
      const float2 ki2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(ki + d));
      const float2 qi2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(qi + d));
      const float e0 = kj2.x * __expf(gi[d] - gj[d]), e1 = kj2.y * __expf(gi[d + 1] - gj[d + 1]);
      l = fmaf(ki2.x, e0, fmaf(ki2.y, e1, l));
      m = fmaf(qi2.x, e0, fmaf(qi2.y, e1, m));
    }
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    m += __shfl_xor_sync(0xffffffffu, m, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    m += __shfl_xor_sync(0xffffffffu, m, 2);
    if (quad == 0) {
      if (j < i) sm.L[i * kLa + j] = sm.beta[i] * l;
      sm.M[i * kLa + j] = m;
    }
  }

  // 2. Off-diagonal blocks through the reference at the end of key block b.
  for (int b = 0; b < 3; ++b) {
    const int r = 16 * b + 15, row0 = 16 * (b + 1), nr = C - row0;  // rows i in [row0, 64)
    __syncthreads();  // previous users of u.off are done
    for (int idx = tid; idx < nr * D; idx += kIntraThreads) {
      const int ir = idx >> 7, d = idx & 127, i = row0 + ir;
      const float e = __expf(sm.G[i * kLd + d] - sm.G[r * kLd + d]);
      sm.u.off.A[ir * kLdW + d] = __float2bfloat16(__bfloat162float(sm.K[i * kLdW + d]) * e);
      sm.u.off.A[(48 + ir) * kLdW + d] = __float2bfloat16(__bfloat162float(sm.Q[i * kLdW + d]) * e);
    }
    for (int idx = tid; idx < 16 * D; idx += kIntraThreads) {
      const int jj = idx >> 7, d = idx & 127, j = 16 * b + jj;
      const float e = __expf(sm.G[r * kLd + d] - sm.G[j * kLd + d]);
      sm.u.off.B[jj * kLdW + d] = __float2bfloat16(__bfloat162float(sm.K[j * kLdW + d]) * e);
    }
    __syncthreads();
    const int mtiles = nr / 16, tiles = 2 * mtiles * 2;  // (K|Q side) × m-tiles × 2 n-tiles
    for (int tile = warp; tile < tiles; tile += kIntraWarps) {
      const int side = tile / (2 * mtiles), rem = tile % (2 * mtiles);
      const int mt = rem >> 1, nt = rem & 1;
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
        uint32_t af[4], bfr[2];
        load_a(af, sm.u.off.A, kLdW, side * 48 + mt * 16, 16 * kk, lane);
        load_b(bfr, sm.u.off.B, kLdW, nt * 8, 16 * kk, lane);
        mma16816(acc, af, bfr);
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = row0 + mt * 16 + g8 + 8 * (e >> 1), j = 16 * b + nt * 8 + t2 + (e & 1);
        if (side == 0)
          sm.L[i * kLa + j] = sm.beta[i] * acc[e];
        else
          sm.M[i * kLa + j] = acc[e];
      }
    }
  }
  __syncthreads();

  unsigned char* rec = ws + (size_t(c) * H + h) * ChunkRec::kBytes;
  bf16* oW = reinterpret_cast<bf16*>(rec + ChunkRec::kW);
  bf16* oQ = reinterpret_cast<bf16*>(rec + ChunkRec::kQ);
  bf16* oKrT = reinterpret_cast<bf16*>(rec + ChunkRec::kKrT);
  bf16* oU = reinterpret_cast<bf16*>(rec + ChunkRec::kU);
  bf16* oM = reinterpret_cast<bf16*>(rec + ChunkRec::kM);
  float* oGl = reinterpret_cast<float*>(rec + ChunkRec::kGl);

  // 3. X = (I + L)^-1 blockwise. 3a: the 16×16 diagonal blocks by forward substitution, one
  //    column per thread (threads 0..63), while the other threads write the outputs needing no X.
  if (tid < C) {
    const int a = tid >> 4, j = tid;
    for (int i = j; i < 16 * a + 16; ++i) {
      float x = i == j ? 1.f : 0.f;
      for (int m = j; m < i; ++m) x = fmaf(-sm.L[i * kLa + m], sm.X[m * kLa + j], x);
      sm.X[i * kLa + j] = x;
    }
  } else {
    const int t = tid - C, nt = kIntraThreads - C;
    for (int idx = t; idx < C * D / 2; idx += nt) {  // Q ⊙ e^Γ, two channels per step
      const int i = idx >> 6, d = (idx & 63) * 2;
      const float2 q2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(sm.Q + i * kLdW + d));
      *reinterpret_cast<__nv_bfloat162*>(oQ + i * D + d) = __floats2bfloat162_rn(
          q2.x * __expf(sm.G[i * kLd + d]), q2.y * __expf(sm.G[i * kLd + d + 1]));
    }
    for (int idx = t; idx < C * D; idx += nt) {  // (K ⊙ e^{Γlast−Γ})ᵀ
      const int d = idx >> 6, i = idx & 63;
      oKrT[idx] = __float2bfloat16(__bfloat162float(sm.K[i * kLdW + d]) *
                                   __expf(sm.G[63 * kLd + d] - sm.G[i * kLd + d]));
    }
    for (int idx = t; idx < C * C; idx += nt) oM[idx] = __float2bfloat16(sm.M[(idx >> 6) * kLa + (idx & 63)]);
    for (int idx = t; idx < D; idx += nt) oGl[idx] = __expf(sm.G[63 * kLd + idx]);
  }
  __syncthreads();

  // 3b. Off-diagonal blocks by distance δ: X_ab = −X_aa Σ_{m in blocks b..a−1} L[a-rows, m] X[m, b-cols]
  //     (every X[m, ·] needed is known from smaller δ). The partial products go through u.off.
  float* tmp = reinterpret_cast<float*>(sm.u.off.A);  // [3][16][16]
  for (int delta = 1; delta < 4; ++delta) {
    const int nblk = 4 - delta;
    for (int e = tid; e < nblk * 256; e += kIntraThreads) {
      const int b = e >> 8, r = (e >> 4) & 15, cc = e & 15, a = b + delta;
      float acc = 0.f;
      for (int m = 16 * b; m < 16 * a; ++m) acc = fmaf(sm.L[(16 * a + r) * kLa + m], sm.X[m * kLa + 16 * b + cc], acc);
      tmp[e] = acc;
    }
    __syncthreads();
    for (int e = tid; e < nblk * 256; e += kIntraThreads) {
      const int b = e >> 8, r = (e >> 4) & 15, cc = e & 15, a = b + delta;
      float acc = 0.f;
      for (int m = 0; m <= r; ++m) acc = fmaf(sm.X[(16 * a + r) * kLa + 16 * a + m], tmp[(b << 8) + (m << 4) + cc], acc);
      sm.X[(16 * a + r) * kLa + 16 * b + cc] = -acc;
    }
    __syncthreads();
  }

  // 4. T = X Diag(β) (hi + lo) and (K ⊙ e^Γ)ᵀ.
  for (int idx = tid; idx < C * C; idx += kIntraThreads) {
    const int i = idx >> 6, j = idx & 63;
    split_bf16(sm.X[i * kLa + j] * sm.beta[j], sm.u.wu.T_hi[i * kLdT + j], sm.u.wu.T_lo[i * kLdT + j]);
  }
  for (int idx = tid; idx < C * D; idx += kIntraThreads) {
    const int d = idx >> 6, j = idx & 63;
    sm.u.wu.KeT[d * kLdT + j] =
        __float2bfloat16(__bfloat162float(sm.K[j * kLdW + d]) * __expf(sm.G[j * kLd + d]));
  }
  __syncthreads();

  // 5. W and U: 4 row tiles × 16 column tiles each; warp w takes column tile w.
  static_assert(kIntraWarps == 16, "phase 5 maps one column tile per warp");
#pragma unroll 1
  for (int which = 0; which < 2; ++which) {
    const bf16* Bop = which == 0 ? sm.u.wu.KeT : sm.VT;
    bf16* out = which == 0 ? oW : oU;
#pragma unroll
    for (int mt = 0; mt < 4; ++mt) {
      float acc[1][4] = {};
      for (int kt = 0; kt <= mt; ++kt) {
        uint32_t ah[4], al[4];
        load_a(ah, sm.u.wu.T_hi, kLdT, 16 * mt, 16 * kt, lane);
        load_a(al, sm.u.wu.T_lo, kLdT, 16 * mt, 16 * kt, lane);
#pragma unroll
        for (int n = 0; n < 1; ++n) {
          uint32_t bfr[2];
          load_b(bfr, Bop, kLdT, 8 * (warp + n), 16 * kt, lane);
          mma16816(acc[n], ah, bfr);
          mma16816(acc[n], al, bfr);
        }
      }
#pragma unroll
      for (int n = 0; n < 1; ++n)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int i = 16 * mt + g8 + 8 * half, d = 8 * (warp + n) + t2;
          *reinterpret_cast<__nv_bfloat162*>(out + i * D + d) =
              __floats2bfloat162_rn(acc[n][2 * half], acc[n][2 * half + 1]);
        }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Inter-chunk kernel (tensor cores).
struct InterStage {
  bf16 W[64 * kLdW];
  bf16 Q[64 * kLdW];
  bf16 KrT[128 * kLdT];
  bf16 M[64 * kLdT];
  bf16 U[64 * kLdU];
  float gl[128];
};
struct InterSmem {
  InterStage stage[2];
  bf16 st_hi[kInterCols * kLdW], st_lo[kInterCols * kLdW];  // Sᵀ slice [col][d]
  bf16 vt_hi[kInterCols * kLdT], vt_lo[kInterCols * kLdT];  // V'ᵀ slice [col][token]
};

constexpr int kInterThreads = 256;  // 8 warps

__device__ __forceinline__ void load_stage(InterStage& st, const unsigned char* rec, int c0,
                                           int tid) {
  for (int i = tid; i < 64 * 16; i += kInterThreads) {  // W, Q: 64 rows × 16 × 16 B
    const int r = i >> 4, q = i & 15;
    cp_async16(st.W + r * kLdW + q * 8, rec + ChunkRec::kW + r * 256 + q * 16);
    cp_async16(st.Q + r * kLdW + q * 8, rec + ChunkRec::kQ + r * 256 + q * 16);
  }
  for (int i = tid; i < 128 * 8; i += kInterThreads) {  // KrT: 128 rows × 8 × 16 B
    const int r = i >> 3, q = i & 7;
    cp_async16(st.KrT + r * kLdT + q * 8, rec + ChunkRec::kKrT + r * 128 + q * 16);
  }
  for (int i = tid; i < 64 * 8; i += kInterThreads) {  // M: 64 rows × 8 × 16 B
    const int r = i >> 3, q = i & 7;
    cp_async16(st.M + r * kLdT + q * 8, rec + ChunkRec::kM + r * 128 + q * 16);
  }
  for (int i = tid; i < 64 * 4; i += kInterThreads) {  // U columns [c0, c0 + 32): 64 rows × 4 × 16 B
    const int r = i >> 2, q = i & 3;
    cp_async16(st.U + r * kLdU + q * 8, rec + ChunkRec::kU + (r * 128 + c0) * 2 + q * 16);
  }
  if (tid < 32) cp_async16(st.gl + tid * 4, rec + ChunkRec::kGl + tid * 16);
}

// Warp roles: for V', O (64 tokens × 32 columns) warp w takes token rows 16·(w & 3) and column
// tiles 2·(w >> 2) + {0, 1}; for the state (128 keys × 32 columns) key rows [16w, 16w + 16).
__global__ void __launch_bounds__(kInterThreads, 1) kda_chunk_inter_kernel(const KdaScanParams p,
                                                                           const int* seq_first_chunk,
                                                                           const int* chunk_start,
                                                                           const unsigned char* ws) {
  constexpr int D = kKdaD;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  InterSmem& sm = *reinterpret_cast<InterSmem*>(smem_raw);
  const int c0 = blockIdx.x * kInterCols, h = blockIdx.y, sq = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int g = lane >> 2, t2 = (lane & 3) * 2;
  const int H = p.num_heads, HD = H * D;
  const int first = seq_first_chunk[sq], nchunks = seq_first_chunk[sq + 1] - first;
  const int seq_end = p.cu_seqlens[sq + 1];
  float* S = p.state + (size_t(p.slots[sq]) * H + h) * D * D;
  const int rt = w & 3, nb = 2 * (w >> 2);  // token row tile, first column tile (V', O)

  float s[4][4];  // S[16w + g (+8)][c0 + 8nt + t2 (+1)]
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      s[nt][e] = S[(16 * w + g + 8 * (e >> 1)) * D + c0 + 8 * nt + t2 + (e & 1)];

  auto rec_of = [&](int c) { return ws + (size_t(first + c) * H + h) * ChunkRec::kBytes; };
  if (nchunks > 0) load_stage(sm.stage[0], rec_of(0), c0, tid);
  cp_async_commit();
  for (int c = 0; c < nchunks; ++c) {
    const InterStage& st = sm.stage[c & 1];
    if (c + 1 < nchunks) load_stage(sm.stage[(c + 1) & 1], rec_of(c + 1), c0, tid);
    cp_async_commit();
    if (tid == 0 && c + 2 < nchunks)  // one more chunk ahead into L2 (the stage copy hits L2 then)
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(rec_of(c + 2)),
                   "r"(unsigned(ChunkRec::kBytes)));
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int d = 16 * w + g + 8 * (e >> 1), col = 8 * nt + t2 + (e & 1);
        split_bf16(s[nt][e], sm.st_hi[col * kLdW + d], sm.st_lo[col * kLdW + d]);
      }
    cp_async_wait<1>();
    __syncthreads();

    // V' = U − W S and O = Q S.
    const int r0 = 16 * rt;
    float av[2][4] = {}, ao[2][4] = {};
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      uint32_t aw[4], aq[4];
      load_a(aw, st.W, kLdW, r0, 16 * kk, lane);
      load_a(aq, st.Q, kLdW, r0, 16 * kk, lane);
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        uint32_t bh[2], bl[2];
        load_b(bh, sm.st_hi, kLdW, 8 * (nb + n), 16 * kk, lane);
        load_b(bl, sm.st_lo, kLdW, 8 * (nb + n), 16 * kk, lane);
        mma16816(av[n], aw, bh);
        mma16816(av[n], aw, bl);
        mma16816(ao[n], aq, bh);
        mma16816(ao[n], aq, bl);
      }
    }
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = r0 + g + 8 * (e >> 1), col = 8 * (nb + n) + t2 + (e & 1);
        const float vp = __bfloat162float(st.U[row * kLdU + col]) - av[n][e];
        split_bf16(vp, sm.vt_hi[col * kLdT + row], sm.vt_lo[col * kLdT + row]);
      }
    __syncthreads();

    // O += M V' (causal: key-token tiles up to this warp's row tile), then store.
    for (int kt = 0; kt <= rt; ++kt) {
      uint32_t am[4];
      load_a(am, st.M, kLdT, r0, 16 * kt, lane);
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        uint32_t bh[2], bl[2];
        load_b(bh, sm.vt_hi, kLdT, 8 * (nb + n), 16 * kt, lane);
        load_b(bl, sm.vt_lo, kLdT, 8 * (nb + n), 16 * kt, lane);
        mma16816(ao[n], am, bh);
        mma16816(ao[n], am, bl);
      }
    }
    const int t0 = chunk_start[first + c];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int tok = t0 + r0 + g + 8 * half;
      if (tok < seq_end) {
#pragma unroll
        for (int n = 0; n < 2; ++n)
          *reinterpret_cast<__nv_bfloat162*>(p.o + size_t(tok) * HD + h * D + c0 + 8 * (nb + n) + t2) =
              __floats2bfloat162_rn(ao[n][2 * half], ao[n][2 * half + 1]);
      }
    }

    // S ← Diag(e^{Γlast}) S + Krᵀ V'.
    const float gl0 = st.gl[16 * w + g], gl1 = st.gl[16 * w + g + 8];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      s[nt][0] *= gl0;
      s[nt][1] *= gl0;
      s[nt][2] *= gl1;
      s[nt][3] *= gl1;
    }
#pragma unroll
    for (int kt = 0; kt < 4; ++kt) {
      uint32_t ak[4];
      load_a(ak, st.KrT, kLdT, 16 * w, 16 * kt, lane);
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        uint32_t bh[2], bl[2];
        load_b(bh, sm.vt_hi, kLdT, 8 * nt, 16 * kt, lane);
        load_b(bl, sm.vt_lo, kLdT, 8 * nt, 16 * kt, lane);
        mma16816(s[nt], ak, bh);
        mma16816(s[nt], ak, bl);
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();

#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      S[(16 * w + g + 8 * (e >> 1)) * D + c0 + 8 * nt + t2 + (e & 1)] = s[nt][e];
}

}  // namespace kimi::cuda::kda
