// The MoE block of a one-token decode step in one persistent launch (contract in moe.h:
// MoeDecodeFusedParams).
//
// Why: at batch 1 the block was four launches (routing with the norm, gate_up, down, un-permute
// with the next norm) whose ramps, tails and hand-offs cost about as much as the ~31 us of expert
// weights they stream (docs/perf-log.md, session 7: ~63 us per layer). Here one grid of one
// 512-thread CTA per multiprocessor runs the phases back to back, meeting at grid-wide barriers
// (work that needs no other CTA goes between a barrier's arrival and its wait):
//   A  before the PDL wait: this CTA's router rows (× the norm weight) into registers, 8 warps
//      per expert splitting k as the routing kernel does (the same sums in the same order).
//   B  x → shared memory, 1/rms, the CTA's logits → route.logits.                  barrier 1
//      (while waiting: the experts' input bf16(RMSNorm(x)·w) into shared memory)
//   C  every CTA routes the token itself from the E logits (route_tokens_cta): no permutation
//      and no second round trip; CTA 0 writes the ids and weights.
//   D  gate_up: units (slot, 8 columns) of 8 gate + 8 up weight rows, one row per warp, in one
//      order for the grid with the shared expert's units spread evenly among the routed ones; a
//      CTA takes a contiguous run (as many as any other ±1), its shared units first; raw fp32
//      dot products to scratch h13[slot][2I]. The first shared row is requested before the PDL
//      wait (constant weights: it streams through B and C).                      barrier 2
//      (while waiting: the first down rows, known since C, are requested)
//   E  act = bf16(SiLU(g)·u) of the slots this CTA's down units touch, in shared memory.
//   F  down: units (slot, 16 columns), one row per warp; y[slot][n] to scratch.     barrier 3
//   G  the CTA's column slice: x += Σ_k w_k y_k (slot order, as the un-permute), and its sum of
//      squares to scratch.                                                         barrier 4
//   H  (next_norm only) 1/rms from the CTAs' partial sums in CTA order; the slice of next_normed.
// Streaming: a warp walks its rows with R rows in flight, every lane holding P 16-byte pieces of
// each (piece j of a row is k 8·(lane + 32j)..+7: each load instruction reads 512 contiguous
// bytes); piece j of row i + R is requested as soon as piece j of row i is used.
// Residency: the grid never exceeds the multiprocessor count and a CTA needs a whole one, so all
// CTAs run at once once the previous kernel drains (launch_dependents lets the next kernel in only
// after every CTA has started: it cannot take a multiprocessor a CTA of this grid still needs).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "gemm/stream_mma.cuh"
#include "moe/moe.h"
#include "moe/moe_route.cuh"
#include "pdl.cuh"
#include "warp.cuh"

namespace kimi::cuda::moe {

constexpr int kFusedThreads = 512, kFusedWarps = kFusedThreads / 32;
// 16-byte pieces per lane per row: gate_up rows of hidden, down rows of inter.
constexpr int kFusedPiecesGateUp = kMoeDecodeFusedMaxHidden / 256;
constexpr int kFusedPiecesDown = kMoeDecodeFusedMaxInter / 256;
// Down rows in flight per warp (2 × 2 KB); gate_up keeps one row of 4.6 KB (74 KB per SM). Two
// gate_up rows (72 registers of pieces) spilled and measured 20% slower (bench_moe --block,
// docs/perf-log.md session 8).
constexpr int kFusedRowsDown = 2;
static_assert(kMoeDecodeFusedMaxHidden % 256 == 0 && kMoeDecodeFusedMaxInter % 256 == 0);
static_assert(kRouteRegK4 * 32 * kRouteWarpsPerExpert * 4 >= kMoeDecodeFusedMaxHidden);

// Grid-wide barrier in two halves over G resident CTAs: bar[0] counts arrivals during the launch
// (barrier b is passed once it reaches b·G), bar[1] counts CTAs that are done; the last one done
// zeroes both for the next launch (every CTA has passed its last wait by then). An arrival is one
// fire-and-forget release; work independent of the other CTAs goes between arrive and wait.
__device__ __forceinline__ unsigned ld_acquire_gpu(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void grid_arrive(unsigned* bar) {
  __syncthreads();  // the CTA's writes before the arrival
  if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(bar) : "memory");
}
__device__ __forceinline__ void grid_wait(const unsigned* bar, unsigned target) {
  if (threadIdx.x == 0)
    while (ld_acquire_gpu(bar) < target) {
    }
  __syncthreads();
}
__device__ __forceinline__ void grid_done(unsigned* bar, unsigned G) {
  if (threadIdx.x == 0 && atomicAdd(bar + 1, 1u) == G - 1) {
    atomicExch(bar, 0u);
    atomicExch(bar + 1, 0u);
  }
}

__device__ __forceinline__ float dot8(const uint4& w, const uint4& x) {
  const uint32_t ww[4] = {w.x, w.y, w.z, w.w}, xx[4] = {x.x, x.y, x.z, x.w};
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // bf16 → fp32 is a shift: the low half, then the high half
    s += __uint_as_float(ww[i] << 16) * __uint_as_float(xx[i] << 16);
    s += __uint_as_float(ww[i] & 0xffff0000u) * __uint_as_float(xx[i] & 0xffff0000u);
  }
  return s;
}
// P 16-byte pieces of a weight row into the lane's registers (zeros past the row or without one).
template <int P>
__device__ __forceinline__ void load_row(uint4 (&buf)[P], const bf16* row, int pieces, int lane) {
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int pc = lane + 32 * j;
    buf[j] = ldg_stream16(row + 8 * pc, row && pc < pieces);
  }
}

// Benchmarks only: %globaltimer at phase boundaries (CTA 0), and the last CTA's end of gate_up
// and of down (atomicMax over the CTAs).
__device__ __forceinline__ void fused_stamp(unsigned long long* stamps, int i, bool max_over_ctas) {
  if (!stamps || threadIdx.x != 0 || (!max_over_ctas && blockIdx.x != 0)) return;
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  if (max_over_ctas) atomicMax(stamps + i, t);
  else stamps[i] = t;
}

__global__ void __launch_bounds__(kFusedThreads, 1) moe_decode_fused_kernel(MoeDecodeFusedParams p) {
  extern __shared__ __align__(16) unsigned char fused_smem[];
  const MoeRouteParams& r = p.route;
  const int E = r.num_experts, K = r.top_k, S = K + (r.shared_expert >= 0);
  const int H = p.hidden, I = p.inter, G = gridDim.x;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  float* xs = reinterpret_cast<float*>(fused_smem);  // [H] the residual row
  bf16* xa = reinterpret_cast<bf16*>(xs + H);       // [H] the experts' input
  float* sel = reinterpret_cast<float*>(xa + H);     // [E] × 3: routing scores, sigmoids, ranks
  bf16* act = reinterpret_cast<bf16*>(sel + (3 * E + 3) / 4 * 4);  // [S][I] (16-byte aligned)
  __shared__ float part[kFusedWarps / kRouteWarpsPerExpert][kRouteWarpsPerExpert];
  __shared__ float ss_part_s[kRouteWarpsPerExpert];
  __shared__ float red[kFusedWarps];
  __shared__ float inv_rms_s;
  __shared__ int chosen_e[32], ids[33];
  __shared__ float chosen_s[32], wts[33];
  float* h13 = p.scratch;                   // [S][2I]
  float* y = h13 + int64_t(S) * 2 * I;      // [S][H]
  float* ss_part = y + int64_t(S) * H;      // [G]

  // A: router rows of experts blockIdx.x·2 + ew (+ 2G, ...; registers for the first only).
  constexpr int kEw = kFusedWarps / kRouteWarpsPerExpert;
  const int ew = warp / kRouteWarpsPerExpert, wk = warp % kRouteWarpsPerExpert, n4 = H / 4;
  const int k4_0 = wk * 32 + lane;
  const float4* nw4 = reinterpret_cast<const float4*>(p.norm_weight);
  auto router_piece = [&](int e, int k4) {
    const float4 w = __ldg(reinterpret_cast<const float4*>(p.router + int64_t(e) * H) + k4);
    const float4 n = __ldg(nw4 + k4);
    return make_float4(w.x * n.x, w.y * n.y, w.z * n.z, w.w * n.w);
  };
  const int e_first = blockIdx.x * kEw + ew;
  fused_stamp(p.stamps, 0, false);
  float4 wreg[kRouteRegK4];
#pragma unroll
  for (int j = 0; j < kRouteRegK4; ++j) {
    const int k4 = k4_0 + j * kRouteK4Step;
    wreg[j] = e_first < E && k4 < n4 ? router_piece(e_first, k4) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  // D's units in one order for the grid, the shared expert's spread evenly among the routed
  // ones (each (K+1)-th when there is one); CTA c takes positions [c·U/G, (c+1)·U/G): as many
  // units as any other ±1, its shared units first. Those rows are constant weights: the first
  // is requested here, before the PDL wait, and streams through B and C.
  constexpr int PG = kFusedPiecesGateUp;
  const int pieces_g = H / 8, CG = (I + 7) / 8;
  const bool has_shared = r.shared_expert >= 0;
  const int U = S * CG;
  const int a = int(int64_t(blockIdx.x) * U / G), b = int(int64_t(blockIdx.x + 1) * U / G);
  const int sh0 = has_shared ? a / S : 0, sh1 = has_shared ? b / S : 0;
  const int ro0 = a - sh0, nsh = sh1 - sh0, ng = b - a;
  const bool up = warp >= 8;
  auto g_slot_col = [&](int i, int& slot, int& n) {  // row i of the warp's sequence
    const int u = i < nsh ? K * CG + sh0 + i : ro0 + i - nsh;
    slot = u / CG;
    n = (u - slot * CG) * 8 + (warp & 7);
  };
  auto g_row = [&](int i) -> const bf16* {  // ids[] only for routed slots (set by C)
    int slot, n;
    g_slot_col(i, slot, n);
    const int e = slot == K ? r.shared_expert : ids[slot];
    return e >= 0 && n < I ? p.w13 + (int64_t(e) * 2 * I + (up ? I : 0) + n) * H : nullptr;
  };
  uint4 gbuf[PG];
  const bf16* grow = nsh > 0 ? g_row(0) : nullptr;
  load_row(gbuf, grow, pieces_g, lane);
  pdl_launch_dependents();  // the next kernel starts only once every CTA here has (see above)
  pdl_wait();
  fused_stamp(p.stamps, 1, false);

  // B: the row (each expert slot's 8 warps see every k once: slot 0 keeps it and sums its
  // squares), the logits' partial sums, then 1/rms and the logits.
  const float4* x4 = reinterpret_cast<const float4*>(p.x);
  float4* xs4 = reinterpret_cast<float4*>(xs);
  float acc = 0.f, ss = 0.f;
#pragma unroll
  for (int j = 0; j < kRouteRegK4; ++j) {
    const int k4 = k4_0 + j * kRouteK4Step;
    if (k4 < n4) {
      const float4 xv = __ldcg(x4 + k4);
      acc += wreg[j].x * xv.x + wreg[j].y * xv.y + wreg[j].z * xv.z + wreg[j].w * xv.w;
      if (ew == 0) {
        xs4[k4] = xv;
        ss += xv.x * xv.x + xv.y * xv.y + xv.z * xv.z + xv.w * xv.w;
      }
    }
  }
  for (int k4 = k4_0 + kRouteRegK4 * kRouteK4Step; k4 < n4; k4 += kRouteK4Step) {  // H > 4096
    const float4 xv = __ldcg(x4 + k4);
    if (e_first < E) {
      const float4 wv = router_piece(e_first, k4);
      acc += wv.x * xv.x + wv.y * xv.y + wv.z * xv.z + wv.w * xv.w;
    }
    if (ew == 0) {
      xs4[k4] = xv;
      ss += xv.x * xv.x + xv.y * xv.y + xv.z * xv.z + xv.w * xv.w;
    }
  }
  acc = warp_sum(acc);
  ss = warp_sum(ss);
  if (lane == 0) {
    part[ew][wk] = acc;
    if (ew == 0) ss_part_s[wk] = ss;
  }
  __syncthreads();
  if (tid < kEw) {  // the routing kernel's sums, in its order
    float t = 0.f, sum = 0.f;
    for (int j = 0; j < kRouteWarpsPerExpert; ++j) t += ss_part_s[j];
    const float inv = rsqrtf(t / float(H) + p.eps);
    if (tid == 0) inv_rms_s = inv;
    for (int j = 0; j < kRouteWarpsPerExpert; ++j) sum += part[tid][j];
    const int eg = blockIdx.x * kEw + tid;
    if (eg < E) const_cast<float*>(r.logits)[eg] = sum * inv;
  }
  __syncthreads();
  const float inv_rms = inv_rms_s;
  for (int e = e_first + G * kEw; e - ew < E; e += G * kEw) {  // experts past the registers
    float acc2 = 0.f;
    if (e < E)
      for (int k4 = k4_0; k4 < n4; k4 += kRouteK4Step) {
        const float4 wv = router_piece(e, k4), xv = xs4[k4];
        acc2 += wv.x * xv.x + wv.y * xv.y + wv.z * xv.z + wv.w * xv.w;
      }
    acc2 = warp_sum(acc2);
    if (lane == 0) part[ew][wk] = acc2;
    __syncthreads();
    if (tid < kEw && e - ew + tid < E) {
      float sum = 0.f;
      for (int j = 0; j < kRouteWarpsPerExpert; ++j) sum += part[tid][j];
      const_cast<float*>(r.logits)[e - ew + tid] = sum * inv_rms;
    }
    __syncthreads();
  }
  fused_stamp(p.stamps, 2, false);
  grid_arrive(p.barrier);
  // The experts' input: bf16(x · 1/rms · norm weight), as the routing kernel writes it.
  for (int k = tid; k < H; k += kFusedThreads) xa[k] = __float2bfloat16(xs[k] * inv_rms * p.norm_weight[k]);
  grid_wait(p.barrier, G);
  fused_stamp(p.stamps, 3, false);

  // C: routing, here in every CTA (ids and weights into shared memory).
  {
    MoeRouteParams rr = r;
    rr.num_tokens = 1;
    rr.expert_ids = ids;
    rr.weights = wts;
    route_tokens_cta(rr, sel, sel + E, reinterpret_cast<int*>(sel + 2 * E), chosen_e, chosen_s, ids);
    __syncthreads();
    if (blockIdx.x == 0 && tid < S) {
      r.expert_ids[tid] = ids[tid];
      r.weights[tid] = wts[tid];
    }
  }
  fused_stamp(p.stamps, 4, false);
  const uint4* xa16 = reinterpret_cast<const uint4*>(xa);

  // D: gate_up. The warp's row of a unit (slot, 8 columns) is gate (warps 0-7) or up (8-15) row
  // 8·group + warp % 8 of the slot's expert; raw fp32 sums to h13.
  if (nsh == 0 && ng > 0) {
    grow = g_row(0);
    load_row(gbuf, grow, pieces_g, lane);
  }
  for (int i = 0; i < ng; ++i) {
    const bf16* next = i + 1 < ng ? g_row(i + 1) : nullptr;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < PG; ++j) {
      const int pc = lane + 32 * j;
      if (pc < pieces_g) sum += dot8(gbuf[j], xa16[pc]);
      gbuf[j] = ldg_stream16(next + 8 * pc, next && pc < pieces_g);
    }
    sum = warp_sum(sum);
    if (lane == 0 && grow) {
      int slot, n;
      g_slot_col(i, slot, n);
      __stcg(h13 + int64_t(slot) * 2 * I + (up ? I : 0) + n, sum);
    }
    grow = next;
  }
  fused_stamp(p.stamps, 5, false);
  fused_stamp(p.stamps, 10, true);
  grid_arrive(p.barrier);

  // F's rows (units (slot, 16 columns), row n = 16·group + warp of W2): known since C, so the
  // first RD rows stream through barrier 2 and E.
  constexpr int PD = kFusedPiecesDown, RD = kFusedRowsDown;
  const int pieces_d = I / 8, DG = (H + 15) / 16, UD = S * DG;
  const int v0 = int(int64_t(blockIdx.x) * UD / G), v1 = int(int64_t(blockIdx.x + 1) * UD / G);
  const int nd = v1 - v0;
  auto d_slot_col = [&](int i, int& slot, int& n) {
    const int v = v0 + i;
    slot = v / DG;
    n = (v - slot * DG) * 16 + warp;
  };
  auto d_row = [&](int i) -> const bf16* {
    int slot, n;
    d_slot_col(i, slot, n);
    const int e = ids[slot];
    return e >= 0 && n < H ? p.w2 + (int64_t(e) * H + n) * I : nullptr;
  };
  uint4 dbuf[RD][PD];
  const bf16* drow[RD];
#pragma unroll
  for (int q = 0; q < RD; ++q) {
    drow[q] = q < nd ? d_row(q) : nullptr;
    load_row(dbuf[q], drow[q], pieces_d, lane);
  }
  grid_wait(p.barrier, 2 * G);
  fused_stamp(p.stamps, 6, false);

  // E: act of the slots this CTA's down units touch.
  if (nd > 0) {
    const int s0 = v0 / DG, s1 = (v1 - 1) / DG;
    for (int i = tid; i < (s1 - s0 + 1) * I; i += kFusedThreads) {
      const int slot = s0 + i / I, j = i % I;
      if (ids[slot] < 0) continue;
      const float g = __ldcg(h13 + int64_t(slot) * 2 * I + j);
      const float u = __ldcg(h13 + int64_t(slot) * 2 * I + I + j);
      act[int64_t(slot) * I + j] = __float2bfloat16(g / (1.f + __expf(-g)) * u);
    }
  }
  __syncthreads();

  // F: down, RD rows in flight per warp.
  const uint4* act16 = reinterpret_cast<const uint4*>(act);
  for (int i0 = 0; i0 < nd; i0 += RD) {
#pragma unroll
    for (int q = 0; q < RD; ++q) {
      const int i = i0 + q;
      const bf16* next = i + RD < nd ? d_row(i + RD) : nullptr;
      int slot = 0, n = 0;
      if (i < nd) d_slot_col(i, slot, n);
      const uint4* arow = act16 + int64_t(slot) * (I / 8);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < PD; ++j) {
        const int pc = lane + 32 * j;
        if (pc < pieces_d) sum += dot8(dbuf[q][j], arow[pc]);
        dbuf[q][j] = ldg_stream16(next + 8 * pc, next && pc < pieces_d);
      }
      sum = warp_sum(sum);
      if (lane == 0 && drow[q]) __stcg(y + int64_t(slot) * H + n, sum);
      drow[q] = next;
    }
  }
  fused_stamp(p.stamps, 7, false);
  fused_stamp(p.stamps, 11, true);
  grid_arrive(p.barrier);
  grid_wait(p.barrier, 3 * G);
  fused_stamp(p.stamps, 8, false);

  // G: this CTA's columns of the residual, as the un-permute adds them.
  const int cols = (H + G - 1) / G, c0 = blockIdx.x * cols, c1 = min(c0 + cols, H);
  float sq = 0.f;
  for (int n = c0 + tid; n < c1; n += kFusedThreads) {
    float sum = 0.f;
    for (int s = 0; s < S; ++s)
      if (ids[s] >= 0) sum += wts[s] * __ldcg(y + int64_t(s) * H + n);
    const float v = xs[n] + sum;
    p.x[n] = v;
    xs[n] = v;
    sq += v * v;
  }
  fused_stamp(p.stamps, 9, false);
  if (p.next_norm) {
    sq = warp_sum(sq);
    if (lane == 0) red[warp] = sq;
    __syncthreads();
    if (tid == 0) {
      float t = 0.f;
      for (int w = 0; w < kFusedWarps; ++w) t += red[w];
      __stcg(ss_part + blockIdx.x, t);
    }
    grid_arrive(p.barrier);
    grid_wait(p.barrier, 4 * G);
    // H: the next block's input.
    if (c0 < c1) {
      if (warp == 0) {
        float t = 0.f;
        for (int c = lane; c < G; c += 32) t += __ldcg(ss_part + c);
        t = warp_sum(t);
        if (lane == 0) inv_rms_s = rsqrtf(t / float(H) + p.eps);
      }
      __syncthreads();
      for (int n = c0 + tid; n < c1; n += kFusedThreads)
        p.next_normed[n] = __float2bfloat16(xs[n] * inv_rms_s * p.next_norm[n]);
    }
  }
  grid_done(p.barrier, G);
}

}  // namespace kimi::cuda::moe
