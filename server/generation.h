// One OpenAI generation request in flight: its engine requests (one per prompt), and the loop
// that turns their events into a whole response or an SSE stream. The HTTP layer only moves
// bytes; everything about choices, deltas, tool calls and usage happens here.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "api_error.h"
#include "metrics.h"
#include "openai_request.h"
#include "openai_response.h"

namespace kimi::server {

struct PreparedPrompts {
  std::vector<std::vector<int>> ids;    // one engine request each
  std::vector<std::string> echo_texts;  // completions echo: the prompt text per prompt
  std::string forced_prefix;            // tool_choice required/named: the answer's forced start
  int cache_point = 0;                  // chat: Request::cache_point of the one prompt
};

class Generation;

// The generations being served, so that shutdown can cancel what outlives the grace period.
class ActiveGenerations {
 public:
  void add(Generation* g);
  void remove(Generation* g);
  int size() const;
  void cancel_all();  // marks them as cancelled by shutdown

 private:
  mutable std::mutex mu_;
  std::set<Generation*> set_;
};

class Generation {
 public:
  Generation(Engine& engine, ServerMetrics& metrics, ActiveGenerations& active,
             GenerationRequest req, PreparedPrompts prompts, int max_tokens, ResponseHead head);
  ~Generation();
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  // Submits the engine requests. Throws kimi::Error (the engine rejected it: a 400).
  void submit();
  // Whole response, or the error to send instead (cancelled by shutdown: 503, engine error: 500).
  // `client_gone` is polled while waiting; once true the requests are cancelled.
  std::variant<json, ApiError> collect(const std::function<bool()>& client_gone = {});
  // Writes the stream; `write` returns false once the client is gone, which cancels at once.
  void stream(const std::function<bool(const std::string&)>& write);
  // Idempotent; only requests that have not finished are cancelled.
  void cancel(bool by_shutdown);

 private:
  struct Choice;
  bool next_event(GenerationEvent& ev, int& prompt, const std::function<bool()>& client_gone = {});
  void record_finish(const GenerationEvent& ev, int prompt);
  Usage usage() const;

  Engine& engine_;
  ServerMetrics& metrics_;
  ActiveGenerations& active_;
  GenerationRequest req_;
  PreparedPrompts prompts_;
  int max_tokens_;
  ResponseHead head_;
  TokenTexts texts_;
  std::mutex mu_;
  std::vector<std::shared_ptr<RequestHandle>> handles_;
  std::vector<bool> handle_done_;
  std::vector<std::vector<int>> sample_tokens_;  // per prompt, per sample: generated tokens so far
  std::vector<int> samples_finished_;           // per prompt: the request ends at n
  size_t rr_ = 0;                                // round-robin position among handles
  std::atomic<bool> cancelled_{false}, by_shutdown_{false};
};

}  // namespace kimi::server
