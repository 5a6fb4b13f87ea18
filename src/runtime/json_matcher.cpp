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

}  // namespace

size_t JsonMatcher::hash() const {
  uint64_t a = uint64_t(mode_) | uint64_t(depth_) << 8 | uint64_t(ws_) << 16 |
               uint64_t(aux_) << 24 | uint64_t(count_) << 32 | uint64_t(lo_) << 40 |
               uint64_t(hi_) << 48 | uint64_t(exp_digits_) << 56;
  uint64_t h = a ^ (arrays_ * 0x9e3779b97f4a7c15ull) ^ (uint64_t(code_) << 13);
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 29;
  return size_t(h);
}

// Entering a structural mode: the per-token fields go back to zero, so that equal positions in
// the grammar compare equal (the token mask cache is keyed on the whole state).
void JsonMatcher::enter(Mode m) {
  mode_ = m;
  ws_ = aux_ = count_ = lo_ = hi_ = exp_digits_ = 0;
  code_ = 0;
}

void JsonMatcher::end_value() { enter(depth_ == 0 ? kDone : kAfterValue); }

bool JsonMatcher::begin_value(uint8_t c) {
  switch (c) {
    case '{':
    case '[':
      if (depth_ >= kMaxDepth) return false;
      if (c == '[') arrays_ |= uint64_t(1) << depth_;
      ++depth_;
      enter(c == '[' ? kArrayOpen : kObjectOpen);
      return true;
    case '"':
      enter(kString);
      return true;
    case 't':
    case 'f':
    case 'n':
      enter(kLiteral);
      aux_ = c == 't' ? 0 : c == 'f' ? 1 : 2;
      count_ = 1;
      return true;
    case '-':
      enter(kMinus);
      count_ = 1;
      return true;
    default:
      if (!is_digit(c)) return false;
      enter(c == '0' ? kZero : kInt);
      count_ = 1;
      return true;
  }
}

bool JsonMatcher::close(uint8_t c) {
  const int top = depth_ - 1;
  const bool array = arrays_ >> top & 1;
  if (c != (array ? ']' : '}')) return false;
  arrays_ &= ~(uint64_t(1) << top);
  --depth_;
  end_value();
  return true;
}

// One more number byte moving to `next`; a state that cannot end the number needs room for
// one byte after it, so every accepted prefix can still be completed within kMaxNumberBytes.
bool JsonMatcher::number(Mode next) {
  const bool may_end = next == kZero || next == kInt || next == kFrac || next == kExpDigits;
  const int room = may_end ? 0 : 1;
  if (count_ + 1 + room > kMaxNumberBytes) return false;
  ++count_;
  mode_ = next;
  return true;
}

bool JsonMatcher::structural(uint8_t c) {
  switch (mode_) {
    case kStart:
      if (c != '{') return false;
      ++depth_;
      enter(kObjectOpen);
      return true;
    case kValue:
      return begin_value(c);
    case kObjectOpen:
      if (c == '}') return close(c);
      [[fallthrough]];
    case kKey:
      if (c != '"') return false;
      enter(kString);
      aux_ = kInKey;
      return true;
    case kColon:
      if (c != ':') return false;
      enter(kValue);
      return true;
    case kArrayOpen:
      if (c == ']') return close(c);
      return begin_value(c);
    case kAfterValue:
      if (c == ',') {
        enter(arrays_ >> (depth_ - 1) & 1 ? kValue : kKey);
        return true;
      }
      return close(c);
    default:
      return false;
  }
}

bool JsonMatcher::step(uint8_t c) {
  switch (mode_) {
    case kStart:
    case kValue:
    case kObjectOpen:
    case kKey:
    case kColon:
    case kArrayOpen:
    case kAfterValue:
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        if (ws_ >= kMaxWhitespaceRun) return false;
        ++ws_;
        return true;
      }
      return structural(c);
    case kString:
      if (c == '"') {
        if (aux_ & kInKey) enter(kColon);
        else end_value();
        return true;
      }
      if (c == '\\') {
        mode_ = kEscape;
        return true;
      }
      if (c < 0x20) return false;  // control characters must be escaped
      if (c < 0x80) return true;
      // A UTF-8 lead byte: how many continuation bytes follow and the range of the first (no
      // overlong forms, no surrogates, nothing above U+10FFFF).
      if (c >= 0xC2 && c <= 0xDF) count_ = 1, lo_ = 0x80, hi_ = 0xBF;
      else if (c == 0xE0) count_ = 2, lo_ = 0xA0, hi_ = 0xBF;
      else if (c == 0xED) count_ = 2, lo_ = 0x80, hi_ = 0x9F;
      else if (c >= 0xE1 && c <= 0xEF) count_ = 2, lo_ = 0x80, hi_ = 0xBF;
      else if (c == 0xF0) count_ = 3, lo_ = 0x90, hi_ = 0xBF;
      else if (c >= 0xF1 && c <= 0xF3) count_ = 3, lo_ = 0x80, hi_ = 0xBF;
      else if (c == 0xF4) count_ = 3, lo_ = 0x80, hi_ = 0x8F;
      else return false;
      mode_ = kUtf8;
      return true;
    case kUtf8:
      if (c < lo_ || c > hi_) return false;
      lo_ = 0x80;
      hi_ = 0xBF;
      if (--count_ == 0) mode_ = kString, lo_ = hi_ = 0;
      return true;
    case kEscape:
      if (c == 'u') {
        mode_ = kUnicode;
        count_ = 0;
        code_ = 0;
        return true;
      }
      if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' && c != 'r' &&
          c != 't')
        return false;
      mode_ = kString;
      return true;
    case kUnicode: {
      const int v = hex_value(c);
      if (v < 0) return false;
      // Surrogates only in pairs: a low one (DC00..DFFF) exactly where a high one (D800..DBFF)
      // came before. Checked at the first two digits, so no accepted prefix is a dead end.
      const bool want_low = aux_ & kLowSurrogate;
      if (count_ == 0 && want_low && v != 0xD) return false;
      if (count_ == 1 && code_ == 0xD && (want_low ? v < 0xC : v >= 0xC)) return false;
      code_ = uint16_t(code_ << 4 | v);
      if (++count_ < 4) return true;
      const bool high = !want_low && code_ >= 0xD800 && code_ <= 0xDBFF;
      count_ = 0;
      code_ = 0;
      aux_ = uint8_t(high ? aux_ | kLowSurrogate : aux_ & ~kLowSurrogate);
      mode_ = high ? kLowBackslash : kString;
      return true;
    }
    case kLowBackslash:
      if (c != '\\') return false;
      mode_ = kLowU;
      return true;
    case kLowU:
      if (c != 'u') return false;
      mode_ = kUnicode;
      return true;
    case kLiteral: {
      const std::string_view lit = kLiterals[aux_];
      if (c != uint8_t(lit[count_])) return false;
      if (++count_ == lit.size()) end_value();
      return true;
    }
    case kMinus:
      if (!is_digit(c)) return false;
      return number(c == '0' ? kZero : kInt);
    case kDot:
      return is_digit(c) && number(kFrac);
    case kExpMark:
      if (c == '+' || c == '-') return number(kExpSign);
      [[fallthrough]];
    case kExpSign:
      if (!is_digit(c) || !number(kExpDigits)) return false;
      exp_digits_ = 1;
      return true;
    case kZero:
    case kInt:
    case kFrac:
    case kExpDigits: {
      if (mode_ == kInt && is_digit(c) && number(kInt)) return true;
      if (mode_ == kFrac && is_digit(c) && number(kFrac)) return true;
      if (mode_ == kExpDigits && is_digit(c) && exp_digits_ < 2 && number(kExpDigits)) {
        ++exp_digits_;
        return true;
      }
      if (c == '.' && (mode_ == kZero || mode_ == kInt) && number(kDot)) return true;
      if ((c == 'e' || c == 'E') && mode_ != kExpDigits && number(kExpMark)) return true;
      // Anything else ends the number and is read by the container around it.
      const JsonMatcher before = *this;
      end_value();
      if (step(c)) return true;
      *this = before;
      return false;
    }
    case kDone:
      return false;
  }
  return false;
}

bool JsonMatcher::step(std::string_view s) {
  for (char c : s)
    if (!step(uint8_t(c))) return false;
  return true;
}

}  // namespace kimi
