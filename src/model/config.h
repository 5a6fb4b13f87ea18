// ModelConfig: the official Kimi Linear config.json, validated against what the engine runs.
// Per-head sizes are compile-time constants (style.md "one model, specialised on purpose");
// head counts, hidden size, layers, experts, top-k and vocabulary come from the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kimi {

constexpr int kKdaHeadDim = 128;       // linear_attn_config.head_dim (K = V)
constexpr int kKdaConvSize = 4;        // linear_attn_config.short_conv_kernel_size
constexpr int kMlaLatentDim = 512;     // kv_lora_rank
constexpr int kMlaRopeDim = 64;        // qk_rope_head_dim (no rotation: NoPE)
constexpr int kMlaNopeDim = 128;       // qk_nope_head_dim
constexpr int kMlaVDim = 128;          // v_head_dim
constexpr int kMlaQkDim = kMlaNopeDim + kMlaRopeDim;     // 192
constexpr int kMlaCacheDim = kMlaLatentDim + kMlaRopeDim;  // 576 values per token per layer
constexpr int kKdaChunk = 64;          // chunk size of the chunked KDA prefill

enum class LayerKind { kKda, kMla };

struct ModelConfig {
  int vocab_size = 0;
  int hidden_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;  // MLA heads
  int kda_num_heads = 0;        // linear_attn_config.num_heads
  int intermediate_size = 0;    // dense MLP
  int moe_intermediate_size = 0;
  int num_experts = 0;
  int num_experts_per_token = 0;
  int num_shared_experts = 0;
  int first_k_dense_replace = 0;
  int moe_layer_freq = 1;
  bool moe_renormalize = true;
  float routed_scaling_factor = 1.f;
  float rms_norm_eps = 1e-5f;
  bool tie_word_embeddings = false;
  int64_t model_max_length = 0;
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
  int pad_token_id = -1;
  std::vector<LayerKind> layer_kinds;  // one per layer, from the 1-based lists

  bool is_kda(int layer) const { return layer_kinds[layer] == LayerKind::kKda; }
  bool is_moe(int layer) const {
    return num_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  int num_kda_layers() const;
  int num_mla_layers() const;
  // Index of this layer among layers of its kind (KDA state slot / MLA cache layer).
  int kind_index(int layer) const;

  // Parses and validates; errors name `source` and the offending field.
  static ModelConfig from_json(const std::string& text, const std::string& source);
  static ModelConfig from_file(const std::string& path);
};

}  // namespace kimi
