// Error objects and statuses of the HTTP layer (server/routes.h guarded, server/api_error.h).
#include <gtest/gtest.h>

#include <stdexcept>

#include "server/api_error.h"
#include "server/routes.h"

using namespace kimi::server;
using nlohmann::json;

namespace {
json body_of(const httplib::Response& res) {
  return json::parse(res.body);
}
bool is_openai_error(const json& j) {
  return j.contains("error") && j["error"].contains("message") && j["error"].contains("type") &&
         j["error"].contains("param") && j["error"].contains("code") &&
         !j["error"]["message"].get<std::string>().empty();
}
}  // namespace

TEST(OpenAIErrors, UnexpectedExceptionIs500) {
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  httplib::Response res;
  guarded(req, res, [] { throw std::runtime_error("boom"); });
  EXPECT_EQ(res.status, 500);
  json j = body_of(res);
  EXPECT_TRUE(is_openai_error(j));
  EXPECT_EQ(j["error"]["type"], "server_error");
  EXPECT_EQ(j["error"]["message"], "boom");
  EXPECT_EQ(res.get_header_value("Content-Type"), "application/json");
}

TEST(OpenAIErrors, ApiExceptionKeepsItsStatusAndRetryAfter) {
  httplib::Request req;
  httplib::Response res;
  guarded(req, res, [] { throw ApiException{rate_limited("busy", 3)}; });
  EXPECT_EQ(res.status, 429);
  EXPECT_EQ(res.get_header_value("Retry-After"), "3");
  EXPECT_EQ(body_of(res)["error"]["code"], "rate_limit_exceeded");

  httplib::Response res2;
  guarded(req, res2, [] { throw_bad_request("temperature", "bad"); });
  EXPECT_EQ(res2.status, 400);
  EXPECT_EQ(body_of(res2)["error"]["param"], "temperature");
  EXPECT_FALSE(res2.has_header("Retry-After"));

  httplib::Response res3;
  guarded(req, res3, [] { throw ApiException{unavailable("draining", 5)}; });
  EXPECT_EQ(res3.status, 503);
  EXPECT_EQ(res3.get_header_value("Retry-After"), "5");
  EXPECT_EQ(body_of(res3)["error"]["type"], "server_error");
}

TEST(OpenAIErrors, ContextLengthWording) {
  ApiError e = context_length_error(512, 500, 100, "messages");
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "messages");
  EXPECT_EQ(context_length_error(512, 600, 0, "prompt").param, "prompt");  // /v1/completions
  EXPECT_EQ(e.code, "context_length_exceeded");
  EXPECT_NE(e.message.find("maximum context length is 512 tokens"), std::string::npos);
  EXPECT_NE(e.message.find("you requested 600 tokens (500 in the messages, 100 in the completion)"),
            std::string::npos);
  json j = error_json(e);
  EXPECT_TRUE(is_openai_error(j));
  EXPECT_TRUE(error_json(internal_error("x"))["error"]["param"].is_null());
}
