// kimi-bench metric definitions on hand-made timelines: numpy-style statistics, vLLM's TTFT /
// ITL / E2EL / TPOT, throughput over the duration, and the SSE parsing rules that feed them.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "bench/metrics.h"
#include "bench/report.h"
#include "bench/sse.h"
#include "bench/stats.h"
#include "core/check.h"

namespace kimi::bench {
namespace {

TEST(BenchStats, PercentilesInterpolateLinearlyLikeNumpy) {
  std::vector<double> v = {4, 1, 3, 2};  // unsorted on purpose
  EXPECT_DOUBLE_EQ(percentile(v, 50), 2.5);
  EXPECT_DOUBLE_EQ(percentile(v, 90), 3.7);   // rank 2.7
  EXPECT_DOUBLE_EQ(percentile(v, 99), 3.97);  // rank 2.97
  EXPECT_DOUBLE_EQ(percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(percentile(v, 100), 4);
  EXPECT_DOUBLE_EQ(median({5, 1, 9}), 5);
  EXPECT_DOUBLE_EQ(percentile({7}, 99), 7);
  EXPECT_DOUBLE_EQ(percentile({}, 99), 0);
  EXPECT_DOUBLE_EQ(percentile({10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110}, 95), 105);
}

TEST(BenchStats, PopulationStdAndSummary) {
  std::vector<double> v = {2, 4, 4, 4, 5, 5, 7, 9};
  EXPECT_DOUBLE_EQ(mean(v), 5);
  EXPECT_DOUBLE_EQ(stddev(v), 2);  // population: sqrt(32 / 8)
  Summary s = summarize(v, {90, 99.9});
  EXPECT_DOUBLE_EQ(s.median, 4.5);
  EXPECT_NEAR(s.at(90), 7.6, 1e-12);  // rank 6.3 → 7 + 0.3·2
  EXPECT_NEAR(s.at(99.9), 8.986, 1e-12);
  EXPECT_THROW(s.at(50), Error);
  EXPECT_EQ(percentile_word(99), "99");
  EXPECT_EQ(percentile_word(99.9), "99.9");
}

TEST(BenchMetrics, TimelineGivesTtftItlE2el) {
  StreamTimeline tl(1.0);
  for (double t : {1.5, 1.6, 1.8, 2.0}) tl.on_event(t);
  RequestOutput o;
  tl.finish(o);
  EXPECT_DOUBLE_EQ(o.start_time, 1.0);
  EXPECT_DOUBLE_EQ(o.ttft, 0.5);
  EXPECT_DOUBLE_EQ(o.latency, 1.0);
  ASSERT_EQ(o.itl.size(), 3u);
  EXPECT_NEAR(o.itl[0], 0.1, 1e-12);
  EXPECT_NEAR(o.itl[1], 0.2, 1e-12);
  EXPECT_NEAR(o.itl[2], 0.2, 1e-12);
  EXPECT_EQ(o.num_events, 4);
}

RequestOutput make(double start, std::vector<double> events, int out_tokens, int prompt) {
  StreamTimeline tl(start);
  for (double t : events) tl.on_event(t);
  RequestOutput o;
  tl.finish(o);
  o.success = true;
  o.output_tokens = out_tokens;
  o.usage_present = out_tokens > 0;
  o.prompt_len = prompt;
  return o;
}

TEST(BenchMetrics, AggregatesFollowVllmDefinitions) {
  // Dyadic times keep the sums exact. A: 4 tokens in 4 events. B: 6 tokens in 3 events (several
  // tokens per event: ITL differs from TPOT). C: 1 token. D: failed.
  std::vector<RequestOutput> outs = {
      make(0.0, {0.5, 0.625, 0.75, 1.0}, 4, 10),
      make(0.25, {0.5, 0.75, 1.5}, 6, 20),
      make(1.0, {1.25}, 1, 5),
  };
  RequestOutput failed;
  failed.prompt_len = 7;
  failed.error = "HTTP 500";
  outs.push_back(failed);
  MetricOptions opts;
  opts.percentiles = {50, 99};
  opts.goodput_slo_ms = {{"ttft", 400}};
  BenchmarkMetrics m = calculate_metrics(outs, 2.0, opts);
  EXPECT_EQ(m.completed, 3);
  EXPECT_EQ(m.failed, 1);
  EXPECT_EQ(m.total_input, 35);  // failed requests' prompts don't count
  EXPECT_EQ(m.total_output, 11);
  EXPECT_DOUBLE_EQ(m.request_throughput, 1.5);
  EXPECT_DOUBLE_EQ(m.output_throughput, 5.5);
  EXPECT_DOUBLE_EQ(m.total_token_throughput, 23);
  EXPECT_EQ(m.input_lens, (std::vector<int>{10, 20, 5, 7}));
  EXPECT_EQ(m.output_lens, (std::vector<int>{4, 6, 1, 0}));
  // TTFT: 500, 250, 250 ms.
  EXPECT_NEAR(m.ttft_ms.mean, 1000.0 / 3, 1e-9);
  EXPECT_NEAR(m.ttft_ms.median, 250, 1e-9);
  // TPOT only for A and B: (1.0 − 0.5)/3 and (1.5 − 0.25 − 0.25)/5 s.
  EXPECT_NEAR(m.tpot_ms.mean, (500.0 / 3 + 200.0) / 2, 1e-9);
  // ITL pooled: A's 125, 125, 250 and B's 250, 750 ms.
  EXPECT_NEAR(m.itl_ms.mean, 300, 1e-9);
  EXPECT_NEAR(m.itl_ms.median, 250, 1e-9);
  EXPECT_NEAR(m.itl_ms.at(99), 250 + 0.96 * 500, 1e-9);
  // E2EL: 1000, 1250, 250 ms.
  EXPECT_NEAR(m.e2el_ms.median, 1000, 1e-9);
  double e_mean = 2500.0 / 3;
  double e_var = ((1000 - e_mean) * (1000 - e_mean) + (1250 - e_mean) * (1250 - e_mean) +
                  (250 - e_mean) * (250 - e_mean)) /
                 3;
  EXPECT_NEAR(m.e2el_ms.std, std::sqrt(e_var), 1e-9);
  // guidellm-style E2EL / n: 250, 208.33, 250 ms.
  EXPECT_NEAR(m.tpot_incl_first_ms.mean, (250 + 1250.0 / 6 + 250) / 3, 1e-9);
  // Goodput: TTFT ≤ 400 ms holds for B and C.
  EXPECT_DOUBLE_EQ(m.request_goodput, 1.0);
  // A [0, 1), B [0.25, 1.5), C [1, 1.25): A ends as C starts, so at most 2 overlap.
  EXPECT_EQ(m.max_concurrent_requests, 2);
  // Events per whole second: second 0 has A's 0.5, 0.625, 0.75 and B's 0.5, 0.75 → 5;
  // second 1 has 3.
  EXPECT_DOUBLE_EQ(m.max_output_tokens_per_s, 5);
}

// vLLM buckets the peak-throughput histogram from the earliest successful start, not from the
// benchmark's clock origin: with paced arrivals the first request leaves late.
TEST(BenchMetrics, PeakTokensPerSecondCountsFromTheFirstStart) {
  // Seven events within 0.9 s of the request's start at 0.5 s: one bucket of 7 (seconds since
  // the benchmark start would split them 3 + 4). A failed request's earlier start is ignored.
  std::vector<RequestOutput> outs = {make(0.5, {0.6, 0.7, 0.8, 1.1, 1.2, 1.3, 1.4}, 7, 1)};
  RequestOutput failed;
  failed.start_time = 0.1;
  failed.error = "HTTP 500";
  outs.push_back(failed);
  EXPECT_DOUBLE_EQ(max_output_tokens_per_s(outs), 7);
  EXPECT_DOUBLE_EQ(calculate_metrics(outs, 2.0, {}).max_output_tokens_per_s, 7);
}

TEST(BenchMetrics, MissingUsageFallsBackAndIsCounted) {
  std::vector<RequestOutput> outs = {make(0, {0.1, 0.2, 0.3}, 0, 3), make(0, {0.1, 0.3}, 0, 3)};
  BenchmarkMetrics m = calculate_metrics(outs, 1.0, {}, {3, 0});
  EXPECT_EQ(m.requests_without_usage, 2);
  EXPECT_EQ(m.output_lens, (std::vector<int>{3, 1}));  // tokenizer count, else 1 (vLLM)
  EXPECT_NEAR(m.tpot_ms.mean, 100, 1e-9);              // only the first has > 1 token
  EXPECT_THROW(calculate_metrics(outs, 0.0, {}), Error);
}

// No successful request: zeros everywhere (vLLM's np.mean(x or 0)), no NaN, a valid JSON.
TEST(BenchMetrics, NoSuccessfulRequestGivesZeros) {
  std::vector<RequestOutput> outs(2);
  outs[0].error = "HTTP 503";
  outs[0].prompt_len = 5;
  outs[1].error = "Never received a valid chunk to calculate TTFT.";
  MetricOptions opts;
  opts.goodput_slo_ms = {{"e2el", 1000}};
  BenchmarkMetrics m = calculate_metrics(outs, 0.5, opts);
  EXPECT_EQ(m.completed, 0);
  EXPECT_EQ(m.failed, 2);
  EXPECT_EQ(m.total_input, 0);
  EXPECT_EQ(m.output_lens, (std::vector<int>{0, 0}));
  for (const Summary* s : {&m.ttft_ms, &m.tpot_ms, &m.itl_ms, &m.e2el_ms, &m.tpot_incl_first_ms}) {
    EXPECT_EQ(s->mean, 0);
    EXPECT_EQ(s->std, 0);
    EXPECT_EQ(s->at(99), 0);
  }
  EXPECT_EQ(m.request_goodput, 0);
  EXPECT_EQ(m.max_output_tokens_per_s, 0);
  EXPECT_EQ(m.max_concurrent_requests, 0);
  auto j = result_json(m, outs, OnlineRunInfo{}, opts, SystemInfo{});
  for (auto& [k, v] : j.items()) {
    if (v.is_number_float()) {
      EXPECT_TRUE(std::isfinite(v.get<double>())) << k;
    }
  }
  EXPECT_EQ(j["completed"], 0);
  EXPECT_EQ(j["request_goodput"], 0.0);
  EXPECT_NE(format_table(m, OnlineRunInfo{}, opts).find("Failed requests:"), std::string::npos);
}

TEST(BenchSse, SplitsEventsAcrossReadsAndSkipsComments) {
  SseSplitter sp;
  std::vector<std::string> got;
  auto cb = [&](std::string_view d) { got.emplace_back(d); };
  std::string wire = ": ping\n\ndata: {\"a\":1}\n\ndata:{\"b\":2}\r\n\r\ndata: [DONE]\n\n";
  for (size_t i = 0; i < wire.size(); i += 3) sp.feed(std::string_view(wire).substr(i, 3), cb);
  EXPECT_EQ(got, (std::vector<std::string>{"{\"a\":1}", "{\"b\":2}", "[DONE]"}));
  EXPECT_FALSE(sp.has_partial());
}

TEST(BenchSse, StreamParserAppliesVllmRules) {
  StreamParser p(/*chat=*/true, 10.0);
  // Role-only first chunk with empty content counts as the first token (vLLM's rule).
  p.feed(
      "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
      10.25);
  p.feed(
      "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: "
      "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"length\"}]}"
      "\n\n",
      10.5);
  // The usage chunk and [DONE] don't extend E2EL.
  p.feed(
      "data: "
      "{\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}"
      "\n\ndata: [DONE]\n\n",
      11.0);
  RequestOutput o;
  o.prompt_len = 4;
  p.finish(o);
  EXPECT_TRUE(o.success) << o.error;
  EXPECT_TRUE(p.saw_done());
  EXPECT_EQ(o.generated_text, "Hello");
  EXPECT_DOUBLE_EQ(o.ttft, 0.25);
  EXPECT_DOUBLE_EQ(o.latency, 0.5);
  EXPECT_EQ(o.itl, (std::vector<double>{0.25, 0.0}));
  EXPECT_EQ(o.output_tokens, 3);
  EXPECT_EQ(o.prompt_len, 9);  // the server's count replaces the dataset's
}

TEST(BenchSse, ErrorsAndEmptyStreamsFail) {
  StreamParser legacy(false, 0);
  legacy.feed(
      "data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: "
      "{\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n",
      1);
  RequestOutput o;
  legacy.finish(o);
  EXPECT_FALSE(o.success);
  EXPECT_EQ(o.error, "boom");
  StreamParser none(false, 0);
  none.feed("data: [DONE]\n\n", 1);
  RequestOutput o2;
  none.finish(o2);
  EXPECT_FALSE(o2.success);
  EXPECT_NE(o2.error.find("Never received"), std::string::npos);
}

TEST(BenchReport, JsonHasVllmKeysAndProvenance) {
  std::vector<RequestOutput> outs = {make(0.0, {0.5, 0.6}, 2, 10)};
  MetricOptions opts;
  BenchmarkMetrics m = calculate_metrics(outs, 1.0, opts);
  OnlineRunInfo info;
  info.request_rate = std::numeric_limits<double>::infinity();
  SystemInfo sys;
  sys.git_commit = "abc";
  auto j = result_json(m, outs, info, opts, sys);
  for (auto& k : required_result_keys(opts)) EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["request_rate"], "inf");
  EXPECT_TRUE(j["max_concurrency"].is_null());
  EXPECT_DOUBLE_EQ(j["p99_ttft_ms"].get<double>(), 500);
  EXPECT_DOUBLE_EQ(j["mean_tpot_ms"].get<double>(), 100);
  EXPECT_EQ(j["git_commit"], "abc");
  std::string table = format_table(m, info, opts);
  EXPECT_NE(table.find("Mean TTFT (ms):"), std::string::npos);
  EXPECT_NE(table.find("P90 TPOT (ms):"), std::string::npos);
  EXPECT_EQ(table.find("goodput"), std::string::npos);  // no --goodput, no row (vLLM)
}

// With --goodput the table has vLLM's goodput row, not only the JSON.
TEST(BenchReport, TableShowsGoodputWhenAsked) {
  std::vector<RequestOutput> outs = {make(0.0, {0.5, 0.6}, 2, 10), make(0.0, {0.1, 0.2}, 2, 10)};
  MetricOptions opts;
  opts.goodput_slo_ms = {{"ttft", 200}};
  BenchmarkMetrics m = calculate_metrics(outs, 2.0, opts);
  EXPECT_DOUBLE_EQ(m.request_goodput, 0.5);
  std::string table = format_table(m, OnlineRunInfo{}, opts);
  EXPECT_NE(table.find("Request goodput (req/s):                 0.50"), std::string::npos)
      << table;
}

}  // namespace
}  // namespace kimi::bench
