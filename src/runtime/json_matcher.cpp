#include "runtime/json_matcher.h"

namespace kimi {

namespace {

constexpr std::string_view kLiterals[] = {"true", "false", "null"};

bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

int hex_value(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h;
}

}  // namespace

JsonMatcher::JsonMatcher() : JsonMatcher(JsonSchema::any_object()) {}

JsonMatcher::JsonMatcher(std::shared_ptr<const JsonSchema> schema) : schema_(std::move(schema)) {
  Thread t;
  t.lex.node = schema_->root;
  threads_.push_back(std::move(t));
}

bool JsonMatcher::operator==(const JsonMatcher& o) const {
  return schema_ == o.schema_ && threads_ == o.threads_;
}

size_t JsonMatcher::hash() const {
  uint64_t h = uint64_t(reinterpret_cast<uintptr_t>(schema_.get()));
  for (const Thread& t : threads_) {
    const Lex& l = t.lex;
    h = mix(h, uint64_t(l.mode) | uint64_t(l.ws) << 8 | uint64_t(l.aux) << 16 |
                   uint64_t(l.count) << 24 | uint64_t(l.lo) << 32 | uint64_t(l.hi) << 40 |
                   uint64_t(l.exp_digits) << 48);
    h = mix(h, uint64_t(l.code) | uint64_t(l.node) << 16 | uint64_t(uint32_t(l.choice)) << 48);
    h = mix(h, uint64_t(l.first) | uint64_t(l.last) << 32);
    h = mix(h, l.offset);
    for (const Frame& f : t.stack)
      h = mix(h, (uint64_t(f.node) | uint64_t(f.array) << 32 | uint64_t(f.count) << 33) ^
                     (uint64_t(f.value) * 0xbf58476d1ce4e5b9ull));
  }
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 29;
  return size_t(h);
}

// Entering a mode: the per-token fields go back to zero, so that equal positions in the grammar
// compare equal (the token mask cache is keyed on the whole state).
void JsonMatcher::enter(Thread& t, Mode m) const {
  t.lex = Lex{};
  t.lex.mode = m;
}

void JsonMatcher::end_value(Thread& t) const { enter(t, t.stack.empty() ? kDone : kAfterValue); }

bool JsonMatcher::fits(const Thread& t, uint32_t node) const {
  return int(t.stack.size()) + schema_->nodes[node].min_depth <= kMaxDepth;
}

bool JsonMatcher::may_add_declared(const Thread& t) const {
  const Frame& f = t.stack.back();
  const SchemaNode& n = schema_->nodes[f.node];
  if (f.count >= n.keys.size()) return false;
  for (int i = int(f.count); i <= n.next_required[f.count]; ++i)
    if (fits(t, n.values[size_t(i)])) return true;
  return false;
}

// Extra keys come once every required property has (and end the declared ones).
bool JsonMatcher::may_add_extra(const Thread& t) const {
  const Frame& f = t.stack.back();
  const SchemaNode& n = schema_->nodes[f.node];
  return n.free_values >= 0 && int(f.count) > n.last_required && fits(t, uint32_t(n.free_values));
}

bool JsonMatcher::may_close_object(const Thread& t) const {
  const Frame& f = t.stack.back();
  const SchemaNode& n = schema_->nodes[f.node];
  return n.keys.empty() || int(f.count) > n.last_required;
}

// After the '"' that opens a key (may_add_declared or may_add_extra held): a thread for each kind
// of key that may come.
bool JsonMatcher::begin_key(Thread& t, std::vector<Thread>& forks) const {
  const SchemaNode& n = schema_->nodes[t.stack.back().node];
  const bool declared = may_add_declared(t);
  if (may_add_extra(t)) {
    Thread x = t;
    enter(x, kString);
    x.lex.aux = kInKey;
    if (n.key_choice >= 0) {  // an extra key must differ from every declared one
      x.lex.aux |= kExtraKey;
      x.lex.choice = n.key_choice;
      x.lex.last = uint32_t(schema_->choices[size_t(n.key_choice)].texts.size());
      x.lex.offset = 1;  // every key text starts with the quote
    }
    if (!declared) {
      t = std::move(x);
      return true;
    }
    forks.push_back(std::move(x));
  }
  enter(t, kChoice);
  t.lex.aux = kInKey;
  t.lex.choice = n.key_choice;
  t.lex.last = uint32_t(schema_->choices[size_t(t.lex.choice)].texts.size());
  t.lex.offset = 1;  // every key text starts with the quote
  return true;
}

bool JsonMatcher::begin_value(Thread& t, uint32_t node, uint8_t c, std::vector<Thread>& forks) const {
  const SchemaNode& n = schema_->nodes[node];
  if (n.alts.empty()) return begin_concrete(t, node, c, forks);
  // anyOf: a thread for each branch that the byte can start.
  const Thread orig = t;
  bool any = false;
  for (uint32_t a : n.alts) {
    Thread x = orig;
    if (!begin_concrete(x, a, c, forks)) continue;
    if (!any) t = std::move(x);
    else forks.push_back(std::move(x));
    any = true;
  }
  return any;
}

bool JsonMatcher::begin_concrete(Thread& t, uint32_t node, uint8_t c, std::vector<Thread>& forks) const {
  const SchemaNode& n = schema_->nodes[node];
  if (n.choice >= 0) {
    enter(t, kChoice);
    t.lex.choice = n.choice;
    t.lex.last = uint32_t(schema_->choices[size_t(n.choice)].texts.size());
    return step_choice(t, c, forks);
  }
  const int depth = int(t.stack.size());
  const bool numbers = n.types & (SchemaNode::kNumber | SchemaNode::kInteger);
  switch (c) {
    case '{':
    case '[': {
      const bool array = c == '[';
      if (!(n.types & (array ? SchemaNode::kArray : SchemaNode::kObject))) return false;
      if (depth + (array ? n.array_depth : n.object_depth) > kMaxDepth) return false;
      t.stack.push_back({node, array, 0, 0});
      enter(t, array ? kArrayOpen : kObjectOpen);
      return true;
    }
    case '"':
      if (!(n.types & SchemaNode::kString)) return false;
      enter(t, kString);
      return true;
    case 't':
    case 'f':
    case 'n':
      if (!(n.types & (c == 'n' ? SchemaNode::kNull : SchemaNode::kBoolean))) return false;
      enter(t, kLiteral);
      t.lex.aux = c == 't' ? 0 : c == 'f' ? 1 : 2;
      t.lex.count = 1;
      return true;
    default:
      if (!numbers || (c != '-' && !is_digit(c))) return false;
      enter(t, c == '-' ? kMinus : c == '0' ? kZero : kInt);
      t.lex.count = 1;
      if (!(n.types & SchemaNode::kNumber)) t.lex.aux = kIntegerOnly | (c == '-' ? kNegative : 0);
      return true;
  }
}

// The live texts [first, last) of a choice share `offset` bytes, so those that continue with c
// are a contiguous run (sorted as unsigned bytes): [a, b).
std::pair<uint32_t, uint32_t> JsonMatcher::narrow(const Lex& l, uint8_t c) const {
  const SchemaChoice& ch = schema_->choices[size_t(l.choice)];
  auto byte = [&](uint32_t i) {
    return ch.texts[i].size() > l.offset ? int(uint8_t(ch.texts[i][l.offset])) : -1;
  };
  uint32_t a = l.first;
  while (a < l.last && byte(a) < int(c)) ++a;
  uint32_t b = a;
  while (b < l.last && byte(b) == int(c)) ++b;
  return {a, b};
}

// A byte of an extra key (not its closing quote): the declared keys it may still equal narrow to
// those going on with c. Once none does, no escape can make it one of them: it is a free key.
void JsonMatcher::extra_key_byte(Lex& l, uint8_t c) const {
  const auto [a, b] = narrow(l, c);
  if (a == b) {
    l.aux &= uint8_t(~kExtraKey);
    l.choice = -1;
    l.first = l.last = l.offset = 0;
    return;
  }
  l.first = a;
  l.last = b;
  ++l.offset;
}

// One byte of an enum value or a declared key.
bool JsonMatcher::step_choice(Thread& t, uint8_t c, std::vector<Thread>& forks) const {
  const SchemaChoice& ch = schema_->choices[size_t(t.lex.choice)];
  const uint32_t off = t.lex.offset;
  const auto [a, b] = narrow(t.lex, c);
  const bool key = t.lex.aux & kInKey;
  bool live = a < b;
  if (key) {  // only keys that may come next and whose value still fits under the depth limit
    const Frame& f = t.stack.back();
    const SchemaNode& obj = schema_->nodes[f.node];
    live = false;
    for (uint32_t i = a; i < b && !live; ++i) {
      const int tag = ch.tags[i];
      live = tag >= int(f.count) && tag <= obj.next_required[f.count] && fits(t, obj.values[size_t(tag)]);
    }
  }
  if (!live) {
    // A complete enum value (the shortest live text, first in the run) ends before c, as a
    // number does: "1" when the set also holds "12".
    if (!key && ch.texts[t.lex.first].size() == off) return end_then_step(t, c, forks);
    return false;
  }
  t.lex.first = a;
  t.lex.last = b;
  t.lex.offset = off + 1;
  // Complete: no text extends a key (each ends at its closing quote); enum texts may extend
  // one another ("1", "12").
  if (b - a > 1 || ch.texts[a].size() != off + 1) return true;
  if (key) {  // the one key left is complete: its value comes next
    Frame& f = t.stack.back();
    const int tag = ch.tags[a];
    f.count = uint32_t(tag + 1);
    f.value = schema_->nodes[f.node].values[size_t(tag)];
    enter(t, kColon);
  } else {
    end_value(t);
  }
  return true;
}

// The value ends before c, which its container reads; no change if the container refuses it.
bool JsonMatcher::end_then_step(Thread& t, uint8_t c, std::vector<Thread>& forks) const {
  const Lex saved = t.lex;
  end_value(t);
  if (step_thread(t, c, forks)) return true;
  t.lex = saved;
  return false;
}

bool JsonMatcher::close(Thread& t, uint8_t c) const {
  if (c != (t.stack.back().array ? ']' : '}')) return false;
  t.stack.pop_back();
  end_value(t);
  return true;
}

// One more number byte moving to `next`; a state that cannot end the number needs room for
// one byte after it, so every accepted prefix can still be completed within kMaxNumberBytes.
bool JsonMatcher::number(Thread& t, Mode next) const {
  const bool may_end = next == kZero || next == kInt || next == kFrac || next == kExpDigits;
  const int room = may_end ? 0 : 1;
  const int max = t.lex.aux & kIntegerOnly ? kMaxIntegerDigits + (t.lex.aux & kNegative ? 1 : 0)
                                           : kMaxNumberBytes;
  if (t.lex.count + 1 + room > max) return false;
  ++t.lex.count;
  t.lex.mode = next;
  return true;
}

// Structural bytes. Every check comes before the stack changes, so a refusal leaves the stack
// as it was (the caller restores t.lex).
bool JsonMatcher::structural(Thread& t, uint8_t c, std::vector<Thread>& forks) const {
  switch (t.lex.mode) {
    case kValue:
      return begin_value(t, t.lex.node, c, forks);
    case kObjectOpen:
      if (c == '}') return may_close_object(t) && close(t, c);
      [[fallthrough]];
    case kKey:
      return c == '"' && (may_add_declared(t) || may_add_extra(t)) && begin_key(t, forks);
    case kColon: {
      if (c != ':') return false;
      const uint32_t value = t.stack.back().value;
      enter(t, kValue);
      t.lex.node = value;
      return true;
    }
    case kArrayOpen: {
      const SchemaNode& n = schema_->nodes[t.stack.back().node];
      if (c == ']') return n.min_items == 0 && close(t, c);
      return n.max_items > 0 && fits(t, n.items) && begin_value(t, n.items, c, forks);
    }
    case kAfterValue: {
      Frame& f = t.stack.back();
      const SchemaNode& n = schema_->nodes[f.node];
      if (f.array) {
        const uint32_t done = f.count + 1;  // items so far
        if (c == ']') return done >= uint32_t(n.min_items) && close(t, c);
        if (c != ',' || done >= uint32_t(n.max_items) || !fits(t, n.items)) return false;
        f.count = done;
        enter(t, kValue);
        t.lex.node = n.items;
        return true;
      }
      if (c == '}') return may_close_object(t) && close(t, c);
      if (c != ',' || !(may_add_declared(t) || may_add_extra(t))) return false;
      enter(t, kKey);
      return true;
    }
    default:
      return false;
  }
}

bool JsonMatcher::step_thread(Thread& t, uint8_t c, std::vector<Thread>& forks) const {
  Lex& l = t.lex;
  switch (l.mode) {
    case kValue:
    case kObjectOpen:
    case kKey:
    case kColon:
    case kArrayOpen:
    case kAfterValue:
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        if (l.ws >= kMaxWhitespaceRun) return false;
        ++l.ws;
        return true;
      }
      return structural(t, c, forks);
    case kChoice:
      return step_choice(t, c, forks);
    case kString:
      if (c == '"') {
        if (l.aux & kInKey) {
          // An extra key equal to a declared one is that key: the declared-key thread reads it
          // where it may come, and it never comes twice or with the extra keys' schema.
          if (l.aux & kExtraKey) {
            const auto [a, b] = narrow(l, c);
            if (a != b) return false;
          }
          Frame& f = t.stack.back();
          const SchemaNode& n = schema_->nodes[f.node];
          f.value = uint32_t(n.free_values);
          f.count = uint32_t(n.keys.size());  // no declared key after an extra one
          enter(t, kColon);
        } else {
          end_value(t);
        }
        return true;
      }
      if (c == '\\') {
        if (l.aux & kExtraKey) return false;  // "\u0061" would spell a declared key "a"
        l.mode = kEscape;
        return true;
      }
      if (c < 0x20) return false;  // control characters must be escaped
      if (l.aux & kExtraKey) extra_key_byte(l, c);
      if (c < 0x80) return true;
      // A UTF-8 lead byte: how many continuation bytes follow and the range of the first (no
      // overlong forms, no surrogates, nothing above U+10FFFF).
      if (c >= 0xC2 && c <= 0xDF) l.count = 1, l.lo = 0x80, l.hi = 0xBF;
      else if (c == 0xE0) l.count = 2, l.lo = 0xA0, l.hi = 0xBF;
      else if (c == 0xED) l.count = 2, l.lo = 0x80, l.hi = 0x9F;
      else if (c >= 0xE1 && c <= 0xEF) l.count = 2, l.lo = 0x80, l.hi = 0xBF;
      else if (c == 0xF0) l.count = 3, l.lo = 0x90, l.hi = 0xBF;
      else if (c >= 0xF1 && c <= 0xF3) l.count = 3, l.lo = 0x80, l.hi = 0xBF;
      else if (c == 0xF4) l.count = 3, l.lo = 0x80, l.hi = 0x8F;
      else return false;
      l.mode = kUtf8;
      return true;
    case kUtf8:
      if (c < l.lo || c > l.hi) return false;
      if (l.aux & kExtraKey) extra_key_byte(l, c);
      l.lo = 0x80;
      l.hi = 0xBF;
      if (--l.count == 0) l.mode = kString, l.lo = l.hi = 0;
      return true;
    case kEscape:
      if (c == 'u') {
        l.mode = kUnicode;
        l.count = 0;
        l.code = 0;
        return true;
      }
      if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' && c != 'r' &&
          c != 't')
        return false;
      l.mode = kString;
      return true;
    case kUnicode: {
      const int v = hex_value(c);
      if (v < 0) return false;
      // Surrogates only in pairs: a low one (DC00..DFFF) exactly where a high one (D800..DBFF)
      // came before. Checked at the first two digits, so no accepted prefix is a dead end.
      const bool want_low = l.aux & kLowSurrogate;
      if (l.count == 0 && want_low && v != 0xD) return false;
      if (l.count == 1 && l.code == 0xD && (want_low ? v < 0xC : v >= 0xC)) return false;
      l.code = uint16_t(l.code << 4 | v);
      if (++l.count < 4) return true;
      const bool high = !want_low && l.code >= 0xD800 && l.code <= 0xDBFF;
      l.count = 0;
      l.code = 0;
      l.aux = uint8_t(high ? l.aux | kLowSurrogate : l.aux & ~kLowSurrogate);
      l.mode = high ? kLowBackslash : kString;
      return true;
    }
    case kLowBackslash:
      if (c != '\\') return false;
      l.mode = kLowU;
      return true;
    case kLowU:
      if (c != 'u') return false;
      l.mode = kUnicode;
      return true;
    case kLiteral: {
      const std::string_view lit = kLiterals[l.aux];
      if (c != uint8_t(lit[l.count])) return false;
      if (++l.count == lit.size()) end_value(t);
      return true;
    }
    case kMinus:
      if (!is_digit(c)) return false;
      return number(t, c == '0' ? kZero : kInt);
    case kDot:
      return is_digit(c) && number(t, kFrac);
    case kExpMark:
      if (c == '+' || c == '-') return number(t, kExpSign);
      [[fallthrough]];
    case kExpSign:
      if (!is_digit(c) || !number(t, kExpDigits)) return false;
      l.exp_digits = 1;
      return true;
    case kZero:
    case kInt:
    case kFrac:
    case kExpDigits: {
      const Mode m = l.mode;
      const bool fraction = !(l.aux & kIntegerOnly);
      if (m == kInt && is_digit(c) && number(t, kInt)) return true;
      if (m == kFrac && is_digit(c) && number(t, kFrac)) return true;
      if (m == kExpDigits && is_digit(c) && l.exp_digits < 2 && number(t, kExpDigits)) {
        ++l.exp_digits;
        return true;
      }
      if (fraction && c == '.' && (m == kZero || m == kInt) && number(t, kDot)) return true;
      if (fraction && (c == 'e' || c == 'E') && m != kExpDigits && number(t, kExpMark)) return true;
      // Anything else ends the number and is read by the container around it.
      return end_then_step(t, c, forks);
    }
    case kDone:
      return false;
  }
  return false;
}

bool JsonMatcher::step(uint8_t c) {
  std::vector<Thread> forks;
  bool ok[kMaxThreads];
  bool any = false;
  for (size_t i = 0; i < threads_.size(); ++i) {
    const Lex saved = threads_[i].lex;
    ok[i] = step_thread(threads_[i], c, forks);
    if (!ok[i]) threads_[i].lex = saved;
    any |= ok[i];
  }
  if (!any) return false;
  if (threads_.size() == 1 && forks.empty()) return true;
  std::vector<Thread> next;
  for (size_t i = 0; i < threads_.size(); ++i)
    if (ok[i]) next.push_back(std::move(threads_[i]));
  for (Thread& f : forks) next.push_back(std::move(f));
  threads_.clear();
  for (Thread& t : next) {
    if (threads_.size() == size_t(kMaxThreads)) break;
    bool seen = false;
    for (const Thread& u : threads_) seen = seen || u == t;
    if (!seen) threads_.push_back(std::move(t));
  }
  return true;
}

bool JsonMatcher::step(std::string_view s) {
  for (char c : s)
    if (!step(uint8_t(c))) return false;
  return true;
}

bool JsonMatcher::complete() const {
  for (const Thread& t : threads_) {
    const Lex& l = t.lex;
    if (l.mode == kDone) return true;
    if (!t.stack.empty()) continue;
    if (l.mode == kZero || l.mode == kInt || l.mode == kFrac || l.mode == kExpDigits) return true;
    if (l.mode == kChoice && !(l.aux & kInKey) &&
        schema_->choices[size_t(l.choice)].texts[l.first].size() == l.offset)
      return true;
  }
  return false;
}

}  // namespace kimi
