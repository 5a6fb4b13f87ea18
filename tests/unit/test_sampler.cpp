#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>

#include "core/check.h"
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

// row_logprobs (the reference of the GPU's logprob records) against a direct reading of its
// definition: the full log-softmax row, ids sorted by (lp descending, id ascending). Rows with
// coarse ties (equal lp), -inf entries, k 0 / 1 / 20 and a vocabulary below k.
TEST(Sampler, RowLogprobsFollowTheLogSoftmaxOrder) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 60; ++trial) {
    const int V = trial % 3 == 0 ? 7 : 100 + 37 * trial;
    std::uniform_real_distribution<float> u(-6.f, 6.f);
    std::vector<float> l(static_cast<size_t>(V));
    for (auto& x : l) x = trial % 2 ? std::floor(u(rng)) : u(rng);  // odd trials: many ties
    if (trial % 4 == 1) l[size_t(trial) % size_t(V)] = -INFINITY;
    const double lse = log_sum_exp(l);
    std::vector<float> lp(l.size());
    for (int i = 0; i < V; ++i) lp[size_t(i)] = l[size_t(i)] - float(lse);
    std::vector<int> order(static_cast<size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return lp[size_t(a)] > lp[size_t(b)]; });
    for (int k : {0, 1, 5, 20}) {
      const int token = order[size_t(trial * 7 % V)];
      const RowLogprobs r = row_logprobs(l, token, k);
      EXPECT_EQ(r.token, token);
      EXPECT_EQ(r.logprob, lp[size_t(token)]);
      EXPECT_EQ(r.rank, int(std::find(order.begin(), order.end(), token) - order.begin()) + 1);
      ASSERT_EQ(r.num_top, std::min(k, V));
      for (int j = 0; j < r.num_top; ++j) {
        EXPECT_EQ(r.top_id[j], order[size_t(j)]) << "trial " << trial << " k " << k << " j " << j;
        EXPECT_EQ(r.top_logprob[j], lp[size_t(order[size_t(j)])]);
      }
      for (int j = r.num_top; j < kMaxTopLogprobs; ++j) EXPECT_EQ(r.top_id[j], 0);
    }
  }
  // A NaN or +inf logit, or no finite one: lse is NaN, so every lp is; rank 1, ids 0..k-1.
  const float nan = std::numeric_limits<float>::quiet_NaN(),
              inf = std::numeric_limits<float>::infinity();
  for (const std::vector<float>& l :
       {std::vector<float>{1.f, nan, 2.f, 0.f}, std::vector<float>{1.f, inf, 2.f, 0.f},
        std::vector<float>{-inf, -inf, -inf, -inf}}) {
    const RowLogprobs r = row_logprobs(l, 2, 3);
    EXPECT_TRUE(std::isnan(r.logprob));
    EXPECT_EQ(r.rank, 1);
    ASSERT_EQ(r.num_top, 3);
    for (int j = 0; j < 3; ++j) {
      EXPECT_EQ(r.top_id[j], j);
      EXPECT_TRUE(std::isnan(r.top_logprob[j]));
    }
  }
  EXPECT_THROW(row_logprobs(std::vector<float>(4, 0.f), 4, 1), Error);
  EXPECT_THROW(row_logprobs(std::vector<float>(4, 0.f), 0, kMaxTopLogprobs + 1), Error);
}

// draw_on_host, the host's form of Model::forward_sampled: each device row draws what
// sample_with_u draws after the row's adjustments, a host row draws nothing, and the records are
// row_logprobs of the raw row (of the given token, or of the one drawn), in row order.
TEST(Sampler, DrawOnHostIsTheDeviceContractOnTheHost) {
  std::mt19937 rng(3);
  const int V = 500, R = 6;
  std::uniform_real_distribution<float> u(-5.f, 5.f);
  std::vector<float> logits(size_t(R) * V);
  for (auto& x : logits) x = u(rng);
  DrawBatch d;
  for (int r = 0; r < R; ++r) {
    RowDraw row;
    row.temperature = r == 0 ? 0.f : 0.7f;
    row.top_k = r == 2 ? 10 : 0;
    row.u = uniform_from(9, uint64_t(r));
    row.adjust_begin = int(d.adjust.size());
    if (r == 1) d.adjust.push_back({42, 100.f, 1.f, 0.f});  // logit_bias: 42 wins
    row.adjust_end = int(d.adjust.size());
    row.host = r == 4;
    if (r == 1 || r == 3) row.logprobs = 2;                             // of the token drawn
    if (r == 4 || r == 5) row.logprobs = 0, row.logprob_token = 7 * r;  // of a given token
    d.rows.push_back(row);
  }
  std::vector<int> tokens;
  std::vector<RowLogprobs> lps;
  draw_on_host(logits, V, d, tokens, lps);
  ASSERT_EQ(tokens.size(), size_t(R));
  EXPECT_EQ(tokens[1], 42);
  EXPECT_EQ(tokens[4], 0);
  for (int r = 0; r < R; ++r) {
    if (r == 4) continue;
    std::vector<float> row(logits.begin() + size_t(r) * V, logits.begin() + size_t(r + 1) * V);
    apply_logit_adjustments(row, std::span<const LogitAdjust>(d.adjust).subspan(
                                     size_t(d.rows[r].adjust_begin),
                                     size_t(d.rows[r].adjust_end - d.rows[r].adjust_begin)));
    SamplingParams p;
    p.temperature = d.rows[r].temperature;
    p.top_k = d.rows[r].top_k;
    EXPECT_EQ(tokens[size_t(r)], sample_with_u(row, p, d.rows[r].u).token) << "row " << r;
  }
  ASSERT_EQ(lps.size(), 4u);
  const int rows_asking[] = {1, 3, 4, 5};
  for (int q = 0; q < 4; ++q) {
    const int r = rows_asking[q];
    const int tok = d.rows[r].logprob_token >= 0 ? d.rows[r].logprob_token : tokens[size_t(r)];
    const RowLogprobs want =
        row_logprobs({logits.data() + size_t(r) * V, size_t(V)}, tok, d.rows[r].logprobs);
    EXPECT_EQ(lps[q].token, want.token);
    EXPECT_EQ(lps[q].rank, want.rank);
    EXPECT_EQ(lps[q].logprob, want.logprob);  // of the raw row: the bias of row 1 does not count
    EXPECT_EQ(lps[q].num_top, want.num_top);
  }
  // A host row cannot ask for the logprob of a token it has not drawn yet.
  d.rows[4].logprob_token = -1;
  EXPECT_THROW(draw_on_host(logits, V, d, tokens, lps), Error);
}

}  // namespace
}  // namespace kimi
