// The MoE block of a one-token decode step in one persistent launch (contract in moe.h:
// MoeDecodeFusedParams).
//
// Why: at batch 1 the block was four launches (routing with the norm, gate_up, down, un-permute
// with the next norm) whose ramps, tails and hand-offs cost about as much as the ~31 us of expert
// weights they stream (docs/perf-log.md, session 7: ~63 us per layer). Here one grid of one
// 512-thread CTA per multiprocessor runs the phases back to back, meeting at grid-wide barriers:
//   A  before the PDL wait: this CTA's router rows (× the norm weight) into registers, 8 warps
//      per expert splitting k as the routing kernel does (the same sums in the same order).
//   B  x → shared memory, 1/rms, the CTA's logits → route.logits.                  barrier 1
//   C  every CTA routes the token itself from the E logits (route_tokens_cta): no permutation
//      and no second round trip; CTA 0 writes the ids and weights. Each lane keeps its pieces of
//      the experts' input bf16(a) in shared memory.
//   D  gate_up: units (slot, 8 columns) of 8 gate + 8 up weight rows, one row per warp; a CTA
//      takes a contiguous run of the S·ceil(I/8) units (S = K + shared slots); raw fp32 dot
//      products to scratch h13[slot][2I].                                          barrier 2
//   E  act = bf16(SiLU(g)·u) of the slots this CTA's down units touch, in shared memory.
//   F  down: units (slot, 32 columns), two rows per warp; y[slot][n] to scratch.    barrier 3
//   G  the CTA's column slice: x += Σ_k w_k y_k (slot order, as the un-permute), and its sum of
//      squares to scratch.                                                         barrier 4
//   H  (next_norm only) 1/rms from the CTAs' partial sums in CTA order; the slice of next_normed.
// Streaming: a warp walks its rows with every lane holding PR 16-byte weight pieces in flight
// (piece j of a row is k 8·(lane + 32j)..+7: each load instruction reads 512 contiguous bytes);
// piece j of the next row is requested as soon as piece j of this one is used.
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

namespace kimi::cuda::moe {

constexpr int kFusedThreads = 512, kFusedWarps = kFusedThreads / 32;
constexpr int kFusedRouteWarps = 8;  // warps per expert for the logits (as the routing kernel)
constexpr int kFusedRouteRegK4 = 4;  // float4 router pieces per thread in registers
// 16-byte pieces per lane per row: gate_up rows of hidden, down rows of inter.
constexpr int kFusedPiecesGateUp = kMoeDecodeFusedMaxHidden / 256;
constexpr int kFusedPiecesDown = kMoeDecodeFusedMaxInter / 256;
constexpr int kFusedDownRows = 2;  // rows per warp per down unit (16 KB in flight per warp)
static_assert(kMoeDecodeFusedMaxHidden % 256 == 0 && kMoeDecodeFusedMaxInter % 256 == 0);
static_assert(kFusedRouteRegK4 * 32 * kFusedRouteWarps * 4 >= kMoeDecodeFusedMaxHidden);

// Grid-wide barrier over G resident CTAs; bar[0] counts arrivals, bar[1] is the generation. The
// last arrival resets the count before it publishes the next generation, so the pair is ready for
// the next barrier and the next launch.
__device__ __forceinline__ unsigned ld_acquire_gpu(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void grid_barrier(unsigned* bar, unsigned G) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned gen = ld_acquire_gpu(bar + 1);  // cannot move on before this CTA arrives
    __threadfence();                               // the CTA's writes before the arrival
    if (atomicAdd(bar, 1u) == G - 1) {
      atomicExch(bar, 0u);
      __threadfence();
      atomicAdd(bar + 1, 1u);
    } else {
      while (ld_acquire_gpu(bar + 1) == gen) __nanosleep(20);
    }
    __threadfence();
  }
  __syncthreads();
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
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
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
  __shared__ float part[kFusedWarps / kFusedRouteWarps][kFusedRouteWarps];
  __shared__ float red[kFusedWarps];
  __shared__ float inv_rms_s;
  __shared__ int chosen_e[32], ids[33];
  __shared__ float chosen_s[32], wts[33];
  float* h13 = p.scratch;                   // [S][2I]
  float* y = h13 + int64_t(S) * 2 * I;      // [S][H]
  float* ss_part = y + int64_t(S) * H;      // [G]

  // A: router rows of experts blockIdx.x·2 + ew (+ 2G, ...; registers for the first only).
  constexpr int kEw = kFusedWarps / kFusedRouteWarps;
  const int ew = warp / kFusedRouteWarps, wk = warp % kFusedRouteWarps, n4 = H / 4;
  const int k4_0 = wk * 32 + lane;
  constexpr int kK4Step = 32 * kFusedRouteWarps;
  const float4* nw4 = reinterpret_cast<const float4*>(p.norm_weight);
  auto router_piece = [&](int e, int k4) {
    const float4 w = __ldg(reinterpret_cast<const float4*>(p.router + int64_t(e) * H) + k4);
    const float4 n = __ldg(nw4 + k4);
    return make_float4(w.x * n.x, w.y * n.y, w.z * n.z, w.w * n.w);
  };
  const int e_first = blockIdx.x * kEw + ew;
  float4 wreg[kFusedRouteRegK4];
#pragma unroll
  for (int j = 0; j < kFusedRouteRegK4; ++j) {
    const int k4 = k4_0 + j * kK4Step;
    wreg[j] = e_first < E && k4 < n4 ? router_piece(e_first, k4) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  pdl_launch_dependents();  // the next kernel starts only once every CTA here has (see above)
  pdl_wait();

  // B: the row, its sum of squares (fixed order), the logits.
  float ss = 0.f;
  for (int k = tid; k < H; k += kFusedThreads) {
    const float v = __ldcg(p.x + k);
    xs[k] = v;
    ss += v * v;
  }
  ss = warp_sum(ss);
  if (lane == 0) red[warp] = ss;
  __syncthreads();
  if (tid == 0) {
    float t = 0.f;
    for (int w = 0; w < kFusedWarps; ++w) t += red[w];
    inv_rms_s = rsqrtf(t / float(H) + p.eps);
  }
  __syncthreads();
  const float inv_rms = inv_rms_s;
  const float4* xs4 = reinterpret_cast<const float4*>(xs);
  for (int e = e_first, round = 0; e - ew < E; e += G * kEw, ++round) {  // warp-uniform bounds
    float acc = 0.f;
    if (e < E) {
      if (round == 0) {
#pragma unroll
        for (int j = 0; j < kFusedRouteRegK4; ++j) {
          const int k4 = k4_0 + j * kK4Step;
          if (k4 < n4) {
            const float4 xv = xs4[k4];
            acc += wreg[j].x * xv.x + wreg[j].y * xv.y + wreg[j].z * xv.z + wreg[j].w * xv.w;
          }
        }
      } else {
        for (int k4 = k4_0; k4 < n4; k4 += kK4Step) {
          const float4 wv = router_piece(e, k4), xv = xs4[k4];
          acc += wv.x * xv.x + wv.y * xv.y + wv.z * xv.z + wv.w * xv.w;
        }
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) part[ew][wk] = acc;
    __syncthreads();
    if (tid < kEw) {
      const int eg = e - ew + tid;
      if (eg < E) {
        float sum = 0.f;
        for (int j = 0; j < kFusedRouteWarps; ++j) sum += part[tid][j];
        const_cast<float*>(r.logits)[eg] = sum * inv_rms;
      }
    }
    __syncthreads();
  }
  grid_barrier(p.barrier, G);

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
  // The experts' input: bf16(x · 1/rms · norm weight), as the routing kernel writes it.
  constexpr int PG = kFusedPiecesGateUp;
  const int pieces_g = H / 8;
  for (int k = tid; k < H; k += kFusedThreads) xa[k] = __float2bfloat16(xs[k] * inv_rms * p.norm_weight[k]);
  __syncthreads();
  const uint4* xa16 = reinterpret_cast<const uint4*>(xa);

  // D: gate_up.
  {
    const int CG = (I + 7) / 8, U = S * CG;
    const int u0 = int(int64_t(blockIdx.x) * U / G), u1 = int(int64_t(blockIdx.x + 1) * U / G);
    const bool up = warp >= 8;
    auto row_of = [&](int u, int& out) -> const bf16* {  // warp's weight row of unit u
      const int s = u / CG, n = (u - s * CG) * 8 + (warp & 7), e = ids[s];
      out = s * 2 * I + (up ? I : 0) + n;
      return e >= 0 && n < I ? p.w13 + (int64_t(e) * 2 * I + (up ? I : 0) + n) * H : nullptr;
    };
    uint4 buf[PG];
    int out = 0;
    const bf16* cur = u0 < u1 ? row_of(u0, out) : nullptr;
#pragma unroll
    for (int j = 0; j < PG; ++j) {
      const int pc = lane + 32 * j;
      buf[j] = ldg_stream16(cur + 8 * pc, cur && pc < pieces_g);
    }
    for (int u = u0; u < u1; ++u) {
      int next_out = 0;
      const bf16* next = u + 1 < u1 ? row_of(u + 1, next_out) : nullptr;
      float acc = 0.f;
#pragma unroll
      for (int j = 0; j < PG; ++j) {
        const int pc = lane + 32 * j;
        if (pc < pieces_g) acc += dot8(buf[j], xa16[pc]);
        buf[j] = ldg_stream16(next + 8 * pc, next && pc < pieces_g);
      }
      acc = warp_sum(acc);
      if (lane == 0 && cur) __stcg(h13 + out, acc);
      cur = next;
      out = next_out;
    }
  }
  grid_barrier(p.barrier, G);

  // E: act of the slots this CTA's down units touch.
  const int DG = (H + 16 * kFusedDownRows - 1) / (16 * kFusedDownRows), UD = S * DG;
  const int v0 = int(int64_t(blockIdx.x) * UD / G), v1 = int(int64_t(blockIdx.x + 1) * UD / G);
  if (v0 < v1) {
    const int s0 = v0 / DG, s1 = (v1 - 1) / DG;
    for (int i = tid; i < (s1 - s0 + 1) * I; i += kFusedThreads) {
      const int s = s0 + i / I, j = i % I;
      if (ids[s] < 0) continue;
      const float g = __ldcg(h13 + int64_t(s) * 2 * I + j), u = __ldcg(h13 + int64_t(s) * 2 * I + I + j);
      act[int64_t(s) * I + j] = __float2bfloat16(g / (1.f + __expf(-g)) * u);
    }
  }
  __syncthreads();

  // F: down, two rows per warp: columns n0 + warp and n0 + 16 + warp.
  {
    constexpr int PD = kFusedPiecesDown, RD = kFusedDownRows;
    const int pieces_d = I / 8;
    auto row_of = [&](int v, int rr, int& s_out, int& n_out) -> const bf16* {
      const int s = v / DG, n = (v - s * DG) * 16 * RD + 16 * rr + warp, e = ids[s];
      s_out = s;
      n_out = n;
      return e >= 0 && n < H ? p.w2 + (int64_t(e) * H + n) * I : nullptr;
    };
    uint4 buf[RD][PD];
    const bf16* cur[RD];
    int cs[RD], cn[RD];
#pragma unroll
    for (int rr = 0; rr < RD; ++rr) {
      cur[rr] = v0 < v1 ? row_of(v0, rr, cs[rr], cn[rr]) : nullptr;
#pragma unroll
      for (int j = 0; j < PD; ++j) {
        const int pc = lane + 32 * j;
        buf[rr][j] = ldg_stream16(cur[rr] + 8 * pc, cur[rr] && pc < pieces_d);
      }
    }
    for (int v = v0; v < v1; ++v) {
      const bf16* next[RD];
      int ns[RD], nn[RD];
      float acc[RD];
#pragma unroll
      for (int rr = 0; rr < RD; ++rr) {
        next[rr] = v + 1 < v1 ? row_of(v + 1, rr, ns[rr], nn[rr]) : nullptr;
        acc[rr] = 0.f;
        const bf16* arow = act + int64_t(cs[rr]) * I;
#pragma unroll
        for (int j = 0; j < PD; ++j) {
          const int pc = lane + 32 * j;
          if (pc < pieces_d) acc[rr] += dot8(buf[rr][j], *reinterpret_cast<const uint4*>(arow + 8 * pc));
          buf[rr][j] = ldg_stream16(next[rr] + 8 * pc, next[rr] && pc < pieces_d);
        }
      }
#pragma unroll
      for (int rr = 0; rr < RD; ++rr) {
        acc[rr] = warp_sum(acc[rr]);
        if (lane == 0 && cur[rr]) __stcg(y + int64_t(cs[rr]) * H + cn[rr], acc[rr]);
        cur[rr] = next[rr];
        cs[rr] = ns[rr];
        cn[rr] = nn[rr];
      }
    }
  }
  grid_barrier(p.barrier, G);

  // G: this CTA's columns of the residual, as the un-permute adds them.
  const int cols = (H + G - 1) / G, c0 = blockIdx.x * cols, c1 = min(c0 + cols, H);
  float sq = 0.f;
  for (int n = c0 + tid; n < c1; n += kFusedThreads) {
    float acc = 0.f;
    for (int s = 0; s < S; ++s)
      if (ids[s] >= 0) acc += wts[s] * __ldcg(y + int64_t(s) * H + n);
    const float v = xs[n] + acc;
    p.x[n] = v;
    xs[n] = v;
    sq += v * v;
  }
  if (!p.next_norm) return;
  sq = warp_sum(sq);
  if (lane == 0) red[warp] = sq;
  __syncthreads();
  if (tid == 0) {
    float t = 0.f;
    for (int w = 0; w < kFusedWarps; ++w) t += red[w];
    __stcg(ss_part + blockIdx.x, t);
  }
  grid_barrier(p.barrier, G);

  // H: the next block's input.
  if (c0 >= c1) return;
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

}  // namespace kimi::cuda::moe
