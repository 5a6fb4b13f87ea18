// kimi-bench online against a real kimi-serve on the embedded tiny model (issue 6 acceptance):
// kimi-serve listens on a free loopback port (--port 0; the port is read from its start-up line),
// kimi-bench --ignore-eos runs against /v1/completions and /v1/chat/completions; every request
// must succeed, the metrics must be positive and consistent, and the JSON must have the keys.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "bench/metrics.h"
#include "bench/report.h"

extern char** environ;

namespace kimi::bench {
namespace {

const std::string kBin = KIMI_BINARY_DIR;

// kimi-serve as a child process; its stderr is drained by a thread (a full pipe would block it).
class ServeProcess {
 public:
  ServeProcess() {
    int fds[2];
    if (pipe(fds) != 0) return;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDERR_FILENO);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    std::string bin = kBin + "/kimi-serve";
    std::vector<std::string> args = {
        bin,           "--host", "127.0.0.1",      "--port", "0",
        "--log-level", "warn",   "--max-num-seqs", "8",      "--served-model-name",
        "kimi-tiny"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, bin.c_str(), &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    reader_ = std::thread([this, fd = fds[0]] {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof buf)) > 0) {
        std::lock_guard lk(mu_);
        log_.append(buf, size_t(n));
      }
      close(fd);
    });
  }
  ~ServeProcess() {
    stop();
    if (reader_.joinable()) reader_.join();
  }
  // Port from "... on http://127.0.0.1:PORT", or 0 after the timeout / an early exit.
  int wait_port(std::chrono::seconds timeout) {
    static const std::regex re("on http://127\\.0\\.0\\.1:([0-9]+)");
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline && pid_ > 0) {
      {
        std::lock_guard lk(mu_);
        std::smatch m;
        if (std::regex_search(log_, m, re)) return std::stoi(m[1]);
      }
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return 0;
  }
  // SIGTERM, then the exit status (-1 if it had to be killed or was gone).
  int stop() {
    if (pid_ <= 0) return -1;
    kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 200; ++i) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return -1;
  }
  std::string log() {
    std::lock_guard lk(mu_);
    return log_;
  }

 private:
  pid_t pid_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::string log_;
};

struct BenchRun {
  int rc = -1;
  std::string output;
  nlohmann::json result;
};

BenchRun run_bench(const std::string& args, const std::filesystem::path& dir,
                   const std::string& tag) {
  BenchRun r;
  std::string json = (dir / (tag + ".json")).string(), log = (dir / (tag + ".log")).string();
  std::string cmd = kBin + "/kimi-bench online " + args + " --disable-progress --result-file " +
                    json + " > " + log + " 2>&1";
  int st = std::system(cmd.c_str());
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream lf(log);
  r.output.assign(std::istreambuf_iterator<char>(lf), {});
  std::ifstream jf(json);
  if (jf) r.result = nlohmann::json::parse(jf, nullptr, false);
  return r;
}

// max_events: the most SSE choices events a request may produce (kimi-serve skips events whose
// text is held back, e.g. an incomplete UTF-8 character; chat adds a finish chunk).
void check_result(const nlohmann::json& j, int n, int out_len, int max_events) {
  ASSERT_TRUE(j.is_object());
  for (auto& k : required_result_keys(MetricOptions{}))
    EXPECT_TRUE(j.contains(k)) << "missing key " << k;
  EXPECT_EQ(j["completed"], n);
  EXPECT_EQ(j["failed"], 0);
  EXPECT_EQ(j["total_output_tokens"], n * out_len);
  EXPECT_EQ(j["output_lens"], nlohmann::json(std::vector<int>(size_t(n), out_len)));
  for (int len : j["input_lens"].get<std::vector<int>>()) EXPECT_GT(len, 0);
  EXPECT_EQ(j["requests_without_usage"], 0);  // kimi-serve honours include_usage
  for (const char* k :
       {"duration", "request_throughput", "output_throughput", "total_token_throughput",
        "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms",
        "mean_itl_ms", "mean_e2el_ms", "p90_e2el_ms", "max_output_tokens_per_s"})
    EXPECT_GT(j[k].get<double>(), 0) << k;
  EXPECT_LE(j["p99_ttft_ms"].get<double>(), j["p99_e2el_ms"].get<double>() + 1e-9);
  auto ttfts = j["ttfts"].get<std::vector<double>>(),
       lat = j["latencies"].get<std::vector<double>>();
  ASSERT_EQ(ttfts.size(), size_t(n));
  for (int i = 0; i < n; ++i) {
    EXPECT_GT(ttfts[size_t(i)], 0);
    EXPECT_LE(ttfts[size_t(i)], lat[size_t(i)]);
    EXPECT_LE(j["itls"][size_t(i)].size(), size_t(max_events - 1));
    EXPECT_EQ(j["errors"][size_t(i)], "");
  }
  // E2EL = TTFT + (n − 1)·TPOT for each request, so the means agree.
  EXPECT_NEAR(j["mean_e2el_ms"].get<double>(),
              j["mean_ttft_ms"].get<double>() + (out_len - 1) * j["mean_tpot_ms"].get<double>(),
              1e-6);
  EXPECT_EQ(j["model_id"], "kimi-tiny");
  EXPECT_NE(j["git_commit"], "");
}

TEST(BenchServe, OnlineAgainstKimiServeOnTheTinyModel) {
  if (!std::filesystem::exists(kBin + "/kimi-serve")) GTEST_SKIP() << "kimi-serve not built";
  auto dir =
      std::filesystem::temp_directory_path() / ("kimi_bench_serve_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  ServeProcess serve;
  int port = serve.wait_port(std::chrono::seconds(60));
  ASSERT_GT(port, 0) << "kimi-serve did not start:\n" << serve.log();
  std::string base = "--base-url http://127.0.0.1:" + std::to_string(port);

  const int n = 8, out = 6;
  BenchRun legacy =
      run_bench(base +
                    " --endpoint /v1/completions --num-prompts 8 --max-concurrency 4"
                    " --input-len 24 --output-len 6 --ignore-eos --seed 1 --tokenizer " +
                    kBin + "/default-model",
                dir, "completions");
  ASSERT_EQ(legacy.rc, 0) << legacy.output << "\nserver log:\n" << serve.log();
  check_result(legacy.result, n, out, out);
  EXPECT_EQ(legacy.result["backend"], "openai");
  EXPECT_EQ(legacy.result["max_concurrency"], 4);
  EXPECT_LE(legacy.result["max_concurrent_requests"].get<int>(), 4);

  BenchRun chat =
      run_bench(base +
                    " --endpoint /v1/chat/completions --model kimi-tiny --num-prompts 8"
                    " --request-rate 50 --input-len 16 --output-len 6 --ignore-eos --seed 2",
                dir, "chat");
  ASSERT_EQ(chat.rc, 0) << chat.output << "\nserver log:\n" << serve.log();
  check_result(chat.result, n, out, out + 1);
  EXPECT_EQ(chat.result["backend"], "openai-chat");
  EXPECT_EQ(chat.result["request_rate"], 50.0);
  // The arrivals end at 8 / 50 s.
  EXPECT_GE(chat.result["duration"].get<double>(), 8.0 / 50);

  EXPECT_EQ(serve.stop(), 0) << serve.log();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kimi::bench
