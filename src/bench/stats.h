// Descriptive statistics with numpy's conventions, so numbers match `vllm bench serve`:
// population standard deviation (np.std, ddof = 0) and linearly interpolated percentiles
// (np.percentile's default "linear" method: rank = p/100 · (n − 1)).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace kimi::bench {

double mean(const std::vector<double>& v);    // 0 for an empty list (vLLM: np.mean(x or 0))
double median(std::vector<double> v);         // percentile 50
double stddev(const std::vector<double>& v);  // population
// p in [0, 100]; 0 for an empty list.
double percentile(std::vector<double> v, double p);
double percentile_sorted(const std::vector<double>& sorted, double p);

struct Summary {
  double mean = 0, median = 0, std = 0;
  std::vector<std::pair<double, double>> percentiles;  // (p, value)
  double at(double p) const;                           // a requested percentile; throws if absent
};
Summary summarize(const std::vector<double>& v, const std::vector<double>& ps);

// "99" for 99, "99.9" for 99.9: how vLLM spells percentile keys (p99_ttft_ms, p99.9_ttft_ms),
// after an optional prefix ("p" → "p99").
std::string percentile_word(double p, const char* prefix = "");

}  // namespace kimi::bench
