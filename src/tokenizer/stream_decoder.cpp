#include "tokenizer/stream_decoder.h"

#include <algorithm>

#include "tokenizer/utf8.h"

namespace kimi {

std::string StreamDecoder::push(int id) {
  std::string out;
  if (tok_->is_special(id)) {
    // A special token cannot finish a character: whatever is pending is a broken sequence.
    append_utf8_replacing(out, pending_);
    pending_.clear();
    if (!skip_special_) out += tok_->token_bytes(id);
    return out;
  }
  pending_ += tok_->token_bytes(id);
  // Everything up to the start of a truncated-but-valid final sequence can go out now.
  size_t keep_from = pending_.size();
  for (size_t i = pending_.size(); i > 0 && pending_.size() - i < 3;) {
    --i;
    const auto b = static_cast<unsigned char>(pending_[i]);
    if ((b & 0xC0) == 0x80) continue;  // continuation byte: look further back
    bool incomplete = false;
    if (b >= 0x80 && utf8_sequence_length(pending_, i, &incomplete) == 0 && incomplete)
      keep_from = i;
    break;
  }
  append_utf8_replacing(out, std::string_view(pending_).substr(0, keep_from));
  pending_.erase(0, keep_from);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  append_utf8_replacing(out, pending_);
  pending_.clear();
  return out;
}

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (auto& s : stops)
    if (!s.empty()) stops_.push_back(std::move(s));
}

StopMatcher::Result StopMatcher::push(std::string_view text, bool match) {
  Result r;
  if (stopped_) return r;
  held_ += text;
  if (!match) {
    r.text = std::move(held_);
    held_.clear();
    return r;
  }
  // The stop that completes first wins (ties: the one that starts first). This is what
  // character-by-character streaming would see, so the result does not depend on how the text
  // was chunked.
  size_t best_end = std::string::npos, best_start = 0, best = 0;
  for (size_t k = 0; k < stops_.size(); ++k) {
    const size_t at = held_.find(stops_[k]);
    if (at == std::string::npos) continue;
    const size_t end = at + stops_[k].size();
    if (end < best_end || (end == best_end && at < best_start)) {
      best_end = end;
      best_start = at;
      best = k;
    }
  }
  if (best_end != std::string::npos) {
    r.text = held_.substr(0, best_start);
    r.stop = best;
    held_.clear();
    stopped_ = true;
    return r;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const auto& s : stops_) {
    for (size_t len = std::min(s.size() - 1, held_.size()); len > hold; --len) {
      if (held_.compare(held_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  r.text = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return r;
}

std::string StopMatcher::flush() {
  std::string out = stopped_ ? std::string() : std::move(held_);
  held_.clear();
  return out;
}

}  // namespace kimi
