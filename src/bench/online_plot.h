// The online SVG: latency statistics of one run, or throughput and latency against
// concurrency for a --max-concurrency sweep.
#pragma once

#include <vector>

#include "bench/metrics.h"
#include "bench/svg_plot.h"

namespace kimi::bench {

struct SweepPoint {
  int max_concurrency = 0;  // 0: unlimited
  BenchmarkMetrics metrics;
};

void add_online_plot(SvgPlot& plot, const std::vector<SweepPoint>& runs, const MetricOptions& opts);

}  // namespace kimi::bench
