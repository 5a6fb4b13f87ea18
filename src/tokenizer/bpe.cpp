#include "tokenizer/bpe.h"

#include <cstring>
#include <queue>

#include "core/check.h"

namespace kimi {

namespace {

// Hash of a short byte string: 8 bytes at a time, multiply-xorshift mixing.
inline uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ s.size();
  const char* p = s.data();
  size_t n = s.size();
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
    p += 8;
    n -= 8;
  }
  uint64_t w = 0;
  for (size_t i = 0; i < n; ++i) w |= uint64_t(static_cast<unsigned char>(p[i])) << (8 * i);
  h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
  h ^= h >> 29;
  return h;
}

constexpr int kNoRank = -1;
constexpr uint64_t kEmpty = ~uint64_t(0);

}  // namespace

BpeVocab::BpeVocab(const std::vector<std::string>& tokens) {
  size_t total = 0;
  for (const auto& t : tokens) total += t.size();
  arena_.reserve(total);
  offsets_.reserve(tokens.size() + 1);
  offsets_.push_back(0);
  for (const auto& t : tokens) {
    KIMI_CHECK(!t.empty(), "empty token bytes");
    arena_ += t;
    offsets_.push_back(static_cast<uint32_t>(arena_.size()));
  }
  size_t cap = 16;
  while (cap < tokens.size() * 2) cap <<= 1;
  slots_.assign(cap, kEmpty);
  mask_ = cap - 1;
  for (int r = 0; r < size(); ++r) {
    const std::string_view b = bytes(r);
    const uint64_t h = hash_bytes(b);
    uint64_t i = h & mask_;
    while (slots_[i] != kEmpty) {
      const int other = static_cast<int>(slots_[i] & 0xFFFFFFFFu);
      if (bytes(other) == b) fail("token bytes of rank ", r, " repeat those of rank ", other);
      i = (i + 1) & mask_;
    }
    slots_[i] = (h >> 32 << 32) | uint32_t(r);
  }
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    single_byte_[b] = rank(std::string_view(&c, 1));
    if (single_byte_[b] == kNoRank) fail("the vocabulary has no token for the single byte ", b);
  }
  byte_pair_.assign(65536, kNoRank);
  for (int r = 0; r < size(); ++r) {
    const std::string_view b = bytes(r);
    if (b.size() == 2)
      byte_pair_[(static_cast<unsigned char>(b[0]) << 8) | static_cast<unsigned char>(b[1])] = r;
  }
}

int BpeVocab::rank(std::string_view b) const {
  if (slots_.empty()) return kNoRank;
  const uint64_t h = hash_bytes(b);
  const uint64_t tag = h >> 32 << 32;
  for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
    const uint64_t slot = slots_[i];
    if (slot == kEmpty) return kNoRank;
    if ((slot & ~uint64_t(0xFFFFFFFFu)) != tag) continue;
    const uint32_t r = static_cast<uint32_t>(slot);
    if (offsets_[r + 1] - offsets_[r] == b.size() &&
        std::memcmp(arena_.data() + offsets_[r], b.data(), b.size()) == 0)
      return static_cast<int>(r);
  }
}

void BpeVocab::encode_piece(std::string_view piece, std::vector<int>& out) const {
  if (piece.size() == 1) {
    out.push_back(single_byte_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (const int r = rank(piece); r != kNoRank) {
    out.push_back(r);
    return;
  }
  if (piece.size() < kHeapThreshold) {
    merge_linear(piece, out);
  } else {
    merge_heap(piece, out);
  }
}

// tiktoken's algorithm: a linear scan for the lowest-ranked adjacent pair per merge. A merged
// part's token is the rank of its pair, so no lookup is needed at the end.
void BpeVocab::merge_linear(std::string_view piece, std::vector<int>& out) const {
  struct Part {
    uint32_t start;
    int id;         // token of this part
    int pair_rank;  // token of this part merged with the next, or -1
  };
  const auto* p = reinterpret_cast<const unsigned char*>(piece.data());
  const size_t n = piece.size();
  Part stack_parts[kHeapThreshold + 1];
  std::vector<Part> heap_parts;
  Part* parts = stack_parts;
  if (n + 1 > kHeapThreshold + 1) {
    heap_parts.resize(n + 1);
    parts = heap_parts.data();
  }
  for (size_t i = 0; i < n; ++i)
    parts[i] = {static_cast<uint32_t>(i), single_byte_[p[i]],
                i + 1 < n ? byte_pair_[(p[i] << 8) | p[i + 1]] : kNoRank};
  parts[n] = {static_cast<uint32_t>(n), kNoRank, kNoRank};  // end sentinel
  size_t count = n;                                         // parts, not counting the sentinel
  for (;;) {
    int best = kNoRank;
    size_t at = 0;
    for (size_t i = 0; i + 1 < count; ++i) {
      const unsigned r = static_cast<unsigned>(parts[i].pair_rank);  // -1 sorts last
      if (r < static_cast<unsigned>(best)) {
        best = parts[i].pair_rank;
        at = i;
      }
    }
    if (best == kNoRank) break;
    parts[at].id = best;
    std::memmove(parts + at + 1, parts + at + 2, (count - at - 1) * sizeof(Part));
    --count;
    auto pair_rank = [&](size_t i) {
      return i + 1 < count ? rank(piece.substr(parts[i].start, parts[i + 2].start - parts[i].start))
                           : kNoRank;
    };
    parts[at].pair_rank = pair_rank(at);
    if (at > 0) parts[at - 1].pair_rank = pair_rank(at - 1);
  }
  for (size_t i = 0; i < count; ++i) out.push_back(parts[i].id);
}

// Same merges as merge_linear in O(n log n): a doubly linked list of parts and a min-heap of
// candidate pairs keyed by (rank, start byte). Entries go stale when either part changes; a
// part's end offset identifies its current extent, so an entry is live iff both ends match.
void BpeVocab::merge_heap(std::string_view piece, std::vector<int>& out) const {
  const uint32_t n = static_cast<uint32_t>(piece.size());
  // Part i starts at byte i (parts are named by their start); end[i] = one past its last byte,
  // 0 once the part has been absorbed into its left neighbour.
  const auto* p = reinterpret_cast<const unsigned char*>(piece.data());
  std::vector<uint32_t> end(n), prev(n);
  std::vector<int> id(n);
  for (uint32_t i = 0; i < n; ++i) {
    end[i] = i + 1;
    prev[i] = i == 0 ? UINT32_MAX : i - 1;
    id[i] = single_byte_[p[i]];
  }
  struct Cand {
    int rank;
    uint32_t left, left_end, right_end;  // right part starts at left_end
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](uint32_t left) {
    const uint32_t mid = end[left];
    if (mid >= n) return;
    const uint32_t right_end = end[mid];
    const int r = right_end - left == 2 ? byte_pair_[(p[left] << 8) | p[left + 1]]
                                        : rank(piece.substr(left, right_end - left));
    if (r != kNoRank) heap.push({r, left, mid, right_end});
  };
  for (uint32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    if (end[c.left] != c.left_end || end[c.left_end] != c.right_end) continue;  // stale
    const uint32_t right = c.left_end;
    end[c.left] = c.right_end;
    end[right] = 0;
    id[c.left] = c.rank;
    if (c.right_end < n) prev[c.right_end] = c.left;
    push(c.left);
    if (prev[c.left] != UINT32_MAX) push(prev[c.left]);
  }
  for (uint32_t i = 0; i < n; i = end[i]) out.push_back(id[i]);
}

}  // namespace kimi
