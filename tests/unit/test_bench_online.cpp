// kimi-bench's online mode against a fake OpenAI SSE server run in-process (cpp-httplib on a
// free loopback port): the server emits a known timeline (first event after kFirstMs, then one
// event every kGapMs), so the measured TTFT / TPOT / ITL, the concurrency cap, failures and the
// JSON can be checked against what it was told to do.
#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <tuple>

#include "bench/metrics.h"
#include "bench/online.h"
#include "bench/report.h"
#include "core/check.h"
#include "tokenizer/tokenizer.h"

namespace kimi::bench {
namespace {

constexpr int kFirstMs = 40, kGapMs = 10;

class FakeServer {
 public:
  // tokens_per_event: how many tokens each SSE event carries (ITL ≠ TPOT when > 1).
  explicit FakeServer(int tokens_per_event = 1) : per_event_(tokens_per_event) {
    svr_.new_task_queue = [] { return new httplib::ThreadPool(32); };
    svr_.set_tcp_nodelay(true);
    auto handler = [this](bool chat) {
      return [this, chat](const httplib::Request& req, httplib::Response& res) {
        serve(req, res, chat);
      };
    };
    svr_.Post("/v1/completions", handler(false));
    svr_.Post("/v1/chat/completions", handler(true));
    svr_.Get("/v1/models", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"object":"list","data":[{"id":"fake-model","object":"model"}]})",
                      "application/json");
    });
    port_ = svr_.bind_to_any_port("127.0.0.1");
    EXPECT_GT(port_, 0);
    thread_ = std::thread([this] { svr_.listen_after_bind(); });
  }
  ~FakeServer() {
    svr_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  std::atomic<int> requests{0}, max_active{0}, ignore_eos_seen{0}, usage_asked{0};
  std::atomic<int> fail_every{0};       // every n-th request answers 500
  std::atomic<bool> omit_usage{false};  // never send the usage chunk
  std::atomic<bool> omit_done{false};   // end the stream without data: [DONE]
  std::atomic<int> error_after{0};      // > 0: an {"error": ...} event after this many tokens
  std::atomic<int> stall_ms{0};         // > 0: after the tokens, hold the stream open this long
  std::string authorization() {
    std::lock_guard lk(mu_);
    return auth_;
  }

 private:
  void serve(const httplib::Request& req, httplib::Response& res, bool chat) {
    int n = ++requests;
    {
      std::lock_guard lk(mu_);
      auth_ = req.get_header_value("Authorization");
    }
    auto body = nlohmann::json::parse(req.body);
    if (fail_every > 0 && n % fail_every == 0) {
      res.status = 500;
      res.set_content(
          R"({"error":{"message":"injected failure","type":"server_error","param":null,"code":500}})",
          "application/json");
      return;
    }
    int max_tokens =
        chat ? body.at("max_completion_tokens").get<int>() : body.at("max_tokens").get<int>();
    bool usage =
        body.contains("stream_options") && body["stream_options"].value("include_usage", false);
    usage_asked += usage;
    usage = usage && !omit_usage;
    ignore_eos_seen += body.value("ignore_eos", false);
    int prompt_tokens = 0;
    {
      std::string p = chat ? body["messages"][0]["content"].get<std::string>()
                           : body["prompt"].get<std::string>();
      std::istringstream is(p);
      std::string w;
      while (is >> w) ++prompt_tokens;
    }
    res.set_chunked_content_provider("text/event-stream", [=, this](size_t,
                                                                    httplib::DataSink& sink) {
      int now = ++active_;
      int prev = max_active.load();
      while (now > prev && !max_active.compare_exchange_weak(prev, now)) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(kFirstMs));
      for (int sent = 0; sent < max_tokens;) {
        if (sent > 0) std::this_thread::sleep_for(std::chrono::milliseconds(kGapMs));
        int k = std::min(per_event_, max_tokens - sent);
        std::string text;
        for (int i = 0; i < k; ++i) text += " tok";
        sent += k;
        nlohmann::json c0 = chat ? nlohmann::json{{"index", 0}, {"delta", {{"content", text}}}}
                                 : nlohmann::json{{"index", 0}, {"text", text}};
        if (sent == max_tokens) c0["finish_reason"] = "length";
        std::string ev = "data: " + nlohmann::json{{"id", "x"}, {"choices", {c0}}}.dump() + "\n\n";
        if (!sink.write(ev.data(), ev.size())) break;
        if (error_after > 0 && sent >= error_after) {
          std::string err =
              "data: {\"error\":{\"message\":\"engine died\",\"type\":\"server_error\"}}\n\n";
          sink.write(err.data(), err.size());
          break;
        }
      }
      if (stall_ms > 0) {  // a server that neither finishes nor closes the stream
        std::this_thread::sleep_for(std::chrono::milliseconds(stall_ms.load()));
        --active_;
        return false;
      }
      if (usage) {
        std::string u = "data: " +
                        nlohmann::json{{"id", "x"},
                                       {"choices", nlohmann::json::array()},
                                       {"usage",
                                        {{"prompt_tokens", prompt_tokens},
                                         {"completion_tokens", max_tokens},
                                         {"total_tokens", prompt_tokens + max_tokens}}}}
                            .dump() +
                        "\n\n";
        sink.write(u.data(), u.size());
      }
      std::string done = "data: [DONE]\n\n";
      if (!omit_done) sink.write(done.data(), done.size());
      --active_;
      sink.done();
      return true;
    });
  }

  int per_event_;
  httplib::Server svr_;
  int port_ = 0;
  std::thread thread_;
  std::atomic<int> active_{0};
  std::mutex mu_;
  std::string auth_;
};

std::vector<SampleRequest> prompts(int n, int out_len) {
  std::vector<SampleRequest> v;
  for (int i = 0; i < n; ++i) {
    SampleRequest r;
    r.prompt = "one two three " + std::to_string(i);
    r.prompt_len = 100;  // the dataset's guess; the server's usage says 4
    r.expected_output_len = out_len;
    v.push_back(r);
  }
  return v;
}

OnlineOptions quiet(int max_concurrency) {
  OnlineOptions o;
  o.max_concurrency = max_concurrency;
  o.progress = false;
  return o;
}

TEST(BenchOnline, MeasuresTheServersTimeline) {
  FakeServer srv;
  Endpoint ep = make_endpoint(srv.url(), "/v1/completions");
  ep.model = first_served_model(ep);
  EXPECT_EQ(ep.model, "fake-model");
  ep.ignore_eos = true;
  OnlineRun run = run_online(ep, prompts(8, 6), quiet(4));
  EXPECT_EQ(srv.requests.load(), 9);  // one warm-up + 8
  EXPECT_EQ(srv.ignore_eos_seen.load(), 9);
  EXPECT_EQ(srv.usage_asked.load(), 9);
  EXPECT_LE(srv.max_active.load(), 4);
  MetricOptions mo;
  BenchmarkMetrics m = calculate_metrics(run.outputs, run.duration, mo);
  EXPECT_EQ(m.completed, 8);
  EXPECT_EQ(m.failed, 0);
  EXPECT_EQ(m.total_output, 48);
  EXPECT_EQ(m.total_input, 32);  // usage.prompt_tokens replaced the dataset's 100
  EXPECT_LE(m.max_concurrent_requests, 4);
  for (auto& o : run.outputs) {
    EXPECT_TRUE(o.success) << o.error;
    EXPECT_EQ(o.output_tokens, 6);
    EXPECT_EQ(o.num_events, 6);
    EXPECT_EQ(o.generated_text, " tok tok tok tok tok tok");
    EXPECT_GE(o.ttft, kFirstMs / 1e3);
    EXPECT_LE(o.ttft, o.latency);
    EXPECT_EQ(o.itl.size(), 5u);
  }
  // Two waves of 4 (concurrency cap): the run takes at least two request lifetimes.
  EXPECT_GE(run.duration, 2 * (kFirstMs + 5 * kGapMs) / 1e3);
  EXPECT_GE(m.tpot_ms.median, kGapMs * 0.9);
  EXPECT_LT(m.tpot_ms.median, kGapMs * 5);
  EXPECT_GE(m.itl_ms.median, kGapMs * 0.9);
  EXPECT_GE(m.ttft_ms.median, kFirstMs);
  EXPECT_GT(m.output_throughput, 0);
}

TEST(BenchOnline, SeveralTokensPerEventRaiseItlNotTpot) {
  FakeServer srv(/*tokens_per_event=*/3);
  Endpoint ep = make_endpoint(srv.url(), "/v1/chat/completions");
  ep.model = "fake-model";
  OnlineRun run = run_online(ep, prompts(4, 9), quiet(0));
  BenchmarkMetrics m = calculate_metrics(run.outputs, run.duration, MetricOptions{});
  ASSERT_EQ(m.completed, 4);
  for (auto& o : run.outputs) {
    EXPECT_EQ(o.num_events, 3);
    EXPECT_EQ(o.output_tokens, 9);
    EXPECT_EQ(o.generated_text.size(), 9 * 4u);
  }
  // ITL is per event (~kGapMs); TPOT spreads the same time over 8 tokens (~kGapMs / 4).
  EXPECT_GE(m.itl_ms.median, kGapMs * 0.9);
  EXPECT_LT(m.tpot_ms.median, m.itl_ms.median / 2);
}

TEST(BenchOnline, FailuresAreCountedAndPoissonPacingHolds) {
  FakeServer srv;
  Endpoint ep = make_endpoint(srv.url(), "/v1/completions");
  ep.model = "fake-model";
  srv.fail_every = 3;  // the warm-up is request 1; requests 3, 6, 9 fail
  OnlineOptions o = quiet(0);
  o.request_rate = 40;
  o.seed = 5;
  OnlineRun run = run_online(ep, prompts(10, 2), o);
  BenchmarkMetrics m = calculate_metrics(run.outputs, run.duration, MetricOptions{});
  EXPECT_EQ(m.completed, 7);
  EXPECT_EQ(m.failed, 3);
  int http500 = 0;
  for (auto& out : run.outputs) http500 += out.error.find("HTTP 500") != std::string::npos;
  EXPECT_EQ(http500, 3);
  // The last arrival is at exactly 10 / 40 s.
  EXPECT_GE(run.duration, 0.25);
  OnlineRunInfo info;
  info.request_rate = 40;
  auto j = result_json(m, run.outputs, info, MetricOptions{}, SystemInfo{});
  EXPECT_EQ(j["failed"], 3);
  EXPECT_EQ(j["errors"].size(), 10u);
}

TEST(BenchOnline, FailedWarmupStopsTheRun) {
  FakeServer srv;
  Endpoint ep = make_endpoint(srv.url(), "/v1/completions");
  ep.model = "fake-model";
  ep.path = "/v2/nothing";
  EXPECT_THROW(run_online(ep, prompts(2, 2), quiet(0)), Error);
  Endpoint dead = make_endpoint("http://127.0.0.1:1", "/v1/completions");
  dead.model = "x";
  dead.timeout_s = 2;
  RequestOutput o = send_request(dead, prompts(1, 1)[0], Clock::now());
  EXPECT_FALSE(o.success);
  EXPECT_NE(o.error.find("connection"), std::string::npos) << o.error;
}

// vLLM's client-side queueing under --max-concurrency: the wait for a slot is reported apart
// (queue_times, *_client_queue_time_ms) and kept out of TTFT and E2EL.
TEST(BenchOnline, ClientQueueTimeIsReportedApart) {
  FakeServer srv;
  Endpoint ep = make_endpoint(srv.url(), "/v1/completions");
  ep.model = "fake-model";
  OnlineOptions o = quiet(1);
  o.num_warmups = 0;
  OnlineRun run = run_online(ep, prompts(3, 2), o);
  ASSERT_EQ(run.outputs.size(), 3u);
  // One slot, three arrivals at t = 0: the second waits one request's life, the third two.
  const double life = (kFirstMs + kGapMs) / 1e3;
  EXPECT_LT(run.outputs[0].queue_time, life);
  EXPECT_GE(run.outputs[1].queue_time, 0.9 * life);
  EXPECT_GE(run.outputs[2].queue_time, 1.8 * life);
  EXPECT_LT(run.outputs[2].latency, run.outputs[2].queue_time);  // E2EL starts at dispatch
  MetricOptions mo;
  BenchmarkMetrics m = calculate_metrics(run.outputs, run.duration, mo);
  OnlineRunInfo info;
  info.max_concurrency = 1;
  info.client_queue = true;
  info.request_rate = std::numeric_limits<double>::infinity();
  auto j = result_json(m, run.outputs, info, mo, SystemInfo{});
  ASSERT_EQ(j["queue_times"].size(), 3u);
  ASSERT_EQ(j["start_times"].size(), 3u);
  double sum = 0;
  for (double q : j["queue_times"]) sum += q;
  EXPECT_NEAR(j["mean_client_queue_time_ms"].get<double>(), sum / 3 * 1e3, 1e-9);
  EXPECT_TRUE(j.contains("p99_client_queue_time_ms"));
  EXPECT_FALSE(j.contains("mean_e2el_including_client_queue_ms"));  // only with a finite rate
  EXPECT_NE(format_table(m, info, mo).find("Mean Client Queue Time (ms):"), std::string::npos);
  info.request_rate = 10;
  j = result_json(m, run.outputs, info, mo, SystemInfo{});
  EXPECT_NEAR(j["mean_e2el_including_client_queue_ms"].get<double>(),
              m.e2el_ms.mean + m.client_queue_ms.mean, 1e-9);
}

// Stream endings a client has to survive: no [DONE] (fine, as for vLLM), an error event in the
// middle of a stream (a failure with the server's message), and a stream that stalls without
// ending (a failure after --timeout, not a hang).
TEST(BenchOnline, StreamEndingsAreAnsweredWithoutHanging) {
  FakeServer srv;
  Endpoint ep = make_endpoint(srv.url(), "/v1/chat/completions");
  ep.model = "fake-model";
  const SampleRequest req = prompts(1, 4)[0];

  srv.omit_done = true;
  RequestOutput no_done = send_request(ep, req, Clock::now());
  EXPECT_TRUE(no_done.success) << no_done.error;
  EXPECT_EQ(no_done.num_events, 4);
  EXPECT_EQ(no_done.output_tokens, 4);
  srv.omit_done = false;

  srv.error_after = 2;
  RequestOutput mid_error = send_request(ep, req, Clock::now());
  EXPECT_FALSE(mid_error.success);
  EXPECT_EQ(mid_error.error, "engine died");
  EXPECT_EQ(mid_error.num_events, 2);
  srv.error_after = 0;

  srv.stall_ms = 1500;
  ep.timeout_s = 0.3;
  const auto t0 = Clock::now();
  RequestOutput stalled = send_request(ep, req, t0);
  const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_FALSE(stalled.success);
  EXPECT_NE(stalled.error.find("after 4 stream events"), std::string::npos) << stalled.error;
  EXPECT_LT(waited, 1.2);  // the read timeout ended it, not the server
  BenchmarkMetrics m = calculate_metrics({no_done, mid_error, stalled}, 1.0, MetricOptions{});
  EXPECT_EQ(m.completed, 1);
  EXPECT_EQ(m.failed, 2);
  EXPECT_EQ(m.total_output, 4);
}

// The kimi-bench binary end to end: CLI, a concurrency sweep, the JSON file and the SVG.
TEST(BenchOnline, ToolWritesSweepJsonAndPlot) {
  FakeServer srv;
  const std::string bin = std::string(KIMI_BINARY_DIR) + "/kimi-bench";
  ASSERT_TRUE(std::filesystem::exists(bin)) << bin;
  auto dir =
      std::filesystem::temp_directory_path() / ("kimi_bench_cli_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string json = (dir / "r.json").string(), svg = (dir / "p.svg").string(),
              log = (dir / "log").string();
  std::string cmd = bin + " online --base-url " + srv.url() +
                    " --endpoint /v1/chat/completions --num-prompts 6 --max-concurrency 1,3"
                    " --input-len 8 --output-len 5 --ignore-eos --seed 3 --disable-progress"
                    " --result-file " +
                    json + " --plot " + svg + " > " + log + " 2>&1";
  int rc = std::system(cmd.c_str());
  std::ifstream lf(log);
  std::string out((std::istreambuf_iterator<char>(lf)), {});
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("Serving Benchmark Result"), std::string::npos);
  EXPECT_EQ(srv.requests.load(), 2 * (1 + 6));  // per sweep point: a warm-up and 6 requests
  auto j = nlohmann::json::parse(std::ifstream(json));
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 2u);
  MetricOptions mo;
  for (size_t i = 0; i < 2; ++i) {
    for (auto& k : required_result_keys(mo)) EXPECT_TRUE(j[i].contains(k)) << k;
    EXPECT_EQ(j[i]["max_concurrency"], i == 0 ? 1 : 3);
    EXPECT_EQ(j[i]["completed"], 6);
    EXPECT_EQ(j[i]["failed"], 0);
    EXPECT_EQ(j[i]["model_id"], "fake-model");  // discovered through /v1/models
    EXPECT_EQ(j[i]["backend"], "openai-chat");
    EXPECT_EQ(j[i]["output_lens"], nlohmann::json(std::vector<int>(6, 5)));
    EXPECT_LE(j[i]["max_concurrent_requests"].get<int>(), i == 0 ? 1 : 3);
    EXPECT_LE(j[i]["mean_ttft_ms"].get<double>(), j[i]["mean_e2el_ms"].get<double>());
  }
  // Serial requests take longer overall than three at a time.
  EXPECT_GT(j[0]["duration"].get<double>(), j[1]["duration"].get<double>());
  std::ifstream sf(svg);
  std::string plot((std::istreambuf_iterator<char>(sf)), {});
  EXPECT_EQ(plot.rfind("<svg", 0), 0u);
  EXPECT_NE(plot.find("vs max concurrency"), std::string::npos);
  EXPECT_NE(plot.find("</svg>"), std::string::npos);
  std::filesystem::remove_all(dir);
}

// vLLM's option ranges through the CLI: percentiles 0 and 100 (numpy's min and max), constant
// arrivals (--burstiness inf), goodput; a malformed --goodput stops before any request.
TEST(BenchOnline, ToolTakesVllmOptionRanges) {
  FakeServer srv;
  const std::string bin = std::string(KIMI_BINARY_DIR) + "/kimi-bench";
  auto dir =
      std::filesystem::temp_directory_path() / ("kimi_bench_ranges_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string json = (dir / "r.json").string(), log = (dir / "log").string();
  auto run = [&](const std::string& args) {
    std::string cmd = bin + " online --base-url " + srv.url() +
                      " --model fake-model --num-prompts 3 --input-len 4 --output-len 3"
                      " --num-warmups 0 --disable-progress " +
                      args + " > " + log + " 2>&1";
    int rc = std::system(cmd.c_str());
    std::ifstream lf(log);
    return std::make_pair(rc, std::string((std::istreambuf_iterator<char>(lf)), {}));
  };
  auto [rc, out] =
      run("--metric-percentiles 0,100 --request-rate 50 --burstiness inf"
          " --goodput ttft:60000 --result-file " +
          json);
  ASSERT_EQ(rc, 0) << out;
  auto j = nlohmann::json::parse(std::ifstream(json));
  std::vector<double> itls;
  for (auto& per_request : j["itls"])
    for (double gap : per_request) itls.push_back(gap * 1e3);
  ASSERT_EQ(itls.size(), 6u);
  EXPECT_DOUBLE_EQ(j["p0_itl_ms"].get<double>(), *std::min_element(itls.begin(), itls.end()));
  EXPECT_DOUBLE_EQ(j["p100_itl_ms"].get<double>(), *std::max_element(itls.begin(), itls.end()));
  EXPECT_GE(j["duration"].get<double>(), 3 / 50.0);  // the last of 3 arrivals at 3 / rate
  EXPECT_DOUBLE_EQ(j["request_goodput"].get<double>(), 3 / j["duration"].get<double>());
  EXPECT_EQ(srv.requests.load(), 3);
  std::tie(rc, out) = run("--goodput ttft:fast");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("needs a non-negative number"), std::string::npos) << out;
  EXPECT_EQ(srv.requests.load(), 3);  // nothing sent
  std::filesystem::remove_all(dir);
}

// ShareGPT through the CLI, the API key, and a server that ignores include_usage: output
// lengths then come from counting the generated text with --tokenizer.
TEST(BenchOnline, ToolShareGptApiKeyAndMissingUsage) {
  const std::string model = std::string(KIMI_BINARY_DIR) + "/default-model";
  if (!std::filesystem::exists(model + "/tiktoken.model"))
    GTEST_SKIP() << "no tokenizer in " << model;
  FakeServer srv;
  srv.omit_usage = true;
  auto dir = std::filesystem::temp_directory_path() /
             ("kimi_bench_sharegpt_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  nlohmann::json convs = nlohmann::json::array();
  for (int i = 0; i < 5; ++i)
    convs.push_back(
        {{"conversations",
          {{{"from", "human"}, {"value", "tell me a story about the number " + std::to_string(i)}},
           {{"from", "gpt"}, {"value", "once upon a time there was a number"}}}}});
  std::string data = (dir / "sharegpt.json").string(), json = (dir / "r.json").string(),
              log = (dir / "log").string();
  std::ofstream(data) << convs.dump();
  const std::string bin = std::string(KIMI_BINARY_DIR) + "/kimi-bench";
  std::string cmd =
      bin + " online --base-url " + srv.url() + " --model fake-model --dataset sharegpt " + data +
      " --num-prompts 4 --sharegpt-output-len 7 --api-key s3cret --tokenizer " + model +
      " --num-warmups 0 --disable-progress --result-file " + json + " > " + log + " 2>&1";
  int rc = std::system(cmd.c_str());
  std::ifstream lf(log);
  std::string out((std::istreambuf_iterator<char>(lf)), {});
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("had no usage.completion_tokens"), std::string::npos) << out;
  EXPECT_EQ(srv.authorization(), "Bearer s3cret");
  EXPECT_EQ(srv.requests.load(), 4);
  auto j = nlohmann::json::parse(std::ifstream(json));
  EXPECT_EQ(j["completed"], 4);
  EXPECT_EQ(j["requests_without_usage"], 4);
  EXPECT_EQ(j["dataset_name"], "sharegpt");
  Tokenizer tok = Tokenizer::load(model);
  int expect = int(tok.encode(" tok tok tok tok tok tok tok", false).size());
  EXPECT_GT(expect, 1);
  EXPECT_EQ(j["output_lens"], nlohmann::json(std::vector<int>(4, expect)));
  // Without usage the prompt lengths are the tokenizer's counts of the ShareGPT prompts.
  for (int len : j["input_lens"].get<std::vector<int>>()) EXPECT_GT(len, 4);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kimi::bench
