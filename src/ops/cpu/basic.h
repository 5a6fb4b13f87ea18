// CPU reference for the dense ops: projections, norms, activations. fp32, OpenMP across rows.
#pragma once

#include <cstdint>

namespace kimi::cpu {

// y[T, N] = x[T, K] · w[N, K]ᵀ (PyTorch Linear layout). y may not alias x.
void matmul(const float* x, const float* w, float* y, int64_t T, int64_t N, int64_t K);

// y[T, D] = x / sqrt(mean(x²) + eps) · w. y may alias x.
void rmsnorm(const float* x, const float* w, float* y, int64_t T, int64_t D, float eps);

// out[T, D] = SiLU(gate[T, D]) · up[T, D], with gate and up rows of one [T, 2D] buffer
// (gate first). out may not alias gate_up.
void silu_mul(const float* gate_up, float* out, int64_t T, int64_t D);

inline float silu(float x) { return x / (1.f + __builtin_expf(-x)); }
inline float sigmoid(float x) { return 1.f / (1.f + __builtin_expf(-x)); }
// softplus with PyTorch/FLA's threshold: x for x > 20.
inline float softplus(float x) { return x > 20.f ? x : __builtin_log1pf(__builtin_expf(x)); }

}  // namespace kimi::cpu
