#include "bench/openai_client.h"

#include <httplib.h>

#include <nlohmann/json.hpp>

#include "bench/sse.h"
#include "core/check.h"

namespace kimi::bench {
namespace {

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void configure(httplib::Client& cli, const Endpoint& ep) {
  auto secs = time_t(ep.timeout_s);
  auto usecs = time_t((ep.timeout_s - double(secs)) * 1e6);
  cli.set_connection_timeout(secs, usecs);
  cli.set_read_timeout(secs, usecs);
  cli.set_write_timeout(secs, usecs);
  cli.set_tcp_nodelay(true);
  cli.set_keep_alive(false);
  if (!ep.api_key.empty()) cli.set_bearer_token_auth(ep.api_key);
}

}  // namespace

Endpoint make_endpoint(const std::string& base_url, const std::string& endpoint) {
  Endpoint ep;
  size_t scheme = base_url.find("://");
  if (scheme == std::string::npos || base_url.size() == scheme + 3)
    fail("--base-url '", base_url, "' must look like http://HOST:PORT[/PREFIX]");
  if (base_url.compare(0, scheme, "http") != 0 && base_url.compare(0, scheme, "https") != 0)
    fail("--base-url '", base_url, "': only http:// and https:// are supported");
  size_t slash = base_url.find('/', scheme + 3);
  ep.host_url = base_url.substr(0, slash);
  std::string prefix = slash == std::string::npos ? "" : base_url.substr(slash);
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  if (endpoint.empty() || endpoint[0] != '/') fail("--endpoint '", endpoint, "' must start with /");
  // vLLM users pass --base-url http://h:p/v1 together with --endpoint /v1/...: don't double it.
  if (!prefix.empty() && endpoint.compare(0, prefix.size(), prefix) == 0) prefix.clear();
  ep.path = prefix + endpoint;
  auto ends_with = [&](const std::string& s) {
    return ep.path.size() >= s.size() &&
           ep.path.compare(ep.path.size() - s.size(), s.size(), s) == 0;
  };
  if (ends_with("/chat/completions")) {
    ep.chat = true;
  } else if (!ends_with("/completions")) {
    fail("--endpoint '", endpoint, "': expected /v1/completions or /v1/chat/completions");
  }
  return ep;
}

std::string request_body(const Endpoint& ep, const SampleRequest& req) {
  nlohmann::json j;
  j["model"] = ep.model;
  if (ep.chat) {
    j["messages"] = nlohmann::json::array({{{"role", "user"}, {"content", req.prompt}}});
    j["max_completion_tokens"] = req.expected_output_len;
  } else {
    j["prompt"] = req.prompt;
    j["max_tokens"] = req.expected_output_len;
  }
  j["temperature"] = 0.0;
  j["stream"] = true;
  j["stream_options"] = {{"include_usage", true}};
  if (ep.ignore_eos) j["ignore_eos"] = true;
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

RequestOutput send_request(const Endpoint& ep, const SampleRequest& sample,
                           Clock::time_point bench_start) {
  RequestOutput out;
  out.prompt_len = sample.prompt_len;
  httplib::Client cli(ep.host_url);
  configure(cli, ep);
  httplib::Request req;
  req.method = "POST";
  req.path = ep.path;
  req.body = request_body(ep, sample);
  req.set_header("Content-Type", "application/json");
  req.set_header("Accept", "text/event-stream");
  int status = 0;
  std::string error_body;
  double start = since(bench_start);
  StreamParser parser(ep.chat, start);
  req.response_handler = [&](const httplib::Response& r) {
    status = r.status;
    return true;
  };
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    double t = since(bench_start);
    if (status != 200) {
      if (error_body.size() < 4096) error_body.append(data, n);
      return true;
    }
    parser.feed(std::string_view(data, n), t);
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  bool ok = cli.send(req, res, err);
  if (status != 200 && status != 0) {
    out.start_time = start;
    out.error = str("HTTP ", status, ": ", error_body.substr(0, 500));
    return out;
  }
  parser.finish(out);
  if (!ok && out.error.empty()) {
    out.success = false;
    out.error = "connection error: " + httplib::to_string(err);
  } else if (!ok) {
    out.error = "connection error: " + httplib::to_string(err) + "; " + out.error;
  }
  return out;
}

std::string first_served_model(const Endpoint& ep) {
  httplib::Client cli(ep.host_url);
  configure(cli, ep);
  cli.set_read_timeout(10, 0);
  std::string models =
      ep.path.substr(0, ep.path.rfind("/v1/") == std::string::npos ? 0 : ep.path.rfind("/v1/")) +
      "/v1/models";
  auto res = cli.Get(models);
  if (!res || res->status != 200) return "";
  auto j = nlohmann::json::parse(res->body, nullptr, false);
  if (j.is_discarded() || !j.contains("data") || !j["data"].is_array() || j["data"].empty())
    return "";
  auto& m = j["data"][0];
  return m.contains("id") && m["id"].is_string() ? m["id"].get<std::string>() : "";
}

}  // namespace kimi::bench
