// Tensor parallelism (issue 10): how the model splits over N GPUs of one host, as in vLLM.
//   KDA    : heads split; each rank keeps the recurrent and conv state of its heads. q/k/v/f_b/g_b/
//            b/conv/A_log/dt_bias by head rows, o_proj by input columns; f_a, g_a, o_norm whole.
//   MLA    : query heads split (q_proj, kv_b_proj rows; o_proj columns); the latent projection,
//            its norm and the latent cache (shared by all heads) whole on every rank.
//   MLP/MoE: every expert (routed, shared, dense) split by its intermediate dimension: gate/up
//            rows, down columns; the router whole, so every rank routes identically.
//            Expert parallelism (expert_parallel, vLLM's --enable-expert-parallel): the routed
//            experts split by expert instead, rank r holding experts [r·E/N, (r+1)·E/N) whole;
//            every rank routes every token (the activations are whole on every rank) and runs
//            only its experts' pairs, so the same all-reduce sums the experts' outputs and no
//            all-to-all is needed. The shared expert stays split by its intermediate dimension.
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
// expert_parallel: the routed experts split by expert (num_experts must divide).
void check_tensor_parallel(const ModelConfig& c, int world, bool expert_parallel = false);

// The config one rank computes with: head counts, intermediate sizes and vocabulary divided by
// world. Everything else as in c. Under expert parallelism moe_intermediate_size stays whole
// (the routed experts' size; the shared expert's share is shared_expert_inter) and num_experts
// stays E: the router scores all of them (local_experts says which this rank runs).
ModelConfig rank_config(const ModelConfig& c, int world, bool expert_parallel = false);

// The routed experts rank `rank` runs: [first, first + count).
struct ExpertRange {
  int first = 0, count = 0;
};
ExpertRange local_experts(const ModelConfig& full, int rank, int world, bool expert_parallel);
// The shared expert's intermediate size on one rank (split by intermediate dimension always).
int shared_expert_inter(const ModelConfig& full, int world);

// A rank's part of a checkpoint tensor, seen as a matrix [rows, cols] (1-D tensors: cols = 1;
// conv weights [C, 1, 4]: rows = C, cols = 4). The part is rows row0.. + nrows, columns
// col0.. + ncols; a whole tensor is the full range.
struct TensorSlice {
  int64_t rows = 0, cols = 0;
  int64_t row0 = 0, nrows = 0, col0 = 0, ncols = 0;
  int64_t numel() const { return nrows * ncols; }
  bool whole() const { return nrows == rows && ncols == cols; }
};

// The part of tensor `name` (with its full shape) that rank `rank` of `world` holds. Under
// expert parallelism a routed expert's tensors are whole: a rank holds (and asks for) only the
// experts of its local_experts range.
TensorSlice tensor_slice(const std::string& name, const std::vector<int64_t>& shape, int rank,
                         int world, bool expert_parallel = false);

}  // namespace kimi
