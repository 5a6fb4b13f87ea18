// Grouped expert GEMMs for prefill-sized batches on Hopper tensor cores (wgmma, sm_90a).
// Contracts and the tile plan (moe_wgmma_tile_of) in moe.h; same math, inputs and outputs as
// moe_gemm_kernel:
//   gate_up : act[r, n] = SiLU(x_r · W13_e[n]) · (x_r · W13_e[I + n])   (bf16 out, fp32 math)
//   down    : y[r, n]   = act[r] · W2_e[n]                               (fp32 out)
// with x_r = x[row_token[r]] (gate_up, gathered) or act[r] (down), r in expert e's rows.
//
// Launch: 1-D grid over (128-row unit of the permutation, column block), column block fastest, so
// the CTAs that run together share one expert's weights (read once from DRAM, the rest from L2)
// and, for down, the same act rows. Each CTA runs one tile of the plan: wide (128 rows × 256
// weight rows) or tall (256 rows × 128 weight rows, an expert's partial last rows with the 128
// before them). down owns the weight rows' output columns, gate_up half of them as gate rows and
// the matching up rows of W13 (half as many act columns), so SwiGLU is applied in registers. The
// CTA finds its expert with one parallel probe of tile_start / offsets (a thread per expert; a
// binary search was ~10 dependent L2 round trips before the first copy). One CTA per SM, 384
// threads, warp-specialised:
// - Warpgroup 0, the producer (setmaxnreg down to 88), fills a kWgStages-deep ring of k steps of
//   64 (one 128-byte row of bf16 per operand row) in the 128-byte swizzle wgmma reads (16-byte
//   piece c of row r at piece c ^ (r % 8); tiles 1024-byte aligned). Its 128 threads gather the
//   tile's input rows with cp.async (k past K zero-filled; rows past the expert's end are not
//   copied: they only feed accumulator rows that are not stored) and signal the slot's full
//   mbarrier with cp.async.mbarrier.arrive.noinc, one arrival per thread once its copies landed;
//   its thread 0 adds the weight rows as TMA boxes of 64 k × 64 rows (k past K zero-filled by the
//   tensor map) completing on the same barrier. Copying the weights with cp.async as well made
//   the producer the bottleneck (1.6-1.9x slower, perf-log). A slot holds 48 KB either way: A
//   128 rows + B 256 (wide) or A 256 + B 128 (tall).
// - Warpgroups 1 and 2, the consumers (setmaxnreg up to 208): wide, 64 rows × 256 columns each
//   (two m64n128 per k16 over the two column halves); tall, 128 rows × 128 columns each (two
//   m64n128 over its two 64-row slabs). Per k step they wait on the slot's full barrier, issue
//   the wgmmas (both operands K-major from shared memory, fp32 accumulators in registers, the
//   first k step overwriting them), keep that step's MMAs in flight while waiting for the next
//   slot, and hand a slot back on its empty mbarrier (one arrival per consumer warp) once the
//   MMAs reading it retired. No CTA-wide barrier in the loop. MMAs of 64-row slabs entirely past
//   the expert's end are skipped (the warpgroup still takes part in the ring).
// Weight rows past N in a box (the last column block) belong to the next rows of the tensor map
// or are zero-filled past its end: they only feed columns that are not stored.
// Epilogue: straight from the accumulators (thread owns rows lane/4 and lane/4 + 8 of its warp's
// 16, two adjacent columns per 8): bf16x2 act stores or float2 y stores.
// SPLIT (high precision, moe.h): 2·⌈K/64⌉ k steps, the second half over the lo plane of the input
// with the same weights (one accumulator: W·hi + W·lo); gate_up stores act = bf16(v) and
// act_lo = bf16(v − act).
// Deterministic: a fixed k order per output value, no atomics.
#pragma once

#include <cuda.h>  // CUtensorMap

#include <cstdint>
#include <type_traits>

#include "moe/moe.h"
#include "async_copy.cuh"
#include "wgmma_common.cuh"

namespace kimi::cuda::moe {

constexpr int kWgRows = 128;     // rows of a wide tile (permutation block_m): a tall tile has 256
constexpr int kWgBRows = 256;    // weight rows of a wide tile: a tall tile has 128
constexpr int kWgK = 64;         // k per pipeline step: 128 bytes of bf16
constexpr int kWgStages = 4;
constexpr int kWgStageBytes = (kWgRows + kWgBRows) * kWgK * 2;  // 48 KB, wide or tall
constexpr int kWgSmemBytes = kWgStages * kWgStageBytes + 1024;   // + the 1024-byte alignment
static_assert(kWgSmemBytes <= 227 * 1024, "one CTA per SM must fit");

// Epilogue of one warpgroup's 64 rows × BN accumulators. Accumulator layout of m64nN: element
// 4j + 2·half + c is row lane/4 + 8·half of the warp's 16, column 8j + 2·(lane % 4) + c.
// row_base: the row of this thread's half 0. gate_up: column groups j < BN/16 are gate rows,
// j + BN/16 the matching up rows.
template <int BN, bool SWIGLU, bool SPLIT>
__device__ __forceinline__ void wg_store(const MoeGemmParams& p, float (&acc)[BN / 128][64],
                                         int row_base, int m_end, int n0, int lane) {
  const int N = SWIGLU ? p.inter : p.hidden;
  const int col_q = 2 * (lane % 4);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = row_base + 8 * half;
    if (r >= m_end) continue;
    if constexpr (SWIGLU) {
      bf16* out = p.act + int64_t(r) * p.inter;
#pragma unroll
      for (int j = 0; j < BN / 16; ++j) {
        const int n = n0 + 8 * j + col_q;
        if (n >= N) continue;
        const int ju = j + BN / 16;
        const float g0 = acc[j / 16][4 * (j % 16) + 2 * half],
                    g1 = acc[j / 16][4 * (j % 16) + 2 * half + 1];
        const float u0 = acc[ju / 16][4 * (ju % 16) + 2 * half],
                    u1 = acc[ju / 16][4 * (ju % 16) + 2 * half + 1];
        const float a0 = g0 / (1.f + __expf(-g0)) * u0, a1 = g1 / (1.f + __expf(-g1)) * u1;
        const __nv_bfloat162 hi = __floats2bfloat162_rn(a0, a1);
        *reinterpret_cast<__nv_bfloat162*>(out + n) = hi;
        if constexpr (SPLIT) {
          const float2 h = __bfloat1622float2(hi);
          *reinterpret_cast<__nv_bfloat162*>(p.act_lo + int64_t(r) * p.inter + n) =
              __floats2bfloat162_rn(a0 - h.x, a1 - h.y);
        }
      }
    } else {
      float* out = p.y + int64_t(r) * p.hidden;
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
        const int n = n0 + 8 * j + col_q;
        if (n >= N) continue;
        *reinterpret_cast<float2*>(out + n) = make_float2(acc[j / 16][4 * (j % 16) + 2 * half],
                                                          acc[j / 16][4 * (j % 16) + 2 * half + 1]);
      }
    }
  }
}

// The k16 MMAs of one k step of 64 for the first PARTS of this warpgroup's two m64n128 products
// (wide: its 64 rows × column half h; tall: its 64-row slab h × the 128 columns): A at
// st + a_off[h], B at st + b_off[h]. accumulate = 0: the first k16 overwrites acc.
template <int PARTS>
__device__ __forceinline__ void wg_mma_step(float (&acc)[2][64], uint32_t st,
                                            const uint32_t (&a_off)[2], const uint32_t (&b_off)[2],
                                            int accumulate) {
#pragma unroll
  for (int kk = 0; kk < kWgK / 16; ++kk)
#pragma unroll
    for (int h = 0; h < PARTS; ++h)
      wgmma_ss_m64n128(acc[h], wgmma_desc(st + a_off[h] + kk * 32),
                       wgmma_desc(st + b_off[h] + kk * 32), kk > 0 || accumulate);
}

constexpr int kWgThreads = 384;  // producer warpgroup + 2 consumer warpgroups
constexpr int kWgConsumerWarps = 8;
// One CTA per SM (ptxas compiles every path under the launch cap, 65536 / 384 = 168 registers:
// two CTAs' 80 cannot hold a warpgroup's accumulators). The split moves registers inside the
// CTA's 168 · 384: 128 · 88 + 256 · 208 = 64512. The producer's 88 hold its 16 row offsets of a
// tall tile (72 spilled one register, and 40 the 64-bit pointers of the wide tiles before); the
// consumers need 128 accumulators + addressing (208: no spills).
constexpr int kWgProducerRegs = 88;
constexpr int kWgConsumerRegs = 208;

// Arrives on bar once every cp.async this thread issued before has landed (counts as one of the
// barrier's expected arrivals).
__device__ __forceinline__ void cp_async_mbar_arrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_u32(bar))
               : "memory");
}

// Kernel arguments: b is the weights' tensor map, boxes of 64 k × 64 rows: gate_up W13 as
// [E·2I rows][hidden], down W2 as [E·hidden rows][I]. wide_blocks: column blocks of a wide tile.
struct WgmmaArgs {
  CUtensorMap b;
  MoeGemmParams p;
  MoePermuteView v;
  int wide_blocks;
  // TEMPORARY (session 7 bisection): bit 0 no tall pairs, 1 zero-fill rows past the end, 2 lookup
  // by a binary search in every thread (before the barrier init), 3 registers 72 / 216 (launcher),
  // 4 one consumer loop (launcher).
  int variant;
};
constexpr int kWgBoxRows = 64;

template <bool SWIGLU, bool SPLIT, bool REGS216, bool SIMPLE>
__global__ void __launch_bounds__(kWgThreads, 1)
    moe_wgmma_kernel(const __grid_constant__ WgmmaArgs args) {
  const MoeGemmParams& p = args.p;
  const MoePermuteView& v = args.v;
  const int wide_blocks = args.wide_blocks;

  extern __shared__ unsigned char wg_smem_raw[];
  __shared__ uint64_t bars[2 * kWgStages];  // full[kWgStages], empty[kWgStages]
  __shared__ int plan[5];                   // expert, first row, end row, tall, first column
  uint64_t* const full = bars;
  uint64_t* const empty = bars + kWgStages;
  const uint32_t raw_addr = smem_u32(wg_smem_raw);
  const uint32_t smem_addr = (raw_addr + 1023) & ~1023u;  // the swizzle pattern needs 1024
  unsigned char* smem = wg_smem_raw + (smem_addr - raw_addr);

  const int E = p.num_experts;
  const int N = SWIGLU ? p.inter : p.hidden;
  const int tid = threadIdx.x;
  const int unit = blockIdx.x / wide_blocks;
  int e, m0, m_end, n0;
  bool tall;
  if (args.variant & 4) {
    if (unit >= v.tile_start[E]) return;
    int lo = 0, hi = E - 1;  // largest e with tile_start[e] <= unit
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (v.tile_start[mid] <= unit)
        lo = mid;
      else
        hi = mid - 1;
    }
    const int t0 = v.tile_start[lo], r0 = v.offsets[lo], r1 = v.offsets[lo + 1];
    MoeWgmmaTileOf t = moe_wgmma_tile_of(r1 - r0, int(blockIdx.x) - t0 * wide_blocks, N,
                                         SWIGLU ? kWgBRows / 2 : kWgBRows);
    if (args.variant & 1)
      t = {true, false, (unit - t0) * kWgRows, int(blockIdx.x % wide_blocks) * (SWIGLU ? kWgBRows / 2 : kWgBRows)};
    if (!t.has_work) return;
    e = lo, m0 = r0 + t.row0, m_end = r1, n0 = t.col0, tall = t.tall;
    if (tid == 0) {
      for (int s = 0; s < kWgStages; ++s) {
        mbar_init(full + s, 128 + 1);
        mbar_init(empty + s, kWgConsumerWarps);
      }
      fence_mbar_init();
    }
    __syncthreads();
  } else {
  if (tid == 0) {
    for (int s = 0; s < kWgStages; ++s) {
      mbar_init(full + s, 128 + 1);  // the producers' copies + the weights' expect_tx
      mbar_init(empty + s, kWgConsumerWarps);
    }
    fence_mbar_init();
  }
  // The expert whose units hold this CTA's: one probe per thread, all loads independent (none
  // matches past the last unit or for a tall column block past N: the CTA exits).
  int found = 0;
  for (int x = tid; x < E; x += kWgThreads) {
    const int t0 = v.tile_start[x], t1 = v.tile_start[x + 1];
    const int r0 = v.offsets[x], r1 = v.offsets[x + 1];
    if (t0 <= unit && unit < t1) {
      MoeWgmmaTileOf t = moe_wgmma_tile_of(r1 - r0, int(blockIdx.x) - t0 * wide_blocks, N,
                                           SWIGLU ? kWgBRows / 2 : kWgBRows);
      if (args.variant & 1)
        t = {true, false, (unit - t0) * kWgRows, int(blockIdx.x % wide_blocks) * (SWIGLU ? kWgBRows / 2 : kWgBRows)};
      found = t.has_work;
      plan[0] = x, plan[1] = r0 + t.row0, plan[2] = r1, plan[3] = t.tall, plan[4] = t.col0;
    }
  }
  if (!__syncthreads_or(found)) return;
  e = plan[0], m0 = plan[1], m_end = plan[2], n0 = plan[4];
  tall = plan[3] != 0;
  }
  const int a_rows = tall ? 2 * kWgRows : kWgRows, b_rows = tall ? kWgBRows / 2 : kWgBRows;
  const uint32_t a_bytes = uint32_t(a_rows * kWgK * 2);
  const int Kd = SWIGLU ? p.hidden : p.inter;
  const int KTd = (Kd + kWgK - 1) / kWgK;
  const int KT = SPLIT ? 2 * KTd : KTd;

  // Broadcast from lane 0 so the compiler sees warp-uniform values around wgmma (ptxas C7518).
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  if (wg == 0) {
    setmaxnreg_dec<REGS216 ? 72 : kWgProducerRegs>();
    const int w_row = SWIGLU ? e * 2 * p.inter + n0 : e * p.hidden + n0;  // tensor map row
    // Thread tid copies piece tid % 8 of rows tid / 8 + 16 i: one row's 128 bytes per 8 lanes.
    const int piece = tid % 8, row0 = tid / 8;
    const uint32_t dst_in_row = uint32_t((piece ^ (row0 % 8)) * 16);  // row0 + 16 i ≡ row0 mod 8
    // Element offset of each row in x (gate_up, gathered) or act (down); kNoRow past the tile or
    // the expert's end (launch_moe_wgmma checks that the offsets fit).
    constexpr uint32_t kNoRow = ~0u;
    constexpr int kMaxPieces = 2 * kWgRows * 8 / 128;  // 16-byte pieces per thread per step, tall
    uint32_t a_el[kMaxPieces];
#pragma unroll
    for (int i = 0; i < kMaxPieces; ++i) {
      const int row = m0 + row0 + 16 * i;
      a_el[i] = kNoRow;
      if (row0 + 16 * i < a_rows && row < m_end)
        a_el[i] = SWIGLU ? uint32_t(v.row_token[row]) * uint32_t(p.hidden) : uint32_t(row) * uint32_t(p.inter);
    }
    const bf16* const a_hi = SWIGLU ? p.x : p.act;
    const bf16* const a_lo = SWIGLU ? p.x_lo : p.act_lo;
    for (int kt = 0; kt < KT; ++kt) {
      const int s = kt % kWgStages;
      // A slot's first use waits on parity 1 of its empty barrier: that returns at once.
      mbar_wait(empty + s, ((kt / kWgStages) & 1) ^ 1);
      const uint32_t st = uint32_t(s * kWgStageBytes);
      const bool lo = SPLIT && kt >= KTd;
      const int k0 = (lo ? kt - KTd : kt) * kWgK;
      if (tid == 0) {
        // The weight rows as TMA boxes (k past K zero-filled; rows past N belong to columns
        // that are not stored). gate_up: the first half of the tile's rows are gate rows, then
        // the matching up rows.
        mbar_arrive_expect_tx(full + s, uint32_t(b_rows * kWgK * 2));
#pragma unroll
        for (int bx = 0; bx < kWgBRows / kWgBoxRows; ++bx) {
          const int r = bx * kWgBoxRows;
          if (r >= b_rows) break;
          const int row = SWIGLU && r >= b_rows / 2 ? w_row + p.inter + r - b_rows / 2 : w_row + r;
          tma_load_2d(smem_addr + st + a_bytes + r * 128, &args.b, k0, row, full + s);
        }
      }
      const int k = k0 + piece * 8;
      const bool k_ok = k < Kd;
      const bf16* const base = lo ? a_lo : a_hi;
#pragma unroll
      for (int i = 0; i < kMaxPieces; ++i)
        if (a_el[i] != kNoRow)
          cp_async16(smem + st + (row0 + 16 * i) * 128 + dst_in_row, k_ok ? base + a_el[i] + k : base,
                     k_ok);
        else if ((args.variant & 2) && row0 + 16 * i < a_rows)
          cp_async16(smem + st + (row0 + 16 * i) * 128 + dst_in_row, base, false);
      cp_async_mbar_arrive(full + s);
    }
    cp_async_wait<0>();
  } else {
    setmaxnreg_inc<REGS216 ? 216 : kWgConsumerRegs>();
    const int cw = wg - 1;
    // wide: rows 64 cw .. + 64 of the tile, products over column halves h; tall: rows 128 cw ..
    // + 128, products over its 64-row slabs h. parts: the products with rows before m_end.
    const int wg_row0 = m0 + (tall ? 2 : 1) * 64 * cw;
    const int left = m_end - wg_row0;
    const int parts = __shfl_sync(0xffffffffu, left <= 0 ? 0 : tall ? (left > 64 ? 2 : 1) : 2, 0);
    uint32_t a_off[2], b_off[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      a_off[h] = uint32_t((wg_row0 - m0 + (tall ? 64 * h : 0)) * 128);
      b_off[h] = a_bytes + uint32_t(tall ? 0 : h * 128 * 128);
    }
    const int lane = tid % 32;
    // Written by the first k step (accumulate = 0): zeroing it here instead makes ptxas serialize
    // the wgmmas (C7515). A product that is skipped stores none of its part.
    float acc[2][64];
    // Every warp's wgmmas are done reading the slot (after its wait): one arrival per warp.
    auto release = [&](int s) {
      __syncwarp();
      if (lane == 0) mbar_arrive(empty + s);
    };
    // The k loop with PARTS products per step (0: the warpgroup only takes part in the ring); one
    // loop per count, so no wgmma sits under a branch inside it (ptxas then injects
    // warpgroup.arrive, C7519).
    auto consume = [&](auto parts_c) {
      constexpr int PARTS = decltype(parts_c)::value;
      for (int kt = 0; kt < KT; ++kt) {
        const int s = kt % kWgStages;
        mbar_wait(full + s, (kt / kWgStages) & 1);
        // The copies wrote through the generic proxy; the tensor cores read through the async one.
        fence_proxy_async();
        if constexpr (PARTS > 0) {
          wgmma_fence();
          wg_mma_step<PARTS>(acc, smem_addr + uint32_t(s * kWgStageBytes), a_off, b_off, kt > 0);
          wgmma_commit();
          wgmma_wait<1>();  // the step before retired: its slot goes back
        }
        if (kt > 0) release((kt - 1) % kWgStages);
      }
    };
    if constexpr (SIMPLE) {  // TEMPORARY (bisection): one loop, both products whenever busy
      for (int kt = 0; kt < KT; ++kt) {
        const int s = kt % kWgStages;
        mbar_wait(full + s, (kt / kWgStages) & 1);
        fence_proxy_async();
        if (parts > 0) {
          wgmma_fence();
          wg_mma_step<2>(acc, smem_addr + uint32_t(s * kWgStageBytes), a_off, b_off, kt > 0);
          wgmma_commit();
          wgmma_wait<1>();
        }
        if (kt > 0) release((kt - 1) % kWgStages);
      }
    } else {
    if (parts == 2)
      consume(std::integral_constant<int, 2>());
    else if (parts == 1)
      consume(std::integral_constant<int, 1>());
    else
      consume(std::integral_constant<int, 0>());
    }
    wgmma_wait<0>();
#pragma unroll
    for (int h = 0; h < 2; ++h) fence_acc(acc[h]);
    const int row = wg_row0 + 16 * ((tid % 128) / 32) + lane / 4;
    if (!tall) {
      wg_store<kWgBRows, SWIGLU, SPLIT>(p, acc, row, m_end, n0, lane);
    } else {
      wg_store<kWgBRows / 2, SWIGLU, SPLIT>(p, reinterpret_cast<float(&)[1][64]>(acc[0]), row,
                                            m_end, n0, lane);
      if (parts == 2)
        wg_store<kWgBRows / 2, SWIGLU, SPLIT>(p, reinterpret_cast<float(&)[1][64]>(acc[1]),
                                              row + 64, m_end, n0, lane);
    }
  }
}

}  // namespace kimi::cuda::moe
