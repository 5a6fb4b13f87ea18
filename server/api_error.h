// Request-level errors as values (style.md principle 5): every failure a client can cause or
// see maps to one ApiError, rendered as an OpenAI error object with the matching HTTP status.
#pragma once

#include <exception>
#include <nlohmann/json.hpp>
#include <string>

namespace kimi::server {

struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;      // the offending request field; empty renders as null
  std::string code;       // empty renders as null
  int retry_after_s = 0;  // > 0 adds a Retry-After header (429, 503)
};

// Thrown by request parsing; caught in the route wrappers, never reaches cpp-httplib.
struct ApiException : std::exception {
  explicit ApiException(ApiError e) : error(std::move(e)) {}
  const char* what() const noexcept override { return error.message.c_str(); }
  ApiError error;
};

[[noreturn]] void throw_bad_request(const std::string& param, const std::string& message);

ApiError not_found(const std::string& message, const std::string& code);
ApiError unavailable(const std::string& message, int retry_after_s);
ApiError rate_limited(const std::string& message, int retry_after_s);
ApiError internal_error(const std::string& message);
// vLLM's wording for both endpoints; param names the prompt's field ("messages" or "prompt").
ApiError context_length_error(int64_t max_model_len, int64_t prompt_tokens, int64_t max_tokens,
                              const std::string& param);

// {"error": {"message", "type", "param", "code"}}
nlohmann::json error_json(const ApiError& e);

}  // namespace kimi::server
