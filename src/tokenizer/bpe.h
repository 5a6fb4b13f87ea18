// Byte-level BPE with tiktoken's rank semantics: the rank of a byte string is its token id, and
// inside one pre-tokenizer piece the adjacent pair whose concatenation has the lowest rank is
// merged first (leftmost on ties) until no adjacent pair is a token. A piece that is itself a
// token is emitted directly, as tiktoken does before merging.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kimi {

class BpeVocab {
 public:
  BpeVocab() = default;
  // tokens[rank] = bytes. Every one of the 256 single bytes must be a token (encode is total);
  // byte strings must be distinct. Throws kimi::Error otherwise.
  explicit BpeVocab(const std::vector<std::string>& tokens);

  int size() const { return static_cast<int>(offsets_.size()) - 1; }
  std::string_view bytes(int rank) const {
    return std::string_view(arena_).substr(offsets_[rank], offsets_[rank + 1] - offsets_[rank]);
  }
  // Rank of a byte string, or -1.
  int rank(std::string_view bytes) const;

  // Appends the ranks of one piece to out.
  void encode_piece(std::string_view piece, std::vector<int>& out) const;

  // The two merge strategies, exposed for tests: a linear scan per merge (fast for short
  // pieces, O(n^2)) and a heap over pair ranks (O(n log n)). encode_piece picks by length.
  void merge_linear(std::string_view piece, std::vector<int>& out) const;
  void merge_heap(std::string_view piece, std::vector<int>& out) const;

  static constexpr size_t kHeapThreshold = 96;  // bytes

 private:
  std::string arena_;              // all token bytes back to back
  std::vector<uint32_t> offsets_;  // [size + 1]
  std::vector<uint64_t> slots_;    // open addressing: (hash tag << 32) | rank; kEmpty if free
  uint64_t mask_ = 0;
  int single_byte_[256] = {};
  std::vector<int32_t> byte_pair_;  // [65536]: rank of the two-byte string (b0 << 8 | b1), or -1
};

}  // namespace kimi
