#include "tokenizer/special_tokens.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"

namespace kimi {

std::span<const SpecialSlot> kimi_special_layout() {
  static constexpr SpecialSlot kLayout[] = {
      {0, "[BOS]"},
      {1, "[EOS]"},
      {2, "<|im_end|>"},
      {3, "<|im_user|>"},
      {4, "<|im_assistant|>"},
      {6, "<|start_header_id|>"},
      {7, "<|end_header_id|>"},
      {9, "[EOT]"},
      {10, "<|im_system|>"},
      {11, "<|tool_calls_section_begin|>"},
      {12, "<|tool_calls_section_end|>"},
      {13, "<|tool_call_begin|>"},
      {14, "<|tool_call_argument_begin|>"},
      {15, "<|tool_call_end|>"},
      {17, "<|im_middle|>"},
      {254, "[UNK]"},
      {255, "[PAD]"},
  };
  return kLayout;
}

std::string reserved_token_name(int id) {
  return str("<|reserved_token_", id, "|>");
}

SpecialTokens::SpecialTokens(int base, const std::unordered_map<int, std::string>& names)
    : base_(base), names_(kNumSpecialSlots) {
  for (const auto& [id, name] : names) {
    if (id < base || id >= base + kNumSpecialSlots)
      fail("special token id ", id, " ('", name, "') is outside the special range [", base, ", ",
           base + kNumSpecialSlots, ")");
    if (name.empty()) fail("special token id ", id, " has an empty name");
    names_[id - base] = name;
  }
  trie_.emplace_back();
  for (int i = 0; i < kNumSpecialSlots; ++i) {
    if (names_[i].empty()) names_[i] = reserved_token_name(base + i);
    const std::string& name = names_[i];
    if (!ids_.emplace(name, base + i).second)
      fail("special token name '", name, "' is used by ids ", ids_[name], " and ", base + i);
    int node = 0;
    for (const char ch : name) {
      const auto c = static_cast<unsigned char>(ch);
      auto& next = trie_[node].next;
      auto it = std::find_if(next.begin(), next.end(), [c](const auto& e) { return e.first == c; });
      if (it != next.end()) {
        node = it->second;
      } else {
        const int child = static_cast<int>(trie_.size());
        next.emplace_back(c, child);
        trie_.emplace_back();  // invalidates `next`; not used after this
        node = child;
      }
    }
    trie_[node].id = base + i;
    first_byte_[static_cast<unsigned char>(name[0])] = true;
  }
}

std::optional<int> SpecialTokens::id(std::string_view name) const {
  auto it = ids_.find(std::string(name));
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

std::optional<SpecialTokens::Match> SpecialTokens::find(std::string_view text, size_t from) const {
  if (trie_.empty()) return std::nullopt;
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  for (size_t i = from; i < text.size(); ++i) {
    if (!first_byte_[p[i]]) continue;
    int node = 0, best = -1;
    size_t best_len = 0;
    for (size_t j = i; j < text.size(); ++j) {
      const auto& next = trie_[node].next;
      auto it = std::find_if(next.begin(), next.end(),
                             [c = p[j]](const auto& e) { return e.first == c; });
      if (it == next.end()) break;
      node = it->second;
      if (trie_[node].id >= 0) {
        best = trie_[node].id;
        best_len = j - i + 1;
      }
    }
    if (best >= 0) return Match{i, best_len, best};
  }
  return std::nullopt;
}

}  // namespace kimi
