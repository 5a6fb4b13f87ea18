// MLA decode attention on tensor cores (contract in mla.h; same items1, outputs and partials as
// mla_attn_kernel<1>).
//
// A decode item is one query token of one sequence and a KV range; its heads all share the one
// 576-wide KV head, so one CTA (8 warps) takes all of them, up to 32 (a rank's heads: 32, or
// 16 / 8 / 4 under tensor parallelism), and each cache row crosses DRAM once per (token, split).
// Query rows: R = 16·MT (MT = 1 for H <= 16, else 2; rows of absent heads are zero, computed and
// dropped); more than 32 heads take several CTAs (blockIdx.y, 32 heads each). The item's range
// [kv_begin, min(kv_end, q_pos0 + 1)) is walked in tiles of 32 cache rows (half a block: one
// contiguous 36 KB read), gathered through the block table (entries read a tile ahead) by
// cp.async into a 5-stage ring (4 tiles in flight while one is used; the cache is read with an
// L2 evict-first policy: it streams through once). Per tile:
//   1. S = Q·Kᵀ (R × 32, k = 576) with mma.sync m16n8k16 bf16 → fp32: warp w takes k-quarter
//      w % 4 (9 k-steps of 16) × column half w / 4 (2 n-tiles); its Q fragments (MT × 9 × 4
//      registers) are loaded once from global memory and stay in registers, so only K goes
//      through shared memory. The four k-quarters' partial S meet in shared memory.
//   2. Online softmax in fp32, 256 / R threads per row: sum of the quarters × scale, positions
//      past the range masked, running max m and sum l, P = e^{s − m} rounded to bf16 (l sums the
//      rounded values), α = e^{m_old − m_new} per row.
//   3. O = α·O + P·V with V = the first 512 channels of the same cache rows: warp w owns O
//      columns 64·w .. +64 for all R rows (MT × 8 accumulator tiles).
// At the end O/l goes to u (bf16) for unsplit items, (O, m, l) to the partials for split ones.
// kBulk (MlaAttnParams::decode_bulk_copy, experimental, not yet run on a GPU): the rows come by
// TMA bulk copies completing on an mbarrier per ring slot instead of cp.async.
// Shared memory: K ring [5][32][584] bf16, S quarters [4][32][36] fp32, P [32][40] bf16, α, m,
// l [32], mbarriers [5]: 208.3 KB, one CTA per SM. Helpers and fragment layouts: mla_mma.cuh.
#pragma once

#include "mla/mla_mma.cuh"
#include "pdl.cuh"
#include "mla/mla_tc.cuh"

namespace kimi::cuda::mla {

constexpr int kDecTile = 32;    // cache rows per KV tile
constexpr int kDecStages = 5;   // ring of KV tiles (4 in flight while one is used)
constexpr int kDecKParts = 4;   // warps splitting k (576) for S
constexpr int kDecKSteps = kMlaRow / 16 / kDecKParts;  // k-steps of 16 per warp
constexpr int kDecRows = kMlaDecHeadsPerCta;           // query rows at most
constexpr size_t kDecOffS = size_t(kDecStages) * kDecTile * kTcLd * 2;
constexpr size_t kDecOffP = kDecOffS + size_t(kDecKParts) * kDecRows * kTcLdS * 4;
constexpr size_t kDecOffA = kDecOffP + size_t(kDecRows) * kTcLdP * 2;
constexpr size_t kDecOffM = kDecOffA + kDecRows * 4;
constexpr size_t kDecOffL = kDecOffM + kDecRows * 4;
constexpr size_t kDecOffBar = kDecOffL + kDecRows * 4;  // kBulk: an mbarrier per ring slot
constexpr size_t kDecSmem = kDecOffBar + kDecStages * 8;
static_assert(kDecTile == kTile, "split chunks of the plans are multiples of kTile");
static_assert(kDecKSteps * 16 * kDecKParts == kMlaRow && kMlaLat % 16 == 0);
static_assert(kTcThreads == 256 && kDecKParts * 2 == kTcThreads / 32, "8 warps: 4 k-parts × 2");
static_assert(kDecOffS % 16 == 0 && kDecOffP % 16 == 0 && kDecOffA % 16 == 0 &&
              kDecOffBar % 8 == 0);
static_assert(kDecTile == 32 && kMlaRow * 2 % 16 == 0, "kBulk: a lane per row, 16-byte multiples");
static_assert(kDecSmem <= 227 * 1024, "one CTA per SM must fit");

// kBulk: cache rows by TMA bulk copies (one 1152-byte copy per row, issued by the lanes of warp
// 0, completing on the ring slot's mbarrier) instead of cp.async; experimental, see mla.h.
template <int MT, bool kBulk>
__global__ void __launch_bounds__(kTcThreads, 1) mla_decode_tc_kernel(MlaAttnParams p) {
  pdl_launch_dependents();  // PDL (launch.h): everything below may depend on the previous kernel
  pdl_wait();
  constexpr int R = 16 * MT;            // query rows (heads) of this CTA
  constexpr int kTpr = kTcThreads / R;  // softmax threads per row
  constexpr int kCpt = kDecTile / kTpr;  // softmax columns per thread
  static_assert(kTpr <= 32 && kCpt * kTpr == kDecTile && (kCpt == 2 || kCpt == 4));
  extern __shared__ uint4 smem_raw[];
  char* sm = reinterpret_cast<char*>(smem_raw);
  bf16* k_s = reinterpret_cast<bf16*>(sm);                // [kDecStages][32][kTcLd]
  float* s_s = reinterpret_cast<float*>(sm + kDecOffS);   // [kDecKParts][R][kTcLdS]
  bf16* p_s = reinterpret_cast<bf16*>(sm + kDecOffP);     // [R][kTcLdP]
  float* alpha_s = reinterpret_cast<float*>(sm + kDecOffA);
  float* m_s = reinterpret_cast<float*>(sm + kDecOffM);
  float* l_s = reinterpret_cast<float*>(sm + kDecOffL);
  uint64_t* full = reinterpret_cast<uint64_t*>(sm + kDecOffBar);  // [kDecStages] (kBulk)

  const MlaWorkItem it = p.items[blockIdx.x];
  if (it.nq <= 0) return;  // an idle slot of the decode plan
  const int H = p.num_heads, h0 = blockIdx.y * kMlaDecHeadsPerCta;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t2 = (lane & 3) * 2;
  const int* table = p.block_tables + int64_t(it.seq) * p.max_blocks_per_seq;
  const int kv_hi = min(it.kv_end, it.q_pos0 + 1);  // positions at or past kv_hi are not seen
  const int ntiles = kv_hi > it.kv_begin ? (kv_hi - it.kv_begin + kDecTile - 1) / kDecTile : 0;
  const uint64_t policy = policy_evict_first();

  // Every plan starts items at multiples of 32, so a tile is 32 consecutive rows of one cache
  // block: one table entry, read an iteration ahead so no copy waits on it; other ranges take a
  // table entry per row.
  const bool aligned = it.kv_begin % kDecTile == 0;
  auto tile_block = [&](int n) {
    return n < ntiles ? table[(it.kv_begin + n * kDecTile) / kMlaBlock] : 0;
  };
  // Tile n into ring slot n % kDecStages (cp.async: one commit group per call, empty past the
  // last tile; kBulk: completes on full[slot]); rows at or past kv_hi are zero (P is 0 there, V
  // must be finite).
  auto load_tile = [&](int n, int blk) {
    if constexpr (kBulk) {
      if (n >= ntiles) return;
      bf16* buf = k_s + (n % kDecStages) * kDecTile * kTcLd;
      const int j0 = it.kv_begin + n * kDecTile, rows = min(kDecTile, kv_hi - j0);
      for (int idx = rows * kTcChunks + tid; idx < kDecTile * kTcChunks; idx += kTcThreads)
        *reinterpret_cast<uint4*>(buf + (idx / kTcChunks) * kTcLd + (idx % kTcChunks) * 8) =
            make_uint4(0, 0, 0, 0);
      if (warp == 0) {
        uint64_t* bar = full + n % kDecStages;
        // The slot was last read (ldmatrix) before the barrier this call follows.
        fence_proxy_async();
        if (lane == 0) mbar_arrive_expect_tx(bar, unsigned(rows) * kMlaRow * 2);
        __syncwarp();
        if (lane < rows) {
          const int pos = j0 + lane;
          const bf16* src =
              aligned ? p.cache + (int64_t(blk) * kMlaBlock + pos % kMlaBlock) * kMlaRow
                      : p.cache + (int64_t(table[pos / kMlaBlock]) * kMlaBlock + pos % kMlaBlock) *
                                      kMlaRow;
          bulk_g2s(buf + lane * kTcLd, src, kMlaRow * 2, bar, policy);
        }
      }
      return;
    }
    if (n < ntiles) {
      bf16* buf = k_s + (n % kDecStages) * kDecTile * kTcLd;
      const int j0 = it.kv_begin + n * kDecTile;
      const bf16* tile = p.cache + (int64_t(blk) * kMlaBlock + j0 % kMlaBlock) * kMlaRow;
#pragma unroll
      for (int idx = tid; idx < kDecTile * kTcChunks; idx += kTcThreads) {
        const int r = idx / kTcChunks, c = idx % kTcChunks, pos = j0 + r;
        bf16* dst = buf + r * kTcLd + c * 8;
        if (pos < kv_hi) {
          const bf16* src =
              aligned ? tile + idx * 8
                      : p.cache + (int64_t(table[pos / kMlaBlock]) * kMlaBlock + pos % kMlaBlock) *
                                      kMlaRow + c * 8;
          tc_cp_async16_hint(dst, src, policy);
        } else {
          *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
        }
      }
    }
    cp_async_commit();
  };
  if constexpr (kBulk) {
    if (tid == 0) {
      for (int i = 0; i < kDecStages; ++i) mbar_init(full + i, 1);
      fence_mbar_init();
    }
    __syncthreads();
  }
  {
    int blk[kDecStages - 1];  // the prologue's table reads, all in flight together
#pragma unroll
    for (int n = 0; n < kDecStages - 1; ++n) blk[n] = tile_block(n);
#pragma unroll
    for (int n = 0; n < kDecStages - 1; ++n) load_tile(n, blk[n]);
  }
  int blk_next = tile_block(kDecStages - 1);

  // S roles: k-steps kq·9 .. +9, columns 16·nh .. +16 of each tile.
  const int kq = warp % kDecKParts, nh = warp / kDecKParts;
  // Q as A fragments, straight from global memory (row r = head h0 + r; 4-byte pairs of columns).
  uint32_t qa[MT][kDecKSteps][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int h = h0 + mt * 16 + g + 8 * hf;
      const int64_t th = int64_t(it.q_begin) * H + h;
#pragma unroll
      for (int ks = 0; ks < kDecKSteps; ++ks) {
        const int k0 = (kq * kDecKSteps + ks) * 16;  // a k-step lies wholly in q_abs or q_pe
        const bf16* src = k0 < kMlaLat ? p.q_abs + th * kMlaLat + k0
                                       : p.q + th * kMlaQk + 128 + (k0 - kMlaLat);
#pragma unroll
        for (int half = 0; half < 2; ++half)
          qa[mt][ks][hf + 2 * half] =
              h < H ? *reinterpret_cast<const uint32_t*>(src + t2 + 8 * half) : 0u;
      }
    }

  // Softmax role: row srow, columns kCpt·spart .. +kCpt of each tile.
  const int srow = tid / kTpr, spart = tid % kTpr;
  float m_run = -INFINITY, l_run = 0.f;
  const int cw = 64 * warp;  // O columns of this warp
  float o[MT][8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][nt][e] = 0.f;

  // S = Q·Kᵀ of tile n (this warp's k-quarter × column half) into shared memory.
  auto s_phase = [&](int n) {
    const bf16* kb = k_s + (n % kDecStages) * kDecTile * kTcLd;
    float sacc[MT][2][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) sacc[mt][nt][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kDecKSteps; ++ks) {
      uint32_t b[4];
      tc_ldsm_b_nk(b, kb, kTcLd, 16 * nh, (kq * kDecKSteps + ks) * 16, lane);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        tc_mma(sacc[mt][0], qa[mt][ks], b[0], b[1]);
        tc_mma(sacc[mt][1], qa[mt][ks], b[2], b[3]);
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        float* s0 = s_s + (kq * R + mt * 16 + g) * kTcLdS + 16 * nh + nt * 8 + t2;
        *reinterpret_cast<float2*>(s0) = make_float2(sacc[mt][nt][0], sacc[mt][nt][1]);
        *reinterpret_cast<float2*>(s0 + 8 * kTcLdS) = make_float2(sacc[mt][nt][2], sacc[mt][nt][3]);
      }
  };
  // Online softmax of tile n: P (bf16) and α into shared memory.
  auto softmax_phase = [&](int n) {
    const int j0 = it.kv_begin + n * kDecTile + spart * kCpt;
    float s[kCpt];
    float mx = -INFINITY;
#pragma unroll
    for (int c = 0; c < kCpt; ++c) {
      float acc = 0.f;
#pragma unroll
      for (int q = 0; q < kDecKParts; ++q) acc += s_s[(q * R + srow) * kTcLdS + spart * kCpt + c];
      s[c] = j0 + c < kv_hi ? acc * p.scale : -INFINITY;
      mx = fmaxf(mx, s[c]);
    }
#pragma unroll
    for (int off = kTpr / 2; off > 0; off >>= 1)
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    const float m_new = fmaxf(m_run, mx);
    float alpha = 1.f, sum = 0.f;
    __align__(8) bf16 pb[kCpt];
    if (m_new == -INFINITY) {  // nothing visible yet (cannot happen inside the range; kept safe)
#pragma unroll
      for (int c = 0; c < kCpt; ++c) pb[c] = __float2bfloat16(0.f);
    } else {
      alpha = __expf(m_run - m_new);  // 0 while m_run is −inf
#pragma unroll
      for (int c = 0; c < kCpt; ++c) {
        pb[c] = __float2bfloat16(__expf(s[c] - m_new));
        sum += __bfloat162float(pb[c]);
      }
    }
#pragma unroll
    for (int off = kTpr / 2; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    l_run = l_run * alpha + sum;
    m_run = m_new;
    bf16* pdst = p_s + srow * kTcLdP + spart * kCpt;
    if constexpr (kCpt == 4)
      *reinterpret_cast<uint2*>(pdst) = *reinterpret_cast<const uint2*>(pb);
    else
      *reinterpret_cast<uint32_t*>(pdst) = *reinterpret_cast<const uint32_t*>(pb);
    if (spart == 0) alpha_s[srow] = alpha;
  };
  // O = α·O + P·V of tile n.
  auto pv_phase = [&](int n) {
    const bf16* kb = k_s + (n % kDecStages) * kDecTile * kTcLd;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
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
    for (int k0 = 0; k0 < kDecTile; k0 += 16) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) tc_ldsm_a(a[mt], p_s, kTcLdP, mt * 16, k0, lane);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t b[4];
        tc_ldsm_b_kn(b, kb, kTcLd, k0, cw + np * 16, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          tc_mma(o[mt][2 * np], a[mt], b[0], b[1]);
          tc_mma(o[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  };

  // Three barriers per tile: S(n) | softmax(n) | P·V(n). (Running P·V(n) and S(n + 1) between
  // the same barriers, with two S buffers, measured 1-6% slower on an H200.)
  for (int n = 0; n < ntiles; ++n) {
    if constexpr (kBulk)
      mbar_wait(full + n % kDecStages, unsigned(n / kDecStages) & 1u);  // use n / S of the slot
    else
      cp_async_wait<kDecStages - 2>();
    // Tile n landed for every thread; everyone is done with tile n − 1 (ring slot, S, P, α).
    __syncthreads();
    load_tile(n + kDecStages - 1, blk_next);
    blk_next = tile_block(n + kDecStages);
    s_phase(n);
    __syncthreads();
    softmax_phase(n);
    __syncthreads();
    pv_phase(n);
  }
  cp_async_wait<0>();
  if (spart == 0) {
    m_s[srow] = m_run;
    l_s[srow] = l_run;
  }
  __syncthreads();
  // Accumulator rows mt·16 + g (+ 8) are heads h0 + mt·16 + g (+ 8).
  const int t = it.q_begin;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = mt * 16 + g + 8 * hf, h = h0 + r;
      if (h >= H) continue;
      store_attention_row(p, it.split, t, h, o[mt], hf, m_s[r], l_s[r], cw + t2,
                          warp == 0 && t2 == 0);
    }
}

}  // namespace kimi::cuda::mla
