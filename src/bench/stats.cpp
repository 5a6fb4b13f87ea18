#include "bench/stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "core/check.h"

namespace kimi::bench {

double mean(const std::vector<double>& v) {
  if (v.empty()) return 0;
  return std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
}

double median(std::vector<double> v) {
  return percentile(std::move(v), 50);
}

double stddev(const std::vector<double>& v) {
  if (v.empty()) return 0;
  double m = mean(v), acc = 0;
  for (double x : v) acc += (x - m) * (x - m);
  return std::sqrt(acc / double(v.size()));
}

double percentile_sorted(const std::vector<double>& s, double p) {
  KIMI_CHECK(p >= 0 && p <= 100, "percentile ", p, " is outside [0, 100]");
  if (s.empty()) return 0;
  double rank = p / 100.0 * double(s.size() - 1);
  size_t lo = size_t(std::floor(rank));
  size_t hi = std::min(lo + 1, s.size() - 1);
  double frac = rank - double(lo);
  return s[lo] + (s[hi] - s[lo]) * frac;
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return percentile_sorted(v, p);
}

double Summary::at(double p) const {
  for (auto& [q, x] : percentiles)
    if (q == p) return x;
  fail("percentile ", p, " was not computed");
}

Summary summarize(const std::vector<double>& v, const std::vector<double>& ps) {
  std::vector<double> s = v;
  std::sort(s.begin(), s.end());
  Summary out;
  out.mean = mean(v);
  out.median = percentile_sorted(s, 50);
  out.std = stddev(v);
  for (double p : ps) out.percentiles.emplace_back(p, percentile_sorted(s, p));
  return out;
}

std::string percentile_word(double p, const char* prefix) {
  char buf[64];
  if (p == std::floor(p))
    std::snprintf(buf, sizeof buf, "%s%lld", prefix, static_cast<long long>(p));
  else
    std::snprintf(buf, sizeof buf, "%s%g", prefix, p);
  return buf;
}

}  // namespace kimi::bench
