#include "server.h"

#include <sys/socket.h>

#include <condition_variable>
#include <thread>

#include "auth.h"
#include "core/check.h"
#include "core/log.h"
#include "routes.h"

namespace kimi::server {

namespace {

// cpp-httplib compiles the listen backlog in as 5; bursts of hundreds of connections (bench
// --request-rate inf) then see SYN retries. svr_sock_ is protected, so re-listen with 1024.
class HttpServer : public httplib::Server {
 public:
  void widen_backlog() { ::listen(svr_sock_, 1024); }
};

const char* status_phrase(int status) {
  switch (status) {
    case 400:
      return "bad request";
    case 401:
      return "unauthorized";
    case 404:
      return "not found";
    case 405:
      return "method not allowed";
    case 413:
      return "the request body is too large";
    case 414:
      return "the request URI is too long";
    default:
      return "error";
  }
}

// The method a known route takes, for a 405 (with Allow) instead of a 404 when another is used.
const char* route_method(const std::string& path) {
  for (const char* p : {"/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"})
    if (path == p) return "POST";
  for (const char* p : {"/v1/models", "/metrics", "/health", "/version"})
    if (path == p) return "GET";
  return path.rfind("/v1/models/", 0) == 0 ? "GET" : nullptr;
}

}  // namespace

struct Server::Impl {
  Impl(Engine& engine, ServerOptions opts) : ctx(engine, std::move(opts)) {}
  ServerContext ctx;
  HttpServer http;
  int port = 0;
};

Server::Server(Engine& engine, ServerOptions opts)
    : impl_(std::make_unique<Impl>(engine, std::move(opts))) {
  ServerContext& ctx = impl_->ctx;
  HttpServer& http = impl_->http;
  const int threads =
      ctx.opts.http_threads > 0 ? ctx.opts.http_threads : ctx.opts.max_num_seqs + 32;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  http.set_keep_alive_timeout(ctx.opts.keep_alive_s);
  http.set_keep_alive_max_count(100);
  http.set_read_timeout(ctx.opts.read_timeout_s);
  http.set_write_timeout(ctx.opts.write_timeout_s);
  http.set_tcp_nodelay(true);
  http.set_payload_max_length(ctx.opts.max_body_bytes);

  auto wrap = [&ctx](auto fn) {
    return [&ctx, fn](const httplib::Request& req, httplib::Response& res) {
      guarded(req, res, [&] { fn(ctx, req, res); });
    };
  };

  http.set_pre_routing_handler([&ctx](const httplib::Request& req, httplib::Response& res) {
    res.set_header("Access-Control-Allow-Origin", "*");
    if (req.method == "OPTIONS") {
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
      res.status = 204;
      return httplib::Server::HandlerResponse::Handled;
    }
    // vLLM's rule: the key guards /v1/*; /health, /metrics, /version stay open for probes.
    if (!ctx.opts.api_keys.empty() && req.path.rfind("/v1", 0) == 0) {
      if (!authorized(req.get_header_value("Authorization"), ctx.opts.api_keys)) {
        send_error(res,
                   ApiError{401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                            "invalid_request_error", "", "invalid_api_key", 0});
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  http.Post("/v1/chat/completions",
            wrap([](ServerContext& c, const httplib::Request& q, httplib::Response& s) {
              handle_generation(c, true, q, s);
            }));
  http.Post("/v1/completions",
            wrap([](ServerContext& c, const httplib::Request& q, httplib::Response& s) {
              handle_generation(c, false, q, s);
            }));
  http.Get("/v1/models", wrap(handle_models));
  http.Get("/v1/models/(.+)", wrap(handle_models));
  http.Post("/tokenize", wrap(handle_tokenize));
  http.Post("/detokenize", wrap(handle_detokenize));
  http.Get("/metrics", wrap(handle_metrics));
  http.Get("/health", [&ctx](const httplib::Request&, httplib::Response& res) {
    if (ctx.draining)
      send_error(res, unavailable("the server is shutting down", 5));
    else
      res.status = 200;
  });
  http.Get("/version", [](const httplib::Request&, httplib::Response& res) {
    send_json(res, {{"version", KIMI_VERSION}});
  });

  // Unmatched routes, 413 bodies, ...: OpenAI-shaped errors (handlers that set a body keep it).
  http.set_error_handler(
      httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        if (const char* allow = route_method(req.path); res.status == 404 && allow) {
          res.status = 405;  // as vLLM (FastAPI) answers
          res.set_header("Allow", allow);
        }
        ApiError e{res.status,
                   str(status_phrase(res.status), ": ", req.method, " ", req.path),
                   "invalid_request_error",
                   "",
                   "",
                   0};
        if (res.status == 404) e.code = "not_found";
        if (res.status == 413)
          e.message = "the request body is too large", e.code = "request_too_large";
        if (res.status >= 500) e.type = "server_error";
        send_error(res, e);
        return httplib::Server::HandlerResponse::Handled;
      }));
  http.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        send_error(res, internal_error(what));
      });
  http.set_logger([&ctx](const httplib::Request& req, const httplib::Response& res) {
    ctx.metrics.http_response(res.status);
    spdlog::debug("{} {} -> {}", req.method, req.path, res.status);
  });
}

Server::~Server() = default;

void Server::bind() {
  auto& http = impl_->http;
  const auto& o = impl_->ctx.opts;
  if (o.port == 0) {
    impl_->port = http.bind_to_any_port(o.host);
    if (impl_->port <= 0) fail("cannot bind ", o.host, " on any port");
  } else {
    if (!http.bind_to_port(o.host, o.port)) fail("cannot bind ", o.host, ":", o.port, " (in use?)");
    impl_->port = o.port;
  }
  http.widen_backlog();
}

int Server::bound_port() const {
  return impl_->port;
}

void Server::serve() {
  impl_->http.listen_after_bind();
}

void Server::shutdown(std::chrono::milliseconds grace) {
  ServerContext& ctx = impl_->ctx;
  ctx.draining = true;
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (ctx.active.size() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (ctx.active.size() > 0) {
    spdlog::warn("cancelling {} request(s) still running after the grace period",
                 ctx.active.size());
    ctx.active.cancel_all();
    // Their streams end with an error event and [DONE]; give the workers a moment to write it.
    const auto hard = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (ctx.active.size() > 0 && std::chrono::steady_clock::now() < hard)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  impl_->http.stop();
}

}  // namespace kimi::server
