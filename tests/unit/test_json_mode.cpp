// JSON mode: the byte-level JSON object matcher against nlohmann::json's parser (what clients
// parse the output with), its limits, and the token mask against a brute-force check of every
// token of the golden tokenizer.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>

#include "runtime/json_matcher.h"
#include "runtime/json_token_mask.h"
#include "tokenizer/base64.h"
#include "tokenizer_test_util.h"

namespace kimi {
namespace {

// Bytes of s the matcher accepts before the first refusal (s.size() if none).
size_t accepted_prefix(std::string_view s, JsonMatcher* out = nullptr) {
  JsonMatcher m;
  size_t i = 0;
  while (i < s.size() && m.step(uint8_t(s[i]))) ++i;
  if (out) *out = m;
  return i;
}

bool accepts_document(std::string_view s) {
  JsonMatcher m;
  return accepted_prefix(s, &m) == s.size() && m.complete();
}

bool nlohmann_object(const std::string& s) {
  try {
    return nlohmann::json::parse(s).is_object();
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

TEST(JsonMatcher, AcceptsObjectsByteByByte) {
  const std::string docs[] = {
      "{}",
      " \n{ }",
      R"({"a":1})",
      R"({"a": [1, -2.5, 3e10, 4E-2, 0, -0, 0.125e+3, true, false, null, "x"], "b": {"c": {}}})",
      R"({"esc": "q\" b\\ s\/ \b\f\n\r\t \u00e9 \uD83D\uDE00 \u0000"})",
      "{\"utf8\": \"\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xed\x9f\xbf \xf4\x8f\xbf\xbf\"}",
      "{\"nested\": [[[]], [{}], {\"k\": [\"v\"]}]}",
      "{\n  \"pretty\": [\n    1,\n    2\n  ]\n}",
  };
  for (const std::string& d : docs) {
    ASSERT_TRUE(nlohmann_object(d)) << d;
    JsonMatcher m;
    for (size_t i = 0; i < d.size(); ++i) {
      EXPECT_FALSE(m.complete()) << d << " at " << i;
      ASSERT_TRUE(m.step(uint8_t(d[i]))) << d << " refused at byte " << i;
    }
    EXPECT_TRUE(m.complete()) << d;
    EXPECT_FALSE(m.step(uint8_t(' '))) << "nothing may follow the object";
    EXPECT_FALSE(m.step(uint8_t('{')));
  }
}

// Each text is refused exactly at the byte marked by its index (the prefix before is fine).
TEST(JsonMatcher, RefusesAtTheFirstBadByte) {
  const std::pair<std::string, size_t> cases[] = {
      {"[1]", 0},                 // the top level must be an object
      {"\"a\"", 0},
      {"1", 0},
      {"{,", 1},
      {"{\"a\" 1}", 5},
      {"{\"a\":01}", 6},         // no leading zeros
      {"{\"a\":1.}", 7},         // a digit must follow the point
      {"{\"a\":-}", 6},
      {"{\"a\":1e}", 7},
      {"{\"a\":1e+}", 8},
      {"{\"a\":tru}", 8},
      {"{\"a\":nul1}", 8},
      {"{\"a\":1,}", 7},         // no trailing comma
      {"{\"a\":[1,]}", 8},
      {"{\"a\":[1}", 7},         // bracket mismatch
      {"{\"a\":{]", 6},
      {"{\"a\":\"\x01\"}", 6},   // control character in a string
      {"{\"a\":\"\\x\"}", 7},    // unknown escape
      {"{\"a\":\"\\u12g4\"}", 10},
      {"{\"a\":\"\\udc00\"}", 9},  // a lone low surrogate, refused at its second digit
      {"{\"a\":\"\\ud800x\"}", 12},  // a high surrogate needs a low one
      {"{\"a\":\"\\ud800\\u0041\"}", 14},
      {"{\"a\":\"\xc0\xaf\"}", 6},      // overlong UTF-8
      {"{\"a\":\"\xed\xa0\x80\"}", 7},  // UTF-8 surrogate
      {"{\"a\":\"\xe2\x82\"}", 8},      // truncated character
      {"{\"a\":\"\xf5\"}", 6},
      {"{}}", 2},
      {"{\"a\":1e123}", 9},      // at most 2 exponent digits
  };
  for (const auto& [text, at] : cases) EXPECT_EQ(accepted_prefix(text), at) << text;
}

TEST(JsonMatcher, LimitsLeaveNoDeadEnds) {
  // Depth: the 65th open container is refused; the text can still be closed.
  std::string deep = "{\"a\":";
  for (int i = 1; i < JsonMatcher::kMaxDepth; ++i) deep += "[";
  EXPECT_EQ(accepted_prefix(deep + "["), deep.size());
  std::string closed = deep + "1";
  for (int i = 1; i < JsonMatcher::kMaxDepth; ++i) closed += "]";
  EXPECT_TRUE(accepts_document(closed + "}"));
  // Whitespace runs.
  const std::string ws(JsonMatcher::kMaxWhitespaceRun, ' ');
  EXPECT_TRUE(accepts_document("{" + ws + "\"a\":" + ws + "1" + ws + "}"));
  EXPECT_EQ(accepted_prefix("{" + ws + " "), 1 + ws.size());
  // Number length: a part that cannot end the number needs room for one more byte.
  const int max = JsonMatcher::kMaxNumberBytes;
  const std::string digits(size_t(max), '1');
  EXPECT_TRUE(accepts_document("{\"a\":" + digits + "}"));
  EXPECT_EQ(accepted_prefix("{\"a\":" + digits + "1"), 5 + size_t(max));
  const std::string almost(size_t(max - 1), '1');
  EXPECT_EQ(accepted_prefix("{\"a\":" + almost + "."), 5 + size_t(max - 1));  // no room for a digit
  EXPECT_TRUE(accepts_document("{\"a\":" + almost + "}"));
  EXPECT_TRUE(accepts_document("{\"a\":-" + std::string(size_t(max - 2), '1') + "}"));
}

// Random documents (random values, random whitespace) are accepted; random one-byte edits of them
// are accepted exactly when nlohmann parses them as an object.
TEST(JsonMatcher, AgreesWithNlohmannOnRandomDocumentsAndEdits) {
  std::mt19937 rng(7);
  auto ws = [&] {
    static const char kWs[] = {' ', '\n', '\t', '\r'};
    std::string s;
    for (int n = int(rng() % 3); n > 0; --n) s += kWs[rng() % 4];
    return s;
  };
  std::function<std::string(int)> value = [&](int depth) -> std::string {
    switch (depth > 3 ? rng() % 5 : rng() % 7) {
      case 0: return std::to_string(int(rng() % 2001) - 1000);
      case 1: return std::to_string(int(rng() % 100)) + "." + std::to_string(rng() % 1000) + "e-" + std::to_string(rng() % 10);
      case 2: {
        static const char* kStrings[] = {"\"\"", "\"abc\"", "\"\\n\\u00e9\\\"\"", "\"\xe4\xb8\xad\xe6\x96\x87\"", "\"\\ud83d\\ude00\""};
        return kStrings[rng() % 5];
      }
      case 3: return "true";
      case 4: return "null";
      case 5: {
        std::string s = std::string("[") + ws();  // not "[" + ws(): gcc 12's -Wrestrict misfires
        for (int n = int(rng() % 4), i = 0; i < n; ++i) {
          if (i) s += ',', s += ws();
          s += value(depth + 1), s += ws();
        }
        return s + "]";
      }
      default: {
        std::string s = std::string("{") + ws();
        for (int n = int(rng() % 4), i = 0; i < n; ++i) {
          if (i) s += ',', s += ws();
          s += "\"k" + std::to_string(i) + "\"", s += ws(), s += ':', s += ws();
          s += value(depth + 1), s += ws();
        }
        return s + "}";
      }
    }
  };
  const std::string alphabet = "{}[]:,\"\\ 0123456789.eE+-tfnrulsa\x01\x80\xc3\xa9";
  int edits_ok = 0, edits_bad = 0;
  for (int iter = 0; iter < 400; ++iter) {
    std::string obj = std::string("{") + ws() + "\"root\"" + ws() + ":" + ws() + value(0) + ws() + "}";
    ASSERT_TRUE(nlohmann_object(obj)) << obj;
    ASSERT_TRUE(accepts_document(obj)) << obj;
    for (int e = 0; e < 8; ++e) {
      std::string edit = obj;
      const size_t at = rng() % edit.size();
      const char c = alphabet[rng() % alphabet.size()];
      switch (rng() % 3) {
        case 0: edit[at] = c; break;
        case 1: edit.insert(edit.begin() + long(at), c); break;
        default: edit.erase(at, 1); break;
      }
      // nlohmann also takes whitespace after the object; the matcher ends at its '}'.
      const bool ours = accepts_document(edit), theirs = nlohmann_object(edit) && edit.back() == '}';
      EXPECT_EQ(ours, theirs) << edit;
      (theirs ? edits_ok : edits_bad) += 1;
    }
  }
  EXPECT_GT(edits_ok, 100);  // both outcomes were exercised
  EXPECT_GT(edits_bad, 100);
}

// The mask equals stepping every token's bytes on a copy of the matcher, at states all over the
// grammar; special tokens are never allowed; a complete object allows only the end ids.
void expect_mask_equals_brute_force(const Tokenizer& tok) {
  const int V = tok.vocab_size() + 5;  // the model's vocabulary may be wider than the tokenizer's
  JsonTokenMask masks(tok, V);
  const std::vector<int> end = {tok.eos_id()};
  const std::string prefixes[] = {"",          "{",          "{\"",       "{\"ab",
                                  "{\"a\"",    "{\"a\": ",   "{\"a\":1",  "{\"a\":-",
                                  "{\"a\":1.5e", "{\"a\":[",  "{\"a\":[1,", "{\"a\":\"\\",
                                  "{\"a\":\"\\u0", "{\"a\":\"\\ud83d", "{\"a\":\"\xe4", "{\"a\":tr",
                                  "{\"a\":{\"b\":[{}]", "{\"a\":0"};
  for (const std::string& p : prefixes) {
    JsonMatcher m;
    ASSERT_TRUE(m.step(p)) << p;
    for (int pass = 0; pass < 2; ++pass) {  // the second answer comes from the cache
      const std::vector<uint64_t>& mask = masks.allowed(m, end);
      int allowed = 0;
      for (int id = 0; id < V; ++id) {
        bool want = false;
        if (id < tok.num_base_tokens()) {
          JsonMatcher c = m;
          want = c.step(tok.token_bytes(id));
        }
        ASSERT_EQ(JsonTokenMask::test(mask, id), want) << "prefix '" << p << "' token " << id;
        allowed += want;
      }
      EXPECT_GT(allowed, 0) << p;
    }
  }
  JsonMatcher done;
  ASSERT_TRUE(done.step(std::string_view("{}")));
  const std::vector<uint64_t>& mask = masks.allowed(done, end);
  for (int id = 0; id < V; ++id) EXPECT_EQ(JsonTokenMask::test(mask, id), id == tok.eos_id()) << id;
  std::vector<float> logits(size_t(V), 1.f);
  JsonTokenMask::apply(mask, logits);
  for (int id = 0; id < V; ++id) EXPECT_EQ(std::isinf(logits[size_t(id)]), id != tok.eos_id());
}

TEST(JsonTokenMask, EqualsBruteForceOnTheGoldenTokenizer) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  expect_mask_equals_brute_force(test::golden_tokenizer());
}

// A 20,000-token vocabulary of JSON-ish fragments: many shared prefixes, escapes, surrogates,
// split UTF-8 characters and number parts, so the sorted walk's prefix reuse and skipping are
// exercised on every kind of refusal.
TEST(JsonTokenMask, EqualsBruteForceOnAFragmentVocabulary) {
  const std::vector<std::string> pieces = {
      "{", "}", "[", "]", ":", ",", "\"", " ", "\n", "  ", "\\", "\\u", "d83d", "de00", "00e9",
      "dc", "1", "0", "-", ".", "5e", "E+", "12", "true", "fals", "e", "null", "nu", "a", "key",
      "\xc3", "\xa9", "\xe4\xb8", "\xad", "\xed\xa0", "\t", "x", "\":", "\",\"", "\"}", "],", "\x01"};
  expect_mask_equals_brute_force(test::fragment_tokenizer(pieces, 20000, 2, 5, 3));
}

}  // namespace
}  // namespace kimi
