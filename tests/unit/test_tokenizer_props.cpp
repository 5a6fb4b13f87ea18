// Tokenizer properties on random text, the HF chunking rule, UTF-8 rejection, BPE strategies and
// the pattern rewrite.
#include <random>

#include "random_text.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer_test_util.h"

namespace kimi {
namespace {

using test::golden_tokenizer;

TEST(TokenizerProps, DecodeEncodeRoundTrip) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  const Tokenizer& tok = golden_tokenizer();
  std::mt19937 rng(1234);
  for (int i = 0; i < 400; ++i) {
    const std::string s = test::random_text(rng, 1 + static_cast<int>(rng() % 60));
    ASSERT_TRUE(is_valid_utf8(s));
    const auto with = tok.encode(s, true), without = tok.encode(s, false);
    ASSERT_EQ(tok.decode(with), s) << "case " << i;
    ASSERT_EQ(tok.decode(without), s) << "case " << i;
    for (const int id : without) ASSERT_FALSE(tok.is_special(id)) << "case " << i;
  }
}

TEST(TokenizerProps, SpecialStringsBecomeSpecialIdsOnlyWhenAllowed) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  const Tokenizer& tok = golden_tokenizer();
  const int im_end = *tok.special_id("<|im_end|>");
  const int reserved = tok.num_base_tokens() + 100;
  const std::string text = "a<|im_end|>b" + reserved_token_name(reserved) + "<|im_en";
  const auto ids = tok.encode(text, true);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), im_end), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), reserved), 1);
  EXPECT_EQ(ids.front(), tok.encode("a", false).front());
  const auto plain = tok.encode(text, false);
  EXPECT_EQ(std::count_if(plain.begin(), plain.end(), [&](int id) { return tok.is_special(id); }),
            0);
}

TEST(TokenizerProps, IncrementalDetokenizationYieldsText) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  const Tokenizer& tok = golden_tokenizer();
  std::mt19937 rng(99);
  for (int i = 0; i < 300; ++i) {
    const std::string s = test::random_text(rng, 1 + static_cast<int>(rng() % 50));
    StreamDecoder dec(tok);
    std::string got;
    for (const int id : tok.encode(s, true)) {
      const std::string piece = dec.push(id);
      ASSERT_TRUE(is_valid_utf8(piece)) << "case " << i;
      got += piece;
    }
    got += dec.flush();
    ASSERT_EQ(got, s) << "case " << i;
  }
}

TEST(TokenizerProps, RejectsInvalidUtf8) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  const Tokenizer& tok = golden_tokenizer();
  const std::vector<std::string> bad = {"\xFF",         "ok\x80",          "\xC0\xAF",
                                        "\xE0\x80\xAF", "\xED\xA0\x80",    "\xF4\x90\x80\x80",
                                        "\xE4\xB8",     "abc\xF0\x9F\x98", "\xF8\x88\x80\x80\x80"};
  for (const auto& s : bad) {
    for (const bool special : {true, false}) {
      try {
        tok.encode(s, special);
        ADD_FAILURE() << "accepted invalid UTF-8 of " << s.size() << " bytes";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("not valid UTF-8"), std::string::npos) << e.what();
      }
    }
  }
  try {
    tok.encode("abc\xE4\xB8", true);
    ADD_FAILURE() << "accepted a truncated sequence";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("byte offset 3"), std::string::npos) << e.what();
  }
}

TEST(TokenizerProps, DecodeRejectsOutOfRangeIds) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  const Tokenizer& tok = golden_tokenizer();
  const std::vector<int> bad1 = {1, -1}, bad2 = {tok.vocab_size()};
  EXPECT_THROW(tok.decode(bad1), Error);
  EXPECT_THROW(tok.decode(bad2), Error);
}

// tokenization_kimi.py cuts text into 400,000-character windows, then cuts each window so that
// no piece holds more than 25,000 consecutive whitespace or non-whitespace characters. The
// expected cuts below are worked out by hand from that rule.
TEST(TokenizerProps, HfChunkingRule) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  const Tokenizer& tok = golden_tokenizer();
  auto chunks = [&](std::initializer_list<std::string> parts) {
    std::vector<int> ids;
    for (const auto& p : parts) tok.encode_chunk(p, true, ids);
    return ids;
  };
  auto rep = [](const std::string& s, size_t n) {
    std::string out;
    for (size_t i = 0; i < n; ++i) out += s;
    return out;
  };
  // Each case: the text, the chunks the rule gives. The cut must also be visible (encoding the
  // text as one chunk gives other ids), or the case would prove nothing.
  struct Case {
    std::string text;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      // 30,001 letters: cut after 25,000 characters.
      {rep("a", 25000) + rep("b", 5001), {rep("a", 25000), rep("b", 5001)}},
      // Characters, not bytes: 3-byte Hangul (the vocabulary has 안녕).
      {rep("안", 25000) + "녕", {rep("안", 25000), "녕"}},
      // A whitespace run between two letters (the tab makes the pairing of spaces differ).
      {"x\t" + rep(" ", 30000) + "y", {"x\t" + rep(" ", 24999), rep(" ", 5001) + "y"}},
      // U+3000 counts as whitespace (str.isspace), U+180E does not.
      {"a" + rep("\xE3\x80\x80", 24999) + rep(" ", 1001) + "b",
       {"a" + rep("\xE3\x80\x80", 24999) + " ", rep(" ", 1000) + "b"}},
      // Short alternating runs never trigger a cut, but the 400,000-character window does.
      {rep("a ", 200000) + "b", {rep("a ", 200000), "b"}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    std::vector<int> expected;
    for (const auto& p : cases[i].parts) tok.encode_chunk(p, true, expected);
    std::vector<int> whole;
    tok.encode_chunk(cases[i].text, true, whole);
    ASSERT_NE(expected, whole) << "case " << i << " cannot tell a cut from none";
    EXPECT_EQ(tok.encode(cases[i].text, true), expected) << "case " << i;
  }
  // Exactly at the limits nothing is cut.
  EXPECT_EQ(tok.encode(rep("z", 25000), true), chunks({rep("z", 25000)}));
}

TEST(TokenizerProps, LinearAndHeapMergesAgree) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  const Tokenizer& tok = golden_tokenizer();
  // Rebuild the base vocabulary to call the merge strategies directly.
  std::vector<std::string> tokens;
  for (int r = 0; r < tok.num_base_tokens(); ++r) tokens.emplace_back(tok.token_bytes(r));
  const BpeVocab vocab(tokens);
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) {
    const std::string s = test::random_text(rng, 1 + static_cast<int>(rng() % 80));
    std::vector<int> a, b;
    vocab.merge_linear(s, a);
    vocab.merge_heap(s, b);
    ASSERT_EQ(a, b) << "case " << i;
    ASSERT_EQ(tok.decode(a), s);
  }
  // A long piece takes the heap path inside encode and must still match tiktoken's order.
  const std::string long_word(5000, 'a');
  std::vector<int> lin, heap;
  vocab.merge_linear(long_word, lin);
  vocab.merge_heap(long_word, heap);
  EXPECT_EQ(lin, heap);
}

TEST(Pretokenizer, RewritesIntersectionsAndScripts) {
  EXPECT_EQ(to_pcre2_pattern(R"([a-z&&[^q]]+)"), R"((?:(?![q])[a-z])+)");
  EXPECT_EQ(to_pcre2_pattern(R"([\p{L}&&[\p{Han}]])"), R"((?:(?=[\p{sc=Han}])[\p{L}]))");
  EXPECT_EQ(to_pcre2_pattern(R"([\p{Han}]+)"), R"([\p{sc=Han}]+)");
  const std::string ws =
      R"(\x{9}-\x{D}\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";
  EXPECT_EQ(to_pcre2_pattern(R"(\s+(?!\S))"), "[" + ws + "]+(?![^" + ws + "])");
  EXPECT_EQ(to_pcre2_pattern(R"([^\s\p{L}])"), "[^" + ws + R"(\p{L}])");
  const std::string kimi = to_pcre2_pattern(kKimiPattern);
  EXPECT_EQ(kimi.find("&&"), std::string::npos);
  EXPECT_EQ(kimi.find(R"(\p{Han})"), std::string::npos);
  size_t han = 0;
  for (size_t at = kimi.find(R"(\p{sc=Han})"); at != std::string::npos;
       at = kimi.find(R"(\p{sc=Han})", at + 1))
    ++han;
  EXPECT_EQ(han, 5u);
  EXPECT_THROW(to_pcre2_pattern(R"([a&&b])"), Error);
  EXPECT_THROW(to_pcre2_pattern(R"([abc)"), Error);
}

TEST(Pretokenizer, ScriptAndWhitespaceTraps) {
  const Pretokenizer pre;
  auto split = [&](std::string_view s) {
    std::vector<std::string> out;
    for (auto p : pre.split(s)) out.emplace_back(p);
    return out;
  };
  // U+3001 has Script=Common (Script_Extensions includes Han): not part of the Han run.
  EXPECT_EQ(split("中、文"), (std::vector<std::string>{"中", "、", "文"}));
  // U+180E is not White_Space (PCRE2's UCP \s would say it is).
  EXPECT_EQ(split("!\xE1\xA0\x8E"), (std::vector<std::string>{"!\xE1\xA0\x8E"}));
  // Han letters are excluded from the letter runs; contractions are case-insensitive.
  EXPECT_EQ(split("abc中文DON'T"), (std::vector<std::string>{"abc", "中文", "DON'T"}));
  EXPECT_EQ(split("12345 \r\n\r\n  x"),
            (std::vector<std::string>{"123", "45", " \r\n\r\n", " ", " x"}));
}

}  // namespace
}  // namespace kimi
