// End-to-end offline throughput through the Engine (scheduler, sampling, continuous batching),
// the in-process counterpart of the online mode: num_prompts requests of random base-token ids,
// all submitted at t = 0, greedy, ignore_eos, exactly output_len tokens each. Each request's
// events are timed like SSE events, so TTFT / TPOT / ITL / E2EL have the online definitions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bench/metrics.h"

namespace kimi::bench {

struct EngineRunOptions {
  std::string model_dir;
  std::string backend = "cpu";
  std::string kv_cache_dtype = "auto";  // EngineOptions::kv_cache_dtype
  int num_prompts = 16;
  int input_len = 128;
  int output_len = 32;
  int max_num_seqs = 16;
  uint64_t seed = 0;
  bool progress = true;
};

struct EngineRun {
  std::vector<RequestOutput> outputs;
  double duration = 0;  // first submit to last finish, seconds
};

EngineRun run_engine(const EngineRunOptions& o);

}  // namespace kimi::bench
