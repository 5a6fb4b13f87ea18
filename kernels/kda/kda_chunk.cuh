// KDA chunked prefill (chunk C = 64, WY/UT form; model.md §3.5), two kernels.
//
// Per chunk and head, with Γ_i = Σ_{s<=i in chunk} g_s (fp32, per key channel, non-increasing):
//   L[i,j] = β_i Σ_d k_i k_j e^{Γ_i−Γ_j} (j < i),   M[i,j] = Σ_d q_i k_j e^{Γ_i−Γ_j} (j <= i)
//   T = (I + L)^-1 Diag(β),  W = T (e^{Γ} ⊙ K),  U = T V
//   then, sequentially over the chunks of a sequence, with the fp32 state S [K, V]:
//   V' = U − W S,   O = (Q ⊙ e^{Γ}) S + M V',   S ← Diag(e^{Γ_last}) S + (K ⊙ e^{Γ_last−Γ})ᵀ V'
// Every exponent that reaches a result is a difference Γ_i − Γ_j with j <= i (or Γ itself), so
// every such exp is <= 1; the pairs past the diagonal inside the diagonal 4×4 tiles of the intra
// kernel are exponentiated with the rest of their tile and dropped.
//
// kda_chunk_intra_kernel: grid (num_chunks, H), 256 threads, ~105 KB dynamic shared memory (two
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
// Intra-chunk kernel. One chunk and head per CTA, 256 threads, two CTAs per SM. Γ is kept in log2
// units (Γ₂ = Γ·log2 e, the cumsum of g·log2 e), so every decay is one ex2 of a difference.
//   0. q, k rows (bf16 tiles, prepared by run_kda_prep), β; the gate from f in
//      log2 units and its cumsum Γ₂ per channel: a thread owns 8 channels of a run of 4 rows,
//      the runs' totals are scanned across the 16 lanes that share the channels (shuffles)
//   1. diagonal 16×16 blocks of L and M in fp32: a thread owns a 4×4 tile of (i, j) pairs over
//      16 channels (register tile, vector smem loads), the 8 channel slices of a tile are summed
//      by a reduce-scatter over 8 lanes; the tiles on the diagonal through their first column
//      as reference where the gate's spread allows it (else one ex2 per (i, j, d)), the tiles
//      below them through their last column. Threads left idle by the uneven last
//      round write the record parts that need only Γ, K, Q (Q ⊙ e^Γ, Kr, e^{Γlast}, M's zeros)
//   2. off-diagonal blocks on tensor cores, per row block a through the reference r = 16a − 1
//      (the last row before it): L[i, j] = β_i Σ_d (k_i e^{Γ_i−Γ_r}) (k_j e^{Γ_r−Γ_j}) for all
//      j < 16a at once, M likewise with q_i; both factors <= 1, and row i's factor serves k and q
//   3. X = (I + L)^-1: the diagonal 16×16 blocks by forward substitution (64 threads, while the
//      others form (K ⊙ e^Γ)ᵀ), then the off-diagonal blocks by distance
//   4. T = X Diag(β) (bf16: W and U are stored in bf16 anyway), vᵀ
//   5. W = T (K ⊙ e^Γ), U = T V on tensor cores (T lower triangular: causal k-steps only)
// Shared memory (~105 KB) is reused across phases so that two CTAs fit on a multiprocessor.
constexpr int kLd = 132;  // fp32 Γ₂ rows of 128, padded (16-byte aligned rows)
constexpr int kLa = 65;   // fp32 [64][64] L, padded
constexpr int kLx = 68;   // fp32 X rows
constexpr int kLk = 68;   // bf16 (K ⊙ e^Γ)ᵀ rows of 64, padded to fit the q tile's space

struct IntraSmem {
  union {
    float G[kChunk * kLd];  // Γ₂ (phases 0-3a)
    bf16 VT[128 * kLdT];    // vᵀ [d][j] (phases 3b-5)
  };
  union {
    float L[kChunk * kLa];  // L, strictly lower (phases 1-3)
    bf16 T[kChunk * kLdT];  // X Diag(β) (phases 4-5)
  };
  union {
    struct {                   // phase 3
      float X[kChunk * kLx];   // (I + L)^-1
      float tmp[3 * 16 * 16];  // phase 3b partial products
    } inv;
    struct {                  // phase 2 operands of row block a
      bf16 Ak[16 * kLdW];     // k_i e^{Γ_i−Γ_r}, i in block a
      bf16 Aq[16 * kLdW];     // q_i e^{Γ_i−Γ_r}
      bf16 B[48 * kLdW];      // k_j e^{Γ_r−Γ_j}, j < 16a
    } off;
  };
  bf16 K[kChunk * kLdW];  // raw k [i][d]
  union {
    bf16 Q[kChunk * kLdW];  // raw q [i][d] (phases 0-2)
    bf16 KeT[128 * kLk];    // (K ⊙ e^Γ)ᵀ [d][j] (phases 3-5)
  };
  float beta[kChunk];
};
static_assert(128 * kLk <= kChunk * kLdW, "(K ⊙ e^Γ)ᵀ must fit the q tile's space");
constexpr size_t kIntraSmem = sizeof(IntraSmem);
constexpr int kIntraThreads = 256, kIntraWarps = kIntraThreads / 32;

constexpr float kLog2e = 1.4426950408889634f;
// ex2 / lg2 (wgmma_common.cuh): every exponent here is a difference of Γ₂ values that is <= 0.
// The gate in log2 units, g·log2 e = −exp(A_log)·softplus(x)·log2 e with x = f + dt_bias:
// softplus(x)·log2 e = max(y, 0) + log2(1 + 2^−|y|), y = x·log2 e. Above x = 20 the second term
// rounds away (1 + 2^−28.9 == 1), which is PyTorch's threshold.
__device__ __forceinline__ float gate2(float neg_a, float x) {
  const float y = x * kLog2e;
  return neg_a * (fmaxf(y, 0.f) + lg2(1.f + ex2(-fabsf(y))));
}

__device__ __forceinline__ uint4 pack8(const float (&x)[8]) {
  uint4 v;
  __nv_bfloat162* b = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
  for (int e = 0; e < 4; ++e) b[e] = __floats2bfloat162_rn(x[2 * e], x[2 * e + 1]);
  return v;
}
__device__ __forceinline__ void unpack8(const uint4& v, float (&x)[8]) {
  const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 f = __bfloat1622float2(b[e]);
    x[2 * e] = f.x;
    x[2 * e + 1] = f.y;
  }
}
__device__ __forceinline__ void unpack4(const uint2& v, float (&x)[4]) {
  const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(&v);
  const float2 f0 = __bfloat1622float2(b[0]), f1 = __bfloat1622float2(b[1]);
  x[0] = f0.x, x[1] = f0.y, x[2] = f1.x, x[3] = f1.y;
}
// 8 consecutive fp32 from 16-byte aligned memory.
__device__ __forceinline__ void load8f(const float* p, float (&x)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}
// The same with the two 16-byte halves read in the other order where `swap`: lanes whose pieces
// sit 8 banks past another lane's take the other half first, so that each of the two loads of a
// quarter-warp hits distinct banks.
__device__ __forceinline__ void load8f_sw(const float* p, float (&x)[8], bool swap) {
  const float4* q = reinterpret_cast<const float4*>(p);
  const float4 a = q[swap ? 1 : 0], b = q[swap ? 0 : 1];
  const float4 lo = swap ? b : a, hi = swap ? a : b;
  x[0] = lo.x, x[1] = lo.y, x[2] = lo.z, x[3] = lo.w, x[4] = hi.x, x[5] = hi.y, x[6] = hi.z,
  x[7] = hi.w;
}

// One level of a reduce-scatter of acc over lanes kHalf / 4 apart: the lane with that bit set
// keeps acc[kHalf..2kHalf) (moved to [0, kHalf)), its partner acc[0, kHalf), each adding the
// other's half.
template <int kHalf>
__device__ __forceinline__ void fold_half(float (&acc)[32], int lane) {
  constexpr int kBit = kHalf / 4;
  const bool upper = (lane & kBit) != 0;
#pragma unroll
  for (int v = 0; v < kHalf; ++v) {
    const float lo = acc[v], hi = acc[v + kHalf];
    acc[v] = (upper ? hi : lo) + __shfl_xor_sync(0xffffffffu, upper ? lo : hi, kBit);
  }
}

// First channel of item `it` of the (token pair 2(it mod 32), 8 channels) loops, lanes over the
// pairs: lanes 4..7 of each quarter-warp take the next 8 channels, so that the 16-byte pieces of
// rows 0, 2, .., 14 (row strides of 4 banks) fall in distinct banks. A bijection for each pair.
__device__ __forceinline__ int pair_octet(int it) {
  return 8 * (((it >> 5) + ((it >> 2) & 1)) & 15);
}

// Largest Γ₂ spread (log2 units) over the 4 rows of a diagonal tile that still takes the
// reference path (kda.h): the key factors 2^{Γ₂r−Γ₂j} stay <= 2^96 and the row factors >= 2^−96,
// so nothing overflows or flushes to zero in fp32 (|k|, |q| <= 1 after the L2 norm; the pairs
// above the diagonal, dropped, stay below 128·2^96).
constexpr float kDiagRefSpread = kKdaDiagRefSpread;
static_assert(kDiagRefSpread <= 100.f, "factors up to 2^spread must stay far from fp32's range");
// L2 prefetch distance in CTAs of launch order (perf-log, session 14: 132 beat 264 and none).
constexpr int kIntraPrefetch = 132;

__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

// q, k, v come prepared (run_kda_prep) in p; the gate and β are computed here from p.f, p.b.
__global__ void __launch_bounds__(kIntraThreads, 2)
    kda_chunk_intra_kernel(const KdaScanParams p, const int* chunk_seq, const int* chunk_start,
                           unsigned char* ws) {
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

  // 0. Loads (8 bf16 / 4 floats per access); rows past the sequence are zero, with a zero gate.
  const float neg_a = -expf(p.w.A_log[h]);
  if (tid < C) sm.beta[tid] = tid < len ? sigmoid(to_f(p.b[size_t(t0 + tid) * H + h])) : 0.f;
  static_assert(C * 16 == 4 * kIntraThreads, "four rounds of (row, 8 channels) items");
  // The gate's layout: channels d0g..d0g+7 of rows 4rs..4rs+3 per thread, the 16 runs of a
  // channel group being the 16 lanes of a half-warp (Γ₂'s scan below).
  const int rs = lane & 15, d0g = 8 * (2 * warp + (lane >> 4));
  uint4 fv[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int i = 4 * rs + q;
    fv[q] = i < len ? *reinterpret_cast<const uint4*>(p.f + size_t(t0 + i) * HD + h * D + d0g)
                    : make_uint4(0, 0, 0, 0);
  }
  {
    uint4 kv[4], qv[4];  // every round's loads in flight before the first store
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int idx = tid + r * kIntraThreads, i = idx >> 4, d0 = (idx & 15) * 8;
      kv[r] = qv[r] = make_uint4(0, 0, 0, 0);
      if (i < len) {
        const size_t o = size_t(t0 + i) * HD + h * D + d0;
        kv[r] = *reinterpret_cast<const uint4*>(p.k + o);
        qv[r] = *reinterpret_cast<const uint4*>(p.q + o);
      }
    }
    // L2 prefetch of the q, k, f, v rows of the CTA kIntraPrefetch places later in launch order
    // (chunks fastest, then heads): it starts about half a CTA lifetime later (two CTAs per SM)
    // and finds its rows in L2 instead of DRAM.
    const int nc = int(gridDim.x), later = c + h * nc + kIntraPrefetch;
    if (later < nc * H) {
      const int c2 = later % nc, h2 = later / nc;
      const int t = chunk_start[c2] + (tid >> 2), which = tid & 3;
      if (t < p.num_tokens) {
        const bf16* src = which == 0 ? p.q : which == 1 ? p.k : which == 2 ? p.f : p.v;
        const bf16* row = src + size_t(t) * HD + h2 * D;
        prefetch_l2(row);
        prefetch_l2(row + 64);
      }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int idx = tid + r * kIntraThreads, i = idx >> 4, d0 = (idx & 15) * 8;
      *reinterpret_cast<uint4*>(sm.K + i * kLdW + d0) = kv[r];
      *reinterpret_cast<uint4*>(sm.Q + i * kLdW + d0) = qv[r];
    }
  }
  {  // Γ₂ (f was loaded first)
    const int d0 = d0g;
    float db[8], run[8] = {}, cum[4][8];
    load8f(p.w.dt_bias + h * D + d0, db);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      float f[8];
      unpack8(fv[q], f);
      const bool live = 4 * rs + q < len;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        run[e] += live ? gate2(neg_a, f[e] + db[e]) : 0.f;
        cum[q][e] = run[e];
      }
    }
    float incl[8];  // inclusive scan of the runs' totals over the half-warp
#pragma unroll
    for (int e = 0; e < 8; ++e) incl[e] = run[e];
#pragma unroll
    for (int off = 1; off < 16; off <<= 1)
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float v = __shfl_up_sync(0xffffffffu, incl[e], off, 16);
        if (rs >= off) incl[e] += v;
      }
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float v = __shfl_up_sync(0xffffffffu, incl[e], 1, 16);
      const float before = rs > 0 ? v : 0.f;
#pragma unroll
      for (int q = 0; q < 4; ++q) cum[q][e] += before;
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      float4* gr = reinterpret_cast<float4*>(sm.G + (4 * rs + q) * kLd + d0);
      gr[0] = make_float4(cum[q][0], cum[q][1], cum[q][2], cum[q][3]);
      gr[1] = make_float4(cum[q][4], cum[q][5], cum[q][6], cum[q][7]);
    }
  }
  __syncthreads();

  // 1. Diagonal blocks in fp32, as 40 tiles of 4×4 (i, j) pairs (10 per block: row quad ri,
  //    column quad cj <= ri) × 8 channel slices (channels 4s + 32m + 0..3, m = 0..3: the 8 lanes
  //    of a slice group read consecutive 16 bytes) = 320 items. The 16 tiles on the diagonal
  //    (warps 0-3) go through their first column (below) or take one ex2 per (i, j, d) (pairs
  //    j > i are computed and dropped); the 24 below it (warps 4-7, then a second round on warps
  //    6, 7 while warps 0-5 write the record parts that need no L) go through the reference
  //    r = j0 + 3, the tile's last column: (k_i 2^{Γ₂i−Γ₂r}) (k_j 2^{Γ₂r−Γ₂j}), both factors
  //    <= 1, 8 ex2 per tile and channel instead of 16.
  auto diag_item = [&](int i0, int j0, bool via_ref, int ref) {
    const int sl = lane & 7;
    float acc[32];  // [side: L, M][rr][cc]
#pragma unroll
    for (int v = 0; v < 32; ++v) acc[v] = 0.f;
#pragma unroll 1
    for (int m = 0; m < 4; ++m) {
      const int d = 4 * sl + 32 * m;
      float gr[4] = {0.f, 0.f, 0.f, 0.f};
      if (via_ref) {
        const float4 g4 = *reinterpret_cast<const float4*>(sm.G + ref * kLd + d);
        gr[0] = g4.x, gr[1] = g4.y, gr[2] = g4.z, gr[3] = g4.w;
      }
      float gi[4][4], ki[4][4], qi[4][4];
#pragma unroll
      for (int rr = 0; rr < 4; ++rr) {
        const float4 g4 = *reinterpret_cast<const float4*>(sm.G + (i0 + rr) * kLd + d);
        gi[rr][0] = g4.x, gi[rr][1] = g4.y, gi[rr][2] = g4.z, gi[rr][3] = g4.w;
        unpack4(*reinterpret_cast<const uint2*>(sm.K + (i0 + rr) * kLdW + d), ki[rr]);
        unpack4(*reinterpret_cast<const uint2*>(sm.Q + (i0 + rr) * kLdW + d), qi[rr]);
        if (via_ref) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float f = ex2(gi[rr][e] - gr[e]);
            ki[rr][e] *= f;
            qi[rr][e] *= f;
          }
        }
      }
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) {
        const float4 g4 = *reinterpret_cast<const float4*>(sm.G + (j0 + cc) * kLd + d);
        const float gj[4] = {g4.x, g4.y, g4.z, g4.w};
        float kj[4];
        unpack4(*reinterpret_cast<const uint2*>(sm.K + (j0 + cc) * kLdW + d), kj);
        if (via_ref) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float x = kj[e] * ex2(gr[e] - gj[e]);
#pragma unroll
            for (int rr = 0; rr < 4; ++rr) {
              acc[4 * rr + cc] = fmaf(ki[rr][e], x, acc[4 * rr + cc]);
              acc[16 + 4 * rr + cc] = fmaf(qi[rr][e], x, acc[16 + 4 * rr + cc]);
            }
          }
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e)
#pragma unroll
            for (int rr = 0; rr < 4; ++rr) {
              const float x = kj[e] * ex2(gi[rr][e] - gj[e]);
              acc[4 * rr + cc] = fmaf(ki[rr][e], x, acc[4 * rr + cc]);
              acc[16 + 4 * rr + cc] = fmaf(qi[rr][e], x, acc[16 + 4 * rr + cc]);
            }
        }
      }
    }
    // Reduce-scatter over the 8 slice lanes: lane bit 2 keeps a side, bits 1, 0 a row.
    fold_half<16>(acc, lane);
    fold_half<8>(acc, lane);
    fold_half<4>(acc, lane);
    const int i = i0 + (lane & 3);
    if ((lane & 4) == 0) {
#pragma unroll
      for (int cc = 0; cc < 4; ++cc)
        if (j0 + cc < i) sm.L[i * kLa + j0 + cc] = sm.beta[i] * acc[cc];
    } else {  // M[i, j0..j0+3] with zeros past the diagonal: one 8-byte store
      uint2 v;
      __nv_bfloat162* b = reinterpret_cast<__nv_bfloat162*>(&v);
      b[0] = __floats2bfloat162_rn(j0 <= i ? acc[0] : 0.f, j0 + 1 <= i ? acc[1] : 0.f);
      b[1] = __floats2bfloat162_rn(j0 + 2 <= i ? acc[2] : 0.f, j0 + 3 <= i ? acc[3] : 0.f);
      *reinterpret_cast<uint2*>(oM + swz(i, j0, C)) = v;
    }
  };
  // Tile to (0..23) below the diagonal: block to / 6, (ri, cj) = 10 20 21 30 31 32.
  auto below = [&](int to) {
    const int a = to / 6, r = to - 6 * a;
    const int ri = r < 1 ? 1 : r < 3 ? 2 : 3, cj = r - (ri - 1) * ri / 2;
    diag_item(16 * a + 4 * ri, 16 * a + 4 * cj, true, 16 * a + 4 * cj + 3);
  };
  static_assert(kIntraThreads == 256, "phase 1 maps 320 items as 128 + 128 + 64");
  if (tid < 128) {
    const int td = tid >> 3, a = td >> 2, q = td & 3, j0 = 16 * a + 4 * q;  // tile (a, q, q)
    // Through the tile's first column as reference (row factors 2^{Γ₂i−Γ₂j0} <= 1, key factors
    // 2^{Γ₂j0−Γ₂j} >= 1): 8 ex2 per channel instead of 16, where Γ₂ falls by at most
    // kDiagRefSpread over the tile's rows in every channel of the warp's 4 tiles (one choice
    // per warp); otherwise one ex2 per pair.
    float spread = 0.f;
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const int d = 4 * (lane & 7) + 32 * m;
      const float4 g0 = *reinterpret_cast<const float4*>(sm.G + j0 * kLd + d);
      const float4 g3 = *reinterpret_cast<const float4*>(sm.G + (j0 + 3) * kLd + d);
      const float s01 = fmaxf(g0.x - g3.x, g0.y - g3.y), s23 = fmaxf(g0.z - g3.z, g0.w - g3.w);
      spread = fmaxf(spread, fmaxf(s01, s23));
    }
    const bool ref = __all_sync(0xffffffffu, spread <= kDiagRefSpread);
    diag_item(j0, j0, ref, j0);
  } else {
    below((tid - 128) >> 3);
  }
  if (tid >= 192) {
    below(16 + ((tid - 192) >> 3));
  } else {
    for (int it = tid; it < C * 16; it += 192) {  // Q ⊙ e^Γ: (row, 8 channels) -> one 16-byte piece
      const int i = it >> 4, d0 = (it & 15) * 8;
      float q[8], g[8];
      unpack8(*reinterpret_cast<const uint4*>(sm.Q + i * kLdW + d0), q);
      load8f_sw(sm.G + i * kLd + d0, g, it & 4);  // (it & 4 is lane & 4: steps of 192)
#pragma unroll
      for (int e = 0; e < 8; ++e) q[e] *= ex2(g[e]);
      *reinterpret_cast<uint4*>(oQ + swz(i, d0, C)) = pack8(q);
    }
    for (int it = tid; it < 32 * 16; it += 192) {  // Kr: (token pair, 8 channels) -> 8 pairs
      const int i = 2 * (it & 31), d0 = pair_octet(it);
      float k0[8], k1[8], g0[8], g1[8], gl[8];
      unpack8(*reinterpret_cast<const uint4*>(sm.K + i * kLdW + d0), k0);
      unpack8(*reinterpret_cast<const uint4*>(sm.K + (i + 1) * kLdW + d0), k1);
      load8f_sw(sm.G + i * kLd + d0, g0, it & 4);
      load8f_sw(sm.G + (i + 1) * kLd + d0, g1, it & 4);
      load8f(sm.G + 63 * kLd + d0, gl);
#pragma unroll
      for (int e = 0; e < 8; ++e)
        *reinterpret_cast<__nv_bfloat162*>(oKr + swz(d0 + e, i, D)) = __floats2bfloat162_rn(
            k0[e] * ex2(gl[e] - g0[e]), k1[e] * ex2(gl[e] - g1[e]));
    }
    if (tid < D) oGl[tid] = ex2(sm.G[63 * kLd + tid]);
    {  // M's zeros above the diagonal tiles: blocks right of the diagonal block (16 rows × 6, 4,
       // 2 pieces for blocks 0, 1, 2: exactly 192), and rows of the 6 quads above the diagonal
       // inside each diagonal block (96)
      const int it = tid;
      const int a = it < 96 ? 0 : it < 160 ? 1 : 2, base = a == 0 ? 0 : a == 1 ? 96 : 160;
      const int per = 6 - 2 * a, row = 16 * a + (it - base) / per;
      const int piece = 2 * a + 2 + (it - base) % per;
      *reinterpret_cast<uint4*>(oM + swz(row, 8 * piece, C)) = make_uint4(0, 0, 0, 0);
      if (it < 96) {
        const int blk = it / 24, q = (it % 24) >> 2;  // quad (ri, cj): 01 02 03 12 13 23
        const int ri = q < 3 ? 0 : q < 5 ? 1 : 2, cj = q < 3 ? q + 1 : q < 5 ? q - 1 : 3;
        const int i = 16 * blk + 4 * ri + (it & 3);
        *reinterpret_cast<uint2*>(oM + swz(i, 16 * blk + 4 * cj, C)) = make_uint2(0, 0);
      }
    }
  }

  // 2. Off-diagonal blocks, row block a through the reference r = 16a − 1: both sides of the
  //    row's factor at once, every earlier key in one product (16 × 16a per side).
#pragma unroll 1
  for (int a = 1; a < 4; ++a) {
    const int r = 16 * a - 1, nk = 16 * a;
    __syncthreads();  // phase 1 / the previous round's readers of the scratch done
    // Lanes run over rows (8 channels each): the 16-byte row pieces of a quarter-warp then fall
    // in distinct banks (row strides of 4 banks mod 32).
    {  // row i of block a (exactly 256 items)
      const int ii = tid & 15, d0 = (tid >> 4) * 8, i = 16 * a + ii;
      float gi[8], gr[8], k[8], q[8];
      load8f(sm.G + i * kLd + d0, gi);
      load8f(sm.G + r * kLd + d0, gr);
      unpack8(*reinterpret_cast<const uint4*>(sm.K + i * kLdW + d0), k);
      unpack8(*reinterpret_cast<const uint4*>(sm.Q + i * kLdW + d0), q);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float x = ex2(gi[e] - gr[e]);
        k[e] *= x;
        q[e] *= x;
      }
      *reinterpret_cast<uint4*>(sm.off.Ak + ii * kLdW + d0) = pack8(k);
      *reinterpret_cast<uint4*>(sm.off.Aq + ii * kLdW + d0) = pack8(q);
    }
    for (int it = tid; it < nk * 16; it += kIntraThreads) {  // key j < 16a
      const int o = it / nk, j = it - o * nk, d0 = 8 * o;
      float gj[8], gr[8], k[8];
      load8f(sm.G + j * kLd + d0, gj);
      load8f(sm.G + r * kLd + d0, gr);
      unpack8(*reinterpret_cast<const uint4*>(sm.K + j * kLdW + d0), k);
#pragma unroll
      for (int e = 0; e < 8; ++e) k[e] *= ex2(gr[e] - gj[e]);
      *reinterpret_cast<uint4*>(sm.off.B + j * kLdW + d0) = pack8(k);
    }
    __syncthreads();
    for (int tile = warp; tile < 2 * (nk / 8); tile += kIntraWarps) {
      const int side = tile & 1, nt = tile >> 1;
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
        uint32_t af[4], bfr[2];
        ldsm_a(af, side == 0 ? sm.off.Ak : sm.off.Aq, kLdW, 0, 16 * kk, lane);
        load_b(bfr, sm.off.B, kLdW, nt * 8, 16 * kk, lane);
        mma16816(acc, af, bfr);
      }
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = 16 * a + g8 + 8 * hf, j = 8 * nt + t2;
        if (side == 0) {
          sm.L[i * kLa + j] = sm.beta[i] * acc[2 * hf];
          sm.L[i * kLa + j + 1] = sm.beta[i] * acc[2 * hf + 1];
        } else {
          *reinterpret_cast<__nv_bfloat162*>(oM + swz(i, j, C)) =
              __floats2bfloat162_rn(acc[2 * hf], acc[2 * hf + 1]);
        }
      }
    }
  }
  __syncthreads();

  // 3a. Diagonal blocks of X (threads 0..63, one column each; zeros above the diagonal inside
  //     the block, which 3b reads) while the others form (K ⊙ e^Γ)ᵀ over the dead q tile. v is
  //     fetched first (two token rows × 8 channels per item, 16-byte pieces in pairs) so that its
  //     latency overlaps.
  uint4 vreg[2][2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int it = tid + r * kIntraThreads, i = 2 * ((it >> 1) & 31);
    const int d0 = 8 * (2 * (it >> 6) + (it & 1));
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      vreg[r][u] = i + u < len ? *reinterpret_cast<const uint4*>(p.v + size_t(t0 + i + u) * HD +
                                                                 h * D + d0)
                               : make_uint4(0, 0, 0, 0);
    }
  }
  if (tid < C) {  // column j of its diagonal block in registers: x_i = δ_ij − Σ_{m<i} L_im x_m
    const int a = tid >> 4, jl = tid & 15, base = 16 * a;  // (x_m = 0 for m < j: no masks)
    float x[16];
#pragma unroll
    for (int il = 0; il < 16; ++il) {
      float acc = il == jl ? 1.f : 0.f;
#pragma unroll
      for (int m = 0; m < il; ++m) acc = fmaf(-sm.L[(base + il) * kLa + base + m], x[m], acc);
      x[il] = acc;
    }
#pragma unroll
    for (int il = 0; il < 16; ++il) sm.inv.X[(base + il) * kLx + tid] = x[il];
  } else {
    for (int it = tid - C; it < 32 * 16; it += kIntraThreads - C) {  // (key pair, 8 channels)
      const int j = 2 * (it & 31), d0 = pair_octet(it);
      float k0[8], k1[8], g0[8], g1[8];
      unpack8(*reinterpret_cast<const uint4*>(sm.K + j * kLdW + d0), k0);
      unpack8(*reinterpret_cast<const uint4*>(sm.K + (j + 1) * kLdW + d0), k1);
      load8f_sw(sm.G + j * kLd + d0, g0, it & 4);
      load8f_sw(sm.G + (j + 1) * kLd + d0, g1, it & 4);
#pragma unroll
      for (int e = 0; e < 8; ++e)
        *reinterpret_cast<__nv_bfloat162*>(sm.KeT + (d0 + e) * kLk + j) =
            __floats2bfloat162_rn(k0[e] * ex2(g0[e]), k1[e] * ex2(g1[e]));
    }
  }
  __syncthreads();

  // vᵀ over the dead Γ₂ (pairs of tokens per 4-byte store).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int it = tid + r * kIntraThreads, i = 2 * ((it >> 1) & 31);
    const int d0 = 8 * (2 * (it >> 6) + (it & 1));
    const bf16* v0 = reinterpret_cast<const bf16*>(&vreg[r][0]);
    const bf16* v1 = reinterpret_cast<const bf16*>(&vreg[r][1]);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      __nv_bfloat162 pr;
      pr.x = v0[e];
      pr.y = v1[e];
      *reinterpret_cast<__nv_bfloat162*>(sm.VT + (d0 + e) * kLdT + i) = pr;
    }
  }

  // 3b. Off-diagonal blocks of X by distance δ: X_ab = −X_aa Σ_{m in blocks b..a−1} L[a-rows, m]
  //     X[m, b-cols] (every X[m, ·] needed is known from smaller δ).
  //     A thread owns 4 adjacent columns (float4 rows of X and of the partial products), so
  //     that one L or X load feeds 4 FMAs; constant trip counts, unrolled. The second sum runs
  //     over the 16 columns of X_aa, whose entries above the diagonal are zero.
#pragma unroll
  for (int delta = 1; delta < 4; ++delta) {
    const int nblk = 4 - delta;
    if (tid < nblk * 64) {
      const int b = tid >> 6, r = (tid >> 2) & 15, c4 = (tid & 3) * 4, a = b + delta;
      const float* lr = sm.L + (16 * a + r) * kLa + 16 * b;
      const float* xc = sm.inv.X + 16 * b * kLx + 16 * b + c4;
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int m = 0; m < 16 * delta; ++m)
        acc = fma4(lr[m], *reinterpret_cast<const float4*>(xc + m * kLx), acc);
      *reinterpret_cast<float4*>(sm.inv.tmp + (b << 8) + (r << 4) + c4) = acc;
    }
    __syncthreads();
    if (tid < nblk * 64) {
      const int b = tid >> 6, r = (tid >> 2) & 15, c4 = (tid & 3) * 4, a = b + delta;
      const float* xr = sm.inv.X + (16 * a + r) * kLx + 16 * a;
      const float* tc = sm.inv.tmp + (b << 8) + c4;
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int m = 0; m < 16; ++m)
        acc = fma4(xr[m], *reinterpret_cast<const float4*>(tc + (m << 4)), acc);
      *reinterpret_cast<float4*>(sm.inv.X + (16 * a + r) * kLx + 16 * b + c4) =
          make_float4(-acc.x, -acc.y, -acc.z, -acc.w);
    }
    __syncthreads();
  }

  // 4. T = X Diag(β) over L (X above the diagonal blocks was never written: masked here).
  for (int it = tid; it < C * 8; it += kIntraThreads) {  // (row, 8 columns), lanes over rows
    const int i = it & 63, j0 = (it >> 6) * 8;
    float x[8], bt[8];
    load8f(sm.inv.X + i * kLx + j0, x);
    load8f(sm.beta + j0, bt);
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] = j0 + e <= i ? x[e] * bt[e] : 0.f;
    *reinterpret_cast<uint4*>(sm.T + i * kLdT + j0) = pack8(x);
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
        for (int hf = 0; hf < 2; ++hf) {
          const int i = 16 * mt + g8 + 8 * hf, d = 8 * (2 * warp + n) + t2;
          const float u0 = acc[n][2 * hf], u1 = acc[n][2 * hf + 1];
          if (which == 0) {  // W [i][d], swizzled
            *reinterpret_cast<__nv_bfloat162*>(oW + swz(i, d, C)) = __floats2bfloat162_rn(u0, u1);
          } else {  // Uᵀ [d][i], swizzled: rows i, i + 1 (lanes 4 apart) paired by one shuffle
            const bool odd = (g8 & 1) != 0;
            const float other = __shfl_xor_sync(0xffffffffu, odd ? u0 : u1, 4);
            if (!odd)
              *reinterpret_cast<__nv_bfloat162*>(oUT + swz(d, i, D)) =
                  __floats2bfloat162_rn(u0, other);
            else
              *reinterpret_cast<__nv_bfloat162*>(oUT + swz(d + 1, i - 1, D)) =
                  __floats2bfloat162_rn(other, u1);
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
