// Shared helpers for the tokenizer tests.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "tokenizer/base64.h"
#include "tokenizer/tokenizer.h"

namespace kimi::test {

inline std::string golden_tokenizer_dir() {
  return std::string(KIMI_GOLDEN_DIR) + "/tokenizer-a";
}

inline bool have_golden_tokenizer() {
  return std::filesystem::exists(golden_tokenizer_dir() + "/tiktoken.model");
}

// The golden tokenizer, loaded once per test binary.
inline const Tokenizer& golden_tokenizer() {
  static const Tokenizer tok = Tokenizer::load(golden_tokenizer_dir());
  return tok;
}

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return nlohmann::json::parse(ss.str());
}

// A fresh temporary directory, removed when the object goes away.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static int counter = 0;
    path = std::filesystem::temp_directory_path() /
           ("kimi_tok_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  void write(const std::string& name, const std::string& content) const {
    std::ofstream(path / name, std::ios::binary) << content;
  }
  std::string str() const { return path.string(); }
};

// A tokenizer of `size` tokens: the 256 single bytes, then distinct concatenations of min_pieces
// .. max_pieces random pieces (seeded), with [BOS] and [EOS] as the added ids size, size + 1, and
// `specials` after them. Many shared prefixes: the vocabularies of the token-mask tests.
inline Tokenizer fragment_tokenizer(const std::vector<std::string>& pieces, size_t size,
                                    int min_pieces, int max_pieces, uint32_t seed,
                                    const std::vector<std::string>& specials = {}) {
  std::mt19937 rng(seed);
  std::set<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.insert(std::string(1, char(b)));
  while (tokens.size() < size) {
    std::string t;
    for (int n = min_pieces + int(rng() % (max_pieces - min_pieces + 1)); n > 0; --n)
      t += pieces[rng() % pieces.size()];
    tokens.insert(t);
  }
  std::string model;
  int rank = 0;
  for (const std::string& t : tokens) model += base64_encode(t) + " " + std::to_string(rank++) + "\n";
  TempDir dir;
  dir.write("tiktoken.model", model);
  nlohmann::json added;
  added[std::to_string(size)] = {{"content", "[BOS]"}};
  added[std::to_string(size + 1)] = {{"content", "[EOS]"}};
  for (size_t i = 0; i < specials.size(); ++i)
    added[std::to_string(size + 2 + i)] = {{"content", specials[i]}};
  dir.write("tokenizer_config.json", nlohmann::json{{"added_tokens_decoder", added}}.dump());
  return Tokenizer::load(dir.str());
}

}  // namespace kimi::test

#define KIMI_REQUIRE_GOLDEN_TOKENIZER()                                                         \
  do {                                                                                          \
    if (!::kimi::test::have_golden_tokenizer())                                                 \
      GTEST_SKIP() << "golden tokenizer not found at " << ::kimi::test::golden_tokenizer_dir(); \
  } while (0)
