#include "openai_request.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "api_error.h"
#include "core/check.h"
#include "json_fields.h"
#include "runtime/json_schema.h"
#include "runtime/tool_call_matcher.h"

namespace kimi::server {
namespace {

constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();

// Text of a content value: a string, or an array of text parts concatenated (the Kimi template
// joins part texts with nothing in between). Assistant messages may also carry refusal parts.
std::optional<std::string> content_text(const Fields& msg, bool allow_null, bool assistant) {
  const json* c = msg.get("content");
  if (!c) {
    if (allow_null) return std::nullopt;
    throw_bad_request(msg.name("content"), str("'", msg.name("content"), "' is required"));
  }
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array())
    throw_bad_request(msg.name("content"), str("'", msg.name("content"),
                                               "' must be a string or an array of content parts"));
  std::string text;
  for (size_t j = 0; j < c->size(); ++j) {
    Fields part((*c)[j], str(msg.name("content"), "[", j, "]."));
    std::string type = part.require_string("type");
    if (type == "text") {
      text += part.require_string("text");
    } else if (type == "refusal" && assistant) {
      text += part.require_string("refusal");
    } else if (type == "image_url" || type == "input_audio" || type == "file" || type == "image") {
      throw_bad_request(part.name("type"), str("content part type '", type,
                                               "' is not supported: this model accepts text only"));
    } else {
      throw_bad_request(part.name("type"), str("unknown content part type '", type, "'"));
    }
  }
  return text;
}

ToolCall parse_tool_call(const json& v, const std::string& path) {
  Fields f(v, path);
  ToolCall tc;
  tc.id = f.require_string("id");
  auto type = f.string("type");
  if (type && *type != "function")
    throw_bad_request(f.name("type"),
                      str("tool call type '", *type, "' is not supported (only 'function')"));
  const json* fn = f.object("function");
  if (!fn) throw_bad_request(f.name("function"), str("'", f.name("function"), "' is required"));
  Fields ff(*fn, f.name("function."));
  tc.name = ff.require_string("name");
  tc.arguments = ff.string("arguments").value_or("{}");
  return tc;
}

ChatMessage parse_message(const json& v, size_t i) {
  Fields f(v, str("messages[", i, "]."));
  ChatMessage m;
  m.role = f.require_string("role");
  if (m.role == "developer") m.role = "system";
  m.name = f.string("name").value_or("");
  if (m.role == "system" || m.role == "user") {
    m.content = content_text(f, false, false);
  } else if (m.role == "assistant") {
    if (const json* calls = f.array("tool_calls"))
      for (size_t k = 0; k < calls->size(); ++k)
        m.tool_calls.push_back(
            parse_tool_call((*calls)[k], str(f.name("tool_calls"), "[", k, "].")));
    if (f.get("function_call"))
      throw_bad_request(f.name("function_call"),
                        "'function_call' is deprecated and not supported: use tool_calls");
    m.content = content_text(f, true, true);
  } else if (m.role == "tool") {
    m.tool_call_id = f.require_string("tool_call_id");
    m.content = content_text(f, false, false);
  } else if (m.role == "function") {
    throw_bad_request(f.name("role"),
                      "role 'function' is deprecated and not supported: use role 'tool'");
  } else {
    throw_bad_request(f.name("role"), str("unknown role '", m.role, "'"));
  }
  return m;
}

// Tool names end up inside "functions.NAME:IDX" ids, so '.' and ':' could not round-trip.
bool valid_tool_name(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) return false;
  return true;
}

void parse_tools(const Fields& f, GenerationRequest& r) {
  if (const json* tools = f.array("tools")) {
    for (size_t i = 0; i < tools->size(); ++i) {
      Fields t((*tools)[i], str("tools[", i, "]."));
      std::string type = t.require_string("type");
      if (type != "function")
        throw_bad_request(t.name("type"),
                          str("tool type '", type, "' is not supported (only 'function')"));
      const json* fn = t.object("function");
      if (!fn) throw_bad_request(t.name("function"), str("'", t.name("function"), "' is required"));
      Fields ff(*fn, t.name("function."));
      ToolSpec spec;
      spec.name = ff.require_string("name");
      if (!valid_tool_name(spec.name))
        throw_bad_request(
            ff.name("name"),
            str("tool name '", spec.name, "' must be 1-64 characters of a-z, A-Z, 0-9, _ and -"));
      ff.string("description");
      ff.object("parameters");
      ff.boolean("strict");
      for (const auto& other : r.tools)
        if (other.name == spec.name)
          throw_bad_request(ff.name("name"), str("duplicate tool name '", spec.name, "'"));
      spec.declaration = (*tools)[i];
      r.tools.push_back(std::move(spec));
    }
  }
  r.tool_choice = r.tools.empty() ? ToolChoice::kNone : ToolChoice::kAuto;
  if (const json* tc = f.get("tool_choice")) {
    if (tc->is_string()) {
      std::string s = tc->get<std::string>();
      if (s == "none")
        r.tool_choice = ToolChoice::kNone;
      else if (s == "auto")
        r.tool_choice = ToolChoice::kAuto;
      else if (s == "required")
        r.tool_choice = ToolChoice::kRequired;
      else
        throw_bad_request("tool_choice", str("unknown tool_choice '", s, "'"));
    } else if (tc->is_object()) {
      Fields c(*tc, "tool_choice.");
      std::string type = c.require_string("type");
      if (type != "function")
        throw_bad_request("tool_choice", str("tool_choice type '", type, "' is not supported"));
      const json* fn = c.object("function");
      if (!fn) throw_bad_request("tool_choice.function", "'tool_choice.function' is required");
      r.tool_choice = ToolChoice::kNamed;
      r.tool_choice_name = Fields(*fn, "tool_choice.function.").require_string("name");
    } else {
      throw_bad_request("tool_choice", "'tool_choice' must be a string or an object");
    }
    if (r.tool_choice != ToolChoice::kNone && r.tools.empty())
      throw_bad_request("tool_choice", "'tool_choice' needs 'tools'");
    if (r.tool_choice == ToolChoice::kNamed) {
      bool known = false;
      for (const auto& t : r.tools) known |= t.name == r.tool_choice_name;
      if (!known)
        throw_bad_request("tool_choice", str("tool_choice names '", r.tool_choice_name,
                                             "', which is not in 'tools'"));
    }
  }
  // Honoured by tool_choice required's grammar; under auto the model decides.
  r.parallel_tool_calls = f.boolean("parallel_tool_calls").value_or(true);
}

std::vector<std::string> parse_stop(const Fields& f) {
  std::vector<std::string> out;
  const json* v = f.get("stop");
  if (!v) return out;
  if (v->is_string()) {
    if (!v->get<std::string>().empty()) out.push_back(v->get<std::string>());
    return out;
  }
  if (!v->is_array()) throw_bad_request("stop", "'stop' must be a string or an array of strings");
  if (v->size() > 16) throw_bad_request("stop", "'stop' may hold at most 16 strings");
  for (const auto& s : *v) {
    if (!s.is_string()) throw_bad_request("stop", "'stop' must be a string or an array of strings");
    if (!s.get<std::string>().empty()) out.push_back(s.get<std::string>());
  }
  return out;
}

int parse_token_id(const json& v, const std::string& param, int vocab) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab)
    throw_bad_request(param,
                      str("'", param, "' must hold token ids in [0, ", vocab, "), got ", v.dump()));
  return v.get<int>();
}

// A JSON schema as vLLM's guided_json / structured_outputs.json take it: the schema, or a string
// holding its JSON text (parsed in its own key order, the order of generated properties).
template <class J>
nlohmann::ordered_json schema_value(const J& v, const std::string& param) {
  if (!v.is_string()) return nlohmann::ordered_json(v);
  auto s = nlohmann::ordered_json::parse(v.template get<std::string>(), nullptr, false);
  if (s.is_discarded())
    throw_bad_request(param, str("'", param, "' is a string that is not valid JSON"));
  return s;
}

// The schema compiled, or a 400 naming the offending field of the schema under param.
std::shared_ptr<const JsonSchema> compile_schema(const nlohmann::ordered_json& schema,
                                                 const std::string& param) {
  SchemaError e;
  auto compiled = compile_json_schema(schema, &e);
  if (!compiled) {
    const std::string path = e.path.empty() ? param : param + "." + e.path;
    throw_bad_request(path, str("invalid JSON schema at '", path, "': ", e.message));
  }
  return compiled;
}

// One constraint on the output that the request asks for.
struct FormatAsk {
  std::string param;           // the field asking: "response_format.json_schema.schema", ...
  std::string what;            // for messages: "response_format json_object", "guided_json", ...
  const json* value;           // the schema, or a string holding it; nullptr: JSON mode
  std::optional<json> schema;  // the schema (a string's parsed), to compare; nullopt: JSON mode
};

constexpr const char* kChoiceRefused =
    "is not supported by this server: vLLM emits the bare text of the choice, which a JSON "
    "schema cannot express (an enum of strings gives it quoted: ask for that instead)";

// vLLM's structured_outputs object: json and json_object are asked for, backend options that
// change nothing here accepted, every other constraint refused by name.
void parse_structured_outputs(const json& so, std::vector<FormatAsk>& asks) {
  Fields sf(so, "structured_outputs.");
  for (auto it = so.begin(); it != so.end(); ++it) {
    const std::string& key = it.key();
    const std::string param = sf.name(key);
    if (it->is_null()) continue;
    if (key == "json") {
      asks.push_back({param, param, &*it, json(schema_value(*it, param))});
    } else if (key == "json_object") {
      if (*sf.boolean(key)) asks.push_back({param, param, nullptr, std::nullopt});
    } else if (key == "choice") {
      throw_bad_request(param, str("'", param, "' ", kChoiceRefused));
    } else if (key == "regex" || key == "grammar" || key == "structural_tag" ||
               key == "whitespace_pattern") {
      throw_bad_request(param, str("'", param,
                                   "' is not supported by this server: structured "
                                   "outputs take a JSON schema (structured_outputs.json)"));
    } else if (key == "disable_fallback") {
      sf.boolean(key);  // nothing to fall back to: a schema is compiled exactly or refused
    } else if (key == "disable_any_whitespace" || key == "disable_additional_properties") {
      if (*sf.boolean(key))
        throw_bad_request(param, str("'", param, "' is not supported by this server"));
    } else {
      throw_bad_request(param, str("unknown field '", param, "'"));
    }
  }
}

// response_format, and vLLM's extras guided_json and structured_outputs (json, json_object): each
// becomes JSON mode or a compiled schema, on one path. Several may be given only if they ask for
// the same thing (vLLM lets response_format's schema replace the others silently; a mismatch is
// more likely a client bug than a choice). Constraints that are not JSON are refused by name.
void parse_format(const Fields& f, GenerationRequest& r) {
  std::vector<FormatAsk> asks;
  if (const json* rf = f.object("response_format")) {
    Fields rff(*rf, "response_format.");
    const std::string type = rff.require_string("type");
    if (type == "json_object") {
      asks.push_back({"response_format", "response_format json_object", nullptr, std::nullopt});
    } else if (type == "json_schema") {
      const json* js = rff.object("json_schema");
      if (!js)
        throw_bad_request("response_format.json_schema",
                          "'response_format.json_schema' is required with type 'json_schema'");
      Fields jf(*js, "response_format.json_schema.");
      jf.require_string("name");
      jf.string("description");
      jf.boolean("strict");  // the schema is always enforced
      const json* schema = jf.get("schema");
      if (!schema)
        throw_bad_request("response_format.json_schema.schema",
                          "'response_format.json_schema.schema' is required");
      asks.push_back(
          {"response_format.json_schema.schema", "response_format json_schema", schema, *schema});
    } else if (type != "text") {
      throw_bad_request("response_format.type",
                        str("response_format type '", type,
                            "' is not one of 'text', 'json_object', 'json_schema'"));
    }
  }
  if (const json* g = f.get("guided_json"))
    asks.push_back({"guided_json", "guided_json", g, json(schema_value(*g, "guided_json"))});
  if (f.get("guided_choice"))
    throw_bad_request("guided_choice", str("'guided_choice' ", kChoiceRefused));
  for (const char* name : {"guided_regex", "guided_grammar", "guided_whitespace_pattern"})
    if (f.get(name))
      throw_bad_request(name,
                        str("'", name,
                            "' is not supported by this server: structured "
                            "outputs take a JSON schema (guided_json, structured_outputs.json "
                            "or response_format json_schema)"));
  if (const json* so = f.object("structured_outputs")) parse_structured_outputs(*so, asks);
  if (asks.empty()) return;
  for (const FormatAsk& a : asks)
    if (a.schema != asks[0].schema)
      throw_bad_request(a.param, str("'", asks[0].param, "' and '", a.param,
                                     "' ask for different output formats: give one of them"));
  // The EOS that ends the document may be neither ignored nor held back.
  const FormatAsk& a = asks[0];
  r.format_param = a.param;
  const std::string field = a.param.substr(0, a.param.find('.'));
  if (r.engine.ignore_eos)
    throw_bad_request(field, str("'ignore_eos' cannot be combined with ", a.what));
  if (r.engine.min_tokens > 0)
    throw_bad_request(field, str("'min_tokens' cannot be combined with ", a.what));
  if (!a.value) {
    r.engine.response_format = ResponseFormat::kJsonObject;
    return;
  }
  r.engine.response_format = ResponseFormat::kJsonSchema;
  // In nlohmann::json's sorted key order (a string keeps its own); parse_*_body compile it again
  // from the body in the client's order.
  r.engine.json_schema = compile_schema(schema_value(*a.value, a.param), a.param);
}

// tool_choice required / named: the grammar of the answer's tool calls
// (runtime/tool_call_matcher.h), as vLLM constrains them with structured outputs. Each function's
// arguments are compiled from its `parameters` in the order of r.tools_json (none: any object,
// as vLLM's `{"type": "object", "properties": {}}`), with response_format's 400s (param
// "tools[1].function.parameters..."); under a named choice only that function's, so that
// keywords this server cannot enforce elsewhere pass, as they do under auto. The calls are the
// whole answer and end with EOS: another output format (vLLM drops response_format and refuses
// structured_outputs with a named function), ignore_eos and min_tokens are refused.
void constrain_tool_calls(GenerationRequest& r) {
  if (!r.parse_tool_calls() || r.tool_choice == ToolChoice::kAuto) return;
  const std::string choice = r.tool_choice == ToolChoice::kRequired
                                 ? "tool_choice 'required'"
                                 : str("tool_choice '", r.tool_choice_name, "'");
  if (!r.format_param.empty()) {
    const std::string field = r.format_param.substr(0, r.format_param.find('.'));
    throw_bad_request(field, str("'", field, "' cannot be combined with ", choice,
                                 ": the answer is the tool call, in Kimi's tool-call format"));
  }
  if (r.engine.ignore_eos)
    throw_bad_request("tool_choice", str("'ignore_eos' cannot be combined with ", choice));
  if (r.engine.min_tokens > 0)
    throw_bad_request("tool_choice", str("'min_tokens' cannot be combined with ", choice));
  std::vector<ToolCallGrammar::Function> fns;
  for (size_t i = 0; i < r.tools.size(); ++i) {
    if (r.tool_choice == ToolChoice::kNamed && r.tools[i].name != r.tool_choice_name) continue;
    const nlohmann::ordered_json& fn = r.tools_json.at(i).at("function");
    auto p = fn.find("parameters");
    fns.push_back(
        {r.tools[i].name, p == fn.end() || p->is_null()
                              ? JsonSchema::any_object()
                              : compile_schema(*p, str("tools[", i, "].function.parameters"))});
  }
  r.engine.tool_calls = std::make_shared<const ToolCallGrammar>(
      std::move(fns), r.tool_choice == ToolChoice::kRequired, r.parallel_tool_calls,
      r.history_tool_calls());
}

// Fields common to both endpoints.
void parse_common(const Fields& f, const ParseLimits& lim, GenerationRequest& r) {
  r.model = f.string("model").value_or("");
  r.stream = f.boolean("stream").value_or(false);
  if (const json* so = f.object("stream_options")) {
    // Sent with stream:false by some SDK stacks: ignored there (serving.md §1.2).
    Fields s(*so, "stream_options.");
    r.include_usage = r.stream && s.boolean("include_usage").value_or(false);
    // vLLM: only together with include_usage.
    r.continuous_usage = r.include_usage && s.boolean("continuous_usage_stats").value_or(false);
  }
  r.request_id = f.string("request_id").value_or("");

  auto mct = f.integer("max_completion_tokens", 1, kMaxInt);
  auto mt = f.integer("max_tokens", 1, kMaxInt);
  r.max_tokens = mct ? mct : mt;

  SamplingParams& sp = r.engine.sampling;
  sp.temperature = float(f.number("temperature", 0, 2).value_or(1.0));
  sp.top_p = float(f.number("top_p", 0, 1).value_or(1.0));
  if (sp.top_p <= 0) throw_bad_request("top_p", "'top_p' must be in (0, 1]");
  sp.presence_penalty = float(f.number("presence_penalty", -2, 2).value_or(0));
  sp.frequency_penalty = float(f.number("frequency_penalty", -2, 2).value_or(0));
  sp.top_k = int(f.integer("top_k", -1, lim.vocab_size > 0 ? lim.vocab_size : kMaxInt).value_or(0));
  sp.min_p = float(f.number("min_p", 0, 1).value_or(0));
  // vLLM: any value > 0 (no upper bound, unlike the OpenAI penalties' -2..2).
  sp.repetition_penalty = float(
      f.number("repetition_penalty", 0, std::numeric_limits<float>::max()).value_or(1.0));
  if (sp.repetition_penalty <= 0)
    throw_bad_request("repetition_penalty", "'repetition_penalty' must be greater than 0");
  if (auto seed = f.integer("seed", std::numeric_limits<int64_t>::min(),
                            std::numeric_limits<int64_t>::max())) {
    sp.seed = uint64_t(*seed);
    r.engine.seed_given = true;
  }
  if (const json* lb = f.object("logit_bias")) {
    for (auto it = lb->begin(); it != lb->end(); ++it) {
      const std::string param = "logit_bias." + it.key();
      size_t pos = 0;
      long long id = -1;
      try {
        id = std::stoll(it.key(), &pos);
      } catch (const std::exception&) {
        pos = 0;
      }
      if (pos == 0 || pos != it.key().size() || id < 0 ||
          (lim.vocab_size > 0 && id >= lim.vocab_size))
        throw_bad_request("logit_bias", str("'logit_bias' key '", it.key(),
                                            "' is not a token id in [0, ", lim.vocab_size, ")"));
      if (!it.value().is_number() || std::fabs(it.value().get<double>()) > 100)
        throw_bad_request("logit_bias", str("'logit_bias' value for token ", id,
                                            " must be a number in [-100, 100]"));
      sp.logit_bias.emplace_back(int(id), it.value().get<float>());
    }
  }

  r.engine.n = int(f.integer("n", 1, lim.max_n).value_or(1));
  if (auto best_of = f.integer("best_of", 1, lim.max_n); best_of && *best_of != r.engine.n)
    throw_bad_request("best_of", "'best_of' different from 'n' is not supported");
  r.engine.stop = parse_stop(f);
  if (const json* ids = f.array("stop_token_ids"))
    for (const auto& v : *ids)
      r.engine.stop_token_ids.push_back(parse_token_id(v, "stop_token_ids", lim.vocab_size));
  r.engine.ignore_eos = f.boolean("ignore_eos").value_or(false);
  r.engine.min_tokens = int(f.integer("min_tokens", 0, kMaxInt).value_or(0));
  if (r.max_tokens && r.engine.min_tokens > *r.max_tokens)
    throw_bad_request("min_tokens", str("'min_tokens' must be less than or equal to 'max_tokens' (",
                                        *r.max_tokens, "), got ", r.engine.min_tokens));
  r.engine.include_stop_str_in_output = f.boolean("include_stop_str_in_output").value_or(false);
  r.engine.skip_special_tokens = f.boolean("skip_special_tokens").value_or(true);
  r.return_tokens_as_token_ids = f.boolean("return_tokens_as_token_ids").value_or(false);
  if (auto k = f.integer("prompt_logprobs", 0, 20)) {  // vLLM: not in a stream
    if (r.stream)
      throw_bad_request("prompt_logprobs",
                        "'prompt_logprobs' is not available when 'stream' is true");
    r.prompt_logprobs = true;
    r.engine.prompt_logprobs = int(*k);
  }
  // vLLM's range; used under --scheduling-policy priority, accepted and ignored under fcfs (as
  // vLLM's V1 engine does).
  r.engine.priority = f.integer("priority", std::numeric_limits<int64_t>::min(),
                                std::numeric_limits<int64_t>::max())
                          .value_or(0);
  parse_format(f, r);
  // vLLM extras the engine has no mechanism for: refuse rather than silently ignore.
  if (f.get("logits_processors"))
    throw_bad_request("logits_processors", "'logits_processors' is not supported");
  f.string("user");
}

}  // namespace

json parse_body(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw_bad_request("", "the request body is not valid JSON");
  if (!j.is_object()) throw_bad_request("", "the request body must be a JSON object");
  return j;
}

GenerationRequest parse_chat_request(const json& body, const ParseLimits& lim) {
  Fields f(body, "");
  GenerationRequest r;
  r.chat = true;
  const json* msgs = f.array("messages");
  if (!msgs) throw_bad_request("messages", "'messages' is required");
  if (msgs->empty()) throw_bad_request("messages", "'messages' must contain at least one message");
  for (size_t i = 0; i < msgs->size(); ++i) r.messages.push_back(parse_message((*msgs)[i], i));

  parse_common(f, lim, r);
  parse_tools(f, r);

  r.logprobs = f.boolean("logprobs").value_or(false);
  if (auto k = f.integer("top_logprobs", 0, 20)) {
    if (!r.logprobs && *k > 0)
      throw_bad_request("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    r.top_logprobs = int(*k);
  }
  r.engine.logprobs = r.logprobs ? r.top_logprobs : -1;

  r.add_generation_prompt = f.boolean("add_generation_prompt").value_or(true);
  r.continue_final_message = f.boolean("continue_final_message").value_or(false);
  if (r.continue_final_message && r.add_generation_prompt && f.get("add_generation_prompt"))
    throw_bad_request("continue_final_message",
                      "'continue_final_message' and 'add_generation_prompt' exclude each other");
  if (r.continue_final_message) {
    r.add_generation_prompt = false;
    if (r.messages.back().role != "assistant")
      throw_bad_request("continue_final_message",
                        "'continue_final_message' needs a final assistant message");
  }
  if (f.boolean("echo").value_or(false))
    throw_bad_request("echo", "'echo' is not supported for chat completions");
  f.object("chat_template_kwargs");  // the Kimi template takes no keyword arguments
  if (f.get("functions") || f.get("function_call"))
    throw_bad_request(
        f.get("functions") ? "functions" : "function_call",
        "'functions' / 'function_call' are deprecated and not supported: use 'tools'");
  if (f.get("audio")) throw_bad_request("audio", "audio output is not supported");
  if (const json* mod = f.array("modalities"))
    for (const auto& m : *mod)
      if (m != "text") throw_bad_request("modalities", "only the 'text' modality is supported");
  if (r.parse_tool_calls()) r.engine.skip_special_tokens = false;  // the parser reads the markers
  r.messages_json = nlohmann::ordered_json::parse(msgs->dump());
  if (!r.tools.empty()) r.tools_json = nlohmann::ordered_json::parse(f.get("tools")->dump());
  constrain_tool_calls(r);
  return r;
}

int GenerationRequest::history_tool_calls() const {
  int n = 0;
  for (const ChatMessage& m : messages) n += int(m.tool_calls.size());
  return n;
}

namespace {

// A JSON schema compiled again from the body in the client's key order (nlohmann::json sorts
// keys): the properties are generated in the schema's order.
void keep_schema_order(const nlohmann::ordered_json& body, GenerationRequest& r) {
  if (r.engine.response_format != ResponseFormat::kJsonSchema) return;
  std::string pointer = "/" + r.format_param;  // dotted field names, none with '/' or '~'
  std::replace(pointer.begin(), pointer.end(), '.', '/');
  r.engine.json_schema = compile_schema(
      schema_value(body.at(nlohmann::ordered_json::json_pointer(pointer)), r.format_param),
      r.format_param);
}

}  // namespace

GenerationRequest parse_chat_body(const std::string& body, const ParseLimits& limits) {
  GenerationRequest r = parse_chat_request(parse_body(body), limits);
  auto ordered = nlohmann::ordered_json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (ordered.is_object()) {
    r.messages_json = ordered["messages"];
    if (!r.tools.empty()) r.tools_json = ordered["tools"];
    keep_schema_order(ordered, r);
    constrain_tool_calls(r);  // again, in the client's key order
  }
  return r;
}

GenerationRequest parse_completion_body(const std::string& body, const ParseLimits& limits) {
  GenerationRequest r = parse_completion_request(parse_body(body), limits);
  auto ordered = nlohmann::ordered_json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (ordered.is_object()) keep_schema_order(ordered, r);
  return r;
}

GenerationRequest parse_completion_request(const json& body, const ParseLimits& lim) {
  Fields f(body, "");
  GenerationRequest r;
  r.chat = false;
  const json* p = f.get("prompt");
  if (!p) throw_bad_request("prompt", "'prompt' is required");
  auto bad = [] {
    throw_bad_request("prompt",
                      "'prompt' must be a string, an array of strings, an array of token ids or an "
                      "array of arrays of token ids");
  };
  auto ids_of = [&](const json& arr) {
    std::vector<int> ids;
    for (const auto& v : arr) ids.push_back(parse_token_id(v, "prompt", lim.vocab_size));
    if (ids.empty()) throw_bad_request("prompt", "'prompt' must not be empty");
    return ids;
  };
  if (p->is_string()) {
    r.prompt_texts.push_back(p->get<std::string>());
  } else if (p->is_array() && !p->empty()) {
    const json& first = (*p)[0];
    if (first.is_string()) {
      for (const auto& s : *p) {
        if (!s.is_string()) bad();
        r.prompt_texts.push_back(s.get<std::string>());
      }
    } else if (first.is_number()) {
      r.prompt_ids.push_back(ids_of(*p));
    } else if (first.is_array()) {
      for (const auto& a : *p) {
        if (!a.is_array()) bad();
        r.prompt_ids.push_back(ids_of(a));
      }
    } else {
      bad();
    }
  } else {
    bad();
  }
  for (const auto& t : r.prompt_texts)
    if (t.empty()) throw_bad_request("prompt", "'prompt' must not be empty");

  parse_common(f, lim, r);
  if (auto k = f.integer("logprobs", 0, 20)) {
    r.logprobs = true;
    r.top_logprobs = int(*k);
  }
  r.engine.logprobs = r.logprobs ? r.top_logprobs : -1;
  r.echo = f.boolean("echo").value_or(false);
  if (r.echo_logprobs())
    r.engine.prompt_logprobs = std::max(r.engine.prompt_logprobs, r.top_logprobs);
  if (auto suffix = f.string("suffix"); suffix && !suffix->empty())
    throw_bad_request("suffix", "'suffix' (insert mode) is not supported by this model");
  return r;
}

}  // namespace kimi::server
