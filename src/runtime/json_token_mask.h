// The token mask of JSON mode and structured outputs: which tokens may be drawn next so that the
// text stays a prefix of a valid document (runtime/json_matcher.h). A token is allowed when the
// matcher accepts all of its bytes; special tokens never are, except the request's end ids (EOS,
// stop_token_ids), which are allowed once the document is complete (then they are the only ones,
// unless it is a top-level number or enum value that may go on). Forced tool calls
// (runtime/tool_call_matcher.h) use the same masks for their arguments, with <|tool_call_end|>
// as the document's end id, and add the markers where the call's grammar allows them.
//
// The base tokens are kept sorted by their bytes with each one's common prefix with the one
// before, so one pass steps each distinct prefix once (a walk of the vocabulary's byte trie) and
// skips every token that extends a refused prefix. Masks are cached per matcher state: a
// generation revisits few states (inside a string at one nesting, after a key, ...).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "runtime/json_matcher.h"
#include "runtime/tool_call_matcher.h"
#include "tokenizer/tokenizer.h"

namespace kimi {

class JsonTokenMask {
 public:
  // vocab_size: the model's (the logits' width; ids the tokenizer lacks are never allowed).
  JsonTokenMask(const Tokenizer& tok, int vocab_size);

  // Bit id % 64 of word id / 64 set: token id may follow m. The reference stays valid until the
  // next call.
  const std::vector<uint64_t>& allowed(const JsonMatcher& m, std::span<const int> end_ids);

  // tool_choice required / named: what may follow m; end_ids once the tool-call section ended.
  const std::vector<uint64_t>& allowed(const ToolCallMatcher& m, std::span<const int> end_ids);

  static bool test(const std::vector<uint64_t>& mask, int id) { return mask[id >> 6] >> (id & 63) & 1; }
  // Sets every logit whose token the mask refuses to -inf.
  static void apply(const std::vector<uint64_t>& mask, std::span<float> logits);

 private:
  // The tokens whose bytes m accepts, cached per state.
  const std::vector<uint64_t>& byte_mask(const JsonMatcher& m);
  // Sets the bits of the base tokens whose bytes m accepts (M: JsonMatcher or ToolCallMatcher).
  template <class M>
  void walk(const M& m, std::vector<uint64_t>& mask) const;
  // The byte mask with the ids set (those in [0, vocab)).
  const std::vector<uint64_t>& with_ids(const std::vector<uint64_t>& bytes,
                                        std::span<const int> ids);

  static constexpr size_t kMaxCachedStates = 256;  // 20 KB each at a 163,840-token vocabulary

  int vocab_;
  std::vector<int> order_;               // base token ids, sorted by bytes
  std::vector<std::string_view> bytes_;  // bytes_[i]: token order_[i]'s
  std::vector<uint32_t> common_;         // common prefix length of bytes_[i] and bytes_[i - 1]
  std::unordered_map<JsonMatcher, std::vector<uint64_t>, JsonMatcherHash> cache_;
  std::vector<uint64_t> ids_mask_;  // with_ids()'s answer
  std::vector<uint64_t> scratch_;   // a tool call's byte mask outside its arguments
};

}  // namespace kimi
