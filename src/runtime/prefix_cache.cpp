#include "runtime/prefix_cache.h"

#include <algorithm>

#include "core/check.h"
#include "runtime/scheduler.h"

namespace kimi {

PrefixCache::PrefixCache(std::vector<int> slots, BlockPool& blocks) : blocks_(blocks) {
  entries_.resize(slots.size());
  for (size_t i = 0; i < slots.size(); ++i) entries_[i].slot = slots[i];
}

std::optional<int> PrefixCache::match(std::span<const int> prompt) {
  // Hashes of the prompt's prefixes are made as far as the longest entry reaches.
  size_t longest = 0;
  for (const Entry& e : entries_)
    if (e.used && e.tokens.size() < prompt.size()) longest = std::max(longest, e.tokens.size());
  if (longest == 0) return std::nullopt;
  std::vector<uint64_t> prefix_hash(longest + 1, 0);
  for (size_t i = 0; i < longest; ++i) prefix_hash[i + 1] = extend(prefix_hash[i], prompt[i]);
  int best = -1;
  for (size_t i = 0; i < entries_.size(); ++i) {
    const Entry& e = entries_[i];
    const size_t n = e.tokens.size();
    if (!e.used || n >= prompt.size() || prefix_hash[n] != e.hash) continue;
    if (best >= 0 && n <= entries_[size_t(best)].tokens.size()) continue;
    if (std::equal(e.tokens.begin(), e.tokens.end(), prompt.begin())) best = int(i);
  }
  if (best < 0) return std::nullopt;
  entries_[size_t(best)].last_use = ++clock_;
  return best;
}

void PrefixCache::pin(int id) {
  Entry& e = entries_[size_t(id)];
  KIMI_CHECK(e.used, "pinning an empty prefix-cache entry");
  ++e.pins;
}

void PrefixCache::unpin(int id) {
  Entry& e = entries_[size_t(id)];
  KIMI_CHECK(e.used && e.pins > 0, "unpinning a prefix-cache entry that is not pinned");
  --e.pins;
}

std::optional<int> PrefixCache::insert(std::span<const int> tokens, std::span<const int> blocks,
                                       int block_size) {
  KIMI_CHECK(int(blocks.size()) >= blocks_for_tokens(int(tokens.size()), block_size),
             "a prefix-cache entry needs the blocks of all its tokens");
  uint64_t h = 0;
  for (int t : tokens) h = extend(h, t);
  Entry* target = nullptr;
  for (Entry& e : entries_) {
    if (e.used && e.hash == h && std::equal(e.tokens.begin(), e.tokens.end(), tokens.begin(), tokens.end())) {
      e.last_use = ++clock_;
      return std::nullopt;  // cached already
    }
    if (!e.used && !target) target = &e;
  }
  if (!target) {
    for (Entry& e : entries_)
      if (e.pins == 0 && (!target || e.last_use < target->last_use)) target = &e;
    if (!target) return std::nullopt;
    evict(*target);
  }
  target->tokens.assign(tokens.begin(), tokens.end());
  target->blocks.assign(blocks.begin(), blocks.begin() + blocks_for_tokens(int(tokens.size()), block_size));
  for (int b : target->blocks) blocks_.retain(b);
  target->hash = h;
  target->last_use = ++clock_;
  target->pins = 0;
  target->used = true;
  return target->slot;
}

int PrefixCache::shared_head(std::span<const int> prompt, int block_size) {
  KIMI_CHECK(block_size > 0, "block size ", block_size);
  const int heads = prompt.empty() ? 0 : int((prompt.size() - 1) / size_t(block_size));
  std::vector<uint64_t> hash(static_cast<size_t>(heads));
  uint64_t h = 0;
  for (int b = 0; b < heads; ++b) {
    for (int i = b * block_size; i < (b + 1) * block_size; ++i) h = extend(h, prompt[size_t(i)]);
    hash[size_t(b)] = h;
  }
  // A head seen before means all the shorter ones were too: the longest is found from the end.
  int shared = 0;
  for (int b = heads; b > 0 && shared == 0; --b)
    if (seen_heads_.count(hash[size_t(b - 1)])) shared = b * block_size;
  const uint64_t now = ++clock_;
  for (uint64_t x : hash) seen_heads_[x] = now;
  if (seen_heads_.size() > kSeenHeads) {  // forget the older half (rare: one pass)
    std::vector<uint64_t> when;
    when.reserve(seen_heads_.size());
    for (const auto& [key, t] : seen_heads_) when.push_back(t);
    auto mid = when.begin() + ptrdiff_t(when.size() / 2);
    std::nth_element(when.begin(), mid, when.end());
    const uint64_t cut = *mid;
    for (auto it = seen_heads_.begin(); it != seen_heads_.end();)
      it = it->second < cut ? seen_heads_.erase(it) : std::next(it);
  }
  return shared;
}

int PrefixCache::reclaimable_blocks() const {
  // A block comes back when every holder is an unpinned entry: count those references, then
  // compare with the pool's (clearing the counts on the way, so each block counts once).
  refs_.resize(size_t(blocks_.num_blocks()), 0);
  for (const Entry& e : entries_)
    if (e.used && e.pins == 0)
      for (int b : e.blocks) ++refs_[size_t(b)];
  int n = 0;
  for (const Entry& e : entries_)
    if (e.used && e.pins == 0)
      for (int b : e.blocks)
        if (refs_[size_t(b)] > 0) {
          n += blocks_.ref_count(b) == refs_[size_t(b)];
          refs_[size_t(b)] = 0;
        }
  return n;
}

bool PrefixCache::evict_one() {
  Entry* victim = nullptr;
  for (Entry& e : entries_)
    if (e.used && e.pins == 0 && (!victim || e.last_use < victim->last_use)) victim = &e;
  if (!victim) return false;
  evict(*victim);
  return true;
}

void PrefixCache::erase(int id) {
  Entry& e = entries_[size_t(id)];
  KIMI_CHECK(e.pins == 0, "erasing a pinned prefix-cache entry");
  evict(e);
}

void PrefixCache::evict(Entry& e) {
  if (!e.used) return;
  for (int b : e.blocks) blocks_.release(b);
  e.blocks.clear();
  e.tokens.clear();
  e.used = false;
  e.pins = 0;
}

int PrefixCache::num_entries() const {
  return int(std::count_if(entries_.begin(), entries_.end(), [](const Entry& e) { return e.used; }));
}

}  // namespace kimi
