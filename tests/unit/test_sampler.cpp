#include <gtest/gtest.h>

#include <cmath>
#include <map>

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

}  // namespace
}  // namespace kimi
