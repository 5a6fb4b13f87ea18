// Any bytes as config.json: a clean kimi::Error or a config that satisfies its invariants.
#include <cstdlib>
#include <string>

#include "core/check.h"
#include "model/config.h"
#include "model/weights.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  try {
    kimi::ModelConfig c = kimi::ModelConfig::from_json(text, "fuzz");
    if (int(c.layer_kinds.size()) != c.num_hidden_layers) std::abort();
    if (c.num_kda_layers() + c.num_mla_layers() != c.num_hidden_layers) std::abort();
    // The expected tensor list must be computable for any accepted config of modest size.
    if (int64_t(c.num_hidden_layers) * (c.num_experts + 1) < 4096) (void)kimi::expected_tensors(c);
  } catch (const kimi::Error&) {
  }
  return 0;
}
