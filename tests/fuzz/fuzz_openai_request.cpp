// Any bytes as the body of /v1/chat/completions and /v1/completions: either an ApiException
// (the server's 4xx) or a request whose messages render through the chat template. Anything
// else escaping (another exception type, a crash, a hang) is a finding.
#include <cstdlib>
#include <string>

#include "core/check.h"
#include "server/api_error.h"
#include "server/openai_request.h"
#include "tokenizer/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string body(reinterpret_cast<const char*>(data), size);
  kimi::server::ParseLimits limits;
  limits.vocab_size = 1280;
  try {
    kimi::server::GenerationRequest r = kimi::server::parse_chat_body(body, limits);
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
