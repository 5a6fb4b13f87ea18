#include "bench/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/check.h"

namespace kimi::bench {

void StreamTimeline::on_event(double t) {
  if (n_ == 0) {
    first_ = t;
  } else {
    itl_.push_back(t - last_);
  }
  last_ = t;
  ++n_;
}

void StreamTimeline::finish(RequestOutput& out) const {
  out.start_time = start_;
  out.num_events = n_;
  out.itl = itl_;
  out.ttft = n_ ? first_ - start_ : 0;
  out.latency = n_ ? last_ - start_ : 0;
}

namespace {

std::vector<double> to_ms(const std::vector<double>& s) {
  std::vector<double> v(s.size());
  for (size_t i = 0; i < s.size(); ++i) v[i] = s[i] * 1000.0;
  return v;
}

bool meets_slos(const std::map<std::string, double>& slo, double ttft_ms, double tpot_ms,
                double e2el_ms) {
  for (auto& [k, lim] : slo) {
    double v = k == "ttft" ? ttft_ms : k == "tpot" ? tpot_ms : e2el_ms;
    if (v > lim) return false;
  }
  return true;
}

}  // namespace

double max_output_tokens_per_s(const std::vector<RequestOutput>& outputs) {
  // vLLM's buckets start at the earliest start of a successful request, not at the benchmark's
  // clock origin (with paced arrivals the first request leaves after its own gap).
  double origin = std::numeric_limits<double>::infinity();
  for (auto& o : outputs)
    if (o.success && o.num_events > 0) origin = std::min(origin, o.start_time);
  std::map<int64_t, int> per_second;
  for (auto& o : outputs) {
    if (!o.success || o.num_events == 0) continue;
    double t = o.start_time + o.ttft;
    per_second[int64_t(std::floor(t - origin))] += 1;
    for (double gap : o.itl) {
      t += gap;
      per_second[int64_t(std::floor(t - origin))] += 1;
    }
  }
  int best = 0;
  for (auto& [s, n] : per_second) best = std::max(best, n);
  return best;
}

int max_concurrent_requests(const std::vector<RequestOutput>& outputs) {
  std::vector<std::pair<double, int>> edges;  // (time, +1 start / −1 end); ends sort first
  for (auto& o : outputs) {
    if (!o.success) continue;
    edges.emplace_back(o.start_time, +1);
    edges.emplace_back(o.start_time + o.latency, -1);
  }
  std::sort(edges.begin(), edges.end());
  int cur = 0, best = 0;
  for (auto& [t, d] : edges) best = std::max(best, cur += d);
  return best;
}

BenchmarkMetrics calculate_metrics(const std::vector<RequestOutput>& outputs, double duration,
                                   const MetricOptions& opts,
                                   const std::vector<int>& fallback_output_tokens) {
  KIMI_CHECK(duration > 0, "benchmark duration must be positive");
  BenchmarkMetrics m;
  m.duration = duration;
  std::vector<double> ttfts, tpots, itls, e2els, tpot_incl, queues, e2el_incl_queue;
  int good = 0;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const RequestOutput& o = outputs[i];
    m.input_lens.push_back(o.prompt_len);
    if (!o.success) {
      m.output_lens.push_back(0);
      ++m.failed;
      continue;
    }
    int out_len = o.output_tokens;
    if (out_len <= 0) {
      ++m.requests_without_usage;
      int fb = i < fallback_output_tokens.size() ? fallback_output_tokens[i] : 0;
      out_len = fb > 0 ? fb : 1;
    }
    m.output_lens.push_back(out_len);
    m.total_input += o.prompt_len;
    m.total_output += out_len;
    double tpot = 0;
    if (out_len > 1) {
      tpot = (o.latency - o.ttft) / (out_len - 1);
      tpots.push_back(tpot);
    }
    tpot_incl.push_back(o.latency / out_len);
    itls.insert(itls.end(), o.itl.begin(), o.itl.end());
    ttfts.push_back(o.ttft);
    e2els.push_back(o.latency);
    queues.push_back(o.queue_time);
    e2el_incl_queue.push_back(o.latency + o.queue_time);
    ++m.completed;
    if (!opts.goodput_slo_ms.empty() &&
        meets_slos(opts.goodput_slo_ms, o.ttft * 1e3, tpot * 1e3, o.latency * 1e3))
      ++good;
  }
  m.request_throughput = m.completed / duration;
  m.request_goodput = good / duration;
  m.output_throughput = m.total_output / duration;
  m.total_token_throughput = (m.total_input + m.total_output) / duration;
  m.ttft_ms = summarize(to_ms(ttfts), opts.percentiles);
  m.tpot_ms = summarize(to_ms(tpots), opts.percentiles);
  m.itl_ms = summarize(to_ms(itls), opts.percentiles);
  m.e2el_ms = summarize(to_ms(e2els), opts.percentiles);
  m.tpot_incl_first_ms = summarize(to_ms(tpot_incl), opts.percentiles);
  m.client_queue_ms = summarize(to_ms(queues), opts.percentiles);
  m.e2el_incl_queue_ms = summarize(to_ms(e2el_incl_queue), opts.percentiles);
  m.max_output_tokens_per_s = max_output_tokens_per_s(outputs);
  m.max_concurrent_requests = max_concurrent_requests(outputs);
  return m;
}

}  // namespace kimi::bench
