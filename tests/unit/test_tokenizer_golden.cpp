// Golden cases: ids produced by the tiktoken library for shared/golden/tokenizer-a.
#include <unistd.h>

#include "tokenizer/pretokenizer.h"
#include "tokenizer_test_util.h"

namespace kimi {
namespace {

using test::golden_tokenizer;
using test::golden_tokenizer_dir;

const nlohmann::json& golden_cases() {
  static const nlohmann::json cases = test::read_json(golden_tokenizer_dir() + "/cases.json");
  return cases;
}

TEST(TokenizerGolden, LoadsVocabularyAndSpecials) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  const Tokenizer& tok = golden_tokenizer();
  const int base = golden_cases()["num_base_tokens"].get<int>();
  EXPECT_EQ(tok.num_base_tokens(), base);
  EXPECT_EQ(tok.vocab_size(), base + 256);
  EXPECT_EQ(tok.bos_id(), base);
  EXPECT_EQ(tok.eos_id(), base + 1);
  EXPECT_EQ(tok.pad_id(), base + 255);
  EXPECT_EQ(tok.special_id("<|im_end|>"), base + 2);
  EXPECT_EQ(tok.special_id("<|im_middle|>"), base + 17);
  EXPECT_EQ(tok.special_id("[UNK]"), base + 254);
  EXPECT_EQ(tok.special_id("<|reserved_token_" + std::to_string(base + 5) + "|>"), base + 5);
  EXPECT_FALSE(tok.special_id("<|not_a_token|>").has_value());
  EXPECT_EQ(tok.stop_ids(), (std::vector<int>{base + 2, base + 1}));
  EXPECT_TRUE(tok.is_special(base));
  EXPECT_TRUE(tok.is_special(base + 255));
  EXPECT_FALSE(tok.is_special(base - 1));
  EXPECT_FALSE(tok.is_special(base + 256));
  EXPECT_EQ(tok.token_bytes(base + 10), "<|im_system|>");
  for (const auto& slot : kimi_special_layout())
    EXPECT_EQ(tok.special_id(slot.name), base + slot.offset) << slot.name;
}

TEST(TokenizerGolden, PatternMatchesUpstream) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  EXPECT_EQ(golden_cases()["pattern"].get<std::string>(), kKimiPattern);
}

TEST(TokenizerGolden, EncodeWithSpecials) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  const Tokenizer& tok = golden_tokenizer();
  int n = 0;
  for (const auto& c : golden_cases()["cases"]) {
    const auto text = c["text"].get<std::string>();
    EXPECT_EQ(tok.encode(text, true), c["ids"].get<std::vector<int>>()) << "text: " << text;
    ++n;
  }
  EXPECT_GT(n, 30);  // the file was read
}

TEST(TokenizerGolden, EncodeWithoutSpecials) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  const Tokenizer& tok = golden_tokenizer();
  for (const auto& c : golden_cases()["cases"]) {
    const auto text = c["text"].get<std::string>();
    EXPECT_EQ(tok.encode(text, false), c["ids_no_special"].get<std::vector<int>>())
        << "text: " << text;
  }
}

TEST(TokenizerGolden, DecodeRoundTrip) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  const Tokenizer& tok = golden_tokenizer();
  for (const auto& c : golden_cases()["cases"]) {
    const auto text = c["text"].get<std::string>();
    EXPECT_EQ(tok.decode(c["ids"].get<std::vector<int>>()), text);
    EXPECT_EQ(tok.decode(c["ids_no_special"].get<std::vector<int>>()), text);
  }
}

TEST(TokenizerGolden, Pretokens) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  const Pretokenizer pre;
  for (const auto& c : golden_cases()["cases"]) {
    const auto text = c["text"].get<std::string>();
    std::vector<std::string> got;
    for (auto p : pre.split(text)) got.emplace_back(p);
    EXPECT_EQ(got, c["pretokens"].get<std::vector<std::string>>()) << "text: " << text;
  }
}

// Random mixed-script strings (all planes, combining marks, emoji, odd whitespace, special-token
// text) encoded by tiktoken 0.14.0 itself; see tests/data/gen_tiktoken_fuzz.py.
TEST(TokenizerGolden, MatchesTiktokenOnRandomStrings) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  const Tokenizer& tok = golden_tokenizer();
  std::ifstream f(std::string(KIMI_SOURCE_DIR) + "/tests/data/tiktoken_fuzz_tokenizer_a.jsonl");
  ASSERT_TRUE(f) << "tests/data/tiktoken_fuzz_tokenizer_a.jsonl is missing";
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    const auto j = nlohmann::json::parse(line);
    const auto text = j["text"].get<std::string>();
    ASSERT_EQ(tok.encode(text, true), j["ids"].get<std::vector<int>>()) << "line " << n + 1;
    ASSERT_EQ(tok.encode(text, false), j["ids_no_special"].get<std::vector<int>>())
        << "line " << n + 1;
    ++n;
  }
  EXPECT_EQ(n, 300);
}

}  // namespace
}  // namespace kimi
