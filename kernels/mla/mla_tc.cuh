// MLA prefill attention on tensor cores (contract in mla.h; same items4, outputs and partials as
// mla_attn_kernel<4>).
//
// All heads share the one 576-wide KV head, so a CTA stacks query rows of several tokens and
// heads into one tile: M = 64 rows, row r = token r / 16 of the item × head h0 + r % 16 (rows of
// absent tokens or heads are zero and never written). One CTA (8 warps) per (item, group of 16
// heads); it walks the item's KV range [kv_begin, min(kv_end, q_pos0 + nq)) in tiles of 32 cache
// rows, cp.async double-buffered from the paged cache. Per tile:
//   1. S = Q·Kᵀ (64 × 32, k = 576) with mma.sync m16n8k16 bf16 → fp32: warp w computes rows
//      16·(w % 4) .. +16 × all 32 columns over half of k (channels 288·(w / 4) .. +288), so
//      each A fragment feeds 4 mma instead of 2 (shared-memory loads bound this phase); the two
//      halves go to shared memory and the softmax adds them.
//   2. Online softmax, 4 threads per row (8 columns each): causal mask (token i sees positions
//      <= q_pos0 + i), running max m and sum l in registers (fp32), P = e^{s − m} rounded to
//      bf16 (l sums the rounded values, so u/l weights sum to 1), α = e^{m_old − m_new} per row.
//   3. O = α·O + P·V with V = the first 512 channels of the same cache rows: warp w owns O
//      columns 64·w .. +64 for all 64 rows (4 × 8 accumulator tiles = 128 fp32 per thread).
// At the end O/l goes to u (bf16) for unsplit items, (O, m, l) to the partials for split ones.
// Shared memory: Q [64][584] + K [2][32][584] bf16 (rows padded by 8: ldmatrix rows hit distinct
// banks), S [2][64][36] fp32, P [64][40] bf16, α, m, l [64]: 169.8 KB, one CTA per SM.
// fp8 cache (p.cache8): the tile's ĉ is loaded through registers (8 codes per 16-byte piece,
// decoded to bf16 with the row's scale, mla_fp8.cuh) and stored to the same K tile; k_pe still
// by cp.async. Those loads are synchronous, so the load of tile n + 1 no longer overlaps the MMAs
// of tile n: this kernel only runs prefill chunks of < 128 new tokens (kMlaExpandMinTokens).
// mma, ldmatrix and cp.async helpers (and the fragment layouts): mla_mma.cuh.
// scripts/mla_tc_emulate.cu replays this kernel's indexing on the CPU.
#pragma once

#include "mla/mla.cuh"
#include "mla/mla_mma.cuh"

namespace kimi::cuda::mla {

constexpr int kTcRows = 64;  // query rows per CTA: 4 tokens × 16 heads
constexpr int kTcTokens = kTcRows / kMlaTcHeadsPerCta;
constexpr int kTcTile = 32;             // cache rows per KV tile
constexpr int kTcLd = kMlaRow + 8;      // bf16 row stride of Q and K tiles
constexpr int kTcLdS = kTcTile + 4;     // fp32 row stride of S
constexpr int kTcLdP = kTcTile + 8;     // bf16 row stride of P
constexpr int kTcChunks = kMlaRow / 8;  // 16-byte chunks per row
constexpr int kTcThreads = 256;
constexpr size_t kTcOffK = size_t(kTcRows) * kTcLd * 2;
constexpr size_t kTcOffS = kTcOffK + size_t(2) * kTcTile * kTcLd * 2;
constexpr int kTcKHalf = kMlaRow / 2;  // channels of S per warp (two warps per row block)
constexpr size_t kTcOffP = kTcOffS + size_t(2) * kTcRows * kTcLdS * 4;
constexpr size_t kTcOffA = kTcOffP + size_t(kTcRows) * kTcLdP * 2;
constexpr size_t kTcOffM = kTcOffA + kTcRows * 4;
constexpr size_t kTcOffL = kTcOffM + kTcRows * 4;
constexpr size_t kTcSmem = kTcOffL + kTcRows * 4;
static_assert(kTcTokens == 4, "prefill items (items4) hold up to 4 query tokens");
static_assert(kTcTile == kTile, "split chunks of the plan are multiples of kTile");
static_assert(kTcKHalf % 16 == 0);
static_assert(kTcOffK % 16 == 0 && kTcOffS % 16 == 0 && kTcOffP % 16 == 0 && kTcOffA % 16 == 0);

__global__ void __launch_bounds__(kTcThreads, 1) mla_attn_tc_kernel(MlaAttnParams p) {
  extern __shared__ uint4 smem_raw[];
  char* sm = reinterpret_cast<char*>(smem_raw);
  bf16* q_s = reinterpret_cast<bf16*>(sm);              // [64][kTcLd]
  bf16* k_s = reinterpret_cast<bf16*>(sm + kTcOffK);    // [2][32][kTcLd]
  float* s_s = reinterpret_cast<float*>(sm + kTcOffS);  // [2][64][kTcLdS]: halves of k
  bf16* p_s = reinterpret_cast<bf16*>(sm + kTcOffP);    // [64][kTcLdP]
  float* alpha_s = reinterpret_cast<float*>(sm + kTcOffA);
  float* m_s = reinterpret_cast<float*>(sm + kTcOffM);
  float* l_s = reinterpret_cast<float*>(sm + kTcOffL);

  // Items later in a sequence see more keys: start those first, the short ones fill the tail.
  const MlaWorkItem it = p.items[gridDim.x - 1 - blockIdx.x];
  const int H = p.num_heads, h0 = blockIdx.y * kMlaTcHeadsPerCta;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t2 = (lane & 3) * 2;
  const int* table = p.block_tables + int64_t(it.seq) * p.max_blocks_per_seq;
  const int kv_hi = min(it.kv_end, it.q_pos0 + it.nq);  // no token of the item sees kv_hi
  const int ntiles = kv_hi > it.kv_begin ? (kv_hi - it.kv_begin + kTcTile - 1) / kTcTile : 0;

  for (int idx = tid; idx < kTcRows * kTcChunks; idx += kTcThreads) {
    const int r = idx / kTcChunks, c = idx % kTcChunks;
    const int i = r / kMlaTcHeadsPerCta, h = h0 + r % kMlaTcHeadsPerCta;
    bf16* dst = q_s + r * kTcLd + c * 8;
    if (i < it.nq && h < H) {
      const int64_t th = int64_t(it.q_begin + i) * H + h;
      cp_async16(dst, c < kMlaLat / 8 ? p.q_abs + th * kMlaLat + c * 8
                                         : p.q + th * kMlaQk + 128 + (c - kMlaLat / 8) * 8);
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  }
  // Tile n into buffer n % 2; rows at or past kv_hi are zero (P is 0 there, V must be finite).
  auto load_tile = [&](int n) {
    bf16* buf = k_s + (n & 1) * kTcTile * kTcLd;
    const int j0 = it.kv_begin + n * kTcTile;
    for (int idx = tid; idx < kTcTile * kTcChunks; idx += kTcThreads) {
      const int r = idx / kTcChunks, c = idx % kTcChunks, pos = j0 + r;
      bf16* dst = buf + r * kTcLd + c * 8;
      if (pos < kv_hi) {
        const int64_t row = int64_t(table[pos / kMlaBlock]) * kMlaBlock + pos % kMlaBlock;
        if (!p.cache8) {
          cp_async16(dst, p.cache + row * kMlaRow + c * 8);
        } else {
          const uint8_t* rec = p.cache8 + row * kMlaFp8Row;
          if (c < kMlaLat / 8) {
            const float s = reinterpret_cast<const float*>(rec + kMlaFp8ScaleOff)[c / 16];
            *reinterpret_cast<uint4*>(dst) =
                fp8x8_to_bf16(*reinterpret_cast<const uint2*>(rec + c * 8), fp8_scale2(s));
          } else {
            cp_async16(dst, rec + kMlaFp8PeOff + (c - kMlaLat / 8) * 16);
          }
        }
      } else {
        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
      }
    }
    cp_async_commit();
  };
  if (ntiles > 0)
    load_tile(0);
  else
    cp_async_commit();

  // Softmax role: row srow, columns 8·spart .. +8 of each tile.
  const int srow = tid >> 2, spart = tid & 3, si = srow / kMlaTcHeadsPerCta;
  const int last = si < it.nq ? min(kv_hi - 1, it.q_pos0 + si) : -1;  // last visible position
  float m_run = -INFINITY, l_run = 0.f;
  // MMA roles.
  const int rb = 16 * (warp & 3), kh = warp >> 2;  // S rows and k half of this warp
  const int cw = 64 * warp;                        // O columns of this warp
  float o[4][8][4];
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][nt][e] = 0.f;

  for (int n = 0; n < ntiles; ++n) {
    cp_async_wait<0>();
    // Tile n (and Q) landed for every thread; everyone is done with tile n − 1's buffer, S, P, α.
    __syncthreads();
    if (n + 1 < ntiles) load_tile(n + 1);
    const bf16* kb = k_s + (n & 1) * kTcTile * kTcLd;
    {
      float sacc[4][4];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) sacc[nt][e] = 0.f;
#pragma unroll 6
      for (int k0 = kh * kTcKHalf; k0 < (kh + 1) * kTcKHalf; k0 += 16) {
        uint32_t a[4], b[4], b2[4];
        tc_ldsm_a(a, q_s, kTcLd, rb, k0, lane);
        tc_ldsm_b_nk(b, kb, kTcLd, 0, k0, lane);
        tc_ldsm_b_nk(b2, kb, kTcLd, 16, k0, lane);
        tc_mma(sacc[0], a, b[0], b[1]);
        tc_mma(sacc[1], a, b[2], b[3]);
        tc_mma(sacc[2], a, b2[0], b2[1]);
        tc_mma(sacc[3], a, b2[2], b2[3]);
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        float* s0 = s_s + (kh * kTcRows + rb + g) * kTcLdS + nt * 8 + t2;
        *reinterpret_cast<float2*>(s0) = make_float2(sacc[nt][0] * p.scale, sacc[nt][1] * p.scale);
        *reinterpret_cast<float2*>(s0 + 8 * kTcLdS) =
            make_float2(sacc[nt][2] * p.scale, sacc[nt][3] * p.scale);
      }
    }
    __syncthreads();
    {
      const float* sr = s_s + srow * kTcLdS + spart * 8;
      const float* sr2 = sr + kTcRows * kTcLdS;
      const float4 x0 = *reinterpret_cast<const float4*>(sr);
      const float4 x1 = *reinterpret_cast<const float4*>(sr + 4);
      const float4 y0 = *reinterpret_cast<const float4*>(sr2);
      const float4 y1 = *reinterpret_cast<const float4*>(sr2 + 4);
      float s[8] = {x0.x + y0.x, x0.y + y0.y, x0.z + y0.z, x0.w + y0.w,
                    x1.x + y1.x, x1.y + y1.y, x1.z + y1.z, x1.w + y1.w};
      const int j0 = it.kv_begin + n * kTcTile + spart * 8;
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        if (j0 + c > last) s[c] = -INFINITY;
        mx = fmaxf(mx, s[c]);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run, mx);
      float alpha = 1.f, sum = 0.f;
      __align__(16) bf16 pb[8];
      if (m_new == -INFINITY) {  // nothing visible to this row yet
#pragma unroll
        for (int c = 0; c < 8; ++c) pb[c] = __float2bfloat16(0.f);
      } else {
        alpha = __expf(m_run - m_new);  // 0 while m_run is −inf
#pragma unroll
        for (int c = 0; c < 8; ++c) {
          pb[c] = __float2bfloat16(__expf(s[c] - m_new));
          sum += __bfloat162float(pb[c]);
        }
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      l_run = l_run * alpha + sum;
      m_run = m_new;
      *reinterpret_cast<uint4*>(p_s + srow * kTcLdP + spart * 8) =
          *reinterpret_cast<const uint4*>(pb);
      if (spart == 0) alpha_s[srow] = alpha;
    }
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < 4; ++mt) {
      const float a0 = alpha_s[mt * 16 + g], a1 = alpha_s[mt * 16 + g + 8];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        o[mt][nt][0] *= a0;
        o[mt][nt][1] *= a0;
        o[mt][nt][2] *= a1;
        o[mt][nt][3] *= a1;
      }
    }
#pragma unroll
    for (int k0 = 0; k0 < kTcTile; k0 += 16) {
      uint32_t a[4][4];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) tc_ldsm_a(a[mt], p_s, kTcLdP, mt * 16, k0, lane);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t b[4];
        tc_ldsm_b_kn(b, kb, kTcLd, k0, cw + np * 16, lane);
#pragma unroll
        for (int mt = 0; mt < 4; ++mt) {
          tc_mma(o[mt][2 * np], a[mt], b[0], b[1]);
          tc_mma(o[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }
  cp_async_wait<0>();
  if (spart == 0) {
    m_s[srow] = m_run;
    l_s[srow] = l_run;
  }
  __syncthreads();
  // Accumulator rows mt·16 + g (+ 8) are token mt, head h0 + g (+ 8).
#pragma unroll
  for (int mt = 0; mt < 4; ++mt) {
    if (mt >= it.nq) break;
    const int t = it.q_begin + mt;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = mt * 16 + g + 8 * hf, h = h0 + g + 8 * hf;
      if (h >= H) continue;
      store_attention_row(p, it.split, t, h, o[mt], hf, m_s[r], l_s[r], cw + t2,
                          warp == 0 && t2 == 0);
    }
  }
}

}  // namespace kimi::cuda::mla
