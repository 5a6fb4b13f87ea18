// The checkpoint's tensors: the expected list derived from the config (names, shapes), checked
// against a Checkpoint before any compute, and loaded into per-layer fp32 structs for the CPU
// backend. The expected list is the one source of truth, used by kimi-make-tiny too.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"

namespace kimi {

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  bool small = false;  // A_log, dt_bias, conv weights, correction bias: kept in fp32 on GPUs too
};

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& c);

// Checks that the checkpoint holds exactly the expected tensors, with allowed dtypes (BF16, F16,
// F32) and the expected shapes. Errors name the tensor and its file.
void validate_checkpoint(const ModelConfig& c, const Checkpoint& ckpt);

// fp32 host weights. Matrices keep the PyTorch [out, in] layout; projections that read the
// same input are concatenated along `out` so one matmul computes them.
struct KdaLayerWeights {
  std::vector<float> qkv;      // [3·H·D, hidden]: q_proj | k_proj | v_proj
  std::vector<float> conv;     // [3·H·D, 4]: q | k | v conv taps
  std::vector<float> f_a;      // [D, hidden]
  std::vector<float> f_b;      // [H·D, D]
  std::vector<float> g_a;      // [D, hidden]
  std::vector<float> g_b;      // [H·D, D]
  std::vector<float> b;        // [H, hidden]
  std::vector<float> A_log;    // [H]
  std::vector<float> dt_bias;  // [H·D]
  std::vector<float> o_norm;   // [D]
  std::vector<float> o;        // [hidden, H·D]
};

struct MlaLayerWeights {
  std::vector<float> q;        // [H·192, hidden]
  std::vector<float> kv_a;     // [576, hidden]
  std::vector<float> kv_norm;  // [512]
  std::vector<float> kv_b;     // [H·256, 512]
  std::vector<float> o;        // [hidden, H·128]
};

struct MlpWeights {
  int inter = 0;
  std::vector<float> gate_up;  // [2·inter, hidden]: gate | up
  std::vector<float> down;     // [hidden, inter]
};

struct MoeWeights {
  std::vector<float> router;            // [E, hidden]
  std::vector<float> correction_bias;   // [E]
  std::vector<MlpWeights> experts;      // E of them (w1 | w3 as gate | up, w2 as down)
  MlpWeights shared;                    // inter = num_shared_experts · moe_intermediate_size
};

struct LayerWeights {
  std::vector<float> input_norm;  // [hidden]
  std::vector<float> post_norm;   // [hidden]
  KdaLayerWeights kda;            // filled for KDA layers
  MlaLayerWeights mla;            // filled for MLA layers
  MlpWeights mlp;                 // filled for dense layers
  MoeWeights moe;                 // filled for MoE layers
};

struct ModelWeights {
  std::vector<float> embed;       // [vocab, hidden]
  std::vector<float> final_norm;  // [hidden]
  std::vector<float> lm_head;     // [vocab, hidden]
  std::vector<LayerWeights> layers;
};

// Validates, then converts every tensor to fp32 (multithreaded over tensors).
ModelWeights load_weights_f32(const ModelConfig& c, const Checkpoint& ckpt);

}  // namespace kimi
