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

void RequestHandle::add_usage(int prompt, int completion) {
  std::lock_guard lk(mu_);
  usage_.prompt_tokens += prompt;
  usage_.completion_tokens += completion;
}

}  // namespace kimi
