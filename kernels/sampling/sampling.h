// Token sampling on the GPU: greedy, temperature, top-k, top-p, min-p, with sparse per-row logit
// adjustments (bias and penalties), one token and its log-probability per row. It draws the token
// the host sampler draws (src/runtime/sampler.h, sample_with_u: the semantics are written there)
// from the same processed logits and the same u, except where u, or the top-p or min-p threshold,
// lies within about 1e-6 (relative) of a boundary: the GPU sums in another order
// (docs/kernels-sampling.md).
//
//   row r: l = logits[r, 0..vocab) fp32 (read only; row stride `stride` elements)
//     adjusted: l[id] = rep(l[id] + bias) + post for each SampleAdjust of the row (ids unique),
//       rep(x) = x > 0 ? x / rep : x * rep when rep != 1 (the host builds these from logit_bias
//       and the penalties: append_logit_adjustments), NaN → -inf, +inf → FLT_MAX, -0 → +0;
//     greedy (temperature < 1e-5): token = the lowest id of the maximum,
//       logprob = l[token] - logsumexp(l) (temperature 1, whole vocabulary);
//     else p_i = exp((l_i - max) / T) in candidate order (logit descending, ties to the lower id),
//       kept = the shortest of: the first top_k, the shortest prefix reaching top_p of the top-k
//       mass, the prefix with p_i >= min_p (at least one token); token = the first candidate i
//       with u · Σ_kept p < Σ_{j<=i} p_j; logprob = log(p_token / Σ_kept p).
//     A row of -inf/NaN only: token 0, logprob -inf.
//
// Launch: a cluster of C CTAs (1, 2, 4 or 8) per row, 512 threads; CTA c holds ids
// [c·slice, (c+1)·slice) of the row in shared memory (vocab up to 8 · 24576 = 196608). The cut
// points are found without sorting: a histogram of fixed-point probability mass (2^-40 units) over
// 1024 value bins, merged through distributed shared memory into cumulative arrays in every CTA,
// locates the bin where a cumulative count or mass crosses its target; a bin of at most 256
// tokens is then ranked exactly, a larger one refined by 8-bit radix digits of the logit. No
// workspace, no host synchronisation: the launch can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kimi::cuda {

// One row's sampling parameters (per row, so a batch mixes requests).
struct SampleRow {
  float temperature = 1.f;  // < 1e-5: greedy
  int top_k = 0;            // <= 0 or >= vocab: off
  float top_p = 1.f;        // (0, 1]; 1: off
  float min_p = 0.f;        // [0, 1]; 0: off
  double u = 0.0;           // uniform in [0, 1): uniform_from(seed, step) on the host
};

// Same layout as kimi::LogitAdjust (src/runtime/sampler.h), which the host fills.
struct SampleAdjust {
  int32_t id = 0;
  float bias = 0.f;
  float rep = 1.f;
  float post = 0.f;
};

struct SampleParams {
  int rows = 0;
  int vocab = 0;
  int64_t stride = 0;                     // elements between rows of logits (0: vocab)
  const float* logits = nullptr;          // [rows, stride]
  const SampleRow* row_params = nullptr;  // [rows]
  const int* adjust_offsets = nullptr;    // [rows + 1] CSR offsets into adjust; null: none
  const SampleAdjust* adjust = nullptr;   // [adjust_offsets[rows]]; ids unique within a row
  int* token = nullptr;                   // [rows]
  float* logprob = nullptr;               // [rows], optional
};
void run_sample(const SampleParams& p, cudaStream_t stream);

// The CTAs per row (cluster size) and ids per CTA that run_sample uses for a vocabulary.
struct SampleShape {
  int cluster = 1;
  int slice = 0;
};
SampleShape sample_shape(int vocab);

// Bytes run_sample must read (the logits and the adjustments), for benchmarks.
inline double sample_bytes(int rows, int vocab, int64_t adjust_entries) {
  return 4.0 * rows * vocab + double(sizeof(SampleAdjust)) * adjust_entries;
}

}  // namespace kimi::cuda
