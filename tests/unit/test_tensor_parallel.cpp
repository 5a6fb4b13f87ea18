// Tensor-parallel split (src/model/tensor_parallel.h): every rank's slices of every checkpoint
// tensor have the shapes of the rank's config, the split tensors' slices tile the tensor exactly
// once over the ranks, and configs that do not divide are refused naming the field.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <string>

#include "../error_of.h"
#include "core/check.h"
#include "model/config.h"
#include "model/tensor_parallel.h"
#include "model/tiny.h"
#include "model/weights.h"

namespace kimi {
namespace {

using test::error_of;

ModelConfig config_of(const TinySpec& s) { return ModelConfig::from_json(tiny_config_json(s), "tiny"); }

// A tiny model whose heads, experts and intermediate sizes split 1, 2 and 4 ways.
TinySpec split_spec() {
  TinySpec s;
  s.layers = 4;
  s.hidden = 64;
  s.kda_heads = 4;
  s.mla_heads = 4;
  s.experts = 8;
  s.top_k = 2;
  s.moe_inter = 32;
  s.dense_inter = 64;
  return s;
}

ModelConfig full_size() {
  return ModelConfig::from_file(std::string(KIMI_SOURCE_DIR) +
                                "/benchmarks/configs/kimi-linear-48b-a3b/config.json");
}

// Slices of rank r match the tensors of rank_config(c, world) (the embedding stays whole), and
// the split tensors' slices cover each element exactly once over the ranks.
void check_split(const ModelConfig& c, int world) {
  SCOPED_TRACE(testing::Message() << "world " << world);
  const ModelConfig rc = rank_config(c, world);
  std::map<std::string, int64_t> rank_numel;
  for (const auto& t : expected_tensors(rc)) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    rank_numel[t.name] = n;
  }
  int split = 0;
  for (const auto& t : expected_tensors(c)) {
    SCOPED_TRACE(t.name);
    int64_t full = 1;
    for (int64_t d : t.shape) full *= d;
    std::vector<int> cover(size_t(full), 0);
    for (int r = 0; r < world; ++r) {
      const TensorSlice s = tensor_slice(t.name, t.shape, r, world);
      ASSERT_EQ(s.rows * s.cols, full);
      ASSERT_GE(s.row0, 0);
      ASSERT_LE(s.row0 + s.nrows, s.rows);
      ASSERT_GE(s.col0, 0);
      ASSERT_LE(s.col0 + s.ncols, s.cols);
      if (t.name == "model.embed_tokens.weight") {
        EXPECT_TRUE(s.whole());
      } else {
        EXPECT_EQ(s.numel(), rank_numel.at(t.name));
      }
      for (int64_t i = s.row0; i < s.row0 + s.nrows; ++i)
        for (int64_t j = s.col0; j < s.col0 + s.ncols; ++j) ++cover[size_t(i * s.cols + j)];
    }
    const bool whole = tensor_slice(t.name, t.shape, 0, world).whole();
    if (!whole) ++split;
    for (int64_t i = 0; i < full; ++i)
      ASSERT_EQ(cover[size_t(i)], whole ? world : 1) << "element " << i;
  }
  if (world > 1) {
    EXPECT_GT(split, 0);
  }
}

TEST(TensorParallel, TinyModelSlicesTileEveryTensor) {
  for (int world : {1, 2, 4}) check_split(config_of(split_spec()), world);
}

TEST(TensorParallel, FullSizeShapesOverEightRanks) {
  const ModelConfig c = full_size();
  const ModelConfig rc = rank_config(c, 8);
  EXPECT_EQ(rc.kda_num_heads, 4);
  EXPECT_EQ(rc.num_attention_heads, 4);
  EXPECT_EQ(rc.moe_intermediate_size, 128);
  EXPECT_EQ(rc.vocab_size, c.vocab_size / 8);
  EXPECT_EQ(rc.hidden_size, c.hidden_size);
  EXPECT_EQ(rc.num_experts, c.num_experts);
  // Spot checks of the split directions on the real tensor names.
  const auto q = tensor_slice("model.layers.0.self_attn.q_proj.weight", {4096, 2304}, 3, 8);
  EXPECT_EQ(q.row0, 3 * 512);
  EXPECT_EQ(q.nrows, 512);
  EXPECT_EQ(q.ncols, 2304);
  const auto o = tensor_slice("model.layers.0.self_attn.o_proj.weight", {2304, 4096}, 1, 8);
  EXPECT_EQ(o.col0, 512);
  EXPECT_EQ(o.ncols, 512);
  EXPECT_EQ(o.nrows, 2304);
  const auto a = tensor_slice("model.layers.0.self_attn.A_log", {1, 1, 32, 1}, 7, 8);
  EXPECT_EQ(a.row0, 28);
  EXPECT_EQ(a.nrows, 4);
  const auto kva = tensor_slice("model.layers.3.self_attn.kv_a_proj_with_mqa.weight", {576, 2304}, 5, 8);
  EXPECT_TRUE(kva.whole());
  const auto w2 = tensor_slice("model.layers.1.block_sparse_moe.experts.17.w2.weight", {2304, 1024}, 2, 4);
  EXPECT_EQ(w2.col0, 512);
  EXPECT_EQ(w2.ncols, 256);
  EXPECT_TRUE(tensor_slice("model.layers.1.block_sparse_moe.gate.weight", {256, 2304}, 1, 2).whole());
  EXPECT_TRUE(tensor_slice("model.embed_tokens.weight", {163840, 2304}, 1, 2).whole());
  EXPECT_EQ(tensor_slice("lm_head.weight", {163840, 2304}, 1, 2).row0, 81920);
}

TEST(TensorParallel, RefusesSizesThatDoNotDivide) {
  const ModelConfig c = full_size();
  EXPECT_NE(error_of([&] { check_tensor_parallel(c, 3); }).find("use 1, 2, 4 or 8"), std::string::npos);
  EXPECT_NE(error_of([&] { check_tensor_parallel(c, 0); }).find("not supported"), std::string::npos);
  TinySpec s;  // 2 KDA and 2 MLA heads: TP=4 cannot split them
  const std::string heads = error_of([&] { check_tensor_parallel(config_of(s), 4); });
  EXPECT_NE(heads.find("KDA heads"), std::string::npos) << heads;
  s.kda_heads = 4;
  const std::string mla = error_of([&] { check_tensor_parallel(config_of(s), 4); });
  EXPECT_NE(mla.find("num_attention_heads"), std::string::npos) << mla;
  s.mla_heads = 4;
  s.vocab = 1282;
  const std::string vocab = error_of([&] { check_tensor_parallel(config_of(s), 4); });
  EXPECT_NE(vocab.find("vocab_size = 1282"), std::string::npos) << vocab;
  s.vocab = 1280;
  s.moe_inter = 30;
  const std::string inter = error_of([&] { check_tensor_parallel(config_of(s), 4); });
  EXPECT_NE(inter.find("moe_intermediate_size = 30"), std::string::npos) << inter;
  s.moe_inter = 32;
  EXPECT_EQ(error_of([&] { check_tensor_parallel(config_of(s), 4); }), "");
}

// Expert parallelism: each routed expert is whole on exactly the rank whose local_experts range
// holds it, the ranges tile 0..E, every other tensor splits as without it (the shared expert by
// its intermediate dimension), and rank_config keeps the routed experts' intermediate size.
void check_expert_split(const ModelConfig& c, int world) {
  SCOPED_TRACE(testing::Message() << "world " << world);
  const ModelConfig rc = rank_config(c, world, true);
  EXPECT_EQ(rc.moe_intermediate_size, c.moe_intermediate_size);
  EXPECT_EQ(rc.num_experts, c.num_experts);
  EXPECT_EQ(shared_expert_inter(c, world), c.moe_intermediate_size * c.num_shared_experts / world);
  std::vector<int> owner(size_t(c.num_experts), -1);
  for (int r = 0; r < world; ++r) {
    const ExpertRange mine = local_experts(c, r, world, true);
    EXPECT_EQ(mine.count, c.num_experts / world);
    for (int e = mine.first; e < mine.first + mine.count; ++e) {
      ASSERT_EQ(owner[size_t(e)], -1) << "expert " << e << " on two ranks";
      owner[size_t(e)] = r;
    }
  }
  for (int e = 0; e < c.num_experts; ++e) EXPECT_GE(owner[size_t(e)], 0) << "expert " << e;
  int routed = 0;
  for (const auto& t : expected_tensors(c)) {
    SCOPED_TRACE(t.name);
    const bool is_routed = t.name.find(".experts.") != std::string::npos;
    routed += is_routed;
    for (int r = 0; r < world; ++r) {
      const TensorSlice ep = tensor_slice(t.name, t.shape, r, world, true);
      const TensorSlice tp = tensor_slice(t.name, t.shape, r, world, false);
      if (is_routed) {
        EXPECT_TRUE(ep.whole());
      } else {
        EXPECT_EQ(ep.row0, tp.row0);
        EXPECT_EQ(ep.nrows, tp.nrows);
        EXPECT_EQ(ep.col0, tp.col0);
        EXPECT_EQ(ep.ncols, tp.ncols);
      }
    }
  }
  int moe_layers = 0;
  for (int l = 0; l < c.num_hidden_layers; ++l) moe_layers += c.is_moe(l);
  EXPECT_EQ(routed, 3 * c.num_experts * moe_layers);
}

TEST(TensorParallel, ExpertParallelGivesEachExpertToOneRank) {
  for (int world : {1, 2, 4}) check_expert_split(config_of(split_spec()), world);
  check_expert_split(full_size(), 8);
  const ModelConfig c = full_size();
  EXPECT_EQ(local_experts(c, 3, 8, true).first, 96);
  EXPECT_EQ(local_experts(c, 3, 8, false).count, 256);  // without it every rank runs all experts
  EXPECT_TRUE(tensor_slice("model.layers.1.block_sparse_moe.experts.17.w2.weight", {2304, 1024}, 2, 4,
                           true).whole());
  const auto shared =
      tensor_slice("model.layers.1.block_sparse_moe.shared_experts.down_proj.weight", {2304, 1024}, 1, 4, true);
  EXPECT_EQ(shared.col0, 256);
  EXPECT_EQ(shared.ncols, 256);
}

TEST(TensorParallel, ExpertParallelRefusesExpertsThatDoNotDivide) {
  TinySpec s;
  s.kda_heads = 4;
  s.mla_heads = 4;
  s.vocab = 1280;
  s.experts = 6;
  s.top_k = 2;
  s.moe_inter = 32;
  const std::string e = error_of([&] { check_tensor_parallel(config_of(s), 4, true); });
  EXPECT_NE(e.find("num_experts"), std::string::npos) << e;
  EXPECT_NE(e.find("= 6"), std::string::npos) << e;
  EXPECT_EQ(error_of([&] { check_tensor_parallel(config_of(s), 2, true); }), "");
  // The routed experts stay whole (30 need not divide), the shared expert splits (it must).
  s.experts = 8;
  s.moe_inter = 30;
  ASSERT_EQ(config_of(s).num_shared_experts, 1);
  const std::string shared = error_of([&] { check_tensor_parallel(config_of(s), 4, true); });
  EXPECT_NE(shared.find("shared expert"), std::string::npos) << shared;
  EXPECT_EQ(error_of([&] { check_tensor_parallel(config_of(s), 2, true); }), "");
}

}  // namespace
}  // namespace kimi
