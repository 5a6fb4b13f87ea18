// Grouped expert GEMMs for prefill-sized batches on Hopper tensor cores (wgmma, sm_90a).
// Contracts in moe.h; same math, inputs and outputs as moe_gemm_kernel:
//   gate_up : act[r, n] = SiLU(x_r · W13_e[n]) · (x_r · W13_e[I + n])   (bf16 out, fp32 math)
//   down    : y[r, n]   = act[r] · W2_e[n]                               (fp32 out)
// with x_r = x[row_token[r]] (gate_up, gathered) or act[r] (down), r in expert e's rows.
//
// Work items: (row tile, column block), column block fastest. Tiles of 128 rows (permutation
// block_m 128) and BN weight rows: down owns BN output columns, gate_up BN/2 gate rows and the
// matching BN/2 up rows of W13 (BN/2 act columns), so SwiGLU is applied in registers.
// Persistent: one CTA per SM (384 threads, warp-specialised) takes items in order from a counter
// in the permutation workspace (v.gemm_next[SWIGLU], zeroed by the permutation; the CTA that
// draws the launch's last number, the G-th past the end for G CTAs, puts it back to zero for the
// next launch). The CTAs busy at one time share one expert's weights (read once from DRAM, the
// rest from L2) and, for down, the same act rows. The ring's state (slot, parity) runs on across
// items, so the producer fills the next item's first k steps while the consumers finish the
// current item and store it (the ring's fill and the epilogue leave the copies busy). The
// producer's thread 0 writes the item of a slot's first k step into slot_item[slot] before its
// arrival on the slot's full barrier (−1 after the last item: that slot carries no data); the
// consumers read it there. Both find an item's expert by a binary search over the experts' tile
// starts, copied to shared memory with the row offsets once per CTA (E <= kWgMaxExperts).
// - Warpgroup 0, the producer (setmaxnreg down to 64), fills a STAGES-deep ring of k steps of 64
//   (one 128-byte row of bf16 per operand row) in the 128-byte swizzle wgmma reads (16-byte piece
//   c of row r at piece c ^ (r % 8); tiles 1024-byte aligned). Its 128 threads gather the input
//   rows with cp.async (rows past the expert's end and k past K zero-filled; TMA cannot gather
//   rows) and signal the slot's full mbarrier with cp.async.mbarrier.arrive.noinc, one arrival per
//   thread once its copies landed; its thread 0 adds the BN weight rows as TMA boxes of 64 k × 64
//   rows (k past K zero-filled by the tensor map) completing on the same barrier. Copying the
//   weights with cp.async as well made the producer the bottleneck (1.6-1.9x slower, perf-log).
// - Warpgroups 1 and 2, the consumers (setmaxnreg up to 216), own 64 rows each: per k step they
//   wait on the slot's full barrier, issue wgmma m64nBNk16 (both operands K-major from shared
//   memory, fp32 accumulators in registers, the first k step overwriting them), keep that step's
//   MMAs in flight while waiting for the next slot, and hand a slot back on its empty mbarrier
//   (one arrival per consumer warp) once the MMAs reading it retired. No CTA-wide barrier in the
//   loop. A warpgroup whose 64 rows are all past the expert's end skips its MMAs (the tail tile
//   of an expert usually fills only the first half) but still takes part in the ring.
// Weight rows past N in a box (the last column block) belong to the next rows of the tensor map
// or are zero-filled past its end: they only feed columns that are not stored.
// Epilogue: straight from the accumulators (thread owns rows lane/4 and lane/4 + 8 of its warp's
// 16, two adjacent columns per 8): bf16x2 act stores or float2 y stores.
// SPLIT (high precision, moe.h): 2·⌈K/64⌉ k steps, the second half over the lo plane of the input
// with the same weights (one accumulator: W·hi + W·lo); gate_up stores act = bf16(v) and
// act_lo = bf16(v − act).
// Deterministic: a fixed k order per output value (the item counter only decides which CTA
// computes an item).
#pragma once

#include <cuda.h>  // CUtensorMap

#include <cstdint>

#include "moe/moe.h"
#include "async_copy.cuh"
#include "wgmma_common.cuh"

namespace kimi::cuda::moe {

constexpr int kWgRows = 128;     // rows per tile (block_m)
constexpr int kWgK = 64;         // k per pipeline step: 128 bytes of bf16

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

// The k16 MMAs of one k step of 64: this warpgroup's 64 rows (a_base) × the BN weight rows;
// accumulate = 0: the first k16 overwrites acc. BN = 256 as one m64n256 per k16 (A read from
// shared memory once, not once per 128 columns: ~2% faster at T = 4096 and 16384 with uniform
// routing, equal with skewed; perf-log session 14).
template <int BN>
__device__ __forceinline__ void wg_mma_step(float (&acc)[BN / 128][64], uint32_t a_base,
                                            uint32_t b_base, int accumulate) {
#pragma unroll
  for (int kk = 0; kk < kWgK / 16; ++kk) {
    const uint64_t da = wgmma_desc(a_base + kk * 32), db = wgmma_desc(b_base + kk * 32);
    if constexpr (BN == 256)
      wgmma_ss_m64n256(acc[0], acc[1], da, db, kk > 0 || accumulate);
    else
      wgmma_ss_m64n128(acc[0], da, db, kk > 0 || accumulate);
  }
}

constexpr int kWgThreads = 384;  // producer warpgroup + 2 consumer warpgroups × 64 rows
constexpr int kWgConsumerWarps = 8;
// One CTA per SM (ptxas compiles every path under the launch cap, 65536 / 384 = 168 registers:
// two CTAs' 80 cannot hold a warpgroup's accumulators); 128 · 64 + 256 · 216 fit the 65536. The
// producer's 64: its gather pointers stay in registers (40 spilled).
constexpr int kWgProducerRegs = 64;
constexpr int kWgConsumerRegs = 216;

template <int BN, int STAGES>
struct WgmmaShape {
  static_assert(BN == 128 || BN == 256, "wgmma tiles of 128 or 256 weight rows");
  static constexpr int kABytes = kWgRows * kWgK * 2;
  static constexpr int kBBytes = BN * kWgK * 2;
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr int kSmemBytes = STAGES * kStageBytes + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "one CTA per SM must fit");
};

// Arrives on bar once every cp.async this thread issued before has landed (counts as one of the
// barrier's expected arrivals).
__device__ __forceinline__ void cp_async_mbar_arrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_u32(bar))
               : "memory");
}

// Kernel arguments: b is the weights' tensor map, boxes of 64 k × 64 rows: gate_up W13 as
// [E·2I rows][hidden], down W2 as [E·hidden rows][I].
struct WgmmaArgs {
  CUtensorMap b;
  MoeGemmParams p;
  MoePermuteView v;
  int col_blocks;
};
constexpr int kWgBoxRows = 64;

// Experts the kernel's shared-memory tables hold (tile starts and row offsets).
constexpr int kWgMaxExperts = 1024;

template <int BN, int STAGES, bool SWIGLU, bool SPLIT>
__global__ void __launch_bounds__(kWgThreads, 1)
    moe_wgmma_kernel(const __grid_constant__ WgmmaArgs args) {
  using Shape = WgmmaShape<BN, STAGES>;
  const MoeGemmParams& p = args.p;
  const MoePermuteView& v = args.v;
  const int col_blocks = args.col_blocks;
  constexpr int kAPieces = kWgRows * 8 / 128;  // 16-byte pieces per producer thread per step
  constexpr int kNH = BN / 128;

  extern __shared__ unsigned char wg_smem_raw[];
  __shared__ uint64_t bars[2 * STAGES];  // full[STAGES], empty[STAGES]
  __shared__ int slot_item[STAGES];      // the item whose first k step the slot holds, or −1
  __shared__ int fetched[2];             // the producer's drawn item, by item parity
  __shared__ int s_tile_start[kWgMaxExperts + 1], s_offsets[kWgMaxExperts + 1];
  uint64_t* const full = bars;
  uint64_t* const empty = bars + STAGES;
  const uint32_t raw_addr = smem_u32(wg_smem_raw);
  const uint32_t smem_addr = (raw_addr + 1023) & ~1023u;  // the swizzle pattern needs 1024
  unsigned char* smem = wg_smem_raw + (smem_addr - raw_addr);

  const int E = p.num_experts;
  const int Kd = SWIGLU ? p.hidden : p.inter;
  const int KTd = (Kd + kWgK - 1) / kWgK;
  const int KT = SPLIT ? 2 * KTd : KTd;
  const int tid = threadIdx.x;
  for (int i = tid; i <= E; i += kWgThreads) {
    s_tile_start[i] = v.tile_start[i];
    s_offsets[i] = v.offsets[i];
  }
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full + s, 128 + 1);  // the producers' copies + the weights' expect_tx
      mbar_init(empty + s, kWgConsumerWarps);
    }
    fence_mbar_init();
  }
  __syncthreads();
  const int n_items = s_tile_start[E] * col_blocks;
  int* const next = v.gemm_next + (SWIGLU ? 1 : 0);
  // Item → (expert's rows [m0, m_end), first output column n0).
  auto find = [&](int item, int& m0, int& m_end, int& n0, int& e) {
    const int tile = item / col_blocks, cb = item - tile * col_blocks;
    int lo = 0, hi = E - 1;  // largest e with tile_start[e] <= tile
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (s_tile_start[mid] <= tile)
        lo = mid;
      else
        hi = mid - 1;
    }
    e = lo;
    m0 = s_offsets[lo] + (tile - s_tile_start[lo]) * kWgRows;
    m_end = s_offsets[lo + 1];
    n0 = cb * (SWIGLU ? BN / 2 : BN);
  };

  // Broadcast from lane 0 so the compiler sees warp-uniform values around wgmma (ptxas C7518).
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  if (wg == 0) {
    setmaxnreg_dec<kWgProducerRegs>();
    // Thread tid copies piece tid % 8 of rows tid / 8 + 16 i: one row's 128 bytes per 8 lanes.
    const int piece = tid % 8, row0 = tid / 8;
    const uint32_t dst_in_row = uint32_t((piece ^ (row0 % 8)) * 16);  // row0 + 16 i ≡ row0 mod 8
    int s = 0;       // ring slot of the next k step, over all items
    uint32_t ph = 0; // its use count's parity
    for (int it = 0;; ++it) {
      if (tid == 0) fetched[it & 1] = atomicAdd(next, 1);
      bar_sync(1, 128);  // the 128 producer threads
      const int item = fetched[it & 1];
      if (item >= n_items) {
        // The launch's last draw: every CTA has drawn its past-the-end number.
        if (tid == 0 && item == n_items + int(gridDim.x) - 1) *next = 0;
        mbar_wait(empty + s, ph ^ 1);
        if (tid == 0) {
          slot_item[s] = -1;
          mbar_arrive(full + s);  // in place of the expect_tx arrival
        }
        mbar_arrive(full + s);
        break;
      }
      int m0, m_end, n0, e;
      find(item, m0, m_end, n0, e);
      const int w_row = SWIGLU ? e * 2 * p.inter + n0 : e * p.hidden + n0;  // tensor map row
      const bf16* a_src[kAPieces];
#pragma unroll
      for (int i = 0; i < kAPieces; ++i) {
        const int row = m0 + row0 + 16 * i;
        a_src[i] = nullptr;
        if (row < m_end)
          a_src[i] =
              SWIGLU ? p.x + int64_t(v.row_token[row]) * p.hidden : p.act + int64_t(row) * p.inter;
      }
      for (int kt = 0; kt < KT; ++kt) {
        // A slot's first use waits on parity 1 of its empty barrier: that returns at once.
        mbar_wait(empty + s, ph ^ 1);
        const uint32_t st = uint32_t(s * Shape::kStageBytes);
        const bool lo = SPLIT && kt >= KTd;
        const int k0 = (lo ? kt - KTd : kt) * kWgK;
        if (tid == 0) {
          // The weight rows as TMA boxes (k past K zero-filled; rows past N belong to columns
          // that are not stored). gate_up: the first BN/2 tile rows are gate rows, then up rows.
          if (kt == 0) slot_item[s] = item;  // released by the arrival below
          mbar_arrive_expect_tx(full + s, uint32_t(Shape::kBBytes));
#pragma unroll
          for (int bx = 0; bx < BN / kWgBoxRows; ++bx) {
            const int r = bx * kWgBoxRows;
            const int row = SWIGLU && r >= BN / 2 ? w_row + p.inter + r - BN / 2 : w_row + r;
            tma_load_2d(smem_addr + st + Shape::kABytes + r * 128, &args.b, k0, row, full + s);
          }
        }
        const int k = k0 + piece * 8;
        const bool k_ok = k < Kd;
#pragma unroll
        for (int i = 0; i < kAPieces; ++i) {
          const bool ok = k_ok && a_src[i];
          const bf16* src = a_src[i] + k;
          if (lo && a_src[i])  // the same row of the lo plane
            src = SWIGLU ? p.x_lo + (a_src[i] - p.x) + k : p.act_lo + (a_src[i] - p.act) + k;
          cp_async16(smem + st + (row0 + 16 * i) * 128 + dst_in_row, ok ? src : p.w2, ok);
        }
        cp_async_mbar_arrive(full + s);
        if (++s == STAGES) s = 0, ph ^= 1;
      }
    }
    cp_async_wait<0>();
  } else {
    setmaxnreg_inc<kWgConsumerRegs>();
    const int cw = wg - 1;  // rows 64 cw .. + 64 of a tile
    const int lane = tid % 32, warp = (tid % 128) / 32;
    // Written by an item's first k step (accumulate = 0): zeroing it instead makes ptxas
    // serialize the 128-column tiles' wgmmas (C7515). An idle warpgroup stores none of it.
    float acc[kNH][64];
    // Every warp's wgmmas are done reading the slot (after its wait): one arrival per warp.
    auto release = [&](int s) {
      __syncwarp();
      if (lane == 0) mbar_arrive(empty + s);
    };
    const volatile int* items = slot_item;
    int s = 0;
    uint32_t ph = 0;
    for (;;) {
      mbar_wait(full + s, ph);
      const int item = __shfl_sync(0xffffffffu, items[s], 0);
      if (item < 0) break;
      int m0, m_end, n0, e;
      find(item, m0, m_end, n0, e);
      const bool busy = __shfl_sync(0xffffffffu, int(m0 + 64 * cw < m_end), 0) != 0;
      int prev = 0;
      for (int kt = 0; kt < KT; ++kt) {
        if (kt > 0) mbar_wait(full + s, ph);
        // The copies wrote through the generic proxy; the tensor cores read through the async one.
        fence_proxy_async();
        if (busy) {
          const uint32_t st = smem_addr + uint32_t(s * Shape::kStageBytes);
          wgmma_fence();
          wg_mma_step<BN>(acc, st + uint32_t(cw * 64 * 128), st + Shape::kABytes, kt > 0);
          wgmma_commit();
          wgmma_wait<1>();  // the step before retired: its slot goes back
        }
        if (kt > 0) release(prev);
        prev = s;
        if (++s == STAGES) s = 0, ph ^= 1;
      }
      wgmma_wait<0>();
      release(prev);  // the producer refills it while this warpgroup stores
      if (busy) {
#pragma unroll
        for (int h = 0; h < kNH; ++h) fence_acc(acc[h]);
        wg_store<BN, SWIGLU, SPLIT>(p, acc, m0 + 64 * cw + 16 * warp + lane / 4, m_end, n0, lane);
      }
    }
  }
}

}  // namespace kimi::cuda::moe
