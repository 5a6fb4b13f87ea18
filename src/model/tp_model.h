// TpModel: the CUDA backend over N GPUs of one host (model/tensor_parallel.h says how the model
// splits). One process; one worker thread per GPU, each owning a CudaModel rank on its device.
// Every Model call is handed to all workers and returns when all are done; the ranks meet in
// NCCL all-reduces inside the step (two per layer) and each writes its vocabulary columns of
// the logits: to the host (forward), or to GPU 0, which samples (forward_sampled).
#pragma once

#if KIMI_HAVE_CUDA

#include <exception>
#include <functional>
#include <memory>
#include <vector>

#include "model/cuda_model.h"

namespace kimi {

struct TpRound;

class TpModel final : public Model {
 public:
  // Checks the split (check_tensor_parallel) and the GPU count first; ckpt == nullptr draws the
  // weights (opts.random_weights). Sets NCCL_NVLS_ENABLE=0 unless the environment sets it.
  TpModel(const ModelConfig& config, const Checkpoint* ckpt, const ModelOptions& opts);
  ~TpModel() override;

  const ModelConfig& config() const override;
  CacheSizes cache_sizes() const override;
  void forward(const Batch& batch, std::vector<float>& logits) override;
  // With peer access between the GPUs: every rank copies its vocabulary columns into a buffer on
  // GPU 0, which draws there (CudaModel::sample_gathered); only the tokens come to the host.
  // Without it, and for steps with prompt-logprob rows (a logits row per token of a sequence):
  // false (the caller samples from forward's logits).
  bool forward_sampled(const Batch& batch, const DrawBatch& draws, std::vector<int>& tokens,
                       std::vector<float>& host_logits,
                       std::vector<RowLogprobs>& logprobs) override;
  void reset_slot(int slot) override;
  void copy_slot(int src, int dst) override;
  void copy_block(int src, int dst) override;

  int world() const { return int(ranks_.size()); }
  CudaModel& rank(int r) { return *ranks_[r]; }
  // Runs f(rank, model) on every rank's thread at once; rethrows the first failure (after
  // aborting the NCCL communicators, so no rank waits forever on a collective).
  void run_on_all(const std::function<void(int, CudaModel&)>& f);

 private:
  struct Worker;
  // Runs f(rank) on every worker and waits for all.
  void run_round(const std::function<void(int)>& f);
  void setup_peer_allreduce();
  void release_rank(int r);  // on rank r's thread: its CudaModel and peer memory
  std::vector<void*> peer_mem_;  // per rank: staging + flags of the peer all-reduce
  float* gather_ = nullptr;      // GPU 0's buffer of gathered logits rows (forward_sampled)
  size_t gather_floats_ = 0;
  ModelConfig cfg_;
  std::unique_ptr<TpRound> round_;
  std::vector<void*> comms_;  // ncclComm_t per rank
  std::vector<std::unique_ptr<CudaModel>> ranks_;
  std::vector<std::unique_ptr<Worker>> workers_;
  bool broken_ = false;
};

}  // namespace kimi

#endif
