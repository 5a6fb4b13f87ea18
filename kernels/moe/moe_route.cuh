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
// route_choose, or route_choose_merge where the lists hold every key and K <= kRouteLaneKeys
// (route_token does both; the fused decode kernel lets other warps go on between them). sig: E floats of shared memory for the warp; bias: the E correction biases (global or
// shared memory). The logits are read through L2 (__ldcg): the fused decode kernel reads logits
// that other CTAs of the same launch wrote.
// Each score becomes an order-preserving unsigned key (0 for NaN: never chosen; no score is -0,
// since the sigmoid is never -0, so equal keys are equal scores). Lane l owns the experts
// e ≡ l (mod 32) and keeps its best kRouteLaneKeys of them in registers, sorted (higher key
// first, the lower index on ties): a round is one redux.sync max over the lanes' heads (a second
// one for the lowest index, only on a tie) and a register shift in the winning lane. With
// E > 32·kRouteLaneKeys a lane whose list runs out while it has keys left refills it from the
// sigmoids (the same sums, so the same keys) below its last choice. Same choice, order and
// weight arithmetic as the CPU's.
constexpr int kRouteLaneKeys = 8;  // E <= 256: every key of a lane
struct RouteLaneKeys {
  unsigned key[kRouteLaneKeys];  // descending, 0: empty
  int e[kRouteLaneKeys];
  bool more;  // keys left out of the list (E > 32·kRouteLaneKeys)
};
__device__ __forceinline__ unsigned route_key(float v) {
  const unsigned u = __float_as_uint(v);
  return v != v ? 0u : (u >> 31 ? ~u : u | 0x80000000u);
}
// Inserts (k, e) after the keys >= k: the lane inserts in increasing e, so the lower index of
// equal keys stays first.
__device__ __forceinline__ void route_insert(RouteLaneKeys& L, unsigned k, int e) {
  constexpr int N = kRouteLaneKeys;
  L.more |= k != 0 && L.key[N - 1] != 0;  // a full list drops its last key or this one
  bool above[N];
#pragma unroll
  for (int i = 0; i < N; ++i) above[i] = k > L.key[i];
#pragma unroll
  for (int i = N - 1; i > 0; --i) {
    if (above[i - 1]) {
      L.key[i] = L.key[i - 1];
      L.e[i] = L.e[i - 1];
    } else if (above[i]) {
      L.key[i] = k;
      L.e[i] = e;
    }
  }
  if (above[0]) {
    L.key[0] = k;
    L.e[0] = e;
  }
}
constexpr int kRouteLoadBatch = 8;  // logits per lane loaded at once (E <= 256: all of them)
__device__ __forceinline__ RouteLaneKeys route_scores(const MoeRouteParams& p, int t, int lane,
                                                      const float* bias, float* sig) {
  const int E = p.num_experts;
  const float* lg = p.logits + int64_t(t) * E;
  RouteLaneKeys L;
#pragma unroll
  for (int i = 0; i < kRouteLaneKeys; ++i) {
    L.key[i] = 0;
    L.e[i] = -1;
  }
  L.more = false;
  for (int e0 = lane; e0 < E; e0 += 32 * kRouteLoadBatch) {
    float l[kRouteLoadBatch];
#pragma unroll
    for (int q = 0; q < kRouteLoadBatch; ++q) l[q] = e0 + 32 * q < E ? __ldcg(lg + e0 + 32 * q) : 0.f;
#pragma unroll
    for (int q = 0; q < kRouteLoadBatch; ++q) {
      const int e = e0 + 32 * q;
      if (e >= E) break;
      const float s = 1.f / (1.f + expf(-l[q]));
      sig[e] = s;
      route_insert(L, route_key(s + bias[e]), e);
    }
  }
  return L;
}
// The weights of the choice (lane k < K holds choice k in my_e, -1 for none) and its outputs.
__device__ __forceinline__ void route_write(const MoeRouteParams& p, int t, int lane, const float* sig, int my_e) {
  const int K = p.top_k, stride = K + (p.shared_expert >= 0);
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
__device__ __forceinline__ void route_choose(const MoeRouteParams& p, int t, int lane, const float* bias,
                                             const float* sig, RouteLaneKeys L) {
  constexpr int N = kRouteLaneKeys;
  const int E = p.num_experts, K = p.top_k;
  int my_e = -1;  // lane k: the k-th choice (-1: none, only NaN scores were left)
  for (int k = 0; k < K; ++k) {
    const unsigned m = __reduce_max_sync(0xffffffffu, L.key[0]);
    if (m == 0) break;
    const bool top = L.key[0] == m;
    const unsigned tied = __ballot_sync(0xffffffffu, top);
    int e;
    bool win = top;
    if (tied & (tied - 1)) {  // equal scores in several lanes: the lower index
      e = int(__reduce_min_sync(0xffffffffu, top ? unsigned(L.e[0]) : ~0u));
      win = top && L.e[0] == e;
    } else {
      e = __shfl_sync(0xffffffffu, L.e[0], __ffs(tied) - 1);
    }
    if (lane == k) my_e = e;
    if (win) {  // the winner: its next best
      const unsigned kt = L.key[0];
#pragma unroll
      for (int i = 0; i + 1 < N; ++i) {
        L.key[i] = L.key[i + 1];
        L.e[i] = L.e[i + 1];
      }
      L.key[N - 1] = 0;
      if (L.key[0] == 0 && L.more) {  // refill: the best keys below (kt, e)
        L.more = false;
        for (int j = lane; j < E; j += 32) {
          const unsigned kj = route_key(sig[j] + bias[j]);
          if (kj < kt || (kj == kt && j > e)) route_insert(L, kj, j);
        }
      }
    }
  }
  route_write(p, t, lane, sig, my_e);
}
// route_choose's choice without its K serial rounds, for lists that hold every key of their lane
// (E <= 32·kRouteLaneKeys) and K <= kRouteLaneKeys: each entry as one 64-bit word (key, then the
// complemented index: unique, higher is better, the lower index on equal keys; an empty entry is
// 0, a NaN score's key 0 sorts below every finite one), and five butterfly rounds (partner lane
// ^1, ^2, ^4, ^8, ^16) in which a lane keeps the best kRouteLaneKeys of its list and its partner's
// (the half-cleaner of the two descending lists, then a bitonic merge). After the fifth every lane
// holds the warp's best kRouteLaneKeys in order: route_choose's choice, order and weights.
__device__ __forceinline__ void route_choose_merge(const MoeRouteParams& p, int t, int lane, const float* sig,
                                                   const RouteLaneKeys& L) {
  constexpr int N = kRouteLaneKeys;
  static_assert((N & (N - 1)) == 0, "a bitonic merge of a power of two");
  unsigned long long c[N];
#pragma unroll
  for (int i = 0; i < N; ++i) c[i] = (static_cast<unsigned long long>(L.key[i]) << 32) | unsigned(~L.e[i]);
#pragma unroll
  for (int m = 1; m < 32; m *= 2) {
    unsigned long long o[N];
#pragma unroll
    for (int i = 0; i < N; ++i) o[i] = __shfl_xor_sync(0xffffffffu, c[i], m);
#pragma unroll
    for (int i = 0; i < N; ++i) c[i] = max(c[i], o[N - 1 - i]);  // the best N, a bitonic sequence
#pragma unroll
    for (int k = N / 2; k > 0; k /= 2)
#pragma unroll
      for (int i = 0; i < N; ++i)
        if ((i & k) == 0) {
          const unsigned long long hi = max(c[i], c[i + k]), lo = min(c[i], c[i + k]);
          c[i] = hi;
          c[i + k] = lo;
        }
  }
  int my_e = -1;  // lane k: the k-th choice (-1: none, only NaN scores were left)
#pragma unroll
  for (int i = 0; i < N; ++i)
    if (lane == i && (c[i] >> 32) != 0) my_e = int(~unsigned(c[i]));
  route_write(p, t, lane, sig, my_e);
}
__device__ __forceinline__ void route_token(const MoeRouteParams& p, int t, int lane, const float* bias,
                                            float* sig) {
  const RouteLaneKeys keys = route_scores(p, t, lane, bias, sig);
  if (p.num_experts <= 32 * kRouteLaneKeys && p.top_k <= kRouteLaneKeys)
    route_choose_merge(p, t, lane, sig, keys);
  else
    route_choose(p, t, lane, bias, sig, keys);
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
