// MLA decode attention on wgmma + TMA (sm_90a; contract in mla.h; same items1, outputs and
// partials as mla_attn_kernel<1>).
//
// A decode item is one query token of one sequence and a KV range; its heads all share the one
// 576-wide KV head, so one CTA takes all of them (up to 32: a rank's heads, 32, or 16 / 8 / 4
// under tensor parallelism; more take several CTAs, blockIdx.y) and each cache row crosses DRAM
// once per (token, split). The keys are the M dimension of both products, so 32 heads fill an
// N = 32 MMA without padding:
//   Sᵀ = K·Qᵀ  (64 keys × 32 heads, k = 576): 36 wgmma m64n32k16, A = the tile's cache rows
//              (K-major), B = Q [32 heads][576] (K-major), both from shared memory;
//   Oᵀ += Vᵀ·Pᵀ (512 channels × 32 heads, k = 64 keys): 8 m-tiles × 4 k-steps of wgmma
//              m64n32k16, A = the same cache rows read MN-major (transposed), B = P [32 heads]
//              [64 keys] written to shared memory by the softmax (stmatrix .trans of the Sᵀ
//              accumulators).
// A tile is one cache block (64 rows, one block-table entry), loaded by 9 TMA boxes of
// [64 rows][64 channels] in the 128-byte swizzle (16-byte piece c of row r at c ^ (r % 8)) from
// the cache viewed as a [num_blocks·64][576] matrix, with an L2 evict-first policy (the cache
// streams through once; the split partials stay in L2).
// Warp roles (160 threads): warps 0-3 are the consumer warpgroup; warp 4's lane 0 is the
// producer, filling a 2-stage ring (full / empty mbarriers per slot, one empty arrival per
// consumer warp once its wgmmas are done with the slot), reading block-table entries a tile
// ahead. Per tile the consumers:
//   1. wait for the slot, issue Sᵀ and wait for it;
//   2. softmax in base 2 (scale·log2 e folded in) with lazy rescaling: P = exp2(s − m) against a
//      reference m per head that moves only when a score passes it by more than kDecLazy = 8
//      (P <= 256: bf16 and the fp32 sums keep their relative precision). A lane holds 2 keys ×
//      8 heads; it writes its P (bf16, stmatrix .trans) and votes whether any of its scores
//      passed; one barrier (bar.red.or) publishes P and the vote. Usually nobody passed: no
//      tile maximum, no shuffles, no α. Otherwise (the first tile, then rarely) the slow path
//      takes the tile maximum (shuffles over the 8 key lanes, the 4 warps through shared
//      memory), m = max(m, tile max), rescales O and l by α = exp2(m_old − m), rewrites P, and
//      a second barrier. Keys outside [kv_begin, kv_hi) are masked (first and last tile), and
//      on the last tile cache rows at or past kv_hi are zeroed in the slot (after a barrier:
//      every warp's Sᵀ has read them) before Pᵀ·V reads them (P = 0 there, but rows past the
//      context may hold anything: 0 · NaN);
//   3. issue Oᵀ, wait for it, release the slot. bf16, from the third tile on: Sᵀ of tile n + 1
//      goes out behind Oᵀ before the wait (wgmma_wait<1>), so the tensor pipe is not idle across
//      the release, the full-barrier wait and the 36 issues; step 1 of the next tile then only
//      waits. Not in the first two tiles: waiting for tile n + 1 before releasing slot n would
//      hold up the load of tile n + 2 in the ramp. Measured on H200 (docs/perf-log.md, session
//      10): 307 → 295 us at 1M (93% → 97% of copy), 3-4% faster at B = 64.
// P has one buffer per ring slot: with one barrier per tile a warp may write P of tile n while
// another still runs Oᵀ of tile n − 1; tile n in its slot means every warp released tile
// n − 2, the last reader of that buffer. l is kept as per-lane partial sums (reduced once at
// the end). At the end Oᵀ goes through shared memory (the ring, free by then) so u (bf16, O/l)
// or the partial (O, m, l; m the reference, in natural units as the combine expects: any m
// works there) is written in whole rows.
// Shared memory: Q 36 KB + 2 × 72 KB ring + 2 × 4 KB P + reductions 0.75 KB + 1 KB alignment
// slack: 189.75 KiB (194,304 bytes), one CTA per SM; 204 registers, no spills.
//
// fp8 cache (kFp8, mla.h's record layout; where the decode items average kDec8MinTiles tiles or
// more, mla_decode_fp8.cuh's register-operand kernel runs instead): 384 threads; the consumers'
// loop is the bf16 one (one P buffer: the staging area takes the room of the second, so a consumer barrier comes
// before P is written; no early Sᵀ). Warp 8's lane 0 is the producer (warps 8-11 hand their
// registers to the others: setmaxnreg producer 40, converters 200, consumers 240): each tile's
// 64 records (41,984 bytes: codes, k_pe and scales as they are in the cache) land in a staging
// area with one bulk copy (cp.async.bulk, L2 evict-first), block-table entries read two tiles
// ahead. The converter warpgroup (warps 4-7) replaces the bf16 producer: each thread loads its 16
// pieces of codes, 4 pieces of k_pe and 4 rows' scales into registers, fences the async proxy
// and arrives on the stage_empty barrier (all 128: the next copy must not land before every
// read is done), and once all have, the producer starts the next tile's copy: one copy always in
// flight, overlapping the conversion of the tile before it and the consumers' work on the one
// before that. The converters then wait for the ring slot (the consumers release it after tile
// n − 2) and write k_pe into box 8 and the decoded ĉ (code · scale, exact in bf16: mla_fp8.cuh)
// into boxes 0-7 in TMA's swizzle, each 16-byte store phase (8 lanes: one row, two boxes) on all
// 32 banks, then each fences the async proxy and arrives on the slot's full barrier (128
// arrivals). No spills (168 registers at entry); shared memory 226.75 KiB (232,192 bytes).
// Measured on H200 (docs/perf-log.md): session 9's lazy rescaling and conflict-free stores took
// the fp8 kernel from 47.7% to 55.1% of copy at 1M (342 → 296 us); session 11's producer
// warpgroup with whole-record copies (this layout) against the converters' thread 0 issuing 5
// TMA boxes per tile between two converter barriers: 1M, B = 1 314-326 → 289-290 us (52% → 56%
// of copy), B = 64, 128k 2441-2516 → 2288-2304 us, bit-identical outputs; the bf16 kernel is at
// 93-96% of copy at 1M. Still ~2.2 us per 64-key tile where the tile's bytes take 1.3 us: with
// the converter's stores skipped (results wrong, timing only) the consumer loop alone ran at
// ~1.86 us per tile (session 9). Tried and dropped (same measurements): two consumer
// warpgroups splitting a tile's channels or taking the tiles in turn (session 9: neither faster
// than one); the early Sᵀ (sessions 10 and 11: no faster); an L2 bulk prefetch of the block two
// tiles ahead (session 10: 5% slower at 1M); the staging area in 2 or 4 parts with their own
// loads and barriers (slower: ~35 ns per extra TMA box per tile); the producer issuing TMA boxes
// instead of whole records (314 us at 1M) or two half-tile copies (292-298 us).
#pragma once

#include <cuda.h>  // CUtensorMap

#include "async_copy.cuh"
#include "mla/mla.h"
#include "mla/mla_fp8.cuh"
#include "pdl.cuh"
#include "wgmma_common.cuh"

namespace kimi::cuda::mla {

constexpr int kDecKeys = kMlaBlock;  // keys per tile: one cache block
constexpr int kDecStages = 2;
constexpr int kDecHeads = kMlaDecHeadsPerCta;
constexpr uint32_t kDecBox = kDecKeys * 128;              // [64 rows][64 bf16]: 8 KB
constexpr uint32_t kDecTileBytes = 9 * kDecBox;           // 576 channels
constexpr uint32_t kDecQBox = kDecHeads * 128;            // [32 heads][64 bf16]: 4 KB
constexpr uint32_t kDecQBytes = 9 * kDecQBox;
constexpr uint32_t kDecPBytes = kDecHeads * 128;          // [32 heads][64 keys] bf16
// P is exp2(s − m) against a reference m that moves only when a score passes it by more than
// this (base 2): P <= 256, exact enough in bf16 and fp32 (lazy rescaling).
constexpr float kDecLazy = 8.f;
constexpr int kDecOutLd = kMlaLat + 4;  // fp32 row of the staged Oᵀ (conflict-free writes)
static_assert(kDecHeads == 32 && kMlaRow == 9 * 64 && kMlaLat == 8 * 64);

// Warp roles and shared memory: the consumer warpgroup, then a producer warp (bf16) or the
// converter warpgroup and the producer warpgroup (fp8; warp 8's lane 0 issues the copies).
template <bool kFp8>
struct DecLayout {
  // fp8: the producer warpgroup gives its registers to the others (setmaxnreg: producer 40,
  // converter 200, consumer 240; 384 threads would cap every thread at 168).
  static constexpr int kThreads = 128 + (kFp8 ? 256 : 32);
  static constexpr uint32_t kOffRing = kDecQBytes;
  // P of the tile in ring slot i (bf16). The consumers write P of tile n once tile n is in its
  // slot, so every consumer warp is done with P of the slot's previous tile, n − 2 (its release
  // came first); a warp may still run Oᵀ of tile n − 1 on the other buffer. fp8: one buffer (the
  // staging area needs the room), a consumer barrier before it is written.
  static constexpr int kPBufs = kFp8 ? 1 : kDecStages;
  static constexpr uint32_t kOffP = kOffRing + kDecStages * kDecTileBytes;
  // fp8: a tile's records [64][656] as they are in the cache (codes, k_pe, scales).
  static constexpr uint32_t kOffStg = kOffP + kPBufs * kDecPBytes;
  static constexpr uint32_t kStgBytes = kFp8 ? kDecKeys * kMlaFp8Row : 0;
  // [4 warps][32 heads] fp32 (the slow path's maxima, the end's l), then [32] m, [32] l.
  static constexpr uint32_t kOffRed = kOffStg + kStgBytes;
  // + 1 KB for the 1024 alignment; the kernel's static barriers (<= 64 bytes) come on top.
  static constexpr size_t kSmem = kOffRed + 6 * kDecHeads * 4 + 1024;
  static_assert(kOffStg % 1024 == 0 && kSmem + 64 <= 227 * 1024, "one CTA per SM must fit");
  static_assert(size_t(kDecHeads) * kDecOutLd * 4 <= kDecTileBytes);
};

// Kernel arguments: the params and, bf16, the cache as a [num_blocks·64][576] tensor map (boxes
// of [64 rows][64 channels]); the fp8 kernel copies whole records from p.cache8 (no tensor map).
struct DecArgs {
  CUtensorMap cache;
  MlaAttnParams p;
};

// fp8: the converter warpgroup's loop (see the header comment); ct = 0..127. Thread ct takes
// rows r = ct / 8 + 16j (j = 0..3) and 16-byte piece k = ct % 8 of each 128-code group b of a
// row (codes 128b + 16k .. + 16: piece i = 4b + j), of its k_pe, and the row's 4 scales.
template <class L>
__device__ __forceinline__ void mla_decode_convert(unsigned char* sm, uint64_t* stage,
                                                   uint64_t* stage_empty, uint64_t* full,
                                                   uint64_t* empty, int ntiles, int ct) {
  constexpr int kPieces = 4 * kDecKeys * 8 / 128;  // 16-byte pieces of codes per thread
  const int k = ct % 8;
  const unsigned char* const stg = sm + L::kOffStg;
  for (int n = 0; n < ntiles; ++n) {
    const int slot = n % kDecStages;
    uint4 v[kPieces];
    uint4 pe[4];       // k_pe piece k of rows ct / 8 + 16 jj
    uint32_t s[4][2];  // row j's scales as bf16 (a power of two's fp32 high half), 2 per register
    mbar_wait(stage, n & 1);
#pragma unroll
    for (int i = 0; i < kPieces; ++i) {
      const int b = i / 4, r = ct / 8 + 16 * (i % 4);
      v[i] = *reinterpret_cast<const uint4*>(stg + r * kMlaFp8Row + 128 * b + 16 * k);
    }
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      const int r = ct / 8 + 16 * jj;
      const uint4 f = *reinterpret_cast<const uint4*>(stg + r * kMlaFp8Row + kMlaFp8ScaleOff);
      pe[jj] = *reinterpret_cast<const uint4*>(stg + r * kMlaFp8Row + kMlaFp8PeOff + 16 * k);
      s[jj][0] = __byte_perm(f.x, f.y, 0x7632);
      s[jj][1] = __byte_perm(f.z, f.w, 0x7632);
    }
    // The reads above (generic proxy) must be done before the producer's next copy (async proxy)
    // overwrites the staging area: a proxy fence, then every thread's own arrival. Without them
    // (one arrival per warp after __syncwarp) results changed from run to run and NaN rows of
    // the next tile leaked in (docs/perf-log.md, session 11, fp8mla3).
    fence_proxy_async();
    mbar_arrive(stage_empty);
    // The slot's last reader was tile n − 2; its first use waits on parity 1: returns at once.
    mbar_wait(empty + slot, ((n / kDecStages) & 1) ^ 1);
    unsigned char* const tile = sm + L::kOffRing + slot * kDecTileBytes;
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {  // k_pe into box 8, swizzled (one row's 8 pieces per phase)
      const int r = ct / 8 + 16 * jj;
      *reinterpret_cast<uint4*>(tile + 8 * kDecBox + r * 128 + ((k ^ (r % 8)) * 16)) = pe[jj];
    }
    // A thread's 16 codes are bf16 pieces pc, pc + 1 of one row of box 2b + k / 4. Threads
    // k = 4..7 store theirs in the other order, so that the 8 lanes of a 16-byte store phase
    // (one row, k = 0..7) cover all 8 pieces of the two boxes' rows: all 32 banks, no conflict.
    const int pc = 2 * (k % 4), hi = k / 4;
#pragma unroll
    for (int i = 0; i < kPieces; ++i) {
      const int b = i / 4, j = i % 4, r = ct / 8 + 16 * j;
      // The scale of group b twice (bf16x2).
      const uint32_t s2 = __byte_perm(s[j][b / 2], 0, b % 2 ? 0x3232 : 0x1010);
      const __nv_bfloat162 scale2 = *reinterpret_cast<const __nv_bfloat162*>(&s2);
      unsigned char* const row = tile + (2 * b + hi) * kDecBox + r * 128;
      const uint4 lo8 = fp8x8_to_bf16(make_uint2(v[i].x, v[i].y), scale2);
      const uint4 hi8 = fp8x8_to_bf16(make_uint2(v[i].z, v[i].w), scale2);
      *reinterpret_cast<uint4*>(row + (((pc + hi) ^ (r % 8)) * 16)) = hi ? hi8 : lo8;
      *reinterpret_cast<uint4*>(row + (((pc + 1 - hi) ^ (r % 8)) * 16)) = hi ? lo8 : hi8;
    }
    fence_proxy_async();       // generic writes, read by wgmma (async proxy)
    mbar_arrive(full + slot);  // every thread, after its own proxy fence
  }
}

// fp8: the producer (warp 8's lane 0). Tile n + 1's records (one bulk copy of the block's 64
// records, 41,984 bytes) go out into the staging area once every converter thread has read tile
// n's; block-table entries are read two tiles ahead.
__device__ __forceinline__ void mla_decode_produce(const MlaAttnParams& p, unsigned char* stg,
                                                   uint64_t* stage, uint64_t* stage_empty,
                                                   const int* table, int blk0, int ntiles) {
  constexpr uint32_t kBytes = kDecKeys * kMlaFp8Row;
  const uint64_t policy = policy_evict_first();
  auto load = [&](int blk) {
    mbar_arrive_expect_tx(stage, kBytes);
    bulk_g2s(stg, p.cache8 + int64_t(blk) * kBytes, kBytes, stage, policy);
  };
  if (ntiles <= 0) return;
  const int blk = table[blk0];
  int next = ntiles > 1 ? table[blk0 + 1] : 0;
  load(blk);
  for (int n = 0; n + 1 < ntiles; ++n) {
    const int after = n + 2 < ntiles ? table[blk0 + n + 2] : 0;
    mbar_wait(stage_empty, n & 1);
    load(next);
    next = after;
  }
}

// Four 8×8 bf16 matrices stored transposed: lanes 8i .. 8i + 7 give the addresses of the stored
// rows 0 .. 7 of matrix i; r[i] holds the lane's (row lane / 4, columns 2(lane % 4), +1) of
// matrix i before the transpose.
__device__ __forceinline__ void stsm_x4_trans(uint32_t addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(
                   addr),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

// The consumer's lazy softmax, shared by both decode kernels (this one and mla_decode_fp8.cuh).
// A lane holds the scores s[4j + 2b + e] of keys 16w + g + 8b, heads 8j + 2t + e.
// P = exp2(s − m) against the reference m per head, to shared memory at st_addr as [32 heads][64
// keys] (the K-major B of Oᵀ, transposed by stmatrix); psum: this lane's sum per head.
__device__ __forceinline__ void dec_store_p(const float (&s)[16], const float (&m_run)[4][2],
                                            uint32_t st_addr, float (&psum)[4][2]) {
#pragma unroll
  for (int x = 0; x < 2; ++x) {
    uint32_t r[4];  // r[i]: keys of b = i % 2, heads 8j + 2t + (0, 1), j = 2x + i / 2
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int j = 2 * x + i / 2, b = i % 2;
      const float p0 = ex2(s[4 * j + 2 * b] - m_run[j][0]);
      const float p1 = ex2(s[4 * j + 2 * b + 1] - m_run[j][1]);
      psum[j][0] = b ? psum[j][0] + p0 : p0;
      psum[j][1] = b ? psum[j][1] + p1 : p1;
      r[i] = pack_bf16x2(p0, p1);
    }
    stsm_x4_trans(st_addr + x * 16 * 128, r);
  }
  fence_proxy_async();  // P (and the bf16 kernel's zeroed rows): generic writes read by wgmma
}
// The slow path (a score passed its head's reference): the tile's maximum per head over the
// lane's 2 keys, its 8 key lanes, then the 4 warps (through red, [4 warps][32 heads], and named
// barrier bar of the warpgroup's 128 threads); the new reference m, α = 2^(m_old − m_new) applied
// to l_run and to the Oᵀ accumulators o[c][4j + i] (head 8j + 2t + (i & 1)). ml: where the
// reference lives between tiles (nullptr: registers only).
__device__ __forceinline__ void dec_rescale(const float (&s)[16], float (&m_run)[4][2],
                                            float (&l_run)[4][2], float (&o)[8][16], float* red,
                                            float* ml, int w, int g, int t, int bar) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float mx[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float v = fmaxf(s[4 * j + e], s[4 * j + 2 + e]);
      v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
      v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 8));
      mx[e] = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 16));
    }
    if (g == 0)
      *reinterpret_cast<float2*>(red + w * kDecHeads + 8 * j + 2 * t) = make_float2(mx[0], mx[1]);
  }
  bar_sync(bar, 128);
  float alpha[4][2];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float2 v = *reinterpret_cast<const float2*>(red + 8 * j + 2 * t);
#pragma unroll
    for (int u = 1; u < 4; ++u) {
      const float2 x = *reinterpret_cast<const float2*>(red + u * kDecHeads + 8 * j + 2 * t);
      v.x = fmaxf(v.x, x.x);
      v.y = fmaxf(v.y, x.y);
    }
    const float tmax[2] = {v.x, v.y};
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      // Finite: every tile holds a visible key (the first tile's α is 0).
      const float m_new = fmaxf(m_run[j][e], tmax[e]);
      alpha[j][e] = ex2(m_run[j][e] - m_new);
      m_run[j][e] = m_new;
      l_run[j][e] *= alpha[j][e];
    }
    if (ml && w == 0 && g == 0)
      *reinterpret_cast<float2*>(ml + 8 * j + 2 * t) = make_float2(m_run[j][0], m_run[j][1]);
  }
#pragma unroll
  for (int c = 0; c < 8; ++c)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) o[c][4 * j + i] *= alpha[j][i & 1];
}

// Named barrier 1: the consumer warpgroup.
template <bool kFp8>
__global__ void __launch_bounds__(DecLayout<kFp8>::kThreads, 1)
    mla_decode_kernel(const __grid_constant__ DecArgs args) {
  using L = DecLayout<kFp8>;
  extern __shared__ unsigned char dec_smem_raw[];
  // full[2], empty[2]; fp8: the staging area's stage (full) and stage_empty barriers
  __shared__ uint64_t bars[2 * kDecStages + 2];
  uint64_t* const full = bars;
  uint64_t* const empty = bars + kDecStages;
  uint64_t* const stage = bars + 2 * kDecStages;
  uint64_t* const stage_empty = stage + 1;
  // Nothing here reads what earlier kernels write: it overlaps their tail (PDL).
  if (threadIdx.x == 0) {
    if (!kFp8) prefetch_tensormap(&args.cache);
    for (int s = 0; s < kDecStages; ++s) {
      // bf16: the producer's expect_tx; fp8: every converter thread, after its writes.
      mbar_init(full + s, kFp8 ? 128 : 1);
      mbar_init(empty + s, 4);  // every consumer warp
    }
    if (kFp8) {
      mbar_init(stage, 1);
      mbar_init(stage_empty, 128);  // every converter thread
    }
    fence_mbar_init();
  }
  pdl_launch_dependents();  // PDL (launch.h): everything below may depend on the previous kernel
  pdl_wait();
  const MlaAttnParams& p = args.p;
  const MlaWorkItem it = p.items[blockIdx.x];
  if (it.nq <= 0) return;  // an idle slot of the decode plan
  const uint32_t base = (smem_u32(dec_smem_raw) + 1023) & ~1023u;  // the swizzle needs 1024
  unsigned char* const sm = dec_smem_raw + (base - smem_u32(dec_smem_raw));
  const uint32_t q_s = base, ring_s = base + L::kOffRing, p_s = base + L::kOffP;

  const int H = p.num_heads, h0 = blockIdx.y * kDecHeads;
  const int kv_hi = min(it.kv_end, it.q_pos0 + 1);  // positions at or past kv_hi are not seen
  const int blk0 = it.kv_begin / kDecKeys;           // the first tile's cache block index
  const int ntiles = kv_hi > it.kv_begin ? (kv_hi - 1) / kDecKeys - blk0 + 1 : 0;
  const int* table = p.block_tables + int64_t(it.seq) * p.max_blocks_per_seq;
  __syncthreads();  // the barriers are initialised

  // Broadcast from lane 0 so the compiler sees warp-uniform values around wgmma (ptxas C7518).
  const int warp = __shfl_sync(0xffffffffu, int(threadIdx.x) / 32, 0);
  const int lane = threadIdx.x % 32;
  if (warp >= 4) {  // fp8: the converter and producer warpgroups; bf16: the producer warp
    if constexpr (kFp8) {
      if (warp < 8) {
        setmaxnreg_inc<200>();
        mla_decode_convert<L>(sm, stage, stage_empty, full, empty, ntiles, threadIdx.x - 128);
      } else {
        setmaxnreg_dec<40>();
        if (warp == 8 && lane == 0)
          mla_decode_produce(p, sm + L::kOffStg, stage, stage_empty, table, blk0, ntiles);
      }
    } else if (lane == 0) {
      const uint64_t policy = policy_evict_first();
      int blk = ntiles > 0 ? table[blk0] : 0;
      for (int n = 0; n < ntiles; ++n) {
        const int next = n + 1 < ntiles ? table[blk0 + n + 1] : 0;
        const int s = n % kDecStages;
        // A slot's first use waits on parity 1 of its empty barrier: that returns at once.
        mbar_wait(empty + s, ((n / kDecStages) & 1) ^ 1);
        mbar_arrive_expect_tx(full + s, kDecTileBytes);
        const uint32_t dst = ring_s + s * kDecTileBytes;
#pragma unroll
        for (int c = 0; c < 9; ++c)
          tma_load_2d(dst + c * kDecBox, &args.cache, 64 * c, blk * kDecKeys, full + s, policy);
        blk = next;
      }
    }
    return;
  }

  if constexpr (kFp8) setmaxnreg_inc<240>();
  // Consumers: 128 threads, warp w owns keys 16w .. +16 of Sᵀ and channels 16w .. +16 of each
  // 64-channel m-tile of Oᵀ; lane (g, t) holds rows g, g + 8 and heads 8j + 2t, +1 (j = 0..3).
  const int tid = threadIdx.x, w = warp, g = lane / 4, t = lane % 4;
  float* const red = reinterpret_cast<float*>(sm + L::kOffRed);
  float* const ml = red + 4 * kDecHeads;  // [32] m, [32] l
  // Q into shared memory, swizzled as TMA would (box c: channels 64c .. +64; heads past H zero).
  // All of a thread's loads are issued before its stores: one round of latency.
  {
    constexpr int kPer = kDecHeads * 72 / 128;  // 16-byte pieces per thread
    static_assert(kPer * 128 == kDecHeads * 72);
    const int64_t tq = it.q_begin;
    uint4 v[kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int idx = tid + 128 * i, r = idx / 72, ch = idx % 72, h = h0 + r;  // ch: of 576
      v[i] = make_uint4(0, 0, 0, 0);
      if (h < H)
        v[i] = ch < 64 ? *reinterpret_cast<const uint4*>(p.q_abs + (tq * H + h) * kMlaLat + ch * 8)
                       : *reinterpret_cast<const uint4*>(p.q + (tq * H + h) * kMlaQk + 128 +
                                                         (ch - 64) * 8);
    }
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int idx = tid + 128 * i, r = idx / 72, ch = idx % 72;
      *reinterpret_cast<uint4*>(sm + (ch / 8) * kDecQBox + r * 128 + ((ch % 8) ^ (r % 8)) * 16) =
          v[i];
    }
    fence_proxy_async();  // generic writes, read by wgmma (async proxy)
    bar_sync(1, 128);
  }

  const float sl2 = p.scale * 1.4426950408889634f;
  float o[8][16];  // Oᵀ m-tile c: o[c][4j + 2b + e] = channel 64c + 16w + g + 8b, head 8j + 2t + e
#pragma unroll
  for (int c = 0; c < 8; ++c)
#pragma unroll
    for (int i = 0; i < 16; ++i) o[c][i] = 0.f;
  // Per head 8j + 2t + e: m the reference of P (base 2, scaled), l the lane's partial sum of P.
  float m_run[4][2], l_run[4][2];
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) m_run[j][e] = -INFINITY, l_run[j][e] = 0.f;
  float s[16];  // Sᵀ: s[4j + 2b + e] = key 16w + g + 8b, head 8j + 2t + e
  const uint64_t q_desc = wgmma_desc(q_s);
  // stmatrix rows: lane (i = lane / 8, r = lane % 8) stores P row 8j + r (j = 2x + i / 2), keys
  // 16w + 8(i % 2) .. +8: 16-byte piece 2w + i % 2, swizzled.
  const int st_i = lane / 8, st_r = lane % 8;
  const uint32_t st_addr0 = p_s + (8 * (st_i / 2) + st_r) * 128 + (((2 * w + st_i % 2) ^ st_r) * 16);

  // Sᵀ of tile n into s (committed, not waited for).
  auto issue_s = [&](int n) {
    const uint32_t tile = ring_s + (n % kDecStages) * kDecTileBytes;
    mbar_wait(full + n % kDecStages, (n / kDecStages) & 1);
    wgmma_fence();
    const uint64_t k_desc = wgmma_desc(tile);
#pragma unroll
    for (int c = 0; c < 9; ++c)
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        wgmma_ss_m64n32<0>(s, k_desc + (c * kDecBox + kk * 32) / 16,
                           q_desc + (c * kDecQBox + kk * 32) / 16, c + kk > 0);
    wgmma_commit();
  };
  // Whether Sᵀ of tile n + 1 goes out behind Oᵀ of tile n, before waiting for Oᵀ (bf16 only:
  // there the consumer chain sets the pace; the fp8 kernel was no faster with it, sessions 10
  // and 11). Not in the first two tiles: there the next tile often is not in yet, and waiting
  // for it before handing slot n back would hold up the load of tile n + 2.
  auto early = [&](int n) { return !kFp8 && n + 1 < ntiles && (n >= 2 || n + 2 >= ntiles); };

  for (int n = 0; n < ntiles; ++n) {
    const int slot = n % kDecStages;
    const uint32_t tile = ring_s + slot * kDecTileBytes, pbuf = (slot % L::kPBufs) * kDecPBytes;
    if (!(n > 0 && early(n - 1))) issue_s(n);
    wgmma_wait<0>();
    fence_acc(s);

    // Scale; mask keys outside [kv_begin, kv_hi) (only the first and last tiles have any).
    const int pos0 = (blk0 + n) * kDecKeys;
    const bool last = pos0 + kDecKeys > kv_hi;
    const bool edge = pos0 < it.kv_begin || last;
    bool over = false;  // a score above its head's reference + kDecLazy
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int pos = pos0 + 16 * w + g + 8 * ((i >> 1) & 1);
      s[i] = edge && (pos < it.kv_begin || pos >= kv_hi) ? -INFINITY : s[i] * sl2;
      over |= s[i] > m_run[i / 4][i & 1] + kDecLazy;
    }
    if (last) {
      // Rows at or past kv_hi of the value boxes (channels 0..511) to zero once every warp's Sᵀ
      // has read the slot: P = 0 there, but rows past the context may hold anything (0 · NaN).
      bar_sync(1, 128);
      const int first = kv_hi - pos0, n16 = (kDecKeys - first) * 8;  // 16-byte pieces per box
      for (int idx = tid; idx < 8 * n16; idx += 128) {
        const int c = idx / n16, k = idx % n16;
        *reinterpret_cast<uint4*>(sm + (tile - base) + c * kDecBox + first * 128 + k * 16) =
            make_uint4(0, 0, 0, 0);
      }
    }
    // P against the reference m per head (dec_store_p).
    float psum[4][2];
    auto store_p = [&]() { dec_store_p(s, m_run, st_addr0 + pbuf, psum); };
    // One P buffer (fp8): every warp's Oᵀ of the tile before must be done with it.
    if (L::kPBufs == 1) bar_sync(1, 128);
    store_p();
    // P is complete, and unless a score passed its reference (the first tile, then rarely) the
    // references stand: no rescaling.
    if (bar_sync_or(1, 128, over)) {
      dec_rescale(s, m_run, l_run, o, red, nullptr, w, g, t, 1);
      store_p();  // over the first P: every warp has passed the barrier, none ran Oᵀ yet
      bar_sync(1, 128);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) l_run[j][e] += psum[j][e];
    wgmma_fence();
    {
      const uint64_t p_desc = wgmma_desc(p_s + pbuf);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
#pragma unroll
        for (int c = 0; c < 8; ++c)
          wgmma_ss_m64n32<1>(o[c], wgmma_desc_mn(tile + c * kDecBox + kk * 16 * 128),
                             p_desc + kk * 32 / 16, 1);
    }
    wgmma_commit();
    if (early(n)) {
      issue_s(n + 1);  // behind Oᵀ of this tile; the next iteration waits for it
      wgmma_wait<1>();
    } else {
      wgmma_wait<0>();
    }
#pragma unroll
    for (int c = 0; c < 8; ++c) fence_acc(o[c]);
    __syncwarp();
    if (lane == 0) mbar_arrive(empty + slot);
  }

  // l per head: over the 8 key lanes, then the 4 warps (the slow path's last reads of red were
  // before its closing barrier).
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float v = l_run[j][e];
      v += __shfl_xor_sync(0xffffffffu, v, 4);
      v += __shfl_xor_sync(0xffffffffu, v, 8);
      v += __shfl_xor_sync(0xffffffffu, v, 16);
      l_run[j][e] = v;
    }
  if (g == 0)
#pragma unroll
    for (int j = 0; j < 4; ++j)
      *reinterpret_cast<float2*>(red + w * kDecHeads + 8 * j + 2 * t) =
          make_float2(l_run[j][0], l_run[j][1]);
  bar_sync(1, 128);  // every warp's wgmmas are done with the ring
  // Oᵀ to shared memory as [32 heads][kDecOutLd] fp32 over the ring (every slot consumed).
  float* const ost = reinterpret_cast<float*>(sm + L::kOffRing);
#pragma unroll
  for (int c = 0; c < 8; ++c)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i)
        ost[(8 * j + 2 * t + (i & 1)) * kDecOutLd + 64 * c + 16 * w + g + 8 * (i >> 1)] =
            o[c][4 * j + i];
  if (w == 0 && g == 0)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int hd = 8 * j + 2 * t + e;
        ml[hd] = m_run[j][e] * 0.6931471805599453f;  // natural units: the reference of scale·s
        ml[kDecHeads + hd] = red[hd] + red[kDecHeads + hd] + red[2 * kDecHeads + hd] +
                             red[3 * kDecHeads + hd];
      }
  bar_sync(1, 128);
  const int tok = it.q_begin, col = 4 * tid;  // each thread: 4 channels of every head row
  const int nh = min(kDecHeads, H - h0);
  if (it.split < 0) {
    bf16* const u = p.u + (int64_t(tok) * H + h0) * kMlaLat + col;
    for (int r = 0; r < nh; ++r) {
      const float4 v = *reinterpret_cast<const float4*>(ost + r * kDecOutLd + col);
      const float l = ml[kDecHeads + r], inv = l > 0.f ? 1.f / l : 0.f;
      *reinterpret_cast<uint2*>(u + r * kMlaLat) =
          make_uint2(pack_bf16x2(v.x * inv, v.y * inv), pack_bf16x2(v.z * inv, v.w * inv));
    }
  } else {
    float* const P =
        p.partials + (int64_t(p.split_base[tok] + it.split) * H + h0) * kMlaPartialStride;
    for (int r = 0; r < nh; ++r) {
      *reinterpret_cast<float4*>(P + r * kMlaPartialStride + col) =
          *reinterpret_cast<const float4*>(ost + r * kDecOutLd + col);
      if (tid == 0) {
        P[r * kMlaPartialStride + kMlaLat] = ml[r];
        P[r * kMlaPartialStride + kMlaLat + 1] = ml[kDecHeads + r];
      }
    }
  }
}

}  // namespace kimi::cuda::mla
