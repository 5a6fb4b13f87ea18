// kimi-bench's engine run on the embedded tiny model: every request produces exactly the asked
// number of tokens (ignore_eos), and the per-request timeline is consistent.
#include <gtest/gtest.h>

#include "bench/engine_run.h"

namespace kimi::bench {
namespace {

TEST(BenchEngine, RequestsCompleteWithConsistentTimelines) {
  EngineRunOptions o;
  o.model_dir = std::string(KIMI_BINARY_DIR) + "/default-model";
  o.num_prompts = 6;
  o.input_len = 20;
  o.output_len = 5;
  o.max_num_seqs = 4;  // fewer slots than requests: two must wait
  o.progress = false;
  EngineRun run = run_engine(o);
  ASSERT_EQ(run.outputs.size(), 6u);
  EXPECT_GT(run.duration, 0);
  for (auto& r : run.outputs) {
    EXPECT_TRUE(r.success) << r.error;
    EXPECT_EQ(r.output_tokens, 5);
    EXPECT_EQ(r.prompt_len, 20);
    EXPECT_GT(r.ttft, 0);
    EXPECT_LE(r.ttft, r.latency);
    EXPECT_LE(r.start_time + r.latency, run.duration + 1e-9);
    EXPECT_GE(r.num_events, 1);
    EXPECT_LE(r.num_events, 5);
  }
  BenchmarkMetrics m = calculate_metrics(run.outputs, run.duration, MetricOptions{});
  EXPECT_EQ(m.completed, 6);
  EXPECT_EQ(m.total_output, 30);
  EXPECT_LE(m.max_concurrent_requests, 6);
  EXPECT_GT(m.tpot_ms.mean, 0);
}

}  // namespace
}  // namespace kimi::bench
