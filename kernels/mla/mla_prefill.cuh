// MLA expanded prefill (contract in mla.h): the flash-attention kernel of a round's items over
// per-head K = [k_nope | k_pe] (192) and V (128), and the cache gather that precedes the
// round's expansion GEMMs. Host plan and launcher: mla_prefill.cu.
//
// Attention, warp-specialised on wgmma + TMA (sm_90a). An item is up to 128 query tokens of one
// sequence against one segment of its context (workspace rows ws_row ..); one CTA per (item,
// head), 3 warpgroups. Warpgroup 0 is the producer: after setmaxnreg hands its registers to the
// others, one thread issues TMA tensor copies (boxes of [128 rows][64 bf16] in the 128-byte
// swizzle wgmma reads: 16-byte piece c of row r at c ^ (r % 8)) into shared memory: Q once
// (q_nope 0..63, 64..127, q_pe), then per tile of 128 keys a K tile (k_nope 0..63, 64..127 from
// the workspace, k_pe from the gathered latents) and a Vᵀ tile (128 value rows × keys 0..63,
// 64..127) into two-stage rings, in the order the consumers need them (K0, K1, V0, K2, V1, ...).
// Every ring slot has a full mbarrier (the copies' bytes) and an empty one (one arrival per
// consumer warp once its wgmmas are done reading).
// Warpgroups 1 and 2 (consumers, 64 query rows each, no CTA-wide barrier after the start), per
// tile n:
//   S(n) = Q·K(n)ᵀ: 12 wgmma m64n128k16 from shared memory, fp32 in registers;
//   O += P(n − 1)·V(n − 1): 8 wgmma m64n128k16, P bf16 in registers (the m64nN accumulator
//   layout of S is the A-fragment layout), issued right after S(n), before waiting for either;
//   the online softmax of S(n) in base 2 (scale·log2 e folded into one FMA before ex2, causal
//   mask only on tiles that cross the diagonal or the end of the keys) runs while P·V is in
//   flight; O is rescaled once it lands.
// Ping-pong: the two consumers take turns issuing their wgmmas (named barriers 1 and 2: a turn is
// bar.sync on one's own, bar.arrive on the other's), so one's softmax overlaps the other's MMAs.
// Both consumers run every tile of the item (a tile wholly above one's diagonal is masked to
// P = 0), so their turns pair up.
// Keys past the item's end in a tile are masked (K may hold anything there); V there must be
// finite (0 · NaN): workspace columns inside the round are GEMM outputs of gathered latents, or
// of zeros in the gaps that start segments on 8-row boundaries (mla_gather_kernel); columns past
// the round's rows lie outside the Vᵀ tensor map and read as zeros. Query rows past the item are
// computed and not stored. The Vᵀ boxes start at key ws_row + 128n: a multiple of 8 (16 bytes),
// as TMA needs of the innermost coordinate (an odd start faults: illegal instruction).
// State across rounds: (o, m, l) fp32 per (token, head) in `state`, read unless kMlaFirst,
// written unless kMlaLast.
// Shared memory: Q 48 KB + 2 × (K 48 KB + Vᵀ 32 KB) + 1 KB alignment slack: 209 KB, one CTA per
// SM. Registers: producer 40, consumers 232 (setmaxnreg), no spills.
#pragma once

#include <cuda.h>  // CUtensorMap

#include "async_copy.cuh"
#include "mla/mla.h"
#include "mla/mla_fp8.cuh"
#include "wgmma_common.cuh"

namespace kimi::cuda::mla {

constexpr int kPfThreads = 384;  // producer warpgroup + 2 consumer warpgroups × 64 query rows
constexpr int kPfKeys = 128;     // keys per tile
constexpr int kPfStages = 2;
constexpr uint32_t kPfBox = 128 * 128;      // one TMA box: [128 rows][64 bf16], 16 KB
constexpr uint32_t kPfQBytes = 3 * kPfBox;  // q_nope 0..63, 64..127, q_pe
constexpr uint32_t kPfKBytes = 3 * kPfBox;  // k_nope 0..63, 64..127, k_pe
constexpr uint32_t kPfVBytes = 2 * kPfBox;  // Vᵀ keys 0..63, 64..127
constexpr size_t kPfSmem = kPfQBytes + size_t(kPfStages) * (kPfKBytes + kPfVBytes) + 1024;
constexpr int kPfConsumerWarps = 8;
static_assert(kMlaPrefillRows == 128, "two consumer warpgroups of 64 rows");
static_assert(kPfSmem <= 227 * 1024, "one CTA per SM must fit");

// Kernel arguments: the params, the round's items and the TMA tensor maps of the round (host:
// run_mla_prefill), 2-D, boxes of 64 × 128 elements:
//   q     [T rows][H·192]      box at (192h + 64kb, q_begin)
//   knope [round rows][H·128]  box at (128h + 64kb, key row)   (workspace k_nope)
//   kpe   [round rows][576]    box at (512, key row)           (the latents' k_pe columns)
//   vt    [H·128][round rows]  box at (key row, 128h)          (workspace Vᵀ, keys contiguous)
struct PfArgs {
  CUtensorMap q, knope, kpe, vt;
  MlaPrefillParams p;
  const MlaPrefillItem* items;  // this round's
};


__global__ void __launch_bounds__(kPfThreads, 1)
    mla_prefill_kernel(const __grid_constant__ PfArgs args) {
  extern __shared__ unsigned char pf_smem_raw[];
  // q_full, k_full[2], k_empty[2], v_full[2], v_empty[2]
  __shared__ uint64_t bars[1 + 4 * kPfStages];
  uint64_t* const q_full = bars;
  uint64_t* const k_full = bars + 1;
  uint64_t* const k_empty = k_full + kPfStages;
  uint64_t* const v_full = k_empty + kPfStages;
  uint64_t* const v_empty = v_full + kPfStages;
  const uint32_t q_s = (smem_u32(pf_smem_raw) + 1023) & ~1023u;  // the swizzle needs 1024
  const uint32_t k_s = q_s + kPfQBytes;
  const uint32_t v_s = k_s + kPfStages * kPfKBytes;

  const MlaPrefillParams& p = args.p;
  const MlaPrefillItem it = args.items[blockIdx.x];
  const int H = p.num_heads, h = blockIdx.y;
  const int kv_hi = it.kv_end;  // clipped by the plan to the item's last visible position + 1
  // ≥ 1: the plan's items are non-empty.
  const int ntiles = (kv_hi - it.kv_begin + kPfKeys - 1) / kPfKeys;
  if (threadIdx.x == 0) {
    mbar_init(q_full, 1);
    for (int s = 0; s < kPfStages; ++s) {
      mbar_init(k_full + s, 1);
      mbar_init(k_empty + s, kPfConsumerWarps);
      mbar_init(v_full + s, 1);
      mbar_init(v_empty + s, kPfConsumerWarps);
    }
    fence_mbar_init();
  }
  __syncthreads();

  // Broadcast from lane 0 so the compiler sees warp-uniform values around wgmma (ptxas C7518).
  const int wg = __shfl_sync(0xffffffffu, int(threadIdx.x) / 128, 0);
  if (wg == 0) {
    setmaxnreg_dec<40>();
    if (threadIdx.x == 0) {
      mbar_arrive_expect_tx(q_full, kPfQBytes);
      for (int kb = 0; kb < 3; ++kb)
        tma_load_2d(q_s + kb * kPfBox, &args.q, h * kMlaQk + 64 * kb, it.q_begin, q_full);
      // A slot's first use waits on parity 1 of its empty barrier: that returns at once.
      auto load_k = [&](int n) {
        const int s = n % kPfStages;
        mbar_wait(k_empty + s, ((n / kPfStages) & 1) ^ 1);
        mbar_arrive_expect_tx(k_full + s, kPfKBytes);
        const uint32_t dst = k_s + s * kPfKBytes;
        const int row = it.ws_row + n * kPfKeys;
        tma_load_2d(dst, &args.knope, h * 128, row, k_full + s);
        tma_load_2d(dst + kPfBox, &args.knope, h * 128 + 64, row, k_full + s);
        tma_load_2d(dst + 2 * kPfBox, &args.kpe, kMlaLat, row, k_full + s);
      };
      auto load_v = [&](int n) {
        const int s = n % kPfStages;
        mbar_wait(v_empty + s, ((n / kPfStages) & 1) ^ 1);
        mbar_arrive_expect_tx(v_full + s, kPfVBytes);
        const uint32_t dst = v_s + s * kPfVBytes;
        const int col = it.ws_row + n * kPfKeys;
        tma_load_2d(dst, &args.vt, col, h * 128, v_full + s);
        tma_load_2d(dst + kPfBox, &args.vt, col + 64, h * 128, v_full + s);
      };
      load_k(0);
      for (int n = 1; n < ntiles; ++n) {
        load_k(n);
        load_v(n - 1);
      }
      load_v(ntiles - 1);
    }
  } else {
    setmaxnreg_inc<232>();
    const int cw = wg - 1;  // consumer 0 or 1: query rows 64cw .. +64 of the item
    const int warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int r0 = 64 * cw + 16 * warp;  // this warp's first row of the item
    const int qpos_lo = it.q_pos0 + r0;
    const int qp[2] = {qpos_lo + g, qpos_lo + g + 8};
    const bool valid[2] = {r0 + g < it.nq, r0 + g + 8 < it.nq};
    const float sl2 = p.scale * 1.4426950408889634f;
    const int bar_me = 1 + cw, bar_other = 2 - cw;  // the named barriers of the two turns
    // o[4j + 2hf + c]: row g + 8hf of the warp's 16, value column 8j + 2 t4 + c.
    float o[64];
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < 64; ++i) o[i] = 0.f;
    if (!(it.flags & kMlaFirst)) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        // Rows past the item read the item's first row (never stored): an unconditional load
        // keeps the compiler from holding both versions of o (a spill).
        const int row = valid[hf] ? r0 + g + 8 * hf : 0;
        const float* st = p.state + ((int64_t(it.q_begin) + row) * H + h) * kMlaStateStride;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          const float2 v = *reinterpret_cast<const float2*>(st + j * 8 + 2 * t4);
          o[4 * j + 2 * hf] = v.x;
          o[4 * j + 2 * hf + 1] = v.y;
        }
        const float2 ml = *reinterpret_cast<const float2*>(st + 128);
        m[hf] = ml.x;
        l[hf] = t4 == 0 ? ml.y : 0.f;  // l is kept as per-lane partial sums of the quad
      }
    }

    const uint32_t q_rows = q_s + uint32_t(cw * 64 * 128);  // this warpgroup's 64 rows of Q
    float s[64];        // S of the newest tile, then its P in fp32
    uint32_t pa[8][4];  // P of the tile before, bf16: the A fragments of keys 16kk .. +16
    float alpha[2];     // O's rescale for the newest tile
    // A descriptor's address field counts 16-byte units: offsets inside a tile are added to it.
    const uint64_t q_desc = wgmma_desc(q_rows);
    auto issue_s = [&](int n) {
      const uint64_t k_desc = wgmma_desc(k_s + (n % kPfStages) * kPfKBytes);
#pragma unroll
      for (int kb = 0; kb < 3; ++kb)
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const uint32_t off = (kb * kPfBox + kk * 32) / 16;
          wgmma_ss_m64n128(s, q_desc + off, k_desc + off, kb + kk > 0);
        }
      wgmma_commit();
    };
    auto issue_pv = [&](int n) {
      const uint64_t v_desc = wgmma_desc(v_s + (n % kPfStages) * kPfVBytes);
#pragma unroll
      for (int kk = 0; kk < 8; ++kk)
        wgmma_rs_m64n128(o, pa[kk], v_desc + ((kk / 4) * kPfBox + (kk % 4) * 32) / 16);
      wgmma_commit();
    };
    // Every warp's wgmmas are done reading the slot (after its wait): one arrival per warp.
    auto release = [&](uint64_t* bar) {
      __syncwarp();
      if (lane == 0) mbar_arrive(bar);
    };
    // S(n) → P(n) in place; m, l and alpha updated.
    auto softmax = [&](int n) {
      const int j0 = it.kv_begin + n * kPfKeys;  // position of the tile's first key
      if (j0 + kPfKeys - 1 > qpos_lo || j0 + kPfKeys > kv_hi) {
#pragma unroll
        for (int j = 0; j < 16; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = j0 + 8 * j + 2 * t4 + (e & 1);
            if (key > qp[e >> 1] || key >= kv_hi) s[4 * j + e] = -INFINITY;
          }
      }
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 16; ++j)
          mx = fmaxf(mx, fmaxf(s[4 * j + 2 * hf], s[4 * j + 2 * hf + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[hf], mx * sl2);
        const float m_use = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet: P = 0
        alpha[hf] = ex2(m[hf] - m_use);
        m[hf] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          const float p0 = ex2(fmaf(s[4 * j + 2 * hf], sl2, -m_use));
          const float p1 = ex2(fmaf(s[4 * j + 2 * hf + 1], sl2, -m_use));
          sum += p0 + p1;
          s[4 * j + 2 * hf] = p0;
          s[4 * j + 2 * hf + 1] = p1;
        }
        l[hf] = l[hf] * alpha[hf] + sum;
      }
    };
    auto rescale_pack = [&]() {  // once the P·V before has landed
#pragma unroll
      for (int j = 0; j < 16; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[4 * j + e] *= alpha[e >> 1];
#pragma unroll
      for (int kk = 0; kk < 8; ++kk)
#pragma unroll
        for (int i = 0; i < 4; ++i) pa[kk][i] = pack_bf16x2(s[8 * kk + 2 * i], s[8 * kk + 2 * i + 1]);
    };
    // Keeps the P fragments alive (and unmoved) until the P·V that reads them is waited for.
    auto fence_pa = [&]() {
#pragma unroll
      for (int kk = 0; kk < 8; ++kk)
#pragma unroll
        for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(pa[kk][i])::"memory");
    };

    if (cw == 1) bar_arrive(bar_other, 256);  // consumer 0 takes the first turn
    mbar_wait(q_full, 0);
    mbar_wait(k_full, 0);
    bar_sync(bar_me, 256);
    wgmma_fence();
    issue_s(0);
    bar_arrive(bar_other, 256);
    wgmma_wait<0>();
    fence_acc(s);
    release(k_empty);
    softmax(0);
    rescale_pack();
    for (int n = 1; n < ntiles; ++n) {
      const int sk = n % kPfStages, sv = (n - 1) % kPfStages;
      mbar_wait(k_full + sk, (n / kPfStages) & 1);
      mbar_wait(v_full + sv, ((n - 1) / kPfStages) & 1);
      bar_sync(bar_me, 256);
      wgmma_fence();  // o, pa and s were written by ordinary instructions
      issue_s(n);
      issue_pv(n - 1);
      bar_arrive(bar_other, 256);
      wgmma_wait<1>();  // S(n) landed; P·V(n − 1) may still run
      fence_acc(s);
      release(k_empty + sk);
      softmax(n);
      wgmma_wait<0>();
      fence_acc(o);
      fence_pa();
      release(v_empty + sv);
      rescale_pack();
    }
    const int sv = (ntiles - 1) % kPfStages;
    mbar_wait(v_full + sv, ((ntiles - 1) / kPfStages) & 1);
    bar_sync(bar_me, 256);
    wgmma_fence();
    issue_pv(ntiles - 1);
    // Consumer 1's last turn hands over to nobody: every bar.sync has its arrival, none is left.
    if (cw == 0) bar_arrive(bar_other, 256);
    wgmma_wait<0>();
    fence_acc(o);
    fence_pa();

#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      l[hf] += __shfl_xor_sync(0xffffffffu, l[hf], 1);
      l[hf] += __shfl_xor_sync(0xffffffffu, l[hf], 2);
      if (!valid[hf]) continue;
      const int64_t th = (int64_t(it.q_begin) + r0 + g + 8 * hf) * H + h;
      if (it.flags & kMlaLast) {
        const float inv = l[hf] > 0.f ? 1.f / l[hf] : 0.f;
        bf16* dst = p.out + th * 128 + 2 * t4;
#pragma unroll
        for (int j = 0; j < 16; ++j)
          *reinterpret_cast<__nv_bfloat162*>(dst + j * 8) =
              __floats2bfloat162_rn(o[4 * j + 2 * hf] * inv, o[4 * j + 2 * hf + 1] * inv);
      } else {
        float* st = p.state + th * kMlaStateStride;
#pragma unroll
        for (int j = 0; j < 16; ++j)
          *reinterpret_cast<float2*>(st + j * 8 + 2 * t4) =
              make_float2(o[4 * j + 2 * hf], o[4 * j + 2 * hf + 1]);
        if (t4 == 0) *reinterpret_cast<float2*>(st + 128) = make_float2(m[hf], l[hf]);
      }
    }
  }
}

// Cache rows of a round's segments into lat [rows, 576]: 32 workspace rows per CTA. The rows
// between segments (8-row alignment) are zeroed: their Vᵀ columns are read, with P = 0, by the
// tiles that end a segment, and must be finite. An fp8 cache (cache8) is decoded to bf16 here,
// so the expansion GEMMs and the attention read the same lat as with a bf16 cache.
constexpr int kGatherRows = 32;
__global__ void __launch_bounds__(256)
    mla_gather_kernel(const bf16* cache, const uint8_t* cache8, const int* tables, int mb,
                      const MlaPrefillSeg* segs, int num_segs, int rows, bf16* lat) {
  __shared__ int64_t src_s[kGatherRows];  // the row's cache row, −1: a gap (zeros)
  const int row0 = blockIdx.x * kGatherRows;
  if (threadIdx.x < kGatherRows) {
    const int r = row0 + threadIdx.x;
    int64_t src = -1;
    if (r < rows) {
      for (int k = 0; k < num_segs; ++k) {
        const MlaPrefillSeg sg = segs[k];
        if (r >= sg.ws_row && r < sg.ws_row + (sg.pos_end - sg.pos_begin)) {
          const int pos = sg.pos_begin + r - sg.ws_row;
          const int blk = tables[int64_t(sg.seq) * mb + pos / kMlaBlock];
          src = int64_t(blk) * kMlaBlock + pos % kMlaBlock;
          break;
        }
      }
    }
    src_s[threadIdx.x] = src;
  }
  __syncthreads();
  constexpr int kChunks = kMlaRow / 8;
  for (int idx = threadIdx.x; idx < kGatherRows * kChunks; idx += blockDim.x) {
    const int r = idx / kChunks, c = idx % kChunks;
    if (row0 + r >= rows) break;
    const int64_t src = src_s[r];
    uint4 v = make_uint4(0, 0, 0, 0);
    if (src >= 0 && !cache8) {
      v = *reinterpret_cast<const uint4*>(cache + src * kMlaRow + c * 8);
    } else if (src >= 0) {  // fp8 record: 8 codes times their scale, or 8 bf16 of k_pe
      const uint8_t* rec = cache8 + src * kMlaFp8Row;
      v = c < kMlaLat / 8
              ? fp8x8_to_bf16(
                    *reinterpret_cast<const uint2*>(rec + c * 8),
                    fp8_scale2(reinterpret_cast<const float*>(rec + kMlaFp8ScaleOff)[c / 16]))
              : *reinterpret_cast<const uint4*>(rec + kMlaFp8PeOff + (c - kMlaLat / 8) * 16);
    }
    *reinterpret_cast<uint4*>(lat + (int64_t(row0) + r) * kMlaRow + c * 8) = v;
  }
}

}  // namespace kimi::cuda::mla
