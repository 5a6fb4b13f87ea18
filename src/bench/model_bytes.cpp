#include "bench/model_bytes.h"

#include <cmath>

#include "model/weights.h"

namespace kimi::bench {

ParamCounts param_counts(const ModelConfig& c) {
  ParamCounts p;
  for (const ExpectedTensor& t : expected_tensors(c)) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    p.total += n;
    if (t.name == "model.embed_tokens.weight") {
      p.embed += n;
    } else if (t.name.find(".block_sparse_moe.experts.") != std::string::npos) {
      p.routed += n;
    }
  }
  for (int l = 0; l < c.num_hidden_layers; ++l) p.num_moe_layers += c.is_moe(l);
  if (p.num_moe_layers > 0 && c.num_experts > 0)
    p.per_expert = p.routed / (int64_t(p.num_moe_layers) * c.num_experts);
  p.dense = p.total - p.embed - p.routed;
  return p;
}

StepBytes decode_step_bytes(const ModelConfig& c, int batch, int64_t context, int wb,
                            const CacheEntryBytes& cache) {
  ParamCounts p = param_counts(c);
  StepBytes s;
  const double E = c.num_experts, k = c.num_experts_per_token;
  s.expected_experts_per_layer = E > 0 ? E * (1.0 - std::pow(1.0 - k / E, batch)) : 0;
  double params = double(p.dense) + double(batch) * c.hidden_size +
                  s.expected_experts_per_layer * p.num_moe_layers * double(p.per_expert);
  s.weights = params * wb;
  s.state =
      double(batch) * (2.0 * double(cache.slot) + double(context + 1) * double(cache.mla_token));
  return s;
}

}  // namespace kimi::bench
