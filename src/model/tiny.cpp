#include "model/tiny.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace kimi {
namespace {

// splitmix64 stream with Box-Muller normals: identical on every platform and library.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }
  double normal() {
    double u1 = std::max(uniform(), 1e-300), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

uint64_t name_hash(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Values for one tensor, drawn from a stream keyed by (seed, name) so that adding a tensor
// never changes the others.
std::vector<float> draw(const ExpectedTensor& e, uint64_t seed, int64_t n) {
  Rng r{seed ^ name_hash(e.name)};
  std::vector<float> v(n);
  const std::string& nm = e.name;
  if (ends_with(nm, "norm.weight") || ends_with(nm, "layernorm.weight")) {
    for (auto& x : v) x = float(1.0 + 0.05 * r.normal());
  } else if (ends_with(nm, "A_log")) {
    for (auto& x : v) x = float(std::log(1.0 + 15.0 * r.uniform()));  // decay rate in [1, 16]
  } else if (ends_with(nm, "dt_bias")) {
    // inverse softplus of dt ~ log-uniform in [1e-3, 1e-1]
    for (auto& x : v) {
      double dt = std::exp(std::log(1e-3) + r.uniform() * (std::log(1e-1) - std::log(1e-3)));
      x = float(dt + std::log(-std::expm1(-dt)));
    }
  } else if (ends_with(nm, "conv1d.weight")) {
    for (auto& x : v) x = float(r.uniform() - 0.5);
  } else if (ends_with(nm, "e_score_correction_bias")) {
    for (auto& x : v) x = float(0.02 * r.normal());
  } else if (nm == "model.embed_tokens.weight") {
    for (auto& x : v) x = float(r.normal());
  } else {
    for (auto& x : v) x = float(0.02 * r.normal());
  }
  return v;
}

}  // namespace

std::string tiny_config_json(const TinySpec& s) {
  nlohmann::ordered_json j;
  std::vector<int> kda, full;
  for (int i = 1; i <= s.layers; ++i) ((i % 4 == 0 || (i == s.layers && s.layers > 1)) ? full : kda).push_back(i);
  j["architectures"] = {"KimiLinearForCausalLM"};
  j["model_type"] = "kimi_linear";
  j["dtype"] = "bfloat16";
  j["vocab_size"] = s.vocab;
  j["hidden_size"] = s.hidden;
  j["num_hidden_layers"] = s.layers;
  j["num_attention_heads"] = s.mla_heads;
  j["num_key_value_heads"] = s.mla_heads;
  j["intermediate_size"] = s.dense_inter;
  j["hidden_act"] = "silu";
  j["rms_norm_eps"] = 1e-5;
  j["tie_word_embeddings"] = false;
  j["model_max_length"] = 1048576;
  j["rope_theta"] = 10000.0;
  j["rope_scaling"] = nullptr;
  j["bos_token_id"] = s.bos_id;
  j["eos_token_id"] = s.eos_id;
  j["pad_token_id"] = s.pad_id;
  j["linear_attn_config"] = {{"kda_layers", kda},
                             {"full_attn_layers", full},
                             {"num_heads", s.kda_heads},
                             {"head_dim", kKdaHeadDim},
                             {"short_conv_kernel_size", kKdaConvSize}};
  j["q_lora_rank"] = nullptr;
  j["kv_lora_rank"] = kMlaLatentDim;
  j["qk_nope_head_dim"] = kMlaNopeDim;
  j["qk_rope_head_dim"] = kMlaRopeDim;
  j["v_head_dim"] = kMlaVDim;
  j["mla_use_nope"] = true;
  j["num_experts"] = s.experts;
  j["num_experts_per_token"] = s.top_k;
  j["num_shared_experts"] = s.shared_experts;
  j["moe_intermediate_size"] = s.moe_inter;
  j["first_k_dense_replace"] = 1;
  j["moe_layer_freq"] = 1;
  j["moe_router_activation_func"] = "sigmoid";
  j["moe_renormalize"] = true;
  j["routed_scaling_factor"] = 2.446;
  j["use_grouped_topk"] = true;
  j["num_expert_group"] = 1;
  j["topk_group"] = 1;
  j["num_nextn_predict_layers"] = 0;
  return j.dump(2) + "\n";
}

void write_tiny_checkpoint(const std::string& dir, const TinySpec& s) {
  KIMI_CHECK(s.shards >= 1 && s.shards <= 99, "shards must be in 1..99");
  KIMI_CHECK(s.dtype == "BF16" || s.dtype == "F32", "dtype must be BF16 or F32");
  std::filesystem::create_directories(dir);
  std::string cfg_text = tiny_config_json(s);
  ModelConfig cfg = ModelConfig::from_json(cfg_text, "tiny config");  // validates the spec
  {
    std::ofstream f(dir + "/config.json");
    f << cfg_text;
    if (!f) fail(dir, "/config.json: write failed");
  }
  std::vector<ExpectedTensor> tensors = expected_tensors(cfg);
  // Spread tensors over shards by byte count, keeping the expected order.
  int64_t total = 0;
  for (auto& e : tensors) {
    int64_t n = 1;
    for (auto d : e.shape) n *= d;
    total += n;
  }
  const bool bf16 = s.dtype == "BF16";
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  size_t next = 0;
  int64_t written = 0;
  for (int shard = 0; shard < s.shards; ++shard) {
    std::string fname = str("model-", std::string(5 - std::to_string(shard + 1).size(), '0'),
                            shard + 1, "-of-", std::string(5 - std::to_string(s.shards).size(), '0'),
                            s.shards, ".safetensors");
    std::vector<std::vector<uint8_t>> bufs;
    std::vector<TensorToWrite> out;
    int64_t limit = total * (shard + 1) / s.shards;
    while (next < tensors.size() && (written < limit || shard == s.shards - 1)) {
      const ExpectedTensor& e = tensors[next++];
      int64_t n = 1;
      for (auto d : e.shape) n *= d;
      std::vector<float> v = draw(e, s.seed, n);
      // Small tensors stay F32, as vLLM keeps them; the rest in the chosen dtype.
      bool as_bf16 = bf16 && !e.small;
      std::vector<uint8_t> bytes(n * (as_bf16 ? 2 : 4));
      if (as_bf16) {
        auto* p = reinterpret_cast<uint16_t*>(bytes.data());
        for (int64_t i = 0; i < n; ++i) p[i] = f32_to_bf16(v[i]);
      } else {
        std::memcpy(bytes.data(), v.data(), n * 4);
      }
      bufs.push_back(std::move(bytes));
      out.push_back({e.name, as_bf16 ? DType::kBF16 : DType::kF32, e.shape, bufs.back().data()});
      weight_map[e.name] = fname;
      written += n;
    }
    write_safetensors(dir + "/" + fname, out, {{"format", "pt"}});
  }
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = weight_map;
  std::ofstream f(dir + "/model.safetensors.index.json");
  f << index.dump(2) << "\n";
  if (!f) fail(dir, "/model.safetensors.index.json: write failed");
}

}  // namespace kimi
