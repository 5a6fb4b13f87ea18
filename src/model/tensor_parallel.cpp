#include "model/tensor_parallel.h"

#include "core/check.h"

namespace kimi {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

enum class Split { kWhole, kRows, kCols };

// The routed expert a tensor name belongs to ("...block_sparse_moe.experts.17.w1.weight" -> 17),
// or -1.
int routed_expert_of(const std::string& name) {
  const std::string key = ".experts.";
  const size_t at = name.find(key);
  if (at == std::string::npos) return -1;
  size_t i = at + key.size();
  int e = 0;
  if (i >= name.size() || name[i] < '0' || name[i] > '9') return -1;
  for (; i < name.size() && name[i] >= '0' && name[i] <= '9'; ++i) e = e * 10 + (name[i] - '0');
  return i < name.size() && name[i] == '.' ? e : -1;
}

Split split_of(const std::string& name) {
  if (name == "lm_head.weight") return Split::kRows;
  if (contains(name, ".self_attn.")) {
    if (ends_with(name, ".o_proj.weight")) return Split::kCols;
    for (const char* s : {".q_proj.weight", ".k_proj.weight", ".v_proj.weight", "_conv1d.weight",
                          ".f_b_proj.weight", ".g_b_proj.weight", ".b_proj.weight", ".A_log",
                          ".dt_bias", ".kv_b_proj.weight"})
      if (ends_with(name, s)) return Split::kRows;
    return Split::kWhole;  // f_a, g_a, o_norm, kv_a_proj_with_mqa, kv_a_layernorm
  }
  for (const char* s : {".gate_proj.weight", ".up_proj.weight", ".w1.weight", ".w3.weight"})
    if (ends_with(name, s)) return Split::kRows;
  for (const char* s : {".down_proj.weight", ".w2.weight"})
    if (ends_with(name, s)) return Split::kCols;
  return Split::kWhole;  // embedding, norms, router, correction bias
}

}  // namespace

void check_tensor_parallel(const ModelConfig& c, int world, bool expert_parallel) {
  if (world != 1 && world != 2 && world != 4 && world != 8)
    fail("tensor-parallel size ", world, " is not supported: use 1, 2, 4 or 8");
  auto need = [&](const char* field, int v) {
    if (v % world != 0)
      fail("tensor-parallel size ", world, " does not divide ", field, " = ", v,
           " (config.json): each GPU takes an equal share");
  };
  if (c.num_kda_layers() > 0) need("linear_attn_config.num_heads (KDA heads)", c.kda_num_heads);
  if (c.num_mla_layers() > 0) need("num_attention_heads (MLA heads)", c.num_attention_heads);
  bool dense = false, moe = false;
  for (int l = 0; l < c.num_hidden_layers; ++l) (c.is_moe(l) ? moe : dense) = true;
  if (dense) need("intermediate_size", c.intermediate_size);
  if (moe && expert_parallel) {
    need("num_experts (expert parallelism splits the routed experts by expert)", c.num_experts);
    if (c.num_shared_experts > 0)
      need("moe_intermediate_size × n_shared_experts (the shared expert's intermediate size)",
           c.moe_intermediate_size * c.num_shared_experts);
  } else if (moe) {
    need("moe_intermediate_size", c.moe_intermediate_size);
  }
  need("vocab_size", c.vocab_size);
}

ModelConfig rank_config(const ModelConfig& c, int world, bool expert_parallel) {
  check_tensor_parallel(c, world, expert_parallel);
  ModelConfig r = c;
  r.kda_num_heads /= world;
  r.num_attention_heads /= world;
  r.intermediate_size /= world;
  if (!expert_parallel) r.moe_intermediate_size /= world;
  r.vocab_size /= world;
  return r;
}

ExpertRange local_experts(const ModelConfig& full, int rank, int world, bool expert_parallel) {
  if (!expert_parallel || world == 1) return {0, full.num_experts};
  const int n = full.num_experts / world;
  return {rank * n, n};
}

int shared_expert_inter(const ModelConfig& full, int world) {
  return full.moe_intermediate_size * full.num_shared_experts / world;
}

TensorSlice tensor_slice(const std::string& name, const std::vector<int64_t>& shape, int rank,
                         int world, bool expert_parallel) {
  KIMI_CHECK(world >= 1 && rank >= 0 && rank < world, "rank ", rank, " of ", world);
  KIMI_CHECK(!shape.empty(), "tensor ", name);
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  TensorSlice s;
  // A_log is [1, 1, H, 1]: one value per head, split like a column vector.
  s.rows = ends_with(name, ".A_log") ? numel : shape[0];
  s.cols = s.rows ? numel / s.rows : 0;
  s.nrows = s.rows;
  s.ncols = s.cols;
  // A routed expert under expert parallelism is whole on the rank that holds it (which one:
  // local_experts; the weight layout asks only for its own).
  if (expert_parallel && world > 1 && routed_expert_of(name) >= 0) return s;
  switch (split_of(name)) {
    case Split::kWhole:
      break;
    case Split::kRows:
      KIMI_CHECK(s.rows % world == 0, "tensor ", name, ": ", s.rows, " rows over ", world, " ranks");
      s.nrows = s.rows / world;
      s.row0 = s.nrows * rank;
      break;
    case Split::kCols:
      KIMI_CHECK(s.cols % world == 0, "tensor ", name, ": ", s.cols, " columns over ", world, " ranks");
      s.ncols = s.cols / world;
      s.col0 = s.ncols * rank;
      break;
  }
  return s;
}

}  // namespace kimi
