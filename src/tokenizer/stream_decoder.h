// Incremental detokenization for streaming responses.
//
// StreamDecoder turns token ids into text as they arrive: it emits only complete UTF-8
// characters and holds back the bytes of a character that later tokens will finish (byte-level
// BPE splits multi-byte characters across tokens). Bytes that can never form a valid character
// become U+FFFD (one per maximal invalid subpart, like Python's errors="replace"), so every
// string it returns is valid UTF-8 (nlohmann::json::dump needs that).
//
// StopMatcher runs on that text and cuts it at the first stop string: it never emits text that
// belongs to, or follows, a stop string, holding back any tail that could still grow into one.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace kimi {

class StreamDecoder {
 public:
  // skip_special: special tokens produce no text (content without tool parsing); otherwise
  // they produce their names (the tool-call parser needs the markers).
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special = false)
      : tok_(&tok), skip_special_(skip_special) {}

  // Returns the text completed by this token (possibly empty).
  std::string push(int id);
  // End of stream: returns what is still held back (a truncated character becomes U+FFFD).
  std::string flush();
  // Bytes held back waiting for the rest of a character.
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::string pending_;
};

class StopMatcher {
 public:
  // Empty stop strings are ignored.
  explicit StopMatcher(std::vector<std::string> stops);

  struct Result {
    std::string text;            // safe to emit now
    std::optional<size_t> stop;  // index into stops when one matched (text ends before it)
  };
  // Feeds decoded text. After a stop matched, further pushes return nothing. match false: the
  // held-back tail and the text pass through unmatched (a stop string cannot end the output
  // yet: min_tokens); matching resumes with the next push that matches.
  Result push(std::string_view text, bool match = true);
  // End of stream without a stop: returns the held-back tail.
  std::string flush();

  bool stopped() const { return stopped_; }
  const std::vector<std::string>& stops() const { return stops_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace kimi
