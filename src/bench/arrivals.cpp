#include "bench/arrivals.h"

#include <cmath>
#include <limits>
#include <random>

#include "core/check.h"

namespace kimi::bench {

std::vector<double> arrival_times(int n, double rate, double burstiness, uint64_t seed) {
  KIMI_CHECK(n >= 0, "negative request count");
  if (!(rate > 0)) fail("--request-rate must be positive or inf, got ", rate);
  if (!(burstiness > 0)) fail("--burstiness must be positive, got ", burstiness);
  std::vector<double> t(size_t(n), 0.0);
  if (std::isinf(rate) || n == 0) return t;
  std::mt19937_64 rng(seed);
  const double shape = std::isinf(burstiness) ? 1.0 : burstiness;  // unused when infinite
  std::gamma_distribution<double> gamma(shape, 1.0 / (rate * shape));
  double acc = 0;
  for (int i = 0; i < n; ++i) {
    double gap;
    if (std::isinf(burstiness)) {
      gap = 1.0 / rate;  // vLLM's limit: constant gaps (a gamma of infinite shape gives NaN)
    } else if (burstiness == 1.0) {
      // Exponential by inverse CDF from 53 random bits: identical across standard libraries.
      double u = double(rng() >> 11) * 0x1.0p-53;
      gap = -std::log1p(-u) / rate;
    } else {
      gap = gamma(rng);
    }
    acc += gap;
    t[size_t(i)] = acc;
  }
  if (acc > 0) {
    double scale = (double(n) / rate) / acc;
    for (double& x : t) x *= scale;
  }
  return t;
}

}  // namespace kimi::bench
