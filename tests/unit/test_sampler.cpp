#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>

#include "runtime/sampler.h"

namespace kimi {
namespace {

TEST(Sampler, GreedyPicksFirstMaximum) {
  SamplingParams p;
  p.temperature = 0;
  std::vector<float> l = {0.1f, 2.f, -1.f, 2.f};
  EXPECT_EQ(sample_token(l, p, 0), 1);
}

TEST(Sampler, SameSeedSameDraws) {
  SamplingParams p;
  p.seed = 42;
  std::vector<float> l(100);
  for (int i = 0; i < 100; ++i) l[i] = std::sin(i * 0.37f) * 3;
  for (int step = 0; step < 20; ++step) EXPECT_EQ(sample_token(l, p, step), sample_token(l, p, step));
  p.seed = 43;
  int diff = 0;
  SamplingParams q = p;
  q.seed = 42;
  for (int step = 0; step < 50; ++step) diff += sample_token(l, p, step) != sample_token(l, q, step);
  EXPECT_GT(diff, 0);
}

TEST(Sampler, DistributionFollowsSoftmaxWithTemperature) {
  SamplingParams p;
  p.temperature = 2.f;
  p.seed = 7;
  std::vector<float> l = {0.f, 1.f, 2.f};
  std::map<int, int> count;
  const int N = 20000;
  for (int s = 0; s < N; ++s) count[sample_token(l, p, s)]++;
  double z = std::exp(0.0) + std::exp(0.5) + std::exp(1.0);
  for (int i = 0; i < 3; ++i)
    EXPECT_NEAR(count[i] / double(N), std::exp(0.5 * i) / z, 0.015) << i;
}

TEST(Sampler, TopKTopPMinPCut) {
  std::vector<float> l = {5.f, 4.f, 3.f, -10.f};
  SamplingParams p;
  p.top_k = 2;
  for (int s = 0; s < 500; ++s) EXPECT_LT(sample_token(l, p, s), 2);
  p = {};
  p.top_p = 0.5f;  // the top token alone holds > 0.5
  for (int s = 0; s < 500; ++s) EXPECT_EQ(sample_token(l, p, s), 0);
  p = {};
  p.min_p = 0.3f;  // e^-1 = 0.37 of the top passes, e^-2 = 0.14 does not
  for (int s = 0; s < 500; ++s) EXPECT_LT(sample_token(l, p, s), 2);
}

TEST(Sampler, PenaltiesAndBias) {
  SamplingParams p;
  p.logit_bias = {{2, 10.f}};
  p.presence_penalty = 1.f;
  p.frequency_penalty = 0.5f;
  p.repetition_penalty = 2.f;
  TokenHistory h;
  std::vector<int> prompt = {0};
  h.set_prompt(prompt);
  h.add_generated(1);
  h.add_generated(1);
  std::vector<float> l = {4.f, -2.f, 0.f, 1.f};
  apply_logit_processors(l, p, h);
  EXPECT_FLOAT_EQ(l[0], 2.f);                // prompt token: divided by the repetition penalty
  EXPECT_FLOAT_EQ(l[1], -4.f - 1.f - 1.f);   // generated twice: repetition, presence, frequency
  EXPECT_FLOAT_EQ(l[2], 10.f);               // biased
  EXPECT_FLOAT_EQ(l[3], 1.f);
}

TEST(Sampler, ValidateNamesTheField) {
  SamplingParams p;
  p.temperature = NAN;
  EXPECT_NE(p.validate(10).find("temperature"), std::string::npos);
  p = {};
  p.top_p = 2;
  EXPECT_NE(p.validate(10).find("top_p"), std::string::npos);
  p = {};
  p.logit_bias = {{10, 1.f}};
  EXPECT_NE(p.validate(10).find("logit_bias"), std::string::npos);
  p = {};
  EXPECT_EQ(p.validate(10), "");
}

TEST(Sampler, SampleWithUWalksTheSortedCdf) {
  // Order: id 2 (p ∝ e^2), id 1 (e^1), id 0 (1); the draw is the first with u · kept < CDF.
  std::vector<float> l = {0.f, 1.f, 2.f};
  SamplingParams p;
  const double z = 1 + std::exp(1.0) + std::exp(2.0);
  const double c0 = std::exp(2.0) / z, c1 = (std::exp(2.0) + std::exp(1.0)) / z;
  EXPECT_EQ(sample_with_u(l, p, 0.0).token, 2);
  EXPECT_EQ(sample_with_u(l, p, c0 - 1e-9).token, 2);
  EXPECT_EQ(sample_with_u(l, p, c0 + 1e-9).token, 1);
  EXPECT_EQ(sample_with_u(l, p, c1 + 1e-9).token, 0);
  EXPECT_EQ(sample_with_u(l, p, 0.999999).token, 0);
  EXPECT_NEAR(sample_with_u(l, p, 0.8, true).logprob, std::log(std::exp(1.0) / z), 1e-6);
  // top-k 2 renormalises over {2, 1}.
  p.top_k = 2;
  const double z2 = std::exp(1.0) + std::exp(2.0);
  EXPECT_EQ(sample_with_u(l, p, std::exp(2.0) / z2 + 1e-9).token, 1);
  EXPECT_NEAR(sample_with_u(l, p, 0.99, true).logprob, std::log(std::exp(1.0) / z2), 1e-6);
  // Equal logits: ties in id order, equal shares.
  std::vector<float> t = {1.f, 1.f, 1.f};
  p = {};
  EXPECT_EQ(sample_with_u(t, p, 0.32).token, 0);
  EXPECT_EQ(sample_with_u(t, p, 0.34).token, 1);
  EXPECT_EQ(sample_with_u(t, p, 0.67).token, 2);
  p.top_k = 1;
  EXPECT_EQ(sample_with_u(t, p, 0.9).token, 0);
  // Greedy logprob: softmax at temperature 1 over all tokens.
  p = {};
  p.temperature = 0;
  EXPECT_EQ(sample_with_u(l, p, 0.9).token, 2);
  EXPECT_NEAR(sample_with_u(l, p, 0.9, true).logprob, std::log(std::exp(2.0) / z), 1e-6);
}

TEST(Sampler, NonFiniteLogits) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  SamplingParams g;
  g.temperature = 0;
  SamplingParams s;
  // NaN counts as -inf: never drawn while a finite logit exists.
  std::vector<float> a = {nan, 1.f, nan, 0.5f};
  EXPECT_EQ(sample_with_u(a, g, 0.5).token, 1);
  for (double u = 0; u < 1; u += 0.01) {
    int tok = sample_with_u(a, s, u).token;
    EXPECT_TRUE(tok == 1 || tok == 3) << u;
  }
  // Nothing finite: token 0, logprob -inf.
  std::vector<float> b = {nan, -inf, nan};
  EXPECT_EQ(sample_with_u(b, g, 0.5).token, 0);
  EXPECT_EQ(sample_with_u(b, s, 0.5, true).token, 0);
  EXPECT_EQ(sample_with_u(b, s, 0.5, true).logprob, -inf);
  // +inf counts as the largest float: the +inf tokens share the mass.
  std::vector<float> c = {1.f, inf, 2.f, inf};
  EXPECT_EQ(sample_with_u(c, g, 0.5).token, 1);
  EXPECT_EQ(sample_with_u(c, s, 0.49).token, 1);
  EXPECT_EQ(sample_with_u(c, s, 0.51).token, 3);
  EXPECT_NEAR(sample_with_u(c, s, 0.51, true).logprob, std::log(0.5), 1e-6);
}

TEST(Sampler, AdjustmentsEqualLogitProcessors) {
  std::mt19937 rng(5);
  const int V = 3000;
  int touched = 0;
  for (int trial = 0; trial < 200; ++trial) {
    std::uniform_real_distribution<float> ul(-8.f, 8.f), pen(-2.f, 2.f), rep(0.5f, 2.f),
        bias(-100.f, 100.f);
    std::uniform_int_distribution<int> id(0, V - 1), coin(0, 3);
    std::vector<float> l(V);
    for (auto& x : l) x = ul(rng);
    for (int i = 0; i < 50; ++i) l[id(rng)] = 0.f;  // zeros: the sign of the penalty
    SamplingParams p;
    if (coin(rng)) p.presence_penalty = pen(rng);
    if (coin(rng)) p.frequency_penalty = pen(rng);
    if (coin(rng)) p.repetition_penalty = rep(rng);
    std::map<int, float> b;  // unique ids (the one case where the two may round differently)
    for (int i = 0, n = coin(rng) * 10; i < n; ++i) b[id(rng)] = bias(rng);
    p.logit_bias.assign(b.begin(), b.end());
    TokenHistory h;
    std::vector<int> prompt;
    for (int i = 0, n = coin(rng) * 300; i < n; ++i) prompt.push_back(id(rng));
    h.set_prompt(prompt);
    for (int i = 0, n = coin(rng) * 200; i < n; ++i) h.add_generated(id(rng) % 400);
    h.add_generated(-1);  // out of range: ignored by both
    std::vector<int> suppress;  // min_tokens' held-back ids, some also biased or penalised
    for (int i = 0, n = coin(rng); i < n; ++i) suppress.push_back(id(rng) % 400);
    if (!b.empty() && coin(rng)) suppress.push_back(b.begin()->first);
    std::vector<float> want = l, got = l;
    apply_logit_processors(want, p, h, suppress);
    for (int s : suppress) ASSERT_EQ(want[s], -INFINITY);
    std::vector<LogitAdjust> adj = {{7, 0.f, 1.f, 0.f}};  // appended after what is there
    append_logit_adjustments(p, h, V, adj, suppress);
    ASSERT_EQ(adj[0].id, 7);
    for (size_t i = 2; i < adj.size(); ++i) ASSERT_LT(adj[i - 1].id, adj[i].id);
    apply_logit_adjustments(got, std::span<const LogitAdjust>(adj).subspan(1));
    for (int i = 0; i < V; ++i) {
      ASSERT_EQ(got[i], want[i]) << "trial " << trial << " id " << i;  // -0 == +0
      touched += got[i] != l[i];
    }
  }
  EXPECT_GT(touched, 10000);
}

}  // namespace
}  // namespace kimi
