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

// Applies bias and penalties to logits in place (the distribution that is sampled).
void apply_logit_processors(std::span<float> logits, const SamplingParams& p,
                            const TokenHistory& h);

// Picks the next token from processed logits. `step` is the index of the token being drawn in
// its request, so the draw depends only on (seed, step).
int sample_token(std::span<const float> logits, const SamplingParams& p, uint64_t step);

// Uniform in [0, 1) from (seed, step): splitmix64 on the combined counter.
double uniform_from(uint64_t seed, uint64_t step);

}  // namespace kimi
