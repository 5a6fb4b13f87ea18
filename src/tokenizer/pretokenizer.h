// Pre-tokenizer: splits text into the pieces that BPE merges within, using tiktoken's pattern
// for Kimi (model.md §7) compiled with PCRE2 (JIT when available).
//
// The upstream pattern is written for Rust's fancy-regex/regex-syntax. to_pcre2_pattern()
// rewrites the three constructs PCRE2 reads differently:
//   [X&&[^Y]]  class intersection (PCRE2 10.42 has none) -> (?:(?![Y])[X])
//   \p{Han}    Rust means Script=Han; PCRE2 >= 10.40 would read Script_Extensions -> \p{sc=Han}
//   \s, \S     Rust means Unicode White_Space; PCRE2's UCP \s adds U+180E -> explicit class
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

struct pcre2_real_code_8;  // pcre2_code with PCRE2_CODE_UNIT_WIDTH 8, kept out of the header

namespace kimi {

// tiktoken's pat_str for Kimi (tokenization_kimi.py), byte for byte.
extern const std::string_view kKimiPattern;

// Rewrites a fancy-regex pattern into an equivalent PCRE2 pattern (see the header comment).
// Throws kimi::Error on constructs it does not know how to rewrite.
std::string to_pcre2_pattern(std::string_view pattern);

class Pretokenizer {
 public:
  // pattern: in fancy-regex syntax (it goes through to_pcre2_pattern).
  explicit Pretokenizer(std::string_view pattern = kKimiPattern);
  ~Pretokenizer();
  Pretokenizer(Pretokenizer&& other) noexcept;
  Pretokenizer& operator=(Pretokenizer&& other) noexcept;
  Pretokenizer(const Pretokenizer&) = delete;
  Pretokenizer& operator=(const Pretokenizer&) = delete;

  // Calls on_piece for each match, left to right. text must be valid UTF-8 (not re-checked).
  // Thread-safe: per-thread match scratch.
  void split(std::string_view text, const std::function<void(std::string_view)>& on_piece) const;
  std::vector<std::string_view> split(std::string_view text) const;

  bool jit() const { return jit_; }
  const std::string& pcre2_pattern() const { return pcre2_pattern_; }

 private:
  pcre2_real_code_8* code_ = nullptr;
  bool jit_ = false;
  std::string pcre2_pattern_;
};

}  // namespace kimi
