// Kimi chat template (K2 family, model.md §7, serving.md §5). The output side (tool-call
// parsing) is in tool_calls.h, included here.
//
// Rendering, with nothing between turns and no BOS:
//   [<|im_system|>tool_declare<|im_middle|>TOOLS_JSON<|im_end|>]          when tools are given
//   [<|im_system|>system<|im_middle|>kDefaultSystemPrompt<|im_end|>]       see below
//   per message: ROLE_TOKEN ROLE_NAME <|im_middle|> BODY <|im_end|>
//   [<|im_assistant|>assistant<|im_middle|>]                              add_generation_prompt
// ROLE_TOKEN: <|im_user|> for user, <|im_assistant|> for assistant, <|im_system|> otherwise.
// ROLE_NAME: the message's `name` when set, else its role ("developer" renders as "system").
// BODY: the content (a string, or the concatenated text parts); for an assistant message with
// tool_calls, the content followed by
//   <|tool_calls_section_begin|>(<|tool_call_begin|>ID<|tool_call_argument_begin|>ARGS
//   <|tool_call_end|>)*<|tool_calls_section_end|>
// and for a tool message "## Return of TOOL_CALL_ID\n" + content.
// TOOLS_JSON is compact (separators ',' and ':'); non-string tool-call arguments are dumped
// Python-style (", " and ": "), as the Jinja template's tojson does. Key order is the input's:
// pass nlohmann::ordered_json to keep the client's order (nlohmann::json sorts keys).
//
// Default system prompt: Kimi-Linear's own chat_template.jinja is not public (model.md §10), so
// we follow Kimi-K2-Instruct-0905, which inserts
//   <|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot AI.<|im_end|>
// before the first message when that message is not a system message (developer counts as
// system here). ChatTemplateOptions::default_system_prompt turns this off.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tool_calls.h"

namespace kimi {

extern const std::string_view kDefaultSystemPrompt;

struct ChatTemplateOptions {
  bool add_generation_prompt = true;
  bool default_system_prompt = true;
  // Tool-call ids not of the canonical form functions.NAME:IDX (e.g. OpenAI's call_xxx) put
  // Kimi models off-distribution (serving.md §5.2). When set, each such id is rendered as
  // functions.NAME:K, K counting tool calls from 0 over the conversation, and tool messages that
  // answer it get the same id.
  bool normalize_tool_call_ids = true;
};

// messages: OpenAI-style array; tools: null or an array of {"type":"function","function":{..}}.
// Throws kimi::Error naming the offending field (e.g. "messages[2].tool_calls[0].function.name
// must be a string") for requests the template cannot render.
std::string render_chat(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                        const ChatTemplateOptions& options = {});
std::string render_chat(const nlohmann::json& messages, const nlohmann::json& tools,
                        const ChatTemplateOptions& options = {});

}  // namespace kimi
