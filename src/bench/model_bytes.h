// How many bytes one decode step must move, from the config alone (calm-style "every step knows
// its bytes"). A decode step over B sequences at context depth C reads:
//   weights: every dense tensor (attention, dense MLPs, routers, shared experts, norms,
//            lm_head), B rows of the embedding, and in each MoE layer the experts the B tokens
//            route to — E·(1 − (1 − k/E)^B) distinct experts on average under uniform routing
//            (the bound the router can't beat on average; real routing is less uniform);
//   state:   per sequence its KDA slot (recurrent state H·128·128 and conv state 3·H·128·3 per
//            KDA layer), read and written; per MLA layer and sequence C cached tokens read and
//            one written.
// Element sizes are the backend's: fp32 weights on the CPU, bf16 on CUDA; the caches' as
// cache_entry_bytes (model/model.h) gives them for the run's options (--kv-cache-dtype fp8: 656
// bytes per cached token and MLA layer on CUDA).
// Over N GPUs (model/tensor_parallel.h) the counts are summed over the ranks: split tensors and
// the KDA slots once, but every rank reads its own copy of the whole tensors (norms, router,
// f_a/g_a, the latent projection), B embedding rows, and the whole latent cache.
#pragma once

#include <cstdint>

#include "model/config.h"
#include "model/model.h"

namespace kimi::bench {

struct ParamCounts {
  int64_t total = 0;
  int64_t embed = 0;       // embed_tokens (lm_head counts as dense)
  int64_t per_expert = 0;  // one routed expert (w1 + w3 + w2)
  int64_t routed = 0;      // all routed experts of all MoE layers
  int64_t dense = 0;       // total − embed − routed
  // Over N GPUs: the copies of whole non-embedding tensors that ranks 1..N−1 hold as well.
  int64_t dense_replicas = 0;
  int num_moe_layers = 0;
};

// How the model is split (model/tensor_parallel.h); the default is one device.
struct ModelSplit {
  int world = 1;
  bool expert_parallel = false;
};

// Throws (naming the field) when the config cannot be split as asked.
ParamCounts param_counts(const ModelConfig& c, const ModelSplit& split = {});

struct StepBytes {
  double weights = 0;  // bytes of weights read
  double state = 0;    // KDA state read + written, MLA cache read + written
  double expected_experts_per_layer = 0;
  double total() const { return weights + state; }
};

StepBytes decode_step_bytes(const ModelConfig& c, int batch, int64_t context, int weight_bytes,
                            const CacheEntryBytes& cache, const ModelSplit& split = {});

}  // namespace kimi::bench
