// Request arrival schedule, as `vllm bench serve` builds it: gaps drawn from a gamma distribution
// with shape = burstiness and mean 1/rate (burstiness 1 = Poisson process), accumulated, then
// scaled so the last arrival lands at exactly N / rate. rate = inf sends everything at t = 0;
// burstiness = inf gives constant gaps of 1 / rate (arrivals at 1/rate, 2/rate, ..., N/rate).
// The generator is ours (mt19937_64 + inverse-CDF exponential), so a seed gives the same schedule
// on every machine; it does not reproduce numpy's stream.
#pragma once

#include <cstdint>
#include <vector>

namespace kimi::bench {

// Arrival offsets in seconds from the benchmark start, non-decreasing, one per request.
std::vector<double> arrival_times(int num_requests, double request_rate, double burstiness,
                                  uint64_t seed);

}  // namespace kimi::bench
