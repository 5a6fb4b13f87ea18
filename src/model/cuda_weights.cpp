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

std::unordered_map<std::string, std::vector<int64_t>> expected_shapes(const ModelConfig& c) {
  std::unordered_map<std::string, std::vector<int64_t>> out;
  for (const auto& e : expected_tensors(c)) out.emplace(e.name, e.shape);
  return out;
}

}  // namespace

size_t CudaModel::Impl::layout_weights(Carver& c) {
  fills.clear();
  const ModelConfig& m = full_cfg;  // names and full shapes; each part is the rank's slice
  const auto shapes = expected_shapes(m);
  auto parts_of = [&](const std::vector<std::string>& names, int64_t* n) {
    std::vector<WeightPart> parts;
    for (const auto& s : names) {
      parts.push_back({s, tensor_slice(s, shapes.at(s), tp.rank, tp.world, tp.expert_parallel)});
      *n += parts.back().slice.numel();
    }
    return parts;
  };
  auto bf = [&](const std::vector<std::string>& names) {
    int64_t n = 0;
    auto parts = parts_of(names, &n);
    bf16* p = c.take<bf16>(size_t(n));
    fills.push_back({p, true, std::move(parts)});
    return p;
  };
  auto f32 = [&](const std::vector<std::string>& names) {
    int64_t n = 0;
    auto parts = parts_of(names, &n);
    float* p = c.take<float>(size_t(n));
    fills.push_back({p, false, std::move(parts)});
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
      k.fg_b = bf({a + "f_b_proj.weight", a + "g_b_proj.weight"});
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
      const ExpertRange mine = local_experts(m, tp.rank, tp.world, tp.expert_parallel);
      for (int x = mine.first; x < mine.first + mine.count; ++x) {
        const std::string ex = e + str("experts.", x, ".");
        w13.push_back(ex + "w1.weight");
        w13.push_back(ex + "w3.weight");
        w2.push_back(ex + "w2.weight");
      }
      // One shared expert has the routed experts' shape: it is stored as expert E, so decode
      // steps run it in the same grouped launches (moe() in cuda_forward.cpp); prefill reads it
      // there through cuBLASLt. Not under expert parallelism: there it is split by intermediate
      // dimension while the routed experts are whole, so the shapes differ.
      w.shared_in_experts = m.num_shared_experts == 1 && !tp.expert_parallel;
      if (w.shared_in_experts) {
        w13.push_back(e + "shared_experts.gate_proj.weight");
        w13.push_back(e + "shared_experts.up_proj.weight");
        w2.push_back(e + "shared_experts.down_proj.weight");
      }
      w.w13 = bf(std::move(w13));
      w.w2 = bf(std::move(w2));
      if (w.shared_in_experts) {
        const size_t I = cfg.moe_intermediate_size, E = m.num_experts, hid = m.hidden_size;
        w.shared.inter = int(I);
        w.shared.gate_up = w.w13 ? w.w13 + E * 2 * I * hid : nullptr;
        w.shared.down = w.w2 ? w.w2 + E * hid * I : nullptr;
      } else if (m.num_shared_experts > 0) {
        mlp(w.shared, e + "shared_experts.gate_proj.weight", e + "shared_experts.up_proj.weight",
            e + "shared_experts.down_proj.weight", shared_expert_inter(m, tp.world));
      }
    } else {
      mlp(L.mlp, p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight",
          cfg.intermediate_size);
    }
  }
  return c.used;
}

void CudaModel::Impl::load_weights(const Checkpoint& ckpt) {
  validate_checkpoint(full_cfg, ckpt);
  std::vector<float> f;
  std::vector<uint16_t> h;
  for (const WeightFill& w : fills) {
    const size_t esz = w.bf16 ? 2 : 4;
    size_t off = 0;  // bytes into w.dst
    for (const WeightPart& part : w.parts) {
      const TensorInfo& t = ckpt.get(part.name);
      const TensorSlice& sl = part.slice;
      const size_t n = size_t(sl.numel());
      uint8_t* dst = static_cast<uint8_t*>(w.dst) + off;
      const size_t src_esz = dtype_size(t.dtype);
      const uint8_t* src = static_cast<const uint8_t*>(t.data) + (sl.row0 * sl.cols + sl.col0) * src_esz;
      if (w.bf16 && t.dtype == DType::kBF16) {
        // Straight from the mapped file: only this rank's rows (and columns) are read.
        CUDA_CHECK(cudaMemcpy2D(dst, sl.ncols * 2, src, sl.cols * 2, sl.ncols * 2, sl.nrows,
                                cudaMemcpyHostToDevice));
      } else {
        f.resize(n);
        for (int64_t r = 0; r < sl.nrows; ++r)
          convert_to_f32(t.dtype, src + r * sl.cols * src_esz, f.data() + r * sl.ncols, sl.ncols);
        if (w.bf16) {
          h.resize(n);
          for (size_t i = 0; i < n; ++i) h[i] = f32_to_bf16(f[i]);
          CUDA_CHECK(cudaMemcpy(dst, h.data(), n * 2, cudaMemcpyHostToDevice));
        } else {
          CUDA_CHECK(cudaMemcpy(dst, f.data(), n * 4, cudaMemcpyHostToDevice));
        }
      }
      off += n * esz;
    }
  }
}

void CudaModel::Impl::draw_weights(uint64_t seed) {
  // The same families and scales as kimi-make-tiny (src/model/tiny.cpp), drawn on the GPU.
  for (const WeightFill& w : fills) {
    size_t off = 0;
    for (const WeightPart& part : w.parts) {
      const std::string& nm = part.name;
      cuda::RandomFillParams p;
      p.n = part.slice.numel();
      p.out = static_cast<uint8_t*>(w.dst) + off;
      p.out_bf16 = w.bf16;
      // Whole tensors are the same on every rank (embedding, norms, router: the ranks must agree
      // on the residual stream and the routing); a split one is drawn per slice.
      p.seed = seed ^ name_hash(nm);
      if (!part.slice.whole()) p.seed ^= uint64_t(tp.rank) * 0x9e3779b97f4a7c15ull;
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
