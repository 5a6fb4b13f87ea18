// How many bytes one decode step must move, from the config alone (calm-style "every step knows
// its bytes"). A decode step over B sequences at context depth C reads:
//   weights: every dense tensor (attention, dense MLPs, routers, shared experts, norms,
//            lm_head), B rows of the embedding, and in each MoE layer the experts the B tokens
//            route to — E·(1 − (1 − k/E)^B) distinct experts on average under uniform routing
//            (the bound the router can't beat on average; real routing is less uniform);
//   state:   per KDA layer and sequence the recurrent state H·128·128 and the conv state
//            3·H·128·3, each read and written; per MLA layer and sequence C·576 cached values
//            read and one row of 576 written.
// Element sizes are the backend's: fp32 weights and state on the CPU backend.
#pragma once

#include <cstdint>

#include "model/config.h"

namespace kimi::bench {

struct ParamCounts {
  int64_t total = 0;
  int64_t embed = 0;       // embed_tokens (lm_head counts as dense)
  int64_t per_expert = 0;  // one routed expert (w1 + w3 + w2)
  int64_t routed = 0;      // all routed experts of all MoE layers
  int64_t dense = 0;       // total − embed − routed
  int num_moe_layers = 0;
};

ParamCounts param_counts(const ModelConfig& c);

struct StepBytes {
  double weights = 0;  // bytes of weights read
  double state = 0;    // KDA state read + written, MLA cache read + written
  double expected_experts_per_layer = 0;
  double total() const { return weights + state; }
};

StepBytes decode_step_bytes(const ModelConfig& c, int batch, int64_t context, int weight_bytes,
                            int state_bytes);

// Per-sequence cache sizes (bytes) at the given element size: the KDA slot (recurrent + conv
// state over all KDA layers) and one MLA token (576 values over all MLA layers).
int64_t kda_slot_bytes(const ModelConfig& c, int state_bytes);
int64_t mla_token_bytes(const ModelConfig& c, int state_bytes);

}  // namespace kimi::bench
