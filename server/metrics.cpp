#include "metrics.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/check.h"

namespace kimi::server {
namespace {

std::string num(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.15g", v);  // 0.04, not 0.040000000000000001
  if (std::strtod(buf, nullptr) != v) std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

void head(std::string& out, const std::string& name, const char* type, const char* help) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void sample(std::string& out, const std::string& name, const std::string& labels, double v) {
  out += name + "{" + labels + "} " + num(v) + "\n";
}

}  // namespace

void render_histogram(std::string& out, const std::string& name, const std::string& labels,
                      const Histogram& h) {
  uint64_t cum = 0;
  std::string sep = labels.empty() ? "" : ",";
  for (size_t i = 0; i < h.counts.size(); ++i) {
    cum += h.counts[i];
    std::string le = i < h.bounds.size() ? num(h.bounds[i]) : "+Inf";
    out += name + "_bucket{" + labels + sep + "le=\"" + le + "\"} " + std::to_string(cum) + "\n";
  }
  out += name + "_sum{" + labels + "} " + num(h.sum) + "\n";
  out += name + "_count{" + labels + "} " + std::to_string(h.count) + "\n";
}

namespace {

// A histogram's HELP / TYPE lines and its samples.
void histogram(std::string& out, const std::string& name, const char* help,
               const std::string& labels, const Histogram& h) {
  head(out, name, "histogram", help);
  render_histogram(out, name, labels, h);
}

}  // namespace

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
      params_max_tokens_(buckets_125(double(max_model_len))),
      max_generation_tokens_(buckets_125(double(max_model_len))) {
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

void ServerMetrics::sample_finished(const std::string& reason, int prompt_tokens,
                                    int generation_tokens, int max_tokens) {
  std::lock_guard lk(mu_);
  ++success_[reason];
  prompt_tokens_.observe(prompt_tokens);
  generation_tokens_.observe(generation_tokens);
  params_max_tokens_.observe(max_tokens);
}

void ServerMetrics::request_finished(int n, int max_generation_tokens) {
  std::lock_guard lk(mu_);
  params_n_.observe(n);
  max_generation_tokens_.observe(max_generation_tokens);
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
  head(out, "kimi:http_requests_in_flight", "gauge",
       "Generation requests the HTTP server is serving.");
  sample(out, "kimi:http_requests_in_flight", L, http_in_flight);
  head(out, "vllm:prompt_tokens_total", "counter", "Prefill tokens processed.");
  sample(out, "vllm:prompt_tokens_total", L, double(m.prompt_tokens_total));
  head(out, "vllm:generation_tokens_total", "counter", "Generated tokens.");
  sample(out, "vllm:generation_tokens_total", L, double(m.generation_tokens_total));
  head(out, "vllm:num_preemptions_total", "counter", "Preemptions by the scheduler.");
  sample(out, "vllm:num_preemptions_total", L, double(m.preemptions_total));
  head(out, "vllm:prefix_cache_queries_total", "counter",
       "Prompt tokens looked up in the prefix cache.");
  sample(out, "vllm:prefix_cache_queries_total", L, double(m.prefix_cache_queries_total));
  head(out, "vllm:prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.");
  sample(out, "vllm:prefix_cache_hits_total", L, double(m.prefix_cache_hits_total));

  histogram(out, "vllm:time_to_first_token_seconds", "Time to first token, seconds.", L, m.ttft);
  // vLLM observes the gap before every token after a sequence's first here; the old name is
  // the same series (deprecated in vLLM), the per-request mean has its own.
  for (const char* name :
       {"vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"}) {
    histogram(out, name, "Gap before each token after a sequence's first, seconds.", L, m.itl);
  }
  histogram(out, "vllm:request_time_per_output_token_seconds",
            "Per request: time per output token after the first, seconds.", L, m.tpot);
  histogram(out, "vllm:e2e_request_latency_seconds", "End-to-end request latency, seconds.", L,
            m.e2e);
  histogram(out, "vllm:request_queue_time_seconds",
            "Time from arrival to first scheduled, seconds.", L, m.queue);
  histogram(out, "vllm:request_prefill_time_seconds",
            "Per request: first scheduled to first token (the prefill phase), seconds.", L,
            m.prefill);
  histogram(out, "vllm:request_decode_time_seconds",
            "Per request: first token to last token (the decode phase), seconds.", L, m.decode);
  histogram(out, "vllm:request_inference_time_seconds",
            "Per request: first scheduled to last token (the running phase), seconds.", L,
            m.inference);
  histogram(out, "vllm:iteration_tokens_total", "Tokens per engine step.", L, m.iteration_tokens);
  // vLLM's info gauge: the cache configuration as labels (its own label set, no model_name).
  head(out, "vllm:cache_config_info", "gauge", "Information of the engine's cache configuration.");
  sample(out, "vllm:cache_config_info",
         "block_size=\"" + std::to_string(m.block_size) + "\",cache_dtype=\"" + m.cache_dtype +
             "\",enable_prefix_caching=\"" + (m.prefix_caching ? "True" : "False") +
             "\",num_gpu_blocks=\"" + std::to_string(m.total_blocks) + "\",engine=\"0\"",
         1);

  std::lock_guard lk(mu_);
  head(out, "vllm:request_success_total", "counter", "Finished requests by finish reason.");
  for (const char* r : {"stop", "length", "abort", "error"}) {
    auto it = success_.find(r);
    sample(out, "vllm:request_success_total", L + ",finished_reason=\"" + r + "\"",
           double(it == success_.end() ? 0 : it->second));
  }
  histogram(out, "vllm:request_prompt_tokens", "Prompt tokens per request.", L, prompt_tokens_);
  histogram(out, "vllm:request_generation_tokens", "Generated tokens per request.", L,
            generation_tokens_);
  histogram(out, "vllm:request_params_n", "The n request parameter, once per request.", L,
            params_n_);
  histogram(out, "vllm:request_max_num_generation_tokens",
            "Per request: the most tokens one of its n samples generated.", L,
            max_generation_tokens_);
  histogram(out, "vllm:request_params_max_tokens", "The max_tokens request parameter.", L,
            params_max_tokens_);
  head(out, "kimi:http_responses_total", "counter", "HTTP responses by status.");
  for (const auto& [status, count] : http_)
    sample(out, "kimi:http_responses_total", L + ",status=\"" + std::to_string(status) + "\"",
           double(count));
  return out;
}

}  // namespace kimi::server
