// CPU reference for MoE routing (model.md §5): sigmoid scores, top-k selection on the scores
// plus the correction bias, weights gathered from the unbiased scores, renormalised, scaled.
#pragma once

#include <cstdint>

namespace kimi::cpu {

struct MoeRouteParams {
  int64_t num_tokens = 0;
  int num_experts = 0;
  int top_k = 0;
  bool renormalize = true;
  float scaling = 1.f;
  const float* logits = nullptr;           // [T, E] router logits
  const float* correction_bias = nullptr;  // [E]
  int* expert_ids = nullptr;               // [T, top_k] chosen experts, best first
  float* weights = nullptr;                // [T, top_k] their routing weights
  // Optional [T]: the selection margin, lowest chosen selection score minus the highest
  // unchosen one (how far the token is from choosing another expert; E == top_k: +inf).
  float* margins = nullptr;
};
// Ties in the selection score go to the lower expert index.
void moe_route(const MoeRouteParams& p);

}  // namespace kimi::cpu
