#include "bench/online_plot.h"

#include <string>

#include "core/check.h"

namespace kimi::bench {
namespace {

void latency_panel(SvgPlot& plot, const std::string& name, const Summary& s) {
  std::vector<std::pair<std::string, double>> bars = {{"mean", s.mean}, {"median", s.median}};
  for (auto& [p, v] : s.percentiles) bars.emplace_back(percentile_word(p, "p"), v);
  plot.add_bars(name, "ms", bars);
}

}  // namespace

void add_online_plot(SvgPlot& plot, const std::vector<SweepPoint>& runs,
                     const MetricOptions& opts) {
  KIMI_CHECK(!runs.empty(), "no runs to plot");
  if (runs.size() == 1) {
    const BenchmarkMetrics& m = runs[0].metrics;
    latency_panel(plot, "TTFT", m.ttft_ms);
    latency_panel(plot, "TPOT (excl. 1st token)", m.tpot_ms);
    latency_panel(plot, "ITL", m.itl_ms);
    latency_panel(plot, "E2EL", m.e2el_ms);
    plot.add_bars("Throughput", "tokens/s",
                  {{"output", m.output_throughput},
                   {"total", m.total_token_throughput},
                   {"peak output", m.max_output_tokens_per_s}});
    return;
  }
  std::vector<double> x;
  Series out{"output tok/s", {}}, total{"total tok/s", {}}, req{"requests/s", {}};
  std::vector<Series> lat;
  auto pick = [&](const std::string& name, auto get) {
    Series s{name, {}};
    for (auto& r : runs) s.y.push_back(get(r.metrics));
    lat.push_back(s);
  };
  for (auto& r : runs) {
    x.push_back(r.max_concurrency);
    out.y.push_back(r.metrics.output_throughput);
    total.y.push_back(r.metrics.total_token_throughput);
    req.y.push_back(r.metrics.request_throughput);
  }
  plot.add_lines("Token throughput vs max concurrency", "max concurrency", "tokens/s", x,
                 {out, total});
  plot.add_lines("Request throughput vs max concurrency", "max concurrency", "requests/s", x,
                 {req});
  double top = opts.percentiles.empty() ? 50 : opts.percentiles.back();
  std::string pw = percentile_word(top, "p");
  pick("median TTFT", [](const BenchmarkMetrics& m) { return m.ttft_ms.median; });
  pick(pw + " TTFT", [&](const BenchmarkMetrics& m) {
    return opts.percentiles.empty() ? m.ttft_ms.median : m.ttft_ms.at(top);
  });
  plot.add_lines("TTFT vs max concurrency", "max concurrency", "ms", x, lat);
  lat.clear();
  pick("median TPOT", [](const BenchmarkMetrics& m) { return m.tpot_ms.median; });
  pick(pw + " TPOT", [&](const BenchmarkMetrics& m) {
    return opts.percentiles.empty() ? m.tpot_ms.median : m.tpot_ms.at(top);
  });
  pick("median ITL", [](const BenchmarkMetrics& m) { return m.itl_ms.median; });
  plot.add_lines("TPOT / ITL vs max concurrency", "max concurrency", "ms", x, lat);
}

}  // namespace kimi::bench
