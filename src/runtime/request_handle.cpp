#include "core/check.h"
#include "kimi/engine.h"

namespace kimi {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kToolCalls: return "tool_calls";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "";
}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds.size() && v > bounds[i]) ++i;
  ++counts[i];
  sum += v;
  ++count;
}

Histogram Histogram::ttft_buckets() {
  return Histogram({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                    5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0});
}

Histogram Histogram::tpot_buckets() {
  return Histogram({0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0});
}

Histogram Histogram::e2e_buckets() {
  return Histogram({0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0});
}

Histogram Histogram::iteration_tokens_buckets() {
  return Histogram({1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384});
}

std::optional<GenerationEvent> RequestHandle::next(std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return !events_.empty() || open_ == 0; });
  if (events_.empty()) return std::nullopt;
  GenerationEvent ev = std::move(events_.front());
  events_.pop_front();
  return ev;
}

bool RequestHandle::done() const {
  std::lock_guard lk(mu_);
  return open_ == 0 && events_.empty();
}

Usage RequestHandle::usage() const {
  std::lock_guard lk(mu_);
  return usage_;
}

void RequestHandle::push(GenerationEvent ev) {
  {
    std::lock_guard lk(mu_);
    KIMI_CHECK(open_ > 0, "event after the request finished");
    if (ev.finish != FinishReason::kNone) --open_;
    events_.push_back(std::move(ev));
  }
  cv_.notify_all();
}

void RequestHandle::add_usage(int prompt, int completion, int cached) {
  std::lock_guard lk(mu_);
  usage_.prompt_tokens += prompt;
  usage_.completion_tokens += completion;
  usage_.cached_tokens += cached;
}

}  // namespace kimi
