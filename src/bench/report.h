// Online results: the terminal table (vLLM's layout) and the JSON result with vLLM's keys
// (`vllm bench serve --save-result`), plus our provenance keys (host, card, commit).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/metrics.h"
#include "bench/sysinfo.h"

namespace kimi::bench {

struct OnlineRunInfo {
  std::string date;     // YYYYMMDD-HHMMSS, UTC
  std::string backend;  // vLLM's backend name: "openai" or "openai-chat"
  std::string base_url, endpoint, model_id, tokenizer_id, dataset_name;
  int num_prompts = 0;
  double request_rate = 0;  // inf allowed (written as the string "inf", as vLLM does)
  double burstiness = 1;
  int max_concurrency = 0;  // 0: unlimited (null in JSON)
  bool ignore_eos = false;
  uint64_t seed = 0;
  // Online with --max-concurrency: report the client-side queueing as vLLM does (the wait
  // for a slot; with a finite --request-rate also E2EL including it).
  bool client_queue = false;
};

std::string format_table(const BenchmarkMetrics& m, const OnlineRunInfo& info,
                         const MetricOptions& opts);

// The result object. Every key vLLM writes is present; keys of ours are documented in --help.
nlohmann::ordered_json result_json(const BenchmarkMetrics& m,
                                   const std::vector<RequestOutput>& outs,
                                   const OnlineRunInfo& info, const MetricOptions& opts,
                                   const SystemInfo& sys);

// The keys every online result must have (tests and docs use this list).
std::vector<std::string> required_result_keys(const MetricOptions& opts);

std::string utc_date_stamp();  // YYYYMMDD-HHMMSS

}  // namespace kimi::bench
