#include "runtime/sampler.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
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
                            const TokenHistory& h, std::span<const int> suppress) {
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
      if (id >= 0 && id < V) logits[id] -= presence_frequency_offset(p, n);
  for (int id : suppress)
    if (id >= 0 && id < V) logits[id] = -INFINITY;
}

float presence_frequency_offset(const SamplingParams& p, int n) {
  return p.presence_penalty + p.frequency_penalty * float(n);
}

void append_logit_adjustments(const SamplingParams& p, const TokenHistory& h, int vocab_size,
                              std::vector<LogitAdjust>& out, std::span<const int> suppress) {
  const size_t first = out.size();
  auto valid = [&](int id) { return id >= 0 && id < vocab_size; };
  const bool rep = p.repetition_penalty != 1.f;
  const bool pf = p.presence_penalty != 0.f || p.frequency_penalty != 0.f;
  for (auto& [id, bias] : p.logit_bias)
    if (valid(id)) out.push_back({id, bias, 1.f, 0.f});
  for (int id : suppress)  // -inf stays -inf through rep and post
    if (valid(id)) out.push_back({id, -INFINITY, 1.f, 0.f});
  if (rep)
    for (int id : h.prompt)
      if (valid(id)) out.push_back({id, 0.f, p.repetition_penalty, 0.f});
  if (rep || pf)
    for (auto& [id, n] : h.generated)
      if (valid(id))
        out.push_back({id, 0.f, rep ? p.repetition_penalty : 1.f,
                       pf ? -presence_frequency_offset(p, n) : 0.f});
  // Stable: the biases of one id keep their order. Then one entry per id.
  std::stable_sort(out.begin() + first, out.end(),
                   [](const LogitAdjust& a, const LogitAdjust& b) { return a.id < b.id; });
  size_t w = first;
  for (size_t i = first; i < out.size(); ++i) {
    if (w > first && out[w - 1].id == out[i].id) {
      LogitAdjust& a = out[w - 1];
      a.bias += out[i].bias;
      if (out[i].rep != 1.f) a.rep = out[i].rep;
      a.post += out[i].post;  // at most one entry per id carries a post
    } else {
      out[w++] = out[i];
    }
  }
  out.resize(w);
}

void apply_logit_adjustments(std::span<float> logits, std::span<const LogitAdjust> adj) {
  const int V = int(logits.size());
  for (const LogitAdjust& a : adj) {
    if (a.id < 0 || a.id >= V) continue;
    float l = logits[a.id] + a.bias;
    // The branch keeps the multiply and the add below apart: no fused multiply-add, which the
    // GPU (and apply_logit_processors, through memory) do not use either.
    if (a.rep != 1.f) l = l > 0 ? l / a.rep : l * a.rep;
    logits[a.id] = l + a.post;
  }
}

double log_sum_exp(std::span<const float> logits) {
  KIMI_CHECK(!logits.empty());
  const float mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float v : logits) sum += std::exp(double(v) - mx);
  return mx + std::log(sum);
}

double uniform_from(uint64_t seed, uint64_t step) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ull * (step + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return double(z >> 11) * 0x1.0p-53;
}

namespace {

// NaN counts as -inf, +inf as the largest float, -0 as +0 (sampler.h).
inline float sane(float x) {
  if (std::isnan(x)) return -std::numeric_limits<float>::infinity();
  if (x == std::numeric_limits<float>::infinity()) return FLT_MAX;
  return x == 0.f ? 0.f : x;
}

}  // namespace

int sample_token(std::span<const float> logits, const SamplingParams& p, uint64_t step) {
  return sample_with_u(logits, p, uniform_from(p.seed, step)).token;
}

SampleResult sample_with_u(std::span<const float> logits, const SamplingParams& p, double u,
                           bool want_logprob) {
  const int V = int(logits.size());
  KIMI_CHECK(V > 0);
  auto l = [&](int i) { return sane(logits[i]); };
  int best = 0;
  for (int i = 1; i < V; ++i)
    if (l(i) > l(best)) best = i;
  const float top = l(best);
  if (top == -std::numeric_limits<float>::infinity())
    return {0, -std::numeric_limits<float>::infinity()};
  if (p.greedy()) {
    // First maximum wins.
    SampleResult r{best, 0.f};
    if (want_logprob) {
      double sum = 0;
      for (int i = 0; i < V; ++i) sum += std::exp(double(l(i) - top));
      r.logprob = float(-std::log(sum));
    }
    return r;
  }
  // Candidates sorted by logit (descending, ties to the lower id), cut by top-k.
  std::vector<int> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  int k = (p.top_k > 0 && p.top_k < V) ? p.top_k : V;
  auto by_logit = [&](int a, int b) { return l(a) > l(b) || (l(a) == l(b) && a < b); };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
  idx.resize(k);
  const float inv_t = 1.f / p.temperature;
  std::vector<double> prob(k);
  double sum = 0;
  for (int i = 0; i < k; ++i) {
    prob[i] = std::exp(double(l(idx[i]) - top) * inv_t);
    sum += prob[i];
  }
  // top-p: the smallest prefix whose mass reaches top_p; min-p: relative to the top token.
  int n = k;
  if (p.top_p < 1.f) {
    double acc = 0;
    for (int i = 0; i < k; ++i) {
      acc += prob[i] / sum;
      if (acc >= p.top_p) {
        n = i + 1;
        break;
      }
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
  int pick = n - 1;
  double x = u * kept;
  for (int i = 0; i < n; ++i) {
    x -= prob[i];
    if (x < 0) {
      pick = i;
      break;
    }
  }
  return {idx[pick], float(std::log(prob[pick] / kept))};
}

}  // namespace kimi
