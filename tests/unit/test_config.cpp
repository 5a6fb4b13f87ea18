// config.json parsing: the golden tiny model, the official full-size config, and one refusal per
// field the engine cannot run (each error must name the field and the source).
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "../error_of.h"
#include "core/check.h"
#include "model/config.h"

namespace kimi {
namespace {

using test::error_of;

using json = nlohmann::json;

// The official Kimi-Linear-48B-A3B-Instruct config.json (docs/model.md §1).
const char* kOfficialConfig = R"({
  "architectures": ["KimiLinearForCausalLM"],
  "auto_map": {
    "AutoConfig": "configuration_kimi.KimiLinearConfig",
    "AutoModelForCausalLM": "modeling_kimi.KimiLinearForCausalLM"
  },
  "bos_token_id": 163584,
  "dtype": "bfloat16",
  "eos_token_id": 163586,
  "first_k_dense_replace": 1,
  "head_dim": 72,
  "hidden_act": "silu",
  "hidden_size": 2304,
  "initializer_range": 0.02,
  "intermediate_size": 9216,
  "kv_lora_rank": 512,
  "linear_attn_config": {
    "full_attn_layers": [4, 8, 12, 16, 20, 24, 27],
    "head_dim": 128,
    "kda_layers": [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26],
    "num_heads": 32,
    "short_conv_kernel_size": 4
  },
  "mla_use_nope": true,
  "model_max_length": 1048576,
  "model_type": "kimi_linear",
  "moe_intermediate_size": 1024,
  "moe_layer_freq": 1,
  "moe_renormalize": true,
  "moe_router_activation_func": "sigmoid",
  "num_attention_heads": 32,
  "num_expert_group": 1,
  "num_experts": 256,
  "num_experts_per_token": 8,
  "num_hidden_layers": 27,
  "num_key_value_heads": 32,
  "num_nextn_predict_layers": 0,
  "num_shared_experts": 1,
  "pad_token_id": 163839,
  "q_lora_rank": null,
  "qk_nope_head_dim": 128,
  "qk_rope_head_dim": 64,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "routed_scaling_factor": 2.446,
  "tie_word_embeddings": false,
  "topk_group": 1,
  "transformers_version": "4.57.0",
  "use_cache": true,
  "use_grouped_topk": true,
  "v_head_dim": 128,
  "vocab_size": 163840
})";

// Parses the official config after `edit`; expects an error naming the source and all `parts`.
void expect_refused(const std::function<void(json&)>& edit, std::initializer_list<std::string> parts) {
  json j = json::parse(kOfficialConfig);
  edit(j);
  std::string msg = error_of([&] { ModelConfig::from_json(j.dump(), "official/config.json"); });
  EXPECT_NE(msg.find("official/config.json"), std::string::npos) << msg;
  for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
}

std::vector<int> mla_layers(const ModelConfig& c) {
  std::vector<int> out;
  for (int i = 0; i < c.num_hidden_layers; ++i)
    if (!c.is_kda(i)) out.push_back(i);
  return out;
}

TEST(Config, GoldenModelA) {
  std::string path = std::string(KIMI_GOLDEN_DIR) + "/model-a/config.json";
  if (!std::filesystem::exists(path))
    GTEST_SKIP() << "golden data not found at " << path << " (set KIMI_GOLDEN_DIR)";
  ModelConfig c = ModelConfig::from_file(path);
  EXPECT_EQ(c.vocab_size, 256);
  EXPECT_EQ(c.hidden_size, 128);
  EXPECT_EQ(c.num_hidden_layers, 8);
  ASSERT_EQ(c.layer_kinds.size(), 8u);
  EXPECT_EQ(mla_layers(c), (std::vector<int>{3, 7}));
  EXPECT_EQ(c.num_kda_layers(), 6);
  EXPECT_EQ(c.num_mla_layers(), 2);
  EXPECT_EQ(c.kind_index(3), 0);
  EXPECT_EQ(c.kind_index(7), 1);
  EXPECT_EQ(c.kind_index(4), 3);
  EXPECT_EQ(c.kind_index(6), 5);
  EXPECT_EQ(c.num_attention_heads, 2);
  EXPECT_EQ(c.kda_num_heads, 2);
  EXPECT_EQ(c.num_experts, 16);
  EXPECT_EQ(c.num_experts_per_token, 4);
  EXPECT_EQ(c.moe_intermediate_size, 32);
  EXPECT_EQ(c.num_shared_experts, 1);
  EXPECT_EQ(c.intermediate_size, 256);
  EXPECT_EQ(c.first_k_dense_replace, 1);
  EXPECT_FALSE(c.is_moe(0));
  for (int i = 1; i < 8; ++i) EXPECT_TRUE(c.is_moe(i)) << i;
  EXPECT_TRUE(c.moe_renormalize);
  EXPECT_FLOAT_EQ(c.routed_scaling_factor, 2.446f);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.model_max_length, 1048576);
  EXPECT_EQ(c.bos_token_id, 252);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{253});
  EXPECT_EQ(c.pad_token_id, 255);
}

TEST(Config, OfficialFullSize) {
  ModelConfig c = ModelConfig::from_json(kOfficialConfig, "official/config.json");
  EXPECT_EQ(c.vocab_size, 163840);
  EXPECT_EQ(c.hidden_size, 2304);
  EXPECT_EQ(c.num_hidden_layers, 27);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.kda_num_heads, 32);
  EXPECT_EQ(c.intermediate_size, 9216);
  EXPECT_EQ(c.num_experts, 256);
  EXPECT_EQ(c.num_experts_per_token, 8);
  EXPECT_EQ(c.num_shared_experts, 1);
  EXPECT_EQ(c.moe_intermediate_size, 1024);
  EXPECT_FLOAT_EQ(c.routed_scaling_factor, 2.446f);
  EXPECT_EQ(c.bos_token_id, 163584);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{163586});
  EXPECT_EQ(c.pad_token_id, 163839);
  EXPECT_EQ(mla_layers(c), (std::vector<int>{3, 7, 11, 15, 19, 23, 26}));
  EXPECT_EQ(c.num_kda_layers(), 20);
  EXPECT_EQ(c.num_mla_layers(), 7);
  // kind_index: position among layers of the same kind.
  std::vector<int> kda_idx, mla_idx;
  for (int i = 0; i < 27; ++i) (c.is_kda(i) ? kda_idx : mla_idx).push_back(c.kind_index(i));
  for (int k = 0; k < 20; ++k) EXPECT_EQ(kda_idx[k], k);
  for (int k = 0; k < 7; ++k) EXPECT_EQ(mla_idx[k], k);
  EXPECT_EQ(c.kind_index(26), 6);
  EXPECT_EQ(c.kind_index(25), 19);
  EXPECT_EQ(c.kind_index(24), 18);
  EXPECT_EQ(c.kind_index(4), 3);
  EXPECT_FALSE(c.is_moe(0));
  for (int i = 1; i < 27; ++i) EXPECT_TRUE(c.is_moe(i)) << i;
}

TEST(Config, LayerListsAlone) {
  // Only full_attn_layers: the rest are KDA.
  json j = json::parse(kOfficialConfig);
  j["linear_attn_config"].erase("kda_layers");
  ModelConfig c = ModelConfig::from_json(j.dump(), "x");
  EXPECT_EQ(mla_layers(c), (std::vector<int>{3, 7, 11, 15, 19, 23, 26}));
  // Only kda_layers: the rest are MLA.
  j = json::parse(kOfficialConfig);
  j["linear_attn_config"].erase("full_attn_layers");
  c = ModelConfig::from_json(j.dump(), "x");
  EXPECT_EQ(mla_layers(c), (std::vector<int>{3, 7, 11, 15, 19, 23, 26}));
  // A list of eos ids.
  j = json::parse(kOfficialConfig);
  j["eos_token_id"] = {163586, 163585};
  c = ModelConfig::from_json(j.dump(), "x");
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{163586, 163585}));
}

TEST(ConfigRefusal, QLoraRank) {
  expect_refused([](json& j) { j["q_lora_rank"] = 1536; }, {"'q_lora_rank'"});
}
TEST(ConfigRefusal, KvLoraRank) {
  expect_refused([](json& j) { j["kv_lora_rank"] = 256; }, {"'kv_lora_rank'", "512", "256"});
}
TEST(ConfigRefusal, QkRopeHeadDim) {
  expect_refused([](json& j) { j["qk_rope_head_dim"] = 32; }, {"'qk_rope_head_dim'", "64"});
}
TEST(ConfigRefusal, QkNopeAndVHeadDim) {
  expect_refused([](json& j) { j["qk_nope_head_dim"] = 64; }, {"'qk_nope_head_dim'"});
  expect_refused([](json& j) { j["v_head_dim"] = 64; }, {"'v_head_dim'"});
}
TEST(ConfigRefusal, KdaHeadDim) {
  expect_refused([](json& j) { j["linear_attn_config"]["head_dim"] = 64; },
                 {"linear_attn_config", "'head_dim'", "128"});
}
TEST(ConfigRefusal, ShortConvKernelSize) {
  expect_refused([](json& j) { j["linear_attn_config"]["short_conv_kernel_size"] = 3; },
                 {"linear_attn_config", "'short_conv_kernel_size'", "4"});
}
TEST(ConfigRefusal, SoftmaxRouter) {
  expect_refused([](json& j) { j["moe_router_activation_func"] = "softmax"; },
                 {"'moe_router_activation_func'", "softmax"});
}
TEST(ConfigRefusal, MlaUseNopeFalse) {
  expect_refused([](json& j) { j["mla_use_nope"] = false; }, {"'mla_use_nope'"});
}
TEST(ConfigRefusal, RopeScaling) {
  expect_refused([](json& j) { j["rope_scaling"] = {{"type", "yarn"}}; }, {"'rope_scaling'"});
}
TEST(ConfigRefusal, MissingVocabSize) {
  expect_refused([](json& j) { j.erase("vocab_size"); }, {"'vocab_size'", "missing"});
}
TEST(ConfigRefusal, MissingLinearAttnConfig) {
  expect_refused([](json& j) { j.erase("linear_attn_config"); }, {"'linear_attn_config'", "missing"});
}
TEST(ConfigRefusal, LayerOutOfRange) {
  expect_refused([](json& j) { j["linear_attn_config"]["full_attn_layers"].push_back(28); },
                 {"'full_attn_layers'", "layer 28", "outside 1..27"});
  expect_refused([](json& j) { j["linear_attn_config"]["kda_layers"].push_back(0); },
                 {"'kda_layers'", "layer 0", "outside"});
  // 2^32 + 1 must not wrap to layer 1.
  expect_refused([](json& j) { j["linear_attn_config"]["kda_layers"] = {4294967297ll}; },
                 {"'kda_layers'", "outside"});
}
TEST(ConfigRefusal, LayerListedTwice) {
  expect_refused([](json& j) { j["linear_attn_config"]["kda_layers"].push_back(2); },
                 {"'kda_layers'", "layer 2 twice"});
  expect_refused([](json& j) { j["linear_attn_config"]["full_attn_layers"].push_back(1); },
                 {"kda_layers", "full_attn_layers", "layer 1"});
}
TEST(ConfigRefusal, NoLayerLists) {
  expect_refused(
      [](json& j) {
        j["linear_attn_config"].erase("kda_layers");
        j["linear_attn_config"]["full_attn_layers"] = json::array();
      },
      {"kda_layers", "full_attn_layers", "missing or empty"});
}
TEST(ConfigRefusal, InvalidJson) {
  std::string msg = error_of([] { ModelConfig::from_json(R"({"vocab_size": 3,)", "broken.json"); });
  EXPECT_NE(msg.find("broken.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("invalid JSON"), std::string::npos) << msg;
  msg = error_of([] { ModelConfig::from_json("[1, 2]", "arr.json"); });
  EXPECT_NE(msg.find("arr.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("JSON object"), std::string::npos) << msg;
}
TEST(ConfigRefusal, WrongTypes) {
  expect_refused([](json& j) { j["vocab_size"] = "163840"; }, {"'vocab_size'", "integer"});
  expect_refused([](json& j) { j["hidden_size"] = 2304.5; }, {"'hidden_size'", "integer"});
  expect_refused([](json& j) { j["mla_use_nope"] = "true"; }, {"'mla_use_nope'", "true or false"});
  expect_refused([](json& j) { j["rms_norm_eps"] = "1e-5"; }, {"'rms_norm_eps'", "number"});
  expect_refused([](json& j) { j["moe_router_activation_func"] = 1; },
                 {"'moe_router_activation_func'", "string"});
  expect_refused([](json& j) { j["linear_attn_config"] = json::array({1, 2}); },
                 {"'linear_attn_config'", "object"});
  expect_refused([](json& j) { j["linear_attn_config"]["kda_layers"] = "1,2,3"; },
                 {"'kda_layers'", "list"});
  expect_refused([](json& j) { j["linear_attn_config"]["full_attn_layers"] = {4, "8"}; },
                 {"'full_attn_layers'", "list"});
  expect_refused([](json& j) { j["eos_token_id"] = "</s>"; }, {"'eos_token_id'"});
  expect_refused([](json& j) { j["linear_attn_config"]["num_heads"] = 32.0; }, {"'num_heads'", "integer"});
}
TEST(ConfigRefusal, OutOfRangeValues) {
  expect_refused([](json& j) { j["num_experts_per_token"] = 257; }, {"'num_experts_per_token'"});
  expect_refused([](json& j) { j["num_hidden_layers"] = 0; }, {"'num_hidden_layers'"});
  expect_refused([](json& j) { j["eos_token_id"] = 163840; }, {"'eos_token_id'", "vocabulary"});
  expect_refused([](json& j) { j["model_type"] = "deepseek_v3"; }, {"'model_type'", "deepseek_v3"});
  // Integers that would wrap when narrowed to int are refused, not read modulo 2^32.
  expect_refused([](json& j) { j["num_experts"] = 4294967312ll; }, {"'num_experts'"});
  expect_refused([](json& j) { j["intermediate_size"] = 4294967296ll + 9216; }, {"'intermediate_size'"});
  expect_refused([](json& j) { j["vocab_size"] = 18446744073709551615ull; }, {"'vocab_size'"});
}

TEST(Config, MissingFile) {
  std::string msg = error_of([] { ModelConfig::from_file("/nonexistent/dir/config.json"); });
  EXPECT_NE(msg.find("/nonexistent/dir/config.json"), std::string::npos) << msg;
}

}  // namespace
}  // namespace kimi
