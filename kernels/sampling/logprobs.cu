// Token log-probabilities, rank and top-k on the GPU (contract in logprobs.h).
//
// Each request's row is split into C <= 128 chunks of >= 2048 logits (163840: 80 of 2048), one
// CTA of 256 threads per chunk, two kernels:
//   1. chunk_stats: the chunk's max m_c (NaN if it holds a NaN or +inf) and
//      s_c = Σ exp(double(l) - m_c) in double;
//   2. chunk_rank: every CTA of the request combines the partials in the same fixed order,
//      lse = float(M + log Σ_c s_c · exp(double(m_c) - M)), M = max m_c (the host sums
//      exp(double(l) - M) in one pass: the two double sums differ by a few ulp of a double, and
//      the fp32 rounding of lse only differs when the exact value lies within that of a float
//      rounding boundary, as for the block reduction of the one-CTA kernel). Then lp_i = l_i - lse;
//      every id is ordered by a 64-bit key (order key of lp | ~id), unique, larger = better: the
//      chunk counts keys above the token's, and keeps its k best in per-thread sorted lists, only
//      for lp at or above a bound (the k-th largest of the 32 lane maxima of the chunk maxima: k
//      logits lie at or above it, so a logit below cannot be among the k best); the chunk's k best
//      (warp rounds, then a rank among the warps' candidates) and its count go to a static
//      workspace, and the request's last CTA (a ticket, set back to 0 for the next launch) sums
//      the counts, merges the chunks' lists the same way and writes the record.
// One CTA of 512 threads per request and three passes over its row (the first kernel; it serves
// many requests that ask for no alternatives, logprobs.h):
//   1. max over the row and whether it holds a NaN or +inf (then lse is NaN, as on the host);
//   2. Σ exp(double(l) - max) in double per thread, reduced in double; lse rounded to fp32;
//   3. lp_i = l_i - lse; rank and each thread's 20 best keys sorted in registers (a
//      compare-exchange chain; most keys fail the first test). Each warp then takes its k best by
//      k rounds of a warp max over the lanes' heads, and the block's k best are found by ranking
//      the warps' candidates (at most 16 · 20) in shared memory.
#include <cfloat>
#include <climits>
#include <cstdint>

#include "common.h"
#include "launch.h"
#include "pdl.cuh"
#include "sampling/logprobs.h"

namespace kimi::cuda {
namespace logprobs {

using u64 = unsigned long long;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kTop = kMaxTopLogprobs;

// float4 loads in flight per thread of the one-CTA kernel (a CTA reads a whole row: the loads in
// flight set its speed).
constexpr int kBatch = 4;

// Calls f(value, id) for the logits b .. e - 1 of row l (b a multiple of 4) over a block of
// Threads threads: float4 loads when l + b is 16-byte aligned, Batch of them in flight per thread.
template <int Threads, int Batch, typename F>
__device__ __forceinline__ void for_range(const float* l, int b, int e, F&& f) {
  int done = b;
  if ((reinterpret_cast<uintptr_t>(l + b) & 15) == 0) {
    const int nv = (e - b) / 4;
    const float4* l4 = reinterpret_cast<const float4*>(l + b);
    for (int base = 0; base < nv; base += Threads * Batch) {
      float4 v[Batch];
#pragma unroll
      for (int j = 0; j < Batch; ++j) {
        const int i = base + j * Threads + int(threadIdx.x);
        if (i < nv) v[j] = l4[i];
      }
#pragma unroll
      for (int j = 0; j < Batch; ++j) {
        const int i = base + j * Threads + int(threadIdx.x);
        if (i < nv) {
          f(v[j].x, b + 4 * i);
          f(v[j].y, b + 4 * i + 1);
          f(v[j].z, b + 4 * i + 2);
          f(v[j].w, b + 4 * i + 3);
        }
      }
    }
    done = b + nv * 4;
  }
  for (int i = done + int(threadIdx.x); i < e; i += Threads) f(l[i], i);
}

// Block-wide reduction over W warps (every thread gets the result); scratch: W + 1 slots.
template <int W, typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // earlier readers of scratch are done
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < W ? scratch[lane] : identity;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) w = op(w, __shfl_xor_sync(0xffffffffu, w, o));
    if (lane == 0) scratch[W] = w;
  }
  __syncthreads();
  return scratch[W];
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

// The block's k best of the threads' sorted lists t (each thread's k best), sorted, into
// best[0 .. kTop - 1] (zeros past them): each warp's k best by k rounds of a warp max over the
// lanes' heads, then each of the warps' candidates placed by counting those above it. cand:
// (Threads / 32) · kTop keys of shared memory.
template <int Threads>
__device__ void block_top(u64 (&t)[kTop], int k, u64* cand, u64* best) {
  constexpr int Warps = Threads / 32;
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  for (int j = lane; j < kTop; j += 32) cand[warp * kTop + j] = 0;
  if (tid < kTop) best[tid] = 0;
  __syncwarp();
  for (int j = 0; j < k; ++j) {
    u64 m = t[0];
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) {
      const u64 x = __shfl_xor_sync(0xffffffffu, m, d);
      m = x > m ? x : m;
    }
    if (m == 0) break;  // the warp has no more keys (warp-uniform)
    if (t[0] == m) {    // keys are unique: one lane
#pragma unroll
      for (int c = 0; c < kTop - 1; ++c) t[c] = t[c + 1];
      t[kTop - 1] = 0;
    }
    if (lane == 0) cand[warp * kTop + j] = m;
  }
  __syncthreads();
  for (int i = tid; i < Warps * kTop; i += Threads) {
    const u64 c = cand[i];
    if (c == 0) continue;
    int place = 0;
    for (int j = 0; j < Warps * kTop; ++j) place += cand[j] > c;
    if (place < k) best[place] = c;
  }
  __syncthreads();
}

struct Shared {
  float fscratch[kWarps + 1];
  double dscratch[kWarps + 1];
  unsigned uscratch[kWarps + 1];
  u64 cand[kWarps * kTop];
  u64 best[kTop];
};

__global__ void __launch_bounds__(kThreads) one_cta_kernel(const LogprobParams p) {
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
  for_range<kThreads, kBatch>(l, 0, V, [&](float v, int) {
    mx = fmaxf(mx, v);
    bad |= (v != v) | (v == INFINITY);
  });
  mx = block_reduce<kWarps>(
      mx, [](float a, float b) { return fmaxf(a, b); }, -INFINITY, sm.fscratch);
  bad = block_reduce<kWarps>(
      bad, [](unsigned a, unsigned b) { return a | b; }, 0u, sm.uscratch);

  float lse = __int_as_float(0x7fc00000);
  if (!bad && mx > -INFINITY) {
    // 2. The normaliser, as log_sum_exp: double terms, double sum.
    const double dm = double(mx);
    double s = 0.0;
    for_range<kThreads, kBatch>(l, 0, V, [&](float v, int) { s += exp(double(v) - dm); });
    s = block_reduce<kWarps>(
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
    for_range<kThreads, kBatch>(l, 0, V, [&](float v, int i) {
      const u64 key = key_of(__fsub_rn(v, lse), i);
      above += key > tkey;
      insert(t, key);
    });
  } else {
    for_range<kThreads, kBatch>(
        l, 0, V, [&](float v, int i) { above += key_of(__fsub_rn(v, lse), i) > tkey; });
  }
  above = block_reduce<kWarps>(
      above, [](unsigned a, unsigned b) { return a + b; }, 0u, sm.uscratch);

  block_top<kThreads>(t, k, sm.cand, sm.best);
  if (tid < kTop) {  // entries past num_top stay zero
    const u64 c = sm.best[tid];
    const bool in = tid < num_top && c != 0;
    const int id = in ? id_of(c) : 0;
    o->top_id[tid] = id;
    o->top_logprob[tid] = in ? __fsub_rn(l[id], lse) : 0.f;
  }
  if (tid == 0) {
    o->token = token;
    o->rank = int(above) + 1;
    o->logprob = tok_lp;
    o->num_top = num_top;
  }
}

// ---- The split kernels: kChunks CTAs per request (see the header comment of this file). ----

constexpr int kSplitThreads = 256;
constexpr int kSplitWarps = kSplitThreads / 32;
constexpr int kSplitBatch = 2;  // float4 loads in flight per thread: a 2048-logit chunk at once
constexpr int kMinChunk = kSplitThreads * 4 * kSplitBatch;
constexpr int kMaxChunks = 128;
static_assert(kMaxChunks % 32 == 0, "a warp lane takes kMaxChunks / 32 chunk partials");
constexpr int kSlots = 16384;  // chunk slots of the workspace: one launch serves kSlots / chunks

struct Geometry {
  int chunks = 1;  // CTAs per request
  int chunk = 4;   // logits per chunk, a multiple of 4 (the last chunk may be shorter)
};
__host__ __device__ inline Geometry geometry(int V) {
  Geometry g;
  int c = V / kMinChunk + (V % kMinChunk != 0);
  c = c < 1 ? 1 : (c > kMaxChunks ? kMaxChunks : c);
  g.chunk = ((V / c + (V % c != 0)) + 3) & ~3;
  g.chunks = V / g.chunk + (V % g.chunk != 0);
  return g;
}

// The workspace, static in device memory: per chunk slot (request q of a launch, chunk c: slot
// q * chunks + c) its max (NaN: the chunk holds a NaN or +inf), Σ exp(double(l) - max), the count
// of keys above the token's and its k best keys (sorted, zeros past its logits); per request a
// ticket, back to 0 when the request's last CTA has taken it. Launches on one stream are ordered;
// calls on two streams at once would share it (the engine has one stream per device).
__device__ float g_max[kSlots];
__device__ double g_sum[kSlots];
__device__ unsigned g_above[kSlots];
__device__ u64 g_top[size_t(kSlots) * kTop];
__device__ unsigned g_ticket[kSlots];

// A request as the kernels see it; ok false: the record says "cannot serve".
struct Req {
  const float* l = nullptr;
  int token = -1;
  int k = 0;
  int num_top = 0;
  bool ok = false;
};
__device__ __forceinline__ Req decode(const LogprobParams& p, int qi) {
  const LogprobRequest q = p.requests[qi];
  Req r;
  const int row = q.row - p.row_begin;
  r.token = q.token;
  const bool row_ok = row >= 0 && row < p.rows;
  if (r.token < 0 && row_ok && p.sampled) r.token = p.sampled[row];
  r.k = q.k < 0 ? 0 : (q.k > kTop ? kTop : q.k);
  r.num_top = r.k < p.vocab ? r.k : p.vocab;
  r.ok = row_ok && r.token >= 0 && r.token < p.vocab;
  if (r.ok) r.l = p.logits + int64_t(row) * p.stride;
  return r;
}

__device__ void write_refused(LogprobRecord* o) {
  if (threadIdx.x == 0) {
    o->token = -1;
    o->rank = 0;
    o->logprob = __int_as_float(0x7fc00000);
    o->num_top = 0;
  }
  if (threadIdx.x < kTop) {
    o->top_id[threadIdx.x] = 0;
    o->top_logprob[threadIdx.x] = 0.f;
  }
}

// 1. Per chunk: its max (NaN if it holds a NaN or +inf) and Σ exp(double(l) - max) in double.
__global__ void __launch_bounds__(kSplitThreads)
    chunk_stats_kernel(const LogprobParams p, const Geometry g) {
  __shared__ float fscratch[kSplitWarps + 1];
  __shared__ unsigned uscratch[kSplitWarps + 1];
  __shared__ double dscratch[kSplitWarps + 1];
  pdl_wait();  // a programmatic dependent launch (launch.h): the rows are the last kernel's
  const Req r = decode(p, int(blockIdx.y));
  if (!r.ok) return;
  const float* l = r.l;
  const int b = int(blockIdx.x) * g.chunk;
  const int e = b + g.chunk < p.vocab ? b + g.chunk : p.vocab;
  float mx = -INFINITY;
  unsigned bad = 0;
  for_range<kSplitThreads, kSplitBatch>(l, b, e, [&](float v, int) {
    mx = fmaxf(mx, v);
    bad |= (v != v) | (v == INFINITY);
  });
  mx = block_reduce<kSplitWarps>(
      mx, [](float a, float c) { return fmaxf(a, c); }, -INFINITY, fscratch);
  bad = block_reduce<kSplitWarps>(
      bad, [](unsigned a, unsigned c) { return a | c; }, 0u, uscratch);
  double s = 0.0;
  if (!bad && mx > -INFINITY) {  // block-uniform
    const double dm = double(mx);
    for_range<kSplitThreads, kSplitBatch>(l, b, e, [&](float v, int) { s += exp(double(v) - dm); });
    s = block_reduce<kSplitWarps>(
        s, [](double a, double c) { return a + c; }, 0.0, dscratch);
  }
  if (threadIdx.x == 0) {
    const int slot = int(blockIdx.y) * g.chunks + int(blockIdx.x);
    g_max[slot] = bad ? __int_as_float(0x7fc00000) : mx;
    g_sum[slot] = s;
  }
}

// 2. Per chunk: the row's lse from the chunk partials (every CTA of the row the same, fixed
// order), then the chunk's count of keys above the token's and its k best keys; the last CTA of
// the request (ticket) merges the chunks' counts and lists and writes the record.
__global__ void __launch_bounds__(kSplitThreads)
    chunk_rank_kernel(const LogprobParams p, const Geometry g) {
  __shared__ unsigned uscratch[kSplitWarps + 1];
  __shared__ u64 cand[kSplitWarps * kTop];
  __shared__ u64 best[kTop];
  __shared__ float s_lse, s_bound;
  __shared__ int s_last;
  const int tid = int(threadIdx.x), lane = tid & 31;
  const int qi = int(blockIdx.y), c = int(blockIdx.x);
  const int base = qi * g.chunks;
  pdl_wait();  // the partials are chunk_stats_kernel's
  // Warp 0: the chunk partials, lane j those of chunks j, j + 32, ... (loaded before the request,
  // whose loads they do not depend on; a refused request's slots are not used).
  constexpr int kPer = kMaxChunks / 32;
  float pm[kPer];
  double ps[kPer];
  if (tid < 32) {
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int j = lane + 32 * u;
      pm[u] = j < g.chunks ? g_max[base + j] : -INFINITY;
      ps[u] = j < g.chunks ? g_sum[base + j] : 0.0;
    }
  }
  const Req r = decode(p, qi);
  LogprobRecord* o = p.out + qi;
  if (!r.ok) {
    if (c == 0) write_refused(o);
    return;
  }
  const float tok_l = r.l[r.token];
  const int b = c * g.chunk;
  const int e = b + g.chunk < p.vocab ? b + g.chunk : p.vocab;
  // The chunk asked for (a prefetch per 128 bytes) while warp 0 combines the partials.
  for (int i = b + 32 * tid; i < e; i += 32 * kSplitThreads)
    asm volatile("prefetch.global.L1 [%0];" ::"l"(r.l + i));
  if (tid < 32) {
    // lse = max + log Σ_c s_c · exp(double(m_c) - max), in this fixed order.
    float m = -INFINITY;
    unsigned bad = 0;
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      bad |= pm[u] != pm[u];
      m = fmaxf(m, pm[u]);
    }
    bad = __any_sync(0xffffffffu, bad);
    // A bound for the top k: the k-th largest lane max (lanes in a total order: value, then lane)
    // is <= the k-th largest logit of the row, so a logit below it has k others above it.
    int place = 0;
    for (int j = 0; j < 32; ++j) {
      const float x = __shfl_sync(0xffffffffu, m, j);
      place += x > m || (x == m && j < lane);
    }
    const unsigned at = __ballot_sync(0xffffffffu, place == r.k - 1);
    const float bound = at ? __shfl_sync(0xffffffffu, m, __ffs(at) - 1) : -INFINITY;
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, d));
    float lse = __int_as_float(0x7fc00000);
    if (!bad && m > -INFINITY) {  // warp-uniform
      const double dm = double(m);
      double s = 0.0;
#pragma unroll
      for (int u = 0; u < kPer; ++u)
        if (pm[u] > -INFINITY) s += ps[u] * exp(double(pm[u]) - dm);
#pragma unroll
      for (int d = 16; d > 0; d >>= 1) s += __shfl_xor_sync(0xffffffffu, s, d);
      lse = __double2float_rn(dm + log(s));
    }
    if (lane == 0) {
      s_lse = lse;
      s_bound = __fsub_rn(bound, lse);
    }
  }
  __syncthreads();
  const float lse = s_lse;
  const float tok_lp = __fsub_rn(tok_l, lse);
  // No order (every CTA of the request knows; chunk 0 writes): rank 1, ids 0..k-1.
  if (lse != lse) {
    if (c == 0) {
      if (tid == 0) {
        o->token = r.token;
        o->rank = 1;
        o->logprob = tok_lp;
        o->num_top = r.num_top;
      }
      if (tid < kTop) {
        o->top_id[tid] = tid < r.num_top ? tid : 0;
        o->top_logprob[tid] = tid < r.num_top ? lse : 0.f;
      }
    }
    return;
  }

  // The chunk: keys above the token's, and its k best.
  const u64 tkey = key_of(tok_lp, r.token);
  unsigned above = 0;
  u64 t[kTop];
#pragma unroll
  for (int j = 0; j < kTop; ++j) t[j] = 0;
  if (r.k > 0) {
    const float lp_bound = s_bound;  // a key with lp below it is not among the row's k best
    for_range<kSplitThreads, kSplitBatch>(r.l, b, e, [&](float v, int i) {
      const float lp = __fsub_rn(v, lse);
      const u64 key = key_of(lp, i);
      above += key > tkey;
      if (lp >= lp_bound) insert(t, key);
    });
  } else {
    for_range<kSplitThreads, kSplitBatch>(
        r.l, b, e, [&](float v, int i) { above += key_of(__fsub_rn(v, lse), i) > tkey; });
  }
  above = block_reduce<kSplitWarps>(
      above, [](unsigned a, unsigned x) { return a + x; }, 0u, uscratch);
  if (r.k > 0) block_top<kSplitThreads>(t, r.k, cand, best);
  const int slot = base + c;
  if (tid == 0) g_above[slot] = above;
  if (tid < r.k) g_top[size_t(slot) * kTop + tid] = best[tid];
  __threadfence();
  __syncthreads();
  if (tid == 0) s_last = atomicAdd(&g_ticket[qi], 1u) == unsigned(g.chunks - 1);
  __syncthreads();
  if (!s_last) return;

  // The request's last CTA: every chunk's slot is written (the ticket came after their fences).
  if (tid == 0) g_ticket[qi] = 0;  // for the next launch
  __threadfence();
  unsigned total = 0;
  for (int j = tid; j < g.chunks; j += kSplitThreads) total += __ldcg(&g_above[base + j]);
  total = block_reduce<kSplitWarps>(
      total, [](unsigned a, unsigned x) { return a + x; }, 0u, uscratch);
  if (r.k > 0) {
#pragma unroll
    for (int j = 0; j < kTop; ++j) t[j] = 0;
    for (int i = tid; i < g.chunks * r.k; i += kSplitThreads) {
      const int ch = i / r.k, j = i - ch * r.k;
      const u64 key = __ldcg(&g_top[size_t(base + ch) * kTop + j]);
      if (key != 0) insert(t, key);
    }
    block_top<kSplitThreads>(t, r.k, cand, best);
  }
  if (tid < kTop) {
    const bool in = tid < r.num_top;
    const int id = in ? id_of(best[tid]) : 0;
    o->top_id[tid] = id;
    o->top_logprob[tid] = in ? __fsub_rn(r.l[id], lse) : 0.f;
  }
  if (tid == 0) {
    o->token = r.token;
    o->rank = int(total) + 1;
    o->logprob = tok_lp;
    o->num_top = r.num_top;
  }
}

}  // namespace logprobs

LogprobKernel choose_logprob_kernel(const LogprobParams& p) {
  KIMI_CHECK(p.max_k >= 0 && p.max_k <= kMaxTopLogprobs, "logprobs: max_k ", p.max_k);
  if (p.kernel != LogprobKernel::kAuto) return p.kernel;
  return p.max_k == 0 && p.count >= kLogprobOneCtaFromRequests ? LogprobKernel::kOneCta
                                                               : LogprobKernel::kSplit;
}

void run_logprobs(const LogprobParams& p0, cudaStream_t stream) {
  LogprobParams p = p0;
  KIMI_CHECK(p.count >= 0, "logprobs: ", p.count, " requests");
  if (p.count == 0) return;
  KIMI_CHECK(p.rows > 0 && p.vocab > 0, "logprobs: rows ", p.rows, " vocab ", p.vocab);
  KIMI_CHECK(p.logits && p.requests && p.out, "logprobs: null pointer");
  if (p.stride == 0) p.stride = p.vocab;
  KIMI_CHECK(p.stride >= p.vocab, "logprobs: stride ", p.stride, " below vocab ", p.vocab);
  KIMI_CHECK(p.count <= INT_MAX / 2, "logprobs: ", p.count, " requests");
  if (choose_logprob_kernel(p) == LogprobKernel::kOneCta) {
    logprobs::one_cta_kernel<<<p.count, logprobs::kThreads, 0, stream>>>(p);
    KIMI_CHECK_LAUNCH();
    return;
  }
  const logprobs::Geometry g = logprobs::geometry(p.vocab);
  const int per = logprobs::kSlots / g.chunks;  // requests per launch pair (chunks <= 128)
  for (int q0 = 0; q0 < p.count; q0 += per) {
    LogprobParams s = p;
    s.count = p.count - q0 < per ? p.count - q0 : per;
    s.requests = p.requests + q0;
    s.out = p.out + q0;
    const dim3 grid(unsigned(g.chunks), unsigned(s.count));
    LaunchOptions o;
    o.pdl = true;  // scheduled while the previous kernel drains; each waits first
    launch_kernel(logprobs::chunk_stats_kernel, grid, logprobs::kSplitThreads, o, stream, s, g);
    launch_kernel(logprobs::chunk_rank_kernel, grid, logprobs::kSplitThreads, o, stream, s, g);
  }
}

}  // namespace kimi::cuda
