// Internal to the CPU ops: a register-tiled single-threaded GEMM for the small, L1/L2-resident
// matrices of the chunked KDA algorithm (64×128 chunks against a 128×128 state). Callers run it
// inside their own OpenMP task, one (sequence, head) per thread.
//
//   C[m×n] = (overwrite ? 0 : C) + alpha · A[m×k] · B[k×n]
//   A(i, p) = a[i·a_rs + p·a_cs]  (strides let the caller pass Aᵀ without a copy)
//   B, C row-major with leading dimensions ldb, ldc; n must be a multiple of the tile width NR
//   (16 by default, 8 for narrow products).
//   lower: A is lower-triangular; row i sums over p ≤ i only and never reads A(i, p > i) or the
//   rows of B past i, so a NaN in a later row of B cannot reach an earlier row of C.
//   Summation order over p is sequential, so results are deterministic.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/check.h"

namespace kimi::cpu::detail {

constexpr int kGemmMr = 4;
// Default tile width: 4×16 accumulators fill 8 ymm registers with AVX; with SSE only they would
// take all 16 xmm registers and spill, so 4×8 is faster there (measured on the bench below).
#if defined(__AVX__)
constexpr int kGemmNr = 16;
#else
constexpr int kGemmNr = 8;
#endif

template <int MR, int NR>
inline void gemm_tile(int kend, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                      int64_t ldb, float* c, int64_t ldc, float alpha, bool overwrite) {
  float acc[MR][NR] = {};
  for (int p = 0; p < kend; ++p) {
    const float* br = b + p * ldb;
    for (int r = 0; r < MR; ++r) {
      const float av = a[r * a_rs + p * a_cs];
#pragma omp simd
      for (int j = 0; j < NR; ++j) acc[r][j] += av * br[j];
    }
  }
  for (int r = 0; r < MR; ++r) {
    float* cr = c + r * ldc;
    if (overwrite) {
      for (int j = 0; j < NR; ++j) cr[j] = alpha * acc[r][j];
    } else {
      for (int j = 0; j < NR; ++j) cr[j] += alpha * acc[r][j];
    }
  }
}

template <int NR = kGemmNr>
inline void gemm(int m, int n, int k, float alpha, const float* a, int64_t a_rs, int64_t a_cs,
                 const float* b, int64_t ldb, float* c, int64_t ldc, bool overwrite,
                 bool lower = false) {
  KIMI_CHECK(n % NR == 0, "gemm: n = ", n, " is not a multiple of ", NR);
  int i = 0;
  for (; i + kGemmMr <= m; i += kGemmMr) {
    // lower: the full-width part p < i here, then the triangle i ≤ p ≤ i + r row by row.
    const int kend = lower ? std::min(k, i) : k;
    for (int j = 0; j < n; j += NR)
      gemm_tile<kGemmMr, NR>(kend, a + i * a_rs, a_rs, a_cs, b + j, ldb, c + i * ldc + j, ldc,
                             alpha, overwrite);
    if (lower)
      for (int r = 0; r < kGemmMr; ++r)
        for (int pp = i; pp <= std::min(k - 1, i + r); ++pp) {
          const float av = alpha * a[(i + r) * a_rs + pp * a_cs];
          const float* br = b + pp * ldb;
          float* cr = c + (i + r) * ldc;
#pragma omp simd
          for (int j = 0; j < n; ++j) cr[j] += av * br[j];
        }
  }
  for (; i < m; ++i) {
    const int kend = lower ? std::min(k, i + 1) : k;
    for (int j = 0; j < n; j += NR)
      gemm_tile<1, NR>(kend, a + i * a_rs, a_rs, a_cs, b + j, ldb, c + i * ldc + j, ldc, alpha,
                       overwrite);
  }
}

}  // namespace kimi::cpu::detail
