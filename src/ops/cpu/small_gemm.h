// Internal to the CPU ops: a register-tiled single-threaded GEMM for the small, L1/L2-resident
// matrices of the chunked KDA algorithm (64×128 chunks against a 128×128 state). Callers run it
// inside their own OpenMP task, one (sequence, head) per thread.
//
//   C[m×n] = (overwrite ? 0 : C) + alpha · A[m×k] · B[k×n]
//   A(i, p) = a[i·a_rs + p·a_cs]  (strides let the caller pass Aᵀ without a copy)
//   B, C row-major with leading dimensions ldb, ldc; n must be a multiple of kGemmNr.
//   lower: A is lower-triangular (A(i, p) = 0 for p > i, zeros stored), so rows i0..i0+MR-1
//   only need p < i0 + MR. Summation order over p is sequential, so results are deterministic.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/check.h"

namespace kimi::cpu::detail {

constexpr int kGemmMr = 4;
constexpr int kGemmNr = 16;

template <int MR>
inline void gemm_tile(int kend, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                      int64_t ldb, float* c, int64_t ldc, float alpha, bool overwrite) {
  float acc[MR][kGemmNr] = {};
  for (int p = 0; p < kend; ++p) {
    const float* br = b + p * ldb;
    for (int r = 0; r < MR; ++r) {
      const float av = a[r * a_rs + p * a_cs];
#pragma omp simd
      for (int j = 0; j < kGemmNr; ++j) acc[r][j] += av * br[j];
    }
  }
  for (int r = 0; r < MR; ++r) {
    float* cr = c + r * ldc;
    if (overwrite) {
      for (int j = 0; j < kGemmNr; ++j) cr[j] = alpha * acc[r][j];
    } else {
      for (int j = 0; j < kGemmNr; ++j) cr[j] += alpha * acc[r][j];
    }
  }
}

inline void gemm(int m, int n, int k, float alpha, const float* a, int64_t a_rs, int64_t a_cs,
                 const float* b, int64_t ldb, float* c, int64_t ldc, bool overwrite,
                 bool lower = false) {
  KIMI_CHECK(n % kGemmNr == 0, "gemm: n = ", n, " is not a multiple of ", kGemmNr);
  int i = 0;
  for (; i + kGemmMr <= m; i += kGemmMr) {
    const int kend = lower ? std::min(k, i + kGemmMr) : k;
    for (int j = 0; j < n; j += kGemmNr)
      gemm_tile<kGemmMr>(kend, a + i * a_rs, a_rs, a_cs, b + j, ldb, c + i * ldc + j, ldc, alpha,
                         overwrite);
  }
  for (; i < m; ++i) {
    const int kend = lower ? std::min(k, i + 1) : k;
    for (int j = 0; j < n; j += kGemmNr)
      gemm_tile<1>(kend, a + i * a_rs, a_rs, a_cs, b + j, ldb, c + i * ldc + j, ldc, alpha,
                   overwrite);
  }
}

}  // namespace kimi::cpu::detail
