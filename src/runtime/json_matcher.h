// JSON mode and structured outputs (response_format json_object / json_schema): a byte-level
// recogniser that accepts a byte only while the text so far stays the prefix of a JSON document
// (RFC 8259, as nlohmann::json::parse reads it) valid against a schema (runtime/json_schema.h;
// JSON mode's is "any object"). The engine masks every token whose bytes it would refuse
// (runtime/json_token_mask.h), so the output is always such a prefix and, once the model ends it,
// a whole valid document. No accepted prefix is a dead end: every one can still be completed.
//
// The state is a stack per open container (schema node, properties or items so far) plus the
// position inside the current token. anyOf makes it nondeterministic: one thread per live
// branch, stepped together (at most kMaxThreads; beyond that the later branches are dropped,
// which narrows what may be generated but never admits an invalid document). Object keys come
// in the schema's order and are matched, like enum values, against the sorted set of texts that
// may come next. Extra keys (additionalProperties true or a schema) come after every required
// one, and no declared key after them; where both kinds may come a thread follows each. An extra
// key must differ from every declared key: it is matched against their texts as it goes and may
// hold escapes only once it has left them all behind.
//
// Limits that keep a model from looping inside the grammar and keep numbers parseable as doubles:
// nesting depth <= kMaxDepth, runs of whitespace between tokens <= kMaxWhitespaceRun bytes,
// numbers <= kMaxNumberBytes bytes with <= 2 exponent digits (integers <= kMaxIntegerDigits
// digits). Strings hold valid UTF-8 only, no
// control characters, and \u escapes with surrogates in pairs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/json_schema.h"

namespace kimi {

class JsonMatcher {
 public:
  static constexpr int kMaxDepth = 64;
  static constexpr int kMaxWhitespaceRun = 40;
  static constexpr int kMaxNumberBytes = 32;
  // Digits of a value whose schema type is integer (not number): it always fits an int64, which
  // parsers read as an integer (nlohmann::json reads 20 digits as a double).
  static constexpr int kMaxIntegerDigits = 18;
  static constexpr int kMaxThreads = 16;

  JsonMatcher();  // JSON mode: one object
  explicit JsonMatcher(std::shared_ptr<const JsonSchema> schema);

  // Consumes c if it may follow; false (and no change) otherwise.
  bool step(uint8_t c);
  // Consumes all of s; false if some byte may not follow (the state is then unspecified: step
  // a copy when that matters).
  bool step(std::string_view s);
  // The text is a whole document: it may end here (more may still follow after a number).
  bool complete() const;

  bool operator==(const JsonMatcher&) const;
  size_t hash() const;

 private:
  enum Mode : uint8_t {
    kValue,       // a value of lex.node is due (the top level, after ':', after ',' in an array)
    kObjectOpen,  // after '{': '"' or '}'
    kKey,         // after ',' in an object: '"'
    kColon,       // after a key: ':'
    kArrayOpen,   // after '[': a value or ']'
    kAfterValue,  // in a container after a value: ',' or its closing bracket
    kChoice,      // an enum value or a declared key: one of choices[choice] (aux kInKey: a key)
    kString,      // inside a string (aux & kInKey: a key not matched as a declared one; with
                  // kExtraKey, the declared keys it may still equal: choice, first, last, offset)
    kEscape,      // after '\' in a string
    kUnicode,     // \u: count hex digits read so far, code their value
    kLowBackslash,  // after a high-surrogate escape: '\' of the low one
    kLowU,          // then 'u'
    kUtf8,        // inside a multi-byte UTF-8 character: count continuation bytes to go
    kLiteral,     // true / false / null: aux literal, count bytes read
    kMinus, kZero, kInt, kDot, kFrac, kExpMark, kExpSign, kExpDigits,  // number parts
    kDone,
  };
  static constexpr uint8_t kInKey = 1, kLowSurrogate = 2, kIntegerOnly = 4, kNegative = 8,
                           kExtraKey = 16;

  // Where the current token stands: plain data, saved and restored around a refused byte.
  struct Lex {
    Mode mode = kValue;
    uint8_t ws = 0;     // whitespace bytes in the current run
    uint8_t aux = 0;    // flags, or the literal's index
    uint8_t count = 0;  // escape digits / continuation bytes / literal bytes / number bytes
    uint8_t lo = 0, hi = 0;  // the next UTF-8 continuation byte's range
    uint8_t exp_digits = 0;
    uint16_t code = 0;       // \u escape value so far
    uint32_t node = 0;       // kValue: the node due
    int32_t choice = -1;     // kChoice: the text set, the live range of it, bytes matched
    uint32_t first = 0, last = 0, offset = 0;
    bool operator==(const Lex&) const = default;
  };
  struct Frame {
    uint32_t node;
    bool array;
    uint32_t count;  // object: declared properties consumed (all after an extra key); array: items
                     // before the current
    uint32_t value;  // object: the node of the value after the current key
    bool operator==(const Frame&) const = default;
  };
  struct Thread {
    Lex lex;
    std::vector<Frame> stack;  // open containers
    bool operator==(const Thread&) const = default;
  };

  bool step_thread(Thread& t, uint8_t c, std::vector<Thread>& forks) const;
  bool structural(Thread& t, uint8_t c, std::vector<Thread>& forks) const;
  bool begin_value(Thread& t, uint32_t node, uint8_t c, std::vector<Thread>& forks) const;
  bool begin_concrete(Thread& t, uint32_t node, uint8_t c, std::vector<Thread>& forks) const;
  bool begin_key(Thread& t, std::vector<Thread>& forks) const;
  std::pair<uint32_t, uint32_t> narrow(const Lex& l, uint8_t c) const;
  void extra_key_byte(Lex& l, uint8_t c) const;
  bool step_choice(Thread& t, uint8_t c, std::vector<Thread>& forks) const;
  bool end_then_step(Thread& t, uint8_t c, std::vector<Thread>& forks) const;
  bool close(Thread& t, uint8_t c) const;
  bool number(Thread& t, Mode next) const;
  void enter(Thread& t, Mode m) const;
  void end_value(Thread& t) const;
  bool fits(const Thread& t, uint32_t node) const;  // a value of node can still be completed
  bool may_add_declared(const Thread& t) const;
  bool may_add_extra(const Thread& t) const;
  bool may_close_object(const Thread& t) const;

  std::shared_ptr<const JsonSchema> schema_;
  std::vector<Thread> threads_;
};

struct JsonMatcherHash {
  size_t operator()(const JsonMatcher& m) const { return m.hash(); }
};

}  // namespace kimi
