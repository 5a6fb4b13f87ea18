// One streamed request to an OpenAI-compatible endpoint, timed like vLLM's bench client:
// start just before the POST, stream: true with stream_options.include_usage, temperature 0,
// `max_tokens` (completions) or `max_completion_tokens` (chat), `ignore_eos` only when asked.
// Uses cpp-httplib's client (one connection per request, TCP_NODELAY); the caller runs one
// thread per in-flight request.
#pragma once

#include <chrono>
#include <string>

#include "bench/dataset.h"
#include "bench/metrics.h"

namespace kimi::bench {

using Clock = std::chrono::steady_clock;

struct Endpoint {
  std::string host_url;  // scheme://host:port
  std::string path;      // path prefix from --base-url + --endpoint
  std::string model;
  std::string api_key;  // sent as "Authorization: Bearer <key>" when not empty
  bool chat = false;    // /v1/chat/completions payload and delta parsing
  bool ignore_eos = false;
  double timeout_s = 600;  // connect + per-read timeout
};

// Splits --base-url (http://host:port[/prefix]) and joins --endpoint. chat is set when the
// endpoint ends in /chat/completions. Throws kimi::Error on a malformed URL or endpoint.
Endpoint make_endpoint(const std::string& base_url, const std::string& endpoint);

// The JSON body for one request.
std::string request_body(const Endpoint& ep, const SampleRequest& req);

// Sends one request and returns what the client saw; times are seconds since bench_start.
// Never throws for server or network problems: they make a failed RequestOutput.
RequestOutput send_request(const Endpoint& ep, const SampleRequest& req,
                           Clock::time_point bench_start);

// GET <prefix>/v1/models: the first model id, or "" when the server does not answer.
std::string first_served_model(const Endpoint& ep);

}  // namespace kimi::bench
