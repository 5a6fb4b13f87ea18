#include "bench/model_bytes.h"

#include <cmath>

#include "model/tensor_parallel.h"
#include "model/weights.h"

namespace kimi::bench {

ParamCounts param_counts(const ModelConfig& c, const ModelSplit& split) {
  if (split.world > 1) check_tensor_parallel(c, split.world, split.expert_parallel);
  ParamCounts p;
  for (const ExpectedTensor& t : expected_tensors(c)) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    p.total += n;
    if (t.name == "model.embed_tokens.weight") {
      p.embed += n;
      continue;
    }
    if (t.name.find(".block_sparse_moe.experts.") != std::string::npos) {
      p.routed += n;
      continue;
    }
    int64_t held = 0;  // over the ranks: n for a split tensor, world · n for a whole one
    for (int rank = 0; rank < split.world; ++rank)
      held += tensor_slice(t.name, t.shape, rank, split.world, split.expert_parallel).numel();
    p.dense_replicas += held - n;
  }
  for (int l = 0; l < c.num_hidden_layers; ++l) p.num_moe_layers += c.is_moe(l);
  if (p.num_moe_layers > 0 && c.num_experts > 0)
    p.per_expert = p.routed / (int64_t(p.num_moe_layers) * c.num_experts);
  p.dense = p.total - p.embed - p.routed;
  return p;
}

StepBytes decode_step_bytes(const ModelConfig& c, int batch, int64_t context, int wb,
                            const CacheEntryBytes& cache, const ModelSplit& split) {
  ParamCounts p = param_counts(c, split);
  StepBytes s;
  const double E = c.num_experts, k = c.num_experts_per_token, N = split.world;
  s.expected_experts_per_layer = E > 0 ? E * (1.0 - std::pow(1.0 - k / E, batch)) : 0;
  double params = double(p.dense + p.dense_replicas) + N * batch * c.hidden_size +
                  s.expected_experts_per_layer * p.num_moe_layers * double(p.per_expert);
  s.weights = params * wb;
  s.state = double(batch) *
            (2.0 * double(cache.slot) + N * double(context + 1) * double(cache.mla_token));
  return s;
}

}  // namespace kimi::bench
