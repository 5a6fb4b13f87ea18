#include "openai_response.h"

#include <random>

#include "core/check.h"
#include "tokenizer/tokenizer.h"

namespace kimi::server {

std::string TokenTexts::text(int id) const {
  if (as_ids_) return str("token_id:", id);
  if (id < 0 || id >= tok_->vocab_size()) return str("token_id:", id);
  return std::string(tok_->token_bytes(id));
}

std::string dump_json(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string sse_event(const json& j) {
  return "data: " + dump_json(j) + "\n\n";
}

const char* finish_reason_str(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kToolCalls:
      return "tool_calls";
    case FinishReason::kCancelled:
      return "abort";
    case FinishReason::kError:
      return "error";
    case FinishReason::kNone:
      break;
  }
  return nullptr;
}

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

namespace {
json bytes_of(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(int(c));
  return b;
}
}  // namespace

json chat_logprobs(const std::vector<TokenLogprob>& lps, const TokenTexts& tt) {
  json content = json::array();
  for (const auto& lp : lps) {
    std::string t = tt.text(lp.id);
    json top = json::array();
    for (const auto& [id, v] : lp.top) {
      std::string a = tt.text(id);
      top.push_back({{"token", a}, {"logprob", v}, {"bytes", bytes_of(a)}});
    }
    content.push_back(
        {{"token", t}, {"logprob", lp.logprob}, {"bytes", bytes_of(t)}, {"top_logprobs", top}});
  }
  return {{"content", content}, {"refusal", nullptr}};
}

json completion_logprobs(const std::vector<TokenLogprob>& lps, const TokenTexts& tt,
                         size_t& offset) {
  json tokens = json::array(), values = json::array(), tops = json::array(),
       offsets = json::array();
  for (const auto& lp : lps) {
    std::string t = tt.text(lp.id);
    tokens.push_back(t);
    values.push_back(lp.logprob);
    // The sampled token and its alternatives: up to k + 1 entries, even for logprobs=0
    // (OpenAI's legacy API and vLLM; lm-eval takes max(top.values()) for is_greedy).
    json top = json::object();
    for (const auto& [id, v] : lp.top) top[tt.text(id)] = v;
    top[t] = lp.logprob;  // last: the same value as token_logprobs
    tops.push_back(top);
    offsets.push_back(offset);
    offset += t.size();
  }
  return {{"tokens", tokens},
          {"token_logprobs", values},
          {"top_logprobs", tops},
          {"text_offset", offsets}};
}

void append_completion_logprobs(json& into, const json& more) {
  if (into.is_null()) {
    into = more;
    return;
  }
  for (const char* k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"})
    for (const auto& v : more[k]) into[k].push_back(v);
}

json echo_prompt_logprobs(const std::vector<int>& prompt, const std::vector<TokenLogprob>& lps,
                          const TokenTexts& tt, size_t& offset) {
  json out = {{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  if (prompt.empty()) return out;
  const std::string first = tt.text(prompt[0]);
  out["tokens"].push_back(first);
  out["token_logprobs"].push_back(nullptr);
  out["top_logprobs"].push_back(nullptr);
  out["text_offset"].push_back(offset);
  offset += first.size();
  append_completion_logprobs(out, completion_logprobs(lps, tt, offset));
  return out;
}

json vllm_prompt_logprobs(const std::vector<TokenLogprob>& lps, const TokenTexts& tt) {
  json out = json::array();
  out.push_back(nullptr);
  for (const TokenLogprob& lp : lps) {
    json d = json::object();
    d[std::to_string(lp.id)] = {
        {"logprob", lp.logprob}, {"rank", lp.rank}, {"decoded_token", tt.text(lp.id)}};
    for (size_t r = 0; r < lp.top.size(); ++r) {
      const auto& [id, v] = lp.top[r];
      if (id != lp.id)
        d[std::to_string(id)] = {
            {"logprob", v}, {"rank", int(r) + 1}, {"decoded_token", tt.text(id)}};
    }
    out.push_back(std::move(d));
  }
  return out;
}

std::string choice_finish_reason(const ChoiceResult& c) {
  // A completed tool call turns a normal stop into "tool_calls" (vLLM kimi_k2 behaviour).
  if (c.completed_tool_calls > 0 &&
      (c.finish == FinishReason::kStop || c.finish == FinishReason::kToolCalls))
    return "tool_calls";
  if (c.finish == FinishReason::kToolCalls) return "stop";
  const char* r = finish_reason_str(c.finish);
  return r ? r : "stop";
}

json stop_reason_json(const ChoiceResult& c) {
  if (!c.stop_reason.empty()) return c.stop_reason;
  return c.stop_token >= 0 ? json(c.stop_token) : json(nullptr);
}

json tool_calls_json(const std::vector<ToolCall>& calls) {
  json out = json::array();
  for (const auto& c : calls)
    out.push_back({{"id", c.id},
                   {"type", "function"},
                   {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
  return out;
}

json chat_completion_json(const ResponseHead& h, const std::vector<ChoiceResult>& choices,
                          const Usage& usage, const TokenTexts& tt, const LogprobsOut& lo) {
  json arr = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceResult& c = choices[i];
    json msg = {{"role", "assistant"}};
    if (c.parsed_tools && !c.tool_calls.empty()) {
      msg["content"] = c.text.empty() ? json(nullptr) : json(c.text);
      msg["tool_calls"] = tool_calls_json(c.tool_calls);
    } else {
      msg["content"] = c.text;
      msg["tool_calls"] = json::array();
    }
    msg["refusal"] = nullptr;
    json choice = {{"index", i}, {"message", msg}};
    choice["logprobs"] = lo.generated ? chat_logprobs(c.logprobs, tt) : json(nullptr);
    choice["finish_reason"] = choice_finish_reason(c);
    choice["stop_reason"] = stop_reason_json(c);
    arr.push_back(choice);
  }
  json out = {{"id", h.id},
              {"object", "chat.completion"},
              {"created", h.created},
              {"model", h.model},
              {"system_fingerprint", nullptr},
              {"choices", arr},
              {"usage", usage_json(usage)}};
  if (lo.vllm_prompt)
    out["prompt_logprobs"] = !choices.empty() && choices[0].prompt_logprobs
                                 ? vllm_prompt_logprobs(*choices[0].prompt_logprobs, tt)
                                 : json(nullptr);
  return out;
}

json text_completion_json(const ResponseHead& h, const std::vector<ChoiceResult>& choices,
                          const Usage& usage, const TokenTexts& tt, const LogprobsOut& lo) {
  json arr = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceResult& c = choices[i];
    json choice = {{"index", i}, {"text", c.text}};
    size_t offset = 0;
    json lp = nullptr;
    if (lo.echo_prompt && c.prompt_logprobs)
      lp = echo_prompt_logprobs(c.prompt, *c.prompt_logprobs, tt, offset);
    if (lo.generated) append_completion_logprobs(lp, completion_logprobs(c.logprobs, tt, offset));
    choice["logprobs"] = lp;
    if (lo.vllm_prompt)
      choice["prompt_logprobs"] =
          c.prompt_logprobs ? vllm_prompt_logprobs(*c.prompt_logprobs, tt) : json(nullptr);
    choice["finish_reason"] = choice_finish_reason(c);
    choice["stop_reason"] = stop_reason_json(c);
    arr.push_back(choice);
  }
  return {{"id", h.id},
          {"object", "text_completion"},
          {"created", h.created},
          {"model", h.model},
          {"system_fingerprint", nullptr},
          {"choices", arr},
          {"usage", usage_json(usage)}};
}

json chat_chunk(const ResponseHead& h, int index, json delta, json logprobs, const char* finish,
                const json* usage) {
  json choice = {{"index", index}, {"delta", std::move(delta)}, {"logprobs", std::move(logprobs)}};
  choice["finish_reason"] = finish ? json(finish) : json(nullptr);
  json j = {
      {"id", h.id},       {"object", "chat.completion.chunk"}, {"created", h.created},
      {"model", h.model}, {"system_fingerprint", nullptr},     {"choices", json::array({choice})}};
  if (usage) j["usage"] = *usage;
  return j;
}

json completion_chunk(const ResponseHead& h, int index, const std::string& text, json logprobs,
                      const char* finish, const json* usage) {
  json choice = {{"index", index}, {"text", text}, {"logprobs", std::move(logprobs)}};
  choice["finish_reason"] = finish ? json(finish) : json(nullptr);
  json j = {
      {"id", h.id},       {"object", "text_completion"},   {"created", h.created},
      {"model", h.model}, {"system_fingerprint", nullptr}, {"choices", json::array({choice})}};
  if (usage) j["usage"] = *usage;
  return j;
}

json usage_chunk(const ResponseHead& h, bool chat, const Usage& u) {
  return {{"id", h.id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", h.created},
          {"model", h.model},
          {"system_fingerprint", nullptr},
          {"choices", json::array()},
          {"usage", usage_json(u)}};
}

json tool_call_deltas(const std::vector<ToolCallDelta>& calls) {
  json out = json::array();
  for (const auto& d : calls) {
    json fn = {{"arguments", d.arguments}};
    json e = {{"index", d.index}};
    if (d.start) {
      e["id"] = d.id;
      e["type"] = "function";
      fn["name"] = d.name;
    }
    e["function"] = fn;
    out.push_back(e);
  }
  return out;
}

std::string new_id(const char* prefix) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string s = prefix;
  uint64_t a = rng(), b = rng();
  for (int i = 0; i < 16; ++i) s += hex[(a >> (4 * i)) & 15];
  for (int i = 0; i < 8; ++i) s += hex[(b >> (4 * i)) & 15];
  return s;
}

}  // namespace kimi::server
