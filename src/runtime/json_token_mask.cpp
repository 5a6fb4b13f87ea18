#include "runtime/json_token_mask.h"

#include <algorithm>
#include <limits>

namespace kimi {

JsonTokenMask::JsonTokenMask(const Tokenizer& tok, int vocab_size) : vocab_(vocab_size) {
  const int n = std::min(tok.num_base_tokens(), vocab_size);
  order_.resize(n);
  for (int i = 0; i < n; ++i) order_[i] = i;
  std::sort(order_.begin(), order_.end(),
            [&](int a, int b) { return tok.token_bytes(a) < tok.token_bytes(b); });
  bytes_.resize(n);
  common_.assign(n, 0);
  for (int i = 0; i < n; ++i) {
    bytes_[i] = tok.token_bytes(order_[i]);
    if (i == 0) continue;
    const std::string_view a = bytes_[i - 1], b = bytes_[i];
    const size_t m = std::min(a.size(), b.size());
    uint32_t k = 0;
    while (k < m && a[k] == b[k]) ++k;
    common_[i] = k;
  }
}

const std::vector<uint64_t>& JsonTokenMask::allowed(const JsonMatcher& m,
                                                    std::span<const int> end_ids) {
  const std::vector<uint64_t>& bytes = byte_mask(m);
  if (!m.complete()) return bytes;
  // A whole document may end: the end ids too (and a number may still go on).
  return with_ids(bytes, end_ids);
}

const std::vector<uint64_t>& JsonTokenMask::allowed(const ToolCallMatcher& m,
                                                    std::span<const int> end_ids) {
  const std::vector<int> markers = m.markers();
  if (m.phase() == ToolCallMatcher::Phase::kArguments)
    return allowed(m.arguments(), markers);  // the document ends with <|tool_call_end|>
  scratch_.assign((size_t(vocab_) + 63) / 64, 0);
  // The id's walk is not cached: most tokens are refused at their first byte, and skipped with
  // the tokens sharing it, so it is short.
  if (m.phase() == ToolCallMatcher::Phase::kId) walk(m, scratch_);
  return with_ids(scratch_, m.phase() == ToolCallMatcher::Phase::kEnd ? end_ids : markers);
}

const std::vector<uint64_t>& JsonTokenMask::with_ids(const std::vector<uint64_t>& bytes,
                                                     std::span<const int> ids) {
  ids_mask_ = bytes;
  for (int id : ids)
    if (id >= 0 && id < vocab_) ids_mask_[size_t(id) >> 6] |= uint64_t(1) << (id & 63);
  return ids_mask_;
}

const std::vector<uint64_t>& JsonTokenMask::byte_mask(const JsonMatcher& m) {
  if (auto it = cache_.find(m); it != cache_.end()) return it->second;
  if (cache_.size() >= kMaxCachedStates) cache_.clear();
  std::vector<uint64_t> mask((size_t(vocab_) + 63) / 64, 0);
  walk(m, mask);
  return cache_.emplace(m, std::move(mask)).first->second;
}

template <class M>
void JsonTokenMask::walk(const M& m, std::vector<uint64_t>& mask) const {
  // states[k]: the matcher after the first k bytes of the current token, valid for k <= ready.
  // refused: where the previous token's bytes were refused (its length if they were not).
  std::vector<M> states(1, m);
  size_t ready = 0, refused = std::numeric_limits<size_t>::max();
  for (size_t i = 0; i < order_.size(); ++i) {
    const std::string_view t = bytes_[i];
    const size_t common = common_[i];
    if (t.empty()) continue;
    if (refused < common) {  // the same refused byte at the same place
      ready = std::min(ready, refused);
      continue;
    }
    size_t k = std::min(ready, common);
    if (states.size() < t.size() + 1) states.resize(t.size() + 1, m);
    for (; k < t.size(); ++k) {
      states[k + 1] = states[k];
      if (!states[k + 1].step(uint8_t(t[k]))) break;
    }
    ready = k;
    refused = k < t.size() ? k : std::numeric_limits<size_t>::max();
    if (k == t.size()) mask[size_t(order_[i]) >> 6] |= uint64_t(1) << (order_[i] & 63);
  }
}

void JsonTokenMask::apply(const std::vector<uint64_t>& mask, std::span<float> logits) {
  const float ninf = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < logits.size(); ++i)
    if (!test(mask, int(i))) logits[i] = ninf;
}

}  // namespace kimi
