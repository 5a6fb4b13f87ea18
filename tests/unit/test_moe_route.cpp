// CPU MoE routing (src/ops/cpu/moe.h) on hand-computed cases: selection on sigmoid score + bias,
// weights from the unbiased scores, renormalised and scaled, ties to the lower index, and the
// selection margin (lowest chosen minus highest unchosen selection score).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops/cpu/moe.h"

namespace kimi {
namespace {

float sig(float x) { return 1.f / (1.f + std::exp(-x)); }

TEST(MoeRouteCpu, SelectionWeightsAndMargins) {
  // Token 0: scores s = sigmoid(logit); the bias moves expert 3 ahead of expert 1.
  // Token 1: experts 1 and 2 tie on the selection score: the lower index wins, margin 0.
  const std::vector<float> logits = {2.f, 1.f, -1.f, 0.5f,  //
                                     -2.f, 0.f, 0.f, -3.f};
  const std::vector<float> bias = {0.f, 0.f, 0.f, 0.2f};
  std::vector<int> ids(4);
  std::vector<float> w(4), margins(2);
  cpu::MoeRouteParams p;
  p.num_tokens = 2, p.num_experts = 4, p.top_k = 2, p.renormalize = true, p.scaling = 2.f;
  p.logits = logits.data(), p.correction_bias = bias.data(), p.expert_ids = ids.data();
  p.weights = w.data(), p.margins = margins.data();
  cpu::moe_route(p);
  // Token 0: selection 0.881, 0.731, 0.269, 0.822 -> experts 0, 3; margin 0.822 - 0.731.
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 3);
  const float s0 = sig(2.f), s3 = sig(0.5f);
  EXPECT_NEAR(w[0], 2.f * s0 / (s0 + s3), 1e-6f);
  EXPECT_NEAR(w[1], 2.f * s3 / (s0 + s3), 1e-6f);
  EXPECT_NEAR(margins[0], sig(0.5f) + 0.2f - sig(1.f), 1e-6f);
  // Token 1: selection 0.119, 0.5, 0.5, 0.247 -> experts 1, 2 (tie in order), margin 0.5 - 0.247.
  EXPECT_EQ(ids[2], 1);
  EXPECT_EQ(ids[3], 2);
  EXPECT_NEAR(w[2], 1.f, 1e-6f);
  EXPECT_NEAR(margins[1], 0.5f - (sig(-3.f) + 0.2f), 1e-6f);
  // K = 2 of E = 3 with the second and third tied: margin 0.
  const std::vector<float> l3 = {1.f, 0.f, 0.f};
  const std::vector<float> b3 = {0.f, 0.f, 0.f};
  p.num_tokens = 1, p.num_experts = 3, p.logits = l3.data(), p.correction_bias = b3.data();
  cpu::moe_route(p);
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 1);
  EXPECT_EQ(margins[0], 0.f);
}

}  // namespace
}  // namespace kimi
