// Tokenizer encode/decode. Loading lives in tokenizer_files.cpp.
#include "tokenizer/tokenizer.h"

#include <array>

#include "core/check.h"
#include "tokenizer/utf8.h"

namespace kimi {

namespace {

// tokenization_kimi.py: TIKTOKEN_MAX_ENCODE_CHARS and MAX_NO_WHITESPACES_CHARS (characters).
constexpr size_t kMaxEncodeChars = 400'000;
constexpr size_t kMaxRunChars = 25'000;

constexpr auto kAsciiSpace = [] {
  std::array<bool, 128> t{};
  for (int c = 0; c < 128; ++c) t[c] = (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20);
  return t;
}();

// Cuts valid UTF-8 text into the chunks tokenization_kimi.py encodes separately: windows of
// kMaxEncodeChars characters, each split (_split_whitespaces_or_nonwhitespaces) so that no chunk
// holds more than kMaxRunChars consecutive whitespace or non-whitespace characters
// (whitespace = Python's str.isspace()).
template <typename F>
void for_each_hf_chunk(std::string_view text, F&& on_chunk) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t pos = 0;
  while (pos < n) {
    size_t slice_start = pos, run_len = 0, chars = 0;
    bool run_is_space = false;
    while (pos < n && chars < kMaxEncodeChars) {
      size_t len = 1;
      bool is_space;
      if (p[pos] < 0x80) {
        is_space = kAsciiSpace[p[pos]];
      } else {
        len = utf8_sequence_length(text, pos);
        is_space = is_python_space(utf8_decode(text, pos, len));
      }
      if (chars == 0) run_is_space = is_space;
      if (is_space != run_is_space) {
        run_len = 1;
        run_is_space = is_space;
      } else if (++run_len > kMaxRunChars) {
        on_chunk(text.substr(slice_start, pos - slice_start));
        slice_start = pos;
        run_len = 1;
      }
      pos += len;
      ++chars;
    }
    on_chunk(text.substr(slice_start, pos - slice_start));
  }
}

}  // namespace

void Tokenizer::encode_ordinary(std::string_view text, std::vector<int>& out) const {
  pre_.split(text, [&](std::string_view piece) { vocab_.encode_piece(piece, out); });
}

void Tokenizer::encode_chunk(std::string_view text, bool allow_special,
                             std::vector<int>& out) const {
  if (!allow_special) {
    encode_ordinary(text, out);
    return;
  }
  size_t pos = 0;
  while (pos < text.size()) {
    const auto m = specials_.find(text, pos);
    if (!m) {
      encode_ordinary(text.substr(pos), out);
      break;
    }
    encode_ordinary(text.substr(pos, m->pos - pos), out);
    out.push_back(m->id);
    pos = m->pos + m->len;
  }
}

std::vector<int> Tokenizer::encode(std::string_view text, bool allow_special) const {
  check_utf8(text, "text to encode");
  std::vector<int> out;
  out.reserve(text.size() / 3 + 4);
  if (text.size() <= kMaxRunChars) {  // bytes >= characters: no chunk boundary possible
    encode_chunk(text, allow_special, out);
  } else {
    for_each_hf_chunk(text, [&](std::string_view c) { encode_chunk(c, allow_special, out); });
  }
  return out;
}

std::string_view Tokenizer::token_bytes(int id) const {
  if (id >= 0 && id < num_base_) return vocab_.bytes(id);
  if (is_special(id)) return specials_.name(id);
  fail("token id ", id, " is outside the vocabulary [0, ", vocab_size(), ")");
}

std::string Tokenizer::decode(std::span<const int> ids) const {
  size_t total = 0;
  for (const int id : ids) total += token_bytes(id).size();
  std::string out;
  out.reserve(total);
  for (const int id : ids) out += token_bytes(id);
  return out;
}

std::optional<int> Tokenizer::special_id(std::string_view name) const {
  return specials_.id(name);
}

std::vector<int> Tokenizer::stop_ids() const {
  std::vector<int> ids;
  if (auto im_end = special_id("<|im_end|>")) ids.push_back(*im_end);
  if (eos_id_ >= 0 && (ids.empty() || ids[0] != eos_id_)) ids.push_back(eos_id_);
  return ids;
}

}  // namespace kimi
