// OpenAI request parsing and validation (server/openai_request.h): defaults, null = absent,
// unknown fields ignored, and a 400 naming the field for everything invalid or unsupported.
#include <gtest/gtest.h>

#include "runtime/json_matcher.h"
#include "runtime/tool_call_matcher.h"
#include "server/api_error.h"
#include "server/openai_request.h"
#include "server/prompt.h"

using kimi::server::ApiException;
using kimi::server::GenerationRequest;
using kimi::server::ParseLimits;
using kimi::server::ToolChoice;
using nlohmann::json;

namespace {

ParseLimits limits() {
  ParseLimits l;
  l.vocab_size = 1280;
  return l;
}

json chat(json extra = json::object()) {
  json b = {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}};
  for (auto it = extra.begin(); it != extra.end(); ++it) b[it.key()] = it.value();
  return b;
}

GenerationRequest parse_chat(const json& b) {
  return kimi::server::parse_chat_request(b, limits());
}
GenerationRequest parse_cmpl(const json& b) {
  return kimi::server::parse_completion_request(b, limits());
}

// The param an invalid body is rejected with ("<none>" when it is accepted).
std::string rejected_param(const json& b, bool is_chat = true) {
  try {
    is_chat ? parse_chat(b) : parse_cmpl(b);
  } catch (const ApiException& e) {
    EXPECT_EQ(e.error.status, 400);
    EXPECT_FALSE(e.error.message.empty());
    return e.error.param;
  }
  return "<none>";
}

}  // namespace

TEST(OpenAIRequest, ChatDefaults) {
  auto r = parse_chat(chat());
  EXPECT_TRUE(r.chat);
  EXPECT_EQ(r.model, "m");
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.include_usage);
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_EQ(r.engine.n, 1);
  EXPECT_FLOAT_EQ(r.engine.sampling.temperature, 1.f);
  EXPECT_FLOAT_EQ(r.engine.sampling.top_p, 1.f);
  EXPECT_FALSE(r.engine.seed_given);
  EXPECT_EQ(r.engine.logprobs, -1);
  EXPECT_EQ(r.tool_choice, ToolChoice::kNone);
  EXPECT_TRUE(r.engine.skip_special_tokens);
  EXPECT_TRUE(r.add_generation_prompt);
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0].role, "user");
  EXPECT_EQ(*r.messages[0].content, "hi");
}

TEST(OpenAIRequest, NullMeansAbsentAndUnknownFieldsAreIgnored) {
  auto r = parse_chat(chat({{"max_tokens", nullptr},
                            {"max_completion_tokens", nullptr},
                            {"stop", nullptr},
                            {"tools", nullptr},
                            {"tool_choice", nullptr},
                            {"temperature", nullptr},
                            {"stream_options", nullptr},
                            {"seed", nullptr},
                            {"logit_bias", nullptr},
                            {"n", nullptr},
                            {"user", nullptr},
                            {"response_format", nullptr},
                            {"store", true},
                            {"metadata", {{"a", "b"}}},
                            {"service_tier", "auto"},
                            {"prompt_cache_key", "k"},
                            {"safety_identifier", "x"},
                            {"reasoning_effort", "low"}}));
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_TRUE(r.engine.stop.empty());
  EXPECT_TRUE(r.tools.empty());
  EXPECT_FLOAT_EQ(r.engine.sampling.temperature, 1.f);
  EXPECT_EQ(r.engine.n, 1);
}

TEST(OpenAIRequest, ChatFieldsMapToTheEngineRequest) {
  auto r = parse_chat(
      chat({{"max_tokens", 7},
            {"max_completion_tokens", 9},
            {"temperature", 0},
            {"top_p", 0.5},
            {"n", 2},
            {"stop", "END"},
            {"seed", 42},
            {"stream", true},
            {"stream_options", {{"include_usage", true}, {"include_obfuscation", false}}},
            {"presence_penalty", 0.5},
            {"frequency_penalty", -1},
            {"logprobs", true},
            {"top_logprobs", 3},
            {"logit_bias", {{"5", 100}, {"7", -100}}},
            {"top_k", 4},
            {"min_p", 0.1},
            {"repetition_penalty", 1.1},
            {"ignore_eos", true},
            {"stop_token_ids", {3, 4}},
            {"include_stop_str_in_output", true},
            {"request_id", "abc"},
            {"user", "u"}}));
  EXPECT_EQ(*r.max_tokens, 9);  // max_completion_tokens wins
  EXPECT_TRUE(r.engine.sampling.greedy());
  EXPECT_FLOAT_EQ(r.engine.sampling.top_p, 0.5f);
  EXPECT_EQ(r.engine.n, 2);
  EXPECT_EQ(r.engine.stop, std::vector<std::string>{"END"});
  EXPECT_TRUE(r.engine.seed_given);
  EXPECT_EQ(r.engine.sampling.seed, 42u);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_FLOAT_EQ(r.engine.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.engine.sampling.frequency_penalty, -1.f);
  EXPECT_EQ(r.engine.logprobs, 3);
  ASSERT_EQ(r.engine.sampling.logit_bias.size(), 2u);
  EXPECT_EQ(r.engine.sampling.logit_bias[0], std::make_pair(5, 100.f));
  EXPECT_EQ(r.engine.sampling.logit_bias[1], std::make_pair(7, -100.f));
  EXPECT_EQ(r.engine.sampling.top_k, 4);
  EXPECT_FLOAT_EQ(r.engine.sampling.min_p, 0.1f);
  EXPECT_FLOAT_EQ(r.engine.sampling.repetition_penalty, 1.1f);
  EXPECT_TRUE(r.engine.ignore_eos);
  EXPECT_EQ(r.engine.stop_token_ids, (std::vector<int>{3, 4}));
  EXPECT_TRUE(r.engine.include_stop_str_in_output);
  EXPECT_EQ(r.request_id, "abc");
}

TEST(OpenAIRequest, StreamOptionsWithoutStreamAreIgnored) {
  auto r = parse_chat(chat({{"stream_options", {{"include_usage", true}}}}));
  EXPECT_FALSE(r.include_usage);
  auto s = parse_chat(chat({{"stream", true}, {"stream_options", json::object()}}));
  EXPECT_FALSE(s.include_usage);  // {} must not turn usage on (vLLM PR #36379)
}

// continuous_usage_stats (vLLM): usage on every chunk, only together with include_usage.
TEST(OpenAIRequest, ContinuousUsageStatsNeedIncludeUsage) {
  auto both = parse_chat(chat({{"stream", true},
                               {"stream_options", {{"include_usage", true}, {"continuous_usage_stats", true}}}}));
  EXPECT_TRUE(both.include_usage);
  EXPECT_TRUE(both.continuous_usage);
  auto alone = parse_chat(chat({{"stream", true}, {"stream_options", {{"continuous_usage_stats", true}}}}));
  EXPECT_FALSE(alone.include_usage);
  EXPECT_FALSE(alone.continuous_usage);
  auto unstreamed = parse_chat(
      chat({{"stream_options", {{"include_usage", true}, {"continuous_usage_stats", true}}}}));
  EXPECT_FALSE(unstreamed.continuous_usage);
  EXPECT_EQ(rejected_param(chat({{"stream", true},
                                 {"stream_options", {{"include_usage", true}, {"continuous_usage_stats", "yes"}}}})),
            "stream_options.continuous_usage_stats");
}

TEST(OpenAIRequest, StopArrayDropsEmptyStrings) {
  auto r = parse_chat(chat({{"stop", {"a", "", "\n"}}}));
  EXPECT_EQ(r.engine.stop, (std::vector<std::string>{"a", "\n"}));
}

TEST(OpenAIRequest, MessagesAreNormalised) {
  json msgs = {
      {{"role", "developer"},
       {"content", {{{"type", "text"}, {"text", "be "}}, {{"type", "text"}, {"text", "brief"}}}}},
      {{"role", "user"}, {"content", ""}, {"name", "bob"}},
      {{"role", "assistant"},
       {"content", nullptr},
       {"tool_calls",
        {{{"id", "functions.get_weather:0"},
          {"type", "function"},
          {"function", {{"name", "get_weather"}, {"arguments", "{\"city\":\"Paris\"}"}}}}}}},
      {{"role", "tool"}, {"tool_call_id", "functions.get_weather:0"}, {"content", "sunny"}}};
  auto r = parse_chat(chat({{"messages", msgs}}));
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(*r.messages[0].content, "be brief");
  EXPECT_EQ(r.messages[1].name, "bob");
  EXPECT_EQ(*r.messages[1].content, "");
  EXPECT_FALSE(r.messages[2].content.has_value());
  ASSERT_EQ(r.messages[2].tool_calls.size(), 1u);
  EXPECT_EQ(r.messages[2].tool_calls[0].id, "functions.get_weather:0");
  EXPECT_EQ(r.messages[2].tool_calls[0].name, "get_weather");
  EXPECT_EQ(r.messages[2].tool_calls[0].arguments, "{\"city\":\"Paris\"}");
  EXPECT_EQ(r.messages[3].tool_call_id, "functions.get_weather:0");
}

TEST(OpenAIRequest, ToolsAndToolChoice) {
  json tools = {
      {{"type", "function"},
       {"function",
        {{"name", "get_weather"}, {"description", "d"}, {"parameters", {{"type", "object"}}}}}}};
  auto r = parse_chat(chat({{"tools", tools}}));
  ASSERT_EQ(r.tools.size(), 1u);
  EXPECT_EQ(r.tools[0].name, "get_weather");
  EXPECT_EQ(r.tool_choice, ToolChoice::kAuto);
  EXPECT_TRUE(r.parse_tool_calls());
  EXPECT_FALSE(r.engine.skip_special_tokens);  // the parser needs the marker text

  auto none = parse_chat(chat({{"tools", tools}, {"tool_choice", "none"}}));
  EXPECT_FALSE(none.parse_tool_calls());
  auto req = parse_chat(chat({{"tools", tools}, {"tool_choice", "required"}}));
  EXPECT_EQ(req.tool_choice, ToolChoice::kRequired);
  auto named = parse_chat(
      chat({{"tools", tools},
            {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}}));
  EXPECT_EQ(named.tool_choice, ToolChoice::kNamed);
  EXPECT_EQ(named.tool_choice_name, "get_weather");

  EXPECT_EQ(rejected_param(
                chat({{"tools", tools},
                      {"tool_choice", {{"type", "function"}, {"function", {{"name", "other"}}}}}})),
            "tool_choice");
  EXPECT_EQ(rejected_param(chat({{"tool_choice", "required"}})), "tool_choice");
  EXPECT_EQ(rejected_param(chat({{"tools", tools}, {"tool_choice", "sometimes"}})), "tool_choice");
  EXPECT_EQ(rejected_param(chat({{"tools", {{{"type", "custom"}, {"custom", {{"name", "x"}}}}}}})),
            "tools[0].type");
  EXPECT_EQ(
      rejected_param(chat({{"tools", {{{"type", "function"}, {"function", {{"name", "a.b"}}}}}}})),
      "tools[0].function.name");
  EXPECT_EQ(rejected_param(
                chat({{"tools", {{{"type", "function"}, {"function", {{"description", "x"}}}}}}})),
            "tools[0].function.name");
  json dup = {tools[0], tools[0]};
  EXPECT_EQ(rejected_param(chat({{"tools", dup}})), "tools[1].function.name");
}

// tool_choice required / named constrain the answer (vLLM's structured outputs for tools): the
// engine request carries the grammar, with each function's parameters compiled (absent: any
// object) and the ids numbered after the history's calls; unsupported schema keywords are 400s
// naming their path under tools[i].function.parameters, but only for the functions the choice
// constrains (auto passes them through untouched); another output format, ignore_eos and
// min_tokens are refused with a forced choice.
TEST(OpenAIRequest, ForcedToolChoiceConstrainsTheArguments) {
  const json weather = {{"type", "function"},
                        {"function",
                         {{"name", "get_weather"},
                          {"parameters",
                           {{"type", "object"},
                            {"properties", {{"city", {{"type", "string"}}}}},
                            {"required", {"city"}}}}}}};
  const json bare = {{"type", "function"}, {"function", {{"name", "now"}}}};
  const json fancy = {{"type", "function"},
                      {"function",
                       {{"name", "fancy"},
                        {"parameters",
                         {{"type", "object"},
                          {"properties", {{"code", {{"type", "string"}, {"pattern", "^a"}}}}}}}}}};
  const json tools = {weather, bare, fancy};
  const json named_weather = {{"type", "function"}, {"function", {{"name", "get_weather"}}}};
  const json history = {{{"role", "user"}, {"content", "hi"}},
                        {{"role", "assistant"},
                         {"content", nullptr},
                         {"tool_calls",
                          {{{"id", "functions.now:0"},
                            {"type", "function"},
                            {"function", {{"name", "now"}, {"arguments", "{}"}}}},
                           {{"id", "functions.now:1"},
                            {"type", "function"},
                            {"function", {{"name", "now"}, {"arguments", "{}"}}}}}}},
                        {{"role", "tool"}, {"tool_call_id", "functions.now:0"}, {"content", "9"}},
                        {{"role", "tool"}, {"tool_call_id", "functions.now:1"}, {"content", "9"}}};

  // Auto and none: no grammar, and a schema this server cannot enforce is fine.
  for (const json& choice : {json("auto"), json("none"), json(nullptr)}) {
    auto r = parse_chat(chat({{"tools", tools}, {"tool_choice", choice}}));
    EXPECT_EQ(r.engine.tool_calls, nullptr) << choice.dump();
  }
  // Named: the one function, whose schema is enforced; the others are not compiled.
  auto named = parse_chat(chat({{"tools", tools}, {"tool_choice", named_weather}}));
  ASSERT_NE(named.engine.tool_calls, nullptr);
  const kimi::ToolCallGrammar& g = *named.engine.tool_calls;
  EXPECT_FALSE(g.required);
  ASSERT_EQ(g.functions.size(), 1u);
  EXPECT_EQ(g.functions[0].name, "get_weather");
  EXPECT_EQ(g.first_index, 0);
  kimi::JsonMatcher args(g.functions[0].parameters), bad = args;
  EXPECT_TRUE(args.step(std::string_view(R"({"city": "Oslo"})")) && args.complete());
  EXPECT_FALSE(bad.step(std::string_view(R"({"town")")));
  // Required: every function, sorted by name; no parameters is any object; numbered after the
  // two calls in the history; parallel_tool_calls false allows one call.
  auto req = parse_chat(chat({{"messages", history},
                              {"tools", {weather, bare}},
                              {"tool_choice", "required"},
                              {"parallel_tool_calls", false}}));
  ASSERT_NE(req.engine.tool_calls, nullptr);
  const kimi::ToolCallGrammar& rg = *req.engine.tool_calls;
  EXPECT_TRUE(rg.required);
  EXPECT_FALSE(rg.parallel);
  EXPECT_EQ(rg.first_index, 2);
  ASSERT_EQ(rg.functions.size(), 2u);
  EXPECT_EQ(rg.functions[0].name, "get_weather");
  EXPECT_EQ(rg.functions[1].name, "now");
  EXPECT_EQ(rg.functions[1].parameters, kimi::JsonSchema::any_object());
  EXPECT_TRUE(parse_chat(chat({{"tools", json::array({weather})}, {"tool_choice", "required"}}))
                  .engine.tool_calls->parallel);
  auto named_later =
      parse_chat(chat({{"messages", history}, {"tools", tools}, {"tool_choice", named_weather}}));
  EXPECT_EQ(named_later.engine.tool_calls->first_index, 2);

  // The 400s.
  const json named_fancy = {{"type", "function"}, {"function", {{"name", "fancy"}}}};
  EXPECT_EQ(rejected_param(chat({{"tools", tools}, {"tool_choice", "required"}})),
            "tools[2].function.parameters.properties.code.pattern");
  EXPECT_EQ(rejected_param(chat({{"tools", tools}, {"tool_choice", named_fancy}})),
            "tools[2].function.parameters.properties.code.pattern");
  for (const json& format :
       {json{{"response_format", {{"type", "json_object"}}}},
        json{{"response_format",
              {{"type", "json_schema"},
               {"json_schema", {{"name", "x"}, {"schema", {{"type", "object"}}}}}}}},
        json{{"guided_json", {{"type", "object"}}}},
        json{{"structured_outputs", {{"json_object", true}}}}}) {
    for (const json& choice : {json("required"), named_weather}) {
      json body = chat({{"tools", json::array({weather})}, {"tool_choice", choice}});
      body.update(format);
      EXPECT_EQ(rejected_param(body), format.begin().key()) << body.dump();
    }
    json text = chat({{"tools", json::array({weather})}, {"tool_choice", "auto"}});
    text.update(format);
    EXPECT_EQ(rejected_param(text), "<none>") << "auto keeps its format";
  }
  EXPECT_EQ(rejected_param(chat({{"tools", json::array({weather})},
                                 {"tool_choice", "required"},
                                 {"response_format", {{"type", "text"}}}})),
            "<none>");
  EXPECT_EQ(rejected_param(
                chat({{"tools", tools}, {"tool_choice", "required"}, {"ignore_eos", true}})),
            "tool_choice");
  EXPECT_EQ(rejected_param(
                chat({{"tools", tools}, {"tool_choice", named_weather}, {"min_tokens", 2}})),
            "tool_choice");
}

// The arguments' properties come in the client's key order, as a response format's do.
TEST(OpenAIRequest, ForcedToolArgumentsKeepTheClientsKeyOrder) {
  const std::string body = R"({"model": "m", "messages": [{"role": "user", "content": "hi"}],
      "tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f",
      "parameters": {"type": "object", "properties": {"b": {"type": "integer"},
      "a": {"type": "integer"}}, "required": ["b", "a"]}}}]})";
  GenerationRequest r = kimi::server::parse_chat_body(body, limits());
  ASSERT_NE(r.engine.tool_calls, nullptr);
  kimi::JsonMatcher m(r.engine.tool_calls->functions[0].parameters), wrong = m;
  EXPECT_TRUE(m.step(std::string_view(R"({"b": 1, "a": 2})")) && m.complete());
  EXPECT_FALSE(wrong.step(std::string_view(R"({"a")")));
}

TEST(OpenAIRequest, InvalidChatFieldsAreRejectedByName) {
  EXPECT_EQ(rejected_param({{"model", "m"}}), "messages");
  EXPECT_EQ(rejected_param(chat({{"messages", json::array()}})), "messages");
  EXPECT_EQ(rejected_param(chat({{"messages", "hi"}})), "messages");
  EXPECT_EQ(rejected_param(chat({{"messages", {{{"role", "wizard"}, {"content", "x"}}}}})),
            "messages[0].role");
  EXPECT_EQ(rejected_param(chat({{"messages", {{{"content", "x"}}}}})), "messages[0].role");
  EXPECT_EQ(rejected_param(chat({{"messages", {{{"role", "user"}}}}})), "messages[0].content");
  EXPECT_EQ(rejected_param(chat({{"messages", {{{"role", "user"}, {"content", 5}}}}})),
            "messages[0].content");
  EXPECT_EQ(
      rejected_param(chat({{"messages",
                            {{{"role", "user"},
                              {"content",
                               {{{"type", "text"}, {"text", "a"}},
                                {{"type", "image_url"}, {"image_url", {{"url", "u"}}}}}}}}}})),
      "messages[0].content[1].type");
  EXPECT_EQ(rejected_param(chat({{"messages", {{{"role", "tool"}, {"content", "x"}}}}})),
            "messages[0].tool_call_id");
  EXPECT_EQ(rejected_param(
                chat({{"messages", {{{"role", "function"}, {"content", "x"}, {"name", "f"}}}}})),
            "messages[0].role");
  EXPECT_EQ(rejected_param(chat({{"temperature", 5}})), "temperature");
  EXPECT_EQ(rejected_param(chat({{"temperature", "hot"}})), "temperature");
  EXPECT_EQ(rejected_param(chat({{"top_p", 0}})), "top_p");
  EXPECT_EQ(rejected_param(chat({{"top_p", 1.5}})), "top_p");
  EXPECT_EQ(rejected_param(chat({{"n", 0}})), "n");
  EXPECT_EQ(rejected_param(chat({{"n", 129}})), "n");
  EXPECT_EQ(rejected_param(chat({{"n", 1.5}})), "n");
  EXPECT_EQ(parse_chat(chat({{"n", 2.0}})).engine.n, 2);
  EXPECT_EQ(rejected_param(chat({{"max_tokens", 0}})), "max_tokens");
  EXPECT_EQ(rejected_param(chat({{"max_completion_tokens", -3}})), "max_completion_tokens");
  EXPECT_EQ(rejected_param(chat({{"presence_penalty", 2.5}})), "presence_penalty");
  EXPECT_EQ(rejected_param(chat({{"frequency_penalty", -3}})), "frequency_penalty");
  // repetition_penalty: vLLM's range, any value > 0.
  auto strong = parse_chat(chat({{"repetition_penalty", 2.5}}));
  EXPECT_FLOAT_EQ(strong.engine.sampling.repetition_penalty, 2.5f);
  EXPECT_EQ(rejected_param(chat({{"repetition_penalty", 0}})), "repetition_penalty");
  EXPECT_EQ(rejected_param(chat({{"repetition_penalty", -1}})), "repetition_penalty");
  EXPECT_EQ(rejected_param(chat({{"repetition_penalty", 1e300}})), "repetition_penalty");
  EXPECT_EQ(rejected_param(chat({{"stop", 5}})), "stop");
  EXPECT_EQ(rejected_param(chat({{"stop", {"a", 1}}})), "stop");
  EXPECT_EQ(rejected_param(chat({{"seed", "x"}})), "seed");
  EXPECT_EQ(rejected_param(chat({{"stream", "yes"}})), "stream");
  EXPECT_EQ(rejected_param(chat({{"stream", true}, {"stream_options", {{"include_usage", 1}}}})),
            "stream_options.include_usage");
  EXPECT_EQ(rejected_param(chat({{"top_logprobs", 2}})), "top_logprobs");
  EXPECT_EQ(rejected_param(chat({{"logprobs", true}, {"top_logprobs", 21}})), "top_logprobs");
  EXPECT_EQ(rejected_param(chat({{"logprobs", 1}})), "logprobs");
  EXPECT_EQ(rejected_param(chat({{"logit_bias", {{"x", 1}}}})), "logit_bias");
  EXPECT_EQ(rejected_param(chat({{"logit_bias", {{"99999", 1}}}})), "logit_bias");
  EXPECT_EQ(rejected_param(chat({{"logit_bias", {{"5", 101}}}})), "logit_bias");
  EXPECT_EQ(rejected_param(chat({{"logit_bias", {1, 2}}})), "logit_bias");
  EXPECT_EQ(rejected_param(chat({{"stop_token_ids", {1280}}})), "stop_token_ids");
  EXPECT_EQ(rejected_param(chat({{"response_format", {{"type", "text"}}}})), "<none>");
  EXPECT_EQ(parse_chat(chat({{"response_format", {{"type", "json_object"}}}})).engine.response_format,
            kimi::ResponseFormat::kJsonObject);
  EXPECT_EQ(parse_chat(chat({{"response_format", {{"type", "text"}}}})).engine.response_format,
            kimi::ResponseFormat::kText);
  EXPECT_EQ(rejected_param(chat({{"response_format", {{"type", "json_schema"}}}})),
            "response_format.json_schema");
  EXPECT_EQ(rejected_param(chat({{"response_format", {{"type", "xml"}}}})), "response_format.type");
  EXPECT_EQ(rejected_param(chat({{"response_format", {{"kind", "json_object"}}}})), "response_format.type");
  EXPECT_EQ(rejected_param(chat({{"response_format", {{"type", "json_object"}}}, {"ignore_eos", true}})),
            "response_format");
  EXPECT_EQ(rejected_param(chat({{"response_format", {{"type", "json_object"}}}, {"min_tokens", 2}})),
            "response_format");
  EXPECT_EQ(rejected_param(chat({{"functions", {{{"name", "f"}}}}})), "functions");
  EXPECT_EQ(rejected_param(chat({{"min_tokens", 3}})), "<none>");
  EXPECT_EQ(parse_chat(chat({{"min_tokens", 3}})).engine.min_tokens, 3);
  EXPECT_EQ(rejected_param(chat({{"min_tokens", 0}})), "<none>");
  EXPECT_EQ(rejected_param(chat({{"min_tokens", -1}})), "min_tokens");
  EXPECT_EQ(rejected_param(chat({{"min_tokens", 1.5}})), "min_tokens");
  EXPECT_EQ(rejected_param(chat({{"min_tokens", 5}, {"max_tokens", 4}})), "min_tokens");
  EXPECT_EQ(rejected_param(chat({{"min_tokens", 4}, {"max_tokens", 4}})), "<none>");
  EXPECT_EQ(rejected_param(chat({{"seed", uint64_t(1) << 63}})), "seed");  // int64, not wrapped
  EXPECT_EQ(rejected_param(chat({{"echo", true}})), "echo");
  EXPECT_EQ(rejected_param(chat({{"best_of", 3}})), "best_of");
  EXPECT_EQ(rejected_param(chat({{"audio", {{"voice", "x"}}}})), "audio");
  EXPECT_EQ(rejected_param(chat({{"modalities", {"text", "audio"}}})), "modalities");
  EXPECT_EQ(rejected_param(chat({{"model", 3}})), "model");
  EXPECT_EQ(rejected_param(chat({{"continue_final_message", true}})), "continue_final_message");
}

// vLLM's priority extra: any int64 on both routes (the engine ignores it under fcfs); other
// values are a 400 naming it.
TEST(OpenAIRequest, Priority) {
  EXPECT_EQ(parse_chat(chat()).engine.priority, 0);
  EXPECT_EQ(parse_chat(chat({{"priority", nullptr}})).engine.priority, 0);
  EXPECT_EQ(parse_chat(chat({{"priority", -7}})).engine.priority, -7);
  EXPECT_EQ(parse_chat(chat({{"priority", 3.0}})).engine.priority, 3);
  EXPECT_EQ(parse_chat(chat({{"priority", INT64_MAX}})).engine.priority, INT64_MAX);
  EXPECT_EQ(parse_chat(chat({{"priority", INT64_MIN}})).engine.priority, INT64_MIN);
  const json cmpl = {{"model", "m"}, {"prompt", "hi"}, {"priority", 1u << 31}};
  EXPECT_EQ(parse_cmpl(cmpl).engine.priority, int64_t(1) << 31);
  for (const json& bad : {json(1.5), json("1"), json(true), json::array({1}),
                          json(uint64_t(INT64_MAX) + 1), json(1e19)}) {
    EXPECT_EQ(rejected_param(chat({{"priority", bad}})), "priority") << bad.dump();
    const json cmpl_bad = {{"prompt", "hi"}, {"priority", bad}};
    EXPECT_EQ(rejected_param(cmpl_bad, false), "priority") << bad.dump();
  }
}

TEST(OpenAIRequest, BodyMustBeAJsonObject) {
  for (const char* body : {"{", "[1,2]", "\"x\"", ""}) {
    try {
      kimi::server::parse_body(body);
      ADD_FAILURE() << body;
    } catch (const ApiException& e) {
      EXPECT_EQ(e.error.status, 400);
    }
  }
  EXPECT_TRUE(kimi::server::parse_body("{\"a\":1}").is_object());
}

TEST(OpenAIRequest, CompletionPrompts) {
  auto s = parse_cmpl({{"prompt", "hello"}, {"max_tokens", 5}});
  EXPECT_FALSE(s.chat);
  EXPECT_EQ(s.prompt_texts, std::vector<std::string>{"hello"});
  EXPECT_EQ(*s.max_tokens, 5);
  EXPECT_EQ(s.num_prompts(), 1);
  auto list = parse_cmpl({{"prompt", {"a", "b"}}});
  EXPECT_EQ(list.num_prompts(), 2);
  auto ids = parse_cmpl({{"prompt", {1, 2, 3}}});
  ASSERT_EQ(ids.prompt_ids.size(), 1u);
  EXPECT_EQ(ids.prompt_ids[0], (std::vector<int>{1, 2, 3}));
  auto batch = parse_cmpl({{"prompt", {{1, 2}, {3}}}});
  EXPECT_EQ(batch.num_prompts(), 2);
  auto lp = parse_cmpl({{"prompt", "x"}, {"logprobs", 2}, {"echo", false}});
  EXPECT_TRUE(lp.logprobs);
  EXPECT_EQ(lp.engine.logprobs, 2);
  auto lp0 = parse_cmpl({{"prompt", "x"}, {"logprobs", 0}});
  EXPECT_EQ(lp0.engine.logprobs, 0);
  auto nolp = parse_cmpl({{"prompt", "x"}, {"logprobs", nullptr}, {"repetition_penalty", 1.0}});
  EXPECT_EQ(nolp.engine.logprobs, -1);
  EXPECT_TRUE(parse_cmpl({{"prompt", "x"}, {"echo", true}}).echo);
  EXPECT_EQ(parse_cmpl({{"prompt", "x"}, {"echo", true}}).engine.prompt_logprobs, -1);
  // echo with logprobs asks the engine for the prompt's logprobs too (lm-eval's loglikelihood).
  auto echo_lp = parse_cmpl({{"prompt", "x"}, {"echo", true}, {"logprobs", 3}});
  EXPECT_TRUE(echo_lp.echo_logprobs());
  EXPECT_EQ(echo_lp.engine.prompt_logprobs, 3);
  EXPECT_EQ(echo_lp.engine.logprobs, 3);
  // vLLM's prompt_logprobs, alone or beside echo (the engine computes the larger k).
  auto plp = parse_cmpl({{"prompt", "x"}, {"prompt_logprobs", 0}});
  EXPECT_TRUE(plp.prompt_logprobs);
  EXPECT_FALSE(plp.echo_logprobs());
  EXPECT_EQ(plp.engine.prompt_logprobs, 0);
  EXPECT_EQ(parse_cmpl({{"prompt", "x"}, {"prompt_logprobs", 5}, {"echo", true}, {"logprobs", 2}})
                .engine.prompt_logprobs,
            5);
  EXPECT_EQ(
      parse_chat({{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"prompt_logprobs", 1}})
          .engine.prompt_logprobs,
      1);

  EXPECT_EQ(rejected_param({{"model", "m"}}, false), "prompt");
  EXPECT_EQ(rejected_param({{"prompt", ""}}, false), "prompt");
  EXPECT_EQ(rejected_param({{"prompt", json::array()}}, false), "prompt");
  EXPECT_EQ(rejected_param({{"prompt", {1, "a"}}}, false), "prompt");
  EXPECT_EQ(rejected_param({{"prompt", {1, 5000}}}, false), "prompt");
  EXPECT_EQ(rejected_param({{"prompt", {{1}, json::array()}}}, false), "prompt");
  EXPECT_EQ(rejected_param({{"prompt", 7}}, false), "prompt");
  EXPECT_EQ(rejected_param({{"prompt", "x"}, {"logprobs", true}}, false), "logprobs");
  EXPECT_EQ(rejected_param({{"prompt", "x"}, {"logprobs", 21}}, false), "logprobs");
  EXPECT_EQ(rejected_param({{"prompt", "x"}, {"prompt_logprobs", 21}}, false), "prompt_logprobs");
  EXPECT_EQ(rejected_param({{"prompt", "x"}, {"prompt_logprobs", -1}}, false), "prompt_logprobs");
  EXPECT_EQ(rejected_param({{"prompt", "x"}, {"prompt_logprobs", 1}, {"stream", true}}, false),
            "prompt_logprobs");
  EXPECT_EQ(rejected_param({{"prompt", "x"}, {"suffix", "y"}}, false), "suffix");
  EXPECT_EQ(rejected_param({{"prompt", "x"}, {"suffix", ""}}, false), "<none>");
  EXPECT_EQ(rejected_param({{"prompt", "x"}, {"best_of", 2}}, false), "best_of");
  EXPECT_EQ(rejected_param({{"prompt", "x"}, {"n", 2}, {"best_of", 2}}, false), "<none>");
}

namespace {

json schema_format(json schema) {
  return {{"type", "json_schema"},
          {"json_schema", {{"name", "answer"}, {"strict", true}, {"schema", std::move(schema)}}}};
}

}  // namespace

// response_format json_schema: accepted on both routes with the schema compiled; the properties
// keep the body's key order; every malformed or unsupported schema is a 400 whose param is the
// path of the offending field inside the schema.
TEST(OpenAIRequest, JsonSchemaResponseFormat) {
  const json schema = {{"type", "object"},
                       {"properties", {{"a", {{"type", "integer"}}}}},
                       {"required", {"a"}},
                       {"additionalProperties", false}};
  for (bool is_chat : {true, false}) {
    json body = is_chat ? chat() : json{{"model", "m"}, {"prompt", "hi"}};
    body["response_format"] = schema_format(schema);
    GenerationRequest r = is_chat ? parse_chat(body) : parse_cmpl(body);
    EXPECT_EQ(r.engine.response_format, kimi::ResponseFormat::kJsonSchema);
    ASSERT_NE(r.engine.json_schema, nullptr);
    kimi::JsonMatcher m(r.engine.json_schema);
    EXPECT_TRUE(m.step(std::string_view("{\"a\": 7}")) && m.complete());
  }

  // The body's key order: "b" before "a", both required.
  const std::string tail =
      R"(, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": )"
      R"({"type": "object", "properties": {"b": {"type": "null"}, "a": {"type": "null"}},)"
      R"( "required": ["b", "a"]}}}})";
  for (bool is_chat : {true, false}) {
    const std::string body =
        (is_chat ? R"({"messages": [{"role": "user", "content": "hi"}])" : R"({"prompt": "hi")") + tail;
    GenerationRequest r = is_chat ? kimi::server::parse_chat_body(body, limits())
                                  : kimi::server::parse_completion_body(body, limits());
    kimi::JsonMatcher ordered(r.engine.json_schema), other = ordered;
    EXPECT_TRUE(ordered.step(std::string_view(R"({"b":null,"a":null})")) && ordered.complete());
    EXPECT_FALSE(other.step(std::string_view(R"({"a")")));
  }

  auto param_of = [](json response_format, json extra = json::object()) {
    json body = chat(std::move(extra));
    body["response_format"] = std::move(response_format);
    return rejected_param(body);
  };
  const std::string s = "response_format.json_schema.schema";
  EXPECT_EQ(param_of({{"type", "json_schema"}, {"json_schema", {{"schema", schema}}}}),
            "response_format.json_schema.name");
  EXPECT_EQ(param_of({{"type", "json_schema"}, {"json_schema", {{"name", "x"}}}}), s);
  EXPECT_EQ(param_of({{"type", "json_schema"}, {"json_schema", "x"}}), "response_format.json_schema");
  EXPECT_EQ(param_of({{"type", "json_schema"}, {"json_schema", {{"name", "x"}, {"strict", "yes"}, {"schema", schema}}}}),
            "response_format.json_schema.strict");
  EXPECT_EQ(param_of(schema_format(schema), {{"ignore_eos", true}}), "response_format");
  EXPECT_EQ(param_of(schema_format(schema), {{"min_tokens", 2}}), "response_format");

  const std::pair<json, std::string> bad[] = {
      {5, s},                                                   // not a schema
      {json::array(), s},
      {{{"type", "strin"}}, s + ".type"},                       // unknown type name
      {{{"type", {"string", 3}}}, s + ".type[1]"},
      {{{"type", json::array()}}, s + ".type"},
      {{{"$ref", "#/$defs/missing"}}, s + ".$ref"},             // bad $ref
      {{{"$ref", "https://example.com/s.json"}}, s + ".$ref"},
      {{{"$ref", 3}}, s + ".$ref"},
      {{{"properties", {{"a", {{"type", "string"}}}}}, {"required", {"b"}}}, s + ".required[0]"},
      {{{"properties", {{"a", {{"type", "string"}}}}}, {"required", "a"}}, s + ".required"},
      {{{"properties", {{"a", {{"type", "string"}, {"pattern", "^x"}}}}}}, s + ".properties.a.pattern"},
      {{{"type", "string"}, {"minLength", 1}}, s + ".minLength"},
      {{{"type", "string"}, {"format", "date"}}, s + ".format"},
      {{{"type", "number"}, {"minimum", 0}}, s + ".minimum"},
      {{{"oneOf", {{{"type", "string"}}}}}, s + ".oneOf"},
      {{{"allOf", {{{"type", "string"}}}}}, s + ".allOf"},
      {{{"type", "object"}, {"patternProperties", json::object()}}, s + ".patternProperties"},
      {{{"type", "array"}, {"prefixItems", json::array()}}, s + ".prefixItems"},
      {{{"items", {{{"type", "string"}}}}}, s + ".items"},        // tuple form
      {{{"enum", {{{"a", 1}}}}}, s + ".enum[0]"},               // non-scalar enum
      {{{"enum", "a"}}, s + ".enum"},
      {{{"const", json::array()}}, s + ".const"},
      {{{"type", "array"}, {"minItems", 3}, {"maxItems", 2}}, s + ".minItems"},
      {{{"type", "array"}, {"minItems", -1}}, s + ".minItems"},
      {{{"type", "array"}, {"maxItems", 1.5}}, s + ".maxItems"},
      {{{"anyOf", json::array()}}, s + ".anyOf"},
      {{{"anyOf", {{{"type", "string"}}}}, {"type", "string"}}, s + ".type"},  // beside anyOf
      {{{"$ref", "#"}, {"type", "object"}}, s + ".type"},
      {{{"additionalProperties", "no"}}, s + ".additionalProperties"},
      {{{"properties", {{"a", {{"type", "wrong"}}}}}}, s + ".properties.a.type"},
      {{{"$defs", {{"a", {{"$ref", "#/$defs/a"}}}}}, {"$ref", "#/$defs/a"}}, s + ".$defs.a"},  // cycle
      {{{"definitions", {{"n", {{"type", "integer"}}}}}, {"$ref", "#/definitions/m"}}, s + ".$ref"},
      {{{"$defs", {{"unused", {{"type", "string"}, {"maxLength", 3}}}}}, {"type", "null"}}, s + ".$defs.unused.maxLength"},
      {{{"$defs", 3}, {"type", "null"}}, s + ".$defs"},
      // Admits no document: a required self-reference, an enum none of whose values has the type.
      {{{"type", "object"}, {"properties", {{"self", {{"$ref", "#"}}}}}, {"required", {"self"}}}, s},
      {{{"type", "string"}, {"enum", {1, 2}}}, s},
      {false, s},
  };
  for (const auto& [sch, param] : bad) EXPECT_EQ(param_of(schema_format(sch)), param) << sch.dump();
  // Size limits: anyOf alternatives (each a matcher thread), properties per object.
  json wide = json::array(), props = json::object();
  for (int i = 0; i < 300; ++i) wide.push_back({{"const", i}});
  for (int i = 0; i < 1100; ++i) props[std::to_string(i)] = {{"type", "null"}};
  EXPECT_EQ(param_of(schema_format({{"anyOf", wide}})), s);
  EXPECT_EQ(param_of(schema_format({{"properties", props}})), s + ".properties");
  // Nesting deeper than the compiler recurses: a 400, not a stack overflow.
  json deep = {{"type", "integer"}};
  for (int i = 0; i < 2000; ++i) deep = {{"type", "array"}, {"items", std::move(deep)}};
  EXPECT_EQ(param_of(schema_format(deep)).rfind(s + ".items.items", 0), 0u);
}

namespace {

// The 400 an invalid body gets ("<none>" when it is accepted): param, then message.
std::pair<std::string, std::string> rejection(const json& b, bool is_chat = true) {
  try {
    is_chat ? parse_chat(b) : parse_cmpl(b);
  } catch (const ApiException& e) {
    return {e.error.param, e.error.message};
  }
  return {"<none>", ""};
}

}  // namespace

// vLLM's structured-output extras: guided_json and structured_outputs.json (a schema or a JSON
// string of one) compile onto the json_schema path, structured_outputs.json_object onto JSON
// mode; everything that is not a JSON schema is refused by name; several formats must agree.
TEST(OpenAIRequest, GuidedJsonAndStructuredOutputs) {
  const json schema = {{"type", "object"},
                       {"properties", {{"a", {{"type", "integer"}}}}},
                       {"required", {"a"}},
                       {"additionalProperties", false}};
  const std::pair<json, std::string> forms[] = {
      {{{"guided_json", schema}}, "guided_json"},
      {{{"guided_json", schema.dump()}}, "guided_json"},
      {{{"structured_outputs", {{"json", schema}}}}, "structured_outputs.json"},
      {{{"structured_outputs", {{"json", schema.dump()}, {"disable_fallback", true}}}},
       "structured_outputs.json"},
      // The same schema twice: response_format's is used.
      {{{"response_format", schema_format(schema)}, {"guided_json", schema.dump()}},
       "response_format.json_schema.schema"},
      {{{"guided_json", schema}, {"structured_outputs", {{"json", schema}}}}, "guided_json"},
      {{{"response_format", {{"type", "text"}}}, {"guided_json", schema}}, "guided_json"},
  };
  for (bool is_chat : {true, false}) {
    for (const auto& [extra, param] : forms) {
      json body = is_chat ? chat(extra) : json{{"model", "m"}, {"prompt", "hi"}};
      if (!is_chat) body.update(extra);
      GenerationRequest r = is_chat ? parse_chat(body) : parse_cmpl(body);
      EXPECT_EQ(r.engine.response_format, kimi::ResponseFormat::kJsonSchema) << extra.dump();
      EXPECT_EQ(r.format_param, param);
      ASSERT_NE(r.engine.json_schema, nullptr);
      kimi::JsonMatcher m(r.engine.json_schema), other = m;
      EXPECT_TRUE(m.step(std::string_view("{\"a\": 7}")) && m.complete());
      EXPECT_FALSE(other.step(std::string_view("{\"b\"")));
    }
  }
  EXPECT_EQ(
      parse_chat(chat({{"structured_outputs", {{"json_object", true}}}})).engine.response_format,
      kimi::ResponseFormat::kJsonObject);
  EXPECT_EQ(parse_chat(chat({{"response_format", {{"type", "json_object"}}},
                             {"structured_outputs", {{"json_object", true}}}}))
                .engine.response_format,
            kimi::ResponseFormat::kJsonObject);
  for (const json& absent :
       {json{{"guided_json", nullptr}}, json{{"structured_outputs", nullptr}},
        json{{"structured_outputs", {{"json", nullptr}, {"json_object", false}}}}}) {
    GenerationRequest r = parse_chat(chat(absent));
    EXPECT_EQ(r.engine.response_format, kimi::ResponseFormat::kText) << absent.dump();
    EXPECT_TRUE(r.format_param.empty());
  }

  // The properties come in the schema's key order: "b" before "a", both required. A string
  // schema keeps its own order even through parse_chat_request; an object one through the
  // parse_*_body entry points.
  const std::string ordered = R"({"type": "object", "properties": {"b": {"type": "null"}, )"
                              R"("a": {"type": "null"}}, "required": ["b", "a"]})";
  auto expect_b_first = [](const GenerationRequest& r) {
    ASSERT_NE(r.engine.json_schema, nullptr);
    kimi::JsonMatcher m(r.engine.json_schema), other = m;
    EXPECT_TRUE(m.step(std::string_view(R"({"b":null,"a":null})")) && m.complete());
    EXPECT_FALSE(other.step(std::string_view(R"({"a")")));
  };
  expect_b_first(parse_chat(chat({{"guided_json", ordered}})));
  expect_b_first(parse_cmpl({{"prompt", "hi"}, {"structured_outputs", {{"json", ordered}}}}));
  const std::string chat_head = R"({"messages": [{"role": "user", "content": "hi"}])";
  expect_b_first(
      kimi::server::parse_chat_body(chat_head + R"(, "guided_json": )" + ordered + "}", limits()));
  expect_b_first(kimi::server::parse_completion_body(
      R"({"prompt": "hi", "structured_outputs": {"json": )" + ordered + "}}", limits()));

  const std::pair<json, std::string> bad[] = {
      // Unsupported keywords and malformed schemas: the path inside the field.
      {{{"guided_json", {{"type", "string"}, {"pattern", "^a"}}}}, "guided_json.pattern"},
      {{{"guided_json", R"({"type": "string", "minLength": 2})"}}, "guided_json.minLength"},
      {{{"structured_outputs", {{"json", {{"properties", {{"a", {{"format", "date"}}}}}}}}}},
       "structured_outputs.json.properties.a.format"},
      {{{"guided_json", "{\"type\": "}}, "guided_json"},  // a string that is not JSON
      {{{"guided_json", 5}}, "guided_json"},
      {{{"guided_json", "[1]"}}, "guided_json"},
      {{{"structured_outputs", "json"}}, "structured_outputs"},
      {{{"structured_outputs", {{"json_object", "yes"}}}}, "structured_outputs.json_object"},
      // Constraints other than a JSON schema.
      {{{"guided_choice", {"yes", "no"}}}, "guided_choice"},
      {{{"guided_regex", "a+"}}, "guided_regex"},
      {{{"guided_grammar", "root ::= \"a\""}}, "guided_grammar"},
      {{{"guided_whitespace_pattern", " ?"}, {"guided_json", schema}}, "guided_whitespace_pattern"},
      {{{"structured_outputs", {{"choice", {"yes", "no"}}}}}, "structured_outputs.choice"},
      {{{"structured_outputs", {{"regex", "a+"}}}}, "structured_outputs.regex"},
      {{{"structured_outputs", {{"grammar", "root ::= \"a\""}}}}, "structured_outputs.grammar"},
      {{{"structured_outputs", {{"structural_tag", "{}"}}}}, "structured_outputs.structural_tag"},
      {{{"structured_outputs", {{"json", schema}, {"whitespace_pattern", " "}}}},
       "structured_outputs.whitespace_pattern"},
      {{{"structured_outputs", {{"json", schema}, {"disable_any_whitespace", true}}}},
       "structured_outputs.disable_any_whitespace"},
      {{{"structured_outputs", {{"json", schema}, {"disable_additional_properties", true}}}},
       "structured_outputs.disable_additional_properties"},
      {{{"structured_outputs", {{"jsn", schema}}}}, "structured_outputs.jsn"},
      // Two formats that differ.
      {{{"response_format", schema_format(schema)}, {"guided_json", {{"type", "object"}}}},
       "guided_json"},
      {{{"response_format", {{"type", "json_object"}}}, {"guided_json", schema}}, "guided_json"},
      {{{"guided_json", schema}, {"structured_outputs", {{"json_object", true}}}},
       "structured_outputs.json_object"},
      {{{"structured_outputs", {{"json", schema}, {"json_object", true}}}},
       "structured_outputs.json_object"},
      // The document ends with EOS.
      {{{"guided_json", schema}, {"ignore_eos", true}}, "guided_json"},
      {{{"structured_outputs", {{"json", schema}}}, {"min_tokens", 1}}, "structured_outputs"},
  };
  for (const auto& [extra, param] : bad)
    for (bool is_chat : {true, false}) {
      json body = is_chat ? chat(extra) : json{{"model", "m"}, {"prompt", "hi"}};
      if (!is_chat) body.update(extra);
      EXPECT_EQ(rejection(body, is_chat).first, param) << extra.dump();
    }
  // A mismatch names both fields.
  auto [param, message] =
      rejection(chat({{"response_format", {{"type", "json_object"}}}, {"guided_json", schema}}));
  EXPECT_NE(message.find("'response_format'"), std::string::npos) << message;
  EXPECT_NE(message.find("'guided_json'"), std::string::npos) << message;
  EXPECT_NE(rejection(chat({{"guided_choice", {"a"}}})).second.find("bare"), std::string::npos);
}

// A model directory without tokenizer files (the golden checkpoints) serves token-id prompts;
// what needs text is refused with a 400 naming the field.
TEST(OpenAIRequest, NoTokenizerRefusalsNameTheField) {
  auto param_of = [](const json& b) -> std::string {
    try {
      kimi::server::prepare_prompts(parse_cmpl(b), nullptr, 1280);
    } catch (const ApiException& e) {
      EXPECT_EQ(e.error.status, 400);
      return e.error.param;
    }
    return "<none>";
  };
  EXPECT_EQ(param_of({{"prompt", {1, 2, 3}}}), "<none>");
  EXPECT_EQ(param_of({{"prompt", "text"}}), "prompt");
  EXPECT_EQ(param_of({{"prompt", {1, 2}}, {"echo", true}}), "echo");
  EXPECT_EQ(param_of({{"prompt", {1, 2}}, {"stop", "x"}}), "stop");
  EXPECT_EQ(param_of({{"prompt", {1, 2}}, {"response_format", {{"type", "json_object"}}}}),
            "response_format");
  EXPECT_EQ(param_of({{"prompt", {1, 2}}, {"guided_json", {{"type", "object"}}}}), "guided_json");
}
