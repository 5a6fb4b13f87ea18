#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "core/check.h"

namespace kimi {

std::string SamplingParams::validate(int vocab_size) const {
  if (!(temperature >= 0.f) || !std::isfinite(temperature))
    return "temperature must be a finite number >= 0";
  if (top_k < -1) return "top_k must be -1, 0 (off) or positive";
  if (!(top_p > 0.f && top_p <= 1.f)) return "top_p must be in (0, 1]";
  if (!(min_p >= 0.f && min_p <= 1.f)) return "min_p must be in [0, 1]";
  if (!(presence_penalty >= -2.f && presence_penalty <= 2.f))
    return "presence_penalty must be in [-2, 2]";
  if (!(frequency_penalty >= -2.f && frequency_penalty <= 2.f))
    return "frequency_penalty must be in [-2, 2]";
  if (!(repetition_penalty > 0.f) || !std::isfinite(repetition_penalty))
    return "repetition_penalty must be a finite number > 0";
  for (auto& [id, bias] : logit_bias) {
    if (id < 0 || id >= vocab_size)
      return str("logit_bias names token ", id, ", outside the vocabulary 0..", vocab_size - 1);
    if (!(bias >= -100.f && bias <= 100.f)) return "logit_bias values must be in [-100, 100]";
  }
  return {};
}

void TokenHistory::set_prompt(std::span<const int> ids) {
  prompt.assign(ids.begin(), ids.end());
  std::sort(prompt.begin(), prompt.end());
  prompt.erase(std::unique(prompt.begin(), prompt.end()), prompt.end());
}

void apply_logit_processors(std::span<float> logits, const SamplingParams& p,
                            const TokenHistory& h) {
  const int V = int(logits.size());
  for (auto& [id, bias] : p.logit_bias)
    if (id >= 0 && id < V) logits[id] += bias;
  if (p.repetition_penalty != 1.f) {
    // vLLM/HF semantics: divide positive logits, multiply negative ones, for every token seen
    // in the prompt or the output.
    auto penalise = [&](int id) {
      if (id < 0 || id >= V) return;
      float& l = logits[id];
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    };
    for (int id : h.prompt) penalise(id);
    for (auto& [id, n] : h.generated)
      if (!std::binary_search(h.prompt.begin(), h.prompt.end(), id)) penalise(id);
  }
  if (p.presence_penalty != 0.f || p.frequency_penalty != 0.f)
    for (auto& [id, n] : h.generated)
      if (id >= 0 && id < V) logits[id] -= p.presence_penalty + p.frequency_penalty * float(n);
}

double uniform_from(uint64_t seed, uint64_t step) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ull * (step + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return double(z >> 11) * 0x1.0p-53;
}

int sample_token(std::span<const float> logits, const SamplingParams& p, uint64_t step) {
  const int V = int(logits.size());
  KIMI_CHECK(V > 0);
  if (p.greedy()) {
    // First maximum wins; NaN never wins.
    int best = 0;
    for (int i = 1; i < V; ++i)
      if (logits[i] > logits[best] || std::isnan(logits[best])) best = i;
    return best;
  }
  // Candidates sorted by logit (descending, ties to the lower id), cut by top-k.
  std::vector<int> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  int k = (p.top_k > 0 && p.top_k < V) ? p.top_k : V;
  auto by_logit = [&](int a, int b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
  idx.resize(k);
  const float inv_t = 1.f / p.temperature;
  const float top = logits[idx[0]];
  std::vector<double> prob(k);
  double sum = 0;
  for (int i = 0; i < k; ++i) {
    prob[i] = std::exp(double(logits[idx[i]] - top) * inv_t);
    sum += prob[i];
  }
  // top-p: the smallest prefix whose mass reaches top_p; min-p: relative to the top token.
  int n = k;
  if (p.top_p < 1.f) {
    double acc = 0;
    for (int i = 0; i < k; ++i) {
      acc += prob[i] / sum;
      if (acc >= p.top_p) { n = i + 1; break; }
    }
  }
  if (p.min_p > 0.f) {
    double floor_p = p.min_p * prob[0];
    int m = 0;
    while (m < n && prob[m] >= floor_p) ++m;
    n = std::max(m, 1);
  }
  double kept = 0;
  for (int i = 0; i < n; ++i) kept += prob[i];
  double u = uniform_from(p.seed, step) * kept;
  for (int i = 0; i < n; ++i) {
    u -= prob[i];
    if (u < 0) return idx[i];
  }
  return idx[n - 1];
}

}  // namespace kimi
