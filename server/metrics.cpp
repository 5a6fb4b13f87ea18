#include "metrics.h"

#include <cmath>
#include <cstdio>

#include "core/check.h"

namespace kimi::server {
namespace {

std::string num(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

void head(std::string& out, const std::string& name, const char* type, const char* help) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void sample(std::string& out, const std::string& name, const std::string& labels, double v) {
  out += name + "{" + labels + "} " + num(v) + "\n";
}

const std::vector<double> kTtftBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                                          2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
const std::vector<double> kItlBuckets = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                                         1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
const std::vector<double> kE2eBuckets = {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                                         40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

}  // namespace

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  uint64_t cum = 0;
  std::string sep = labels.empty() ? "" : ",";
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cum += counts_[i];
    std::string le = i < bounds_.size() ? num(bounds_[i]) : "+Inf";
    out += name + "_bucket{" + labels + sep + "le=\"" + le + "\"} " + std::to_string(cum) + "\n";
  }
  out += name + "_sum{" + labels + "} " + num(sum_) + "\n";
  out += name + "_count{" + labels + "} " + std::to_string(count_) + "\n";
}

std::vector<double> buckets_125(double max) {
  std::vector<double> b;
  for (double m = 1;; m *= 10)
    for (double f : {1.0, 2.0, 5.0}) {
      if (m * f > max) return b;
      b.push_back(m * f);
    }
}

ServerMetrics::ServerMetrics(std::string model_name, int64_t max_model_len)
    : prompt_tokens_(buckets_125(double(max_model_len))),
      generation_tokens_(buckets_125(double(max_model_len))),
      params_n_({1, 2, 5, 10, 20}),
      params_max_tokens_(buckets_125(double(max_model_len))) {
  std::string escaped;
  for (char c : model_name) {
    if (c == '\\' || c == '"') escaped += '\\';
    if (c == '\n') {
      escaped += "\\n";
      continue;
    }
    escaped += c;
  }
  labels_ = "model_name=\"" + escaped + "\",engine=\"0\"";
}

void ServerMetrics::request_finished(const std::string& reason, int prompt_tokens, int generation_tokens, int n,
                                     int max_tokens) {
  std::lock_guard lk(mu_);
  ++success_[reason];
  prompt_tokens_.observe(prompt_tokens);
  generation_tokens_.observe(generation_tokens);
  params_n_.observe(n);
  params_max_tokens_.observe(max_tokens);
}

void ServerMetrics::http_response(int status) {
  std::lock_guard lk(mu_);
  ++http_[status];
}

std::string ServerMetrics::render(const EngineMetrics& m, int http_in_flight) const {
  std::string out;
  const std::string& L = labels_;
  head(out, "vllm:num_requests_running", "gauge", "Number of requests in the running batch.");
  sample(out, "vllm:num_requests_running", L, m.num_running);
  head(out, "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be scheduled.");
  sample(out, "vllm:num_requests_waiting", L, m.num_waiting);
  head(out, "vllm:kv_cache_usage_perc", "gauge", "Fraction of MLA cache blocks in use (1 = 100%).");
  sample(out, "vllm:kv_cache_usage_perc", L, m.cache_usage);
  head(out, "kimi:state_slots_free", "gauge", "Free KDA state slots.");
  sample(out, "kimi:state_slots_free", L, m.free_slots);
  head(out, "kimi:state_slots_total", "gauge", "KDA state slots.");
  sample(out, "kimi:state_slots_total", L, m.total_slots);
  head(out, "kimi:http_requests_in_flight", "gauge", "Generation requests the HTTP server is serving.");
  sample(out, "kimi:http_requests_in_flight", L, http_in_flight);
  head(out, "vllm:prompt_tokens_total", "counter", "Prefill tokens processed.");
  sample(out, "vllm:prompt_tokens_total", L, double(m.prompt_tokens_total));
  head(out, "vllm:generation_tokens_total", "counter", "Generated tokens.");
  sample(out, "vllm:generation_tokens_total", L, double(m.generation_tokens_total));
  head(out, "vllm:num_preemptions_total", "counter", "Preemptions by the scheduler.");
  sample(out, "vllm:num_preemptions_total", L, double(m.preemptions_total));

  Histogram ttft(kTtftBuckets), tpot(kItlBuckets), e2e(kE2eBuckets);
  for (double v : m.ttft) ttft.observe(v);
  for (double v : m.tpot) tpot.observe(v);
  for (double v : m.e2e) e2e.observe(v);
  head(out, "vllm:time_to_first_token_seconds", "histogram", "Time to first token, seconds.");
  ttft.render(out, "vllm:time_to_first_token_seconds", L);
  head(out, "vllm:time_per_output_token_seconds", "histogram", "Time per output token after the first, seconds.");
  tpot.render(out, "vllm:time_per_output_token_seconds", L);
  head(out, "vllm:e2e_request_latency_seconds", "histogram", "End-to-end request latency, seconds.");
  e2e.render(out, "vllm:e2e_request_latency_seconds", L);

  std::lock_guard lk(mu_);
  head(out, "vllm:request_success_total", "counter", "Finished requests by finish reason.");
  for (const char* r : {"stop", "length", "abort", "error"}) {
    auto it = success_.find(r);
    sample(out, "vllm:request_success_total", L + ",finished_reason=\"" + r + "\"",
           double(it == success_.end() ? 0 : it->second));
  }
  head(out, "vllm:request_prompt_tokens", "histogram", "Prompt tokens per request.");
  prompt_tokens_.render(out, "vllm:request_prompt_tokens", L);
  head(out, "vllm:request_generation_tokens", "histogram", "Generated tokens per request.");
  generation_tokens_.render(out, "vllm:request_generation_tokens", L);
  head(out, "vllm:request_params_n", "histogram", "The n request parameter.");
  params_n_.render(out, "vllm:request_params_n", L);
  head(out, "vllm:request_params_max_tokens", "histogram", "The max_tokens request parameter.");
  params_max_tokens_.render(out, "vllm:request_params_max_tokens", L);
  head(out, "kimi:http_responses_total", "counter", "HTTP responses by status.");
  for (const auto& [status, count] : http_)
    sample(out, "kimi:http_responses_total", L + ",status=\"" + std::to_string(status) + "\"", double(count));
  return out;
}

}  // namespace kimi::server
