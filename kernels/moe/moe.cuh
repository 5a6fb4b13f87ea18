// MoE kernels (contracts in moe.h).
//
// moe_route_kernel: one warp per token; each lane keeps its best selection scores sorted in
//   registers and K rounds of warp arg-max over the lanes' heads (ties to the lower index) pick
//   the experts.
// moe_route_decode_kernel: decode steps' router logits + routing + permutation in one launch
//   (the last CTA to finish its logits does the rest), optionally with the block's RMSNorm.
// moe_count/scan/scatter: atomics per expert; a 1024-thread block scan gives offsets and tile
//   starts; the scatter claims rows with a per-expert cursor. Up to 4096 pairs (decode steps)
//   moe_permute_small_kernel does all three in one CTA.
// moe_gemm_kernel<BM, SWIGLU>: CTA = (row tile of one expert, 64 output columns), 4 warps, warp w
//   owns columns [16w, 16w + 16) of every BM row; WMMA 16×16×16 bf16 → fp32.
//   k steps of 32 staged through a 3-4 deep cp.async pipeline (zero-fill past the ends), so a
//   CTA keeps up to 48 KB of weight copies in flight.
//   SWIGLU: the B tile holds the 64 gate rows and the matching 64 up rows of W13, so the epilogue
//   computes SiLU(g)·u in fp32 before the single bf16 store.
// moe_unpermute_kernel: a CTA per (token, 128 columns), fp32 weighted sum of the token's K rows.
// moe_unpermute_norm_kernel: a cluster of 8 CTAs per token, the same sum plus the next block's
//   RMSNorm (sums of squares over the cluster's shared memory).
#pragma once

#include <cooperative_groups.h>
#include <mma.h>

#include <climits>

#include "moe/moe.h"
#include "moe/moe_route.cuh"
#include "async_copy.cuh"
#include "norm/norm.cuh"
#include "pdl.cuh"

namespace kimi::cuda::moe {

__global__ void __launch_bounds__(128) moe_route_kernel(MoeRouteParams p) {
  extern __shared__ float route_smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t = blockIdx.x * 4 + warp;
  if (t >= p.num_tokens) return;
  route_token(p, t, lane, p.correction_bias, route_smem + warp * p.num_experts);  // the warp's sigmoids
}

__global__ void moe_count_kernel(int64_t pairs, int E, const int* ids, int* counts) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pairs;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int e = ids[i];
    if (e >= 0 && e < E) atomicAdd(counts + e, 1);
  }
}

// One 1024-thread block; E <= 1024.
__global__ void __launch_bounds__(1024) moe_scan_kernel(int E, int block_m, const int* counts,
                                                         int* offsets, int* tile_start,
                                                         int* gemm_next) {
  __shared__ int a[1024], b[1024];
  const int e = threadIdx.x;
  const int c = e < E ? counts[e] : 0;
  a[e] = c;
  b[e] = (c + block_m - 1) / block_m;
  __syncthreads();
  for (int off = 1; off < 1024; off <<= 1) {  // inclusive Hillis-Steele scan
    const int va = e >= off ? a[e - off] : 0, vb = e >= off ? b[e - off] : 0;
    __syncthreads();
    a[e] += va;
    b[e] += vb;
    __syncthreads();
  }
  if (e < E) {
    offsets[e + 1] = a[e];
    tile_start[e + 1] = b[e];
  }
  if (e == 0) {
    offsets[0] = 0;
    tile_start[0] = 0;
    gemm_next[0] = gemm_next[1] = 0;
  }
}

__global__ void moe_scatter_kernel(int64_t pairs, int E, int K, const int* ids, const int* offsets,
                                   int* cursor, int* row_token, int* pair_row) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pairs;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int e = ids[i];
    if (e < 0 || e >= E) {
      pair_row[i] = -1;
      continue;
    }
    const int row = offsets[e] + atomicAdd(cursor + e, 1);
    row_token[row] = int(i / K);
    pair_row[i] = row;
  }
}

// The whole permutation in one 1024-thread CTA for decode-sized steps (pairs <= kSmallPermute):
// counts in shared memory, the same scan, then the scatter; one launch instead of a memset and
// three kernels. Writes the same workspace (counts, offsets, tile_start, row_token, pair_row;
// cursor ends equal to counts, as after the scatter).
constexpr int kSmallPermute = 4096;
// The body, for a 1024-thread CTA (also the tail of the fused decode routing kernel).
__device__ __forceinline__ void permute_small(int pairs, int E, int K, int block_m, const int* ids,
                                              MoePermuteView v) {
  __shared__ int cnt[1024], a[1024], b[1024], cur[1024];
  const int e = threadIdx.x;
  cnt[e] = 0;
  cur[e] = 0;
  __syncthreads();
  for (int i = e; i < pairs; i += 1024) {
    const int x = ids[i];
    if (x >= 0 && x < E) atomicAdd(cnt + x, 1);
  }
  __syncthreads();
  const int c = e < E ? cnt[e] : 0;
  a[e] = c;
  b[e] = (c + block_m - 1) / block_m;
  __syncthreads();
  for (int off = 1; off < 1024; off <<= 1) {  // inclusive Hillis-Steele scan
    const int va = e >= off ? a[e - off] : 0, vb = e >= off ? b[e - off] : 0;
    __syncthreads();
    a[e] += va;
    b[e] += vb;
    __syncthreads();
  }
  if (e < E) {
    v.counts[e] = c;
    v.cursor[e] = c;
    v.offsets[e + 1] = a[e];
    v.tile_start[e + 1] = b[e];
  }
  if (e == 0) {
    v.offsets[0] = 0;
    v.tile_start[0] = 0;
    v.gemm_next[0] = v.gemm_next[1] = 0;
  }
  for (int i = e; i < pairs; i += 1024) {
    const int x = ids[i];
    if (x < 0 || x >= E) {
      v.pair_row[i] = -1;
      continue;
    }
    const int row = a[x] - cnt[x] + atomicAdd(cur + x, 1);
    v.row_token[row] = i / K;
    v.pair_row[i] = row;
  }
}

__global__ void __launch_bounds__(1024) moe_permute_small_kernel(int pairs, int E, int K, int block_m,
                                                                 const int* ids, MoePermuteView v) {
  permute_small(pairs, E, K, block_m, ids, v);
}

// The permutation of a few pairs (pairs <= blockDim.x, E < blockDim.x; ids in shared memory)
// without a scan: every thread counts over the pair list. Rows of an expert follow pair order,
// so the result is deterministic. tiles: pairs ints of shared memory. Same outputs as
// permute_small.
__device__ __forceinline__ void permute_few(int pairs, int E, int K, int block_m, const int* ids,
                                            int* tiles, MoePermuteView v) {
  const int i = threadIdx.x;
  int x = -1, rank = 0;
  if (i < pairs) {
    x = ids[i];
    int total = 0;
    for (int j = 0; j < pairs; ++j) {
      const bool same = ids[j] == x;
      total += same;
      rank += same && j < i;
    }
    const bool valid = x >= 0 && x < E;
    tiles[i] = valid && rank == 0 ? (total + block_m - 1) / block_m : 0;  // on the first pair
  }
  __syncthreads();
  // Thread e: count, row offset and tile start of expert e (e = E: the totals).
  for (int e = i; e <= E; e += blockDim.x) {
    int below = 0, count = 0, tile = 0;
    for (int j = 0; j < pairs; ++j) {
      const int y = ids[j];
      const bool lower = y >= 0 && y < e;
      below += lower;
      tile += lower ? tiles[j] : 0;
      count += y == e;
    }
    if (e < E) {
      v.counts[e] = count;
      v.cursor[e] = count;
    }
    v.offsets[e] = below;
    v.tile_start[e] = tile;
  }
  if (i == 0) v.gemm_next[0] = v.gemm_next[1] = 0;
  if (i < pairs) {
    if (x < 0 || x >= E) {
      v.pair_row[i] = -1;
    } else {
      int row = rank;
      for (int j = 0; j < pairs; ++j) row += ids[j] >= 0 && ids[j] < x;
      v.row_token[row] = i / K;
      v.pair_row[i] = row;
    }
  }
}

// Decode-sized steps (T <= kRouteDecodeMaxTokens): router logits, routing and permutation in
// one launch, built to have few dependent memory round trips (the kernel is latency-bound).
// CTA c computes the logits of experts 4c..4c+3 for every token, 8 warps per expert splitting
// k; each thread loads its router (and norm weight) pieces into registers before waiting for
// the previous kernel (constant data: that DRAM latency overlaps it). Partial sums are added in
// a fixed order. The CTA then publishes its logits and takes a ticket; the CTA with the last
// ticket routes every token (route_tokens_cta) and permutes (permute_few), then resets the
// ticket for the next launch. With the RMSNorm fused in, the warps of expert slot 0 also sum the
// squares of the x pieces they load for the dot products (they cover every k once), the norm
// weight multiplies the router pieces and 1/rms the sums, and each CTA writes its share of the
// bf16 normed rows after taking its ticket (off the routing's chain).
constexpr int kRouteDecodeMaxTokens = 8;
constexpr int kRouteExpertsPerCta = 4;
constexpr int kRouteMaxPairs = kRouteDecodeMaxTokens * 33;  // top_k <= 32, + the shared expert
__device__ __forceinline__ void route_stamp(unsigned long long* stamps, int i, bool who) {
  if (stamps && who && threadIdx.x == 0) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    stamps[i] = t;
  }
}
__global__ void __launch_bounds__(1024) moe_route_decode_kernel(MoeRouteDecodeParams p,
                                                                MoePermuteView v) {
  extern __shared__ float sel_smem[];  // [3][T][E] selection scores, sigmoids, ranks (routing CTA)
  __shared__ float part[kRouteExpertsPerCta][kRouteWarpsPerExpert][kRouteDecodeMaxTokens];
  __shared__ float ss_part[kRouteWarpsPerExpert][kRouteDecodeMaxTokens];
  __shared__ float inv_rms[kRouteDecodeMaxTokens];
  __shared__ int pair_ids[kRouteMaxPairs], pair_tiles[kRouteMaxPairs];
  __shared__ int chosen_e[kRouteDecodeMaxTokens * 32];
  __shared__ float chosen_s[kRouteDecodeMaxTokens * 32];
  __shared__ bool last;
  const MoeRouteParams& r = p.route;
  const int T = r.num_tokens, E = r.num_experts, H = p.hidden, n4 = H / 4;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool norm = p.norm_weight != nullptr;
  const int ew = warp / kRouteWarpsPerExpert, wk = warp % kRouteWarpsPerExpert;
  const int e = blockIdx.x * kRouteExpertsPerCta + ew;
  const int k4_0 = wk * 32 + lane;
  const float4* w = reinterpret_cast<const float4*>(p.router + int64_t(e < E ? e : 0) * H);
  const float4* nw = reinterpret_cast<const float4*>(p.norm_weight);
  const bool cta0 = blockIdx.x == 0;
  route_stamp(p.stamps, 0, cta0);
  float4 wreg[kRouteRegK4];
#pragma unroll
  for (int j = 0; j < kRouteRegK4; ++j) {
    const int k4 = k4_0 + j * kRouteK4Step;
    wreg[j] = e < E && k4 < n4 ? __ldg(w + k4) : make_float4(0.f, 0.f, 0.f, 0.f);
    if (norm && e < E && k4 < n4) {
      const float4 n = __ldg(nw + k4);
      wreg[j] = make_float4(wreg[j].x * n.x, wreg[j].y * n.y, wreg[j].z * n.z, wreg[j].w * n.w);
    }
  }
  pdl_launch_dependents();  // PDL (launch.h): x, logits and the workspace come after the wait
  pdl_wait();
  route_stamp(p.stamps, 1, cta0);
  // The dot products; the 8 warps of expert slot 0 see every k once, so they also sum the
  // squares for the norm from the same loads.
  const bool sums = norm && ew == 0;
  float acc[kRouteDecodeMaxTokens], ss[kRouteDecodeMaxTokens];
#pragma unroll
  for (int t = 0; t < kRouteDecodeMaxTokens; ++t) acc[t] = ss[t] = 0.f;
  if (e < E || sums) {
#pragma unroll
    for (int j = 0; j < kRouteRegK4; ++j) {
      const int k4 = k4_0 + j * kRouteK4Step;
      if (k4 < n4) {
#pragma unroll
        for (int t = 0; t < kRouteDecodeMaxTokens; ++t) {
          if (t >= T) break;
          const float4 xv = __ldcg(reinterpret_cast<const float4*>(p.x + int64_t(t) * H) + k4);
          acc[t] += wreg[j].x * xv.x + wreg[j].y * xv.y + wreg[j].z * xv.z + wreg[j].w * xv.w;
          ss[t] += xv.x * xv.x + xv.y * xv.y + xv.z * xv.z + xv.w * xv.w;
        }
      }
    }
    for (int k4 = k4_0 + kRouteRegK4 * kRouteK4Step; k4 < n4; k4 += kRouteK4Step) {  // H > 4096
      float4 wv = __ldg(w + k4);
      if (norm) {
        const float4 n = __ldg(nw + k4);
        wv = make_float4(wv.x * n.x, wv.y * n.y, wv.z * n.z, wv.w * n.w);
      }
#pragma unroll
      for (int t = 0; t < kRouteDecodeMaxTokens; ++t) {
        if (t >= T) break;
        const float4 xv = __ldcg(reinterpret_cast<const float4*>(p.x + int64_t(t) * H) + k4);
        acc[t] += wv.x * xv.x + wv.y * xv.y + wv.z * xv.z + wv.w * xv.w;
        ss[t] += xv.x * xv.x + xv.y * xv.y + xv.z * xv.z + xv.w * xv.w;
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kRouteDecodeMaxTokens; ++t) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
      if (sums) ss[t] += __shfl_xor_sync(0xffffffffu, ss[t], o);
    }
    if (lane == 0) {
      part[ew][wk][t] = acc[t];
      if (sums) ss_part[wk][t] = ss[t];
    }
  }
  __syncthreads();
  if (norm && threadIdx.x < T) {
    float sq = 0.f;
    for (int j = 0; j < kRouteWarpsPerExpert; ++j) sq += ss_part[j][threadIdx.x];
    inv_rms[threadIdx.x] = rsqrtf(sq / float(H) + p.eps);
  }
  __syncthreads();
  if (threadIdx.x < kRouteExpertsPerCta * kRouteDecodeMaxTokens) {
    const int ee = threadIdx.x / kRouteDecodeMaxTokens, t = threadIdx.x % kRouteDecodeMaxTokens;
    const int eg = blockIdx.x * kRouteExpertsPerCta + ee;
    if (eg < E && t < T) {
      float sum = 0.f;
      for (int j = 0; j < kRouteWarpsPerExpert; ++j) sum += part[ee][j][t];
      if (norm) sum *= inv_rms[t];
      const_cast<float*>(r.logits)[int64_t(t) * E + eg] = sum;  // this launch produces them
    }
    __threadfence();  // the logits reach L2 before the ticket
  }
  __syncthreads();
  route_stamp(p.stamps, 2, cta0);
  if (threadIdx.x == 0) last = atomicAdd(p.ticket, 1) == int(gridDim.x) - 1;
  // This CTA's slice of the experts' bf16 input, off the routing's critical path: the routing
  // CTA writes it last.
  auto write_normed = [&]() {
    if (!norm) return;
    const int cols = (H + gridDim.x - 1) / gridDim.x, d0 = blockIdx.x * cols;
    for (int i = threadIdx.x; i < T * cols; i += blockDim.x) {
      const int t = i / cols, d = d0 + i % cols;
      if (d < H)
        p.normed[int64_t(t) * H + d] =
            __float2bfloat16(__ldcg(p.x + int64_t(t) * H + d) * inv_rms[t] * p.norm_weight[d]);
    }
  };
  __syncthreads();
  if (!last) {
    write_normed();
    route_stamp(p.stamps, 3, cta0);
    return;
  }
  __threadfence();
  route_stamp(p.stamps, 4, true);
  route_tokens_cta(r, sel_smem, sel_smem + T * E, reinterpret_cast<int*>(sel_smem + 2 * T * E),
                   chosen_e, chosen_s, pair_ids);
  __syncthreads();
  route_stamp(p.stamps, 5, true);
  const int stride = r.top_k + (r.shared_expert >= 0);
  const int El = r.local_experts ? r.local_experts : E;
  permute_few(T * stride, El + (r.shared_expert >= 0), stride, p.block_m, pair_ids, pair_tiles, v);
  __syncthreads();
  route_stamp(p.stamps, 6, true);
  if (threadIdx.x == 0) *p.ticket = 0;
  write_normed();
}

constexpr int kBN = 64, kBK = 32, kPad = 8;

// Pipeline depth: enough 16-byte copies in flight per SM to stream expert weights at decode
// (where a CTA has few rows and is purely bandwidth-bound), within 48 KB of static smem.
template <int BM>
__host__ __device__ constexpr int moe_stages() {
  return BM == 16 ? 4 : 3;
}

template <int BM, bool SWIGLU>
__global__ void __launch_bounds__(128) moe_gemm_kernel(MoeGemmParams p, MoePermuteView v) {
  using namespace nvcuda;
  constexpr int STAGES = moe_stages<BM>();
  constexpr int NB = SWIGLU ? 2 * kBN : kBN;          // B rows staged per step
  constexpr int A_CH = BM * kBK / 8, B_CH = NB * kBK / 8;  // 16-byte chunks per tile
  constexpr int A_IT = (A_CH + 127) / 128, B_IT = B_CH / 128;
  constexpr int LDS = kBK + kPad;
  constexpr int STAGE_ELEMS = (BM + NB) * LDS;
  constexpr int AB_BYTES = STAGES * STAGE_ELEMS * 2;
  constexpr int C_BYTES = (SWIGLU ? 2 : 1) * BM * kBN * 4;
  static_assert(AB_BYTES <= 48 * 1024, "static shared memory");
  __shared__ __align__(128) unsigned char smem[AB_BYTES > C_BYTES ? AB_BYTES : C_BYTES];
  bf16* stage0 = reinterpret_cast<bf16*>(smem);

  const int E = p.num_experts;
  const int tile = blockIdx.x;
  if (tile >= v.tile_start[E]) return;
  int lo = 0, hi = E - 1;  // largest e with tile_start[e] <= tile
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (v.tile_start[mid] <= tile) lo = mid;
    else hi = mid - 1;
  }
  const int e = lo;
  const int m0 = v.offsets[e] + (tile - v.tile_start[e]) * BM, m_end = v.offsets[e + 1];
  const int n0 = blockIdx.y * kBN;
  const int N = SWIGLU ? p.inter : p.hidden, Kd = SWIGLU ? p.hidden : p.inter;
  const bf16* W = SWIGLU ? p.w13 + int64_t(e) * 2 * p.inter * p.hidden
                         : p.w2 + int64_t(e) * p.hidden * p.inter;

  const int tid = threadIdx.x;
  // Source rows and smem offsets this thread copies (fixed over k).
  const bf16* a_src[A_IT];
  int a_dst[A_IT], a_kc[A_IT];
  bool a_on[A_IT];
#pragma unroll
  for (int i = 0; i < A_IT; ++i) {
    const int c = tid + 128 * i, r = c / (kBK / 8);
    a_kc[i] = (c % (kBK / 8)) * 8;
    a_dst[i] = r * LDS + a_kc[i];
    a_on[i] = c < A_CH;
    const int row = m0 + r;
    a_src[i] = nullptr;
    if (a_on[i] && row < m_end)
      a_src[i] = SWIGLU ? p.x + int64_t(v.row_token[row]) * p.hidden : p.act + int64_t(row) * p.inter;
  }
  const bf16* b_src[B_IT];
  int b_dst[B_IT], b_kc[B_IT];
#pragma unroll
  for (int i = 0; i < B_IT; ++i) {
    const int c = tid + 128 * i, r = c / (kBK / 8);
    b_kc[i] = (c % (kBK / 8)) * 8;
    b_dst[i] = BM * LDS + r * LDS + b_kc[i];
    const int n = n0 + (r % kBN);
    const int wrow = SWIGLU ? (r < kBN ? n : p.inter + n) : n;
    b_src[i] = n < N ? W + int64_t(wrow) * Kd : nullptr;
  }
  const int KT = (Kd + kBK - 1) / kBK;
  auto issue = [&](int kt) {  // copies of k tile kt into its stage (zero-filled past the ends)
    bf16* st = stage0 + (kt % STAGES) * STAGE_ELEMS;
    const int k0 = kt * kBK;
#pragma unroll
    for (int i = 0; i < A_IT; ++i) {
      if (!a_on[i]) continue;
      const int k = k0 + a_kc[i];
      const bool ok = a_src[i] && k < Kd;
      cp_async16(st + a_dst[i], ok ? a_src[i] + k : p.x, ok);
    }
#pragma unroll
    for (int i = 0; i < B_IT; ++i) {
      const int k = k0 + b_kc[i];
      const bool ok = b_src[i] && k < Kd;
      cp_async16(st + b_dst[i], ok ? b_src[i] + k : W, ok);
    }
  };

  const int warp = tid / 32;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc_g[BM / 16], acc_u[SWIGLU ? BM / 16 : 1];
#pragma unroll
  for (int i = 0; i < BM / 16; ++i) wmma::fill_fragment(acc_g[i], 0.f);
#pragma unroll
  for (int i = 0; i < (SWIGLU ? BM / 16 : 1); ++i) wmma::fill_fragment(acc_u[i], 0.f);

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KT) issue(s);
    cp_async_commit();
  }
  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // tile kt landed for every thread; stage (kt - 1) % STAGES is free again
    if (kt + STAGES - 1 < KT) issue(kt + STAGES - 1);
    cp_async_commit();
    const bf16* As = stage0 + (kt % STAGES) * STAGE_ELEMS;
    const bf16* Bs = As + BM * LDS;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> bg, bu;
      wmma::load_matrix_sync(bg, Bs + (warp * 16) * LDS + kk, LDS);
      if constexpr (SWIGLU) wmma::load_matrix_sync(bu, Bs + (kBN + warp * 16) * LDS + kk, LDS);
#pragma unroll
      for (int i = 0; i < BM / 16; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
        wmma::load_matrix_sync(a, As + (i * 16) * LDS + kk, LDS);
        wmma::mma_sync(acc_g[i], a, bg, acc_g[i]);
        if constexpr (SWIGLU) wmma::mma_sync(acc_u[i], a, bu, acc_u[i]);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the stages: the epilogue reuses the memory
  float* Cs = reinterpret_cast<float*>(smem);  // [BM][64] (gate or plain), then [BM][64] up
#pragma unroll
  for (int i = 0; i < BM / 16; ++i) {
    wmma::store_matrix_sync(Cs + i * 16 * kBN + warp * 16, acc_g[i], kBN, wmma::mem_row_major);
    if constexpr (SWIGLU)
      wmma::store_matrix_sync(Cs + BM * kBN + i * 16 * kBN + warp * 16, acc_u[i], kBN,
                              wmma::mem_row_major);
  }
  __syncthreads();
  for (int idx = tid; idx < BM * kBN; idx += 128) {
    const int r = m0 + idx / kBN, n = n0 + idx % kBN;
    if (r >= m_end || n >= N) continue;
    if constexpr (SWIGLU) {
      const float g = Cs[idx], u = Cs[BM * kBN + idx];
      p.act[int64_t(r) * p.inter + n] = __float2bfloat16(g / (1.f + __expf(-g)) * u);
    } else {
      p.y[int64_t(r) * p.hidden + n] = Cs[idx];
    }
  }
}

constexpr int kUnpermuteThreads = 128;

// Grid (tokens, column blocks of 128): a decode step's token spreads over 18 CTAs at hidden
// 2304, and each thread's K loads are independent (rows and weights staged in shared memory).
__global__ void __launch_bounds__(kUnpermuteThreads) moe_unpermute_kernel(MoeUnpermuteParams p,
                                                                          const int* pair_row) {
  pdl_launch_dependents();  // PDL (launch.h): everything below may depend on the previous kernel
  pdl_wait();
  const int t = blockIdx.x, K = p.top_k;
  __shared__ int rows[32];
  __shared__ float w[32];
  if (threadIdx.x < K) {
    rows[threadIdx.x] = pair_row[int64_t(t) * K + threadIdx.x];
    w[threadIdx.x] = p.weights[int64_t(t) * K + threadIdx.x];
  }
  __syncthreads();
  const int d = blockIdx.y * kUnpermuteThreads + threadIdx.x;
  if (d >= p.hidden) return;
  float acc = 0.f;
#pragma unroll 8
  for (int k = 0; k < K; ++k)
    if (rows[k] >= 0) acc += w[k] * p.y[int64_t(rows[k]) * p.hidden + d];
  float* o = p.out + int64_t(t) * p.hidden + d;
  *o = p.accumulate ? *o + acc : acc;
}

// out[t] += Σ_k w · y[row_k], then normed[t] = bf16(RMSNorm(out[t]) · norm_weight): a cluster of
// kUnpermuteNormCtas CTAs per token, CTA r owning a contiguous column slice (one column per
// thread); the slices' sums of squares meet through distributed shared memory in rank order.
constexpr int kUnpermuteNormCtas = 8;
__global__ void __launch_bounds__(1024) moe_unpermute_norm_kernel(MoeUnpermuteParams p,
                                                                  const int* pair_row) {
  pdl_launch_dependents();  // PDL (launch.h): everything below may depend on the previous kernel
  pdl_wait();
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  const int t = blockIdx.y, K = p.top_k, H = p.hidden, tid = threadIdx.x;
  const int cols = (H + kUnpermuteNormCtas - 1) / kUnpermuteNormCtas;
  const int d = int(cluster.block_rank()) * cols + tid;
  const bool mine = tid < cols && d < H;
  __shared__ int rows[32];
  __shared__ float w[32];
  __shared__ float warp_ss[32];
  __shared__ float cta_ss;
  if (tid < K) {
    rows[tid] = pair_row[int64_t(t) * K + tid];
    w[tid] = p.weights[int64_t(t) * K + tid];
  }
  __syncthreads();
  float v = 0.f;
  if (mine) {
    float acc = 0.f;
#pragma unroll 8
    for (int k = 0; k < K; ++k)
      if (rows[k] >= 0) acc += w[k] * p.y[int64_t(rows[k]) * H + d];
    float* o = p.out + int64_t(t) * H + d;
    v = *o + acc;
    *o = v;
  }
  float ss = v * v;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (tid % 32 == 0) warp_ss[tid / 32] = ss;
  __syncthreads();
  if (tid == 0) {
    float c = 0.f;
    for (int i = 0; i < int(blockDim.x) / 32; ++i) c += warp_ss[i];
    cta_ss = c;
  }
  cluster.sync();
  float total = 0.f;
  for (int r = 0; r < kUnpermuteNormCtas; ++r) total += *cluster.map_shared_rank(&cta_ss, r);
  cluster.sync();  // no CTA leaves while a peer may still read its cta_ss
  const float inv = rsqrtf(total / float(H) + p.eps);
  if (mine) p.normed[int64_t(t) * H + d] = __float2bfloat16(v * inv * p.norm_weight[d]);
}

}  // namespace kimi::cuda::moe
