// kimi-bench arrival schedules: reproducible for a seed, scaled to N / rate, Poisson gaps
// (coefficient of variation 1) or gamma gaps with CV = 1 / sqrt(burstiness).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "bench/arrivals.h"
#include "bench/stats.h"
#include "core/check.h"

namespace kimi::bench {
namespace {

double gap_cv(const std::vector<double>& t) {
  std::vector<double> gaps;
  for (size_t i = 1; i < t.size(); ++i) gaps.push_back(t[i] - t[i - 1]);
  return stddev(gaps) / mean(gaps);
}

TEST(BenchArrivals, SameSeedSameScheduleDifferentSeedDifferent) {
  auto a = arrival_times(200, 5.0, 1.0, 42), b = arrival_times(200, 5.0, 1.0, 42);
  auto c = arrival_times(200, 5.0, 1.0, 43);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  auto g1 = arrival_times(200, 5.0, 0.5, 7), g2 = arrival_times(200, 5.0, 0.5, 7);
  EXPECT_EQ(g1, g2);
}

TEST(BenchArrivals, ScaledToRateAndOrdered) {
  auto t = arrival_times(1000, 20.0, 1.0, 1);
  ASSERT_EQ(t.size(), 1000u);
  EXPECT_NEAR(t.back(), 1000 / 20.0, 1e-9);
  EXPECT_GT(t.front(), 0);
  for (size_t i = 1; i < t.size(); ++i) EXPECT_LE(t[i - 1], t[i]);
}

TEST(BenchArrivals, PoissonAndGammaGapShapes) {
  EXPECT_NEAR(gap_cv(arrival_times(20000, 10.0, 1.0, 3)), 1.0, 0.05);
  EXPECT_NEAR(gap_cv(arrival_times(20000, 10.0, 0.25, 3)), 2.0, 0.15);  // bursty
  EXPECT_NEAR(gap_cv(arrival_times(20000, 10.0, 4.0, 3)), 0.5, 0.05);   // smoother
}

// vLLM: burstiness inf means constant gaps of 1 / rate (a uniform load).
TEST(BenchArrivals, InfiniteBurstinessGivesConstantGaps) {
  auto t = arrival_times(4, 2.0, std::numeric_limits<double>::infinity(), 9);
  EXPECT_EQ(t, (std::vector<double>{0.5, 1.0, 1.5, 2.0}));
}

TEST(BenchArrivals, InfiniteRateSendsAtOnceAndBadRatesFail) {
  auto t = arrival_times(5, std::numeric_limits<double>::infinity(), 1.0, 0);
  EXPECT_EQ(t, std::vector<double>(5, 0.0));
  EXPECT_THROW(arrival_times(5, 0.0, 1.0, 0), Error);
  EXPECT_THROW(arrival_times(5, 1.0, 0.0, 0), Error);
}

}  // namespace
}  // namespace kimi::bench
