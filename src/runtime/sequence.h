// A running or waiting sequence: one sample of a request, with its tokens, cache holdings
// (KDA slot, MLA blocks), sampling state and streaming text state. Owned by the engine loop.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kimi/engine.h"
#include "runtime/json_matcher.h"
#include "runtime/tool_call_matcher.h"
#include "runtime/sampler.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"

namespace kimi {

struct RequestState {
  Request req;
  std::shared_ptr<RequestHandle> handle;
  ToolCallMarkers tool_markers;  // with Request::tool_calls: the engine tokenizer's
  std::chrono::steady_clock::time_point arrival;
};

struct TextDelta {
  std::string text;
  bool stopped = false;     // a stop string matched: the sequence ends here
  std::string stop_string;
};

struct Sequence {
  Sequence(std::shared_ptr<RequestState> r, int idx, uint64_t ord, std::vector<int> toks);

  std::shared_ptr<RequestState> req;
  int index = 0;        // sample index within the request
  uint64_t order = 0;   // arrival: smaller is older (a preempted sequence keeps its own)
  std::vector<int> tokens;  // prompt, then generated
  int prompt_len = 0;
  int num_computed = 0;     // tokens whose state is cached
  int cache_point = 0;      // > 0: a prefix-cache entry is made when num_computed reaches it
  std::vector<int> blocks;  // MLA cache blocks, in order
  int slot = -1;            // KDA state slot
  int generated = 0;
  bool finished = false;
  bool forked = false;      // the leader of an n > 1 request has started its siblings
  double ttft = 0;
  std::chrono::steady_clock::time_point last_token_at;  // inter-token latency
  bool queue_timed = false;  // the request's queue time is recorded (the leader, once)
  bool scheduled = false;    // scheduled_at is set: first admission (vLLM's first SCHEDULED)
  std::chrono::steady_clock::time_point scheduled_at, first_token_at;
  SamplingParams sampling;  // the request's, with this sample's seed
  TokenHistory history;
  std::optional<JsonMatcher> json;  // JSON mode / structured outputs: the text so far
  std::optional<ToolCallMatcher> tool;  // forced tool calls: the answer so far
  // With Request::prompt_logprobs (the leader only): prompt tokens 1.. so far, sent once whole.
  std::vector<TokenLogprob> prompt_logprobs;
  bool prompt_logprobs_sent = false;
  bool wants_prompt_logprobs() const;  // the leader, its prompt not all computed and sent

  // Text streaming (no-op without a tokenizer).
  void init_decoder(const Tokenizer* tok);
  // Decodes a new token; a stop token (eos or stop_token_ids) contributes no text.
  // match_stops false (before min_tokens): the text passes without stop-string matching.
  TextDelta push_text(int token, bool is_stop_token, bool match_stops = true);
  // The held-back text at the end (nothing after a stop string).
  std::string flush_text(FinishReason reason);

 private:
  std::optional<StreamDecoder> decoder_;
  std::optional<StopMatcher> stops_;
  bool text_stopped_ = false;
};

// Loads DIR's tokenizer when DIR has tiktoken.model; nullptr otherwise.
std::unique_ptr<Tokenizer> load_tokenizer_if_present(const std::string& dir);

}  // namespace kimi
