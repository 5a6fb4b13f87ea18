// kimi-serve's HTTP layer: cpp-httplib 0.11.4 routes for the OpenAI API and vLLM's extras
// (serving.md §1-2, §6.1). One worker thread per connection, so the pool is sized for
// --max-num-seqs concurrent streams plus headroom; SSE is written from the worker while the
// engine loop runs elsewhere (engine -> RequestHandle queue -> worker).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "kimi/engine.h"

namespace kimi::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                      // 0: any free port (see bound_port())
  std::vector<std::string> api_keys;    // empty: no authentication
  std::string served_model_name;        // the id clients send as "model"
  std::string model_root;               // the model directory (/v1/models "root")
  int max_num_seqs = 64;
  int max_queue = -1;                   // requests beyond running + this get 429; < 0: unbounded
  int http_threads = 0;                 // 0: max_num_seqs + 32
  int default_max_tokens = 0;           // chat without max_tokens; 0: up to the context length
  int keep_alive_s = 2;
  int write_timeout_s = 30;
  int read_timeout_s = 30;
  size_t max_body_bytes = size_t(64) << 20;
};

class Server {
 public:
  Server(Engine& engine, ServerOptions opts);
  ~Server();

  // Binds the listening socket; throws kimi::Error when it cannot.
  void bind();
  int bound_port() const;
  // Serves until stop(); returns once every connection handler has finished.
  void serve();
  // Graceful stop (SIGTERM): new generation requests get 503, /health 503; in-flight requests
  // may finish for `grace`, then are cancelled; then the listener closes.
  void shutdown(std::chrono::milliseconds grace);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kimi::server
