// Output side of the server: the Kimi tool-call parser (whole and streamed), the OpenAI
// response / chunk shapes, SSE framing, Prometheus text, API-key comparison.
#include <gtest/gtest.h>

#include "server/auth.h"
#include "server/metrics.h"
#include "server/openai_response.h"
#include "server/tool_calls.h"
#include "tokenizer/chat_template.h"

using namespace kimi::server;
using nlohmann::json;

namespace {

const std::string kTwoCalls =
    "Let me check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
    "<|tool_call_argument_begin|>{\"city\": \"Beijing\"}<|tool_call_end|><|tool_call_begin|>"
    "functions.get_weather:1<|tool_call_argument_begin|>{\"city\": \"Shanghai\"}<|tool_call_end|>"
    "<|tool_calls_section_end|><|im_end|>";

// Feeds `text` in pieces of `step` bytes; returns the concatenated content and per-call
// argument strings as the streamed deltas would build them.
struct Streamed {
  std::string content;
  std::vector<std::string> ids, names, args;
  int starts = 0;
};
Streamed stream_through(ToolCallParser& p, const std::string& text, size_t step) {
  Streamed s;
  auto take = [&](const ParsedDelta& d) {
    s.content += d.content;
    for (const auto& c : d.calls) {
      if (c.start) {
        ++s.starts;
        EXPECT_EQ(c.index, int(s.ids.size()));
        s.ids.push_back(c.id);
        s.names.push_back(c.name);
        s.args.emplace_back();
      }
      ASSERT_LT(c.index, int(s.args.size()));
      s.args[c.index] += c.arguments;
    }
  };
  for (size_t i = 0; i < text.size(); i += step) take(p.feed(text.substr(i, step)));
  take(p.finish());
  return s;
}

}  // namespace

TEST(ToolCallParser, PlainTextPassesThrough) {
  ToolCallParser p;
  auto a = p.feed("Hello <b>world</b> <|no");
  auto b = p.feed("t a marker");
  auto c = p.finish();
  EXPECT_EQ(a.content + b.content + c.content, "Hello <b>world</b> <|not a marker");
  EXPECT_TRUE(p.calls().empty());
}

TEST(ToolCallParser, TwoParallelCallsWhole) {
  ToolCallParser p;
  auto d = p.feed(kTwoCalls);
  auto e = p.finish();
  EXPECT_EQ(d.content + e.content, "Let me check.");
  ASSERT_EQ(p.calls().size(), 2u);
  EXPECT_EQ(p.num_completed(), 2);
  EXPECT_EQ(p.calls()[0].id, "functions.get_weather:0");
  EXPECT_EQ(p.calls()[0].name, "get_weather");
  EXPECT_EQ(p.calls()[0].arguments, "{\"city\": \"Beijing\"}");
  EXPECT_EQ(p.calls()[1].id, "functions.get_weather:1");
  EXPECT_EQ(p.calls()[1].arguments, "{\"city\": \"Shanghai\"}");
}

TEST(ToolCallParser, StreamedInAnyPiecesGivesTheSameCalls) {
  for (size_t step : {1, 2, 3, 5, 7, 13, 64}) {
    ToolCallParser p;
    Streamed s = stream_through(p, kTwoCalls, step);
    EXPECT_EQ(s.content, "Let me check.") << step;
    EXPECT_EQ(s.starts, 2) << step;
    ASSERT_EQ(s.args.size(), 2u);
    EXPECT_EQ(s.ids[1], "functions.get_weather:1");
    EXPECT_EQ(s.names[0], "get_weather");
    EXPECT_EQ(s.args[0], "{\"city\": \"Beijing\"}") << step;
    EXPECT_EQ(s.args[1], "{\"city\": \"Shanghai\"}") << step;
    EXPECT_EQ(s.content.find("<|"), std::string::npos);
  }
}

TEST(ToolCallParser, WhitespaceAroundIdsAndArguments) {
  ToolCallParser p;
  Streamed s = stream_through(p,
                              "<|tool_calls_section_begin|>\n<|tool_call_begin|> functions.a_b-c:3 "
                              "<|tool_call_argument_begin|>  {\"x\": [1, 2]}  \n<|tool_call_end|>\n"
                              "<|tool_calls_section_end|>",
                              4);
  EXPECT_EQ(s.content, "");
  ASSERT_EQ(s.ids.size(), 1u);
  EXPECT_EQ(s.ids[0], "functions.a_b-c:3");
  EXPECT_EQ(s.names[0], "a_b-c");
  EXPECT_EQ(s.args[0], "{\"x\": [1, 2]}");
}

TEST(ToolCallParser, ForcedPrefixAndOpenCall) {
  ToolCallParser p(
      "<|tool_calls_section_begin|><|tool_call_begin|>functions.lookup:0<|tool_call_argument_begin|"
      ">");
  auto d = p.feed("{\"q\": ");
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_TRUE(d.calls[0].start);
  EXPECT_EQ(d.calls[0].name, "lookup");
  EXPECT_EQ(d.calls[0].arguments, "{\"q\":");  // trailing space held until more comes
  auto e = p.feed("\"abc\"");
  p.finish();
  ASSERT_EQ(p.calls().size(), 1u);
  EXPECT_EQ(p.num_completed(), 0);  // cut off before <|tool_call_end|>
  EXPECT_EQ(p.calls()[0].arguments, "{\"q\": \"abc\"");
  ASSERT_EQ(e.calls.size(), 1u);
  EXPECT_EQ(e.calls[0].arguments, " \"abc\"");
}

TEST(ToolCallParser, RequiredPrefixLetsTheModelName) {
  ToolCallParser p("<|tool_calls_section_begin|><|tool_call_begin|>functions.");
  Streamed s = stream_through(
      p, "search:0<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>", 3);
  ASSERT_EQ(s.ids.size(), 1u);
  EXPECT_EQ(s.ids[0], "functions.search:0");
  EXPECT_EQ(s.names[0], "search");
  EXPECT_EQ(s.args[0], "{}");
  EXPECT_EQ(p.num_completed(), 1);
}

TEST(ToolCallParser, TurnMarkersDoNotLeakIntoContent) {
  ToolCallParser p;
  Streamed s = stream_through(p, "Hi there<|im_end|>", 1);
  EXPECT_EQ(s.content, "Hi there");
}

// The streaming parser agrees with the tokenizer's whole-text parser on well-formed output
// (which differ on text after the section: kept there, dropped here as in vLLM's kimi_k2).
TEST(ToolCallParser, AgreesWithTheTokenizerParser) {
  const std::vector<std::string> texts = {
      kTwoCalls.substr(0, kTwoCalls.size() - std::string("<|im_end|>").size()), "no tools here",
      "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{}"
      "<|tool_call_end|><|tool_calls_section_end|>",
      "Sure: <|tool_calls_section_begin|> "
      "<|tool_call_begin|>functions.run_code:4<|tool_call_argument_begin|>"
      "{\"code\": \"print(1)\"} <|tool_call_end|><|tool_calls_section_end|>"};
  for (const auto& t : texts) {
    kimi::ParsedOutput ref = kimi::parse_tool_calls(t);
    ToolCallParser p;
    Streamed s = stream_through(p, t, 3);
    EXPECT_EQ(s.content, ref.content) << t;
    ASSERT_EQ(s.ids.size(), ref.tool_calls.size()) << t;
    for (size_t i = 0; i < s.ids.size(); ++i) {
      EXPECT_EQ(s.ids[i], ref.tool_calls[i].id);
      EXPECT_EQ(s.names[i], ref.tool_calls[i].name);
      EXPECT_EQ(s.args[i], ref.tool_calls[i].arguments);
    }
  }
}

TEST(ToolCallParser, NameFromId) {
  EXPECT_EQ(ToolCallParser::name_from_id("functions.get_weather:0"), "get_weather");
  EXPECT_EQ(ToolCallParser::name_from_id("get_weather:12"), "get_weather");
  EXPECT_EQ(ToolCallParser::name_from_id("a.b.c:1"), "c");
  EXPECT_EQ(ToolCallParser::name_from_id("plain"), "plain");
}

TEST(OpenAIResponse, ChatCompletionWithToolCalls) {
  ChoiceResult c;
  c.text = "";
  c.finish = kimi::FinishReason::kStop;
  c.parsed_tools = true;
  c.tool_calls = {{"functions.get_weather:0", "get_weather", "{\"city\": \"Paris\"}"}};
  c.completed_tool_calls = 1;
  ChoiceResult plain;
  plain.text = "Hello!";
  plain.finish = kimi::FinishReason::kLength;
  ResponseHead h{"chatcmpl-x", 1764200000, "kimi"};
  kimi::Usage u{12, 3};
  TokenTexts tt(nullptr, false);
  json j = chat_completion_json(h, {c, plain}, u, tt, LogprobsOut{});
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["id"], "chatcmpl-x");
  EXPECT_EQ(j["created"], 1764200000);
  const json& m0 = j["choices"][0]["message"];
  EXPECT_EQ(m0["role"], "assistant");
  EXPECT_TRUE(m0["content"].is_null());
  EXPECT_EQ(m0["tool_calls"][0]["id"], "functions.get_weather:0");
  EXPECT_EQ(m0["tool_calls"][0]["type"], "function");
  EXPECT_EQ(m0["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(m0["tool_calls"][0]["function"]["arguments"], "{\"city\": \"Paris\"}");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_EQ(j["choices"][1]["message"]["content"], "Hello!");
  EXPECT_EQ(j["choices"][1]["finish_reason"], "length");
  EXPECT_TRUE(j["choices"][1]["logprobs"].is_null());
  EXPECT_EQ(j["usage"]["prompt_tokens"], 12);
  EXPECT_EQ(j["usage"]["completion_tokens"], 3);
  EXPECT_EQ(j["usage"]["total_tokens"], 15);
}

TEST(OpenAIResponse, FinishReasons) {
  ChoiceResult c;
  c.finish = kimi::FinishReason::kStop;
  EXPECT_EQ(choice_finish_reason(c), "stop");
  c.completed_tool_calls = 1;
  EXPECT_EQ(choice_finish_reason(c), "tool_calls");
  c.finish = kimi::FinishReason::kLength;  // cut off: the call did not finish the turn
  EXPECT_EQ(choice_finish_reason(c), "length");
  c.completed_tool_calls = 0;
  c.finish = kimi::FinishReason::kToolCalls;
  EXPECT_EQ(choice_finish_reason(c), "stop");
}

// vLLM's stop_reason: the matched stop string, a stop token's id as an integer, else null; in
// both response shapes.
TEST(OpenAIResponse, StopReason) {
  ChoiceResult c;
  c.finish = kimi::FinishReason::kStop;
  EXPECT_TRUE(stop_reason_json(c).is_null());
  c.stop_token = 163586;
  EXPECT_EQ(stop_reason_json(c), json(163586));
  EXPECT_TRUE(stop_reason_json(c).is_number_integer());
  TokenTexts tt(nullptr, true);
  const ResponseHead h{"x", 0, "m"};
  EXPECT_EQ(text_completion_json(h, {c}, kimi::Usage{}, tt, {})["choices"][0]["stop_reason"],
            json(163586));
  c.stop_token = -1;
  c.stop_reason = "\n\n";
  EXPECT_EQ(chat_completion_json(h, {c}, kimi::Usage{}, tt, {})["choices"][0]["stop_reason"],
            json("\n\n"));
}

TEST(OpenAIResponse, SseFraming) {
  std::string e = sse_event({{"a", "x\ny"}});
  EXPECT_EQ(e, "data: {\"a\":\"x\\ny\"}\n\n");
  // Invalid UTF-8 (a token cut inside a character) is replaced, never thrown.
  std::string bad = sse_event({{"t", std::string("\xe4\xbd", 2)}});
  EXPECT_EQ(bad.rfind("data: ", 0), 0u);
  EXPECT_NE(bad.find("\xef\xbf\xbd"), std::string::npos);
  EXPECT_STREQ(kSseDone, "data: [DONE]\n\n");
}

TEST(OpenAIResponse, Chunks) {
  ResponseHead h{"chatcmpl-1", 5, "kimi"};
  const json null_usage = nullptr;
  json c = chat_chunk(h, 1, {{"content", "Hel"}}, nullptr, nullptr, &null_usage);
  EXPECT_EQ(c["object"], "chat.completion.chunk");
  EXPECT_EQ(c["choices"][0]["index"], 1);
  EXPECT_EQ(c["choices"][0]["delta"]["content"], "Hel");
  EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
  ASSERT_TRUE(c.contains("usage"));
  EXPECT_TRUE(c["usage"].is_null());
  EXPECT_FALSE(chat_chunk(h, 0, json::object(), nullptr, "stop", nullptr).contains("usage"));
  // Continuous usage stats: the usage so far on the chunk itself.
  const json so_far = usage_json({7, 2});
  json cu = chat_chunk(h, 0, {{"content", "x"}}, nullptr, nullptr, &so_far);
  EXPECT_EQ(cu["usage"]["prompt_tokens"], 7);
  EXPECT_EQ(cu["usage"]["completion_tokens"], 2);
  EXPECT_EQ(cu["usage"]["total_tokens"], 9);
  EXPECT_EQ(completion_chunk(h, 0, "x", nullptr, nullptr, &so_far)["usage"]["total_tokens"], 9);
  json u = usage_chunk(h, true, {4, 6});
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["total_tokens"], 10);
  json t = completion_chunk(h, 0, "abc", nullptr, "length", nullptr);
  EXPECT_EQ(t["object"], "text_completion");
  EXPECT_EQ(t["choices"][0]["text"], "abc");
  EXPECT_EQ(t["choices"][0]["finish_reason"], "length");

  std::vector<ToolCallDelta> deltas(2);
  deltas[0].index = 0, deltas[0].start = true, deltas[0].id = "functions.f:0", deltas[0].name = "f";
  deltas[1].index = 0, deltas[1].arguments = "{}";
  json tc = tool_call_deltas(deltas);
  EXPECT_EQ(tc[0]["id"], "functions.f:0");
  EXPECT_EQ(tc[0]["type"], "function");
  EXPECT_EQ(tc[0]["function"]["name"], "f");
  EXPECT_EQ(tc[0]["function"]["arguments"], "");
  EXPECT_FALSE(tc[1].contains("id"));
  EXPECT_EQ(tc[1]["function"]["arguments"], "{}");
}

TEST(OpenAIResponse, Logprobs) {
  TokenTexts tt(nullptr, true);
  std::vector<kimi::TokenLogprob> lps(2);
  lps[0].id = 7, lps[0].logprob = -0.5f, lps[0].top = {{7, -0.5f}, {9, -1.5f}};
  lps[1].id = 12, lps[1].logprob = -2.f;
  json c = chat_logprobs(lps, tt);
  EXPECT_EQ(c["content"][0]["token"], "token_id:7");
  EXPECT_FLOAT_EQ(c["content"][0]["logprob"].get<float>(), -0.5f);
  EXPECT_EQ(c["content"][0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(c["content"][0]["top_logprobs"][1]["token"], "token_id:9");
  EXPECT_EQ(c["content"][0]["bytes"].size(), std::string("token_id:7").size());
  size_t off = 3;
  json l = completion_logprobs(lps, tt, off);
  EXPECT_EQ(l["tokens"][1], "token_id:12");
  EXPECT_EQ(l["text_offset"][0], 3);
  EXPECT_EQ(l["text_offset"][1], 3 + std::string("token_id:7").size());
  EXPECT_FLOAT_EQ(l["top_logprobs"][0]["token_id:9"].get<float>(), -1.5f);
  EXPECT_EQ(l["top_logprobs"][0].size(), 2u);  // the sampled token is the top alternative
  // The sampled token is always in the dict (OpenAI's "up to logprobs+1", vLLM), also for
  // logprobs=0, where there are no alternatives.
  ASSERT_TRUE(l["top_logprobs"][1].is_object());
  EXPECT_EQ(l["top_logprobs"][1].size(), 1u);
  EXPECT_FLOAT_EQ(l["top_logprobs"][1]["token_id:12"].get<float>(), -2.f);
  json all;
  append_completion_logprobs(all, l);
  append_completion_logprobs(all, l);
  EXPECT_EQ(all["tokens"].size(), 4u);
}

// The prompt's logprobs: the completions echo shape (the first token without a logprob, then the
// generated tokens' after it, offsets running on) and vLLM's prompt_logprobs (null, then per token
// a dict by id: the token with its rank, and the alternatives ranked 1..k).
TEST(OpenAIResponse, PromptLogprobs) {
  TokenTexts tt(nullptr, true);
  std::vector<kimi::TokenLogprob> prompt_lps(2);
  prompt_lps[0].id = 5, prompt_lps[0].logprob = -3.f, prompt_lps[0].rank = 4;
  prompt_lps[0].top = {{8, -0.25f}, {2, -1.f}};
  prompt_lps[1].id = 6, prompt_lps[1].logprob = -0.1f, prompt_lps[1].rank = 1;
  prompt_lps[1].top = {{6, -0.1f}};
  size_t off = 0;
  json e = echo_prompt_logprobs({4, 5, 6}, prompt_lps, tt, off);
  EXPECT_EQ(e["tokens"], json({"token_id:4", "token_id:5", "token_id:6"}));
  EXPECT_TRUE(e["token_logprobs"][0].is_null());
  EXPECT_TRUE(e["top_logprobs"][0].is_null());
  EXPECT_FLOAT_EQ(e["token_logprobs"][1].get<float>(), -3.f);
  EXPECT_FLOAT_EQ(e["top_logprobs"][1]["token_id:8"].get<float>(), -0.25f);
  EXPECT_EQ(e["top_logprobs"][1].size(), 3u);  // the prompt token (rank 4) and two alternatives
  EXPECT_FLOAT_EQ(e["top_logprobs"][1]["token_id:5"].get<float>(), -3.f);
  EXPECT_EQ(e["text_offset"], json({0, 10, 20}));
  EXPECT_EQ(off, 30u);
  std::vector<kimi::TokenLogprob> gen(1);
  gen[0].id = 9, gen[0].logprob = -0.7f;
  ChoiceResult c;
  c.text = "abc";
  c.logprobs = gen;
  c.prompt = {4, 5, 6};
  c.prompt_logprobs = prompt_lps;
  json t = text_completion_json(ResponseHead{"cmpl-1", 0, "m"}, {c}, kimi::Usage{}, tt,
                                LogprobsOut{true, true, true});
  const json& lp = t["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"].size(), 4u);
  EXPECT_EQ(lp["tokens"][3], "token_id:9");
  EXPECT_EQ(lp["text_offset"][3], 30);
  const json& v = t["choices"][0]["prompt_logprobs"];
  ASSERT_EQ(v.size(), 3u);
  EXPECT_TRUE(v[0].is_null());
  EXPECT_EQ(v[1].size(), 3u);  // the token and two alternatives
  EXPECT_EQ(v[1]["5"]["rank"], 4);
  EXPECT_EQ(v[1]["8"]["rank"], 1);
  EXPECT_EQ(v[1]["2"]["rank"], 2);
  EXPECT_EQ(v[1]["2"]["decoded_token"], "token_id:2");
  EXPECT_EQ(v[2].size(), 1u);  // the token is the top alternative
  EXPECT_EQ(v[2]["6"]["rank"], 1);
  // Without echo the choice's logprobs are the generated tokens' only; chat puts vLLM's list at
  // the top, once.
  json plain = text_completion_json(ResponseHead{"cmpl-1", 0, "m"}, {c}, kimi::Usage{}, tt,
                                    LogprobsOut{true, false, false});
  EXPECT_EQ(plain["choices"][0]["logprobs"]["tokens"].size(), 1u);
  EXPECT_FALSE(plain["choices"][0].contains("prompt_logprobs"));
  json chat = chat_completion_json(ResponseHead{"chatcmpl-1", 0, "m"}, {c, c}, kimi::Usage{}, tt,
                                   LogprobsOut{false, false, true});
  EXPECT_EQ(chat["prompt_logprobs"].size(), 3u);
  EXPECT_FALSE(chat["choices"][0].contains("prompt_logprobs"));
}

TEST(Metrics, PrometheusText) {
  ServerMetrics m("kimi \"tiny\"", 1000);
  m.sample_finished("stop", 10, 5, 16);
  m.sample_finished("abort", 300, 2, 100);
  kimi::EngineMetrics em;
  em.num_running = 3;
  for (double v : {0.002, 0.03, 100.0}) em.ttft.observe(v);
  std::string t = m.render(em, 2);
  const std::string L = "model_name=\"kimi \\\"tiny\\\"\",engine=\"0\"";
  EXPECT_NE(t.find("# TYPE vllm:num_requests_running gauge\n"), std::string::npos);
  EXPECT_NE(t.find("vllm:num_requests_running{" + L + "} 3\n"), std::string::npos);
  EXPECT_NE(t.find("vllm:request_success_total{" + L + ",finished_reason=\"abort\"} 1\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:request_success_total{" + L + ",finished_reason=\"length\"} 0\n"),
            std::string::npos);
  // Cumulative buckets.
  EXPECT_NE(t.find("vllm:time_to_first_token_seconds_bucket{" + L + ",le=\"0.001\"} 0\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:time_to_first_token_seconds_bucket{" + L + ",le=\"0.04\"} 2\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:time_to_first_token_seconds_bucket{" + L + ",le=\"+Inf\"} 3\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:time_to_first_token_seconds_count{" + L + "} 3\n"), std::string::npos);
  EXPECT_NE(t.find("vllm:request_prompt_tokens_bucket{" + L + ",le=\"10\"} 1\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:request_prompt_tokens_sum{" + L + "} 310\n"), std::string::npos);
  EXPECT_EQ(buckets_125(100), (std::vector<double>{1, 2, 5, 10, 20, 50, 100}));
}

// vLLM's latency series (serving.md §2.2): inter-token gaps under the new name and the old one,
// the per-request mean TPOT and the queue time under their own names.
TEST(Metrics, LatencyHistogramsUseVllmNames) {
  ServerMetrics m("m", 1000);
  kimi::EngineMetrics em;
  for (double v : {0.02, 0.03, 0.04}) em.itl.observe(v);
  em.tpot.observe(0.03);
  for (double v : {0.001, 0.4}) em.queue.observe(v);
  const std::string t = m.render(em, 0);
  const std::string L = "{model_name=\"m\",engine=\"0\"} ";
  for (const char* itl :
       {"vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"}) {
    EXPECT_NE(t.find(std::string("# TYPE ") + itl + " histogram\n"), std::string::npos) << itl;
    EXPECT_NE(t.find(itl + std::string("_count") + L + "3\n"), std::string::npos) << itl;
  }
  EXPECT_NE(t.find("vllm:request_time_per_output_token_seconds_count" + L + "1\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:request_queue_time_seconds_count" + L + "2\n"), std::string::npos);
  EXPECT_NE(t.find("vllm:request_queue_time_seconds_bucket{model_name=\"m\",engine=\"0\","
                   "le=\"0.3\"} 1\n"),
            std::string::npos);
}

// vLLM runs an n > 1 request as n child requests: each child's finish is a request_success (and
// a prompt/generation tokens observation); n and the longest child once for the parent.
TEST(Metrics, ParamsNOncePerRequestSuccessPerSample) {
  ServerMetrics m("m", 1000);
  m.sample_finished("length", 4, 7, 7);
  m.sample_finished("stop", 4, 3, 7);
  m.sample_finished("stop", 4, 5, 7);
  m.request_finished(3, 7);
  m.sample_finished("length", 9, 7, 7);
  m.request_finished(1, 7);
  const std::string t = m.render(kimi::EngineMetrics{}, 0);
  const std::string L = "model_name=\"m\",engine=\"0\"";
  EXPECT_NE(t.find("vllm:request_success_total{" + L + ",finished_reason=\"stop\"} 2\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:request_success_total{" + L + ",finished_reason=\"length\"} 2\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:request_generation_tokens_count{" + L + "} 4\n"), std::string::npos);
  EXPECT_NE(t.find("vllm:request_params_n_count{" + L + "} 2\n"), std::string::npos);
  EXPECT_NE(t.find("vllm:request_params_n_sum{" + L + "} 4\n"), std::string::npos);
  EXPECT_NE(t.find("vllm:request_params_n_bucket{" + L + ",le=\"1\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("vllm:request_params_n_bucket{" + L + ",le=\"5\"} 2\n"), std::string::npos);
  EXPECT_NE(t.find("# TYPE vllm:request_max_num_generation_tokens histogram\n"), std::string::npos);
  EXPECT_NE(t.find("vllm:request_max_num_generation_tokens_sum{" + L + "} 14\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:request_max_num_generation_tokens_bucket{" + L + ",le=\"5\"} 0\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:request_max_num_generation_tokens_bucket{" + L + ",le=\"1000\"} 2\n"),
            std::string::npos);
}

// vLLM's phase histograms (buckets 0.3 ... 7680), tokens per step (1, 8, ..., 16384) and the
// cache configuration as an info gauge.
TEST(Metrics, PhaseTimesStepTokensAndCacheConfig) {
  ServerMetrics m("m", 1000);
  kimi::EngineMetrics em;
  em.prefill.observe(0.2);
  em.decode.observe(0.2);
  em.decode.observe(3.0);
  for (double v : {0.4, 8000.0, 1.0}) em.inference.observe(v);
  for (double v : {1.0, 9.0, 16.0, 20000.0}) em.iteration_tokens.observe(v);
  em.block_size = 64;
  em.total_blocks = 123;
  em.cache_dtype = "fp8";
  em.prefix_caching = true;
  const std::string t = m.render(em, 0);
  const std::string L = "model_name=\"m\",engine=\"0\"";
  for (const char* name : {"vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds",
                           "vllm:request_inference_time_seconds", "vllm:iteration_tokens_total"})
    EXPECT_NE(t.find(std::string("# TYPE ") + name + " histogram\n"), std::string::npos) << name;
  EXPECT_NE(t.find("vllm:request_prefill_time_seconds_bucket{" + L + ",le=\"0.3\"} 1\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:request_decode_time_seconds_count{" + L + "} 2\n"), std::string::npos);
  EXPECT_NE(t.find("vllm:request_decode_time_seconds_bucket{" + L + ",le=\"2.5\"} 1\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:request_inference_time_seconds_bucket{" + L + ",le=\"7680\"} 2\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:request_inference_time_seconds_bucket{" + L + ",le=\"+Inf\"} 3\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:iteration_tokens_total_bucket{" + L + ",le=\"1\"} 1\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:iteration_tokens_total_bucket{" + L + ",le=\"8\"} 1\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:iteration_tokens_total_bucket{" + L + ",le=\"16\"} 3\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:iteration_tokens_total_bucket{" + L + ",le=\"16384\"} 3\n"),
            std::string::npos);
  EXPECT_NE(t.find("vllm:iteration_tokens_total_sum{" + L + "} 20026\n"), std::string::npos);
  EXPECT_NE(t.find("# TYPE vllm:cache_config_info gauge\n"), std::string::npos);
  EXPECT_NE(t.find("vllm:cache_config_info{block_size=\"64\",cache_dtype=\"fp8\","
                   "enable_prefix_caching=\"True\",num_gpu_blocks=\"123\",engine=\"0\"} 1\n"),
            std::string::npos);
}

TEST(Auth, ConstantTimeKeyCheck) {
  EXPECT_TRUE(constant_time_equal("secret", "secret"));
  EXPECT_FALSE(constant_time_equal("secret", "secreT"));
  EXPECT_FALSE(constant_time_equal("secret", "secret2"));
  EXPECT_FALSE(constant_time_equal("", "x"));
  EXPECT_TRUE(authorized("Bearer k2", {"k1", "k2"}));
  EXPECT_FALSE(authorized("Bearer k3", {"k1", "k2"}));
  EXPECT_FALSE(authorized("k1", {"k1"}));
  EXPECT_FALSE(authorized("Bearer ", {""}));
  EXPECT_FALSE(authorized("", {"k1"}));
}
