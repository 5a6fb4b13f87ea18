// Random checkpoints in the official layout (config.json, sharded safetensors + index), drawn
// deterministically from a seed: the embedded default model, test models, and the
// full-size shapes for measurement without the real checkpoint.
#pragma once

#include <cstdint>
#include <string>

namespace kimi {

struct TinySpec {
  uint64_t seed = 1;
  int layers = 4;           // 1-based full-attention layers: every 4th and the last
  int hidden = 256;
  int kda_heads = 2;
  int mla_heads = 2;
  int experts = 16;
  int top_k = 4;
  int moe_inter = 128;
  int shared_experts = 1;
  int dense_inter = 512;
  int vocab = 1280;         // rows of embed/lm_head (base tokens + 256 special slots)
  int bos_id = 1024, eos_id = 1026, pad_id = 1279;
  int shards = 2;
  std::string dtype = "BF16";  // or "F32"
};

// Writes config.json, model-0000N-of-0000M.safetensors and model.safetensors.index.json.
void write_tiny_checkpoint(const std::string& dir, const TinySpec& spec);

// The config.json text for a spec.
std::string tiny_config_json(const TinySpec& spec);

}  // namespace kimi
