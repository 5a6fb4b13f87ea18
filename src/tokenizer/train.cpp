#include "tokenizer/train.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "core/check.h"
#include "tokenizer/base64.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/special_tokens.h"

namespace kimi {

namespace {

struct Word {
  std::vector<int> ids;
  int64_t count;
};

uint64_t pair_key(int a, int b) {
  return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
}

// Replaces every non-overlapping (a, b), left to right, with merged. Returns whether any did.
bool apply_merge(std::vector<int>& ids, int a, int b, int merged) {
  size_t w = 0;
  bool changed = false;
  for (size_t r = 0; r < ids.size(); ++w) {
    if (r + 1 < ids.size() && ids[r] == a && ids[r + 1] == b) {
      ids[w] = merged;
      r += 2;
      changed = true;
    } else {
      ids[w] = ids[r++];
    }
  }
  ids.resize(w);
  return changed;
}

}  // namespace

std::vector<std::string> train_bpe(std::string_view corpus, int num_merges) {
  KIMI_CHECK(num_merges >= 0, "num_merges must be >= 0, got ", num_merges);
  std::map<std::string, int64_t> piece_counts;  // ordered: deterministic word order
  Pretokenizer().split(corpus, [&](std::string_view p) { ++piece_counts[std::string(p)]; });
  std::vector<Word> words;
  for (const auto& [piece, count] : piece_counts) {
    if (piece.size() < 2) continue;
    Word w{{}, count};
    for (const char c : piece) w.ids.push_back(static_cast<unsigned char>(c));
    words.push_back(std::move(w));
  }

  std::vector<std::string> tokens;
  std::unordered_map<std::string, int> token_ids;
  for (int b = 0; b < 256; ++b) {
    tokens.emplace_back(1, static_cast<char>(b));
    token_ids[tokens.back()] = b;
  }
  std::unordered_map<uint64_t, int64_t> pairs;
  while (static_cast<int>(tokens.size()) < 256 + num_merges) {
    pairs.clear();
    for (const Word& w : words)
      for (size_t i = 0; i + 1 < w.ids.size(); ++i)
        pairs[pair_key(w.ids[i], w.ids[i + 1])] += w.count;
    uint64_t best = 0;
    int64_t best_count = 0;
    for (const auto& [key, count] : pairs)
      if (count > best_count || (count == best_count && key < best)) {
        best = key;
        best_count = count;
      }
    if (best_count == 0)
      fail("the training corpus supports only ", tokens.size() - 256, " merges, ", num_merges,
           " were asked for");
    const int a = static_cast<int>(best >> 32), b = static_cast<int>(best & 0xFFFFFFFFu);
    std::string bytes = tokens[a] + tokens[b];
    // Two different pairs can spell the same bytes ("ab"+"c", "a"+"bc"): reuse that token.
    auto [it, fresh] = token_ids.emplace(bytes, static_cast<int>(tokens.size()));
    if (fresh) tokens.push_back(std::move(bytes));
    for (Word& w : words) apply_merge(w.ids, a, b, it->second);
  }
  return tokens;
}

void write_trained_tokenizer(const std::string& dir, int num_merges) {
  const std::vector<std::string> tokens = train_bpe(tiny_training_corpus(), num_merges);
  std::filesystem::create_directories(dir);
  {
    std::ofstream f(dir + "/tiktoken.model", std::ios::binary);
    if (!f) fail("cannot write ", dir, "/tiktoken.model");
    for (size_t r = 0; r < tokens.size(); ++r) f << base64_encode(tokens[r]) << ' ' << r << '\n';
    if (!f) fail("cannot write ", dir, "/tiktoken.model");
  }
  const int base = static_cast<int>(tokens.size());
  std::vector<std::string> names(kNumSpecialSlots);
  for (const auto& slot : kimi_special_layout()) names[slot.offset] = slot.name;
  nlohmann::ordered_json decoder = nlohmann::ordered_json::object();
  for (int i = 0; i < kNumSpecialSlots; ++i) {
    const int id = base + i;
    decoder[std::to_string(id)] = {
        {"content", names[i].empty() ? reserved_token_name(id) : names[i]},
        {"lstrip", false},
        {"normalized", false},
        {"rstrip", false},
        {"single_word", false},
        {"special", true}};
  }
  nlohmann::ordered_json config = {{"added_tokens_decoder", decoder},
                                   {"bos_token", "[BOS]"},
                                   {"eos_token", "[EOS]"},
                                   {"pad_token", "[PAD]"},
                                   {"unk_token", "[UNK]"},
                                   {"model_max_length", 1048576},
                                   {"tokenizer_class", "TikTokenTokenizer"}};
  std::ofstream f(dir + "/tokenizer_config.json", std::ios::binary);
  if (!f) fail("cannot write ", dir, "/tokenizer_config.json");
  f << config.dump(1) << '\n';
  if (!f) fail("cannot write ", dir, "/tokenizer_config.json");
}

}  // namespace kimi
