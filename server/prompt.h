// Request -> engine prompt ids. Chat messages (and tools) go through the Kimi chat template at
// the token level: markers are special ids, message text is encoded with special-token strings
// kept as plain text, so user content cannot forge turn or tool-call markers.
#pragma once

#include <string>
#include <vector>

#include "generation.h"
#include "openai_request.h"

namespace kimi {
class Tokenizer;
}

namespace kimi::server {

// Prompt ids per engine request; throws ApiException 400 (no tokenizer, bad token ids, ...).
PreparedPrompts prepare_prompts(const GenerationRequest& r, const Tokenizer* tok, int vocab_size);

// The chat template alone (also used by /tokenize).
std::vector<int> render_chat(const Tokenizer& tok, const GenerationRequest& r);

// Tokens of a rendered chat's leading system messages (tool declarations included) when other
// messages follow: the prefix that requests of one deployment share, cached on its own
// (Request::cache_point); 0 when the chat does not start with a system message.
int system_prefix_length(const Tokenizer& tok, const std::vector<int>& ids);

// The answer's forced start for tool_choice "required" / a named function ("" otherwise): the
// start of a call, up to "functions." or (named) its whole id, numbered after the history's calls;
// the engine masks the rest to the calls' grammar (Request::tool_calls).
std::string forced_tool_prefix(const GenerationRequest& r);

}  // namespace kimi::server
