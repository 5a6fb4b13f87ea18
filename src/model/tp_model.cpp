#if KIMI_HAVE_CUDA

#include "model/tp_model.h"

#include <cuda_runtime_api.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <latch>
#include <mutex>
#include <thread>

#if KIMI_HAVE_NCCL
#include <nccl.h>
#endif

#include <spdlog/spdlog.h>

#include "comm/peer_allreduce.h"
#include "common.h"
#include "core/check.h"
#include "model/tensor_parallel.h"

namespace kimi {

// Completion of one round of jobs over all workers.
struct TpRound {
  std::mutex mu;
  std::condition_variable cv;
  int finished = 0;
  std::exception_ptr error;  // the first failure of the round
};

// A thread bound to one GPU that runs one job at a time and reports to the round.
struct TpModel::Worker {
  int device = 0;
  TpRound* round = nullptr;
  std::mutex mu;
  std::condition_variable cv;
  std::function<void()> job;
  bool has_job = false, stop = false;
  std::thread thread;

  Worker(int dev, TpRound* rd) : device(dev), round(rd) {
    thread = std::thread([this] { loop(); });
  }
  ~Worker() {
    {
      std::lock_guard<std::mutex> lk(mu);
      stop = true;
    }
    cv.notify_all();
    thread.join();
  }
  void loop() {
    for (;;) {
      std::function<void()> f;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return has_job || stop; });
        if (stop) return;
        f = std::move(job);
        has_job = false;
      }
      std::exception_ptr e;
      try {
        CUDA_CHECK(cudaSetDevice(device));
        f();
      } catch (...) {
        e = std::current_exception();
      }
      std::lock_guard<std::mutex> lk(round->mu);
      if (e && !round->error) round->error = e;
      ++round->finished;
      round->cv.notify_all();
    }
  }
  void post(std::function<void()> f) {
    std::lock_guard<std::mutex> lk(mu);
    job = std::move(f);
    has_job = true;
    cv.notify_all();
  }
};

TpModel::TpModel(const ModelConfig& config, const Checkpoint* ckpt, const ModelOptions& opts)
    : cfg_(config) {
  const int n = opts.tensor_parallel;
  check_tensor_parallel(config, n, opts.expert_parallel);
#if !KIMI_HAVE_NCCL
  fail("tensor-parallel size ", n, " needs NCCL, which this build was configured without");
#else
  int visible = 0;
  const cudaError_t ce = cudaGetDeviceCount(&visible);
  if (ce != cudaSuccess) {
    cudaGetLastError();
    visible = 0;
  }
  if (visible < n)
    fail("tensor-parallel size ", n, " needs ", n, " GPUs but ", visible, " ",
         visible == 1 ? "is" : "are", " visible (CUDA_VISIBLE_DEVICES decides which)");
  // NVLink SHARP (multicast) stays off unless the user asks for it: the shared GPU machines
  // need it off, and these all-reduces are small.
  setenv("NCCL_NVLS_ENABLE", "0", 0);
  // Connect every channel at start-up: a connection made lazily at the first all-reduce of a
  // new size would fall inside a decode step's CUDA-graph capture, where NCCL cannot set up.
  setenv("NCCL_RUNTIME_CONNECT", "0", 0);
  std::vector<int> devs(n);
  for (int r = 0; r < n; ++r) devs[r] = r;
  std::vector<ncclComm_t> comms(n);
  const ncclResult_t nr = ncclCommInitAll(comms.data(), n, devs.data());
  if (nr != ncclSuccess) fail("NCCL start-up over ", n, " GPUs failed: ", ncclGetErrorString(nr));
  for (auto c : comms) comms_.push_back(c);
  ranks_.resize(n);
  round_ = std::make_unique<TpRound>();
  for (int r = 0; r < n; ++r) workers_.push_back(std::make_unique<Worker>(r, round_.get()));
  // Each rank loads (or draws) its own slices on its own thread, in parallel.
  try {
    run_round([&](int r) {
      ranks_[r] = std::make_unique<CudaModel>(config, ckpt, opts, TpRank{r, n, comms_[r], opts.expert_parallel});
    });
    setup_peer_allreduce();
  } catch (...) {
    try {
      run_round([&](int r) { release_rank(r); });  // the ranks that did start, on their threads
    } catch (...) {
    }
    workers_.clear();
    for (void* c : comms_) ncclCommDestroy(static_cast<ncclComm_t>(c));
    comms_.clear();
    throw;
  }
#endif
}

TpModel::~TpModel() {
  // Each rank's CUDA objects are freed on its own thread (its device current).
  if (!workers_.empty()) {
    try {
      run_round([&](int r) { release_rank(r); });
    } catch (...) {
    }
  }
  workers_.clear();
#if KIMI_HAVE_NCCL
  for (void* c : comms_) ncclCommDestroy(static_cast<ncclComm_t>(c));
#endif
}

void TpModel::release_rank(int r) {
  ranks_[r].reset();
  if (r < int(peer_mem_.size()) && peer_mem_[r]) {
    cudaFree(peer_mem_[r]);
    peer_mem_[r] = nullptr;
  }
}

// Small all-reduces (decode steps) through peer memory when every pair of GPUs can reach each
// other's memory: the one-shot push kernel (with the next sub-layer's norm folded in); env
// KIMI_TP_ALLREDUCE=pull takes the previous flag-and-pull kernel, =nccl NCCL for all
// (comparisons).
void TpModel::setup_peer_allreduce() {
  const int n = world();
  bool push = true;
  if (const char* e = std::getenv("KIMI_TP_ALLREDUCE")) {
    const std::string v = e;
    if (v == "nccl") return;
    if (v != "peer" && v != "push" && v != "pull")
      fail("KIMI_TP_ALLREDUCE must be push (peer), pull or nccl, got '", v, "'");
    push = v != "pull";
  }
  if (n > cuda::kPeerMaxRanks) return;
  for (int r = 0; r < n; ++r)
    for (int q = 0; q < n; ++q) {
      int ok = 0;
      if (q != r && (cudaDeviceCanAccessPeer(&ok, r, q) != cudaSuccess || !ok)) {
        cudaGetLastError();
        spdlog::info("tensor parallelism: GPU {} cannot access GPU {}'s memory; all-reduces use NCCL", r, q);
        return;
      }
    }
  constexpr int64_t kCapacity = 256 * 1024;  // floats: a step of up to 113 tokens at hidden 2304
  const size_t bytes = cuda::peer_allreduce_bytes(kCapacity, n);
  peer_mem_.assign(n, nullptr);
  run_round([&](int r) {
    for (int q = 0; q < n; ++q) {
      if (q == r) continue;
      const cudaError_t e = cudaDeviceEnablePeerAccess(q, 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();
      else CUDA_CHECK(e);
    }
    CUDA_CHECK(cudaMalloc(&peer_mem_[r], bytes));
    CUDA_CHECK(cudaMemset(peer_mem_[r], 0, bytes));
    CUDA_CHECK(cudaDeviceSynchronize());
  });
  std::vector<cuda::PeerAllReduceView> views(n);
  for (int r = 0; r < n; ++r) {
    views[r].rank = r;
    views[r].world = n;
    views[r].capacity = kCapacity;
    for (int q = 0; q < n; ++q) cuda::peer_allreduce_carve(peer_mem_[q], kCapacity, q, views[r]);
  }
  run_round([&](int r) { ranks_[r]->set_peer_allreduce(&views[r], push); });
}

void TpModel::run_round(const std::function<void(int)>& f) {
  const int n = int(workers_.size());
  {
    std::lock_guard<std::mutex> lk(round_->mu);
    round_->finished = 0;
    round_->error = nullptr;
  }
  for (int r = 0; r < n; ++r) workers_[r]->post([&f, r] { f(r); });
  std::unique_lock<std::mutex> lk(round_->mu);
  bool aborted = false;
  for (;;) {
    round_->cv.wait(lk, [&] { return round_->finished == n || (round_->error && !aborted); });
    if (round_->finished == n) break;
    // A rank failed: the others may wait in a collective it will never join. Abort the
    // communicators so they return, and refuse further steps.
    aborted = true;
    broken_ = true;
#if KIMI_HAVE_NCCL
    for (void* c : comms_) ncclCommAbort(static_cast<ncclComm_t>(c));
    comms_.clear();
#endif
  }
  if (round_->error) std::rethrow_exception(round_->error);
}

void TpModel::run_on_all(const std::function<void(int, CudaModel&)>& f) {
  if (broken_) fail("the tensor-parallel group stopped after an earlier failure; restart the process");
  run_round([&](int r) { f(r, *ranks_[r]); });
}

const ModelConfig& TpModel::config() const { return cfg_; }
CacheSizes TpModel::cache_sizes() const { return ranks_[0]->cache_sizes(); }

void TpModel::forward(const Batch& batch, std::vector<float>& logits) {
  logits.resize(size_t(batch.num_logit_rows()) * cfg_.vocab_size);
  float* out = logits.data();
  ranks_[0]->on_layer_output = on_layer_output;
  run_on_all([&](int, CudaModel& m) { m.forward_into(batch, out, cfg_.vocab_size); });
}

bool TpModel::forward_sampled(const Batch& batch, const DrawBatch& draws, std::vector<int>& tokens,
                              std::vector<float>& host_logits,
                              std::vector<RowLogprobs>& logprobs) {
  if (peer_mem_.empty()) return false;  // no peer access: the slices go through the host
  const int R = batch.num_logit_rows(), V = cfg_.vocab_size;
  // Prompt-logprob rows (more rows than sequences) would grow GPU 0's gather buffer by a chunk of
  // rows of the whole vocabulary after the caches took their share: those steps go to the host.
  if (R > batch.num_seqs()) return false;
  KIMI_CHECK(int(draws.rows.size()) == R, "draws for ", draws.rows.size(), " rows, the step has ", R);
  if (size_t(R) * V > gather_floats_) {  // grows only when a step has more rows than all before
    run_on_all([&](int r, CudaModel& m) {
      if (r == 0) gather_ = m.logits_gather_buffer(size_t(R) * V);
    });
    gather_floats_ = size_t(R) * V;
  }
  float* gathered = gather_;
  ranks_[0]->on_layer_output = on_layer_output;
  // One round: every rank copies its columns into GPU 0's buffer (forward_into returns once its
  // stream is done, copies included); GPU 0's thread waits for all of them, then draws. A rank
  // that fails still counts itself down, so GPU 0 never waits for it.
  std::latch copied(world());
  std::atomic<bool> failed{false};
  run_on_all([&](int r, CudaModel& m) {
    {
      struct Arrive {
        std::latch& l;
        ~Arrive() { l.count_down(); }
      } arrive{copied};
      try {
        m.forward_into(batch, gathered, V);  // peer copies
      } catch (...) {
        failed = true;
        throw;
      }
    }
    if (r != 0) return;
    copied.wait();
    if (failed) fail("tensor parallelism: a rank failed before its logits reached GPU 0");
    m.sample_gathered(gathered, R, draws, tokens, host_logits, logprobs);
  });
  return true;
}

void TpModel::reset_slot(int slot) {
  run_on_all([&](int, CudaModel& m) { m.reset_slot(slot); });
}
void TpModel::copy_slot(int src, int dst) {
  run_on_all([&](int, CudaModel& m) { m.copy_slot(src, dst); });
}
void TpModel::copy_block(int src, int dst) {
  run_on_all([&](int, CudaModel& m) { m.copy_block(src, dst); });
}

}  // namespace kimi

#endif
