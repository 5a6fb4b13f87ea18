// Route handlers, free functions over the state the server shares between worker threads.
#pragma once

#include <httplib.h>

#include <atomic>
#include <functional>
#include <nlohmann/json.hpp>

#include "api_error.h"
#include "generation.h"
#include "metrics.h"
#include "server.h"

namespace kimi::server {

struct ServerContext {
  ServerContext(Engine& e, ServerOptions o);
  Engine& engine;
  const ServerOptions opts;
  const int vocab_size;
  const int64_t max_model_len;
  const int64_t started_at;  // Unix seconds: /v1/models "created"
  ServerMetrics metrics;
  ActiveGenerations active;
  std::atomic<bool> draining{false};
};

void send_json(httplib::Response& res, const nlohmann::json& body, int status = 200);
void send_error(httplib::Response& res, const ApiError& e);

// Runs a handler so that nothing reaches cpp-httplib (style.md): an ApiException becomes its
// status and error object, any other exception a 500 server_error.
void guarded(const httplib::Request& req, httplib::Response& res, const std::function<void()>& handler);

void handle_generation(ServerContext& ctx, bool chat, const httplib::Request& req, httplib::Response& res);
void handle_models(ServerContext& ctx, const httplib::Request& req, httplib::Response& res);
void handle_tokenize(ServerContext& ctx, const httplib::Request& req, httplib::Response& res);
void handle_detokenize(ServerContext& ctx, const httplib::Request& req, httplib::Response& res);
void handle_metrics(ServerContext& ctx, const httplib::Request& req, httplib::Response& res);

}  // namespace kimi::server
