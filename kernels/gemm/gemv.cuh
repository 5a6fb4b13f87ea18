// Small-M dense GEMM kernels (contract in gemv.h, semantics of GemmArgs in gemm.h):
//   C[b][m, n] = alpha · Σ_k A[b][m, k] · op(B[b])[k, n] + beta · C[b][m, n],   m < M ≤ 16
// fp32 accumulation; with beta = 0, C is not read.
//
// gemv_mma_kernel (B [N, K] bf16): grid (ceil(N / 32), batch, splits), cluster (1, 1, splits),
//   256 threads = 8 warps.
//   CTA = 32 weight rows (output columns n0..n0+31) × one k range of split_chunks chunks of 32.
//   Weight streaming, warp k split and the mma k permutation: stream_mma.cuh. Each warp keeps U
//   chunks in flight: a chunk's registers are refilled with the warp's chunk U·8 further on as
//   soon as its mma has used them. The input rows are the mma B operand (8 rows per n tile,
//   NT = 1 for M ≤ 8, else 2), loaded per chunk with the same permutation straight from L2 (tiny
//   and shared by every CTA; see gv_load_input_chunk). The 8 warps' partial sums meet in shared
//   memory in warp order. With splits > 1 the splits of a tile are one thread-block cluster
//   (≤ 8 CTAs along z): ranks 1.. push their sums into rank 0's shared memory (st.async,
//   counted on an mbarrier) and exit; rank 0 adds them in split order and writes C.
//   FOLD (hi/lo split input, GemvOptions::fold_rows = fold): the 2·fold rows are hi then lo; the
//   epilogue stages the sums in shared memory and writes C row m = row m + row m + fold.
//   Launched as a programmatic dependent launch: the first U chunks of weights (constant) are
//   read before griddepcontrol.wait, so they stream while the previous kernel drains; x and C
//   only after it (C, when beta ≠ 0, before the reductions of the epilogue).
// gemv_f32_kernel (in_f32): grid (ceil(N / 2), batch), 256 threads: warp w = weight row w / 4 of
//   the CTA × k quarter w % 4 (16-byte pieces p ≡ lane + 32 · quarter mod 128); true fp32 FMA;
//   lanes reduce by xor butterfly, quarters add in order.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "async_copy.cuh"
#include "gemm/gemm.h"
#include "gemm/gemv.h"
#include "gemm/stream_mma.cuh"
#include "pdl.cuh"

namespace kimi::cuda {

constexpr int kGvTileCols = 32;    // output columns per CTA of the mma kernel
constexpr int kF32RowsPerCta = 2;  // weight rows per CTA of the fp32 kernel
constexpr int kF32Quarters = kGvWarps / kF32RowsPerCta;

// The old value of output element (m, n), read when beta ≠ 0 (from L2: see gv_load_input_chunk).
template <bool OUT_F32>
__device__ __forceinline__ float gv_load_c(const GemmArgs& a, int b, int m, int n) {
  const int64_t off = int64_t(b) * a.stride_c + int64_t(m) * a.ldc + n;
  if constexpr (OUT_F32)
    return __ldcg(static_cast<const float*>(a.C) + off);
  else
    return __bfloat162float(__ldcg(static_cast<const bf16*>(a.C) + off));
}

// c = alpha · s + beta · c_old for one output element.
template <bool OUT_F32>
__device__ __forceinline__ void gv_store(const GemmArgs& a, int b, int m, int n, float s,
                                         float c_old) {
  const int64_t off = int64_t(b) * a.stride_c + int64_t(m) * a.ldc + n;
  float v = a.alpha * s;
  if (a.beta != 0.f) v = fmaf(a.beta, c_old, v);
  if constexpr (OUT_F32)
    static_cast<float*>(a.C)[off] = v;
  else
    static_cast<bf16*>(a.C)[off] = __float2bfloat16(v);
}

// Item i = [rg][nt][j][l] of a CTA's outputs: D element j of lane l = (g, t) in row group rg,
// n tile nt, i.e. column n0 + 16·rg + nl with nl = g + 8·(j / 2), input row m = 8·nt + 2t + j % 2.
template <int NT>
__device__ __forceinline__ void gv_item(int i, int& m, int& nl, int& rg) {
  const int l = i % 32, j = (i / 32) % 4, nt = (i / 128) % NT;
  rg = i / (128 * NT);
  m = 8 * nt + 2 * (l % 4) + j % 2;
  nl = l / 4 + 8 * (j / 2);
}

// The input pieces of chunk c (same k as gv_load_weight_chunk), per n tile. From L2 (.cg): the
// previous kernel wrote them while this grid was already resident, so no non-coherent or L1
// path may see them.
template <int NT>
__device__ __forceinline__ void gv_load_input_chunk(uint4 (&xv)[NT], const bf16* const (&xrow)[NT],
                                                    const bool (&xok)[NT], int c, int k_end,
                                                    int t) {
  const int k = c * kGvChunk + 8 * t;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
    xv[nt] = xok[nt] && k < k_end ? __ldcg(reinterpret_cast<const uint4*>(xrow[nt] + k))
                                  : make_uint4(0, 0, 0, 0);
}

// The GEMMs of a grouped launch (run_gemv_group): count 0 = the kernel's GemmArgs alone.
struct GemvGroup {
  int count = 0;
  int tile_end[kGemvMaxGroup] = {};  // cumulative 32-column tiles
  const bf16* B[kGemvMaxGroup] = {};
  void* C[kGemvMaxGroup] = {};
  int N[kGemvMaxGroup] = {}, ldb[kGemvMaxGroup] = {}, ldc[kGemvMaxGroup] = {};
};

// NT: n tiles of 8 input rows; U: k chunks per warp in flight.
template <int NT, int U, bool OUT_F32, bool FOLD>
__global__ void __launch_bounds__(kGvThreads, 2)
    gemv_mma_kernel(GemmArgs a, int split_chunks, GemvGroup group, int fold) {
  static_assert(NT == 1 || NT == 2, "n tiles");
  constexpr int kItems = 2 * NT * 4 * 32;  // outputs of a CTA: [rg][nt][j][lane]
  __shared__ float red[kGvWarps][kItems];
  __shared__ float recv[kGemvMaxSplits - 1][kItems];  // rank 0: splits 1.. sums, by split
  __shared__ uint64_t recv_bar;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  int tile = blockIdx.x;
  if (group.count > 0) {  // this CTA's GEMM of the group
    int begin = 0, local = -1;
#pragma unroll
    for (int s = 0; s < kGemvMaxGroup; ++s) {
      if (s < group.count && local < 0 && tile < group.tile_end[s]) {
        a.B = group.B[s];
        a.C = group.C[s];
        a.N = group.N[s];
        a.ldb = group.ldb[s];
        a.ldc = group.ldc[s];
        local = tile - begin;
      }
      if (s < group.count) begin = group.tile_end[s];
    }
    tile = local;
  }
  const int n0 = tile * kGvTileCols, b = blockIdx.y, split = blockIdx.z;
  const int splits = gridDim.z;
  const int M = a.M, N = a.N;
  const bf16* W = a.B + int64_t(b) * a.stride_b;
  const bf16* X = a.A + int64_t(b) * a.stride_a;
  const int c_begin = split * split_chunks;
  const int k_end = min(a.K, (c_begin + split_chunks) * kGvChunk);
  const int c_end = (k_end + kGvChunk - 1) / kGvChunk;

  const bf16* wrow[2][2];
  bool wok[2][2];
#pragma unroll
  for (int rg = 0; rg < 2; ++rg)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int n = n0 + 16 * rg + g + 8 * h;
      wok[rg][h] = n < N;
      wrow[rg][h] = W + int64_t(wok[rg][h] ? n : 0) * a.ldb;
    }
  const bf16* xrow[NT];
  bool xok[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int m = 8 * nt + g;
    xok[nt] = m < M;
    xrow[nt] = X + int64_t(xok[nt] ? m : 0) * a.lda;
  }

  // k splits: rank 0 receives the other splits' sums (st.async into recv, counted on recv_bar).
  // The cluster barrier's arrive here and wait before the first remote store order rank 0's
  // mbarrier init before them, without a stall: the wait comes after the k loop.
  if (splits > 1) {
    if (split == 0 && tid == 0) {
      mbar_init(&recv_bar, 1);
      fence_mbar_init();
      mbar_arrive_expect_tx(&recv_bar, (splits - 1) * kItems * 4);
    }
    cluster_arrive_release();
  }

  float acc[2][NT][4];
#pragma unroll
  for (int rg = 0; rg < 2; ++rg)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[rg][nt][j] = 0.f;
  // Slot u holds chunk c0 + 8u + 8U·step of this warp; it is refilled right after its mma, so
  // each warp keeps U chunks in flight to the end of its range (against refilling all U after
  // the last one's mma: KDA qkv −4%, MLA q −1%, one-batch shapes +0.02-0.07 us; perf-log
  // session 8).
  uint4 wv[U][2][2], xv[U][NT];
  const int c0 = c_begin + warp;
  gv_load_weights<U>(wv, wrow, wok, c0, k_end, t);  // loads nothing past k_end
  pdl_launch_dependents();
  pdl_wait();
#pragma unroll
  for (int u = 0; u < U; ++u)
    gv_load_input_chunk<NT>(xv[u], xrow, xok, c0 + kGvWarps * u, k_end, t);
  for (int c = c0; c < c_end; c += kGvWarps * U) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int cu = c + kGvWarps * u;
      if (cu >= c_end) break;  // warp-uniform
      gv_mma_step<0, NT>(acc, wv[u], xv[u], NT > 1);
      gv_mma_step<1, NT>(acc, wv[u], xv[u], NT > 1);
      const int next = cu + kGvWarps * U;
      if (next < c_end) {
        gv_load_weight_chunk(wv[u], wrow, wok, next, k_end, t);
        gv_load_input_chunk<NT>(xv[u], xrow, xok, next, k_end, t);
      }
    }
  }

  // The old C of the outputs this CTA stores (rank 0 only): its latency overlaps the reductions.
  float c_old[kItems / kGvThreads];
#pragma unroll
  for (int q = 0; q < kItems / kGvThreads; ++q) {
    int m, nl, rg;
    gv_item<NT>(tid + q * kGvThreads, m, nl, rg);
    const int n = n0 + 16 * rg + nl;
    const bool stores = split == 0 && (FOLD ? m < fold : m < M) && n < N;
    c_old[q] = stores && a.beta != 0.f ? gv_load_c<OUT_F32>(a, b, m, n) : 0.f;
  }
#pragma unroll
  for (int rg = 0; rg < 2; ++rg)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 4; ++j) red[warp][((rg * NT + nt) * 4 + j) * 32 + lane] = acc[rg][nt][j];
  __syncthreads();

  float sums[kItems / kGvThreads];  // item tid + q·256 (gv_item)
#pragma unroll
  for (int q = 0; q < kItems / kGvThreads; ++q) {
    const int i = tid + q * kGvThreads;
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kGvWarps; ++w) s += red[w][i];
    sums[q] = s;
  }
  if (splits > 1) {          // the k splits of a tile form one cluster: rank r = split r
    cluster_wait_acquire();  // rank 0's recv_bar is initialised
    if (split > 0) {
      const unsigned bar = cluster_map(&recv_bar, 0);
#pragma unroll
      for (int q = 0; q < kItems / kGvThreads; ++q) {
        const int i = tid + q * kGvThreads;
        st_async_f32(cluster_map(&recv[split - 1][i], 0), sums[q], bar);
      }
      return;
    }
    mbar_wait_cluster(&recv_bar, 0);
#pragma unroll
    for (int q = 0; q < kItems / kGvThreads; ++q) {  // split order
      const int i = tid + q * kGvThreads;
      float s = sums[q];
      for (int r = 1; r < splits; ++r) s += recv[r - 1][i];
      sums[q] = s;
    }
  }
  if constexpr (FOLD) {       // C row m = row m (hi) + row m + fold (lo), through shared memory
    float* fin = &red[0][0];  // every warp has summed red: reused
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kItems / kGvThreads; ++q) fin[tid + q * kGvThreads] = sums[q];
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kItems / kGvThreads; ++q) {
      int m, nl, rg;
      gv_item<NT>(tid + q * kGvThreads, m, nl, rg);
      const int n = n0 + 16 * rg + nl, m2 = m + fold;
      if (m >= fold || n >= N) continue;
      const int i2 =
          ((rg * NT + m2 / 8) * 4 + (nl / 8) * 2 + m2 % 2) * 32 + (nl % 8) * 4 + (m2 % 8) / 2;
      gv_store<OUT_F32>(a, b, m, n, sums[q] + fin[i2], c_old[q]);
    }
  } else {
#pragma unroll
    for (int q = 0; q < kItems / kGvThreads; ++q) {
      int m, nl, rg;
      gv_item<NT>(tid + q * kGvThreads, m, nl, rg);
      const int n = n0 + 16 * rg + nl;
      if (m < M && n < N) gv_store<OUT_F32>(a, b, m, n, sums[q], c_old[q]);
    }
  }
}

// fp32 A and B (B [N, K]), fp32 out, M ≤ kGemvMaxRows.
template <int U>
__global__ void __launch_bounds__(kGvThreads) gemv_f32_kernel(GemmArgs a) {
  constexpr int kRows = 16;
  __shared__ float red[kGvWarps][kRows];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int row = warp / kF32Quarters, quarter = warp % kF32Quarters;
  const int n = blockIdx.x * kF32RowsPerCta + row, b = blockIdx.y, M = a.M;
  const int pieces = a.K / 4;
  const float* W = reinterpret_cast<const float*>(a.B) + int64_t(b) * a.stride_b +
                   int64_t(n < a.N ? n : 0) * a.ldb;
  const float* X = reinterpret_cast<const float*>(a.A) + int64_t(b) * a.stride_a;
  constexpr int kStep = 32 * kF32Quarters;  // pieces per step of the 4 quarters of a row

  float acc[kRows];
#pragma unroll
  for (int m = 0; m < kRows; ++m) acc[m] = 0.f;
  // Launched plainly (its input loads use the read-only path), but lets a following small-M
  // launch start early.
  pdl_launch_dependents();
  if (n < a.N) {
    for (int p0 = quarter * 32 + lane; p0 < pieces; p0 += kStep * U) {
      uint4 wv[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int p = p0 + kStep * u;
        wv[u] =
            ldg_stream16(reinterpret_cast<const bf16*>(W + 4 * (p < pieces ? p : 0)), p < pieces);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int p = p0 + kStep * u;
        if (p >= pieces) break;
#pragma unroll
        for (int m = 0; m < kRows; ++m) {
          if (m >= M) break;
          const float4 x = __ldg(reinterpret_cast<const float4*>(X + int64_t(m) * a.lda) + p);
          float s = acc[m];
          s = fmaf(x.x, __uint_as_float(wv[u].x), s);
          s = fmaf(x.y, __uint_as_float(wv[u].y), s);
          s = fmaf(x.z, __uint_as_float(wv[u].z), s);
          s = fmaf(x.w, __uint_as_float(wv[u].w), s);
          acc[m] = s;
        }
      }
    }
  }
#pragma unroll
  for (int m = 0; m < kRows; ++m) {
    if (m >= M) break;
    float s = acc[m];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) red[warp][m] = s;
  }
  __syncthreads();
  if (tid < kF32RowsPerCta * M) {
    const int r = tid / M, m = tid % M, col = blockIdx.x * kF32RowsPerCta + r;
    float s = 0.f;
#pragma unroll
    for (int q = 0; q < kF32Quarters; ++q) s += red[r * kF32Quarters + q][m];
    if (col < a.N)
      gv_store<true>(a, b, m, col, s, a.beta != 0.f ? gv_load_c<true>(a, b, m, col) : 0.f);
  }
}

}  // namespace kimi::cuda
