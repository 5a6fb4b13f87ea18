// Chat template rendering (expected strings written by hand from model.md §7 / serving.md §5)
// and tool-call parsing.
#include <random>

#include "tokenizer/chat_template.h"
#include "tokenizer_test_util.h"

namespace kimi {
namespace {

using ojson = nlohmann::ordered_json;
using json = nlohmann::json;

std::string render_error(const json& messages, const json& tools = nullptr) {
  try {
    render_chat(messages, tools);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ChatTemplate, ReadmeExample) {
  const auto messages = json::parse(R"([
    {"role": "system", "content": "You are a helpful assistant provided by Moonshot-AI."},
    {"role": "user", "content": "Is 123 a prime?"}])");
  EXPECT_EQ(render_chat(messages, nullptr),
            "<|im_system|>system<|im_middle|>You are a helpful assistant provided by Moonshot-AI."
            "<|im_end|><|im_user|>user<|im_middle|>Is 123 a prime?<|im_end|>"
            "<|im_assistant|>assistant<|im_middle|>");
}

TEST(ChatTemplate, DefaultSystemPrompt) {
  const auto messages = json::parse(R"([{"role": "user", "content": "Hi"}])");
  EXPECT_EQ(render_chat(messages, nullptr),
            "<|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot "
            "AI.<|im_end|><|im_user|>user<|im_middle|>Hi<|im_end|><|im_assistant|>assistant"
            "<|im_middle|>");
  ChatTemplateOptions opt;
  opt.default_system_prompt = false;
  opt.add_generation_prompt = false;
  EXPECT_EQ(render_chat(messages, nullptr, opt), "<|im_user|>user<|im_middle|>Hi<|im_end|>");
}

TEST(ChatTemplate, RolesNamesAndContentForms) {
  const auto messages = json::parse(R"([
    {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
    {"role": "user", "name": "alice", "content": ""},
    {"role": "assistant", "content": null},
    {"role": "user", "name": null, "content": "again"},
    {"role": "assistant", "content": "ok", "tool_calls": []}])");
  ChatTemplateOptions opt;
  opt.add_generation_prompt = false;
  EXPECT_EQ(render_chat(messages, json::array(), opt),
            "<|im_system|>system<|im_middle|>Be brief.<|im_end|>"
            "<|im_user|>alice<|im_middle|><|im_end|>"
            "<|im_assistant|>assistant<|im_middle|><|im_end|>"
            "<|im_user|>user<|im_middle|>again<|im_end|>"
            "<|im_assistant|>assistant<|im_middle|>ok<|im_end|>");
}

const char* kToolTurns = R"([
  {"role": "user", "content": "Weather in Beijing and Shanghai?"},
  {"role": "assistant", "content": "Let me check.", "tool_calls": [
    {"id": "functions.get_weather:0", "type": "function",
     "function": {"name": "get_weather", "arguments": "{\"city\": \"Beijing\"}"}},
    {"id": "functions.get_weather:1", "type": "function",
     "function": {"name": "get_weather", "arguments": {"city": "Shanghai", "days": [1, 2]}}}]},
  {"role": "tool", "tool_call_id": "functions.get_weather:0", "name": "get_weather", "content": "Sunny, 25C"},
  {"role": "tool", "tool_call_id": "functions.get_weather:1",
   "content": [{"type": "text", "text": "Rain, "}, {"type": "text", "text": "18C"}]}])";

const char* kTools = R"([{"type": "function", "function": {"name": "get_weather",
  "description": "Get weather", "parameters": {"type": "object",
  "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])";

const std::string kToolTurnsRendered =
    "<|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot AI."
    "<|im_end|>"
    "<|im_user|>user<|im_middle|>Weather in Beijing and Shanghai?<|im_end|>"
    "<|im_assistant|>assistant<|im_middle|>Let me check.<|tool_calls_section_begin|>"
    "<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": "
    "\"Beijing\"}<|tool_call_end|>"
    "<|tool_call_begin|>functions.get_weather:1<|tool_call_argument_begin|>{\"city\": "
    "\"Shanghai\", \"days\": [1, 2]}<|tool_call_end|><|tool_calls_section_end|><|im_end|>"
    "<|im_system|>get_weather<|im_middle|>## Return of functions.get_weather:0\nSunny, 25C"
    "<|im_end|>"
    "<|im_system|>tool<|im_middle|>## Return of functions.get_weather:1\nRain, 18C<|im_end|>"
    "<|im_assistant|>assistant<|im_middle|>";

TEST(ChatTemplate, ToolsAndToolCallsKeepKeyOrder) {
  EXPECT_EQ(
      render_chat(ojson::parse(kToolTurns), ojson::parse(kTools)),
      "<|im_system|>tool_declare<|im_middle|>[{\"type\":\"function\",\"function\":{\"name\":"
      "\"get_weather\",\"description\":\"Get weather\",\"parameters\":{\"type\":\"object\","
      "\"properties\":{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"]}}}]<|im_end|>" +
          kToolTurnsRendered);
}

TEST(ChatTemplate, PlainJsonSortsKeys) {
  EXPECT_EQ(render_chat(json::parse(kToolTurns), json::parse(kTools)),
            "<|im_system|>tool_declare<|im_middle|>[{\"function\":{\"description\":\"Get weather\","
            "\"name\":\"get_weather\",\"parameters\":{\"properties\":{\"city\":{\"type\":"
            "\"string\"}},\"required\":[\"city\"],\"type\":\"object\"}},\"type\":\"function\"}]"
            "<|im_end|>" +
                kToolTurnsRendered);
}

TEST(ChatTemplate, NormalizesForeignToolCallIds) {
  const auto messages = json::parse(R"([
    {"role": "system", "content": "s"},
    {"role": "assistant", "content": null, "tool_calls": [
      {"id": "call_abc", "type": "function", "function": {"name": "lookup", "arguments": "{}"}},
      {"id": "functions.lookup:1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}},
      {"type": "function", "function": {"name": "find"}}]},
    {"role": "tool", "tool_call_id": "call_abc", "content": "A"},
    {"role": "tool", "tool_call_id": "functions.lookup:1", "content": "B"}])");
  const std::string call = "<|tool_call_argument_begin|>{}<|tool_call_end|>";
  const std::string expected_tail =
      "<|tool_calls_section_end|><|im_end|><|im_system|>tool<|im_middle|>## Return of ";
  ChatTemplateOptions opt;
  opt.add_generation_prompt = false;
  EXPECT_EQ(render_chat(messages, nullptr, opt),
            "<|im_system|>system<|im_middle|>s<|im_end|><|im_assistant|>assistant<|im_middle|>"
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.lookup:0" +
                call + "<|tool_call_begin|>functions.lookup:1" + call +
                "<|tool_call_begin|>functions.find:2" + call + expected_tail +
                "functions.lookup:0\nA<|im_end|><|im_system|>tool<|im_middle|>## Return of "
                "functions.lookup:1\nB<|im_end|>");
  opt.normalize_tool_call_ids = false;
  const std::string raw = render_chat(messages, nullptr, opt);
  EXPECT_NE(raw.find("<|tool_call_begin|>call_abc<|tool_call_argument_begin|>"), std::string::npos);
  EXPECT_NE(raw.find("## Return of call_abc\nA"), std::string::npos);
}

TEST(ChatTemplate, RejectsBadMessages) {
  struct Case {
    const char* messages;
    const char* tools;
    const char* fragment;
  };
  const Case cases[] = {
      {R"({"role": "user"})", "null", "messages must be an array"},
      {R"([])", "null", "messages must not be empty"},
      {R"([42])", "null", "messages[0] must be an object"},
      {R"([{"content": "x"}])", "null", "messages[0].role must be a string"},
      {R"([{"role": "robot", "content": "x"}])", "null", "messages[0].role 'robot' is not one of"},
      {R"([{"role": "user"}])", "null", "messages[0].content is required"},
      {R"([{"role": "user", "content": 7}])", "null", "messages[0].content must be a string"},
      {R"([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])",
       "null", "messages[0].content[0].type 'image_url' is not supported"},
      {R"([{"role": "user", "content": [{"type": "text"}]}])", "null",
       "messages[0].content[0].text must be a string"},
      {R"([{"role": "user", "name": 3, "content": "x"}])", "null",
       "messages[0].name must be a string"},
      {R"([{"role": "system", "content": "x"}, {"role": "tool", "content": "r"}])", "null",
       "messages[1].tool_call_id must be a string"},
      {R"([{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}])", "null",
       "messages[0].tool_calls[0].function.name must be a string"},
      {R"([{"role": "assistant", "tool_calls": [{"function": {"name": "a.b"}}]}])", "null",
       "messages[0].tool_calls[0].function.name 'a.b' contains"},
      {R"([{"role": "assistant", "tool_calls": {"x": 1}}])", "null",
       "messages[0].tool_calls must be an array"},
      {R"([{"role": "user", "content": "x"}])", R"({"a": 1})", "tools must be an array"},
      {R"([{"role": "user", "content": "x"}])", R"([{"type": "retrieval"}])",
       "tools[0].type must be \"function\""},
      {R"([{"role": "user", "content": "x"}])",
       R"([{"type": "function", "function": {"name": "x:y"}}])",
       "tools[0].function.name 'x:y' contains"},
  };
  for (const auto& c : cases) {
    const std::string msg = render_error(json::parse(c.messages), json::parse(c.tools));
    EXPECT_NE(msg.find(c.fragment), std::string::npos)
        << "messages " << c.messages << ": got '" << msg << "', want '" << c.fragment << "'";
  }
}

TEST(ChatTemplate, RenderedPromptTokenizesWithSpecialIds) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  const Tokenizer& tok = test::golden_tokenizer();
  const std::string prompt = render_chat(ojson::parse(kToolTurns), ojson::parse(kTools));
  const auto ids = tok.encode(prompt, true);
  EXPECT_EQ(tok.decode(ids), prompt);
  auto count = [&](const char* name) {
    return std::count(ids.begin(), ids.end(), *tok.special_id(name));
  };
  EXPECT_EQ(ids.front(), *tok.special_id("<|im_system|>"));
  EXPECT_EQ(count("<|im_end|>"), 6);
  EXPECT_EQ(count("<|im_middle|>"), 7);
  EXPECT_EQ(count("<|tool_call_begin|>"), 2);
  EXPECT_EQ(count("<|tool_calls_section_end|>"), 1);
  const int base = tok.num_base_tokens();
  EXPECT_EQ(ids.back(), base + 17);                                           // <|im_middle|>
  const auto last_assistant = std::find(ids.rbegin(), ids.rend(), base + 4);  // <|im_assistant|>
  ASSERT_NE(last_assistant, ids.rend());
  EXPECT_EQ(tok.decode(std::vector<int>(last_assistant.base() - 1, ids.end())),
            "<|im_assistant|>assistant<|im_middle|>");
}

// ---- tool-call parsing ----

TEST(ToolCallParser, TwoParallelCalls) {
  const std::string text =
      "Let me check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
      "<|tool_call_argument_begin|>{\"city\": \"Beijing\"}<|tool_call_end|><|tool_call_begin|>"
      "functions.get_weather:1<|tool_call_argument_begin|>{\"city\": \"Shanghai\"}"
      "<|tool_call_end|><|tool_calls_section_end|>";
  const ParsedOutput p = parse_tool_calls(text);
  EXPECT_EQ(p.content, "Let me check.");
  ASSERT_EQ(p.tool_calls.size(), 2u);
  EXPECT_EQ(p.tool_calls[0].id, "functions.get_weather:0");
  EXPECT_EQ(p.tool_calls[0].name, "get_weather");
  EXPECT_EQ(p.tool_calls[0].arguments, "{\"city\": \"Beijing\"}");
  EXPECT_EQ(p.tool_calls[1].id, "functions.get_weather:1");
  EXPECT_EQ(p.tool_calls[1].arguments, "{\"city\": \"Shanghai\"}");
}

TEST(ToolCallParser, PlainTextAndTolerances) {
  EXPECT_EQ(parse_tool_calls("just text <|tool_call_begin|>").content,
            "just text <|tool_call_begin|>");
  EXPECT_TRUE(parse_tool_calls("just text").tool_calls.empty());
  // Whitespace around markers, ids and arguments; no section end; names without a dot.
  auto p = parse_tool_calls(
      "<|tool_calls_section_begin|>\n <|tool_call_begin|> search:12 <|tool_call_argument_begin|>"
      "\n{\"q\": \"a b\"}\n<|tool_call_end|>\n");
  EXPECT_EQ(p.content, "");
  ASSERT_EQ(p.tool_calls.size(), 1u);
  EXPECT_EQ(p.tool_calls[0].id, "search:12");
  EXPECT_EQ(p.tool_calls[0].name, "search");
  EXPECT_EQ(p.tool_calls[0].arguments, "{\"q\": \"a b\"}");
  // Text after the section is kept; an empty section gives no calls.
  p = parse_tool_calls("A<|tool_calls_section_begin|><|tool_calls_section_end|> tail");
  EXPECT_EQ(p.content, "A tail");
  EXPECT_TRUE(p.tool_calls.empty());
  p = parse_tool_calls(
      "<|tool_calls_section_begin|><|tool_call_begin|>functions.a.b.c:3"
      "<|tool_call_argument_begin|>not json<|tool_call_end|>"
      "<|tool_calls_section_end|>\n");
  ASSERT_EQ(p.tool_calls.size(), 1u);
  EXPECT_EQ(p.tool_calls[0].name, "c");
  EXPECT_EQ(p.tool_calls[0].arguments, "not json");  // passed through, not validated
  EXPECT_EQ(p.content, "");
}

TEST(ToolCallParser, MalformedSectionsAreContent) {
  const std::string b = "<|tool_calls_section_begin|>", cb = "<|tool_call_begin|>",
                    ab = "<|tool_call_argument_begin|>", ce = "<|tool_call_end|>",
                    e = "<|tool_calls_section_end|>";
  const std::vector<std::string> bad = {
      "x" + b + cb + "functions.f:0" + "{}" + ce + e,                 // no argument marker
      "x" + b + cb + "functions.f:0" + ab + "{}" + e,                 // no call end
      "x" + b + cb + "functions.f" + ab + "{}" + ce + e,              // id without :IDX
      "x" + b + cb + "functions.f:zero" + ab + "{}" + ce + e,         // non-numeric index
      "x" + b + cb + ab + "{}" + ce + e,                              // empty id
      "x" + b + "stray" + cb + "functions.f:0" + ab + "{}" + ce + e,  // text between calls
      "x" + b + cb + "functions.f:0" + ab + "{" + cb + "}" + ce + e,  // call inside args
      "x" + b + cb + "functions.f:0" + ab,                            // cut off
  };
  for (const auto& text : bad) {
    const ParsedOutput p = parse_tool_calls(text);
    EXPECT_EQ(p.content, text);
    EXPECT_TRUE(p.tool_calls.empty()) << text;
  }
}

TEST(ToolCallParser, RandomMarkerSoupNeverThrows) {
  const std::vector<std::string> atoms = {"<|tool_calls_section_begin|>",
                                          "<|tool_call_begin|>",
                                          "<|tool_call_argument_begin|>",
                                          "<|tool_call_end|>",
                                          "<|tool_calls_section_end|>",
                                          "functions.f:1",
                                          "{\"a\":1}",
                                          " ",
                                          ":",
                                          "<|",
                                          "x"};
  std::mt19937 rng(23);
  for (int i = 0; i < 2000; ++i) {
    std::string text;
    for (int k = static_cast<int>(rng() % 12); k > 0; --k) text += atoms[rng() % atoms.size()];
    const ParsedOutput p = parse_tool_calls(text);
    if (p.tool_calls.empty() && text.find("<|tool_calls_section_begin|>") == std::string::npos) {
      EXPECT_EQ(p.content, text);
    }
    for (const auto& c : p.tool_calls) {
      EXPECT_FALSE(c.id.empty());
      EXPECT_EQ(c.name, "f");
    }
  }
}

}  // namespace
}  // namespace kimi
