// Grouped expert GEMMs for decode-sized batches (contracts in moe.h): bandwidth-bound, each
// expert weight byte is read once per row tile, so time ≈ weight bytes of the touched experts /
// DRAM bandwidth.
//
// Math (per expert e and the rows r of one of its tiles; same as moe_gemm_kernel):
//   gate_up : act[r, n] = SiLU(x_r · W13_e[n]) · (x_r · W13_e[I + n])   (bf16 out, fp32 math)
//   down    : y[r, n]   = act[r] · W2_e[n]                               (fp32 out)
// with x_r = x[row_token[r]] (gate_up) or act[r] (down).
//
// Launch: grid (row tiles upper bound, column slices), 256 threads = 8 warps.
//   CTA = (row tile of ≤ block_m rows of one expert, 32 weight rows): gate_up owns 16 output
//   columns (16 gate rows + the 16 matching up rows), down owns 32. Tiles past the real work exit.
//   The expert is found in one round trip: every thread tests its experts' tile ranges.
//   The tile's input rows are staged in shared memory ([rows][lds] bf16, cp.async), P rows per
//   pass (P = 8·NT; more rows than P only with repeated experts per token, or block_m 64).
//   Weight streaming, k split over the 8 warps and the mma k permutation: gemm/stream_mma.cuh
//   (shared with the dense small-M kernel). Per chunk every lane loads four 16-byte pieces of
//   weights straight into registers, U chunks in flight; the staged rows are B (8 rows per n
//   tile, NT ≤ 2 tiles), loaded with the same k permutation; D is fp32 [16 columns][8 rows].
//   The 8 k-split partial sums meet in shared memory (fixed order: deterministic), then the
//   epilogue applies SiLU(g)·u (gate_up) and stores act / y.
// SPLIT (high precision, moe.h): the rows' lo plane is staged after the hi plane and every weight
//   chunk, loaded once, meets both (two MMAs into the same accumulators); gate_up stores SiLU(g)·u
//   as act = bf16(v) and act_lo = bf16(v − act).
#pragma once

#include <cstdint>

#include "async_copy.cuh"
#include "gemm/stream_mma.cuh"
#include "moe/moe.h"
#include "pdl.cuh"

namespace kimi::cuda::moe {

// Row stride (elements) of the staged rows: >= K and ≡ 32 (mod 64), so a 16-byte phase of
// 8 lanes (2 rows × 4 consecutive pieces) hits 32 distinct banks.
__host__ __device__ constexpr int moe_gemv_lds(int K) {
  return (K + 31) / 64 * 64 + 32;
}


// NT: n tiles of 8 rows per pass (1 or 2); U: k chunks per warp in flight.
template <bool SWIGLU, int NT, int U, bool SPLIT>
__global__ void __launch_bounds__(kGvThreads, 2)
    moe_gemv_kernel(MoeGemmParams p, MoePermuteView v, int pass_rows) {
  pdl_launch_dependents();  // PDL (launch.h): everything below may depend on the previous kernel
  pdl_wait();
  static_assert(NT == 1 || NT == 2, "n tiles per pass");
  extern __shared__ __align__(16) unsigned char gv_smem[];
  __shared__ int s_tile[3];                        // expert, first row, end row of this CTA's tile
  bf16* xs = reinterpret_cast<bf16*>(gv_smem);     // [1 + SPLIT][pass_rows][lds] staged rows
  float* red = reinterpret_cast<float*>(gv_smem);  // [warp][rg][nt][4][lane] (after the k loop)

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int E = p.num_experts, tile = blockIdx.x;
  if (tid == 0) s_tile[0] = -1;
  __syncthreads();
  for (int e = tid; e < E; e += kGvThreads) {
    const int a = v.tile_start[e], b = v.tile_start[e + 1];
    const int o = v.offsets[e], o_end = v.offsets[e + 1];
    if (a <= tile && tile < b) {  // at most one expert: non-empty ranges are disjoint
      const int m0 = o + (tile - a) * p.block_m;
      s_tile[0] = e;
      s_tile[1] = m0;
      s_tile[2] = min(m0 + p.block_m, o_end);
    }
  }
  __syncthreads();
  const int e = s_tile[0];
  if (e < 0) return;  // past the real tiles (the whole CTA)
  const int m_begin = s_tile[1], m_end = s_tile[2];

  const int N = SWIGLU ? p.inter : p.hidden;  // output columns
  const int K = SWIGLU ? p.hidden : p.inter;
  const int KC = (K + kGvChunk - 1) / kGvChunk;
  const int lds = moe_gemv_lds(K);
  const bf16* W =
      SWIGLU ? p.w13 + int64_t(e) * 2 * p.inter * p.hidden : p.w2 + int64_t(e) * p.hidden * p.inter;
  const int n0 = blockIdx.y * (SWIGLU ? 16 : 32);
  // The lane's weight rows: row group rg (gate_up: 0 gate, 1 up; down: columns +16·rg), h: g + 8h.
  const bf16* wrow[2][2];
  bool wok[2][2];
#pragma unroll
  for (int rg = 0; rg < 2; ++rg)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int n = n0 + (SWIGLU ? 0 : 16 * rg) + g + 8 * h;  // output column
      wok[rg][h] = n < N;
      const int r = SWIGLU ? n + rg * p.inter : n;
      wrow[rg][h] = W + int64_t(wok[rg][h] ? r : 0) * K;
    }

  for (int r0 = m_begin; r0 < m_end; r0 += pass_rows) {
    const int rows = min(pass_rows, m_end - r0);
    uint4 wv[U][2][2];
    gv_load_weights<U>(wv, wrow, wok, warp, K, t);  // in flight while the rows are staged
    const int pieces = K / 8;
    [[maybe_unused]] const int64_t plane = int64_t(pass_rows) * lds;  // lo plane offset in xs
    for (int i = tid; i < rows * pieces; i += kGvThreads) {
      const int r = i / pieces, k = (i - r * pieces) * 8;
      const int64_t off = SWIGLU ? int64_t(v.row_token[r0 + r]) * p.hidden + k
                                 : int64_t(r0 + r) * p.inter + k;
      cp_async16(xs + r * lds + k, (SWIGLU ? p.x : p.act) + off);
      if constexpr (SPLIT) cp_async16(xs + plane + r * lds + k, (SWIGLU ? p.x_lo : p.act_lo) + off);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    const bool second_tile = rows > 8;
    float acc[2][NT][4];
#pragma unroll
    for (int rg = 0; rg < 2; ++rg)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[rg][nt][j] = 0.f;
    for (int c0 = warp; c0 < KC; c0 += kGvWarps * U) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int c = c0 + kGvWarps * u;
        if (c >= KC) break;  // warp-uniform
        const int k = c * kGvChunk + 8 * t;
        uint4 b[NT];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int slot = nt * 8 + g;
          b[nt] = make_uint4(0, 0, 0, 0);
          if (k < K && slot < rows) b[nt] = *reinterpret_cast<const uint4*>(xs + slot * lds + k);
        }
        gv_mma_step<0, NT>(acc, wv[u], b, second_tile);
        gv_mma_step<1, NT>(acc, wv[u], b, second_tile);
        if constexpr (SPLIT) {  // the same weights against the lo plane
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            const int slot = nt * 8 + g;
            b[nt] = make_uint4(0, 0, 0, 0);
            if (k < K && slot < rows)
              b[nt] = *reinterpret_cast<const uint4*>(xs + plane + slot * lds + k);
          }
          gv_mma_step<0, NT>(acc, wv[u], b, second_tile);
          gv_mma_step<1, NT>(acc, wv[u], b, second_tile);
        }
      }
      if (c0 + kGvWarps * U < KC) gv_load_weights<U>(wv, wrow, wok, c0 + kGvWarps * U, K, t);
    }

    __syncthreads();  // every warp is done with xs: red reuses the memory
#pragma unroll
    for (int rg = 0; rg < 2; ++rg)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int j = 0; j < 4; ++j)
          red[(((warp * 2 + rg) * NT + nt) * 4 + j) * 32 + lane] = acc[rg][nt][j];
    __syncthreads();
    // D element j of lane (g, t) in n tile nt: column g + 8·(j / 2), row slot 8·nt + 2t + j % 2.
    constexpr int kOuts = (SWIGLU ? 1 : 2) * NT * 4 * 32;
    for (int i = tid; i < kOuts; i += kGvThreads) {
      const int l = i % 32, j = (i / 32) % 4, nt = (i / 128) % NT, rg = i / (128 * NT);
      const int slot = nt * 8 + 2 * (l % 4) + (j % 2);
      const int n = n0 + 16 * rg + l / 4 + 8 * (j / 2);
      if (slot >= rows || n >= N) continue;
      const int r = r0 + slot;
      float s0 = 0.f, s1 = 0.f;
#pragma unroll
      for (int w = 0; w < kGvWarps; ++w) {
        s0 += red[(((w * 2 + rg) * NT + nt) * 4 + j) * 32 + l];
        if constexpr (SWIGLU) s1 += red[(((w * 2 + 1) * NT + nt) * 4 + j) * 32 + l];
      }
      if constexpr (SWIGLU) {
        const float a = s0 / (1.f + __expf(-s0)) * s1;
        const bf16 hi = __float2bfloat16(a);
        p.act[int64_t(r) * p.inter + n] = hi;
        if constexpr (SPLIT) p.act_lo[int64_t(r) * p.inter + n] = __float2bfloat16(a - __bfloat162float(hi));
      } else {
        p.y[int64_t(r) * p.hidden + n] = s0;
      }
    }
    __syncthreads();  // red is read before the next pass stages rows over it
  }
}

}  // namespace kimi::cuda::moe
