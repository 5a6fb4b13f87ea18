// Per-request timelines and the aggregate serving metrics, defined exactly as `vllm bench serve`
// does (serving.md §3.4), so our numbers can be put next to vLLM's:
//   TTFT  = first SSE event with non-empty `choices` − request start (content may be empty);
//   ITL   = every gap between consecutive `choices` events, pooled over all requests;
//   E2EL  = last `choices` event − request start (the usage chunk and [DONE] don't count);
//   TPOT  = (E2EL − TTFT) / (output_tokens − 1), only for requests with output_tokens > 1;
//   duration = start of the arrival schedule (after the warm-ups) to the last completion; as in
//              vLLM, a paced run's first request leaves after its own arrival gap, inside it.
// Times are seconds on a steady clock; reported statistics are in milliseconds.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "bench/stats.h"

namespace kimi::bench {

// What one request produced, as the client observed it.
struct RequestOutput {
  bool success = false;
  std::string error;
  double start_time = 0;  // seconds since the benchmark start
  // Seconds between the request's arrival and its dispatch: the wait for a --max-concurrency
  // slot (vLLM's client_queue_time; not part of TTFT or E2EL).
  double queue_time = 0;
  double ttft = 0;          // seconds
  double latency = 0;       // E2EL, seconds
  std::vector<double> itl;  // gaps between choices events, seconds
  int prompt_len = 0;       // usage.prompt_tokens when the server sent it, else the dataset's
  int output_tokens = 0;    // usage.completion_tokens; 0 when the server sent no usage
  bool usage_present = false;
  int num_events = 0;  // choices events received
  std::string generated_text;
};

// Builds a RequestOutput's timing fields from event arrival times (the client calls on_event
// for each SSE event that has non-empty choices).
class StreamTimeline {
 public:
  explicit StreamTimeline(double start) : start_(start) {}
  void on_event(double t);
  bool any() const { return n_ > 0; }
  // Sets ttft, itl, latency, num_events and start_time.
  void finish(RequestOutput& out) const;

 private:
  double start_, first_ = 0, last_ = 0;
  std::vector<double> itl_;
  int n_ = 0;
};

struct MetricOptions {
  std::vector<double> percentiles = {90, 99};
  // Goodput SLOs in ms (vLLM --goodput ttft:MS tpot:MS e2el:MS); empty: no goodput.
  std::map<std::string, double> goodput_slo_ms;
};

struct BenchmarkMetrics {
  int completed = 0, failed = 0;
  int total_input = 0, total_output = 0;
  double duration = 0;
  double request_throughput = 0, request_goodput = 0, output_throughput = 0,
         total_token_throughput = 0;
  double max_output_tokens_per_s = 0;
  int max_concurrent_requests = 0;
  // Statistics in milliseconds. tpot_incl_first is guidellm's "TPOT" (E2EL / output_tokens),
  // reported under its own name so it is never confused with vLLM's TPOT.
  Summary ttft_ms, tpot_ms, itl_ms, e2el_ms, tpot_incl_first_ms;
  // vLLM's client-side queueing (successful requests): the wait, and E2EL plus the wait.
  Summary client_queue_ms, e2el_incl_queue_ms;
  std::vector<int> input_lens, output_lens;  // per request, 0 output for failures
  int requests_without_usage = 0;
};

// output_lens: when a successful request has no usage.completion_tokens, the caller may pass a
// count from a local tokenizer (fallback_output_tokens[i] > 0); else 1 is assumed, as vLLM does.
BenchmarkMetrics calculate_metrics(const std::vector<RequestOutput>& outputs, double duration,
                                   const MetricOptions& opts,
                                   const std::vector<int>& fallback_output_tokens = {});

// Peak of the per-second histogram of token (event) arrivals: first event at start+TTFT, later
// ones at the cumulative ITLs; buckets are whole seconds since the earliest start of a successful
// request (vLLM's origin). Counts stream events, as vLLM does: a server that sends several tokens
// per event reads low here.
double max_output_tokens_per_s(const std::vector<RequestOutput>& outputs);
// Largest number of successful requests whose [start, start + E2EL) intervals overlap.
int max_concurrent_requests(const std::vector<RequestOutput>& outputs);

}  // namespace kimi::bench
