// The CPU backend: the whole forward in fp32, multithreaded with OpenMP. The reference for
// every CUDA kernel and the product path for small models and machines without a GPU.
#pragma once

#include <vector>

#include "model/model.h"
#include "model/weights.h"

namespace kimi {

class CpuModel final : public Model {
 public:
  // kv_cache_dtype kFp8: the MLA cache holds ĉ's fp8 round trip (ops/cpu/mla.h), still in fp32.
  CpuModel(const ModelConfig& config, const Checkpoint& ckpt, CacheSizes cache,
           KvCacheDtype kv_cache_dtype = KvCacheDtype::kBf16);

  const ModelConfig& config() const override { return config_; }
  CacheSizes cache_sizes() const override { return cache_; }
  void forward(const Batch& batch, std::vector<float>& logits) override;
  void reset_slot(int slot) override;
  void copy_slot(int src, int dst) override;
  void copy_block(int src, int dst) override;

  // When set, each forward writes per token of the step the smallest MoE selection margin over
  // its layers (cpu::MoeRouteParams::margins): where bf16 backends may route differently.
  std::vector<float>* route_margins = nullptr;

 private:
  void kda_mixer(int layer, const Batch& b, const float* a, float* out);
  void mla_mixer(int layer, const Batch& b, const float* a, float* out);
  void mlp(const MlpWeights& w, const float* x, float* out, int64_t T);
  void moe(const MoeWeights& w, const float* x, float* out, int64_t T);

  ModelConfig config_;
  ModelWeights w_;
  CacheSizes cache_;
  bool fp8_cache_ = false;
  // Per KDA layer (by kind index): conv state [slots, 3·H·D, 3], recurrent [slots, H, D, D].
  std::vector<std::vector<float>> conv_state_, kda_state_;
  // Per MLA layer (by kind index): [blocks, 64, 576].
  std::vector<std::vector<float>> mla_cache_;
};

}  // namespace kimi
