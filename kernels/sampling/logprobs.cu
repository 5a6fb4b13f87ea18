// Token log-probabilities, rank and top-k on the GPU (contract in logprobs.h).
//
// One CTA per request:
//   1. max over the row and whether it holds a NaN or +inf (then lse is NaN, as on the host);
//   2. Σ exp(double(l) - max) in double per thread, reduced in double; lse rounded to fp32;
//   3. lp_i = l_i - lse; every id is ordered by a 64-bit key (order key of lp | ~id), unique,
//      larger = better: the rank counts keys above the token's, and each thread keeps its 20
//      best keys sorted in registers (a compare-exchange chain; most keys fail the first test).
//      Each warp then takes its k best by k rounds of a warp max over the lanes' heads, and the
//      block's k best are found by ranking the warps' candidates (at most 16 · 20) in shared
//      memory.
#include <cfloat>
#include <climits>
#include <cstdint>

#include "common.h"
#include "sampling/logprobs.h"

namespace kimi::cuda {
namespace logprobs {

using u64 = unsigned long long;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kTop = kMaxTopLogprobs;

// Calls f(value, id) for every logit of the row; float4 loads, kBatch in flight per thread, when
// the row is 16-byte aligned (one CTA reads a whole row: the loads in flight set its speed).
constexpr int kBatch = 4;
template <typename F>
__device__ __forceinline__ void for_row(const float* l, int V, F&& f) {
  int done = 0;
  if ((reinterpret_cast<uintptr_t>(l) & 15) == 0) {
    const int nv = V / 4;
    const float4* l4 = reinterpret_cast<const float4*>(l);
    for (int base = 0; base < nv; base += kThreads * kBatch) {
      float4 v[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int i = base + b * kThreads + int(threadIdx.x);
        if (i < nv) v[b] = l4[i];
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int i = base + b * kThreads + int(threadIdx.x);
        if (i < nv) {
          f(v[b].x, 4 * i);
          f(v[b].y, 4 * i + 1);
          f(v[b].z, 4 * i + 2);
          f(v[b].w, 4 * i + 3);
        }
      }
    }
    done = nv * 4;
  }
  for (int i = done + int(threadIdx.x); i < V; i += kThreads) f(l[i], i);
}

// Block-wide reduction (every thread gets the result); scratch: kWarps + 1 slots.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // earlier readers of scratch are done
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < kWarps ? scratch[lane] : identity;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) w = op(w, __shfl_xor_sync(0xffffffffu, w, o));
    if (lane == 0) scratch[kWarps] = w;
  }
  __syncthreads();
  return scratch[kWarps];
}

// The order key of (lp, id): larger lp first, then lower id; never 0 (lp is not NaN here).
__device__ __forceinline__ u64 key_of(float lp, int id) {
  const uint32_t b = __float_as_uint(lp == 0.f ? 0.f : lp);  // -0 ties with +0
  const uint32_t k = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (u64(k) << 32) | u64(0xffffffffu - uint32_t(id));
}
__device__ __forceinline__ int id_of(u64 key) {
  return int(0xffffffffu - uint32_t(key));
}

// Keeps t sorted descending: key replaces the smallest and bubbles up.
__device__ __forceinline__ void insert(u64 (&t)[kTop], u64 key) {
  if (key <= t[kTop - 1]) return;
  t[kTop - 1] = key;
#pragma unroll
  for (int j = kTop - 1; j > 0; --j) {
    const u64 a = t[j - 1], b = t[j];
    t[j - 1] = a > b ? a : b;
    t[j] = a > b ? b : a;
  }
}

struct Shared {
  float fscratch[kWarps + 1];
  double dscratch[kWarps + 1];
  unsigned uscratch[kWarps + 1];
  u64 cand[kWarps * kTop];
};

__global__ void __launch_bounds__(kThreads) logprobs_kernel(const LogprobParams p) {
  __shared__ Shared sm;
  const int tid = threadIdx.x;
  const LogprobRequest q = p.requests[blockIdx.x];
  LogprobRecord* o = p.out + blockIdx.x;
  const int V = p.vocab;
  const int row = q.row - p.row_begin;
  int token = q.token;
  const bool row_ok = row >= 0 && row < p.rows;
  if (token < 0 && row_ok && p.sampled) token = p.sampled[row];
  const int k = q.k < 0 ? 0 : (q.k > kTop ? kTop : q.k);
  const int num_top = k < V ? k : V;
  if (!row_ok || token < 0 || token >= V) {
    if (tid == 0) {
      o->token = -1;
      o->rank = 0;
      o->logprob = __int_as_float(0x7fc00000);
      o->num_top = 0;
    }
    if (tid < kTop) {
      o->top_id[tid] = 0;
      o->top_logprob[tid] = 0.f;
    }
    return;
  }
  const float* l = p.logits + int64_t(row) * p.stride;

  // 1. The maximum; a NaN or +inf makes the host's sum NaN.
  float mx = -INFINITY;
  unsigned bad = 0;
  for_row(l, V, [&](float v, int) {
    mx = fmaxf(mx, v);
    bad |= (v != v) | (v == INFINITY);
  });
  mx = block_reduce(
      mx, [](float a, float b) { return fmaxf(a, b); }, -INFINITY, sm.fscratch);
  bad = block_reduce(
      bad, [](unsigned a, unsigned b) { return a | b; }, 0u, sm.uscratch);

  float lse = __int_as_float(0x7fc00000);
  if (!bad && mx > -INFINITY) {
    // 2. The normaliser, as log_sum_exp: double terms, double sum.
    const double dm = double(mx);
    double s = 0.0;
    for_row(l, V, [&](float v, int) { s += exp(double(v) - dm); });
    s = block_reduce(
        s, [](double a, double b) { return a + b; }, 0.0, sm.dscratch);
    lse = __double2float_rn(dm + log(s));
  }
  const float tok_lp = __fsub_rn(l[token], lse);

  if (lse != lse) {  // no order: rank 1, ids 0..k-1
    if (tid == 0) {
      o->token = token;
      o->rank = 1;
      o->logprob = tok_lp;
      o->num_top = num_top;
    }
    if (tid < kTop) {
      o->top_id[tid] = tid < num_top ? tid : 0;
      o->top_logprob[tid] = tid < num_top ? lse : 0.f;
    }
    return;
  }

  // 3. Rank and each thread's best keys.
  const u64 tkey = key_of(tok_lp, token);
  unsigned above = 0;
  u64 t[kTop];
#pragma unroll
  for (int j = 0; j < kTop; ++j) t[j] = 0;
  if (k > 0) {
    for_row(l, V, [&](float v, int i) {
      const u64 key = key_of(__fsub_rn(v, lse), i);
      above += key > tkey;
      insert(t, key);
    });
  } else {
    for_row(l, V, [&](float v, int i) { above += key_of(__fsub_rn(v, lse), i) > tkey; });
  }
  above = block_reduce(
      above, [](unsigned a, unsigned b) { return a + b; }, 0u, sm.uscratch);

  // Each warp's k best (a lane holds at most k of them): k rounds of a max over the lanes' heads.
  const int lane = tid & 31, warp = tid >> 5;
  for (int j = lane; j < kTop; j += 32) sm.cand[warp * kTop + j] = 0;
  __syncwarp();
  for (int j = 0; j < k; ++j) {
    u64 m = t[0];
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) {
      const u64 x = __shfl_xor_sync(0xffffffffu, m, d);
      m = x > m ? x : m;
    }
    if (m == 0) break;  // the warp has no more ids (warp-uniform)
    if (t[0] == m) {    // keys are unique: one lane
#pragma unroll
      for (int c = 0; c < kTop - 1; ++c) t[c] = t[c + 1];
      t[kTop - 1] = 0;
    }
    if (lane == 0) sm.cand[warp * kTop + j] = m;
  }
  __syncthreads();
  // The block's k best: each candidate's place among all candidates.
  if (tid < kTop) {
    o->top_id[tid] = 0;  // entries past num_top stay zero
    o->top_logprob[tid] = 0.f;
  }
  __syncthreads();
  for (int i = tid; i < kWarps * kTop; i += kThreads) {
    const u64 c = sm.cand[i];
    if (c == 0) continue;
    int place = 0;
    for (int j = 0; j < kWarps * kTop; ++j) place += sm.cand[j] > c;
    if (place < num_top) {
      const int id = id_of(c);
      o->top_id[place] = id;
      o->top_logprob[place] = __fsub_rn(l[id], lse);
    }
  }
  if (tid == 0) {
    o->token = token;
    o->rank = int(above) + 1;
    o->logprob = tok_lp;
    o->num_top = num_top;
  }
}

}  // namespace logprobs

void run_logprobs(const LogprobParams& p0, cudaStream_t stream) {
  LogprobParams p = p0;
  KIMI_CHECK(p.count >= 0, "logprobs: ", p.count, " requests");
  if (p.count == 0) return;
  KIMI_CHECK(p.rows > 0 && p.vocab > 0, "logprobs: rows ", p.rows, " vocab ", p.vocab);
  KIMI_CHECK(p.logits && p.requests && p.out, "logprobs: null pointer");
  if (p.stride == 0) p.stride = p.vocab;
  KIMI_CHECK(p.stride >= p.vocab, "logprobs: stride ", p.stride, " below vocab ", p.vocab);
  KIMI_CHECK(p.count <= INT_MAX / 2, "logprobs: ", p.count, " requests");
  logprobs::logprobs_kernel<<<p.count, logprobs::kThreads, 0, stream>>>(p);
  KIMI_CHECK_LAUNCH();
}

}  // namespace kimi::cuda
