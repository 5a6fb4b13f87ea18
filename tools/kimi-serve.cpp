// kimi-serve: the OpenAI-compatible HTTP server (serving.md). Loads the model into an Engine,
// serves /v1/chat/completions, /v1/completions, /v1/models and vLLM's extras, and stops
// gracefully on SIGTERM / SIGINT (exit 0).
#include <pthread.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <sstream>
#include <thread>

#include "core/check.h"
#include "core/log.h"
#include "kimi/engine.h"
#include "model/model.h"
#include "server/server.h"

int main(int argc, char** argv) {
  CLI::App app{"Kimi Linear OpenAI-compatible server"};
  std::string model_dir, backend = "auto", log_level = "info", api_keys;
  kimi::server::ServerOptions so;
  kimi::EngineOptions eo;
  double grace_s = 30;
  size_t max_body_mb = 64;
  app.add_option("--model", model_dir, "model directory (default: the embedded tiny model)");
  app.add_option("--host", so.host, "address to bind")->capture_default_str();
  app.add_option("--port", so.port, "port (0: any free port)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  app.add_option("--api-key", api_keys,
                 "require 'Authorization: Bearer KEY' on /v1/* (comma-separated keys; "
                 "default: $KIMI_API_KEY)")
      ->envname("KIMI_API_KEY");
  app.add_option("--served-model-name", so.served_model_name,
                 "model id in the API (default: --model as given)");
  app.add_option("--max-model-len", eo.max_model_len,
                 "context length (default: the model's, capped by memory)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
  app.add_option("--max-num-seqs", eo.max_num_seqs, "sequences running at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--max-num-batched-tokens", eo.max_num_batched_tokens, "tokens per engine step")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 24));
  app.add_option("--tensor-parallel-size", eo.tensor_parallel_size, "cuda: GPUs to split the model over (1, 2, 4, 8)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_flag("--enable-expert-parallel", eo.enable_expert_parallel,
               "cuda, with --tensor-parallel-size > 1: split the routed experts by expert instead of "
               "by their intermediate dimension");
  app.add_option("--precision", eo.precision,
                 "cuda activations: bf16 (fast) or high (hi/lo split GEMM inputs, fp32 KDA; "
                 "docs/precision.md)")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "high"}));
  app.add_option("--kv-cache-dtype", eo.kv_cache_dtype,
                 "MLA latent cache: auto (= bf16), bf16 or fp8 (e4m3 with a scale per 128 values: "
                 "0.57x the bytes, so 1.76x the tokens fit; docs/precision.md)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "bf16", "fp8"}));
  // vLLM's pair of flags; on by default as there.
  app.add_flag("--enable-prefix-caching,!--no-enable-prefix-caching", eo.enable_prefix_caching,
               "start a prompt that extends an earlier one (multi-turn chat) from that prompt's "
               "cached state and blocks");
  app.add_option("--prefix-cache-slots", eo.prefix_cache_slots,
                 "prompts the prefix cache keeps (each holds a copy of the KDA state; 0: --max-num-seqs)")
      ->capture_default_str()
      ->check(CLI::Range(0, 4096));
  app.add_option("--scheduling-policy", eo.scheduling_policy,
                 "waiting queue order: fcfs (arrival) or priority (the requests' 'priority', lower "
                 "first, then arrival; under memory pressure the last in that order is preempted)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fcfs", "priority"}));
  app.add_option("--gpu-memory-utilization", eo.memory_fraction,
                 "fraction of free GPU memory for the caches")
      ->capture_default_str()
      ->check(CLI::Range(0.01, 1.0));
  app.add_option("--backend", backend, "cpu, cuda or auto")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  app.add_option("--max-queue", so.max_queue,
                 "queued requests beyond --max-num-seqs before 429 (-1: unbounded)")
      ->capture_default_str();
  app.add_option("--http-threads", so.http_threads, "HTTP worker threads (0: max-num-seqs + 32)");
  app.add_option("--default-max-tokens", so.default_max_tokens,
                 "max_tokens for chat requests that give none (0: up to the context length)");
  app.add_option("--keep-alive", so.keep_alive_s, "idle keep-alive timeout, seconds")
      ->capture_default_str();
  app.add_option("--write-timeout", so.write_timeout_s,
                 "drop a client that reads nothing for this long, seconds")
      ->capture_default_str();
  app.add_option("--max-body-mb", max_body_mb, "request body limit, MiB (413 beyond)")
      ->capture_default_str();
  app.add_option("--shutdown-grace", grace_s, "seconds in-flight requests may run after SIGTERM")
      ->capture_default_str();
  app.add_option("--log-level", log_level)->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  // Signals go to one waiting thread: block them before the engine and HTTP threads start.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // cpp-httplib writes with send() without MSG_NOSIGNAL

  try {
    kimi::set_log_level(log_level);
    const bool embedded = model_dir.empty();
    eo.model_dir = embedded ? KIMI_DEFAULT_MODEL_DIR : model_dir;
    eo.backend = backend == "auto" ? kimi::default_backend() : backend;
    if (embedded)
      spdlog::warn("no --model given: serving the embedded default tiny model ({}), random weights",
                   eo.model_dir);
    so.max_num_seqs = eo.max_num_seqs;
    so.model_root = eo.model_dir;
    if (so.served_model_name.empty()) so.served_model_name = embedded ? "kimi-tiny" : model_dir;
    so.max_body_bytes = max_body_mb << 20;
    std::stringstream ks(api_keys);
    for (std::string k; std::getline(ks, k, ',');)
      if (!k.empty()) so.api_keys.push_back(k);

    auto engine = kimi::Engine::create(eo);
    kimi::server::Server server(*engine, so);
    server.bind();
    std::fprintf(stderr, "kimi-serve: serving '%s' (max_model_len %lld) on http://%s:%d\n",
                 so.served_model_name.c_str(), static_cast<long long>(engine->max_model_len()),
                 so.host.c_str(), server.bound_port());
    std::fflush(stderr);

    std::atomic<bool> stopping{false};
    std::thread waiter([&] {
      int sig = 0;
      sigwait(&sigs, &sig);
      if (stopping.exchange(true)) return;  // woken by main after serve() failed
      spdlog::info("signal {}: draining (grace {} s)", sig, grace_s);
      server.shutdown(std::chrono::milliseconds(int64_t(grace_s * 1000)));
    });
    server.serve();
    if (!stopping.exchange(true)) {
      // serve() returned on its own (listener error): wake the waiter and fail.
      pthread_kill(waiter.native_handle(), SIGTERM);
      waiter.join();
      engine->shutdown(std::chrono::milliseconds(0));
      std::fprintf(stderr, "kimi-serve: the listener stopped unexpectedly\n");
      return 1;
    }
    waiter.join();
    engine->shutdown(std::chrono::milliseconds(0));
    spdlog::info("stopped");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kimi-serve: %s\n", e.what());
    return 1;
  }
  return 0;
}
