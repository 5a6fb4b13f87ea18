// The MoE block of a one-token decode step in one persistent launch (contract in moe.h:
// MoeDecodeFusedParams).
//
// Why: at batch 1 the block was four launches (routing with the norm, gate_up, down, un-permute
// with the next norm) whose ramps, tails and hand-offs cost about as much as the ~31 us of expert
// weights they stream (docs/perf-log.md, session 7: ~63 us per layer). Here one grid of one
// 512-thread CTA per multiprocessor runs the phases back to back, meeting at grid-wide barriers
// (work that needs no other CTA goes between a barrier's arrival and its wait). Every CTA owns
// an even share (fused_share: [c·n/G, (c+1)·n/G), ±1 row) of the shared expert's gate_up rows
// and of the routed experts', and of the down rows in slot order (the shared expert's slot last,
// as before session 9: a CTA's down rows then need one or two slots of act, not two or three).
// Latency-bound loads (x, the barrier polls, the logits) wait behind whatever streaming loads
// their multiprocessor has queued (session 9, bench_moe --block: B took 2.8 us with the shared
// expert's rows in flight, 1.0-1.3 us without), so nothing streams until the routing warp has
// its logits; the shared expert's first rows then stream during the routing's rounds (1.8 us
// faster than requesting them after it).
//   A  before the PDL wait: this CTA's router rows (× the norm weight) into registers, 8 warps
//      per expert splitting k as the routing kernel does (the same sums in the same order); the
//      correction biases into shared memory.
//   B  x → shared memory, 1/rms, the CTA's logits → route.logits.                  barrier 1
//      (while waiting: the experts' input bf16(RMSNorm(x)·w) into shared memory)
//   C  warp 0 routes the token from the E logits (route_scores, route_choose: every CTA itself,
//      so no second round trip); CTA 0 writes the ids and weights. Once its logits have landed,
//      the other warps request their first gate_up row where it is the shared expert's.
//      Each lane's keys sit sorted in registers; for E <= 256 and K <= 8 the lanes merge them in
//      five butterfly rounds (route_choose_merge; branch moefuse4: 1.3 us against 2.0 for the K
//      rounds of route_choose, which larger shapes still take).
//   D  gate_up: warp w takes rows w, w + 16, ... of the CTA's list (its shared expert's rows,
//      then its routed rows), one row in flight; raw fp32 dot products to scratch h13[slot][2I].
//                                                                                  barrier 2
//      (while waiting: the first down rows, known since C, are requested)
//   E  act = bf16(SiLU(g)·u) of the slots this CTA's down rows use, in shared memory.
//   F  down: warp w takes rows w, w + 16, ... of the CTA's list (slot order), RD rows in flight;
//      y[slot][n] to scratch. The CTA counts itself done and leaves, but for the last one:
//   G  the last CTA done: the whole row x += Σ_k w_k y_k (slot order, as the un-permute; x = Σ
//      without accumulate), all its loads in one round trip, and (next_norm) 1/rms and
//      next_normed. No barriers 3 and 4: the
//      other CTAs' multiprocessors go to the next kernel meanwhile (branch moefuse4: 2.1 us per
//      layer against a column slice per CTA between two more grid barriers).
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
// (barrier b is passed once it reaches b·G), bar[1] counts CTAs that are done (fused_done); the
// last one done zeroes both for the next launch (every CTA has passed its last wait by then). An
// arrival is one fire-and-forget release; work independent of the other CTAs goes between arrive
// and wait.
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
// Counts the CTA done (after a CTA barrier: its writes before the count, released) and tells
// whether it was the last; the last one resets the barrier. Every CTA must call it once.
__device__ __forceinline__ bool fused_done(unsigned* bar, unsigned G) {
  __shared__ unsigned last_s;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned old;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(old) : "l"(bar + 1) : "memory");
    last_s = old == G - 1;
    if (last_s) {  // every other CTA is past its last wait
      bar[0] = 0;
      bar[1] = 0;
    }
  }
  __syncthreads();
  return last_s != 0;
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

// The CTA's share [c·n/G, (c+1)·n/G) of n items (as many as any other CTA ±1).
__host__ __device__ inline void fused_share(int n, int c, int G, int& lo, int& hi) {
  lo = int(int64_t(c) * n / G);
  hi = int(int64_t(c + 1) * n / G);
}
// Shared memory: xs [H] fp32, xa [H] bf16, sigmoids and biases [E] each, act [S][I] bf16.
inline size_t fused_smem_bytes(int E, int S, int H, int I) {
  return size_t(H) * 6 + size_t((2 * E + 3) / 4 * 4) * 4 + size_t(S) * I * 2;
}
// The routing warp tells the others that its logits loads have landed (named barrier 1): only
// then do they start streaming, which would otherwise queue ahead of those loads.
__device__ __forceinline__ void routing_loads_done_arrive() {
  asm volatile("bar.arrive 1, %0;" ::"n"(kFusedThreads) : "memory");
}
__device__ __forceinline__ void routing_loads_done_wait() {
  asm volatile("bar.sync 1, %0;" ::"n"(kFusedThreads) : "memory");
}

__global__ void __launch_bounds__(kFusedThreads, 1) moe_decode_fused_kernel(MoeDecodeFusedParams p) {
  extern __shared__ __align__(16) unsigned char fused_smem[];
  const MoeRouteParams& r = p.route;
  const int E = r.num_experts, K = r.top_k;
  const bool has_shared = r.shared_expert >= 0;
  const int S = K + has_shared;
  const int H = p.hidden, I = p.inter, G = gridDim.x, c = blockIdx.x;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  float* xs = reinterpret_cast<float*>(fused_smem);  // [H] the residual row
  bf16* xa = reinterpret_cast<bf16*>(xs + H);       // [H] the experts' input
  float* sig_s = reinterpret_cast<float*>(xa + H);  // [E] sigmoids
  float* bias_s = sig_s + E;                         // [E] correction biases
  bf16* act = reinterpret_cast<bf16*>(sig_s + (2 * E + 3) / 4 * 4);  // [S][I]
  __shared__ float part[kFusedWarps / kRouteWarpsPerExpert][kRouteWarpsPerExpert];
  __shared__ float ss_part_s[kRouteWarpsPerExpert];
  __shared__ float red[kFusedWarps];
  __shared__ float inv_rms_s;
  __shared__ int ids[33];
  __shared__ float wts[33];
  float* h13 = p.scratch;                   // [S][2I]
  float* y = h13 + int64_t(S) * 2 * I;      // [S][H]

  // The CTA's rows, in two lists walked by warp w at positions w, w + 16, ...: gate_up, the
  // shared expert's rows [sg0, sg1) of its 2I then the routed rows [g0, g1) of the K·2I
  // (slot-major: h13's order); down, the rows [d0, d1) of the S·H in y's order (slot-major, the
  // shared expert's slot last), so that a CTA's down rows use one or two slots of act (perf-log,
  // branch moefuse3: barrier 2 to the last CTA's down 11.0 us, 12.8-13.1 with every CTA's share
  // of the shared expert's down rows too).
  int g0, g1, d0, d1, sg0 = 0, sg1 = 0;
  fused_share(K * 2 * I, c, G, g0, g1);
  fused_share(S * H, c, G, d0, d1);
  if (has_shared) fused_share(2 * I, c, G, sg0, sg1);
  const int nsg = sg1 - sg0;

  // A: router rows of experts c·2 + ew (+ 2G, ...; registers for the first only).
  constexpr int kEw = kFusedWarps / kRouteWarpsPerExpert;
  const int ew = warp / kRouteWarpsPerExpert, wk = warp % kRouteWarpsPerExpert, n4 = H / 4;
  const int k4_0 = wk * 32 + lane;
  const float4* nw4 = reinterpret_cast<const float4*>(p.norm_weight);
  auto router_piece = [&](int e, int k4) {
    const float4 w = __ldg(reinterpret_cast<const float4*>(p.router + int64_t(e) * H) + k4);
    const float4 n = __ldg(nw4 + k4);
    return make_float4(w.x * n.x, w.y * n.y, w.z * n.z, w.w * n.w);
  };
  const int e_first = c * kEw + ew;
  fused_stamp(p.stamps, 0, false);
  float4 wreg[kRouteRegK4];
#pragma unroll
  for (int j = 0; j < kRouteRegK4; ++j) {
    const int k4 = k4_0 + j * kRouteK4Step;
    wreg[j] = e_first < E && k4 < n4 ? router_piece(e_first, k4) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  for (int e = tid; e < E; e += kFusedThreads) bias_s[e] = __ldg(r.correction_bias + e);
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
    const int eg = c * kEw + tid;
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

  // C: warp 0 routes the token from the E logits (route_token; every CTA itself: no second
  // round trip); once its logits loads have landed, the other warps request their first gate_up
  // row where it is the shared expert's (needs no routing).
  constexpr int PG = kFusedPiecesGateUp;
  const int pieces_g = H / 8;
  const int ngw = nsg + g1 - g0 > warp ? (nsg + g1 - g0 - warp + kFusedWarps - 1) / kFusedWarps : 0;
  auto g_row = [&](int i, int& h) -> const bf16* {  // the warp's i-th row, and its h13 index
    const int j = warp + kFusedWarps * i;
    if (j < nsg) {
      h = K * 2 * I + sg0 + j;
      return p.w13 + (int64_t(E) * 2 * I + sg0 + j) * H;
    }
    const int q = g0 + j - nsg, slot = q / (2 * I), e = ids[slot];
    h = q;
    return e >= 0 ? p.w13 + (int64_t(e) * 2 * I + (q - slot * 2 * I)) * H : nullptr;
  };
  uint4 gbuf[PG];
  const bf16* grow = nullptr;
  int gh = 0;
  if (warp == 0) {
    MoeRouteParams rr = r;
    rr.num_tokens = 1;
    rr.expert_ids = ids;
    rr.weights = wts;
    const RouteLaneKeys keys = route_scores(rr, 0, lane, bias_s, sig_s);
    fused_stamp(p.stamps, 12, false);
    routing_loads_done_arrive();
    if (E <= 32 * kRouteLaneKeys && K <= kRouteLaneKeys)
      route_choose_merge(rr, 0, lane, sig_s, keys);
    else
      route_choose(rr, 0, lane, bias_s, sig_s, keys);
    fused_stamp(p.stamps, 13, false);
  } else {
    routing_loads_done_wait();
    if (warp < nsg) {
      grow = g_row(0, gh);
      load_row(gbuf, grow, pieces_g, lane);
    }
  }
  __syncthreads();
  if (c == 0 && tid < S) {
    r.expert_ids[tid] = ids[tid];
    r.weights[tid] = wts[tid];
  }
  fused_stamp(p.stamps, 4, false);

  // D: gate_up, one row in flight per warp; raw fp32 sums to h13.
  const uint4* xa16 = reinterpret_cast<const uint4*>(xa);
  if ((warp == 0 || warp >= nsg) && ngw > 0) {  // the first row, where C did not request it
    grow = g_row(0, gh);
    load_row(gbuf, grow, pieces_g, lane);
  }
  for (int i = 0; i < ngw; ++i) {
    int nh = 0;
    const bf16* next = i + 1 < ngw ? g_row(i + 1, nh) : nullptr;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < PG; ++j) {
      const int pc = lane + 32 * j;
      if (pc < pieces_g) sum += dot8(gbuf[j], xa16[pc]);
      gbuf[j] = ldg_stream16(next + 8 * pc, next && pc < pieces_g);
    }
    sum = warp_sum(sum);
    if (lane == 0 && grow) __stcg(h13 + gh, sum);
    grow = next;
    gh = nh;
  }
  fused_stamp(p.stamps, 5, false);
  fused_stamp(p.stamps, 10, true);
  grid_arrive(p.barrier);

  // F's rows: known since C, so the first RD stream through barrier 2 and E.
  constexpr int PD = kFusedPiecesDown, RD = kFusedRowsDown;
  const int pieces_d = I / 8;
  const int ndw = d1 - d0 > warp ? (d1 - d0 - warp + kFusedWarps - 1) / kFusedWarps : 0;
  auto d_slot_col = [&](int i, int& slot, int& n) {  // the warp's i-th row: y[slot][n]
    const int v = d0 + warp + kFusedWarps * i;
    slot = v / H;
    n = v - slot * H;
  };
  auto d_row = [&](int i) -> const bf16* {
    int slot, n;
    d_slot_col(i, slot, n);
    const int e = ids[slot];
    return e >= 0 ? p.w2 + (int64_t(e) * H + n) * I : nullptr;
  };
  uint4 dbuf[RD][PD];
  const bf16* drow[RD];
#pragma unroll
  for (int q = 0; q < RD; ++q) {
    drow[q] = q < ndw ? d_row(q) : nullptr;
    load_row(dbuf[q], drow[q], pieces_d, lane);
  }
  grid_wait(p.barrier, 2 * G);
  fused_stamp(p.stamps, 6, false);

  // E: act of the slots this CTA's down rows use, kActBatch elements per thread loaded at once:
  // one L2 round trip, not one per element.
  constexpr int kActBatch = 4;
  const int sa0 = d0 / H, nact = d1 > d0 ? (d1 - 1) / H - sa0 + 1 : 0;
  for (int i0 = tid; i0 < nact * I; i0 += kActBatch * kFusedThreads) {
    float g[kActBatch], u[kActBatch];
    int at[kActBatch];
#pragma unroll
    for (int q = 0; q < kActBatch; ++q) {
      const int i = i0 + q * kFusedThreads, a = i / I, j = i - a * I, slot = sa0 + a;
      at[q] = i < nact * I && ids[slot] >= 0 ? slot * I + j : -1;
      g[q] = at[q] >= 0 ? __ldcg(h13 + int64_t(slot) * 2 * I + j) : 0.f;
      u[q] = at[q] >= 0 ? __ldcg(h13 + int64_t(slot) * 2 * I + I + j) : 0.f;
    }
#pragma unroll
    for (int q = 0; q < kActBatch; ++q)
      if (at[q] >= 0) act[at[q]] = __float2bfloat16(g[q] / (1.f + __expf(-g[q])) * u[q]);
  }
  __syncthreads();

  // F: down, RD rows in flight per warp; y[slot][n] to scratch.
  const uint4* act16 = reinterpret_cast<const uint4*>(act);
  for (int i0 = 0; i0 < ndw; i0 += RD) {
#pragma unroll
    for (int q = 0; q < RD; ++q) {
      const int i = i0 + q;
      const bf16* next = i + RD < ndw ? d_row(i + RD) : nullptr;
      int slot = 0, n = 0;
      if (i < ndw) d_slot_col(i, slot, n);
      const uint4* arow = act16 + int64_t(slot) * pieces_d;
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
  const bool last = fused_done(p.barrier, G);
  fused_stamp(p.stamps, 14, false);
  if (!last) {
    fused_stamp(p.stamps, 15, true);
    return;
  }
  fused_stamp(p.stamps, 8, true);
  // G, the last CTA: the whole row, x += Σ_k w_k y_k in slot order (the un-permute's order); a
  // thread's two float4 columns (q4, q4 + 512: H <= 4096 with the launcher's limit, so one pass)
  // with kTailSlots slots each and their next-norm weights loaded at once.
  constexpr int kTailSlots = 9;
  const float4* y4 = reinterpret_cast<const float4*>(y);
  float4* x4o = reinterpret_cast<float4*>(p.x);
  const float4 zero4 = make_float4(0.f, 0.f, 0.f, 0.f);
  float sq = 0.f;
  float4 v[2], nw[2];
  for (int qa = tid; qa < n4; qa += 2 * kFusedThreads) {
    int q4[2] = {qa, qa + kFusedThreads};
    float4 sum[2] = {zero4, zero4};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float* nn = p.next_norm + 4 * q4[h];
      nw[h] = p.next_norm && q4[h] < n4 ? make_float4(__ldg(nn), __ldg(nn + 1), __ldg(nn + 2), __ldg(nn + 3)) : zero4;
    }
    for (int s0 = 0; s0 < S; s0 += kTailSlots) {
      float4 ys[2][kTailSlots];
#pragma unroll
      for (int q = 0; q < kTailSlots; ++q)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          ys[h][q] = s0 + q < S && q4[h] < n4 && ids[s0 + q] >= 0 ? __ldcg(y4 + int64_t(s0 + q) * n4 + q4[h]) : zero4;
#pragma unroll
      for (int q = 0; q < kTailSlots; ++q)
        if (s0 + q < S && ids[s0 + q] >= 0) {
          const float w = wts[s0 + q];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            sum[h].x += w * ys[h][q].x;
            sum[h].y += w * ys[h][q].y;
            sum[h].z += w * ys[h][q].z;
            sum[h].w += w * ys[h][q].w;
          }
        }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h)
      if (q4[h] < n4) {
        const float4 xo = p.accumulate ? xs4[q4[h]] : zero4;
        v[h] = make_float4(xo.x + sum[h].x, xo.y + sum[h].y, xo.z + sum[h].z, xo.w + sum[h].w);
        x4o[q4[h]] = v[h];
        xs4[q4[h]] = v[h];
        sq += v[h].x * v[h].x + v[h].y * v[h].y + v[h].z * v[h].z + v[h].w * v[h].w;
      }
  }
  fused_stamp(p.stamps, 9, true);
  if (p.next_norm) {
    sq = warp_sum(sq);
    if (lane == 0) red[warp] = sq;
    __syncthreads();
    if (tid == 0) {
      float t = 0.f;
      for (int w = 0; w < kFusedWarps; ++w) t += red[w];
      inv_rms_s = rsqrtf(t / float(H) + p.eps);
    }
    __syncthreads();
    const float inv = inv_rms_s;
    if (n4 <= 2 * kFusedThreads) {  // the row and weights still in registers (always, see G)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int q4 = tid + h * kFusedThreads;
        if (q4 < n4) {
          bf16* o = p.next_normed + 4 * q4;
          o[0] = __float2bfloat16(v[h].x * inv * nw[h].x);
          o[1] = __float2bfloat16(v[h].y * inv * nw[h].y);
          o[2] = __float2bfloat16(v[h].z * inv * nw[h].z);
          o[3] = __float2bfloat16(v[h].w * inv * nw[h].w);
        }
      }
    } else {
      for (int n = tid; n < H; n += kFusedThreads)
        p.next_normed[n] = __float2bfloat16(xs[n] * inv * p.next_norm[n]);
    }
  }
  fused_stamp(p.stamps, 15, true);
}

}  // namespace kimi::cuda::moe
