// Routing device functions (contracts in moe.h): one token by a warp (route_token), or the
// tokens of a decode step by a whole CTA (route_tokens_cta). Shared by the routing kernels
// (moe.cuh) and the fused decode MoE kernel (moe_decode.cuh).
#pragma once

#include <climits>

#include "moe/moe.h"

namespace kimi::cuda::moe {

// The router logits' k split, shared by the decode routing kernel and the fused MoE block (the
// same sums in the same order): 8 warps per expert, thread (warp w, lane l) taking the float4
// pieces k4 = 32w + l + j·kRouteK4Step, the first kRouteRegK4 of them in registers.
constexpr int kRouteWarpsPerExpert = 8;
constexpr int kRouteRegK4 = 4;  // H <= 4096: all of them
constexpr int kRouteK4Step = 32 * kRouteWarpsPerExpert;

// One token's routing by one warp (lane = threadIdx.x % 32), in two steps: route_scores, then
// route_choose (route_token does both; the fused decode kernel lets other warps go on between
// them). key, sig: E words each of shared memory for the warp; bias: the E correction biases
// (global or shared memory). The logits are read through L2 (__ldcg): the fused decode kernel
// reads logits that other CTAs of the same launch wrote.
// Each score becomes an order-preserving unsigned key (0 for NaN: never chosen; no score is -0,
// since the sigmoid is never -0, so equal keys are equal scores) and each lane keeps the best of
// its experts e ≡ lane (mod 32), the lower index on ties. A round takes the warp's maximum by
// redux.sync (the lowest index among equal maxima: a second reduction, only on a tie); only the
// winning lane rescans its experts. Same choice, order and weight arithmetic as the CPU's.
struct RouteLaneBest {
  unsigned key = 0;  // 0: none left
  int e = -1;
};
constexpr int kRouteLoadBatch = 8;  // logits per lane loaded at once (E <= 256: all of them)
__device__ __forceinline__ RouteLaneBest route_scores(const MoeRouteParams& p, int t, int lane,
                                                      const float* bias, unsigned* key, float* sig) {
  const int E = p.num_experts;
  const float* lg = p.logits + int64_t(t) * E;
  RouteLaneBest b;
  for (int e0 = lane; e0 < E; e0 += 32 * kRouteLoadBatch) {
    float l[kRouteLoadBatch];
#pragma unroll
    for (int q = 0; q < kRouteLoadBatch; ++q) l[q] = e0 + 32 * q < E ? __ldcg(lg + e0 + 32 * q) : 0.f;
#pragma unroll
    for (int q = 0; q < kRouteLoadBatch; ++q) {
      const int e = e0 + 32 * q;
      if (e >= E) break;
      const float s = 1.f / (1.f + expf(-l[q]));
      const float v = s + bias[e];
      const unsigned u = __float_as_uint(v);
      const unsigned k = v != v ? 0u : (u >> 31 ? ~u : u | 0x80000000u);
      sig[e] = s;
      key[e] = k;
      if (k > b.key) {
        b.key = k;
        b.e = e;
      }
    }
  }
  return b;
}
__device__ __forceinline__ void route_choose(const MoeRouteParams& p, int t, int lane, unsigned* key,
                                             const float* sig, RouteLaneBest b) {
  const int E = p.num_experts, K = p.top_k, stride = K + (p.shared_expert >= 0);
  int my_e = -1;  // lane k: the k-th choice (-1: none, only NaN scores were left)
  for (int k = 0; k < K; ++k) {
    const unsigned m = __reduce_max_sync(0xffffffffu, b.key);
    if (m == 0) break;
    const unsigned tied = __ballot_sync(0xffffffffu, b.key == m);
    const int e = __popc(tied) == 1 ? __shfl_sync(0xffffffffu, b.e, __ffs(tied) - 1)
                                    : int(__reduce_min_sync(0xffffffffu, b.key == m ? unsigned(b.e) : ~0u));
    if (lane == k) my_e = e;
    if (b.e == e) {  // the winner: its next best
      key[e] = 0;
      b = RouteLaneBest();
      for (int j = lane; j < E; j += 32) {
        const unsigned kj = key[j];
        if (kj > b.key) {
          b.key = kj;
          b.e = j;
        }
      }
    }
  }
  const float my_s = my_e >= 0 ? sig[my_e] : 0.f;
  float wsum = 0.f;
  for (int k = 0; k < K; ++k) wsum += __shfl_sync(0xffffffffu, my_s, k);  // in choice order
  if (lane < K) {
    const int local = my_e - p.expert_first;
    const bool here = my_e >= 0 && (p.local_experts == 0 || (local >= 0 && local < p.local_experts));
    p.expert_ids[int64_t(t) * stride + lane] = here ? local : -1;
    p.weights[int64_t(t) * stride + lane] = my_s * (p.renormalize ? p.scaling / wsum : p.scaling);
  }
  if (lane == 0 && p.shared_expert >= 0) {
    p.expert_ids[int64_t(t) * stride + K] = p.shared_expert;
    p.weights[int64_t(t) * stride + K] = 1.f;
  }
}
__device__ __forceinline__ void route_token(const MoeRouteParams& p, int t, int lane, const float* bias,
                                            unsigned* key, float* sig) {
  route_choose(p, t, lane, key, sig, route_scores(p, t, lane, bias, key, sig));
}

// Routing of T tokens by a whole CTA (the decode kernel's tail), with route_token's result
// (same order, ties, NaN rule and weight arithmetic) but no serial rounds: every (token, expert)
// scores once, then counts the experts that beat it (higher, or equal with a lower index); the
// K with rank < K are the choice, at their rank. sel, sig: T·E floats of shared memory, ranks:
// T·E ints; chosen: T·K; ids_smem: T·(K + shared) ints, a copy of expert_ids for the
// permutation (after a barrier).
// With E a multiple of 32 the counting is split in kRankParts parts of the row: item (part, t,
// e), the parts in different warps, so that a warp's lanes (consecutive experts of one token and
// part) all read the same score at once (a shared-memory broadcast), four times the warps of one
// item per (token, expert) on a quarter of the chain; the parts' counts meet by shared-memory
// atomic adds (integers: any order gives the same rank).
constexpr int kRankParts = 4;
__device__ __forceinline__ void route_tokens_cta(const MoeRouteParams& p, float* sel, float* sig,
                                                 int* ranks, int* chosen_e, float* chosen_s,
                                                 int* ids_smem) {
  const int T = p.num_tokens, E = p.num_experts, K = p.top_k, stride = K + (p.shared_expert >= 0);
  for (int i = threadIdx.x; i < T * K; i += blockDim.x) {
    chosen_e[i] = -1;  // fewer than K finite scores: the rest stay empty
    chosen_s[i] = 0.f;
  }
  for (int i = threadIdx.x; i < T * E; i += blockDim.x) {
    const float s = 1.f / (1.f + expf(-__ldcg(p.logits + i)));
    sig[i] = s;
    sel[i] = s + p.correction_bias[i % E];
    ranks[i] = 0;
  }
  __syncthreads();
  if (E % 32 == 0) {
    const int TE = T * E, part4 = E / 4 / kRankParts;
    for (int i = threadIdx.x; i < kRankParts * TE; i += blockDim.x) {
      const int q = i / TE, pair = i - q * TE, t = pair / E, e = pair - t * E;
      const float v = sel[pair];
      if (v != v) continue;  // NaN: never chosen
      const float4* row4 = reinterpret_cast<const float4*>(sel + t * E) + q * part4;
      int rank = 0;
#pragma unroll 4
      for (int j = 0; j < part4; ++j) {
        const float4 w = row4[j];
        const int j0 = 4 * (q * part4 + j);
        rank += (w.x > v || (w.x == v && j0 < e)) + (w.y > v || (w.y == v && j0 + 1 < e)) +
                (w.z > v || (w.z == v && j0 + 2 < e)) + (w.w > v || (w.w == v && j0 + 3 < e));
      }
      atomicAdd(ranks + pair, rank);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < TE; i += blockDim.x) {
      const int t = i / E, rank = ranks[i];
      if (sel[i] == sel[i] && rank < K) {
        chosen_e[t * K + rank] = i - t * E;
        chosen_s[t * K + rank] = sig[i];
      }
    }
  } else {
    for (int i = threadIdx.x; i < T * E; i += blockDim.x) {
      const int t = i / E, e = i % E;
      const float v = sel[i];
      if (v != v) continue;  // NaN: never chosen
      const float* row = sel + t * E;
      int rank = 0;  // no early exit: independent (broadcast) shared-memory loads, unrolled
      if (E % 4 == 0) {
        const float4* row4 = reinterpret_cast<const float4*>(row);
#pragma unroll 4
        for (int j = 0; j < E / 4; ++j) {
          const float4 w = row4[j];
          const int j0 = 4 * j;
          rank += (w.x > v || (w.x == v && j0 < e)) + (w.y > v || (w.y == v && j0 + 1 < e)) +
                  (w.z > v || (w.z == v && j0 + 2 < e)) + (w.w > v || (w.w == v && j0 + 3 < e));
        }
      } else {
#pragma unroll 8
        for (int j = 0; j < E; ++j) rank += row[j] > v || (row[j] == v && j < e);
      }
      if (rank < K) {
        chosen_e[t * K + rank] = e;
        chosen_s[t * K + rank] = sig[i];
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < T * K; i += blockDim.x) {
    const int t = i / K, k = i % K;
    float wsum = 0.f;
    for (int j = 0; j < K; ++j) wsum += chosen_s[t * K + j];  // in choice order, as route_token
    const int e = chosen_e[i];
    const int local = e - p.expert_first;
    const bool here = e >= 0 && (p.local_experts == 0 || (local >= 0 && local < p.local_experts));
    p.expert_ids[int64_t(t) * stride + k] = ids_smem[t * stride + k] = here ? local : -1;
    p.weights[int64_t(t) * stride + k] =
        chosen_s[i] * (p.renormalize ? p.scaling / wsum : p.scaling);
    if (k == 0 && p.shared_expert >= 0) {
      p.expert_ids[int64_t(t) * stride + K] = ids_smem[t * stride + K] = p.shared_expert;
      p.weights[int64_t(t) * stride + K] = 1.f;
    }
  }
}

}  // namespace kimi::cuda::moe
