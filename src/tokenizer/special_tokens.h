// Kimi special tokens: 256 ids right after the base vocabulary, named by tokenizer_config.json
// (K2 layout by offset from the base count; unnamed slots are <|reserved_token_{id}|>).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kimi {

constexpr int kNumSpecialSlots = 256;

struct SpecialSlot {
  int offset;  // id - number of base tokens
  std::string_view name;
};
// The named slots of the Kimi K2 / Kimi Linear layout (model.md §7 table), by offset.
std::span<const SpecialSlot> kimi_special_layout();
std::string reserved_token_name(int id);

class SpecialTokens {
 public:
  SpecialTokens() = default;
  // names: id -> name for ids in [base, base + kNumSpecialSlots); the others get reserved names.
  // Throws kimi::Error on an id outside that range, an empty name or a repeated name.
  SpecialTokens(int base, const std::unordered_map<int, std::string>& names);

  int base() const { return base_; }
  std::string_view name(int id) const { return names_[id - base_]; }
  std::optional<int> id(std::string_view name) const;

  struct Match {
    size_t pos, len;
    int id;
  };
  // Leftmost special-token string in text at or after from (longest at that position).
  std::optional<Match> find(std::string_view text, size_t from) const;

 private:
  struct Node {
    int id = -1;  // token ending here, or -1
    std::vector<std::pair<unsigned char, int>> next;
  };
  int base_ = 0;
  std::vector<std::string> names_;  // [kNumSpecialSlots]
  std::unordered_map<std::string, int> ids_;
  std::vector<Node> trie_;
  bool first_byte_[256] = {};
};

}  // namespace kimi
