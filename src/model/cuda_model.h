// The CUDA backend: the whole model on one GPU (issue 8). bf16 weights uploaded once (or drawn
// on the GPU with ModelOptions::random_weights), fp32 residual stream, bf16 activations carved
// from one arena sized at start-up for ModelOptions::max_batch_tokens, cuBLASLt projections and
// the kernels of kernels/ (KDA, MLA, MoE, norm, misc).
// Caches: KDA recurrent state fp32 [slots, H, 128, 128] + conv state bf16 [slots, 3·H·128, 3]
// per KDA layer; MLA latent cache bf16 [blocks, 64, 576] per MLA layer.
// Start-up refuses a GPU the build does not cover (sm_90) and a model that does not fit, saying
// how much is needed, how much is free and what would fit.
// This header is plain C++ (no CUDA types): the implementation lives behind a pointer.
#pragma once

#if KIMI_HAVE_CUDA

#include <functional>
#include <memory>
#include <string>

#include "model/model.h"
#include "model/safetensors.h"

namespace kimi {

namespace cuda {
struct PeerAllReduceView;
}

// One rank of a tensor-parallel group (model/tensor_parallel.h): it runs on CUDA device `rank`
// with the rank's slices of the weights; `comm` is its ncclComm_t (nullptr when world == 1).
struct TpRank {
  int rank = 0;
  int world = 1;
  void* comm = nullptr;
  bool expert_parallel = false;  // routed experts split by expert (model/tensor_parallel.h)
};

// Device memory of one rank before anything is allocated (CudaModel::plan_memory).
struct CudaMemoryPlan {
  size_t weight_bytes = 0, arena_bytes = 0, fixed_bytes = 0;  // fixed: GEMM workspace + reserve
  size_t slot_bytes = 0, block_bytes = 0;  // one KDA state slot, one MLA cache block
  size_t free_bytes = 0, total_bytes = 0;  // the GPU's, now
};

class CudaModel final : public Model {
 public:
  // What rank `rank` of opts.tensor_parallel would hold for this config and options (cache
  // sizes from opts.cache only size the KDA chunk workspace).
  static CudaMemoryPlan plan_memory(const ModelConfig& config, const ModelOptions& opts, int rank);

  // ckpt == nullptr draws the weights (opts.random_weights). config is the whole model's.
  CudaModel(const ModelConfig& config, const Checkpoint* ckpt, const ModelOptions& opts,
            TpRank tp = {});
  ~CudaModel() override;

  const ModelConfig& config() const override;
  CacheSizes cache_sizes() const override;
  void forward(const Batch& batch, std::vector<float>& logits) override;
  // The step into logits [num_logit_rows, vocab] (row pitch ld floats) that the caller sized,
  // in host memory or on a GPU (TpModel gathers into rank 0's); a tensor-parallel rank writes
  // its own vocabulary columns only. Returns once they are there.
  void forward_into(const Batch& batch, float* logits, int64_t ld);
  // One GPU: rows go through the logits buffer in chunks of its own (tensor parallelism gathers
  // rows to GPU 0 and sends prompt-logprob steps to the host).
  bool keeps_logit_rows() const override;
  // Draws on the GPU (kernels/sampling): only the tokens and the logprob records
  // (kernels/sampling/logprobs.h) come back, and the logits of the rows drawn on the host. A
  // tensor-parallel rank returns false (its logits hold a slice of the vocabulary): TpModel
  // gathers them and calls sample_gathered on rank 0.
  bool forward_sampled(const Batch& batch, const DrawBatch& draws, std::vector<int>& tokens,
                       std::vector<float>& host_logits,
                       std::vector<RowLogprobs>& logprobs) override;
  // forward_sampled's draws over whole-vocabulary logits already on this GPU ([rows, vocab]).
  void sample_gathered(const float* logits, int rows, const DrawBatch& draws,
                       std::vector<int>& tokens, std::vector<float>& host_logits,
                       std::vector<RowLogprobs>& logprobs);
  // A device buffer of at least `floats` on this GPU for those logits (kept, grown on demand).
  float* logits_gather_buffer(size_t floats);
  void reset_slot(int slot) override;
  void copy_slot(int src, int dst) override;
  void copy_block(int src, int dst) override;

  // Device memory held by the weights, the caches and the activation arena (bytes).
  size_t weight_bytes() const;
  size_t cache_bytes() const;
  size_t arena_bytes() const;
  std::string device_name() const;
  // Decode steps (one token per sequence) replay CUDA graphs captured per (batch size,
  // block-table width); off: every step launches eagerly. Default on (env KIMI_CUDA_GRAPHS=0: off).
  void set_use_graphs(bool on);
  size_t num_graphs() const;
  // Times every layer's mixer and FFN and the logits with CUDA events (forces eager steps);
  // profile_report() gives the mean ms per step of each component, split prefill/decode.
  void set_profile(bool on);
  std::string profile_report() const;
  // Tensor parallelism: all-reduces of up to `capacity` floats go through peer memory
  // (kernels/comm/peer_allreduce.h) instead of NCCL; TpModel sets it up when every pair of GPUs
  // has peer access. nullptr: NCCL only. push: the one-shot push kernel, which also writes the
  // next sub-layer's normed input (else the flag-and-pull kernel, for comparison).
  void set_peer_allreduce(const cuda::PeerAllReduceView* view, bool push = true);

  struct Impl;

 private:
  // The step's device work; consume(r0, n) is called on the stream once logits rows r0.. + n
  // are in the activation arena (in chunks of the arena's logit rows).
  void run_step(const Batch& batch, const std::function<void(int, int)>& consume);
  struct DrawStage;
  DrawStage stage_draws(const DrawBatch& draws, int rows, std::vector<float>& host_logits);
  void draw_rows(const DrawStage& st, const float* logits, int r0, int n,
                 std::vector<float>& host_logits);
  static void take_records(const DrawStage& st, std::vector<RowLogprobs>& logprobs);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kimi

#endif
