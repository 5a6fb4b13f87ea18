// Shared helpers of the CPU op tests: seeded random fills and error metrics in double.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace kimi::test {

inline std::vector<float> randn(size_t n, uint32_t seed, float stddev = 1.f, float mean = 0.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

inline std::vector<float> uniform(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

struct ErrStats {
  double rel_l2 = 0;   // ‖a − ref‖₂ / ‖ref‖₂
  double max_abs = 0;  // max |a − ref|
  double ref_norm = 0;
  bool finite = true;  // every entry of a is finite
};

template <typename A, typename B>
ErrStats compare(const A& a, const B& ref) {
  ErrStats e;
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = double(a[i]) - double(ref[i]);
    if (!std::isfinite(double(a[i]))) e.finite = false;
    num += d * d;
    den += double(ref[i]) * double(ref[i]);
    e.max_abs = std::max(e.max_abs, std::abs(d));
  }
  e.ref_norm = std::sqrt(den);
  e.rel_l2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return e;
}

}  // namespace kimi::test
