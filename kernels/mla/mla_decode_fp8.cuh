// MLA decode attention on the fp8 latent cache (sm_90a; contract in mla.h, same items1, outputs
// and partials as mla_decode_kernel<false>): both products take their A operand from registers,
// decoded by the consumer threads straight from the staged fp8 records, so no bf16 copy of a
// tile is ever written to or read from shared memory.
//
// Per 64-key tile (one cache block, 64 records of 656 bytes: codes | k_pe | scales, landed in a
// staging slot by one bulk copy):
//   Sᵀ = K·Qᵀ  (64 keys × 32 heads, k = 576): 36 wgmma m64n32k16, A = K from registers, B = Q
//              from shared memory. Lane (w, g, t) of the consumer warpgroup holds keys 16w + g
//              and 16w + g + 8 (the fragment rows). k_pe first (k-steps 32..35, bf16, into s):
//              in k-step 32 + u its four columns 2t, 2t + 1, 2t + 8, 2t + 9 are k_pe channels
//              16t + 4u + {0, 1, 2, 3}. Then scale group G (k-steps 8G .. 8G + 7, f16, into acc):
//              in k-step 8G + v its columns are channels 128G + 32t + 4v + {0, 1, 2, 3}, the
//              codes themselves (cvt e4m3x2 -> f16x2, exact), and once the group's 8 products
//              are done s += scale(key, G) · acc in fp32 (the fold; acc is single-buffered, so
//              the group after waits for it). Q is staged once with its columns in that order
//              (dec8_qcol): ĉ in f16, k_pe in bf16, both times 2^(141 − E) with E the largest
//              bf16 exponent field of the CTA's Q (ĉ and k_pe: so ĉ stays below 2^15, exact in
//              f16 down to 2^-14 · max-ish, and k_pe cannot overflow when ĉ is all small or
//              zero); the softmax scale takes 2^(E − 141) back. The 8 lanes of
//              each 16-byte load phase (g = 2q, 2q + 1; t = 0..3) sit on 8 distinct bank
//              groups: a record is 41 bank groups long (41 = 1 mod 8), lane t's pieces 2t apart.
//   Oᵀ += Vᵀ·Pᵀ (512 channels × 32 heads, k = 64 keys): 8 m-tiles × 4 k-steps, A = Vᵀ from
//              registers, B = P from shared memory (f16; below). Lane (w, g, t)'s
//              fragment rows g, g + 8 of m-tile c are channels 16(8w + g) + 2c + {0, 1} (one
//              16-byte piece of each key's codes covers all its rows, scale group w), its
//              columns keys 16kk + 2t + {0, 1, 8, 9} (the keys in order: P needs no
//              permutation); a register pairs one channel of two keys (prmt of two words).
// Oᵀ's codes go through cvt as well (branch fp8mla8): one prmt gathers one channel of two keys
// for two channels, cvt e4m3x2 -> f16x2 (exact), and an f16x2 multiply by the two keys'
// multipliers scale(key, G) · 2^(7 − e_k), e_k the exponent of the key's largest scale (clamped
// to [−30, 126]): at most 448 · 2^7, exact while scale(key, G) >= 2^(e_k − 22) (a group 2^22
// below its key's largest loses low bits, relative to that largest: < 2^-40). The scale no
// longer varies along Oᵀ's k in B's range: the softmax runs on s + e_k, so B = P · 2^e_k =
// 2^(s + e_k − m) <= 2^kDecLazy in f16, l sums B · 2^-e_k (= 2^(s − m)) in fp32, O carries 2^7.
// Each lane writes the multipliers of scale group t of its two softmax keys into a
// [4 groups][64 keys] f16 table beside the P buffer (0 for masked keys); Oᵀ reads one pair per
// two keys. Keys past kv_hi may hold NaN codes: their pieces are zeroed on the last tile.
// Two consumer warpgroups take the tiles in turn (tile n: warpgroup n % 2; each has its own O, m,
// l and two P buffers, merged at the end through shared memory), a producer warp issues the bulk
// copies into a ring of 4 staging slots. A consumer warpgroup releases a slot once its threads
// have read it (a proxy fence and an arrival per thread), before waiting for its Oᵀ.
// Measured on one H200 (docs/perf-log.md, session 13, branch fp8mla6; same process, alternated
// with the converter kernel mla_decode_kernel<true>): faster where a CTA walks many tiles, 1M at
// B = 1 278-280 -> 243-246 us (59% -> 67% of copy; one round 272), B = 64 at 4k / 32k / 128k 6%,
// 11%, 14% faster; slower where it walks few: B = 1 at 4k 13.1 -> 21.7 us, 32k 22.3 -> 30.2,
// 128k 47.6 -> 50.3 (~8 us more per CTA, not spent per tile: a fixed cost, not yet located).
// Sᵀ through cvt and f16 products (branch fp8mla7, same call against main): 1M at B = 1
// 248.3-248.8 -> 230.3-230.8 us (71% of copy), B = 64 at 4k / 32k / 128k 5% / 8% / 8% faster.
// Oᵀ through cvt and f16 products (branch fp8mla8, same call against main): 1M at B = 1
// 230.5-231.9 -> 228.6-229.1 us, B = 64 at 128k 1747-1756 -> 1717-1724 (~1-2%; the 1M model
// step's MLA 1.812-1.815 -> 1.793-1.794 ms for 7 layers); P in f16 is also more accurate.
// launch_decode_tc (mla.cu) therefore runs it only where the items average kDec8MinTiles tiles
// or more (B = 1: contexts of ~160k and up; B = 64: ~2.5k and up), else the converter kernel.
// Softmax per tile as the bf16 kernel (mla_decode_tc.cuh) on s + e_k: lazy rescaling against a
// reference m per head, keys outside [kv_begin, kv_hi) masked; values of keys at or past kv_hi
// are zeroed (rows past the context may hold anything; Sᵀ's cvt may yield NaN for a masked
// key's row only, which the mask replaces).
#pragma once

#include <cuda_fp16.h>

#include "async_copy.cuh"
#include "mla/mla.h"
#include "mla/mla_decode_tc.cuh"
#include "pdl.cuh"
#include "wgmma_common.cuh"

namespace kimi::cuda::mla {

// The k index (0..575) of Sᵀ that Q channel ch (0..575: ĉ then k_pe) is staged at.
__host__ __device__ constexpr int dec8_qcol(int ch) {
  const bool pe = ch >= kMlaLat;
  const int r = pe ? ch - kMlaLat : ch % 128;
  const int t = pe ? r / 16 : ch / 128, w4 = r % 16, u = w4 / 4, e2 = w4 % 4;
  if (pe) return 16 * (32 + u) + 2 * t + (e2 & 1) + 8 * (e2 >> 1);
  // ĉ: scale group G = ch / 128 fills k-steps 8G .. 8G + 7; lane t's columns of k-step 8G + v
  // are channels 128G + 32t + 4v + {0, 1, 2, 3}.
  const int tc = r / 32, v = (r % 32) / 4, e = r % 4;
  return 16 * (8 * (ch / 128) + v) + 2 * tc + (e & 1) + 8 * (e >> 1);
}
// The Oᵀ accumulator row (m-tile c, warp w, lane row g, half b) is channel dec8_vch(...).
__host__ __device__ constexpr int dec8_vch(int c, int w, int g, int b) {
  return 16 * (8 * w + g) + 2 * c + b;
}

// Items average at least this many tiles (the block-table width × tokens / items) where the
// decode runs this kernel: measured against the converter kernel (session 14, fp8mla8, same
// process) 16 tiles per CTA 5% slower (B = 1, 128k: 50.0 against 47.7 us; B = 64, 2k: 46.5
// against 44.3), 24 6% faster (B = 1, 192k: 60.9 against 64.5; B = 64, 3k: 57.8 against 61.0):
// even at ~19 (B = 1, 160k, 20 tiles: 55.8-55.9 against 55.7-56.3).
constexpr int kDec8MinTiles = 20;
// m-tiles of Oᵀ per group of products (A double-buffered over groups).
constexpr int kOG = 2;

struct Dec8Layout {
  static constexpr int kConsumers = 2;  // warpgroups, taking the tiles in turn
  static constexpr int kThreads = 128 * kConsumers + 128;
  static constexpr int kStages = 4;
  static constexpr uint32_t kStgBytes = kDecKeys * kMlaFp8Row;  // 41,984
  static constexpr uint32_t kOffP = kDecQBytes;                 // [consumer][2] P buffers
  static constexpr uint32_t kOffStg = kOffP + 2 * kConsumers * kDecPBytes;
  static constexpr uint32_t kOffRed = kOffStg + kStages * kStgBytes;
  static constexpr uint32_t kRedFloats = 6 * kDecHeads;  // [4 warps][32], [32] m, [32] l
  // Oᵀ's multipliers beside each P buffer: [4 scale groups][64 keys] f16 (dec8 softmax).
  static constexpr uint32_t kMulBytes = 4 * kDecKeys * 2;
  static constexpr uint32_t kOffMul = kOffRed + kConsumers * kRedFloats * 4;
  static constexpr size_t kSmem = kOffMul + 2 * kConsumers * kMulBytes + 1024;
  static_assert(kOffP % 1024 == 0 && kOffStg % 16 == 0 && kSmem + 128 <= 227 * 1024);
  static_assert(size_t(kDecHeads) * kDecOutLd * 4 <= kStages * kStgBytes);
};

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}
// prmt selector: byte i of a into the low byte of lane 0 (its sign replicated in the high
// byte), byte j of {b:a} (0..7) into lane 1 likewise.
__host__ __device__ constexpr uint32_t dec8_sel(int i, int j) {
  return uint32_t(i) | uint32_t(8 | i) << 4 | uint32_t(j) << 8 | uint32_t(8 | j) << 12;
}
// Two codes (selected by sel from {b:a}) to bf16x2 of code · 2^-120, times mult.
__device__ __forceinline__ uint32_t dec8_pair(uint32_t a, uint32_t b, uint32_t sel,
                                              uint32_t mult) {
  const uint32_t x = (prmt(a, b, sel) << 4) & 0x87f087f0u;
  __nv_bfloat162 v = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&x),
                             *reinterpret_cast<const __nv_bfloat162*>(&mult));
  return *reinterpret_cast<uint32_t*>(&v);
}
// Two pairs of e4m3 codes (the 4 bytes of x) to f16x2: lo = bytes 0, 1, hi = bytes 2, 3 (exact).
__device__ __forceinline__ void dec8_cvt(uint32_t x, uint32_t& lo, uint32_t& hi) {
  asm("{\n"
      ".reg .b16 l, h;\n"
      "mov.b32 {l, h}, %2;\n"
      "cvt.rn.f16x2.e4m3x2 %0, l;\n"
      "cvt.rn.f16x2.e4m3x2 %1, h;\n"
      "}\n"
      : "=r"(lo), "=r"(hi)
      : "r"(x));
}
// d[64 × 32] (+)= A[64 × 16] · B[32 × 16]ᵀ: A f16 in registers, B f16 K-major in shared memory;
// accumulate 0 overwrites d.
__device__ __forceinline__ void wgmma_rs_m64n32_f16(float (&d)[16], const uint32_t* a, uint64_t db,
                                                    int accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "{%16, %17, %18, %19}, %20, p, 1, 1, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}
// The same with d overwritten (d is not read).
__device__ __forceinline__ void wgmma_rs_m64n32_f16_first(float (&d)[16], const uint32_t* a,
                                                          uint64_t db) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "{%16, %17, %18, %19}, %20, p, 1, 1, 0;\n"
      "}\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]),
        "=f"(d[7]), "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]),
        "=f"(d[14]), "=f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(0));
}
// P = 2^(s − m) per (key, head) into the Oᵀ B buffer as f16 (s: the scores plus the key's
// exponent e_k, below), psum[j][e] the lane's two keys' P times 2^-e_k (inv[b], key b), so l
// sums 2^(score − m) as the bf16 kernel's does. Layout as dec_store_p's.
__device__ __forceinline__ void dec8_store_p(const float (&s)[16], const float (&m_run)[4][2],
                                             const float (&inv)[2], uint32_t st_addr,
                                             float (&psum)[4][2]) {
#pragma unroll
  for (int x = 0; x < 2; ++x) {
    uint32_t r[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int j = 2 * x + i / 2, b = i % 2;
      const float p0 = ex2(s[4 * j + 2 * b] - m_run[j][0]);
      const float p1 = ex2(s[4 * j + 2 * b + 1] - m_run[j][1]);
      psum[j][0] = b ? fmaf(p0, inv[1], psum[j][0]) : p0 * inv[0];
      psum[j][1] = b ? fmaf(p1, inv[1], psum[j][1]) : p1 * inv[0];
      __half2 h = __floats2half2_rn(p0, p1);
      r[i] = *reinterpret_cast<uint32_t*>(&h);
    }
    stsm_x4_trans(st_addr + x * 16 * 128, r);
  }
  fence_proxy_async();
}
// f16x2 product (exact here: a code times a power of two within f16's range).
__device__ __forceinline__ uint32_t hmul2_u(uint32_t a, uint32_t b) {
  __half2 v = __hmul2(*reinterpret_cast<const __half2*>(&a), *reinterpret_cast<const __half2*>(&b));
  return *reinterpret_cast<uint32_t*>(&v);
}

// d[64 × 32] (+)= A[64 × 16] · B[32 × 16]ᵀ: A bf16 in registers, B bf16 K-major in shared memory.
__device__ __forceinline__ void wgmma_rs_m64n32(float (&d)[16], const uint32_t* a, uint64_t db,
                                                int accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "{%16, %17, %18, %19}, %20, p, 1, 1, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}
// The same with d overwritten (d is not read: not live before the first product of a tile).
__device__ __forceinline__ void wgmma_rs_m64n32_first(float (&d)[16], const uint32_t* a,
                                                      uint64_t db) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "{%16, %17, %18, %19}, %20, p, 1, 1, 0;\n"
      "}\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]),
        "=f"(d[7]), "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]),
        "=f"(d[14]), "=f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(0));
}
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

__device__ __forceinline__ uint4 lds128(const unsigned char* p) {
  return *reinterpret_cast<const uint4*>(p);
}
__device__ __forceinline__ uint4 lds128(uint32_t a) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(a));
  return v;
}
__device__ __forceinline__ uint32_t lds32(uint32_t a) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(a));
  return v;
}
__device__ __forceinline__ uint32_t w4(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// The producer (one thread): tile n's 64 records into staging slot n % kStages once the
// consumer warpgroup of tile n − kStages has read that slot; block-table entries a tile ahead.
__device__ __forceinline__ void dec8_produce(const MlaAttnParams& p, unsigned char* stg,
                                             uint64_t* full, uint64_t* empty, const int* table,
                                             int blk0, int ntiles) {
  using L = Dec8Layout;
  const uint64_t policy = policy_evict_first();
  int blk = ntiles > 0 ? table[blk0] : 0;
  for (int n = 0; n < ntiles; ++n) {
    const int next = n + 1 < ntiles ? table[blk0 + n + 1] : 0;
    const int s = n % L::kStages;
    mbar_wait(empty + s, ((n / L::kStages) & 1) ^ 1);
    mbar_arrive_expect_tx(full + s, L::kStgBytes);
    bulk_g2s(stg + s * L::kStgBytes, p.cache8 + int64_t(blk) * L::kStgBytes, L::kStgBytes,
             full + s, policy);
    blk = next;
  }
}

// Named barriers: 1 + wg the consumer warpgroup wg, 3 both consumer warpgroups.
__global__ void __launch_bounds__(Dec8Layout::kThreads, 1)
    mla_decode_fp8_kernel(const __grid_constant__ DecArgs args) {
  using L = Dec8Layout;
  extern __shared__ unsigned char dec_smem_raw[];
  __shared__ uint64_t bars[2 * L::kStages];
  __shared__ uint32_t q_emax;  // the largest bf16 exponent field of the CTA's Q ĉ
  uint64_t* const full = bars;
  uint64_t* const empty = bars + L::kStages;
  if (threadIdx.x == 0) {
    q_emax = 0;
    for (int s = 0; s < L::kStages; ++s) {
      mbar_init(full + s, 1);      // the producer's expect_tx
      mbar_init(empty + s, 128);  // every thread of the tile's consumer warpgroup
    }
    fence_mbar_init();
  }
  pdl_launch_dependents();
  pdl_wait();
  const MlaAttnParams& p = args.p;
  const MlaWorkItem it = p.items[blockIdx.x];
  if (it.nq <= 0) return;
  const uint32_t base = (smem_u32(dec_smem_raw) + 1023) & ~1023u;
  unsigned char* const sm = dec_smem_raw + (base - smem_u32(dec_smem_raw));
  const uint32_t q_s = base, p_s = base + L::kOffP;
  unsigned char* const stg = sm + L::kOffStg;
  const uint32_t stg_s = base + L::kOffStg;

  const int H = p.num_heads, h0 = blockIdx.y * kDecHeads;
  const int kv_hi = min(it.kv_end, it.q_pos0 + 1);
  const int blk0 = it.kv_begin / kDecKeys;
  const int ntiles = kv_hi > it.kv_begin ? (kv_hi - 1) / kDecKeys - blk0 + 1 : 0;
  const int* table = p.block_tables + int64_t(it.seq) * p.max_blocks_per_seq;
  __syncthreads();

  const int warp = __shfl_sync(0xffffffffu, int(threadIdx.x) / 32, 0);
  const int lane = threadIdx.x % 32;
  if (warp >= 4 * L::kConsumers) {
    setmaxnreg_dec<40>();
    if (warp == 4 * L::kConsumers && lane == 0)
      dec8_produce(p, stg, full, empty, table, blk0, ntiles);
    return;
  }
  setmaxnreg_inc<232>();
  const int ctid = threadIdx.x;  // 0..255
  const int wg = warp / 4, w = warp % 4, tid = ctid % 128, g = lane / 4, t = lane % 4;
  float* const red = reinterpret_cast<float*>(sm + L::kOffRed) + wg * L::kRedFloats;
  float* const ml = red + 4 * kDecHeads;  // [32] m, [32] l of this warpgroup

  // Q into shared memory in the Sᵀ k order (dec8_qcol), swizzled as TMA would; ĉ channels in f16,
  // k_pe in bf16, both times 2^(141 − E) (below); heads past H zero. Pairs of channels stay pairs
  // (a 4-byte store each).
  float q_unscale;
  {
    constexpr int kPer = kDecHeads * 72 / 256;
    static_assert(kPer * 256 == kDecHeads * 72);
    const int64_t tq = it.q_begin;
    uint4 v[kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int idx = ctid + 256 * i, r = idx / 72, ch = idx % 72, h = h0 + r;
      v[i] = make_uint4(0, 0, 0, 0);
      if (h < H)
        v[i] = ch < 64 ? *reinterpret_cast<const uint4*>(p.q_abs + (tq * H + h) * kMlaLat + ch * 8)
                       : *reinterpret_cast<const uint4*>(p.q + (tq * H + h) * kMlaQk + 128 +
                                                         (ch - 64) * 8);
    }
    // Q times 2^(141 − E), E the largest exponent field of Q (ĉ and k_pe; at least 15): ĉ below
    // 2^15 in f16 (exact down to 2^-14), k_pe in bf16 (exact, and finite: an E of ĉ alone
    // would scale a k_pe of 2 beside an all-zero ĉ to 2^128); the softmax takes 2^(E − 141) back.
    uint32_t em = 0;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint32_t x = w4(v[i], e);
        em = max(em, max(x & 0x7f80u, (x >> 16) & 0x7f80u));
      }
    }
    em = __reduce_max_sync(0xffffffffu, em);
    if (w == 0 && g == 0)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        *reinterpret_cast<float2*>(ml + 8 * j + 2 * t) = make_float2(-INFINITY, -INFINITY);
    if (lane == 0) atomicMax(&q_emax, em);
    bar_sync(3, 256);
    const int qe = max(int(q_emax >> 7), 15);
    q_unscale = __int_as_float((qe - 14) << 23);
    const float qf = __int_as_float((268 - qe) << 23);
    const uint32_t qfb = (__float_as_uint(qf) >> 16) * 0x10001u;  // bf16x2 of qf
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int idx = ctid + 256 * i, r = idx / 72, ch = idx % 72;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        uint32_t x = w4(v[i], e);
        if (ch < 64) {
          __half2 y = __floats2half2_rn(__uint_as_float(x << 16) * qf,
                                        __uint_as_float(x & 0xffff0000u) * qf);
          x = *reinterpret_cast<uint32_t*>(&y);
        } else {
          __nv_bfloat162 y = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&x),
                                     *reinterpret_cast<const __nv_bfloat162*>(&qfb));
          x = *reinterpret_cast<uint32_t*>(&y);
        }
        const int k = dec8_qcol(8 * ch + 2 * e);
        *reinterpret_cast<uint32_t*>(sm + (k / 64) * kDecQBox + r * 128 +
                                     ((((k % 64) / 8) ^ (r % 8)) * 16) + (k % 8) * 2) = x;
      }
    }
    fence_proxy_async();
    bar_sync(3, 256);
  }

  const float sl2 = p.scale * 1.4426950408889634f * q_unscale;
  float o[8][16];  // o[c][4j + 2b + e] = channel dec8_vch(c, w, g, b), head 8j + 2t + e
#pragma unroll
  for (int c = 0; c < 8; ++c)
#pragma unroll
    for (int i = 0; i < 16; ++i) o[c][i] = 0.f;
  float l_run[4][2];  // the running m per head lives in ml (registers during the softmax only)
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) l_run[j][e] = 0.f;
  float s[16], acc[16];
  const uint64_t q_desc = wgmma_desc(q_s);
  const int st_i = lane / 8, st_r = lane % 8;
  const uint32_t st_addr0 =
      p_s + (8 * (st_i / 2) + st_r) * 128 + (((2 * w + st_i % 2) ^ st_r) * 16);
  // Byte offsets in a record: Sᵀ's code pieces, its k_pe, Oᵀ's piece.
  const int s_key = 16 * w + g;  // and s_key + 8
  const int v_off = 16 * (8 * w + g);

  for (int n = wg, i_loc = 0; n < ntiles; n += L::kConsumers, ++i_loc) {
    const int slot = n % L::kStages;
    const uint32_t pbuf = (2 * wg + (i_loc & 1)) * kDecPBytes;
    const uint32_t mtab = base + L::kOffMul + (2 * wg + (i_loc & 1)) * L::kMulBytes;
    const uint32_t tile = stg_s + slot * L::kStgBytes;
    const uint32_t rec0t = tile + s_key * kMlaFp8Row + 32 * t;
    constexpr uint32_t kRec1 = 8 * kMlaFp8Row;  // key + 8
    mbar_wait(full + slot, (n / L::kStages) & 1);

    // ---- Sᵀ: 9 groups of 4 k-steps, A double-buffered (group i waits for group i − 2). Group 0:
    // k_pe (bf16, into s); groups 1 + 2G, 2 + 2G: scale group G's codes (f16, exact) into acc,
    // added into s times the key's scale once they are done (before group 1 + 2(G + 1) starts;
    // its A is decoded first).
    {
      auto fold = [&](int G) {
        const uint32_t sc = rec0t - 32 * t + kMlaFp8ScaleOff + 4 * G;
        const float c0 = __uint_as_float(lds32(sc)), c1 = __uint_as_float(lds32(sc + kRec1));
        fence_acc(s);
        fence_acc(acc);
#pragma unroll
        for (int i = 0; i < 16; ++i) s[i] = fmaf((i >> 1) & 1 ? c1 : c0, acc[i], s[i]);
      };
      uint32_t a[2][16];
      uint4 x0 = lds128(rec0t + kMlaFp8PeOff);
      uint4 x1 = lds128(rec0t + kRec1 + kMlaFp8PeOff);
      uint4 y0 = lds128(rec0t + kMlaFp8PeOff + 16);
      uint4 y1 = lds128(rec0t + kRec1 + kMlaFp8PeOff + 16);
#pragma unroll
      for (int jg = 0; jg < 9; ++jg) {
        uint32_t(&A)[16] = a[jg & 1];
        if (jg >= 3 && jg % 2 == 1) {  // scale group (jg − 3) / 2 done: into s, acc free
          wgmma_wait<0>();
          fold((jg - 3) / 2);
        } else if (jg >= 2) {
          wgmma_wait<1>();
        }
        fence_regs(A);
        if (jg == 0) {
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            const uint4& p0 = u < 2 ? x0 : y0;
            const uint4& p1 = u < 2 ? x1 : y1;
            A[4 * u + 0] = w4(p0, 2 * (u % 2));
            A[4 * u + 1] = w4(p1, 2 * (u % 2));
            A[4 * u + 2] = w4(p0, 2 * (u % 2) + 1);
            A[4 * u + 3] = w4(p1, 2 * (u % 2) + 1);
          }
        } else {
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            dec8_cvt(w4(x0, u), A[4 * u + 0], A[4 * u + 2]);
            dec8_cvt(w4(x1, u), A[4 * u + 1], A[4 * u + 3]);
          }
        }
        // The next group's pieces (loaded while this group's products run): scale group
        // jg / 2, its half jg % 2; lane t's 32 channels from 32t.
        if (jg + 1 < 9) {
          const uint32_t off = 128 * (jg / 2) + 16 * (jg % 2);
          x0 = lds128(rec0t + off);
          x1 = lds128(rec0t + kRec1 + off);
        }
        wgmma_fence();
        if (jg == 0) {
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            const int ks = 32 + u;
            const uint64_t qd = q_desc + ((ks / 4) * kDecQBox + (ks % 4) * 32) / 16;
            if (u == 0)
              wgmma_rs_m64n32_first(s, &A[0], qd);
            else
              wgmma_rs_m64n32(s, &A[4 * u], qd, 1);
          }
        } else {
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            const int ks = 4 * (jg - 1) + u;
            const uint64_t qd = q_desc + ((ks / 4) * kDecQBox + (ks % 4) * 32) / 16;
            if (jg % 2 == 1 && u == 0)
              wgmma_rs_m64n32_f16_first(acc, &A[0], qd);
            else
              wgmma_rs_m64n32_f16(acc, &A[4 * u], qd, 1);
          }
        }
        wgmma_commit();
      }
      wgmma_wait<0>();
      fold(3);
      fence_acc(s);
    }

    // ---- Softmax (as the bf16 kernel, on s + e_k). e_k: the exponent of the key's largest scale
    // (clamped to [−30, 126]); Oᵀ's A is code · scale(key, G) · 2^(7 − e_k) in f16 (at most
    // 448 · 2^7, exact while scale(key, G) >= 2^(e_k − 22)), its B P · 2^e_k, so the scores
    // shift by e_k: P = 2^(s + e_k − m), l sums P · 2^-e_k, O carries 2^7. Lane t writes the
    // multipliers of scale group t of its two keys (0 for masked keys) into mtab.
    const int pos0 = (blk0 + n) * kDecKeys;
    const bool edge = pos0 < it.kv_begin || pos0 + kDecKeys > kv_hi;
    int eb[2];
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      const int key = s_key + 8 * b, pos = pos0 + key;
      const uint32_t sc = lds32(tile + key * kMlaFp8Row + kMlaFp8ScaleOff + 4 * t);
      uint32_t mx = max(sc, __shfl_xor_sync(0xffffffffu, sc, 1));
      mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const int E = min(max(int(mx >> 23), 97), 253);
      eb[b] = E;
      const bool masked = edge && (pos < it.kv_begin || pos >= kv_hi);
      const float mult = masked ? 0.f : __uint_as_float(sc) * __int_as_float((261 - E) << 23);
      const __half hm = __float2half_rn(mult);
      asm volatile("st.shared.b16 [%0], %1;\n" ::"r"(mtab + (t * kDecKeys + key) * 2),
                   "h"(*reinterpret_cast<const unsigned short*>(&hm)));
    }
    bool over = false;
    float m_run[4][2];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 v = *reinterpret_cast<const float2*>(ml + 8 * j + 2 * t);
      m_run[j][0] = v.x;
      m_run[j][1] = v.y;
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int pos = pos0 + 16 * w + g + 8 * ((i >> 1) & 1);
      const float ek = float(eb[(i >> 1) & 1] - 127);
      s[i] = edge && (pos < it.kv_begin || pos >= kv_hi) ? -INFINITY : fmaf(s[i], sl2, ek);
      over |= s[i] > m_run[i / 4][i & 1] + kDecLazy;
    }
    float psum[4][2];
    auto store_p = [&]() {
      const float inv[2] = {__int_as_float((254 - eb[0]) << 23),
                            __int_as_float((254 - eb[1]) << 23)};
      dec8_store_p(s, m_run, inv, st_addr0 + pbuf, psum);
    };
    store_p();
    if (bar_sync_or(1 + wg, 128, over)) {
      dec_rescale(s, m_run, l_run, o, red, ml, w, g, t, 1 + wg);
      store_p();
      bar_sync(1 + wg, 128);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) l_run[j][e] += psum[j][e];

    // ---- Oᵀ: per k-step kk the lane's 4 keys (16 codes each: one piece), 2 groups of 4
    // m-tiles, A double-buffered. A register pairs one channel of two keys: one prmt gathers two
    // channels' pairs, cvt e4m3x2 -> f16x2 (exact) and an f16x2 multiply by the keys'
    // multipliers from mtab (code · scale · 2^(7 − e_k), exact). Keys at or past kv_hi may hold
    // NaN codes: zeroed on the last tile (their multiplier is 0 too).
    {
      const uint64_t p_desc = wgmma_desc(p_s + pbuf);
      const int lim = kv_hi - pos0;
      uint32_t a[2][4 * kOG];
      uint4 y[4];
      uint32_t mult[2];
      const uint32_t vrec = tile + 2 * t * kMlaFp8Row;
      const uint32_t mrow = mtab + (w * kDecKeys + 2 * t) * 2;
      auto load_v = [&](int kk) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const uint32_t r = vrec + (16 * kk + (q & 1) + 8 * (q >> 1)) * kMlaFp8Row;
          y[q] = lds128(r + v_off);
        }
        mult[0] = lds32(mrow + 16 * kk * 2);
        mult[1] = lds32(mrow + (16 * kk + 8) * 2);
        if (lim < kDecKeys) {
#pragma unroll
          for (int q = 0; q < 4; ++q)
            if (16 * kk + 2 * t + (q & 1) + 8 * (q >> 1) >= lim) y[q] = make_uint4(0, 0, 0, 0);
        }
      };
      load_v(0);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const uint32_t m0 = mult[0], m1 = mult[1];
#pragma unroll
        for (int half = 0; half < 8 / kOG; ++half) {
          const int grp = (8 / kOG) * kk + half;
          uint32_t(&A)[4 * kOG] = a[grp & 1];
          if (grp >= 2) wgmma_wait<1>();
          fence_regs(A);
#pragma unroll
          for (int cc = 0; cc < kOG; ++cc) {
            const int c = kOG * half + cc, wd = c / 2, b0 = 2 * (c % 2);
            const uint32_t sel = b0 | (4 + b0) << 4 | (b0 + 1) << 8 | (5 + b0) << 12;
            uint32_t lo, hi;
            dec8_cvt(prmt(w4(y[0], wd), w4(y[1], wd), sel), lo, hi);
            A[4 * cc + 0] = hmul2_u(lo, m0);
            A[4 * cc + 1] = hmul2_u(hi, m0);
            dec8_cvt(prmt(w4(y[2], wd), w4(y[3], wd), sel), lo, hi);
            A[4 * cc + 2] = hmul2_u(lo, m1);
            A[4 * cc + 3] = hmul2_u(hi, m1);
          }
          // The next k-step's pieces (this k-step's are decoded).
          if (half == 8 / kOG - 1 && kk + 1 < 4) load_v(kk + 1);
          wgmma_fence();
#pragma unroll
          for (int cc = 0; cc < kOG; ++cc)
            wgmma_rs_m64n32_f16(o[kOG * half + cc], &A[4 * cc], p_desc + kk * 32 / 16, 1);
          wgmma_commit();
        }
      }
      // Every read of the slot is done (the loads fed the decoding above): hand it back.
      fence_proxy_async();
      mbar_arrive(empty + slot);
      wgmma_wait<0>();
#pragma unroll
      for (int c = 0; c < 8; ++c) fence_acc(o[c]);
    }
  }

  // ---- The end: l per head over the warpgroup, then the two warpgroups merged.
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
  bar_sync(1 + wg, 128);
  if (w == 0 && g == 0)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int hd = 8 * j + 2 * t + e;
        ml[kDecHeads + hd] = red[hd] + red[kDecHeads + hd] + red[2 * kDecHeads + hd] +
                             red[3 * kDecHeads + hd];
      }
  bar_sync(3, 256);  // both warpgroups' m and l are in; every tile is consumed
  const float* const ml0 = reinterpret_cast<const float*>(sm + L::kOffRed) + 4 * kDecHeads;
  const float* const ml1 = ml0 + L::kRedFloats;
  float* const ost = reinterpret_cast<float*>(stg);
  // This warpgroup's weight per head: exp2(m_wg − m) · 2^-7 (O carries 2^7).
  float wt[4][2];
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int hd = 8 * j + 2 * t + e;
      const float mm = fmaxf(ml0[hd], ml1[hd]);
      wt[j][e] = mm == -INFINITY ? 0.f : ex2(ml[hd] - mm) * 0.0078125f;
    }
#pragma unroll
  for (int pass = 1; pass >= 0; --pass) {
    if (wg == pass) {
#pragma unroll
      for (int c = 0; c < 8; ++c)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            float* const d =
                ost + (8 * j + 2 * t + (i & 1)) * kDecOutLd + dec8_vch(c, w, g, i >> 1);
            const float v = o[c][4 * j + i] * wt[j][i & 1];
            *d = pass ? v : *d + v;
          }
    }
    bar_sync(3, 256);
  }
  const int tok = it.q_begin, col = 4 * tid;
  const int nh = min(kDecHeads, H - h0);
  auto head_ml = [&](int r, float& m, float& l) {
    const float mm = fmaxf(ml0[r], ml1[r]);
    const float a0 = mm == -INFINITY ? 0.f : ex2(ml0[r] - mm);
    const float a1 = mm == -INFINITY ? 0.f : ex2(ml1[r] - mm);
    m = mm * 0.6931471805599453f;
    l = a0 * ml0[kDecHeads + r] + a1 * ml1[kDecHeads + r];
  };
  if (it.split < 0) {
    bf16* const u = p.u + (int64_t(tok) * H + h0) * kMlaLat + col;
    for (int r = wg; r < nh; r += 2) {
      float m, l;
      head_ml(r, m, l);
      const float4 v = *reinterpret_cast<const float4*>(ost + r * kDecOutLd + col);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      *reinterpret_cast<uint2*>(u + r * kMlaLat) =
          make_uint2(pack_bf16x2(v.x * inv, v.y * inv), pack_bf16x2(v.z * inv, v.w * inv));
    }
  } else {
    float* const P =
        p.partials + (int64_t(p.split_base[tok] + it.split) * H + h0) * kMlaPartialStride;
    for (int r = wg; r < nh; r += 2) {
      *reinterpret_cast<float4*>(P + r * kMlaPartialStride + col) =
          *reinterpret_cast<const float4*>(ost + r * kDecOutLd + col);
      if (tid == 0) {
        float m, l;
        head_ml(r, m, l);
        P[r * kMlaPartialStride + kMlaLat] = m;
        P[r * kMlaPartialStride + kMlaLat + 1] = l;
      }
    }
  }
}

}  // namespace kimi::cuda::mla
