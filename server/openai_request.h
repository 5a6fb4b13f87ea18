// OpenAI request bodies (/v1/chat/completions, /v1/completions) -> validated values and a
// kimi::Request (serving.md §1.2-1.4, §1.9). Every field of §1 is either honoured or rejected with
// a 400 naming it; unknown fields are ignored; JSON null means absent. No engine or tokenizer
// here: the prompt ids are filled in later (prompt.h), so this is unit-testable on its own.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "kimi/engine.h"

namespace kimi::server {

struct ToolCall {
  std::string id;  // "functions.NAME:IDX" (kept verbatim)
  std::string name;
  std::string arguments;  // JSON text, not re-serialised
};

struct ChatMessage {
  std::string role;                    // system, user, assistant, tool ("developer" -> system)
  std::optional<std::string> content;  // text parts concatenated; nullopt for a null content
  std::string name;
  std::vector<ToolCall> tool_calls;  // assistant only
  std::string tool_call_id;          // tool only
};

struct ToolSpec {
  std::string name;
  nlohmann::json declaration;  // the request's {"type":"function","function":{...}} as given
};

enum class ToolChoice { kNone, kAuto, kRequired, kNamed };

struct ParseLimits {
  int vocab_size = 0;  // logit_bias / stop_token_ids / token prompts must lie below it
  int max_n = 128;
};

struct GenerationRequest {
  bool chat = true;
  std::string model;  // as sent; empty when absent
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage (streams only)
  // stream_options.continuous_usage_stats with include_usage (vLLM): every chunk carries the
  // usage so far (its choice's completion tokens) instead of null.
  bool continuous_usage = false;
  std::string request_id;      // vLLM's request_id extra; empty when absent

  // Chat. messages/tools are validated into the structs; the template renders the JSON as sent
  // (ordered_json keeps the client's key order in tool declarations).
  std::vector<ChatMessage> messages;
  nlohmann::ordered_json messages_json, tools_json;
  std::vector<ToolSpec> tools;
  ToolChoice tool_choice = ToolChoice::kNone;
  std::string tool_choice_name;  // kNamed
  bool parallel_tool_calls = true;  // false: tool_choice required makes one call
  bool add_generation_prompt = true;
  bool continue_final_message = false;

  // Completions: exactly one of these is non-empty; one engine request per prompt.
  std::vector<std::string> prompt_texts;
  std::vector<std::vector<int>> prompt_ids;
  bool echo = false;

  // Both. max_tokens: max_completion_tokens, else max_tokens; nullopt = the server default.
  std::optional<int64_t> max_tokens;
  bool logprobs = false;
  int top_logprobs = 0;  // chat top_logprobs / completions logprobs=k
  bool return_tokens_as_token_ids = false;
  // vLLM's prompt_logprobs (not with stream): the prompt's token logprobs, in vLLM's shape.
  bool prompt_logprobs = false;
  // Completions echo with logprobs: the prompt's tokens lead the choice's logprobs.
  bool echo_logprobs() const { return !chat && echo && logprobs; }
  Request engine;  // sampling, stop, n, logprobs, ...; prompt_ids and max_tokens unset
  // The field that asked for the output format; empty for text. With a schema, the field it was
  // compiled from ("response_format.json_schema.schema", "guided_json",
  // "structured_outputs.json"); JSON mode: "response_format" or "structured_outputs.json_object".
  std::string format_param;

  int num_prompts() const {
    return chat ? 1 : int(prompt_texts.empty() ? prompt_ids.size() : prompt_texts.size());
  }
  // Whether generated text is scanned for Kimi tool calls.
  bool parse_tool_calls() const {
    return chat && !tools.empty() && tool_choice != ToolChoice::kNone;
  }
  // Tool calls in the history: the chat template numbers calls on from here (functions.NAME:IDX),
  // and so do the ids of forced calls, as vLLM's kimi_k2 ids do.
  int history_tool_calls() const;
};

// Both throw ApiException (400, param = the field) on invalid input.
GenerationRequest parse_chat_request(const nlohmann::json& body, const ParseLimits& limits);
GenerationRequest parse_completion_request(const nlohmann::json& body, const ParseLimits& limits);

// Parses a body; throws ApiException 400 for malformed JSON or a non-object.
nlohmann::json parse_body(const std::string& body);

// parse_chat_request() of the body text, keeping messages/tools and a JSON schema's properties
// in the client's key order.
GenerationRequest parse_chat_body(const std::string& body, const ParseLimits& limits);
// parse_completion_request() of the body text, keeping the JSON schema's key order.
GenerationRequest parse_completion_body(const std::string& body, const ParseLimits& limits);

}  // namespace kimi::server
