#include "api_error.h"

#include "core/check.h"

namespace kimi::server {

void throw_bad_request(const std::string& param, const std::string& message) {
  throw ApiException{ApiError{400, message, "invalid_request_error", param, "", 0}};
}

ApiError not_found(const std::string& message, const std::string& code) {
  return ApiError{404, message, "invalid_request_error", "", code, 0};
}

ApiError unavailable(const std::string& message, int retry_after_s) {
  return ApiError{503, message, "server_error", "", "unavailable", retry_after_s};
}

ApiError rate_limited(const std::string& message, int retry_after_s) {
  return ApiError{429, message, "rate_limit_error", "", "rate_limit_exceeded", retry_after_s};
}

ApiError internal_error(const std::string& message) {
  return ApiError{500, message, "server_error", "", "internal_error", 0};
}

ApiError context_length_error(int64_t max_model_len, int64_t prompt_tokens, int64_t max_tokens,
                              const std::string& param) {
  // vLLM's wording: clients string-match "maximum context length".
  std::string msg;
  if (max_tokens > 0)
    msg = str("This model's maximum context length is ", max_model_len,
              " tokens. However, you requested ", prompt_tokens + max_tokens, " tokens (",
              prompt_tokens, " in the messages, ", max_tokens,
              " in the completion). Please reduce the length of the messages or completion.");
  else
    msg = str("This model's maximum context length is ", max_model_len,
              " tokens. However, your messages resulted in ", prompt_tokens,
              " tokens. Please reduce the length of the messages.");
  return ApiError{400, msg, "invalid_request_error", param, "context_length_exceeded", 0};
}

nlohmann::json error_json(const ApiError& e) {
  nlohmann::json err = {{"message", e.message}, {"type", e.type}};
  err["param"] = e.param.empty() ? nlohmann::json(nullptr) : nlohmann::json(e.param);
  err["code"] = e.code.empty() ? nlohmann::json(nullptr) : nlohmann::json(e.code);
  return {{"error", err}};
}

}  // namespace kimi::server
