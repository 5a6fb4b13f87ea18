// Any bytes as the body of /v1/chat/completions and /v1/completions: either an ApiException
// (the server's 4xx) or a request whose messages render through the chat template. A
// response_format json_schema that compiles is then walked by the matcher over the body's own
// bytes, as is a forced tool choice's grammar (with its markers wherever the body has a '\x01'..
// '\x04'). Anything else escaping (another exception type, a crash, a hang) is a finding.
#include <cstdlib>
#include <string>

#include "core/check.h"
#include "runtime/json_matcher.h"
#include "runtime/tool_call_matcher.h"
#include "server/api_error.h"
#include "server/openai_request.h"
#include "tokenizer/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string body(reinterpret_cast<const char*>(data), size);
  kimi::server::ParseLimits limits;
  limits.vocab_size = 1280;
  try {
    kimi::server::GenerationRequest r = kimi::server::parse_chat_body(body, limits);
    if (r.engine.json_schema) {
      kimi::JsonMatcher m(r.engine.json_schema);
      for (char c : body) (void)m.step(uint8_t(c));  // a refused byte leaves m as it was
      (void)m.complete();
    }
    if (r.engine.tool_calls) {
      kimi::ToolCallMatcher m(r.engine.tool_calls, {1, 2, 3, 4});
      for (char c : body) (void)(c >= 1 && c <= 4 ? m.step_marker(c) : m.step(uint8_t(c)));
      (void)m.markers();
    }
    try {
      (void)kimi::render_chat(r.messages_json, r.tools_json, {});
    } catch (const kimi::Error&) {
      // The server answers a template refusal with a 400 too.
    }
  } catch (const kimi::server::ApiException&) {
  }
  try {
    (void)kimi::server::parse_completion_body(body, limits);
  } catch (const kimi::server::ApiException&) {
  }
  return 0;
}
