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

// Appends a histogram's _bucket (cumulative) / _sum / _count lines; `labels` without braces.
void render_histogram(std::string& out, const std::string& name, const std::string& labels,
                      const Histogram& h);

// vLLM's 1-2-5 buckets up to `max`.
std::vector<double> buckets_125(double max);

class ServerMetrics {
 public:
  ServerMetrics(std::string model_name, int64_t max_model_len);

  // One sample (an engine sequence: vLLM's child request of an n > 1 request) finished; `reason`
  // is "stop", "length", "abort" or "error".
  void sample_finished(const std::string& reason, int prompt_tokens, int generation_tokens,
                       int max_tokens);
  // All n samples of one prompt finished (vLLM's parent request): n, and the most tokens a sample
  // generated.
  void request_finished(int n, int max_generation_tokens);
  void http_response(int status);

  std::string render(const EngineMetrics& m, int http_in_flight) const;

 private:
  std::string labels_;
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> success_;  // by finished_reason
  std::map<int, uint64_t> http_;             // by status
  Histogram prompt_tokens_, generation_tokens_, params_n_, params_max_tokens_;
  Histogram max_generation_tokens_;
};

}  // namespace kimi::server
