// CudaModel weights: the device layout (one allocation, projections that read the same input
// concatenated), the upload from the mmapped checkpoint (bf16 straight through, other dtypes
// converted on the host) and the GPU draw for --random-weights.
#if KIMI_HAVE_CUDA

#include <algorithm>
#include <unordered_map>

#include "core/check.h"
#include "core/dtype.h"
#include "model/cuda_model_impl.h"
#include "model/weights.h"

namespace kimi {

namespace {

std::string layer_prefix(int i) { return str("model.layers.", i, "."); }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

uint64_t name_hash(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::unordered_map<std::string, int64_t> expected_numels(const ModelConfig& c) {
  std::unordered_map<std::string, int64_t> out;
  for (const auto& e : expected_tensors(c)) {
    int64_t n = 1;
    for (int64_t d : e.shape) n *= d;
    out.emplace(e.name, n);
  }
  return out;
}

}  // namespace

size_t CudaModel::Impl::layout_weights(Carver& c) {
  fills.clear();
  const ModelConfig& m = cfg;
  const auto sizes = expected_numels(m);
  auto numel = [&](const std::string& name) { return sizes.at(name); };
  auto bf = [&](std::vector<std::string> names) {
    int64_t n = 0;
    for (auto& s : names) n += numel(s);
    bf16* p = c.take<bf16>(size_t(n));
    fills.push_back({p, true, std::move(names)});
    return p;
  };
  auto f32 = [&](std::vector<std::string> names) {
    int64_t n = 0;
    for (auto& s : names) n += numel(s);
    float* p = c.take<float>(size_t(n));
    fills.push_back({p, false, std::move(names)});
    return p;
  };
  auto mlp = [&](DevMlp& w, const std::string& gate, const std::string& up, const std::string& down,
                 int inter) {
    w.inter = inter;
    w.gate_up = bf({gate, up});
    w.down = bf({down});
  };
  embed = bf({"model.embed_tokens.weight"});
  final_norm = f32({"model.norm.weight"});
  lm_head = bf({"lm_head.weight"});
  layers.assign(m.num_hidden_layers, DevLayer{});
  for (int i = 0; i < m.num_hidden_layers; ++i) {
    DevLayer& L = layers[i];
    const std::string p = layer_prefix(i), a = p + "self_attn.";
    L.in_norm = f32({p + "input_layernorm.weight"});
    L.post_norm = f32({p + "post_attention_layernorm.weight"});
    if (m.is_kda(i)) {
      DevKda& k = L.kda;
      k.qkv = bf({a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"});
      k.fg_a = bf({a + "f_a_proj.weight", a + "g_a_proj.weight"});
      k.b = bf({a + "b_proj.weight"});
      k.f_b = bf({a + "f_b_proj.weight"});
      k.g_b = bf({a + "g_b_proj.weight"});
      k.o = bf({a + "o_proj.weight"});
      k.conv = f32({a + "q_conv1d.weight", a + "k_conv1d.weight", a + "v_conv1d.weight"});
      k.A_log = f32({a + "A_log"});
      k.dt_bias = f32({a + "dt_bias"});
      k.o_norm = f32({a + "o_norm.weight"});
    } else {
      DevMla& w = L.mla;
      w.q = bf({a + "q_proj.weight"});
      w.kv_a = bf({a + "kv_a_proj_with_mqa.weight"});
      w.kv_norm = f32({a + "kv_a_layernorm.weight"});
      w.kv_b = bf({a + "kv_b_proj.weight"});
      w.o = bf({a + "o_proj.weight"});
    }
    if (m.is_moe(i)) {
      const std::string e = p + "block_sparse_moe.";
      DevMoe& w = L.moe;
      w.router = f32({e + "gate.weight"});
      w.bias = f32({e + "gate.e_score_correction_bias"});
      std::vector<std::string> w13, w2;
      for (int x = 0; x < m.num_experts; ++x) {
        const std::string ex = e + str("experts.", x, ".");
        w13.push_back(ex + "w1.weight");
        w13.push_back(ex + "w3.weight");
        w2.push_back(ex + "w2.weight");
      }
      w.w13 = bf(std::move(w13));
      w.w2 = bf(std::move(w2));
      if (m.num_shared_experts > 0)
        mlp(w.shared, e + "shared_experts.gate_proj.weight", e + "shared_experts.up_proj.weight",
            e + "shared_experts.down_proj.weight", m.moe_intermediate_size * m.num_shared_experts);
    } else {
      mlp(L.mlp, p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight",
          m.intermediate_size);
    }
  }
  return c.used;
}

void CudaModel::Impl::load_weights(const Checkpoint& ckpt) {
  validate_checkpoint(cfg, ckpt);
  std::vector<float> f;
  std::vector<uint16_t> h;
  for (const WeightFill& w : fills) {
    size_t off = 0;  // bytes into w.dst
    for (const std::string& name : w.names) {
      const TensorInfo& t = ckpt.get(name);
      const size_t n = size_t(t.numel());
      uint8_t* dst = static_cast<uint8_t*>(w.dst) + off;
      if (w.bf16 && t.dtype == DType::kBF16) {
        CUDA_CHECK(cudaMemcpy(dst, t.data, n * 2, cudaMemcpyHostToDevice));
      } else {
        f.resize(n);
        convert_to_f32(t.dtype, t.data, f.data(), n);
        if (w.bf16) {
          h.resize(n);
          for (size_t i = 0; i < n; ++i) h[i] = f32_to_bf16(f[i]);
          CUDA_CHECK(cudaMemcpy(dst, h.data(), n * 2, cudaMemcpyHostToDevice));
        } else {
          CUDA_CHECK(cudaMemcpy(dst, f.data(), n * 4, cudaMemcpyHostToDevice));
        }
      }
      off += n * (w.bf16 ? 2 : 4);
    }
  }
}

void CudaModel::Impl::draw_weights(uint64_t seed) {
  // The same families and scales as kimi-make-tiny (src/model/tiny.cpp), drawn on the GPU.
  const auto sizes = expected_numels(cfg);
  auto numel = [&](const std::string& name) { return sizes.at(name); };
  for (const WeightFill& w : fills) {
    size_t off = 0;
    for (const std::string& nm : w.names) {
      cuda::RandomFillParams p;
      p.n = numel(nm);
      p.out = static_cast<uint8_t*>(w.dst) + off;
      p.out_bf16 = w.bf16;
      p.seed = seed ^ name_hash(nm);
      if (ends_with(nm, "norm.weight")) {
        p.dist = cuda::RandomDist::kNormal, p.a = 1.f, p.b = 0.05f;
      } else if (ends_with(nm, "A_log")) {
        p.dist = cuda::RandomDist::kALog;
      } else if (ends_with(nm, "dt_bias")) {
        p.dist = cuda::RandomDist::kDtBias;
      } else if (ends_with(nm, "conv1d.weight")) {
        p.dist = cuda::RandomDist::kUniform, p.a = -0.5f, p.b = 0.5f;
      } else if (nm == "model.embed_tokens.weight") {
        p.dist = cuda::RandomDist::kNormal, p.a = 0.f, p.b = 1.f;
      } else {  // projections and the correction bias
        p.dist = cuda::RandomDist::kNormal, p.a = 0.f, p.b = 0.02f;
      }
      cuda::run_random_fill(p, stream);
      off += size_t(p.n) * (w.bf16 ? 2 : 4);
    }
  }
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace kimi

#endif
