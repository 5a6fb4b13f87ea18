// JSON mode (response_format {"type": "json_object"}): a byte-level recogniser of one JSON object
// (RFC 8259) that accepts a byte only while the text so far stays the prefix of a document that
// nlohmann::json::parse accepts. The engine masks every token whose bytes it would refuse
// (runtime/json_token_mask.h), so the output is always such a prefix and, once the model ends it,
// a whole object.
//
// Limits that keep a model from looping inside the grammar and keep numbers parseable as doubles:
// nesting depth <= kMaxDepth, runs of whitespace between tokens <= kMaxWhitespaceRun bytes,
// numbers <= kMaxNumberBytes bytes with <= 2 exponent digits. Strings hold valid UTF-8 only, no
// control characters, and \u escapes with surrogates in pairs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kimi {

class JsonMatcher {
 public:
  static constexpr int kMaxDepth = 64;
  static constexpr int kMaxWhitespaceRun = 40;
  static constexpr int kMaxNumberBytes = 32;

  // Consumes c if it may follow; false (and no change) otherwise.
  bool step(uint8_t c);
  // Consumes all of s; false if some byte may not follow (the state is then unspecified: step
  // a copy when that matters).
  bool step(std::string_view s);
  // The top-level object is closed: nothing but the end of the text may follow.
  bool complete() const { return mode_ == kDone; }

  bool operator==(const JsonMatcher&) const = default;
  size_t hash() const;

 private:
  enum Mode : uint8_t {
    kStart,       // before the top-level object: whitespace, '{'
    kValue,       // a value is due (after ':' or ',' in an array)
    kObjectOpen,  // after '{': '"' or '}'
    kKey,         // after ',' in an object: '"'
    kColon,       // after a key: ':'
    kArrayOpen,   // after '[': a value or ']'
    kAfterValue,  // in a container after a value: ',' or its closing bracket
    kString,      // inside a string (aux_ & kInKey: an object key)
    kEscape,      // after '\' in a string
    kUnicode,     // \u: count_ hex digits read so far, code_ their value
    kLowBackslash,  // after a high-surrogate escape: '\' of the low one
    kLowU,          // then 'u'
    kUtf8,        // inside a multi-byte UTF-8 character: count_ continuation bytes to go
    kLiteral,     // true / false / null: aux_ literal, count_ bytes read
    kMinus, kZero, kInt, kDot, kFrac, kExpMark, kExpSign, kExpDigits,  // number parts
    kDone,
  };
  static constexpr uint8_t kInKey = 1, kLowSurrogate = 2;

  void enter(Mode m);
  bool structural(uint8_t c);
  bool begin_value(uint8_t c);
  bool close(uint8_t c);
  void end_value();
  bool number(Mode next);

  Mode mode_ = kStart;
  uint8_t depth_ = 0;  // open containers
  uint8_t ws_ = 0;     // whitespace bytes in the current run
  uint8_t aux_ = 0;    // string flags, or the literal's index
  uint8_t count_ = 0;  // escape digits / continuation bytes / literal bytes / number bytes
  uint8_t lo_ = 0, hi_ = 0;  // the next UTF-8 continuation byte's range
  uint8_t exp_digits_ = 0;
  uint16_t code_ = 0;        // \u escape value so far
  uint64_t arrays_ = 0;      // bit d: the container at depth d + 1 is an array
};

struct JsonMatcherHash {
  size_t operator()(const JsonMatcher& m) const { return m.hash(); }
};

}  // namespace kimi
