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
  std::memcpy(&w, p, n);
  h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
  h ^= h >> 29;
  return h;
}

constexpr int kNoRank = -1;

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
  slots_.assign(cap, kNoRank);
  mask_ = cap - 1;
  for (int r = 0; r < size(); ++r) {
    const std::string_view b = bytes(r);
    uint64_t i = hash_bytes(b) & mask_;
    while (slots_[i] != kNoRank) {
      if (bytes(slots_[i]) == b) fail("token bytes of rank ", r, " repeat those of rank ", slots_[i]);
      i = (i + 1) & mask_;
    }
    slots_[i] = r;
  }
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    single_byte_[b] = rank(std::string_view(&c, 1));
    if (single_byte_[b] == kNoRank) fail("the vocabulary has no token for the single byte ", b);
  }
}

int BpeVocab::rank(std::string_view b) const {
  if (slots_.empty()) return kNoRank;
  uint64_t i = hash_bytes(b) & mask_;
  for (;;) {
    const int r = slots_[i];
    if (r == kNoRank) return kNoRank;
    if (offsets_[r + 1] - offsets_[r] == b.size() &&
        std::memcmp(arena_.data() + offsets_[r], b.data(), b.size()) == 0)
      return r;
    i = (i + 1) & mask_;
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

// tiktoken's algorithm: parts[i] = (start of part i, rank of part i + part i+1).
void BpeVocab::merge_linear(std::string_view piece, std::vector<int>& out) const {
  struct Part {
    uint32_t start;
    int rank;
  };
  const size_t n = piece.size();
  Part stack_parts[kHeapThreshold + 1];
  std::vector<Part> heap_parts;
  Part* parts = stack_parts;
  if (n + 1 > kHeapThreshold + 1) {
    heap_parts.resize(n + 1);
    parts = heap_parts.data();
  }
  size_t count = n + 1;  // parts[n] is the end sentinel
  auto pair_rank = [&](size_t i) {  // rank of parts i and i+1 merged, given the sentinel layout
    if (i + 2 >= count) return kNoRank;
    return rank(piece.substr(parts[i].start, parts[i + 2].start - parts[i].start));
  };
  for (size_t i = 0; i <= n; ++i) parts[i] = {static_cast<uint32_t>(i), kNoRank};
  for (size_t i = 0; i + 1 < n; ++i) parts[i].rank = rank(piece.substr(i, 2));
  for (;;) {
    int best = kNoRank;
    size_t at = 0;
    for (size_t i = 0; i + 1 < count; ++i) {
      const int r = parts[i].rank;
      if (r != kNoRank && (best == kNoRank || r < best)) {
        best = r;
        at = i;
      }
    }
    if (best == kNoRank) break;
    // Merge parts at and at+1: drop the start of at+1, then refresh the two affected ranks.
    std::memmove(parts + at + 1, parts + at + 2, (count - at - 2) * sizeof(Part));
    --count;
    parts[at].rank = pair_rank(at);
    if (at > 0) parts[at - 1].rank = pair_rank(at - 1);
  }
  for (size_t i = 0; i + 1 < count; ++i) {
    const int r = rank(piece.substr(parts[i].start, parts[i + 1].start - parts[i].start));
    KIMI_CHECK(r != kNoRank, "BPE produced a part that is not a token");
    out.push_back(r);
  }
}

// Same merges as merge_linear in O(n log n): a doubly linked list of parts and a min-heap of
// candidate pairs keyed by (rank, start byte). Entries go stale when either part changes; a
// part's end offset identifies its current extent, so an entry is live iff both ends match.
void BpeVocab::merge_heap(std::string_view piece, std::vector<int>& out) const {
  const uint32_t n = static_cast<uint32_t>(piece.size());
  // Part i starts at byte i (parts are named by their start); end[i] = one past its last byte,
  // 0 once the part has been absorbed into its left neighbour.
  std::vector<uint32_t> end(n), prev(n);
  for (uint32_t i = 0; i < n; ++i) {
    end[i] = i + 1;
    prev[i] = i == 0 ? UINT32_MAX : i - 1;
  }
  struct Cand {
    int rank;
    uint32_t left, left_end, right_end;  // right part starts at left_end
    bool operator>(const Cand& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](uint32_t left) {
    const uint32_t mid = end[left];
    if (mid >= n) return;
    const uint32_t right_end = end[mid];
    const int r = rank(piece.substr(left, right_end - left));
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
    if (c.right_end < n) prev[c.right_end] = c.left;
    push(c.left);
    if (prev[c.left] != UINT32_MAX) push(prev[c.left]);
  }
  for (uint32_t i = 0; i < n; i = end[i]) {
    const int r = rank(piece.substr(i, end[i] - i));
    KIMI_CHECK(r != kNoRank, "BPE produced a part that is not a token");
    out.push_back(r);
  }
}

}  // namespace kimi
