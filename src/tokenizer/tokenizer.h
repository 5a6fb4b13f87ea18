// Tokenizer: Kimi's tiktoken byte-level BPE (model.md §7).
//
// Files (DIR/...):
//   tiktoken.model         `base64(bytes) rank` per line; rank = id; ranks 0..N-1, N = base tokens
//   tokenizer_config.json  added_tokens_decoder (names of the 256 special ids N..N+255),
//                          bos_token / eos_token / pad_token / unk_token
// Special ids without a name are `<|reserved_token_{id}|>`, as in tokenization_kimi.py. That class
// also makes ids N+256 and N+257, which lie outside the model's embedding; we do not.
//
// encode() reproduces tokenization_kimi.py's encode(): the HF chunking (400,000-character
// pieces, then runs of at most 25,000 whitespace / non-whitespace characters), then per chunk
// tiktoken's encode (special-token strings become special ids when allowed; between them the
// pre-tokenizer pattern splits the text and BPE merges inside each piece).
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/bpe.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/special_tokens.h"

namespace kimi {

class Tokenizer {
 public:
  // Loads DIR/tiktoken.model and DIR/tokenizer_config.json. Throws kimi::Error naming the file
  // (and line, for tiktoken.model) on malformed input.
  static Tokenizer load(const std::string& dir);
  // From parts already in memory (tests, the trainer). tokens[rank] = bytes; special_names maps
  // id (>= tokens.size()) to name; the named tokens must be among them.
  static Tokenizer from_parts(const std::vector<std::string>& tokens,
                              const std::unordered_map<int, std::string>& special_names,
                              const std::string& bos_token, const std::string& eos_token,
                              const std::string& pad_token);

  // Throws kimi::Error if text is not valid UTF-8. allow_special: special-token strings in the
  // text become special ids (what the HF class does by default); otherwise they are plain text.
  std::vector<int> encode(std::string_view text, bool allow_special) const;
  // tiktoken's encode of one chunk, without the HF chunking (tests and tools).
  void encode_chunk(std::string_view text, bool allow_special, std::vector<int>& out) const;
  // Concatenated token bytes (special tokens as their names); may be invalid UTF-8.
  // Throws kimi::Error on an id outside [0, vocab_size()).
  std::string decode(std::span<const int> ids) const;
  std::string_view token_bytes(int id) const;

  int vocab_size() const { return num_base_ + kNumSpecialSlots; }
  int num_base_tokens() const { return num_base_; }
  bool is_special(int id) const { return id >= num_base_ && id < vocab_size(); }
  std::optional<int> special_id(std::string_view name) const;

  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  int pad_id() const { return pad_id_; }
  // Ids that end generation: <|im_end|> (the model's eos_token_id) and the tokenizer's eos.
  std::vector<int> stop_ids() const;

  const Pretokenizer& pretokenizer() const { return pre_; }

 private:
  Tokenizer() = default;
  static Tokenizer build(BpeVocab vocab, const std::unordered_map<int, std::string>& special_names,
                         const std::string& bos_token, const std::string& eos_token,
                         const std::string& pad_token);
  void encode_ordinary(std::string_view text, std::vector<int>& out) const;

  BpeVocab vocab_;
  Pretokenizer pre_;
  int num_base_ = 0;
  SpecialTokens specials_;
  int bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;
};

}  // namespace kimi
