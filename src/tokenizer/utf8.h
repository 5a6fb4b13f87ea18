// UTF-8 helpers shared by the tokenizer, the stream decoder and the chat template.
// Validation follows RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kimi {

// Length of the valid UTF-8 sequence starting at s[pos], or 0 if the bytes there are not a
// complete valid sequence. *incomplete (if given) is set when the bytes are a valid but
// truncated prefix of a sequence (they run into the end of s).
size_t utf8_sequence_length(std::string_view s, size_t pos, bool* incomplete = nullptr);

// Byte offset of the first invalid byte, or s.size() when s is valid UTF-8.
size_t utf8_first_invalid(std::string_view s);

inline bool is_valid_utf8(std::string_view s) {
  return utf8_first_invalid(s) == s.size();
}

// Throws kimi::Error ("<what> is not valid UTF-8 (byte offset N, byte 0xXX)") when s is invalid.
void check_utf8(std::string_view s, std::string_view what);

// Decodes the code point of the valid sequence at s[pos] of length len.
uint32_t utf8_decode(std::string_view s, size_t pos, size_t len);

void append_utf8(std::string& out, uint32_t cp);

// Python's str.isspace(): the characters the HF chunking rule counts as whitespace.
bool is_python_space(uint32_t cp);

// Appends s to out with every invalid or truncated sequence replaced by U+FFFD (one per
// maximal invalid subpart, as Python's errors="replace" does).
void append_utf8_replacing(std::string& out, std::string_view s);

}  // namespace kimi
