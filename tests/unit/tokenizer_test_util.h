// Shared helpers for the tokenizer tests.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>

#include "core/check.h"
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

}  // namespace kimi::test

#define KIMI_REQUIRE_GOLDEN_TOKENIZER()                                                         \
  do {                                                                                          \
    if (!::kimi::test::have_golden_tokenizer())                                                 \
      GTEST_SKIP() << "golden tokenizer not found at " << ::kimi::test::golden_tokenizer_dir(); \
  } while (0)
