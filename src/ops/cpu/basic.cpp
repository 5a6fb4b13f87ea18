#include "ops/cpu/basic.h"

#include <cmath>

namespace kimi::cpu {

void matmul(const float* x, const float* w, float* y, int64_t T, int64_t N, int64_t K) {
  // Parallel over output columns in blocks so each weight row is read once per 4 tokens.
  constexpr int64_t kTok = 4;
#pragma omp parallel for schedule(static) if (N * T * K > (1 << 16))
  for (int64_t n = 0; n < N; ++n) {
    const float* wr = w + n * K;
    int64_t t = 0;
    for (; t + kTok <= T; t += kTok) {
      const float* x0 = x + t * K;
      float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (int64_t k = 0; k < K; ++k) {
        float wv = wr[k];
        a0 += wv * x0[k];
        a1 += wv * x0[K + k];
        a2 += wv * x0[2 * K + k];
        a3 += wv * x0[3 * K + k];
      }
      y[t * N + n] = a0;
      y[(t + 1) * N + n] = a1;
      y[(t + 2) * N + n] = a2;
      y[(t + 3) * N + n] = a3;
    }
    for (; t < T; ++t) {
      const float* xr = x + t * K;
      float a = 0;
#pragma omp simd reduction(+ : a)
      for (int64_t k = 0; k < K; ++k) a += wr[k] * xr[k];
      y[t * N + n] = a;
    }
  }
}

void rmsnorm(const float* x, const float* w, float* y, int64_t T, int64_t D, float eps) {
#pragma omp parallel for schedule(static) if (T > 16)
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * D;
    float* yr = y + t * D;
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += double(xr[d]) * xr[d];
    float inv = float(1.0 / std::sqrt(ss / double(D) + eps));
    for (int64_t d = 0; d < D; ++d) yr[d] = xr[d] * inv * w[d];
  }
}

void silu_mul(const float* gate_up, float* out, int64_t T, int64_t D) {
#pragma omp parallel for schedule(static) if (T * D > (1 << 14))
  for (int64_t t = 0; t < T; ++t) {
    const float* g = gate_up + t * 2 * D;
    const float* u = g + D;
    float* o = out + t * D;
    for (int64_t d = 0; d < D; ++d) o[d] = silu(g[d]) * u[d];
  }
}

}  // namespace kimi::cpu
