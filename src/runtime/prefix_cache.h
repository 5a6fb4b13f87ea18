// Prefix caching (vLLM's --enable-prefix-caching) for a hybrid model. The KDA layers carry a
// recurrent state that cached MLA blocks alone cannot rebuild, so an entry is a whole computed
// sequence: a prompt (cached when it has been computed), a prompt with its answer (cached when
// the request finishes) or a prompt's marked prefix (Request::cache_point, a chat's system
// prompt: the prefill stops there once): its tokens, the MLA blocks holding their latents
// (shared through the block pool's reference counts) and a copy of the KDA state (recurrent +
// conv) at its end, in a slot of its own. A request whose prompt starts with an entry's tokens and
// goes on starts from there: the state copied into its slot, the full blocks shared, the partial
// last block copied, only the rest computed. That is multi-turn chat, where each turn's prompt
// extends the one before, the previous answer included, and requests that share a system prompt.
//
// Prompts that share only a head (raw completions with one few-shot or document preamble, the
// same prompt sent again) leave no entry that serves each other, so the cache also remembers the
// prompts it has seen, block by block (hashes of their block-aligned prefixes, no tokens): a new
// prompt that shares a block-aligned head with an earlier one gets that head as its cache point
// (shared_head), and the entry made there serves the requests after it.
//
// Pure bookkeeping (the engine copies the state and blocks): entries live in fixed slots, are
// found by a hash of their tokens (then compared), evicted least recently used first, and never
// while pinned (a waiting request has taken the entry but not copied it yet).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "runtime/pools.h"

namespace kimi {

class PrefixCache {
 public:
  struct Entry {
    std::vector<int> tokens;
    std::vector<int> blocks;  // blocks_for_tokens(tokens.size()) of them, one reference each
    int slot = -1;            // the KDA slot holding the state after the tokens
    uint64_t hash = 0;
    uint64_t last_use = 0;
    int pins = 0;
    bool used = false;
  };

  // slots: the KDA slots reserved for entries (one entry each).
  PrefixCache(std::vector<int> slots, BlockPool& blocks);

  // The longest entry whose tokens are a proper prefix of `prompt` (so at least one token is
  // left to compute); nullopt if none. The entry counts as used now.
  std::optional<int> match(std::span<const int> prompt);
  const Entry& entry(int id) const { return entries_[size_t(id)]; }
  void pin(int id);
  void unpin(int id);

  // Stores `tokens` (a computed sequence) over `blocks` (the sequence's first blocks, retained here)
  // and returns the slot the caller must copy the sequence's state into; nullopt when those
  // tokens are cached already or every entry is pinned. Evicts the least recently used entry
  // when all slots are taken.
  std::optional<int> insert(std::span<const int> tokens, std::span<const int> blocks, int block_size);

  // The longest head of `prompt`, a multiple of block_size tokens and shorter than the prompt,
  // that a prompt passed here before also started with (0 if none); then remembers this
  // prompt's heads. Found by hash alone: a collision only places a cache point where no later
  // prompt matches (match compares tokens). At most kSeenHeads heads are remembered, the least
  // recently seen forgotten first.
  int shared_head(std::span<const int> prompt, int block_size);
  static constexpr size_t kSeenHeads = size_t(1) << 16;

  // Blocks that evicting every unpinned entry would return to the pool.
  int reclaimable_blocks() const;
  // Evicts the least recently used unpinned entry; false if there is none.
  bool evict_one();
  // Evicts entry id (unpinned).
  void erase(int id);
  int num_entries() const;

 private:
  static uint64_t extend(uint64_t h, int token) { return (h + uint64_t(token) + 1) * 0x9e3779b97f4a7c15ull; }
  void evict(Entry& e);

  std::vector<Entry> entries_;  // entry i owns the i-th reserved slot
  BlockPool& blocks_;
  uint64_t clock_ = 0;
  mutable std::vector<int> refs_;  // reclaimable_blocks' per-block counts (zero between calls)
  std::unordered_map<uint64_t, uint64_t> seen_heads_;  // head hash → when last seen (clock_)
};

}  // namespace kimi
