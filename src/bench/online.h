// The online benchmark loop: warm-up requests (excluded from the metrics), then requests
// dispatched at their arrival times (bench/arrivals.h), at most max_concurrency in flight,
// one thread per in-flight request.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "bench/dataset.h"
#include "bench/metrics.h"
#include "bench/openai_client.h"

namespace kimi::bench {

struct OnlineOptions {
  double request_rate = std::numeric_limits<double>::infinity();
  double burstiness = 1.0;
  uint64_t seed = 0;
  int max_concurrency = 0;  // 0: unlimited
  int num_warmups = 1;      // sent one after another before the clock starts
  bool progress = true;
};

struct OnlineRun {
  std::vector<RequestOutput> outputs;  // in dataset order
  double duration = 0;                 // seconds: first dispatch to last completion
};

// Throws kimi::Error when a warm-up request fails (wrong URL, model name, ...), with the
// server's answer, so a misconfigured run stops before it measures anything.
OnlineRun run_online(const Endpoint& ep, const std::vector<SampleRequest>& requests,
                     const OnlineOptions& opts);

}  // namespace kimi::bench
