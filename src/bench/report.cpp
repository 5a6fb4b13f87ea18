#include "bench/report.h"

#include <cmath>
#include <cstdio>
#include <ctime>
#include <string_view>

namespace kimi::bench {
namespace {

const char* const kMetricNames[] = {"ttft", "tpot", "itl", "e2el"};

const Summary& summary_of(const BenchmarkMetrics& m, std::string_view name) {
  if (name == "ttft") return m.ttft_ms;
  if (name == "tpot") return m.tpot_ms;
  if (name == "itl") return m.itl_ms;
  return m.e2el_ms;
}

std::string row(const std::string& label, const std::string& value) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "%-40s %s\n", label.c_str(), value.c_str());
  return buf;
}

std::string num(double v, int decimals = 2) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::string centered(const std::string& title, char fill) {
  const size_t width = 50;
  if (title.size() + 2 >= width) return title + "\n";
  size_t left = (width - title.size()) / 2, right = width - title.size() - left;
  return std::string(left, fill) + title + std::string(right, fill) + "\n";
}

void latency_block(std::string& out, const std::string& title, const std::string& abbrev,
                   const Summary& s) {
  out += centered(title, '-');
  out += row("Mean " + abbrev + " (ms):", num(s.mean));
  out += row("Median " + abbrev + " (ms):", num(s.median));
  out += row("Std " + abbrev + " (ms):", num(s.std));
  for (auto& [p, v] : s.percentiles)
    out += row(percentile_word(p, "P") + " " + abbrev + " (ms):", num(v));
}

}  // namespace

std::string utc_date_stamp() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
  return buf;
}

std::string format_table(const BenchmarkMetrics& m, const OnlineRunInfo& info,
                         const MetricOptions& opts) {
  std::string out = centered(" Serving Benchmark Result ", '=');
  out += row("Successful requests:", std::to_string(m.completed));
  out += row("Failed requests:", std::to_string(m.failed));
  out += row("Maximum request concurrency:",
             info.max_concurrency > 0 ? std::to_string(info.max_concurrency) : "unlimited");
  out +=
      row("Request rate (req/s):", std::isinf(info.request_rate) ? "inf" : num(info.request_rate));
  out += row("Benchmark duration (s):", num(m.duration));
  out += row("Total input tokens:", std::to_string(m.total_input));
  out += row("Total generated tokens:", std::to_string(m.total_output));
  out += row("Request throughput (req/s):", num(m.request_throughput));
  if (!opts.goodput_slo_ms.empty())  // where vLLM prints it, only with --goodput
    out += row("Request goodput (req/s):", num(m.request_goodput));
  out += row("Output token throughput (tok/s):", num(m.output_throughput));
  out += row("Peak output token throughput (tok/s):", num(m.max_output_tokens_per_s));
  out += row("Peak concurrent requests:", std::to_string(m.max_concurrent_requests));
  out += row("Total Token throughput (tok/s):", num(m.total_token_throughput));
  latency_block(out, "Time to First Token", "TTFT", m.ttft_ms);
  latency_block(out, "Time per Output Token (excl. 1st token)", "TPOT", m.tpot_ms);
  latency_block(out, "Inter-token Latency", "ITL", m.itl_ms);
  latency_block(out, "End-to-end Latency", "E2EL", m.e2el_ms);
  if (info.client_queue) {
    latency_block(out, "Client-side Queueing", "Client Queue Time", m.client_queue_ms);
    if (!std::isinf(info.request_rate))
      latency_block(out, "Queue-inclusive End-to-end Latency", "E2EL incl. Client Queue",
                    m.e2el_incl_queue_ms);
  }
  out += centered("E2EL / output tokens (guidellm's \"TPOT\")", '-');
  out += row("Mean E2EL/token (ms):", num(m.tpot_incl_first_ms.mean));
  out += row("Median E2EL/token (ms):", num(m.tpot_incl_first_ms.median));
  out += std::string(50, '=') + "\n";
  if (m.requests_without_usage > 0)
    out += "warning: " + std::to_string(m.requests_without_usage) +
           " successful requests had no usage.completion_tokens; their output lengths were counted "
           "with --tokenizer (or taken as 1 without one)\n";
  return out;
}

std::vector<std::string> required_result_keys(const MetricOptions& opts) {
  std::vector<std::string> keys = {"date",
          "backend",
          "model_id",
          "tokenizer_id",
          "num_prompts",
          "request_rate",
          "burstiness",
          "max_concurrency",
          "duration",
          "completed",
          "failed",
          "total_input_tokens",
          "total_output_tokens",
          "request_throughput",
          "request_goodput",
          "output_throughput",
          "total_token_throughput",
          "max_output_tokens_per_s",
          "max_concurrent_requests",
          "input_lens",
          "output_lens",
          "ttfts",
          "itls",
          "latencies",
          "start_times",
          "queue_times",
          "errors",
          "generated_texts",
          "host",
          "card",
          "git_commit",
          "kimi_bench_version"};
  for (const char* m : kMetricNames) {
    std::string n = m;
    keys.push_back("mean_" + n + "_ms");
    keys.push_back("median_" + n + "_ms");
    keys.push_back("std_" + n + "_ms");
    for (double p : opts.percentiles) keys.push_back(percentile_word(p, "p") + "_" + n + "_ms");
  }
  return keys;
}

nlohmann::ordered_json result_json(const BenchmarkMetrics& m,
                                   const std::vector<RequestOutput>& outs,
                                   const OnlineRunInfo& info, const MetricOptions& opts,
                                   const SystemInfo& sys) {
  nlohmann::ordered_json j;
  j["date"] = info.date;
  j["backend"] = info.backend;
  j["model_id"] = info.model_id;
  j["tokenizer_id"] = info.tokenizer_id.empty() ? nlohmann::ordered_json()
                                                : nlohmann::ordered_json(info.tokenizer_id);
  j["num_prompts"] = info.num_prompts;
  if (std::isinf(info.request_rate))
    j["request_rate"] = "inf";
  else
    j["request_rate"] = info.request_rate;
  j["burstiness"] = info.burstiness;
  j["max_concurrency"] = info.max_concurrency > 0 ? nlohmann::ordered_json(info.max_concurrency)
                                                  : nlohmann::ordered_json();
  j["duration"] = m.duration;
  j["completed"] = m.completed;
  j["failed"] = m.failed;
  j["total_input_tokens"] = m.total_input;
  j["total_output_tokens"] = m.total_output;
  j["request_throughput"] = m.request_throughput;
  j["request_goodput"] = opts.goodput_slo_ms.empty() ? nlohmann::ordered_json()
                                                     : nlohmann::ordered_json(m.request_goodput);
  j["output_throughput"] = m.output_throughput;
  j["total_token_throughput"] = m.total_token_throughput;
  j["max_output_tokens_per_s"] = m.max_output_tokens_per_s;
  j["max_concurrent_requests"] = m.max_concurrent_requests;
  auto stats = [&](const std::string& n, const Summary& s) {
    j["mean_" + n + "_ms"] = s.mean;
    j["median_" + n + "_ms"] = s.median;
    j["std_" + n + "_ms"] = s.std;
    for (auto& [p, v] : s.percentiles) j[percentile_word(p, "p") + "_" + n + "_ms"] = v;
  };
  for (const char* name : kMetricNames) stats(name, summary_of(m, name));
  if (info.client_queue) {  // vLLM's names
    stats("client_queue_time", m.client_queue_ms);
    if (!std::isinf(info.request_rate))
      stats("e2el_including_client_queue", m.e2el_incl_queue_ms);
  }
  j["input_lens"] = m.input_lens;
  j["output_lens"] = m.output_lens;
  auto& ttfts = j["ttfts"] = nlohmann::ordered_json::array();
  auto& itls = j["itls"] = nlohmann::ordered_json::array();
  auto& lat = j["latencies"] = nlohmann::ordered_json::array();
  auto& starts = j["start_times"] = nlohmann::ordered_json::array();
  auto& queues = j["queue_times"] = nlohmann::ordered_json::array();
  auto& errs = j["errors"] = nlohmann::ordered_json::array();
  auto& texts = j["generated_texts"] = nlohmann::ordered_json::array();
  for (auto& o : outs) {  // seconds, per request, as vLLM writes them
    ttfts.push_back(o.ttft);
    itls.push_back(o.itl);
    lat.push_back(o.latency);
    starts.push_back(o.start_time);  // since the benchmark start (vLLM: perf_counter values)
    queues.push_back(o.queue_time);
    errs.push_back(o.error);
    texts.push_back(o.generated_text);
  }
  // Ours: provenance and the clearly named guidellm-style per-token latency.
  j["mean_e2el_per_output_token_ms"] = m.tpot_incl_first_ms.mean;
  j["median_e2el_per_output_token_ms"] = m.tpot_incl_first_ms.median;
  j["requests_without_usage"] = m.requests_without_usage;
  j["base_url"] = info.base_url;
  j["endpoint"] = info.endpoint;
  j["dataset_name"] = info.dataset_name;
  j["ignore_eos"] = info.ignore_eos;
  j["seed"] = info.seed;
  j["host"] = {{"hostname", sys.hostname}, {"cpu", sys.cpu_model}, {"cpu_cores", sys.cpu_cores}};
  j["card"] = sys.card;
  j["git_commit"] = sys.git_commit;
  j["git_dirty"] = sys.git_dirty;
  j["kimi_bench_version"] = sys.version;
  return j;
}

}  // namespace kimi::bench
