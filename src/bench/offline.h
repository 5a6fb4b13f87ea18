// Offline measurement: the model in process, driven directly through Model::forward (no
// scheduler, no sampling), so each number is one phase at one shape:
//   prefill: tokens/s for one sequence of each prompt length, fed in chunks of prefill_chunk
//            tokens (the engine's max_num_batched_tokens), median over reps after a warm-up;
//   decode:  TPOT for `batch` sequences at `context` cached tokens each: all sequences are
//            prefilled to the depth, then decode_steps single-token steps are timed (the
//            first is dropped); the median step time is the TPOT, and the bytes the step must
//            move (bench/model_bytes.h) over that time the achieved bandwidth.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "bench/model_bytes.h"
#include "model/config.h"

namespace kimi::bench {

struct OfflineOptions {
  std::string model_dir;
  std::string backend = "cpu";
  bool random_weights = false;  // with config_file: full-size shapes without a checkpoint
  std::string config_file;
  int tensor_parallel = 1;  // cuda: GPUs the model is split over
  bool expert_parallel = false;  // cuda, TP > 1: routed experts split by expert
  std::string precision = "bf16";  // cuda activations: bf16 or high (ModelOptions::precision)
  std::string kv_cache_dtype = "auto";  // MLA latent cache: auto (bf16), bf16 or fp8
  std::vector<int> prompt_lens = {128, 512, 2048};
  std::vector<int> batches = {1, 4, 16};
  std::vector<int> contexts = {512, 4096};
  int decode_steps = 16;
  int reps = 3;
  int prefill_chunk = 2048;
  bool progress = true;
};

// cpu_share: process CPU time over (wall time × threads) while the point was measured; below
// ~0.9 the threads were waiting for cores (a shared machine) or for each other.
struct PrefillPoint {
  int prompt_len = 0;
  double seconds = 0;  // median
  double tokens_per_s = 0;
  double cpu_share = 0;
};

struct DecodePoint {
  int batch = 0;
  int context = 0;
  double tpot_ms = 0;       // median step time
  double tokens_per_s = 0;  // batch / step time
  StepBytes bytes;
  double achieved_gbps = 0;  // bytes.total() / step time / 1e9 (all GPUs together)
  double cpu_share = 0;      // over the timed steps
};

struct MemoryUse {
  int64_t weight_bytes = 0;  // parameters at the backend's element size
  int64_t cache_bytes = 0;   // KDA slots + MLA blocks allocated for the measurement
  int64_t rss_bytes = 0, peak_rss_bytes = 0;  // host process
  std::string device;                         // device memory in use, or "n/a on CPU"
};

struct OfflineResults {
  std::string backend;
  int threads = 0;
  ModelConfig config;
  ModelSplit split;  // the GPUs the model runs on: byte counts are summed over them
  ParamCounts params;
  int weight_elem_bytes = 0;
  std::string kv_cache_dtype;  // what the cache stored: bf16 or fp8
  CacheEntryBytes cache;       // a KDA slot, an MLA token, as the backend stores them
  std::vector<PrefillPoint> prefill;
  std::vector<DecodePoint> decode;
  MemoryUse memory;
  std::optional<double> copy_gbps;  // one GPU's device-to-device copy ceiling; none on CPU
  std::string copy_note;            // why there is none
};

OfflineResults run_offline(const OfflineOptions& o);

// Element size the backend stores weights in (CPU: fp32, CUDA: bf16). Throws for an unknown
// backend.
int weight_elem_bytes(const std::string& backend);

}  // namespace kimi::bench
