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

// One token's routing by one warp (lane = threadIdx.x % 32); sel: E floats of shared memory
// for the warp. The logits are read through L2 (__ldcg): the fused decode kernel reads logits
// that other CTAs of the same launch wrote.
__device__ __forceinline__ void route_token(const MoeRouteParams& p, int t, int lane, float* sel) {
  const int E = p.num_experts, K = p.top_k, stride = K + (p.shared_expert >= 0);
  const float* lg = p.logits + int64_t(t) * E;
  for (int e = lane; e < E; e += 32) sel[e] = 1.f / (1.f + expf(-__ldcg(lg + e))) + p.correction_bias[e];
  __syncwarp();
  float my_w = 0.f, wsum = 0.f;
  for (int k = 0; k < K; ++k) {
    float best = -INFINITY;
    int bi = INT_MAX;
    for (int e = lane; e < E; e += 32) {
      const float v = sel[e];
      if (v > best || (v == best && e < bi)) {
        best = v;
        bi = e;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ob > best || (ob == best && oi < bi)) {
        best = ob;
        bi = oi;
      }
    }
    if (bi == INT_MAX) bi = -1;  // NaN scores: no expert (the permutation skips it)
    const float s = bi >= 0 ? 1.f / (1.f + expf(-__ldcg(lg + bi))) : 0.f;
    if (lane == 0) {
      const int local = bi - p.expert_first;
      const bool here = bi >= 0 && (p.local_experts == 0 || (local >= 0 && local < p.local_experts));
      p.expert_ids[int64_t(t) * stride + k] = here ? local : -1;
      if (bi >= 0) sel[bi] = -INFINITY;
    }
    __syncwarp();
    if (lane == k) my_w = s;
    wsum += s;
  }
  if (lane < K)
    p.weights[int64_t(t) * stride + lane] = my_w * (p.renormalize ? p.scaling / wsum : p.scaling);
  if (lane == 0 && p.shared_expert >= 0) {
    p.expert_ids[int64_t(t) * stride + K] = p.shared_expert;
    p.weights[int64_t(t) * stride + K] = 1.f;
  }
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
