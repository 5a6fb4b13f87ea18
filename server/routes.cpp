#include "routes.h"

#include <ctime>

#include "core/check.h"
#include "core/log.h"
#include "json_fields.h"
#include "openai_request.h"
#include "peer_watch.h"
#include "prompt.h"
#include "tokenizer/tokenizer.h"

namespace kimi::server {

ServerContext::ServerContext(Engine& e, ServerOptions o)
    : engine(e),
      opts(std::move(o)),
      vocab_size(e.config().vocab_size),
      max_model_len(e.max_model_len()),
      started_at(int64_t(std::time(nullptr))),
      metrics(opts.served_model_name, e.max_model_len()) {}

void send_json(httplib::Response& res, const nlohmann::json& body, int status) {
  res.status = status;
  res.set_content(dump_json(body), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  if (e.retry_after_s > 0) res.set_header("Retry-After", std::to_string(e.retry_after_s));
  send_json(res, error_json(e), e.status);
}

void guarded(const httplib::Request& req, httplib::Response& res,
             const std::function<void()>& handler) {
  try {
    handler();
  } catch (const ApiException& e) {
    send_error(res, e.error);
  } catch (const std::exception& e) {
    spdlog::error("{} {}: {}", req.method, req.path, e.what());
    send_error(res, internal_error(e.what()));
  }
}

namespace {

void check_model(const ServerContext& ctx, const std::string& model) {
  if (model.empty() || model == ctx.opts.served_model_name || model == ctx.opts.model_root) return;
  throw ApiException{not_found(str("The model '", model, "' does not exist. This server serves '",
                                   ctx.opts.served_model_name, "'."),
                               "model_not_found")};
}

// max_tokens for the engine: the request's, or the default, checked against the context.
int effective_max_tokens(const ServerContext& ctx, const GenerationRequest& r,
                         const PreparedPrompts& p) {
  size_t longest = 0;
  for (const auto& ids : p.ids) longest = std::max(longest, ids.size());
  const int64_t prompt = int64_t(longest);
  const char* field = r.chat ? "messages" : "prompt";
  if (prompt >= ctx.max_model_len)
    throw ApiException{context_length_error(ctx.max_model_len, prompt, 0, field)};
  const int64_t room = ctx.max_model_len - prompt;
  if (r.max_tokens) {
    if (*r.max_tokens > room)
      throw ApiException{context_length_error(ctx.max_model_len, prompt, *r.max_tokens, field)};
    return int(*r.max_tokens);
  }
  int64_t def = r.chat ? ctx.opts.default_max_tokens : 16;  // completions: OpenAI's default
  if (!r.chat && ctx.opts.default_max_tokens > 0) def = ctx.opts.default_max_tokens;
  return int(def > 0 ? std::min(def, room) : std::min<int64_t>(room, INT32_MAX));
}

}  // namespace

void handle_generation(ServerContext& ctx, bool chat, const httplib::Request& req,
                       httplib::Response& res) {
  if (ctx.draining) throw ApiException{unavailable("the server is shutting down", 5)};
  ParseLimits lim;
  lim.vocab_size = ctx.vocab_size;
  GenerationRequest r =
      chat ? parse_chat_body(req.body, lim) : parse_completion_body(req.body, lim);
  check_model(ctx, r.model);

  // Admission: running + queued beyond the limit -> 429, which the SDKs retry after Retry-After.
  if (ctx.opts.max_queue >= 0 && ctx.active.size() >= ctx.opts.max_num_seqs + ctx.opts.max_queue)
    throw ApiException{rate_limited(str("the server is at capacity (", ctx.opts.max_num_seqs,
                                        " running, ", ctx.opts.max_queue, " queued): retry later"),
                                    1)};

  PreparedPrompts prompts = prepare_prompts(r, ctx.engine.tokenizer(), ctx.vocab_size);
  const int max_tokens = effective_max_tokens(ctx, r, prompts);
  if (std::string bad = r.engine.sampling.validate(ctx.vocab_size); !bad.empty())
    throw_bad_request("", bad);

  ResponseHead head;
  // vLLM's id: the prefix and the X-Request-Id header, else the request_id field, else random.
  const char* prefix = chat ? "chatcmpl-" : "cmpl-";
  const std::string given =
      req.has_header("X-Request-Id") ? req.get_header_value("X-Request-Id") : r.request_id;
  head.id = given.empty() ? new_id(prefix) : prefix + given;
  head.created = int64_t(std::time(nullptr));
  head.model = ctx.opts.served_model_name;
  const bool stream = r.stream;
  auto gen = std::make_shared<Generation>(ctx.engine, ctx.metrics, ctx.active, std::move(r),
                                          std::move(prompts), max_tokens, head);
  try {
    gen->submit();
  } catch (const Error& e) {
    if (ctx.draining) throw ApiException{unavailable("the server is shutting down", 5)};
    throw_bad_request("", e.what());
  }

  if (!stream) {
    auto peer = PeerWatch::find(req.remote_addr, req.remote_port, req.local_port);
    if (!peer)
      spdlog::debug("no socket found for {}:{}: a disconnect will not cancel", req.remote_addr,
                    req.remote_port);
    auto out = gen->collect([&] { return peer && peer->closed(); });
    if (auto* j = std::get_if<nlohmann::json>(&out))
      send_json(res, *j);
    else
      send_error(res, std::get<ApiError>(out));
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  // Exactly "text/event-stream": any other text/* type gets gzip-buffered by cpp-httplib (§6.1).
  res.set_chunked_content_provider(
      "text/event-stream",
      [gen](size_t, httplib::DataSink& sink) {
        gen->stream([&](const std::string& s) { return sink.write(s.data(), s.size()); });
        sink.done();
        return true;
      },
      [gen](bool success) {
        if (!success) gen->cancel(false);  // the client went away: free the sequence now
      });
}

void handle_models(ServerContext& ctx, const httplib::Request& req, httplib::Response& res) {
  nlohmann::json model = {
      {"id", ctx.opts.served_model_name},   {"object", "model"},
      {"created", ctx.started_at},          {"owned_by", "kimi"},
      {"root", ctx.opts.model_root},        {"parent", nullptr},
      {"max_model_len", ctx.max_model_len}, {"permission", nlohmann::json::array()}};
  if (req.matches.size() > 1) {
    std::string id = req.matches[1];
    if (id != ctx.opts.served_model_name && id != ctx.opts.model_root)
      throw ApiException{not_found(str("The model '", id, "' does not exist."), "model_not_found")};
    send_json(res, model);
    return;
  }
  send_json(res, {{"object", "list"}, {"data", nlohmann::json::array({model})}});
}

void handle_tokenize(ServerContext& ctx, const httplib::Request& req, httplib::Response& res) {
  const nlohmann::json body = parse_body(req.body);
  const Tokenizer* tok = ctx.engine.tokenizer();
  if (!tok) throw_bad_request("", "this model has no tokenizer files");
  Fields f(body, "");
  check_model(ctx, f.string("model").value_or(""));
  std::vector<int> ids;
  if (f.get("messages")) {
    ParseLimits lim;
    lim.vocab_size = ctx.vocab_size;
    GenerationRequest r = parse_chat_body(req.body, lim);  // same key order as generation
    ids = render_chat(*tok, r);
  } else {
    std::string prompt = f.require_string("prompt");
    try {
      ids = tok->encode(prompt, /*allow_special=*/true);
    } catch (const Error& e) {
      throw_bad_request("prompt", e.what());
    }
    if (f.boolean("add_special_tokens").value_or(false) && tok->bos_id() >= 0)
      ids.insert(ids.begin(), tok->bos_id());
  }
  nlohmann::json out = {
      {"count", ids.size()}, {"max_model_len", ctx.max_model_len}, {"tokens", ids}};
  if (f.boolean("return_token_strs").value_or(false)) {
    nlohmann::json strs = nlohmann::json::array();
    for (int id : ids) strs.push_back(std::string(tok->token_bytes(id)));
    out["token_strs"] = strs;
  }
  send_json(res, out);
}

void handle_detokenize(ServerContext& ctx, const httplib::Request& req, httplib::Response& res) {
  const nlohmann::json body = parse_body(req.body);
  const Tokenizer* tok = ctx.engine.tokenizer();
  if (!tok) throw_bad_request("", "this model has no tokenizer files");
  Fields f(body, "");
  check_model(ctx, f.string("model").value_or(""));
  const nlohmann::json* toks = f.array("tokens");
  if (!toks) throw_bad_request("tokens", "'tokens' is required");
  std::vector<int> ids;
  for (const auto& v : *toks) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= tok->vocab_size())
      throw_bad_request("tokens", str("'tokens' must hold token ids in [0, ", tok->vocab_size(),
                                      "), got ", v.dump()));
    ids.push_back(v.get<int>());
  }
  send_json(res, {{"prompt", tok->decode(ids)}});
}

void handle_metrics(ServerContext& ctx, const httplib::Request&, httplib::Response& res) {
  res.set_content(ctx.metrics.render(ctx.engine.metrics(), ctx.active.size()),
                  "text/plain; version=0.0.4; charset=utf-8");
}

}  // namespace kimi::server
