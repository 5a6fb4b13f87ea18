#include "model/weights.h"

#include <cstring>
#include <functional>
#include <set>

#include "core/check.h"

namespace kimi {
namespace {

std::string layer_prefix(int i) { return str("model.layers.", i, "."); }

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& c) {
  const int64_t hd = c.hidden_size, D = kKdaHeadDim;
  std::vector<ExpectedTensor> t;
  auto add = [&](std::string name, std::vector<int64_t> shape, bool small = false) {
    t.push_back({std::move(name), std::move(shape), small});
  };
  add("model.embed_tokens.weight", {c.vocab_size, hd});
  add("model.norm.weight", {hd});
  add("lm_head.weight", {c.vocab_size, hd});
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    std::string p = layer_prefix(i);
    add(p + "input_layernorm.weight", {hd});
    add(p + "post_attention_layernorm.weight", {hd});
    std::string a = p + "self_attn.";
    if (c.is_kda(i)) {
      const int64_t H = c.kda_num_heads, HD = H * D;
      for (const char* x : {"q", "k", "v"}) add(a + x + "_proj.weight", {HD, hd});
      for (const char* x : {"q", "k", "v"})
        add(a + x + "_conv1d.weight", {HD, 1, kKdaConvSize}, true);
      add(a + "f_a_proj.weight", {D, hd});
      add(a + "f_b_proj.weight", {HD, D});
      add(a + "dt_bias", {HD}, true);
      add(a + "A_log", {1, 1, H, 1}, true);
      add(a + "b_proj.weight", {H, hd});
      add(a + "g_a_proj.weight", {D, hd});
      add(a + "g_b_proj.weight", {HD, D});
      add(a + "o_norm.weight", {D});
      add(a + "o_proj.weight", {hd, HD});
    } else {
      const int64_t H = c.num_attention_heads;
      add(a + "q_proj.weight", {H * kMlaQkDim, hd});
      add(a + "kv_a_proj_with_mqa.weight", {kMlaCacheDim, hd});
      add(a + "kv_a_layernorm.weight", {kMlaLatentDim});
      add(a + "kv_b_proj.weight", {H * (kMlaNopeDim + kMlaVDim), kMlaLatentDim});
      add(a + "o_proj.weight", {hd, H * kMlaVDim});
    }
    if (c.is_moe(i)) {
      std::string m = p + "block_sparse_moe.";
      const int64_t I = c.moe_intermediate_size;
      add(m + "gate.weight", {c.num_experts, hd});
      add(m + "gate.e_score_correction_bias", {c.num_experts}, true);
      for (int e = 0; e < c.num_experts; ++e) {
        std::string x = m + str("experts.", e, ".");
        add(x + "w1.weight", {I, hd});
        add(x + "w3.weight", {I, hd});
        add(x + "w2.weight", {hd, I});
      }
      if (c.num_shared_experts > 0) {
        const int64_t S = I * c.num_shared_experts;
        add(m + "shared_experts.gate_proj.weight", {S, hd});
        add(m + "shared_experts.up_proj.weight", {S, hd});
        add(m + "shared_experts.down_proj.weight", {hd, S});
      }
    } else {
      std::string m = p + "mlp.";
      add(m + "gate_proj.weight", {c.intermediate_size, hd});
      add(m + "up_proj.weight", {c.intermediate_size, hd});
      add(m + "down_proj.weight", {hd, c.intermediate_size});
    }
  }
  return t;
}

void validate_checkpoint(const ModelConfig& c, const Checkpoint& ckpt) {
  std::set<std::string> expected_names;
  for (const auto& e : expected_tensors(c)) {
    expected_names.insert(e.name);
    const TensorInfo* t = ckpt.find(e.name);
    if (!t) fail(ckpt.dir(), ": tensor '", e.name, "' is missing (expected ", shape_str(e.shape), ")");
    if (t->dtype != DType::kBF16 && t->dtype != DType::kF16 && t->dtype != DType::kF32)
      fail(t->file, ": tensor '", e.name, "' has dtype ", dtype_name(t->dtype),
           "; expected BF16, F16 or F32");
    if (t->shape != e.shape)
      fail(t->file, ": tensor '", e.name, "' has shape ", shape_str(t->shape), "; expected ",
           shape_str(e.shape));
  }
  for (const auto& n : ckpt.names())
    if (!expected_names.count(n))
      fail(ckpt.get(n).file, ": unexpected tensor '", n, "' (not part of this config's model)");
}

ModelWeights load_weights_f32(const ModelConfig& c, const Checkpoint& ckpt) {
  validate_checkpoint(c, ckpt);
  ModelWeights w;
  w.layers.resize(c.num_hidden_layers);
  // Each job converts one tensor into [offset, offset + numel) of its destination vector.
  struct Job {
    const TensorInfo* src;
    std::vector<float>* dst;
    size_t offset;
  };
  std::vector<Job> jobs;
  auto take = [&](const std::string& name, std::vector<float>& dst, size_t offset = 0) {
    const TensorInfo& t = ckpt.get(name);
    if (dst.size() < offset + size_t(t.numel())) dst.resize(offset + size_t(t.numel()));
    jobs.push_back({&t, &dst, offset});
    return size_t(t.numel());
  };
  auto take_mlp = [&](MlpWeights& m, const std::string& gate, const std::string& up,
                      const std::string& down, int inter) {
    m.inter = inter;
    size_t n = take(gate, m.gate_up);
    take(up, m.gate_up, n);
    take(down, m.down);
  };
  take("model.embed_tokens.weight", w.embed);
  take("model.norm.weight", w.final_norm);
  take("lm_head.weight", w.lm_head);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights& L = w.layers[i];
    std::string p = layer_prefix(i), a = p + "self_attn.";
    take(p + "input_layernorm.weight", L.input_norm);
    take(p + "post_attention_layernorm.weight", L.post_norm);
    if (c.is_kda(i)) {
      KdaLayerWeights& k = L.kda;
      size_t off = 0;
      for (const char* x : {"q", "k", "v"}) off += take(a + x + "_proj.weight", k.qkv, off);
      off = 0;
      for (const char* x : {"q", "k", "v"}) off += take(a + x + "_conv1d.weight", k.conv, off);
      take(a + "f_a_proj.weight", k.f_a);
      take(a + "f_b_proj.weight", k.f_b);
      take(a + "g_a_proj.weight", k.g_a);
      take(a + "g_b_proj.weight", k.g_b);
      take(a + "b_proj.weight", k.b);
      take(a + "A_log", k.A_log);
      take(a + "dt_bias", k.dt_bias);
      take(a + "o_norm.weight", k.o_norm);
      take(a + "o_proj.weight", k.o);
    } else {
      MlaLayerWeights& m = L.mla;
      take(a + "q_proj.weight", m.q);
      take(a + "kv_a_proj_with_mqa.weight", m.kv_a);
      take(a + "kv_a_layernorm.weight", m.kv_norm);
      take(a + "kv_b_proj.weight", m.kv_b);
      take(a + "o_proj.weight", m.o);
    }
    if (c.is_moe(i)) {
      std::string m = p + "block_sparse_moe.";
      take(m + "gate.weight", L.moe.router);
      take(m + "gate.e_score_correction_bias", L.moe.correction_bias);
      L.moe.experts.resize(c.num_experts);
      for (int e = 0; e < c.num_experts; ++e) {
        std::string x = m + str("experts.", e, ".");
        take_mlp(L.moe.experts[e], x + "w1.weight", x + "w3.weight", x + "w2.weight",
                 c.moe_intermediate_size);
      }
      if (c.num_shared_experts > 0)
        take_mlp(L.moe.shared, m + "shared_experts.gate_proj.weight",
                 m + "shared_experts.up_proj.weight", m + "shared_experts.down_proj.weight",
                 c.moe_intermediate_size * c.num_shared_experts);
    } else {
      take_mlp(L.mlp, p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight",
               p + "mlp.down_proj.weight", c.intermediate_size);
    }
  }
  // All resizes happened above, so the destination pointers are stable now.
#pragma omp parallel for schedule(dynamic)
  for (size_t j = 0; j < jobs.size(); ++j) {
    const Job& job = jobs[j];
    convert_to_f32(job.src->dtype, job.src->data, job.dst->data() + job.offset,
                   size_t(job.src->numel()));
  }
  return w;
}

}  // namespace kimi
