// OpenAI response objects (serving.md §1.5-1.6): whole responses, stream chunks, usage and
// logprobs, for chat and legacy completions. Pure functions of their inputs.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "kimi/engine.h"
#include "tool_calls.h"

namespace kimi::server {

using json = nlohmann::json;

// Token text for logprobs: the token's bytes, or "token_id:N" (vLLM's return_tokens_as_token_ids).
class TokenTexts {
 public:
  TokenTexts(const Tokenizer* tok, bool as_ids) : tok_(tok), as_ids_(as_ids || !tok) {}
  std::string text(int id) const;

 private:
  const Tokenizer* tok_;
  bool as_ids_;
};

// One line of SSE: "data: <json>\n\n" (invalid UTF-8 replaced, never thrown).
std::string sse_event(const json& j);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";
std::string dump_json(const json& j);

const char* finish_reason_str(FinishReason r);  // "stop", "length", "tool_calls", "abort", "error"
json usage_json(const Usage& u);

// choices[i].logprobs for chat: {"content":[{token, logprob, bytes, top_logprobs}], "refusal":null}
json chat_logprobs(const std::vector<TokenLogprob>& lps, const TokenTexts& tt);
// choices[i].logprobs for completions: {tokens, token_logprobs, top_logprobs, text_offset}, each
// top_logprobs entry the sampled token's and the alternatives' (OpenAI: "up to logprobs+1");
// `offset` is the text length before these tokens and is advanced.
json completion_logprobs(const std::vector<TokenLogprob>& lps, const TokenTexts& tt,
                         size_t& offset);
void append_completion_logprobs(json& into, const json& more);
// The prompt's part of a completions choice's logprobs with echo: its first token has none (null
// logprob and top_logprobs), lps give tokens 1.. (as the engine's prompt logprobs).
json echo_prompt_logprobs(const std::vector<int>& prompt, const std::vector<TokenLogprob>& lps,
                          const TokenTexts& tt, size_t& offset);
// vLLM's prompt_logprobs: [null, {"<id>": {logprob, rank, decoded_token}, ...}, ...], a dict per
// prompt token from the second: the token itself and the top alternatives.
json vllm_prompt_logprobs(const std::vector<TokenLogprob>& lps, const TokenTexts& tt);

struct ResponseHead {
  std::string id;       // "chatcmpl-..." / "cmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
};

// Everything one choice produced, for non-streamed responses.
struct ChoiceResult {
  std::string text;
  std::vector<TokenLogprob> logprobs;
  // With prompt logprobs (echo with logprobs, or prompt_logprobs): the prompt and the logprobs of
  // its tokens 1.. .
  std::vector<int> prompt;
  std::optional<std::vector<TokenLogprob>> prompt_logprobs;
  FinishReason finish = FinishReason::kNone;
  std::string stop_reason;
  int stop_token = -1;
  std::vector<ToolCall> tool_calls;  // when parsed
  int completed_tool_calls = 0;
  bool parsed_tools = false;
};

// What a response carries besides the text: the generated tokens' logprobs, the prompt's ahead
// of them (completions echo), vLLM's prompt_logprobs (per choice for completions, once at the
// top for chat, whose choices share the prompt).
struct LogprobsOut {
  bool generated = false;
  bool echo_prompt = false;
  bool vllm_prompt = false;
};
json chat_completion_json(const ResponseHead& h, const std::vector<ChoiceResult>& choices,
                          const Usage& usage, const TokenTexts& tt, const LogprobsOut& lo);
json text_completion_json(const ResponseHead& h, const std::vector<ChoiceResult>& choices,
                          const Usage& usage, const TokenTexts& tt, const LogprobsOut& lo);

// The finish_reason OpenAI clients see for a choice.
std::string choice_finish_reason(const ChoiceResult& c);
// vLLM's stop_reason: the stop string, the stop token's id as an integer, or null.
json stop_reason_json(const ChoiceResult& c);

// Stream chunks. usage: nullptr leaves the key out (no include_usage); else its value (null, or
// a usage_json object with continuous usage stats) goes in.
json chat_chunk(const ResponseHead& h, int index, json delta, json logprobs, const char* finish,
                const json* usage);
json completion_chunk(const ResponseHead& h, int index, const std::string& text, json logprobs,
                      const char* finish, const json* usage);
json usage_json(const Usage& u);
json usage_chunk(const ResponseHead& h, bool chat, const Usage& u);
// OpenAI tool_calls delta entries from parser deltas.
json tool_call_deltas(const std::vector<ToolCallDelta>& calls);
json tool_calls_json(const std::vector<ToolCall>& calls);

std::string new_id(const char* prefix);

}  // namespace kimi::server
