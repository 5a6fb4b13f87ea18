// Sampling kernel (contract in sampling.h).
//
// One cluster of C <= 8 CTAs per row; CTA `rank` keeps ids [rank·slice, rank·slice + n) in shared
// memory, so every pass after the load reads shared memory. The candidate order is (logit
// descending, id ascending). A cut in that order is a position (key K, r): every token with a
// larger logit, then the first r tokens (by id) whose logit has order key K. Mass is fixed point,
// p = round(exp((l - max)/T) · 2^40) in 64-bit integers, so sums are exact and agree in every CTA
// whatever the order; a token with p < 2^-41 has mass 0 (it could only be drawn with u within
// V·2^-41 of 1).
//
// Steps for a sampled row:
//   1. load (+ adjustments, sanitising) with running statistics: max and its lowest id, smallest
//      finite logit (and, greedy, sum exp(l - max) online); merged over the cluster;
//   2. level-0 histogram: bin = floor((max - l)/T · scale) over [0, 28.5) in 1022 bins, one bin
//      for everything further (all mass 0); counts and masses per bin (masses added with two 32-bit
//      shared atomics). After a cluster barrier every CTA reads all CTAs' bins at once and, after
//      a second barrier, keeps the merged histogram's cumulative counts and masses in its own
//      shared memory: every later cut finds its bin by a local binary search, with no cluster
//      traffic;
//   3. select(target): the crossing bin; a bin of <= 256 tokens is gathered from all CTAs (one
//      remote load per token, lists double-buffered so one cluster barrier suffices) and ranked
//      exactly (each token counts the tokens of the bin above it and its ties with lower ids), a
//      bigger one refined by merged histograms of 8-bit digits of the order key (the same
//      gather); a count target crossing a massless bin needs no position (the cut's mass is the
//      mass above it);
//   4. cuts: top-k (count target k), top-p (mass target ceil(top_p · top-k mass)), min-p (a
//      reduction: tokens with (l - max)/T >= ln min_p, in double); the shortest wins;
//   5. the draw: mass target floor(u · kept) + 1 → (K, r) and, from a ranked list, the token; after
//      a refinement down to one key, the CTA holding the r-th id with key K finds it.
// Greedy rows stop after 1. Every CTA of a cluster computes the same decisions from the same
// merged data (integer sums, or float merges in rank order), so all take the same branches and
// meet at the same cluster barriers.
#pragma once

#include <cooperative_groups.h>

#include <cfloat>
#include <climits>
#include <cstdint>

#include "sampling/sampling.h"

namespace kimi::cuda::sampling {

namespace cg = cooperative_groups;
using u64 = unsigned long long;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
// At most 8 CTAs per row (a portable cluster). Clusters of 16 for small batches were measured
// slower on temperature-only rows (docs/perf-log.md, session 10).
constexpr int kMaxCluster = 8;
constexpr int kGather = 8;           // remote loads of a merge issued together
constexpr int kMaxSlice = 24576;     // logits per CTA (96 KB)
constexpr int kMinSlice = 4096;   // below this, fewer CTAs per row
constexpr int kBins = 1024;       // level-0 histogram bins
constexpr int kRBins = 256;       // refinement bins: 8-bit digits of the order key
constexpr int kListCap = 256;     // a bin this small is ranked exactly
constexpr float kXCut = 28.5f;    // (max - l)/T beyond this: mass 0 (e^-28.5 · 2^40 < 0.5)
constexpr float kMassOne = 0x1p40f;
constexpr int kLoadBatch = 8;  // float4 loads in flight per thread

// Dynamic shared memory: the logits.
inline size_t dynamic_smem_bytes(int /*cluster*/, int slice) { return size_t(slice) * sizeof(float); }

// ---- values, order keys, mass ----

__device__ __forceinline__ float sanitize(float v) {
  if (v != v) return -INFINITY;
  if (v == INFINITY) return FLT_MAX;
  return v == 0.f ? 0.f : v;
}
// Order-preserving key of a sanitised float (no NaN, no -0).
__device__ __forceinline__ uint32_t key_of(float v) {
  const uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float value_of(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

struct RowCtx {
  float max;
  float inv_t;
  float scale;  // level-0 bins per unit of (max - l)/T
};

__device__ __forceinline__ int level0_bin(float v, const RowCtx& c) {
  const float x = __fmul_rn(__fsub_rn(c.max, v), c.inv_t);
  if (!(x < kXCut)) return kBins - 1;
  return int(fminf(__fmul_rn(x, c.scale), float(kBins - 2)));
}
// round(exp((v - max)/T) · 2^40); the product's rounding error is carried by an FMA residual so
// that only expf's error (2 ulp) remains.
__device__ __forceinline__ u64 mass_of(float v, const RowCtx& c) {
  const float d = __fsub_rn(v, c.max);
  const float z = __fmul_rn(d, c.inv_t);
  if (!(z > -30.f)) return 0;
  const float lo = __fmaf_rn(d, c.inv_t, -z);
  const float e = expf(z);
  return __float2ull_rn(__fmul_rn(__fmaf_rn(e, lo, e), kMassOne));
}

__device__ __forceinline__ float adjust_value(float l, const SampleAdjust& a) {
  float x = __fadd_rn(l, a.bias);
  if (a.rep != 1.f) x = x > 0.f ? __fdiv_rn(x, a.rep) : __fmul_rn(x, a.rep);
  return __fadd_rn(x, a.post);
}

// ---- block helpers ----

template <typename T>
__device__ __forceinline__ T warp_inclusive_scan(T v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  return v;
}

// Block-wide reduction; every thread gets the result. scratch: kWarps + 1 slots of 8 bytes.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity, u64* scratch) {
  static_assert(sizeof(T) <= 8);
  constexpr int kStride = 8 / sizeof(T);  // one 8-byte slot per warp, whatever T is
  T* s = reinterpret_cast<T*>(scratch);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // earlier readers of scratch are done
  if (lane == 0) s[warp * kStride] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < kWarps ? s[lane * kStride] : identity;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) w = op(w, __shfl_xor_sync(0xffffffffu, w, o));
    if (lane == 0) s[kWarps * kStride] = w;
  }
  __syncthreads();
  return s[kWarps * kStride];
}
struct Sum {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct Min {
  __device__ float operator()(float a, float b) const { return fminf(a, b); }
};

// Exclusive scan of one count per thread; `total` gets the block's sum.
__device__ unsigned block_exclusive_scan(unsigned v, unsigned& total, u64* scratch) {
  unsigned* s = reinterpret_cast<unsigned*>(scratch);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned inc = warp_inclusive_scan(v);
  __syncthreads();
  if (lane == 31) s[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    const unsigned w = lane < kWarps ? s[lane] : 0u;
    const unsigned winc = warp_inclusive_scan(w);
    if (lane < kWarps) s[lane] = winc - w;
    if (lane == kWarps - 1) s[kWarps] = winc;
  }
  __syncthreads();
  total = s[kWarps];
  return s[warp] + inc - v;
}

// ---- shared state ----

struct Hit {  // the bin where a cumulative target is crossed
  int bin;
  u64 cnt_before, mass_before;  // over the bins before it
  u64 bin_cnt, bin_mass;
};

struct Sel {  // a position in candidate order
  uint32_t key;
  u64 r;                // tokens taken from the key's tie group (>= 1)
  u64 cnt_gt, mass_gt;  // tokens and mass with a larger logit
  bool massless;        // count target in a massless bin: key unknown, cut mass = mass_gt
  int id;               // the token at the position when known (ranked in a list), else -1
};

// Running statistics of logits: the maximum and its lowest id, the smallest finite logit, and
// (greedy rows that want a logprob) s = sum exp(l - m) relative to the running maximum m.
// No default member initialisers: it lives in shared memory.
struct Stats {
  float max;
  int arg;
  float min;
  float m;
  float s;
  __device__ static Stats empty() { return {-INFINITY, INT_MAX, INFINITY, -INFINITY, 0.f}; }
  __device__ void add(float v, int id, bool lse) {
    if (v > max || (v == max && id < arg)) {
      max = v;
      arg = id;
    }
    if (v > -INFINITY) {
      min = fminf(min, v);
      if (lse) {
        if (v > m) {
          s = s * expf(m - v) + 1.f;
          m = v;
        } else {
          s += expf(v - m);
        }
      }
    }
  }
  __device__ void merge(const Stats& o) {
    if (o.max > max || (o.max == max && o.arg < arg)) {
      max = o.max;
      arg = o.arg;
    }
    min = fminf(min, o.min);
    if (o.m > m) {
      s = s * expf(m - o.m) + o.s;
      m = o.m;
    } else if (o.m > -INFINITY) {
      s += o.s * expf(o.m - m);
    }
  }
};
__device__ __forceinline__ Stats shfl_xor(const Stats& a, int o) {
  Stats b;
  b.max = __shfl_xor_sync(0xffffffffu, a.max, o);
  b.arg = __shfl_xor_sync(0xffffffffu, a.arg, o);
  b.min = __shfl_xor_sync(0xffffffffu, a.min, o);
  b.m = __shfl_xor_sync(0xffffffffu, a.m, o);
  b.s = __shfl_xor_sync(0xffffffffu, a.s, o);
  return b;
}

struct Filter {  // tokens of level-0 bin `bin` whose key >> shift == prefix (shift 32: all)
  int bin;
  int shift;
  uint32_t prefix;
};

struct Shared {
  // Read by the other CTAs of the cluster.
  Stats stats;  // this CTA's logit statistics
  unsigned tie_count;
  int list_n[2];
  u64 minp[2];  // this CTA's min-p count and mass
  // This CTA's tokens of the bin being ranked (logit, id); two buffers used in turn, so that a
  // CTA may fill one while another still reads the other.
  float list[2][kListCap];
  int list_id[2][kListCap];
  // Level 0: this CTA's histogram, then (after merge_cumulative) the merged histogram's inclusive
  // cumulative counts and masses, kept for every later cut.
  __align__(16) unsigned hist_cnt[kBins];
  __align__(16) u64 hist_mass[kBins];
  // Refinement level: the same for 256 digits.
  __align__(16) unsigned rhist_cnt[kRBins];
  __align__(16) u64 rhist_mass[kRBins];
  // Block-local.
  u64 scratch[kWarps + 2];
  u64 scan_a[kWarps], scan_b[kWarps];
  Stats warp_stats[kWarps];
  Stats all_stats[kMaxCluster];
  uint32_t comb_key[kListCap];
  u64 comb_mass[kListCap];
  int comb_id[kListCap];
  int comb_off[kMaxCluster + 1];
  uint32_t res_key;
  u64 res_cnt, res_mass, res_r;
  int res_id;
};

struct Ctx {
  cg::cluster_group cluster;
  Shared& sm;
  float* vals;  // [n] this CTA's logits
  int n;        // ids in this CTA
  int begin;    // first id
  int C, rank;
  int list_buf;  // the list buffer the next rank_list fills (the same in every CTA)
};

// ---- histograms ----

__device__ __forceinline__ bool matches(float v, const Filter& f, const RowCtx& rc) {
  if (level0_bin(v, rc) != f.bin) return false;
  return f.shift >= 32 || (key_of(v) >> f.shift) == f.prefix;
}

// Adds m to a 64-bit shared counter with two 32-bit atomics (low word, then the carry and the
// high word): exact, and cheaper than a 64-bit shared atomic under contention.
__device__ __forceinline__ void add_mass(u64* slot, u64 m) {
  unsigned* w = reinterpret_cast<unsigned*>(slot);  // little endian: w[0] low, w[1] high
  const unsigned lo = unsigned(m), hi = unsigned(m >> 32);
  const unsigned old = lo ? atomicAdd(&w[0], lo) : 0u;
  const unsigned carry = unsigned(old + lo < old);
  if (hi + carry) atomicAdd(&w[1], hi + carry);
}

// Exclusive scan over the block's threads of two values; every thread gets its prefixes.
__device__ __forceinline__ void block_exclusive_scan2(u64 a, u64 b, u64& ea, u64& eb,
                                                      Shared& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const u64 ia = warp_inclusive_scan(a), ib = warp_inclusive_scan(b);
  __syncthreads();  // earlier readers of scan_* are done
  if (lane == 31) {
    sm.scan_a[warp] = ia;
    sm.scan_b[warp] = ib;
  }
  __syncthreads();
  u64 pa = 0, pb = 0;
  for (int w = 0; w < warp; ++w) {
    pa += sm.scan_a[w];
    pb += sm.scan_b[w];
  }
  ea = pa + ia - a;
  eb = pb + ib - b;
}

// After every CTA built its histogram in cnt / mass (NB bins): every CTA reads all CTAs' bins at
// once (each thread NB / kThreads adjacent bins, all loads in flight), and after a second cluster
// barrier (nobody reads the per-CTA histograms any more) writes the merged histogram's inclusive
// cumulative counts and masses over its own. Every CTA then holds the same cumulative arrays.
template <int NB>
__device__ void merge_cumulative(Ctx& x, unsigned* cnt, u64* mass) {
  constexpr int kPer = NB >= kThreads ? NB / kThreads : 1;
  static_assert(NB % kPer == 0 && (NB >= kThreads ? NB % kThreads == 0 : true));
  const int b0 = int(threadIdx.x) * kPer;
  const bool active = b0 < NB;
  u64 c[kPer], m[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) c[k] = m[k] = 0;
  x.cluster.sync();  // histograms complete in every CTA
  if (active) {
    for (int q0 = 0; q0 < x.C; q0 += kGather) {
#pragma unroll
      for (int g = 0; g < kGather; ++g) {
        const int q = q0 + g;
        const int src = q < x.C ? q : 0;  // unconditional loads, so that all can be in flight
        const unsigned* pc = x.cluster.map_shared_rank(cnt, src);
        const u64* pm = x.cluster.map_shared_rank(mass, src);
#pragma unroll
        for (int k = 0; k < kPer; ++k) {
          const unsigned vc = pc[b0 + k];
          const u64 vm = pm[b0 + k];
          c[k] += q < x.C ? vc : 0u;
          m[k] += q < x.C ? vm : 0ull;
        }
      }
    }
  }
  x.cluster.sync();  // every CTA is done reading the per-CTA histograms
  u64 tc = 0, tm = 0;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    tc += c[k];
    tm += m[k];
  }
  u64 ec, em;
  block_exclusive_scan2(tc, tm, ec, em, x.sm);
  if (active) {
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      ec += c[k];
      em += m[k];
      cnt[b0 + k] = unsigned(ec);
      mass[b0 + k] = em;
    }
  }
  __syncthreads();
}

// The first bin whose inclusive cumulative count (by_mass false) or mass reaches T (NB - 1 when
// none does), from cumulative arrays in this CTA. Every thread searches (broadcast reads).
template <int NB>
__device__ __forceinline__ Hit find_cumulative(const unsigned* cnt, const u64* mass, bool by_mass,
                                               u64 T) {
  int lo = 0, hi = NB - 1;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    const u64 v = by_mass ? mass[mid] : u64(cnt[mid]);
    if (v >= T)
      hi = mid;
    else
      lo = mid + 1;
  }
  Hit h;
  h.bin = lo;
  h.cnt_before = lo ? cnt[lo - 1] : 0u;
  h.mass_before = lo ? mass[lo - 1] : 0ull;
  h.bin_cnt = cnt[lo] - h.cnt_before;
  h.bin_mass = mass[lo] - h.mass_before;
  return h;
}

// Histogram of the tokens matching f by the 8 key bits below f.shift, in descending key order
// (bin 0 = largest digit), merged into the cumulative refinement arrays.
__device__ void refine_hist(Ctx& x, const RowCtx& rc, const Filter& f, int ds, uint32_t mask) {
  __syncthreads();  // every thread has searched the previous level's arrays before they are reset
  for (int b = threadIdx.x; b < kRBins; b += kThreads) {
    x.sm.rhist_cnt[b] = 0;
    x.sm.rhist_mass[b] = 0;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < x.n; i += kThreads) {
    const float v = x.vals[i];
    if (!matches(v, f, rc)) continue;
    const int b = int(mask - ((key_of(v) >> ds) & mask));
    atomicAdd(&x.sm.rhist_cnt[b], 1u);
    const u64 m = mass_of(v, rc);
    if (m) add_mass(&x.sm.rhist_mass[b], m);
  }
  merge_cumulative<kRBins>(x, x.sm.rhist_cnt, x.sm.rhist_mass);
}

// The position in a bin of at most kListCap tokens where the target is crossed: gathers the bin's
// tokens of every CTA, then each token counts the count and mass above it and its place among
// its ties. `target` is relative to the bin's start. Sets s.key, s.r, s.id and adds the bin's part
// to s.cnt_gt / s.mass_gt. Every CTA ranks the same list; one cluster barrier.
__device__ void rank_list(Ctx& x, const RowCtx& rc, const Filter& f, bool by_mass, u64 target,
                          Sel& s) {
  const int buf = x.list_buf;
  x.list_buf ^= 1;
  // Nobody reads this buffer now: the last reads of it were before the cluster barrier of the
  // previous rank_list (or of a merge in between).
  if (threadIdx.x == 0) {
    x.sm.list_n[buf] = 0;
    x.sm.res_id = -1;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < x.n; i += kThreads) {
    const float v = x.vals[i];
    if (!matches(v, f, rc)) continue;
    const int pos = atomicAdd(&x.sm.list_n[buf], 1);
    if (pos < kListCap) {
      x.sm.list[buf][pos] = v;
      x.sm.list_id[buf][pos] = x.begin + i;
    }
  }
  x.cluster.sync();  // every CTA's list is complete
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int cnt = lane < x.C ? min(*x.cluster.map_shared_rank(&x.sm.list_n[buf], lane), kListCap) : 0;
    const int inc = warp_inclusive_scan(cnt);
    if (lane < x.C) x.sm.comb_off[lane] = min(inc - cnt, kListCap);
    if (lane == x.C - 1) x.sm.comb_off[x.C] = min(inc, kListCap);
  }
  __syncthreads();
  const int total = x.sm.comb_off[x.C];
  for (int i = threadIdx.x; i < total; i += kThreads) {  // one remote load per token, all at once
    int q = 0;
    while (q + 1 < x.C && x.sm.comb_off[q + 1] <= i) ++q;
    const int j = i - x.sm.comb_off[q];
    const float v = *x.cluster.map_shared_rank(&x.sm.list[buf][j], q);
    const int id = *x.cluster.map_shared_rank(&x.sm.list_id[buf][j], q);
    x.sm.comb_key[i] = key_of(v);
    x.sm.comb_mass[i] = mass_of(v, rc);
    x.sm.comb_id[i] = id;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < total; i += kThreads) {
    const uint32_t k = x.sm.comb_key[i];
    const int id = x.sm.comb_id[i];
    u64 cg = 0, mg = 0, ce = 0, me = 0, before = 0;
#pragma unroll 4
    for (int j = 0; j < total; ++j) {
      const uint32_t kj = x.sm.comb_key[j];
      const u64 mj = x.sm.comb_mass[j];
      const int ij = x.sm.comb_id[j];
      const bool gt = kj > k, eq = kj == k;
      cg += gt;
      mg += gt ? mj : 0ull;
      ce += eq;
      me += eq ? mj : 0ull;
      before += eq && ij < id;
    }
    const u64 gt = by_mass ? mg : cg, ge = gt + (by_mass ? me : ce);
    if (gt < target && target <= ge) {  // the crossing key; its tokens share one mass (> 0 here)
      const u64 w = by_mass ? x.sm.comb_mass[i] : 1;
      const u64 r = (target - gt + w - 1) / w;
      x.sm.res_key = k;  // every tied token writes the same values
      x.sm.res_cnt = cg;
      x.sm.res_mass = mg;
      x.sm.res_r = r;
      if (before + 1 == r) x.sm.res_id = id;
    }
  }
  __syncthreads();  // results visible (block-local; the lists are double-buffered)
  s.key = x.sm.res_key;
  s.cnt_gt += x.sm.res_cnt;
  s.mass_gt += x.sm.res_mass;
  s.r = x.sm.res_r;
  s.id = x.sm.res_id;
  __syncthreads();  // every thread has read res_* before a later call writes them
}

// The position where the cumulative count (by_mass false) or mass first reaches T.
__device__ Sel select_position(Ctx& x, const RowCtx& rc, bool by_mass, u64 T) {
  Hit h = find_cumulative<kBins>(x.sm.hist_cnt, x.sm.hist_mass, by_mass, T);
  Sel s{0, 0, h.cnt_before, h.mass_before, false, -1};
  Filter f{h.bin, 32, 0};
  for (;;) {
    if (!by_mass && h.bin_mass == 0) {  // all tokens here have mass 0: only the count matters
      s.massless = true;
      s.r = T - s.cnt_gt;
      return s;
    }
    const u64 rel = T - (by_mass ? s.mass_gt : s.cnt_gt);
    if (h.bin_cnt <= kListCap) {
      rank_list(x, rc, f, by_mass, rel, s);
      return s;
    }
    if (f.shift == 0) {  // one key
      s.key = f.prefix;
      break;
    }
    const int ds = f.shift > 8 ? f.shift - 8 : 0, nd = f.shift - ds;
    const uint32_t mask = (1u << nd) - 1u;
    refine_hist(x, rc, f, ds, mask);
    h = find_cumulative<kRBins>(x.sm.rhist_cnt, x.sm.rhist_mass, by_mass, rel);
    s.cnt_gt += h.cnt_before;
    s.mass_gt += h.mass_before;
    const uint32_t digit = mask - uint32_t(h.bin);
    f.prefix = (f.shift >= 32 ? 0u : f.prefix << nd) | digit;
    f.shift = ds;
  }
  const u64 rest = T - (by_mass ? s.mass_gt : s.cnt_gt);
  const u64 w = by_mass ? mass_of(value_of(s.key), rc) : 1;
  s.r = w ? (rest + w - 1) / w : 1;
  return s;
}

// The id of the r-th token (by id) with key K in the row: the owning thread returns it, every
// other thread -1. One cluster barrier.
__device__ int resolve_tie(Ctx& x, uint32_t K, u64 r) {
  const int seg = (x.n + kThreads - 1) / kThreads;
  const int lo = min(x.n, int(threadIdx.x) * seg), hi = min(x.n, lo + seg);
  unsigned c = 0;
  for (int i = lo; i < hi; ++i) c += key_of(x.vals[i]) == K;
  unsigned total;
  const unsigned ex = block_exclusive_scan(c, total, x.sm.scratch);
  if (threadIdx.x == 0) x.sm.tie_count = total;
  x.cluster.sync();
  if (c == 0) return -1;
  u64 before = ex;
  for (int q = 0; q < x.rank; ++q) before += *x.cluster.map_shared_rank(&x.sm.tie_count, q);
  if (!(before < r && r <= before + c)) return -1;
  u64 want = r - before;
  for (int i = lo; i < hi; ++i)
    if (key_of(x.vals[i]) == K && --want == 0) return x.begin + i;
  return -1;
}

// Loads this CTA's part of the row, applies the row's adjustments, sanitises; returns this
// thread's statistics of the values (taken while loading when the row has no adjustments).
__device__ Stats load_row(const SampleParams& p, int row, Ctx& x, bool lse) {
  const float* src = p.logits + int64_t(row) * p.stride + x.begin;
  float* vals = x.vals;
  const bool adjust = p.adjust_offsets && p.adjust_offsets[row + 1] > p.adjust_offsets[row];
  Stats st = Stats::empty();
  auto take = [&](float v, int i) {  // i: index in this CTA's part
    if (adjust) return v;            // sanitised after the adjustments
    v = sanitize(v);
    st.add(v, x.begin + i, lse);
    return v;
  };
  int done = 0;
  if ((reinterpret_cast<uintptr_t>(src) & 15) == 0) {
    const int nv = x.n / 4;
    const float4* s4 = reinterpret_cast<const float4*>(src);
    float4* d4 = reinterpret_cast<float4*>(vals);
    for (int base = 0; base < nv; base += kThreads * kLoadBatch) {
      float4 r[kLoadBatch];
#pragma unroll
      for (int k = 0; k < kLoadBatch; ++k) {
        const int i = base + k * kThreads + threadIdx.x;
        if (i < nv) r[k] = __ldcs(s4 + i);
      }
#pragma unroll
      for (int k = 0; k < kLoadBatch; ++k) {
        const int i = base + k * kThreads + threadIdx.x;
        if (i < nv) {
          float4 v = r[k];
          v.x = take(v.x, 4 * i);
          v.y = take(v.y, 4 * i + 1);
          v.z = take(v.z, 4 * i + 2);
          v.w = take(v.w, 4 * i + 3);
          d4[i] = v;
        }
      }
    }
    done = nv * 4;
  }
  for (int i = done + threadIdx.x; i < x.n; i += kThreads) vals[i] = take(__ldcs(src + i), i);
  if (adjust) {
    __syncthreads();
    const int a0 = p.adjust_offsets[row], a1 = p.adjust_offsets[row + 1];
    for (int e = a0 + threadIdx.x; e < a1; e += kThreads) {
      const SampleAdjust a = p.adjust[e];
      const int j = a.id - x.begin;
      if (j >= 0 && j < x.n) vals[j] = adjust_value(vals[j], a);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < x.n; i += kThreads) {
      const float v = sanitize(vals[i]);
      vals[i] = v;
      st.add(v, x.begin + i, lse);
    }
  }
  __syncthreads();
  return st;
}

// The statistics of the whole row, the same in every CTA: block merge, one cluster barrier, then
// every CTA merges the C results in rank order.
__device__ Stats row_stats(Ctx& x, Stats st) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) st.merge(shfl_xor(st, o));
  if (lane == 0) x.sm.warp_stats[warp] = st;
  __syncthreads();
  if (warp == 0) {
    Stats w = lane < kWarps ? x.sm.warp_stats[lane] : Stats::empty();
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) w.merge(shfl_xor(w, o));
    if (lane == 0) x.sm.stats = w;
  }
  x.cluster.sync();
  if (threadIdx.x < x.C)
    x.sm.all_stats[threadIdx.x] = *x.cluster.map_shared_rank(&x.sm.stats, threadIdx.x);
  __syncthreads();
  Stats g = Stats::empty();
  for (int q = 0; q < x.C; ++q) g.merge(x.sm.all_stats[q]);
  return g;
}

// Sums slot[0] and slot[1] over the CTAs of the cluster (the same in every CTA); every CTA wrote
// its slots before the last cluster barrier. All loads in flight at once.
__device__ __forceinline__ void cluster_sum2(Ctx& x, const u64* slot, u64& a, u64& b) {
  a = b = 0;
  for (int q0 = 0; q0 < x.C; q0 += kGather) {
#pragma unroll
    for (int g = 0; g < kGather; ++g) {
      const int q = q0 + g;
      const u64* r = x.cluster.map_shared_rank(slot, q < x.C ? q : 0);
      const u64 va = r[0], vb = r[1];
      a += q < x.C ? va : 0ull;
      b += q < x.C ? vb : 0ull;
    }
  }
}

__global__ void __launch_bounds__(kThreads, 2) sample_kernel(const SampleParams p, int slice) {
  __shared__ Shared sm;
  extern __shared__ __align__(16) unsigned char dyn[];
  cg::cluster_group cluster = cg::this_cluster();
  const int C = int(cluster.num_blocks()), rank = int(cluster.block_rank());
  const int row = blockIdx.y;
  Ctx x{cluster, sm};
  x.C = C;
  x.rank = rank;
  x.list_buf = 0;
  x.begin = rank * slice;
  x.n = max(0, min(p.vocab - x.begin, slice));
  x.vals = reinterpret_cast<float*>(dyn);
  const SampleRow rp = p.row_params[row];
  const int tid = threadIdx.x;

  // 1. Load; the row's max (and its lowest id), smallest finite logit, greedy's sum of exp.
  const bool greedy = rp.temperature < 1e-5f;
  const Stats g = row_stats(x, load_row(p, row, x, greedy && p.logprob));
  const float M = g.max, mmin = g.min;

  if (M == -INFINITY) {  // nothing to draw from
    if (rank == 0 && tid == 0) {
      p.token[row] = 0;
      if (p.logprob) p.logprob[row] = -INFINITY;
    }
  } else if (greedy) {
    // The lowest id of the maximum; logprob under softmax at temperature 1 (g.s is relative to M).
    if (rank == 0 && tid == 0) {
      p.token[row] = g.arg;
      if (p.logprob) p.logprob[row] = float(-log(double(g.s)));
    }
  } else {
    RowCtx rc;
    rc.max = M;
    rc.inv_t = 1.f / rp.temperature;
    const float range = fminf(kXCut, __fmul_rn(__fsub_rn(M, mmin), rc.inv_t));
    rc.scale = range > 1e-30f ? float(kBins - 2) / range : 0.f;

    // 2. Level-0 histogram (the massless last bin is counted without atomics).
    for (int b = tid; b < kBins; b += kThreads) {
      sm.hist_cnt[b] = 0;
      sm.hist_mass[b] = 0;
    }
    __syncthreads();
    unsigned far = 0;
    for (int i = tid; i < x.n; i += kThreads) {
      const float v = x.vals[i];
      const int b = level0_bin(v, rc);
      if (b == kBins - 1) {
        ++far;
        continue;
      }
      atomicAdd(&sm.hist_cnt[b], 1u);
      const u64 m = mass_of(v, rc);
      if (m) add_mass(&sm.hist_mass[b], m);
    }
    far = block_reduce(far, Sum{}, 0u, sm.scratch);
    if (tid == 0) sm.hist_cnt[kBins - 1] = far;
    merge_cumulative<kBins>(x, sm.hist_cnt, sm.hist_mass);  // from here cumulative, all CTAs
    const u64 total_cnt = sm.hist_cnt[kBins - 1], total_mass = sm.hist_mass[kBins - 1];

    // 3-4. The cuts, as (tokens, mass) of a prefix.
    auto cut_of = [&](const Sel& s, u64& n, u64& m) {
      n = s.cnt_gt + s.r;
      m = s.mass_gt + (s.massless ? 0 : s.r * mass_of(value_of(s.key), rc));
    };
    u64 n_keep = total_cnt, m_keep = total_mass;
    if (rp.top_k > 0 && u64(rp.top_k) < total_cnt) {
      cut_of(select_position(x, rc, false, u64(rp.top_k)), n_keep, m_keep);
    }
    if (rp.top_p < 1.f) {
      double t = ceil(double(rp.top_p) * double(m_keep));
      const u64 T = t < 1.0 ? 1 : (t >= double(m_keep) ? m_keep : u64(t));
      u64 n, m;
      cut_of(select_position(x, rc, true, T), n, m);
      if (n < n_keep) n_keep = n, m_keep = m;
    }
    if (rp.min_p > 0.f) {
      const double ln_min = log(double(rp.min_p));
      u64 c = 0, m = 0;
      for (int i = tid; i < x.n; i += kThreads) {
        const float v = x.vals[i];
        if (double(__fsub_rn(v, M)) * double(rc.inv_t) >= ln_min) {
          ++c;
          m += mass_of(v, rc);
        }
      }
      c = block_reduce(c, Sum{}, u64(0), sm.scratch);
      m = block_reduce(m, Sum{}, u64(0), sm.scratch);
      if (tid == 0) {
        sm.minp[0] = c;
        sm.minp[1] = m;
      }
      cluster.sync();
      cluster_sum2(x, sm.minp, c, m);
      if (c == 0) c = 1, m = u64(kMassOne);  // min_p above 1: the top token (mass exactly 2^40)
      if (c < n_keep) n_keep = c, m_keep = m;
    }

    // 5. The draw.
    double u = rp.u;
    if (!(u >= 0.0)) u = 0.0;
    double t = floor(u * double(m_keep));
    const u64 T = t >= double(m_keep) ? m_keep : u64(t) + 1;
    const Sel s = select_position(x, rc, true, T);
    int id = s.id;  // known when the bin was ranked as a list; else find the r-th tie by id
    if (id < 0)
      id = resolve_tie(x, s.key, s.r);
    else if (rank != 0 || tid != 0)
      id = -1;
    if (id >= 0) {
      p.token[row] = id;
      if (p.logprob) {
        const double z = double(__fsub_rn(value_of(s.key), M)) * double(rc.inv_t);
        p.logprob[row] = float(z - log(double(m_keep) * 0x1p-40));
      }
    }
  }
  cluster.sync();  // no CTA leaves while another may still read its shared memory
}

}  // namespace kimi::cuda::sampling
