// Small element-wise kernels of the model forward and start-up.
//   embedding gather : x[t, :] = float(table[ids[t], :])       table [vocab, dim] bf16, x fp32
//   silu_mul         : out[t, :] = SiLU(gu[t, 0:D]) · gu[t, D:2D] gu [T, 2D] fp32, out [T, D] bf16
//                      or fp32
//   split            : hi = bf16(x), lo = bf16(x − hi)             x fp32, hi and lo bf16
//   random fill      : weights drawn on the GPU from a counter-based RNG (--random-weights)
// Launch shapes: grid-stride loops over elements, 256 threads per CTA.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kimi::cuda {

using bf16 = __nv_bfloat16;

struct EmbeddingParams {
  int num_tokens = 0;
  int dim = 0;
  int vocab = 0;
  const int* ids = nullptr;     // [T]; ids outside [0, vocab) give a zero row (checked on the host)
  const bf16* table = nullptr;  // [vocab, dim]
  float* x = nullptr;           // [T, dim]
};
void run_embedding(const EmbeddingParams& p, cudaStream_t stream);

// OUT: bf16 (SiLU(g)·u rounds once, as in the fused expert kernels) or fp32 (high precision:
// the down projection splits it into hi/lo halves).
template <typename OUT>
struct SiluMulParams {
  int64_t rows = 0;
  int dim = 0;                 // D
  const float* gate_up = nullptr;  // [rows, 2D]: gate | up, fp32 (unrounded GEMM output)
  OUT* out = nullptr;              // [rows, D]
};
void run_silu_mul(const SiluMulParams<bf16>& p, cudaStream_t stream);
void run_silu_mul(const SiluMulParams<float>& p, cudaStream_t stream);

// High-precision GEMM inputs (docs/precision.md): x = hi + lo to 2^-16 relative, both bf16, so
// W·hi + W·lo with fp32 accumulation is W·x to ~16 significant bits of x. lo == nullptr: hi only
// (a plain rounding of an fp32 result to bf16).
struct SplitParams {
  int64_t n = 0;
  const float* x = nullptr;  // [n]
  bf16* hi = nullptr;        // [n]
  bf16* lo = nullptr;        // [n] or nullptr
};
void run_split_bf16(const SplitParams& p, cudaStream_t stream);

// Distributions for drawn weights (the same families as kimi-make-tiny's src/model/tiny.cpp).
enum class RandomDist {
  kNormal,      // a + b · N(0, 1)
  kUniform,     // U[a, b)
  kALog,        // log(1 + 15 U): decay rate in [1, 16]
  kDtBias,      // inverse softplus of dt, dt log-uniform in [1e-3, 1e-1]
};
struct RandomFillParams {
  void* out = nullptr;
  bool out_bf16 = true;  // else fp32
  int64_t n = 0;
  uint64_t seed = 0;     // element i draws from hash(seed, i): reproducible for any launch shape
  RandomDist dist = RandomDist::kNormal;
  float a = 0.f, b = 1.f;
};
void run_random_fill(const RandomFillParams& p, cudaStream_t stream);

}  // namespace kimi::cuda
