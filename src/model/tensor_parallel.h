// Tensor parallelism (issue 10): how the model splits over N GPUs of one host, as in vLLM.
//   KDA    : heads split; each rank keeps the recurrent and conv state of its heads. q/k/v/f_b/g_b/
//            b/conv/A_log/dt_bias by head rows, o_proj by input columns; f_a, g_a, o_norm whole.
//   MLA    : query heads split (q_proj, kv_b_proj rows; o_proj columns); the latent projection,
//            its norm and the latent cache (shared by all heads) whole on every rank.
//   MLP/MoE: every expert (routed, shared, dense) split by its intermediate dimension: gate/up
//            rows, down columns; the router whole, so every rank routes identically.
//   lm_head: vocabulary rows split; each rank writes its columns of the logits (the gather).
//   embedding and norms: whole.
// The residual stream is whole on every rank: o_proj, the expert down projections and the
// dense MLP's down projection produce partial sums, added with one all-reduce per sub-layer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace kimi {

// Throws, naming the field, when the config cannot be split N ways (heads, intermediate sizes,
// vocabulary), or N is not 1, 2, 4 or 8.
void check_tensor_parallel(const ModelConfig& c, int world);

// The config one rank computes with: head counts, intermediate sizes and vocabulary divided by
// world. Everything else as in c.
ModelConfig rank_config(const ModelConfig& c, int world);

// A rank's part of a checkpoint tensor, seen as a matrix [rows, cols] (1-D tensors: cols = 1;
// conv weights [C, 1, 4]: rows = C, cols = 4). The part is rows row0.. + nrows, columns
// col0.. + ncols; a whole tensor is the full range.
struct TensorSlice {
  int64_t rows = 0, cols = 0;
  int64_t row0 = 0, nrows = 0, col0 = 0, ncols = 0;
  int64_t numel() const { return nrows * ncols; }
  bool whole() const { return nrows == rows && ncols == cols; }
};

// The part of tensor `name` (with its full shape) that rank `rank` of `world` holds.
TensorSlice tensor_slice(const std::string& name, const std::vector<int64_t>& shape, int rank,
                         int world);

}  // namespace kimi
