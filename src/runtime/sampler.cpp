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

RowLogprobs row_logprobs(std::span<const float> logits, int token, int k) {
  const int V = int(logits.size());
  KIMI_CHECK(token >= 0 && token < V && k >= 0 && k <= kMaxTopLogprobs, "row_logprobs: token ",
             token, " k ", k, " vocab ", V);
  RowLogprobs r;
  r.token = token;
  r.num_top = std::min(k, V);
  const float lse = float(log_sum_exp(logits));
  r.logprob = logits[token] - lse;
  if (std::isnan(lse)) {  // every lp NaN: no order
    for (int j = 0; j < r.num_top; ++j) {
      r.top_id[j] = j;
      r.top_logprob[j] = std::numeric_limits<float>::quiet_NaN();
    }
    return r;
  }
  // lse is finite here, so no logit is NaN (every lp is a number).
  auto lp = [&](int i) { return logits[i] - lse; };
  auto better = [&](int a, int b) { return lp(a) > lp(b) || (lp(a) == lp(b) && a < b); };
  for (int i = 0; i < V; ++i) r.rank += better(i, token);
  if (r.num_top == 0) return r;
  std::vector<int> idx(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + r.num_top, idx.end(), better);
  for (int j = 0; j < r.num_top; ++j) {
    r.top_id[j] = idx[size_t(j)];
    r.top_logprob[j] = lp(idx[size_t(j)]);
  }
  return r;
}

void draw_on_host(std::span<const float> logits, int V, const DrawBatch& draws,
                  std::vector<int>& tokens, std::vector<RowLogprobs>& logprobs) {
  const int R = int(draws.rows.size());
  KIMI_CHECK(logits.size() == size_t(R) * size_t(V), "draw_on_host: ", logits.size(),
             " logits for ", R, " rows of ", V);
  tokens.assign(size_t(R), 0);
  std::vector<int> record(size_t(R), -1);  // row -> its place in logprobs
  int n = 0;
  for (int r = 0; r < R; ++r) {
    const RowDraw& d = draws.rows[size_t(r)];
    KIMI_CHECK(d.adjust_begin >= 0 && d.adjust_begin <= d.adjust_end &&
                   size_t(d.adjust_end) <= draws.adjust.size(),
               "draw row ", r, ": adjustments ", d.adjust_begin, "..", d.adjust_end);
    KIMI_CHECK(valid_logprob_request(d, V), "draw row ", r, ": logprobs ", d.logprobs, " of token ",
               d.logprob_token, (d.host ? " (a host row)" : ""));
    if (d.logprobs >= 0) record[size_t(r)] = n++;
  }
  logprobs.assign(size_t(n), RowLogprobs{});
  // Rows are independent (a prompt-logprobs chunk is hundreds of rows of V exponentials).
#pragma omp parallel for schedule(dynamic, 4)
  for (int r = 0; r < R; ++r) {
    const RowDraw& d = draws.rows[size_t(r)];
    const std::span<const float> raw = logits.subspan(size_t(r) * V, size_t(V));
    if (!d.host) {
      SamplingParams p;
      p.temperature = d.temperature;
      p.top_k = d.top_k;
      p.top_p = d.top_p;
      p.min_p = d.min_p;
      // A copy only for rows with adjustments (not the rows that draw nothing, e.g. a
      // prompt-logprobs chunk's).
      std::vector<float> adjusted;
      if (d.adjust_end > d.adjust_begin) {
        adjusted.assign(raw.begin(), raw.end());
        apply_logit_adjustments(
            adjusted, std::span<const LogitAdjust>(draws.adjust)
                          .subspan(size_t(d.adjust_begin), size_t(d.adjust_end - d.adjust_begin)));
      }
      tokens[size_t(r)] = sample_with_u(adjusted.empty() ? raw : adjusted, p, d.u).token;
    }
    if (d.logprobs >= 0) {
      const int tok = d.logprob_token >= 0 ? d.logprob_token : tokens[size_t(r)];
      logprobs[size_t(record[size_t(r)])] = row_logprobs(raw, tok, d.logprobs);
    }
  }
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
