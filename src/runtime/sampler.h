// Per-request sampling on the host: logit bias, repetition/presence/frequency penalties,
// temperature, top-k, top-p, min-p, and a counter-based RNG so that a seeded request draws the
// same numbers whatever else is in the batch.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "model/model.h"

namespace kimi {

struct SamplingParams {
  float temperature = 1.f;  // 0: greedy
  int top_k = 0;            // 0 or -1: off
  float top_p = 1.f;
  float min_p = 0.f;
  float presence_penalty = 0.f;
  float frequency_penalty = 0.f;
  float repetition_penalty = 1.f;
  std::vector<std::pair<int, float>> logit_bias;
  uint64_t seed = 0;  // the runtime draws one when the request gives none

  // Empty when valid, else the message naming the bad field.
  std::string validate(int vocab_size) const;
  bool greedy() const { return temperature < 1e-5f; }
};

// Token counts the penalties read: prompt tokens (repetition) and generated tokens (all three).
struct TokenHistory {
  std::unordered_map<int, int> generated;  // id -> count
  std::vector<int> prompt;                 // sorted, unique

  void set_prompt(std::span<const int> ids);
  void add_generated(int id) { ++generated[id]; }
};

// Applies bias and penalties to logits in place (the distribution that is sampled). `suppress`:
// ids that may not be drawn this step (min_tokens holds back EOS and stop ids): logit -inf.
void apply_logit_processors(std::span<float> logits, const SamplingParams& p,
                            const TokenHistory& h, std::span<const int> suppress = {});

// What presence and frequency penalties subtract from a token generated n times. One definition,
// so that apply_logit_processors and logit_adjustments round it the same way.
float presence_frequency_offset(const SamplingParams& p, int n);

// The effect of apply_logit_processors on one token, as the GPU sampler applies it: LogitAdjust
// (model/model.h; the layout of kernels/sampling/sampling.h SampleAdjust).
// Appends the adjustments of one request (ids in [0, vocab_size), unique, ascending) to `out`.
// Applying them equals apply_logit_processors bit for bit, except when logit_bias names a token
// twice: its biases are summed first (apply_logit_processors adds them one after the other).
void append_logit_adjustments(const SamplingParams& p, const TokenHistory& h, int vocab_size,
                              std::vector<LogitAdjust>& out, std::span<const int> suppress = {});
// The host reference of what the GPU sampler does with them: l' = rep(l + bias) + post.
void apply_logit_adjustments(std::span<float> logits, std::span<const LogitAdjust> adj);

// Picks the next token from processed logits. `step` is the index of the token being drawn in
// its request, so the draw depends only on (seed, step).
int sample_token(std::span<const float> logits, const SamplingParams& p, uint64_t step);

// The draw of sample_token for a given uniform u in [0, 1): sample_token(l, p, step) ==
// sample_with_u(l, p, uniform_from(p.seed, step)).token. The semantics the GPU sampler matches
// (kernels/sampling/sampling.h):
//   - NaN logits count as -inf, +inf as FLT_MAX, -0 as +0.
//   - greedy (temperature < 1e-5): the first maximum (lowest id among equal logits).
//   - else candidates in order of logit, descending, ties to the lower id; prob_i =
//     exp(double(l_i - l_max) * (1.f / temperature)); top-k keeps the first k; top-p (< 1) the
//     shortest prefix of those whose mass, divided by the top-k mass, reaches top_p; min-p (> 0)
//     the prefix with prob_i >= min_p (prob of the top is 1); the kept prefix is the shortest of
//     these, at least one token. The token is the first i with u * kept_mass < sum_{j<=i} prob_j.
//   - a row of -inf/NaN only: token 0, logprob -inf.
// logprob (when want_logprob): log of the chosen token's probability in the distribution drawn
// from (temperature, cut, renormalised); for greedy, under softmax(logits) at temperature 1 over
// the whole vocabulary.
struct SampleResult {
  int token = 0;
  float logprob = 0.f;
};
SampleResult sample_with_u(std::span<const float> logits, const SamplingParams& p, double u,
                           bool want_logprob = false);

// log Σ_i exp(l_i) of a raw logits row, in double with the maximum taken out first: the
// normaliser of its log-probabilities (prompt and token logprobs, perplexity).
double log_sum_exp(std::span<const float> logits);

// The log-probabilities of `token` under a raw logits row (model/model.h RowLogprobs): with
// lse = float(log_sum_exp(logits)) and lp_i = logits[i] - lse (fp32), logprob = lp_token, rank =
// 1 + #{i : lp_i > lp_token or (lp_i == lp_token and i < token)}, and the min(k, V) best ids in
// that order with their lp. A row with NaN or +inf, or with no finite logit, has lse NaN: every
// lp is NaN, rank 1, the alternatives ids 0..k-1. The GPU computes the same
// (kernels/sampling/logprobs.h). k in 0..kMaxTopLogprobs, token in [0, V).
RowLogprobs row_logprobs(std::span<const float> logits, int token, int k);

// What Model::forward_sampled computes on the device, on the host from logits [rows, V] (the
// rows of a forward): a token per row not marked `host` (apply_logit_adjustments, then
// sample_with_u; a host row's token is left 0) and the RowLogprobs the rows ask for. For the
// backends that sample only on the host, so the engine has one path.
void draw_on_host(std::span<const float> logits, int V, const DrawBatch& draws,
                  std::vector<int>& tokens, std::vector<RowLogprobs>& logprobs);

// Uniform in [0, 1) from (seed, step): splitmix64 on the combined counter.
double uniform_from(uint64_t seed, uint64_t step);

}  // namespace kimi
