#include "model/config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/check.h"

namespace kimi {
namespace {

using json = nlohmann::json;

struct Reader {
  const json& j;
  const std::string& source;

  [[noreturn]] void bad(const std::string& field, const std::string& why) const {
    fail(source, ": field '", field, "' ", why);
  }
  bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }
  int64_t integer(const char* key) const {
    if (!has(key)) bad(key, "is missing");
    const json& v = j.at(key);
    if (!v.is_number_integer()) bad(key, "must be an integer");
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) bad(key, "is too large");
    return v.get<int64_t>();
  }
  int positive(const char* key, int64_t max = 1 << 30) const {
    int64_t v = integer(key);
    if (v <= 0 || v > max) bad(key, str("must be in [1, ", max, "], got ", v));
    return int(v);
  }
  int64_t integer_or(const char* key, int64_t dflt) const { return has(key) ? integer(key) : dflt; }
  // Range-checked before narrowing, so 2^32 + 16 is refused rather than read as 16.
  int int_or(const char* key, int64_t dflt, int64_t lo, int64_t hi) const {
    int64_t v = integer_or(key, dflt);
    if (v < lo || v > hi) bad(key, str("must be in [", lo, ", ", hi, "], got ", v));
    return int(v);
  }
  double number(const char* key) const {
    if (!has(key)) bad(key, "is missing");
    if (!j.at(key).is_number()) bad(key, "must be a number");
    return j.at(key).get<double>();
  }
  double number_or(const char* key, double dflt) const { return has(key) ? number(key) : dflt; }
  bool boolean_or(const char* key, bool dflt) const {
    if (!has(key)) return dflt;
    if (!j.at(key).is_boolean()) bad(key, "must be true or false");
    return j.at(key).get<bool>();
  }
  std::string string_or(const char* key, const std::string& dflt) const {
    if (!has(key)) return dflt;
    if (!j.at(key).is_string()) bad(key, "must be a string");
    return j.at(key).get<std::string>();
  }
  // Fixed per-head sizes: absent means the official value, anything else is refused.
  void require(const char* key, int64_t want) const {
    if (has(key) && integer(key) != want)
      bad(key, str("must be ", want, " (the engine's kernels are built for it), got ", integer(key)));
  }
};

}  // namespace

int ModelConfig::num_kda_layers() const {
  int n = 0;
  for (auto k : layer_kinds) n += k == LayerKind::kKda;
  return n;
}

int ModelConfig::num_mla_layers() const { return num_hidden_layers - num_kda_layers(); }

int ModelConfig::kind_index(int layer) const {
  int n = 0;
  for (int i = 0; i < layer; ++i) n += layer_kinds[i] == layer_kinds[layer];
  return n;
}

ModelConfig ModelConfig::from_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(source, ": invalid JSON: ", e.what());
  }
  if (!j.is_object()) fail(source, ": expected a JSON object");
  Reader r{j, source};
  ModelConfig c;

  std::string model_type = r.string_or("model_type", "kimi_linear");
  if (model_type != "kimi_linear")
    r.bad("model_type", "must be 'kimi_linear', got '" + model_type + "'");

  c.vocab_size = r.positive("vocab_size");
  c.hidden_size = r.positive("hidden_size", 1 << 16);
  c.num_hidden_layers = r.positive("num_hidden_layers", 1024);
  c.num_attention_heads = r.positive("num_attention_heads", 1024);
  c.intermediate_size = r.int_or("intermediate_size", 0, 0, 1 << 20);
  c.rms_norm_eps = float(r.number_or("rms_norm_eps", 1e-5));
  if (!(c.rms_norm_eps > 0.f && c.rms_norm_eps < 1.f)) r.bad("rms_norm_eps", "must be in (0, 1)");
  c.tie_word_embeddings = r.boolean_or("tie_word_embeddings", false);
  c.model_max_length = r.integer_or("model_max_length", 1 << 20);
  if (c.model_max_length <= 0) r.bad("model_max_length", "must be positive");
  c.bos_token_id = r.int_or("bos_token_id", -1, -1, c.vocab_size - 1);
  c.pad_token_id = r.int_or("pad_token_id", -1, -1, c.vocab_size - 1);
  if (r.has("eos_token_id")) {
    const json& e = j.at("eos_token_id");
    auto add_eos = [&](const json& x) {
      if (!x.is_number_integer() || (x.is_number_unsigned() && x.get<uint64_t>() > uint64_t(INT64_MAX)))
        r.bad("eos_token_id", "must be an integer or a list of integers");
      int64_t id = x.get<int64_t>();
      if (id < 0 || id >= c.vocab_size) r.bad("eos_token_id", str(id, " is outside the vocabulary"));
      c.eos_token_ids.push_back(int(id));
    };
    if (e.is_array()) {
      for (auto& x : e) add_eos(x);
    } else {
      add_eos(e);
    }
  }

  // MLA: fixed per-head sizes, no q-LoRA, no RoPE.
  if (r.has("q_lora_rank")) r.bad("q_lora_rank", "must be null (the engine has no q-LoRA path)");
  r.require("kv_lora_rank", kMlaLatentDim);
  r.require("qk_nope_head_dim", kMlaNopeDim);
  r.require("qk_rope_head_dim", kMlaRopeDim);
  r.require("v_head_dim", kMlaVDim);
  if (!r.boolean_or("mla_use_nope", true))
    r.bad("mla_use_nope", "must be true (RoPE on MLA is not supported)");
  if (r.has("rope_scaling")) r.bad("rope_scaling", "must be null (MLA here is NoPE)");
  if (r.boolean_or("tie_word_embeddings", false))
    r.bad("tie_word_embeddings", "must be false (the checkpoint has its own lm_head)");
  std::string act = r.string_or("hidden_act", "silu");
  if (act != "silu") r.bad("hidden_act", "must be 'silu', got '" + act + "'");
  if (r.integer_or("num_nextn_predict_layers", 0) != 0)
    r.bad("num_nextn_predict_layers", "must be 0 (no MTP head)");

  // KDA.
  if (!r.has("linear_attn_config")) r.bad("linear_attn_config", "is missing");
  const json& la = j.at("linear_attn_config");
  if (!la.is_object()) r.bad("linear_attn_config", "must be an object");
  std::string la_src = source + ": linear_attn_config";
  Reader lr{la, la_src};
  lr.require("head_dim", kKdaHeadDim);
  lr.require("short_conv_kernel_size", kKdaConvSize);
  auto layer_list = [&](const char* key) {
    std::set<int> out;
    if (!lr.has(key)) return out;
    if (!la.at(key).is_array()) lr.bad(key, "must be a list of 1-based layer numbers");
    for (auto& x : la.at(key)) {
      if (!x.is_number_integer()) lr.bad(key, "must be a list of 1-based layer numbers");
      int64_t v = x.is_number_unsigned() && x.get<uint64_t>() > uint64_t(INT64_MAX) ? -1 : x.get<int64_t>();
      if (v < 1 || v > c.num_hidden_layers)
        lr.bad(key, str("names layer ", v, ", outside 1..", c.num_hidden_layers));
      if (!out.insert(int(v)).second) lr.bad(key, str("names layer ", v, " twice"));
    }
    return out;
  };
  std::set<int> kda = layer_list("kda_layers"), full = layer_list("full_attn_layers");
  if (kda.empty() && full.empty())
    lr.bad("kda_layers", "and full_attn_layers are both missing or empty");
  c.layer_kinds.resize(c.num_hidden_layers);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    bool k = kda.count(i + 1), f = full.count(i + 1);
    if (k && f) lr.bad("kda_layers", str("and full_attn_layers both name layer ", i + 1));
    // The HF rule: KDA iff listed in kda_layers; otherwise full attention.
    if (!kda.empty()) c.layer_kinds[i] = k ? LayerKind::kKda : LayerKind::kMla;
    else c.layer_kinds[i] = f ? LayerKind::kMla : LayerKind::kKda;
  }
  c.kda_num_heads = c.num_kda_layers() > 0 ? lr.positive("num_heads", 1024) : 0;

  // MoE.
  c.num_experts = r.int_or("num_experts", 0, 0, 4096);
  c.first_k_dense_replace = r.int_or("first_k_dense_replace", 0, 0, 1 << 30);
  c.moe_layer_freq = r.int_or("moe_layer_freq", 1, 1, 1 << 30);
  if (c.num_experts > 0) {
    c.num_experts_per_token = r.positive("num_experts_per_token", c.num_experts);
    c.moe_intermediate_size = r.positive("moe_intermediate_size", 1 << 20);
    c.num_shared_experts = r.int_or("num_shared_experts", 0, 0, 64);
    c.moe_renormalize = r.boolean_or("moe_renormalize", true);
    c.routed_scaling_factor = float(r.number_or("routed_scaling_factor", 1.0));
    if (!(c.routed_scaling_factor > 0.f)) r.bad("routed_scaling_factor", "must be positive");
    std::string fn = r.string_or("moe_router_activation_func", "sigmoid");
    if (fn != "sigmoid")
      r.bad("moe_router_activation_func", "must be 'sigmoid' (softmax routing is not supported), got '" + fn + "'");
    if (r.integer_or("num_expert_group", 1) != 1) r.bad("num_expert_group", "must be 1");
    if (r.integer_or("topk_group", 1) != 1) r.bad("topk_group", "must be 1");
  }
  bool any_dense = false;
  for (int i = 0; i < c.num_hidden_layers; ++i) any_dense |= !c.is_moe(i);
  if (any_dense && c.intermediate_size <= 0)
    r.bad("intermediate_size", "must be positive (some layers use the dense MLP)");
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open config file");
  std::stringstream ss;
  ss << f.rdbuf();
  return from_json(ss.str(), path);
}

}  // namespace kimi
