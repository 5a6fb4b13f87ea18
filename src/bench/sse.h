// Server-sent events as OpenAI-compatible servers send them: `data: <json>\n\n` per event,
// `data: [DONE]` at the end, `: comment` lines ignored. The splitter keeps a buffer because
// events straddle network reads; CR bytes are dropped so CRLF framing parses too.
// StreamParser applies vLLM's bench client rules to the events (serving.md §3.4).
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "bench/metrics.h"

namespace kimi::bench {

class SseSplitter {
 public:
  // Calls on_data(payload) for each complete event that has data lines (joined with '\n').
  void feed(std::string_view bytes, const std::function<void(std::string_view)>& on_data);
  bool has_partial() const { return !buf_.empty(); }

 private:
  std::string buf_;
};

// One streamed completion (legacy or chat): timeline, text and usage from the events.
class StreamParser {
 public:
  StreamParser(bool chat, double start) : chat_(chat), timeline_(start) {}
  // Raw response bytes received at time t (seconds on the benchmark clock).
  void feed(std::string_view bytes, double t);
  // Fills out (success, error, timing, text, usage); prompt_len only when usage has it.
  void finish(RequestOutput& out) const;
  bool saw_done() const { return done_; }

 private:
  void on_event(std::string_view data, double t);

  bool chat_;
  SseSplitter split_;
  StreamTimeline timeline_;
  std::string text_, error_;
  int prompt_tokens_ = -1, completion_tokens_ = -1;
  bool done_ = false;
};

}  // namespace kimi::bench
