// Forced tool calls (tool_choice required / named): the matcher of the Kimi tool-call grammar
// byte by byte and marker by marker, the first refused byte or marker, random walks through the
// token mask that must end in calls Kimi's parser reads with arguments valid for their schema,
// and the mask against stepping every token on a copy of the matcher.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "runtime/json_token_mask.h"
#include "runtime/tool_call_matcher.h"
#include "tokenizer/tool_calls.h"
#include "tokenizer_test_util.h"

namespace kimi {
namespace {

using Phase = ToolCallMatcher::Phase;

std::shared_ptr<const JsonSchema> schema(const char* text) {
  SchemaError e;
  auto s = compile_json_schema(nlohmann::ordered_json::parse(text), &e);
  EXPECT_NE(s, nullptr) << e.message;
  return s;
}

// Three functions whose names share prefixes ("get" is one of "get_time"'s), each with a schema
// whose documents are short, so random walks end.
std::vector<ToolCallGrammar::Function> functions() {
  return {{"get_weather", schema(R"({"type": "object",
              "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer"}},
              "required": ["city", "days"], "additionalProperties": false})")},
          {"get", schema(R"({"type": "object", "properties": {}, "additionalProperties": false})")},
          {"get_time", schema(R"({"type": "object",
              "properties": {"utc": {"type": "boolean"},
                             "zones": {"type": "array", "items": {"enum": [1, 2]}, "maxItems": 2}},
              "required": ["utc"], "additionalProperties": false})")}};
}

std::shared_ptr<const ToolCallGrammar> required(bool parallel = true, int first = 3) {
  return std::make_shared<const ToolCallGrammar>(functions(), true, parallel, first);
}

std::shared_ptr<const ToolCallGrammar> named(const std::string& name) {
  std::vector<ToolCallGrammar::Function> fns;
  for (auto& f : functions())
    if (f.name == name) fns.push_back(f);
  return std::make_shared<const ToolCallGrammar>(std::move(fns), false, true, 0);
}

constexpr ToolCallMarkers kMarkers{1000, 1001, 1002, 1003};  // section_end, call_begin, arg, end

// Bytes of s the matcher takes before the first refusal.
size_t accepted(ToolCallMatcher& m, std::string_view s) {
  size_t i = 0;
  while (i < s.size() && m.step(uint8_t(s[i]))) ++i;
  return i;
}

TEST(ToolCallMatcher, RequiredTakesWholeCallsByteByByteAndMarkerByMarker) {
  ToolCallMatcher m(required(), kMarkers);
  EXPECT_EQ(m.phase(), Phase::kId);
  EXPECT_TRUE(m.markers().empty());
  EXPECT_TRUE(m.step(std::string_view("get_weather")));
  EXPECT_TRUE(m.markers().empty()) << "the id goes on with ':IDX'";
  EXPECT_TRUE(m.step(std::string_view(":3")));
  EXPECT_EQ(m.markers(), std::vector<int>{kMarkers.argument_begin});
  ASSERT_TRUE(m.step_marker(kMarkers.argument_begin));
  EXPECT_EQ(m.phase(), Phase::kArguments);
  EXPECT_EQ(m.markers(), std::vector<int>{kMarkers.call_end});
  const std::string args = R"({"city": "Rome", "days": 12})";
  for (size_t i = 0; i < args.size(); ++i) {
    EXPECT_FALSE(m.arguments().complete()) << i;
    EXPECT_FALSE(ToolCallMatcher(m).step_marker(kMarkers.call_end)) << "inside the arguments";
    ASSERT_TRUE(m.step(uint8_t(args[i]))) << i;
  }
  EXPECT_TRUE(m.arguments().complete());
  ASSERT_TRUE(m.step_marker(kMarkers.call_end));
  EXPECT_EQ(m.phase(), Phase::kAfterCall);
  EXPECT_EQ(m.markers(), (std::vector<int>{kMarkers.call_begin, kMarkers.section_end}));
  // The second call spells its whole id, numbered one on.
  ASSERT_TRUE(m.step_marker(kMarkers.call_begin));
  EXPECT_EQ(m.phase(), Phase::kId);
  EXPECT_TRUE(m.step(std::string_view("functions.get:4")));
  ASSERT_TRUE(m.step_marker(kMarkers.argument_begin));
  EXPECT_TRUE(m.step(std::string_view(" {}")));
  EXPECT_FALSE(ToolCallMatcher(m).step(uint8_t('\n'))) << "the document ends at its last byte";
  ASSERT_TRUE(m.step_marker(kMarkers.call_end));
  ASSERT_TRUE(m.step_marker(kMarkers.section_end));
  EXPECT_EQ(m.phase(), Phase::kEnd);
  EXPECT_TRUE(m.markers().empty());
  for (int id : {kMarkers.section_end, kMarkers.call_begin, kMarkers.argument_begin,
                 kMarkers.call_end})
    EXPECT_FALSE(m.step_marker(id));
  EXPECT_FALSE(m.step(uint8_t(' ')));
}

TEST(ToolCallMatcher, RefusesTheFirstWrongByteOrMarker) {
  struct Case {
    std::string id;  // after the prompt's "functions."
    size_t taken;    // bytes accepted before the refusal
    bool whole;      // those bytes are a whole id
  };
  const Case cases[] = {{"get_weather:0", 12, false}, {"get_weathr:3", 9, false},
                        {"get:3x", 5, true},          {"get:33", 5, true},
                        {"functions.get", 0, false},  {"Get", 0, false},
                        {"get_time:3:", 10, true},    {"get_:3", 4, false},
                        {"get :3", 3, false}};
  for (const Case& c : cases) {
    ToolCallMatcher m(required(), kMarkers);
    EXPECT_EQ(accepted(m, c.id), c.taken) << c.id;
    EXPECT_FALSE(m.step(uint8_t(c.id[c.taken]))) << c.id << ": refused again";
    EXPECT_EQ(m.step_marker(kMarkers.argument_begin), c.whole) << c.id;
  }
  // Markers out of place, and the arguments' schema.
  ToolCallMatcher m(required(), kMarkers);
  for (int id : {kMarkers.section_end, kMarkers.call_begin, kMarkers.call_end, 5})
    EXPECT_FALSE(m.step_marker(id));
  ASSERT_TRUE(m.step(std::string_view("get_time:3")));
  EXPECT_FALSE(m.step_marker(kMarkers.call_end));
  ASSERT_TRUE(m.step_marker(kMarkers.argument_begin));
  EXPECT_FALSE(m.step_marker(kMarkers.argument_begin));
  ToolCallMatcher wrong_key = m, wrong_value = m;
  EXPECT_EQ(accepted(wrong_key, R"({"city": 1})"), 2u) << "get_time has no 'city'";
  EXPECT_EQ(accepted(wrong_value, R"({"utc": 1})"), 8u) << "utc is a boolean";
  ASSERT_TRUE(m.step(std::string_view(R"({"utc": true)")));
  EXPECT_FALSE(m.step_marker(kMarkers.call_end)) << "the object is still open";
  ASSERT_TRUE(m.step(uint8_t('}')));
  ASSERT_TRUE(m.step_marker(kMarkers.call_end));
  EXPECT_FALSE(m.step(uint8_t('f')));
  EXPECT_FALSE(m.step_marker(kMarkers.argument_begin));
  // Without parallel calls the section ends after the first.
  ToolCallMatcher one(required(false), kMarkers);
  ASSERT_TRUE(one.step(std::string_view("get:3")));
  ASSERT_TRUE(one.step_marker(kMarkers.argument_begin));
  ASSERT_TRUE(one.step(std::string_view("{}")));
  ASSERT_TRUE(one.step_marker(kMarkers.call_end));
  EXPECT_EQ(one.markers(), std::vector<int>{kMarkers.section_end});
  EXPECT_FALSE(one.step_marker(kMarkers.call_begin));
  EXPECT_TRUE(one.step_marker(kMarkers.section_end));
}

TEST(ToolCallMatcher, NamedStartsInTheArgumentsAndMakesOneCall) {
  ToolCallMatcher m(named("get_weather"), kMarkers);
  EXPECT_EQ(m.phase(), Phase::kArguments);
  EXPECT_EQ(accepted(m, R"({"days")"), 2u) << "the schema's order: city first";
  ASSERT_TRUE(m.step(std::string_view(R"(city":"Paris","days":-7})")));
  ASSERT_TRUE(m.step_marker(kMarkers.call_end));
  EXPECT_EQ(m.markers(), std::vector<int>{kMarkers.section_end});
  EXPECT_FALSE(m.step_marker(kMarkers.call_begin));
  ASSERT_TRUE(m.step_marker(kMarkers.section_end));
  EXPECT_EQ(m.phase(), Phase::kEnd);
}

std::vector<std::string> marker_names() {
  return {std::string(kToolCallsSectionBegin), std::string(kToolCallsSectionEnd),
          std::string(kToolCallBegin), std::string(kToolCallArgumentBegin),
          std::string(kToolCallEnd)};
}

// The mask equals the brute force at states in every phase: a base token where the matcher takes
// its bytes, a marker where step_marker takes it, the end ids after the section only.
void expect_mask_equals_brute_force(const Tokenizer& tok) {
  const int V = tok.vocab_size() + 5;
  const ToolCallMarkers markers = *ToolCallMarkers::of(tok);
  JsonTokenMask masks(tok, V);
  const std::vector<int> end = {tok.eos_id()};
  auto arg = [&](ToolCallMatcher& m) { return m.step_marker(markers.argument_begin); };
  auto call_end = [&](ToolCallMatcher& m) { return m.step_marker(markers.call_end); };
  auto call_begin = [&](ToolCallMatcher& m) { return m.step_marker(markers.call_begin); };
  auto section_end = [&](ToolCallMatcher& m) { return m.step_marker(markers.section_end); };
  auto bytes = [](std::string s) { return [s](ToolCallMatcher& m) { return m.step(s); }; };
  using Step = std::function<bool(ToolCallMatcher&)>;
  const std::vector<std::vector<Step>> paths = {
      {},
      {bytes("g")},
      {bytes("get")},
      {bytes("get_")},
      {bytes("get_weather:")},
      {bytes("get_weather:3")},
      {bytes("get_weather:3"), arg},
      {bytes("get_weather:3"), arg, bytes(R"({"city": "Par)")},
      {bytes("get_weather:3"), arg, bytes(R"({"city": "Paris", "days": 4)")},
      {bytes("get_weather:3"), arg, bytes(R"({"city": "Paris", "days": 4})")},
      {bytes("get:3"), arg, bytes("{}"), call_end},
      {bytes("get:3"), arg, bytes("{}"), call_end, call_begin},
      {bytes("get:3"), arg, bytes("{}"), call_end, call_begin, bytes("functions.get_t")},
      {bytes("get:3"), arg, bytes("{}"), call_end, call_begin, bytes("functions.get_time:4"), arg},
      {bytes("get:3"), arg, bytes("{}"), call_end, section_end},
  };
  for (size_t p = 0; p < paths.size(); ++p) {
    ToolCallMatcher m(required(), markers);
    for (const Step& s : paths[p]) ASSERT_TRUE(s(m)) << "path " << p;
    const std::vector<uint64_t>& mask = masks.allowed(m, end);
    int allowed = 0;
    for (int id = 0; id < V; ++id) {
      ToolCallMatcher c = m;
      bool want;
      if (id == tok.eos_id())
        want = m.phase() == Phase::kEnd;
      else if (id >= tok.num_base_tokens())
        want = id < tok.vocab_size() && c.step_marker(id);
      else
        want = c.step(tok.token_bytes(id));
      ASSERT_EQ(JsonTokenMask::test(mask, id), want) << "path " << p << " token " << id;
      allowed += want;
    }
    EXPECT_GT(allowed, 0) << "path " << p;
  }
}

TEST(ToolCallMask, EqualsBruteForceOnTheGoldenTokenizer) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  expect_mask_equals_brute_force(test::golden_tokenizer());
}

// Fragments of the ids and arguments, so tokens span a name and its index, the index and the
// arguments, or stop inside a name shared by two functions.
Tokenizer id_fragment_tokenizer() {
  const std::vector<std::string> pieces = {
      "functions.", "functions", ".", "get", "_weather", "_time", "_", "w", ":", "3", "4", "34",
      ":3", "{", "}", "\"", "city", "Paris", "Par", "is", "Rome", "days", "utc", "true", ",", " ",
      "\":", "[", "]", "1", "2", "e", "get_weather:3"};
  return test::fragment_tokenizer(pieces, 8000, 1, 4, 7, marker_names());
}

TEST(ToolCallMask, EqualsBruteForceOnAFragmentVocabulary) {
  expect_mask_equals_brute_force(id_fragment_tokenizer());
}

// Random walks through the mask (a marker or EOS, where allowed, half the time): every walk that
// ends is a section Kimi's parser reads, with ids numbered on from first_index, known names and
// arguments that parse and match their function's schema; most walks end.
void random_walks(const Tokenizer& tok, bool parallel) {
  const int V = tok.vocab_size();
  const ToolCallMarkers markers = *ToolCallMarkers::of(tok);
  JsonTokenMask masks(tok, V);
  const std::vector<int> end = {tok.eos_id()};
  std::mt19937 rng(parallel ? 11 : 12);
  int ended = 0;
  const int walks = 40;
  for (int w = 0; w < walks; ++w) {
    ToolCallMatcher m(required(parallel), markers);
    std::string text = str(kToolCallsSectionBegin, kToolCallBegin, "functions.");
    bool done = false;
    for (int step = 0; step < 400 && !done; ++step) {
      const std::vector<uint64_t>& mask = masks.allowed(m, end);
      std::vector<int> ids, special;
      for (int id = 0; id < V; ++id)
        if (JsonTokenMask::test(mask, id)) (tok.is_special(id) ? special : ids).push_back(id);
      ASSERT_FALSE(ids.empty() && special.empty()) << "a dead end after " << text;
      const bool pick_special = !special.empty() && (ids.empty() || rng() % 2 == 0);
      const int id = pick_special ? special[rng() % special.size()] : ids[rng() % ids.size()];
      if (id == tok.eos_id()) {
        done = true;
        break;
      }
      ASSERT_TRUE(tok.is_special(id) ? m.step_marker(id) : m.step(tok.token_bytes(id)));
      text += tok.token_bytes(id);
    }
    if (!done) continue;
    ++ended;
    ASSERT_EQ(m.phase(), Phase::kEnd);
    const ParsedOutput out = parse_tool_calls(text);
    EXPECT_EQ(out.content, "");
    ASSERT_GE(out.tool_calls.size(), 1u) << text;
    if (!parallel) {
      EXPECT_EQ(out.tool_calls.size(), 1u) << text;
    }
    for (size_t k = 0; k < out.tool_calls.size(); ++k) {
      const ToolCall& c = out.tool_calls[k];
      EXPECT_EQ(c.id, str("functions.", c.name, ":", 3 + k)) << text;
      const auto fns = functions();
      auto fn = std::find_if(fns.begin(), fns.end(), [&](auto& f) { return f.name == c.name; });
      ASSERT_NE(fn, fns.end()) << c.name;
      const auto args = nlohmann::json::parse(c.arguments);  // throws on invalid JSON
      ASSERT_TRUE(args.is_object()) << c.arguments;
      JsonMatcher check(fn->parameters);
      EXPECT_TRUE(check.step(c.arguments) && check.complete()) << c.arguments;
      if (c.name == "get_weather") {
        EXPECT_TRUE(args["city"] == "Paris" || args["city"] == "Rome") << c.arguments;
        EXPECT_TRUE(args["days"].is_number_integer()) << c.arguments;
      } else if (c.name == "get_time") {
        EXPECT_TRUE(args["utc"].is_boolean()) << c.arguments;
      } else {
        EXPECT_TRUE(args.empty()) << c.arguments;
      }
    }
  }
  EXPECT_GE(ended, walks / 2);
}

TEST(ToolCallMask, RandomWalksEndInValidCalls) {
  random_walks(id_fragment_tokenizer(), true);
  random_walks(id_fragment_tokenizer(), false);
}

TEST(ToolCallMask, RandomWalksEndInValidCallsOnTheGoldenTokenizer) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  random_walks(test::golden_tokenizer(), true);
}

}  // namespace
}  // namespace kimi
