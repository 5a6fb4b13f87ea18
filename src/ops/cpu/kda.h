// CPU reference for Kimi Delta Attention (model.md §3). fp32 throughout.
// Batches of variable-length sequences: token rows of sequence s are
// [cu_seqlens[s], cu_seqlens[s+1]); per-sequence state lives in a pool addressed by slot ids.
//
// Layouts (H = heads, D = kKdaHeadDim = 128):
//   q, k, v, g, out : [T, H, D]        beta : [T, H]
//   recurrent state : [num_slots, H, D(key), D(value)]  (K-major: row d scales by exp(g[d]))
//   conv input/out  : [T, C]  (C channels; q, k and v projections side by side: C = 3·H·D)
//   conv weights    : [C, kKdaConvSize]  (tap kKdaConvSize-1 multiplies the current token)
//   conv state      : [num_slots, C, kKdaConvSize-1]  (the last 3 pre-conv inputs, oldest first)
#pragma once

#include <cstdint>

namespace kimi::cpu {

struct KdaConvParams {
  int num_seqs = 0;
  const int* cu_seqlens = nullptr;  // [num_seqs + 1]
  const int* slots = nullptr;       // [num_seqs] conv-state slot per sequence, distinct
  int num_slots = 0;                // slots in the state pool (range check)
  int channels = 0;                 // C
  const float* x = nullptr;         // [T, C] pre-conv projections
  const float* weight = nullptr;    // [C, 4]
  float* state = nullptr;           // [num_slots, C, 3], read then updated
  float* out = nullptr;             // [T, C] = SiLU(conv(x)); may not alias x
};
// Causal depthwise conv (kernel 4, no bias) + SiLU, continuing from and updating the conv state.
void kda_conv(const KdaConvParams& p);

// g[t, h, d] = -exp(A_log[h]) · softplus(f[t, h, d] + dt_bias[h, d]); in place on f.
// beta[t, h] = sigmoid(b[t, h]); in place on b.
void kda_gate(float* f, float* b, const float* A_log, const float* dt_bias, int64_t T, int H);

// Per head: x ← x / sqrt(Σx² + eps) · scale, over D = 128, in place. x is [T, H, D].
void kda_l2norm(float* x, int64_t T, int H, float eps, float scale);

struct KdaScanParams {
  int num_seqs = 0;
  const int* cu_seqlens = nullptr;  // [num_seqs + 1]
  const int* slots = nullptr;       // [num_seqs] recurrent-state slot per sequence, distinct
  int num_slots = 0;                // slots in the state pool (range check)
  int num_heads = 0;
  const float* q = nullptr;         // [T, H, D], L2-normed and scaled by D^-1/2
  const float* k = nullptr;         // [T, H, D], L2-normed
  const float* v = nullptr;         // [T, H, D]
  const float* g = nullptr;         // [T, H, D], log decay (< 0)
  const float* beta = nullptr;      // [T, H]
  float* state = nullptr;           // [num_slots, H, D, D], initial state in, final state out
  float* out = nullptr;             // [T, H, D]
};
// The definition: the token-by-token gated delta rule (model.md §3.3).
void kda_recurrent(const KdaScanParams& p);
// The chunked WY/UT algorithm with chunk kKdaChunk (model.md §3.5); same result up to rounding.
void kda_chunked(const KdaScanParams& p);

// y[t, h, :] = o / sqrt(mean(o²) + eps) · w · sigmoid(z), per head over D. y may alias o.
void kda_gated_rmsnorm(const float* o, const float* z, const float* w, float* y, int64_t T, int H,
                       float eps);

}  // namespace kimi::cpu
