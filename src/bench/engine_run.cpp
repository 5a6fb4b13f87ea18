#include "bench/engine_run.h"

#include <algorithm>
#include <chrono>
#include <mutex>
#include <random>
#include <thread>

#include "bench/progress.h"
#include "core/check.h"
#include "kimi/engine.h"

namespace kimi::bench {
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Reads a request's events until it finishes; one event with tokens = one stream event.
RequestOutput collect(RequestHandle& h, double start, Clock::time_point t0, int prompt_len) {
  StreamTimeline tl(start);
  RequestOutput out;
  int tokens = 0;
  FinishReason fin = FinishReason::kNone;
  std::string error;
  while (auto ev = h.next()) {
    if (!ev->token_ids.empty()) {
      tl.on_event(since(t0));
      tokens += int(ev->token_ids.size());
    }
    if (ev->finish != FinishReason::kNone) {
      fin = ev->finish;
      error = ev->error;
    }
  }
  tl.finish(out);
  out.prompt_len = prompt_len;
  out.output_tokens = tokens;
  out.usage_present = true;
  out.success = (fin == FinishReason::kLength || fin == FinishReason::kStop) && tl.any();
  if (!out.success)
    out.error =
        str("finished with '", finish_reason_name(fin), "'", error.empty() ? "" : ": ", error);
  return out;
}

}  // namespace

EngineRun run_engine(const EngineRunOptions& o) {
  if (o.num_prompts < 1 || o.input_len < 1 || o.output_len < 1)
    fail("--engine-requests, --engine-input-len and --engine-output-len must be positive");
  EngineOptions eo;
  eo.model_dir = o.model_dir;
  eo.backend = o.backend;
  eo.kv_cache_dtype = o.kv_cache_dtype;
  eo.max_num_seqs = o.max_num_seqs;
  eo.max_model_len = o.input_len + o.output_len + 1;
  auto engine = Engine::create(eo);
  const int V = engine->config().vocab_size;
  const int base = std::max(1, V - 256);  // ordinary tokens, no specials
  std::mt19937_64 rng(o.seed);
  auto make = [&](int len) {
    Request r;
    for (int i = 0; i < len; ++i) r.prompt_ids.push_back(int(rng() % uint64_t(base)));
    r.sampling.temperature = 0;
    r.seed_given = true;
    r.max_tokens = o.output_len;
    r.ignore_eos = true;
    return r;
  };
  {  // warm-up, not measured
    auto h = engine->submit(make(std::min(o.input_len, 16)));
    while (h->next()) {
    }
  }
  EngineRun run;
  run.outputs.resize(size_t(o.num_prompts));
  std::vector<Request> reqs;
  for (int i = 0; i < o.num_prompts; ++i) reqs.push_back(make(o.input_len));
  Progress progress("engine", o.num_prompts, o.progress);
  std::mutex mu;
  double last = 0;
  std::vector<std::thread> readers;
  const auto t0 = Clock::now();
  for (int i = 0; i < o.num_prompts; ++i) {
    double start = since(t0);
    auto h = engine->submit(std::move(reqs[size_t(i)]));
    readers.emplace_back([&, h, i, start] {
      RequestOutput out = collect(*h, start, t0, o.input_len);
      double end = since(t0);
      bool ok = out.success;
      {
        std::lock_guard lk(mu);
        run.outputs[size_t(i)] = std::move(out);
        last = std::max(last, end);
      }
      progress.tick(ok);
    });
  }
  for (auto& t : readers) t.join();
  progress.finish();
  run.duration = last;
  engine->shutdown(std::chrono::milliseconds(0));
  return run;
}

}  // namespace kimi::bench
