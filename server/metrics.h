// /metrics in the Prometheus text format (0.0.4) with vLLM's metric names (serving.md §2.2), so
// vLLM Grafana dashboards work unchanged. Engine gauges, counters and latency histograms come from
// Engine::metrics() at scrape time; per-request histograms and finish reasons are recorded here.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "kimi/engine.h"

namespace kimi::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {}
  void observe(double v);
  // Appends the _bucket/_sum/_count lines; `labels` is the label list without braces.
  void render(std::string& out, const std::string& name, const std::string& labels) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, non-cumulative; last = +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

// vLLM's 1-2-5 buckets up to `max`.
std::vector<double> buckets_125(double max);

class ServerMetrics {
 public:
  ServerMetrics(std::string model_name, int64_t max_model_len);

  // One engine request finished; `reason` is "stop", "length", "abort" or "error".
  void request_finished(const std::string& reason, int prompt_tokens, int generation_tokens, int n,
                        int max_tokens);
  void http_response(int status);

  std::string render(const EngineMetrics& m, int http_in_flight) const;

 private:
  std::string labels_;
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> success_;  // by finished_reason
  std::map<int, uint64_t> http_;              // by status
  Histogram prompt_tokens_, generation_tokens_, params_n_, params_max_tokens_;
};

}  // namespace kimi::server
