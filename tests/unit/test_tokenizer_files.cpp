// Loading: malformed tiktoken.model / tokenizer_config.json, and the trained tiny tokenizer.
#include <random>

#include "random_text.h"
#include "tokenizer/base64.h"
#include "tokenizer/train.h"
#include "tokenizer_test_util.h"

namespace kimi {
namespace {

using test::TempDir;

// A valid tiktoken.model with the 256 single bytes (ranks 0..255) plus extra lines.
std::string byte_model(const std::vector<std::string>& extra = {}) {
  std::string s;
  for (int b = 0; b < 256; ++b)
    s += base64_encode(std::string(1, char(b))) + " " + std::to_string(b) + "\n";
  for (const auto& line : extra) s += line + "\n";
  return s;
}

std::string config_with(const std::string& decoder_entries, const std::string& extra = "") {
  return R"({"added_tokens_decoder": {)" + decoder_entries + "}" + extra + "}";
}

// Loads DIR and returns the error message ("" if it loaded).
std::string load_error(const TempDir& dir) {
  try {
    Tokenizer::load(dir.str());
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_error(const TempDir& dir, const std::vector<std::string>& fragments) {
  const std::string msg = load_error(dir);
  ASSERT_FALSE(msg.empty()) << "loaded without error";
  for (const auto& f : fragments)
    EXPECT_NE(msg.find(f), std::string::npos) << msg << " lacks " << f;
}

TEST(TokenizerFiles, Base64) {
  EXPECT_EQ(base64_decode("aGVsbG8="), "hello");
  EXPECT_EQ(base64_decode("aGk="), "hi");
  EXPECT_EQ(base64_decode(""), "");
  EXPECT_FALSE(base64_decode("aGk"));   // unpadded
  EXPECT_FALSE(base64_decode("aG=k"));  // padding inside
  EXPECT_FALSE(base64_decode("aGl="));  // non-zero bits under the padding
  EXPECT_FALSE(base64_decode("a*k="));
  std::mt19937 rng(5);
  for (int i = 0; i < 200; ++i) {
    std::string bytes(rng() % 20, '\0');
    for (auto& c : bytes) c = static_cast<char>(rng());
    EXPECT_EQ(base64_decode(base64_encode(bytes)), bytes);
  }
}

TEST(TokenizerFiles, MinimalValidTokenizerLoads) {
  TempDir dir;
  dir.write("tiktoken.model", byte_model({base64_encode("ab") + " 256", ""}));
  dir.write("tokenizer_config.json",
            config_with(R"("257": {"content": "[BOS]"}, "258": {"content": "[EOS]"})"));
  const Tokenizer tok = Tokenizer::load(dir.str());
  EXPECT_EQ(tok.num_base_tokens(), 257);
  EXPECT_EQ(tok.vocab_size(), 257 + 256);
  EXPECT_EQ(tok.bos_id(), 257);
  EXPECT_EQ(tok.eos_id(), 258);
  EXPECT_EQ(tok.pad_id(), -1);  // no [PAD] in this file
  EXPECT_EQ(tok.encode("abab", false), (std::vector<int>{256, 256}));
  EXPECT_EQ(tok.token_bytes(300), "<|reserved_token_300|>");
}

TEST(TokenizerFiles, MalformedTiktokenModel) {
  const std::string config = config_with(R"("257": {"content": "[BOS]"})");
  struct Case {
    std::string model;
    std::vector<std::string> fragments;
  };
  const std::vector<Case> cases = {
      {byte_model({"YWI= 256 7"}), {"tiktoken.model:257", "expected 'base64 rank'"}},
      {byte_model({"YWI=256"}), {"tiktoken.model:257", "expected 'base64 rank'"}},
      {byte_model({"Y@I= 256"}), {"tiktoken.model:257", "not valid base64"}},
      {byte_model({"YWI= x1"}), {"tiktoken.model:257", "rank 'x1'"}},
      {byte_model({"YWI= -3"}), {"tiktoken.model:257", "rank '-3'"}},
      {byte_model({"YWI= 255"}),
       {"tiktoken.model:257", "rank 255 was already defined on line 256"}},
      {byte_model({"YWI= 300"}), {"tiktoken.model", "rank 256 is missing"}},
      {byte_model({"", "YQ== 256"}), {"tiktoken.model:258", "repeat those of rank 97"}},
      {"YWI= 0\n", {"tiktoken.model", "no token for the single byte 0"}},
      {"", {"tiktoken.model", "no tokens"}},
  };
  for (const auto& c : cases) {
    TempDir dir;
    dir.write("tiktoken.model", c.model);
    dir.write("tokenizer_config.json", config);
    expect_error(dir, c.fragments);
  }
  TempDir empty;
  expect_error(empty, {"tiktoken.model", "cannot open"});
}

TEST(TokenizerFiles, MalformedTokenizerConfig) {
  struct Case {
    std::string config;
    std::vector<std::string> fragments;
  };
  const std::vector<Case> cases = {
      {"{\"added_tokens_decoder\": {\n  \"256\": }", {"tokenizer_config.json", "line 2"}},
      {"[1, 2]", {"tokenizer_config.json", "expected a JSON object"}},
      {config_with(R"("12": {"content": "x"})"),
       {"tokenizer_config.json", "id 12", "outside the special range [256, 512)"}},
      {config_with(R"("600": {"content": "x"})"), {"tokenizer_config.json", "id 600"}},
      {config_with(R"("abc": {"content": "x"})"),
       {"tokenizer_config.json", "'abc' is not a token id"}},
      {config_with(R"("256": {"name": "x"})"), {"tokenizer_config.json", "no string 'content'"}},
      {config_with(R"("256": {"content": ""})"), {"tokenizer_config.json", "empty name"}},
      {config_with(R"("256": {"content": "[X]"}, "257": {"content": "[X]"})"),
       {"tokenizer_config.json", "'[X]' is used by ids"}},
      {config_with(R"("256": {"content": "<|reserved_token_300|>"})"),
       {"tokenizer_config.json", "is used by ids"}},
      {config_with(R"("256": {"content": "[BOS]"})", R"(, "eos_token": "[NOPE]")"),
       {"tokenizer_config.json", "eos_token '[NOPE]'"}},
      {config_with(R"("256": {"content": "[BOS]"})", R"(, "bos_token": 5)"),
       {"tokenizer_config.json", "bos_token must be a string"}},
      {R"({"added_tokens_decoder": []})", {"tokenizer_config.json", "must be an object"}},
  };
  for (const auto& c : cases) {
    TempDir dir;
    dir.write("tiktoken.model", byte_model());
    dir.write("tokenizer_config.json", c.config);
    expect_error(dir, c.fragments);
  }
}

TEST(TokenizerFiles, TokenFieldsAsObjects) {
  TempDir dir;
  dir.write("tiktoken.model", byte_model());
  dir.write(
      "tokenizer_config.json",
      config_with(R"("256": {"content": "<s>"}, "257": {"content": "</s>"})",
                  R"(, "bos_token": {"content": "<s>"}, "eos_token": "</s>", "pad_token": null)"));
  const Tokenizer tok = Tokenizer::load(dir.str());
  EXPECT_EQ(tok.bos_id(), 256);
  EXPECT_EQ(tok.eos_id(), 257);
  EXPECT_EQ(tok.pad_id(), -1);
  EXPECT_EQ(tok.stop_ids(), std::vector<int>{257});  // no <|im_end|> here
}

TEST(TrainedTokenizer, RoundTripsThroughLoad) {
  TempDir dir;
  constexpr int kMerges = 300;
  write_trained_tokenizer(dir.str(), kMerges);
  const Tokenizer tok = Tokenizer::load(dir.str());
  const int base = 256 + kMerges;
  EXPECT_EQ(tok.num_base_tokens(), base);
  EXPECT_EQ(tok.vocab_size(), base + 256);
  EXPECT_EQ(tok.bos_id(), base);
  EXPECT_EQ(tok.eos_id(), base + 1);
  EXPECT_EQ(tok.pad_id(), base + 255);
  for (const auto& slot : kimi_special_layout())
    EXPECT_EQ(tok.special_id(slot.name), base + slot.offset);
  EXPECT_EQ(tok.special_id("<|reserved_token_" + std::to_string(base + 5) + "|>"), base + 5);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(tok.token_bytes(b), std::string(1, char(b)));

  // The merges compress the corpus they were learned from.
  const std::string_view corpus = tiny_training_corpus();
  const auto ids = tok.encode(corpus, false);
  EXPECT_EQ(tok.decode(ids), corpus);
  EXPECT_LT(ids.size() * 10, corpus.size() * 6) << "300 merges should save > 40% of the tokens";

  std::mt19937 rng(11);
  for (int i = 0; i < 100; ++i) {
    const std::string s = test::random_text(rng, 1 + static_cast<int>(rng() % 40));
    ASSERT_EQ(tok.decode(tok.encode(s, true)), s);
  }
  const std::string chat = "<|im_user|>user<|im_middle|>hi<|im_end|>";
  EXPECT_EQ(tok.encode(chat, true).front(), base + 3);
}

TEST(TrainedTokenizer, DeterministicAndBounded) {
  const auto a = train_bpe(tiny_training_corpus(), 200);
  const auto b = train_bpe(tiny_training_corpus(), 200);
  EXPECT_EQ(a, b);
  ASSERT_EQ(a.size(), 456u);
  // The first merges extend the vocabulary with frequent pairs, each made of two tokens.
  for (size_t r = 256; r < a.size(); ++r) EXPECT_GE(a[r].size(), 2u);
  const auto longer = train_bpe(tiny_training_corpus(), 250);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), longer.begin()));  // a prefix: same merge order
  EXPECT_THROW(train_bpe(tiny_training_corpus(), 100000), Error);
  EXPECT_THROW(train_bpe("ab", 5), Error);
}

}  // namespace
}  // namespace kimi
