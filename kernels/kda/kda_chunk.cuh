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
// kda_chunk_intra_kernel: grid (num_chunks, H), 256 threads, ~100 KB dynamic shared memory (two
//   CTAs per SM); diagonal 16×16 blocks on CUDA cores in fp32, the rest on tensor cores. Writes
//   one record per (chunk, head) into the workspace (ChunkRec below); rows past a short last
//   chunk are zero, so they contribute nothing downstream.
// kda_chunk_inter_kernel: grid (2, H, num_seqs), 128 threads (one warpgroup), ~205 KB dynamic
//   shared memory. A CTA owns 64 value columns of one head's state (columns of S are independent),
//   keeps them in wgmma accumulator registers in fp32 and walks the sequence's chunks with the
//   records of the next two chunks on their way by bulk copies. Products on wgmma (bf16, fp32
//   accumulate); S and V' enter them as bf16 hi + lo pairs, so the state carries ~16 mantissa bits
//   through them and only W, Q, K, U, M are rounded to bf16.
#pragma once

#include <cstdint>

#include "kda/kda_common.cuh"
#include "wgmma_common.cuh"

namespace kimi::cuda::kda {

constexpr int kChunk = 64;

// Byte offsets inside one (chunk, head) workspace record. The four wgmma B operands of the
// inter-chunk kernel (W, Q, Kr, M) are stored in the layout it reads (swz below), so that W..gl
// reach its shared memory as one bulk copy and its value-column slice of Uᵀ as a second (Uᵀ is
// swizzled too: its pair reads there are then free of bank conflicts).
struct ChunkRec {
  static constexpr size_t kW = 0;                   // bf16 [64][128] swz  T (e^Γ ⊙ K)
  static constexpr size_t kQ = kW + 64 * 128 * 2;   // bf16 [64][128] swz  Q ⊙ e^Γ
  static constexpr size_t kKr = kQ + 64 * 128 * 2;  // bf16 [128][64] swz  (K ⊙ e^{Γlast−Γ})ᵀ
  static constexpr size_t kM = kKr + 128 * 64 * 2;      // bf16 [64][64]  swz  causal q·k decay
  static constexpr size_t kGl = kM + 64 * 64 * 2;       // f32 [128]           e^{Γlast}
  static constexpr size_t kUT = kGl + 128 * 4;          // bf16 [128][64] swz  (T V)ᵀ
  static constexpr size_t kBytes = kUT + 128 * 64 * 2;  // 74240
};
static_assert(ChunkRec::kQ % 1024 == 0 && ChunkRec::kKr % 1024 == 0 && ChunkRec::kM % 1024 == 0,
              "the swizzled tiles keep the 1024-byte alignment of the record's stage copy");

// Element offset of (row, k) in a K-major bf16 tile of `rows` rows whose k runs in blocks of 64
// (128-byte rows, block after block) in the 128-byte swizzle that wgmma reads: 16-byte piece p of
// row r sits at piece p ^ (r % 8). Pairs (k, k + 1), k even, stay adjacent.
__device__ __forceinline__ int swz(int row, int k, int rows) {
  return (k >> 6) * rows * 64 + row * 64 + ((((k & 63) >> 3) ^ (row & 7)) << 3) + (k & 7);
}

// ------------------------------------------------------------------------------------------------
// Shared helpers.
constexpr int kLdW = 136;  // bf16 rows of 128, padded: fragment loads hit 32 distinct banks
constexpr int kLdT = 72;   // bf16 rows of 64, padded

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

// The same fragments through ldmatrix (one instruction instead of four or two loads); rows must
// be 16-byte aligned (row strides kLdW and kLdT are).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
// A fragment (16×16 at r0, k0) of a row-major [m][k] tile.
__device__ __forceinline__ void ldsm_a(uint32_t (&a)[4], const bf16* base, int ld, int r0, int k0,
                                       int lane) {
  const int mi = lane >> 3, rr = lane & 7;
  ldsm_x4(a, base + (r0 + rr + 8 * (mi & 1)) * ld + k0 + 8 * (mi >> 1));
}
// ------------------------------------------------------------------------------------------------
// Intra-chunk kernel. Phases (256 threads, one chunk and head per CTA, two CTAs per SM):
//   0. load k, q (bf16 tiles), f -> g (the gate) -> Γ = cumsum(g) (fp32), b -> β
//   1. diagonal 16×16 blocks of L and M on CUDA cores, one exp per (i, j, d); a quad of lanes per
//      row and group of 4 keys
//   2. off-diagonal blocks on tensor cores: for key block b and every later row i, with the
//      reference r = 16b + 15 (the end of block b):
//        L[i, j] = β_i Σ_d (k_i e^{Γ_i−Γ_r}) (k_j e^{Γ_r−Γ_j}),  M likewise with q_i; both factors
//        <= 1
//   3. X = (I + L)^-1 blockwise: 16×16 diagonal blocks by forward substitution (64 threads, while
//   the
//      others write Q ⊙ e^Γ, (K ⊙ e^{Γlast−Γ})ᵀ, M's upper zeros and e^{Γlast}), then the
//      off-diagonal blocks by distance
//   4. T = X Diag(β) (bf16: W and U are stored in bf16 anyway), (K ⊙ e^Γ)ᵀ, vᵀ
//   5. W = T (K ⊙ e^Γ), U = T V on tensor cores (T lower triangular: causal k-steps only)
// Shared memory (~100 KB) is reused across phases so that two CTAs fit on a multiprocessor.
constexpr int kLd = 129;  // fp32 [64][128] tiles, padded
constexpr int kLa = 65;   // fp32 [64][64] tiles, padded
constexpr int kLx = 68;   // fp32 X rows; the region doubles as phase 2's operand scratch
constexpr int kLk = 68;   // bf16 (K ⊙ e^Γ)ᵀ rows of 64, padded to fit the q tile's space

struct IntraSmem {
  union {
    float G[kChunk * kLd];  // Γ (phases 0-4a)
    bf16 VT[128 * kLdT];    // vᵀ [d][j] (phases 4b-5)
  };
  union {
    float L[kChunk * kLa];  // L, strictly lower (phases 1-3)
    bf16 T[kChunk * kLdT];  // X Diag(β) (phases 4-5)
  };
  union {
    float X[kChunk * kLx];  // (I + L)^-1 (phases 3-4a)
    struct {                // phase 2 operands
      bf16 A[48 * kLdW];    // x_i e^{Γ_i−Γ_r} for the rows after block b (x = k or q)
      bf16 B[16 * kLdW];    // k_j e^{Γ_r−Γ_j}, j in block b
    } off;
  };
  bf16 K[kChunk * kLdW];  // raw k [i][d]
  union {
    bf16 Q[kChunk * kLdW];   // raw q [i][d] (phases 0-3)
    float tmp[3 * 16 * 16];  // phase 3b partial products
    bf16 KeT[128 * kLk];     // (K ⊙ e^Γ)ᵀ [d][j] (phases 4-5)
  };
  float beta[kChunk];
};
static_assert(sizeof(bf16) * 48 * kLdW + sizeof(bf16) * 16 * kLdW <= sizeof(float) * kChunk * kLx,
              "phase 2 operands must fit the X region");
static_assert(128 * kLk <= kChunk * kLdW, "(K ⊙ e^Γ)ᵀ must fit the q tile's space");
constexpr size_t kIntraSmem = sizeof(IntraSmem);
constexpr int kIntraThreads = 256, kIntraWarps = kIntraThreads / 32;

// SiLU(conv) of channels d0..d0+7 of one part (0 q, 1 k, 2 v) of head h at token t of a sequence
// that starts at token `start` with conv-state slot `slot` (taps before the start come from the
// conv state); conv weights from shared memory (sw4[part·128 + d] = the 4 taps of channel d).
__device__ __forceinline__ void conv8(const KdaPrepParams& pp, int part, int h, int t, int start,
                                      int slot, int d0, const float4* sw4, float (&u)[8]) {
  const int HD = pp.num_heads * kKdaD, C = 3 * HD, ch0 = part * HD + h * kKdaD + d0;
  const int pos = t - start;
  float x[4][8];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int idx = pos + k;  // index into concat(conv state, inputs)
    if (idx >= 3) {
      const uint4 v = *reinterpret_cast<const uint4*>(pp.qkv + size_t(start + idx - 3) * C + ch0);
      const bf16* vb = reinterpret_cast<const bf16*>(&v);
#pragma unroll
      for (int e = 0; e < 8; ++e) x[k][e] = to_f(vb[e]);
    } else {
      const bf16* st = pp.conv_state + (size_t(slot) * C + ch0) * 3 + idx;
#pragma unroll
      for (int e = 0; e < 8; ++e) x[k][e] = to_f(st[e * 3]);
    }
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float4 w = sw4[part * kKdaD + d0 + e];
    u[e] = silu(w.x * x[0][e] + w.y * x[1][e] + w.z * x[2][e] + w.w * x[3][e]);
  }
}

__device__ __forceinline__ uint4 pack8(const float (&x)[8]) {
  uint4 v;
  __nv_bfloat162* b = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
  for (int e = 0; e < 4; ++e) b[e] = __floats2bfloat162_rn(x[2 * e], x[2 * e + 1]);
  return v;
}

// kFused: q, k, v come from the raw projections (pp: qkv, conv state, conv weights), with the
// conv, SiLU and L2 norm of kda_prep_kernel computed here (same formulas, rounded to bf16 the same
// way); else they come prepared in p. The gate and β are computed here from p.f, p.b either way.
template <bool kFused>
__global__ void __launch_bounds__(kIntraThreads, 2)
    kda_chunk_intra_kernel(const KdaScanParams p, const KdaPrepParams pp, const int* chunk_seq,
                           const int* chunk_start, unsigned char* ws) {
  __shared__ float4 sw4[kFused ? 3 * kKdaD : 1];  // conv weights of this head (fused only)
  constexpr int C = kChunk, D = kKdaD;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  IntraSmem& sm = *reinterpret_cast<IntraSmem*>(smem_raw);
  const int c = blockIdx.x, h = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int H = p.num_heads, HD = H * D;
  const int s = chunk_seq[c], t0 = chunk_start[c];
  const int len = min(C, p.cu_seqlens[s + 1] - t0);
  const int g8 = lane >> 2, t2 = (lane & 3) * 2;
  unsigned char* rec = ws + (size_t(c) * H + h) * ChunkRec::kBytes;
  bf16* oW = reinterpret_cast<bf16*>(rec + ChunkRec::kW);
  bf16* oQ = reinterpret_cast<bf16*>(rec + ChunkRec::kQ);
  bf16* oKr = reinterpret_cast<bf16*>(rec + ChunkRec::kKr);
  bf16* oUT = reinterpret_cast<bf16*>(rec + ChunkRec::kUT);
  bf16* oM = reinterpret_cast<bf16*>(rec + ChunkRec::kM);
  float* oGl = reinterpret_cast<float*>(rec + ChunkRec::kGl);

  // 0. Loads (8 bf16 / 4 floats per access); rows past the sequence are zero. The gate and β are
  //    computed here from f and b (both paths).
  const int seq_start = p.cu_seqlens[s], slot = kFused ? pp.slots[s] : 0;
  const float neg_a = -expf(p.w.A_log[h]);
  if (tid < C) sm.beta[tid] = tid < len ? sigmoid(to_f(p.b[size_t(t0 + tid) * H + h])) : 0.f;
  if constexpr (kFused) {
    for (int i = tid; i < 3 * D; i += kIntraThreads)
      sw4[i] = *reinterpret_cast<const float4*>(pp.w.conv_weight +
                                                size_t((i >> 7) * HD + h * D + (i & 127)) * 4);
    __syncthreads();
  }
  static_assert(C * 16 % kIntraThreads == 0, "whole rounds: the row sums shuffle over 16 lanes");
  for (int idx = tid; idx < C * 16; idx += kIntraThreads) {
    const int i = idx >> 4, d0 = (idx & 15) * 8;  // a row's 16 channel groups: one half-warp
    float g[8] = {};
    uint4 kv = make_uint4(0, 0, 0, 0), qv = kv;
    if (i < len) {
      const size_t o = size_t(t0 + i) * HD + h * D + d0;
      const uint4 fv = *reinterpret_cast<const uint4*>(p.f + o);
      if constexpr (!kFused) {
        kv = *reinterpret_cast<const uint4*>(p.k + o);
        qv = *reinterpret_cast<const uint4*>(p.q + o);
      }
      const bf16* fb = reinterpret_cast<const bf16*>(&fv);
      const float4 db0 = *reinterpret_cast<const float4*>(p.w.dt_bias + h * D + d0);
      const float4 db1 = *reinterpret_cast<const float4*>(p.w.dt_bias + h * D + d0 + 4);
      const float db[8] = {db0.x, db0.y, db0.z, db0.w, db1.x, db1.y, db1.z, db1.w};
#pragma unroll
      for (int e = 0; e < 8; ++e) g[e] = neg_a * softplus(to_f(fb[e]) + db[e]);
    }
    if constexpr (kFused) {
      float q[8] = {}, k[8] = {};
      if (i < len) {
        conv8(pp, 0, h, t0 + i, seq_start, slot, d0, sw4, q);
        conv8(pp, 1, h, t0 + i, seq_start, slot, d0, sw4, k);
      }
      float sq = 0.f, sk = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        sq += q[e] * q[e];
        sk += k[e] * k[e];
      }
#pragma unroll
      for (int off = 1; off < 16; off <<= 1) {
        sq += __shfl_xor_sync(0xffffffffu, sq, off);
        sk += __shfl_xor_sync(0xffffffffu, sk, off);
      }
      const float rq = 1.f / sqrtf(sq + kKdaL2Eps) * 0.08838834764831845f;
      const float rk = 1.f / sqrtf(sk + kKdaL2Eps);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        q[e] *= rq;
        k[e] *= rk;
      }
      kv = pack8(k);
      qv = pack8(q);
    }
    *reinterpret_cast<uint4*>(sm.K + i * kLdW + d0) = kv;
    *reinterpret_cast<uint4*>(sm.Q + i * kLdW + d0) = qv;
    float* gr = sm.G + i * kLd + d0;
#pragma unroll
    for (int e = 0; e < 8; ++e) gr[e] = g[e];
  }
  for (int idx = tid; idx < C * C; idx += kIntraThreads) sm.L[(idx >> 6) * kLa + (idx & 63)] = 0.f;
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

  // 1. Diagonal blocks: per block, row ii and a group of 4 keys jj = 4jg..4jg+3 (jg <= ii/4; the
  //    keys past the diagonal are computed and dropped), split over a quad of lanes by channel
  //    pairs and summed by shuffles. One exp per (i, j, d); M goes straight to the workspace.
  static_assert((4 * 40 * 4) % 32 == 0, "whole warps per round: the shuffles use a full mask");
  for (int item = tid; item < 4 * 40 * 4; item += kIntraThreads) {
    const int pidx = item >> 2, quad = item & 3;
    const int a = pidx / 40, r = pidx - a * 40;
    // rows 4·band .. 4·band + 3 have band + 1 groups each; bands start at items 0, 4, 12, 24
    const int band = r < 4 ? 0 : r < 12 ? 1 : r < 24 ? 2 : 3;
    const int rr = r - (band == 0 ? 0 : band == 1 ? 4 : band == 2 ? 12 : 24);
    const int ii = 4 * band + rr / (band + 1), jg = rr % (band + 1);
    const int i = 16 * a + ii, j0 = 16 * a + 4 * jg;
    const float* gi = sm.G + i * kLd;
    const bf16 *ki = sm.K + i * kLdW, *qi = sm.Q + i * kLdW;
    float l[4] = {0.f, 0.f, 0.f, 0.f}, m[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 2
    for (int d = 2 * quad; d < D; d += 8) {
      const float2 ki2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(ki + d));
      const float2 qi2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(qi + d));
      const float gi0 = gi[d], gi1 = gi[d + 1];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int j = j0 + q;
        const float2 kj2 =
            __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(sm.K + j * kLdW + d));
        const float e0 = kj2.x * __expf(gi0 - sm.G[j * kLd + d]);
        const float e1 = kj2.y * __expf(gi1 - sm.G[j * kLd + d + 1]);
        l[q] = fmaf(ki2.x, e0, fmaf(ki2.y, e1, l[q]));
        m[q] = fmaf(qi2.x, e0, fmaf(qi2.y, e1, m[q]));
      }
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      l[q] += __shfl_xor_sync(0xffffffffu, l[q], 1);
      m[q] += __shfl_xor_sync(0xffffffffu, m[q], 1);
      l[q] += __shfl_xor_sync(0xffffffffu, l[q], 2);
      m[q] += __shfl_xor_sync(0xffffffffu, m[q], 2);
    }
    if (quad == 0) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int j = j0 + q;
        if (j < i) sm.L[i * kLa + j] = sm.beta[i] * l[q];
        if (j <= i) oM[swz(i, j, C)] = __float2bfloat16(m[q]);
      }
    }
  }

  // 2. Off-diagonal blocks through the reference at the end of key block b; K side (L) and
  //    Q side (M) one after the other, so the operands fit the X region.
  for (int b = 0; b < 3; ++b) {
    const int r = 16 * b + 15, row0 = 16 * (b + 1), nr = C - row0;  // rows i in [row0, 64)
    const int mtiles = nr / 16;
    for (int side = 0; side < 2; ++side) {
      const bf16* src = side == 0 ? sm.K : sm.Q;
      __syncthreads();  // previous users of the scratch (and phase 1 / the previous round) done
      for (int idx = tid; idx < nr * D / 2; idx += kIntraThreads) {  // two channels per step
        const int ir = idx >> 6, d = (idx & 63) * 2, i = row0 + ir;
        const float2 x =
            __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(src + i * kLdW + d));
        *reinterpret_cast<__nv_bfloat162*>(sm.off.A + ir * kLdW + d) =
            __floats2bfloat162_rn(x.x * __expf(sm.G[i * kLd + d] - sm.G[r * kLd + d]),
                                  x.y * __expf(sm.G[i * kLd + d + 1] - sm.G[r * kLd + d + 1]));
      }
      for (int idx = tid; idx < 16 * D / 2; idx += kIntraThreads) {
        const int jj = idx >> 6, d = (idx & 63) * 2, j = 16 * b + jj;
        const float2 x =
            __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(sm.K + j * kLdW + d));
        *reinterpret_cast<__nv_bfloat162*>(sm.off.B + jj * kLdW + d) =
            __floats2bfloat162_rn(x.x * __expf(sm.G[r * kLd + d] - sm.G[j * kLd + d]),
                                  x.y * __expf(sm.G[r * kLd + d + 1] - sm.G[j * kLd + d + 1]));
      }
      __syncthreads();
      for (int tile = warp; tile < 2 * mtiles; tile += kIntraWarps) {
        const int mt = tile >> 1, nt = tile & 1;
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
          uint32_t af[4], bfr[2];
          ldsm_a(af, sm.off.A, kLdW, mt * 16, 16 * kk, lane);
          load_b(bfr, sm.off.B, kLdW, nt * 8, 16 * kk, lane);
          mma16816(acc, af, bfr);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = row0 + mt * 16 + g8 + 8 * (e >> 1), j = 16 * b + nt * 8 + t2 + (e & 1);
          if (side == 0)
            sm.L[i * kLa + j] = sm.beta[i] * acc[e];
          else
            oM[swz(i, j, C)] = __float2bfloat16(acc[e]);
        }
      }
    }
  }
  __syncthreads();
  for (int idx = tid; idx < C * C; idx += kIntraThreads) sm.X[(idx >> 6) * kLx + (idx & 63)] = 0.f;
  __syncthreads();

  // 3a. Diagonal blocks of X (threads 0..63, one column each) while the others write the
  //     outputs that need no X.
  if (tid < C) {
    const int a = tid >> 4, j = tid;
    for (int i = j; i < 16 * a + 16; ++i) {
      float x = i == j ? 1.f : 0.f;
      for (int m = j; m < i; ++m) x = fmaf(-sm.L[i * kLa + m], sm.X[m * kLx + j], x);
      sm.X[i * kLx + j] = x;
    }
  } else {
    const int t = tid - C, nt = kIntraThreads - C;
    for (int idx = t; idx < C * D / 2; idx += nt) {  // Q ⊙ e^Γ, two channels per step
      const int i = idx >> 6, d = (idx & 63) * 2;
      const float2 q2 =
          __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(sm.Q + i * kLdW + d));
      *reinterpret_cast<__nv_bfloat162*>(oQ + swz(i, d, C)) = __floats2bfloat162_rn(
          q2.x * __expf(sm.G[i * kLd + d]), q2.y * __expf(sm.G[i * kLd + d + 1]));
    }
    for (int idx = t; idx < C * D; idx += nt) {  // (K ⊙ e^{Γlast−Γ})ᵀ
      const int d = idx >> 6, i = idx & 63;
      oKr[swz(d, i, D)] = __float2bfloat16(__bfloat162float(sm.K[i * kLdW + d]) *
                                           __expf(sm.G[63 * kLd + d] - sm.G[i * kLd + d]));
    }
    for (int idx = t; idx < C * C; idx += nt)  // M is causal: zeros above the diagonal
      if ((idx & 63) > (idx >> 6)) oM[swz(idx >> 6, idx & 63, C)] = __float2bfloat16(0.f);
    for (int idx = t; idx < D; idx += nt) oGl[idx] = __expf(sm.G[63 * kLd + idx]);
  }
  __syncthreads();

  // 3b. Off-diagonal blocks of X by distance δ: X_ab = −X_aa Σ_{m in blocks b..a−1} L[a-rows, m]
  // X[m, b-cols]
  //     (every X[m, ·] needed is known from smaller δ). Partial products in sm.tmp (q is dead).
  for (int delta = 1; delta < 4; ++delta) {
    const int nblk = 4 - delta;
    for (int e = tid; e < nblk * 256; e += kIntraThreads) {
      const int b = e >> 8, r = (e >> 4) & 15, cc = e & 15, a = b + delta;
      float acc = 0.f;
      for (int m = 16 * b; m < 16 * a; ++m)
        acc = fmaf(sm.L[(16 * a + r) * kLa + m], sm.X[m * kLx + 16 * b + cc], acc);
      sm.tmp[e] = acc;
    }
    __syncthreads();
    for (int e = tid; e < nblk * 256; e += kIntraThreads) {
      const int b = e >> 8, r = (e >> 4) & 15, cc = e & 15, a = b + delta;
      float acc = 0.f;
      for (int m = 0; m <= r; ++m)
        acc = fmaf(sm.X[(16 * a + r) * kLx + 16 * a + m], sm.tmp[(b << 8) + (m << 4) + cc], acc);
      sm.X[(16 * a + r) * kLx + 16 * b + cc] = -acc;
    }
    __syncthreads();
  }

  // 4. T = X Diag(β) (over L), (K ⊙ e^Γ)ᵀ (over q), then vᵀ (over Γ). v is fetched first so its
  //    latency overlaps the T and Kᵀ work.
  uint4 vreg[C * 16 / kIntraThreads];
#pragma unroll
  for (int r = 0; r < C * 16 / kIntraThreads; ++r) {
    const int idx = tid + r * kIntraThreads, i = idx >> 4, d0 = (idx & 15) * 8;
    if constexpr (kFused) {
      float v[8] = {};
      if (i < len) conv8(pp, 2, h, t0 + i, seq_start, slot, d0, sw4, v);
      vreg[r] = pack8(v);
    } else {
      vreg[r] = i < len ? *reinterpret_cast<const uint4*>(p.v + size_t(t0 + i) * HD + h * D + d0)
                        : make_uint4(0, 0, 0, 0);
    }
  }
  for (int idx = tid; idx < C * C; idx += kIntraThreads) {
    const int i = idx >> 6, j = idx & 63;
    sm.T[i * kLdT + j] = __float2bfloat16(sm.X[i * kLx + j] * sm.beta[j]);
  }
  for (int idx = tid; idx < C * D; idx += kIntraThreads) {
    const int d = idx >> 6, j = idx & 63;
    sm.KeT[d * kLk + j] =
        __float2bfloat16(__bfloat162float(sm.K[j * kLdW + d]) * __expf(sm.G[j * kLd + d]));
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < C * 16 / kIntraThreads; ++r) {
    const int idx = tid + r * kIntraThreads, i = idx >> 4, d0 = (idx & 15) * 8;
    const bf16* vb = reinterpret_cast<const bf16*>(&vreg[r]);
#pragma unroll
    for (int e = 0; e < 8; ++e) sm.VT[(d0 + e) * kLdT + i] = vb[e];
  }
  __syncthreads();

  // 5. W and U: 4 row tiles × 16 column tiles each; warp w takes column tiles {2w, 2w + 1}.
  static_assert(kIntraWarps == 8, "phase 5 maps two column tiles per warp");
#pragma unroll 1
  for (int which = 0; which < 2; ++which) {
    const bf16* Bop = which == 0 ? sm.KeT : sm.VT;
    const int ldb = which == 0 ? kLk : kLdT;
#pragma unroll
    for (int mt = 0; mt < 4; ++mt) {
      float acc[2][4] = {};
      for (int kt = 0; kt <= mt; ++kt) {
        uint32_t af[4];
        ldsm_a(af, sm.T, kLdT, 16 * mt, 16 * kt, lane);
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          uint32_t bfr[2];
          load_b(bfr, Bop, ldb, 8 * (2 * warp + n), 16 * kt, lane);
          mma16816(acc[n], af, bfr);
        }
      }
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int i = 16 * mt + g8 + 8 * half, d = 8 * (2 * warp + n) + t2;
          if (which == 0) {  // W [i][d], swizzled
            *reinterpret_cast<__nv_bfloat162*>(oW + swz(i, d, C)) =
                __floats2bfloat162_rn(acc[n][2 * half], acc[n][2 * half + 1]);
          } else {  // Uᵀ [d][i], swizzled
            oUT[swz(d, i, D)] = __float2bfloat16(acc[n][2 * half]);
            oUT[swz(d + 1, i, D)] = __float2bfloat16(acc[n][2 * half + 1]);
          }
        }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Inter-chunk kernel (wgmma). The products are transposed so that the state is a wgmma
// accumulator and every B operand is a record tile as stored. Per chunk, with the CTA's slice
// Sᵀ [64 value columns][128 keys] in fp32 accumulator registers for the whole sequence:
//   V'ᵀ = Uᵀ − Sᵀ Wᵀ                  m64n64,  K = keys:   A = Sᵀ (hi, lo), B = W [token][key]
//   Oᵀ  = Sᵀ Qᵀ + V'ᵀ Mᵀ              m64n64,  K = keys, then tokens: B = Q, then M [i][j]
//   Sᵀ ← Sᵀ Diag(e^{Γlast}) + V'ᵀ Kr  m64n128, K = tokens: A = V'ᵀ (hi, lo), B = Kr [key][token]
// The A operands are bf16 hi + lo pairs (≈16 mantissa bits) built in registers straight from the
// accumulators (the accumulator layout of 16 columns is the A-fragment layout of a k16 step), so
// S and V' keep fp32 accuracy through the recurrence and no shared-memory exchange or barrier
// sits between the products. Shared memory holds kInterStages record stages (filled by two bulk
// copies each, one mbarrier per stage, two chunks ahead) and the output tile, which leaves as
// 16-byte row pieces.
constexpr int kInterThreads = 128;  // one warpgroup
constexpr int kInterCols = 64;      // value columns per CTA: the m64 of the transposed products
constexpr int kInterStages = 3;
constexpr uint32_t kStageTiles = ChunkRec::kUT;     // W, Q, Kr, M, gl
constexpr uint32_t kStageUT = kInterCols * 64 * 2;  // Uᵀ rows of the CTA's columns
constexpr uint32_t kStageBytes = (kStageTiles + kStageUT + 1023) / 1024 * 1024;
constexpr int kLdO = kInterCols + 8;  // output tile rows (bf16), padded
struct InterSmem {                    // after the stages
  bf16 o[64 * kLdO];                  // [token][column]
  uint64_t bar[kInterStages];
};
constexpr size_t kInterSmem = kInterStages * kStageBytes + sizeof(InterSmem) + 1024;  // + align

// bf16 hi + lo of two fp32 values, packed as two A-fragment registers (x in the low half).
__device__ __forceinline__ void split_pack(float x, float y, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
  const float2 hf = __bfloat1622float2(h);
  const __nv_bfloat162 l = __floats2bfloat162_rn(x - hf.x, y - hf.y);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = *reinterpret_cast<const uint32_t*>(&l);
}

__global__ void __launch_bounds__(kInterThreads, 1)
    kda_chunk_inter_kernel(const KdaScanParams p, const int* seq_first_chunk,
                           const int* chunk_start, const unsigned char* ws) {
  constexpr int D = kKdaD;
  extern __shared__ unsigned char inter_smem_raw[];
  const uint32_t raw_addr = smem_u32(inter_smem_raw);
  const uint32_t base = (raw_addr + 1023) & ~1023u;  // the swizzle pattern needs 1024
  unsigned char* smem = inter_smem_raw + (base - raw_addr);
  InterSmem& sm = *reinterpret_cast<InterSmem*>(smem + kInterStages * kStageBytes);
  const int c0 = blockIdx.x * kInterCols, h = blockIdx.y, sq = blockIdx.z;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, t2 = (lane & 3) * 2;
  const int r0 = 16 * warp + (lane >> 2);  // this thread's columns r0, r0 + 8 (of the CTA's 64)
  const int H = p.num_heads, HD = H * D;
  const int first = seq_first_chunk[sq], nchunks = seq_first_chunk[sq + 1] - first;
  const int seq_end = p.cu_seqlens[sq + 1];
  float* S = p.state + (size_t(p.slots[sq]) * H + h) * D * D + c0;

  // s[i] = Sᵀ[r0 + 8((i >> 1) & 1)][8(i >> 2) + t2 + (i & 1)], i.e. S[key][column].
  float s[64];
#pragma unroll
  for (int i = 0; i < 64; ++i)
    s[i] = S[(8 * (i >> 2) + t2 + (i & 1)) * D + r0 + 8 * ((i >> 1) & 1)];

  auto rec_of = [&](int c) { return ws + (size_t(first + c) * H + h) * ChunkRec::kBytes; };
  auto load = [&](int c) {  // one thread: chunk c's record into its stage
    unsigned char* st = smem + (c % kInterStages) * kStageBytes;
    uint64_t* bar = &sm.bar[c % kInterStages];
    const uint64_t pol = policy_evict_first();
    mbar_arrive_expect_tx(bar, kStageTiles + kStageUT);
    bulk_g2s(st, rec_of(c), kStageTiles, bar, pol);
    bulk_g2s(st + kStageTiles, rec_of(c) + ChunkRec::kUT + size_t(c0) * 64 * 2, kStageUT, bar, pol);
  };
  if (tid == 0) {
    for (int b = 0; b < kInterStages; ++b) mbar_init(&sm.bar[b], 1);
    fence_mbar_init();
    for (int c = 0; c < min(nchunks, kInterStages - 1); ++c) load(c);
  }
  __syncthreads();  // the barriers' initialisation before anyone waits on them

  for (int c = 0; c < nchunks; ++c) {
    const unsigned char* st = smem + (c % kInterStages) * kStageBytes;
    const uint32_t sa = smem_u32(st);
    mbar_wait(&sm.bar[c % kInterStages], (c / kInterStages) & 1);
    // The lanes leave the wait loop one by one: wgmma (.aligned) needs the warps converged. Then
    // every thread is done with chunk c − 1: its stage may take chunk c + 2 and the output tile
    // is free again.
    __syncwarp();
    __syncthreads();
    if (tid == 0 && c + kInterStages - 1 < nchunks) {
      fence_proxy_async();  // the generic reads of that stage (Uᵀ, gl) before the bulk writes
      load(c + kInterStages - 1);
    }
    __syncwarp();

    // V'ᵀ (minus Uᵀ) and Sᵀ Qᵀ: 8 k16 steps over the keys, hi and lo each.
    uint32_t shi[8][4], slo[8][4];
#pragma unroll
    for (int kk = 0; kk < 8; ++kk)
#pragma unroll
      for (int q = 0; q < 4; ++q)
        split_pack(s[8 * kk + 2 * q], s[8 * kk + 2 * q + 1], shi[kk][q], slo[kk][q]);
    float v[32], o[32];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      const uint64_t bw = wgmma_desc(sa + ChunkRec::kW + (kk >> 2) * 8192 + (kk & 3) * 32);
      wgmma_rs_m64n64(v, shi[kk], bw, kk > 0);
      wgmma_rs_m64n64(v, slo[kk], bw, 1);
    }
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      const uint64_t bq = wgmma_desc(sa + ChunkRec::kQ + (kk >> 2) * 8192 + (kk & 3) * 32);
      wgmma_rs_m64n64(o, shi[kk], bq, kk > 0);
      wgmma_rs_m64n64(o, slo[kk], bq, 1);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_acc(v);
    fence_acc(o);

    // V'ᵀ = Uᵀ − (Sᵀ Wᵀ) as hi/lo A fragments over the tokens (4 k16 steps). Uᵀ is swizzled
    // like the tiles (conflict-free pair reads); rows past the sequence are zero in U and W.
    const bf16* ut = reinterpret_cast<const bf16*>(st + kStageTiles);
    uint32_t vhi[4][4], vlo[4][4];
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int col = r0 + 8 * hf, tok = 8 * j + t2;
        const float2 u =
            __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(ut + swz(col, tok, 64)));
        split_pack(u.x - v[4 * j + 2 * hf], u.y - v[4 * j + 2 * hf + 1],
                   vhi[j >> 1][2 * (j & 1) + hf], vlo[j >> 1][2 * (j & 1) + hf]);
      }

    // Oᵀ += V'ᵀ Mᵀ, then Sᵀ ← Sᵀ Diag(e^{Γlast}) + V'ᵀ Kr, as two commit groups so that the
    // output leaves while the state update runs.
    const float* gl = reinterpret_cast<const float*>(st + ChunkRec::kGl);
#pragma unroll
    for (int i = 0; i < 64; i += 2) {
      const float2 e = *reinterpret_cast<const float2*>(gl + 8 * (i >> 2) + t2);
      s[i] *= e.x;
      s[i + 1] *= e.y;
    }
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint64_t bm = wgmma_desc(sa + ChunkRec::kM + kk * 32);
      wgmma_rs_m64n64(o, vhi[kk], bm, 1);
      wgmma_rs_m64n64(o, vlo[kk], bm, 1);
    }
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint64_t bk = wgmma_desc(sa + ChunkRec::kKr + kk * 32);
      wgmma_rs_m64n128(s, vhi[kk], bk);
      wgmma_rs_m64n128(s, vlo[kk], bk);
    }
    wgmma_commit();
    wgmma_wait<1>();
    fence_acc(o);
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        sm.o[(8 * j + t2 + (e & 1)) * kLdO + r0 + 8 * (e >> 1)] = __float2bfloat16(o[4 * j + e]);
    __syncthreads();
    const int t0 = chunk_start[first + c];
#pragma unroll
    for (int idx = tid; idx < 64 * kInterCols / 8; idx += kInterThreads) {
      const int row = idx / (kInterCols / 8), piece = idx % (kInterCols / 8);
      if (t0 + row < seq_end)
        *reinterpret_cast<uint4*>(p.o + size_t(t0 + row) * HD + h * D + c0 + 8 * piece) =
            *reinterpret_cast<const uint4*>(sm.o + row * kLdO + 8 * piece);
    }
    wgmma_wait<0>();
    fence_acc(s);
  }

#pragma unroll
  for (int i = 0; i < 64; ++i)
    S[(8 * (i >> 2) + t2 + (i & 1)) * D + r0 + 8 * ((i >> 1) & 1)] = s[i];
}

}  // namespace kimi::cuda::kda
