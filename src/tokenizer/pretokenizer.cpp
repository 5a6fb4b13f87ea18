#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <atomic>

#include "core/check.h"
#include "core/log.h"

namespace kimi {

const std::string_view kKimiPattern =
    R"([\p{Han}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

// Unicode White_Space (what Rust's \s means), as the inside of a character class.
constexpr std::string_view kWhiteSpace =
    R"(\x{9}-\x{D}\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// Length of the escape at p[i] ('\' included): \p{...}/\P{...}/\x{...} take their braces.
size_t escape_length(std::string_view p, size_t i) {
  if (i + 1 >= p.size()) fail("regex pattern ends with a lone backslash");
  const char c = p[i + 1];
  if ((c == 'p' || c == 'P' || c == 'x') && i + 2 < p.size() && p[i + 2] == '{') {
    const size_t close = p.find('}', i + 3);
    if (close == std::string_view::npos) fail("regex pattern: unterminated \\", c, "{");
    return close - i + 1;
  }
  return 2;
}

// Rewrites one escape. in_class: we are inside [...].
std::string rewrite_escape(std::string_view esc, bool in_class) {
  if (esc == R"(\s)") return in_class ? std::string(kWhiteSpace) : str("[", kWhiteSpace, "]");
  if (esc == R"(\S)") {
    if (in_class) fail("regex pattern: \\S inside a character class is not supported");
    return str("[^", kWhiteSpace, "]");
  }
  if (esc == R"(\p{Han})") return R"(\p{sc=Han})";
  if (esc == R"(\P{Han})") return R"(\P{sc=Han})";
  return std::string(esc);
}

// Index one past the ']' that closes the class opened at p[open].
size_t class_end(std::string_view p, size_t open) {
  size_t i = open + 1;
  if (i < p.size() && p[i] == '^') ++i;
  if (i < p.size() && p[i] == ']') ++i;  // a leading ']' is a literal
  while (i < p.size()) {
    if (p[i] == '\\') {
      i += escape_length(p, i);
    } else if (p[i] == '[') {
      i = class_end(p, i);
    } else if (p[i] == ']') {
      return i + 1;
    } else {
      ++i;
    }
  }
  fail("regex pattern: unterminated character class at offset ", open);
}

// Rewrites the escapes inside a class body (no brackets of its own, no &&).
std::string rewrite_class_body(std::string_view body) {
  std::string out;
  for (size_t i = 0; i < body.size();) {
    if (body[i] == '\\') {
      const size_t n = escape_length(body, i);
      out += rewrite_escape(body.substr(i, n), /*in_class=*/true);
      i += n;
    } else {
      if (body[i] == '[' || (body[i] == '&' && i + 1 < body.size() && body[i + 1] == '&'))
        fail("regex pattern: nested class or '&&' in '", body, "' is not supported");
      out += body[i++];
    }
  }
  return out;
}

// Rewrites the class p[open, end): [X] or [X&&[Y]] / [X&&[^Y]].
std::string rewrite_class(std::string_view cls) {
  std::string_view body = cls.substr(1, cls.size() - 2);
  bool negated = false;
  if (!body.empty() && body[0] == '^') {
    negated = true;
    body.remove_prefix(1);
  }
  // Find a top-level "&&" (outside escapes and nested classes).
  size_t amp = std::string_view::npos;
  for (size_t i = 0; i < body.size();) {
    if (body[i] == '\\') {
      i += escape_length(body, i);
    } else if (body[i] == '[') {
      i = class_end(body, i);
    } else if (body[i] == '&' && i + 1 < body.size() && body[i + 1] == '&') {
      amp = i;
      break;
    } else {
      ++i;
    }
  }
  if (amp == std::string_view::npos)
    return str("[", negated ? "^" : "", rewrite_class_body(body), "]");
  if (negated) fail("regex pattern: negated class intersection '", cls, "' is not supported");
  const std::string_view left = body.substr(0, amp);
  const std::string_view right = body.substr(amp + 2);
  if (right.size() < 2 || right.front() != '[' || class_end(right, 0) != right.size())
    fail("regex pattern: '&&' must be followed by one bracketed class in '", cls, "'");
  std::string_view inner = right.substr(1, right.size() - 2);
  const bool inner_negated = !inner.empty() && inner[0] == '^';
  if (inner_negated) inner.remove_prefix(1);
  return str("(?:(?", inner_negated ? "!" : "=", "[", rewrite_class_body(inner), "])[",
             rewrite_class_body(left), "])");
}

// Per-thread match scratch: match data and a JIT stack large enough for 25k-character pieces.
constexpr size_t kJitStackMax = 64u << 20;
struct MatchScratch {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(64 * 1024, kJitStackMax, nullptr);
  MatchScratch() {
    KIMI_CHECK(data && context && stack, "PCRE2 allocation failed");
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

std::atomic<bool> g_warned_jit_fallback{false};

}  // namespace

std::string to_pcre2_pattern(std::string_view p) {
  std::string out;
  for (size_t i = 0; i < p.size();) {
    if (p[i] == '\\') {
      const size_t n = escape_length(p, i);
      out += rewrite_escape(p.substr(i, n), /*in_class=*/false);
      i += n;
    } else if (p[i] == '[') {
      const size_t end = class_end(p, i);
      out += rewrite_class(p.substr(i, end - i));
      i = end;
    } else {
      out += p[i++];
    }
  }
  return out;
}

Pretokenizer::Pretokenizer(std::string_view pattern) : pcre2_pattern_(to_pcre2_pattern(pattern)) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre2_pattern_.data()), pcre2_pattern_.size(),
                        PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &err_offset, nullptr);
  if (!code_) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail("PCRE2 cannot compile the pre-tokenizer pattern at offset ", err_offset, ": ",
         reinterpret_cast<const char*>(msg));
  }
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  if (!jit_) spdlog::warn("PCRE2 JIT is not available: the pre-tokenizer uses the interpreter");
}

Pretokenizer::~Pretokenizer() {
  if (code_) pcre2_code_free(code_);
}

Pretokenizer::Pretokenizer(Pretokenizer&& o) noexcept
    : code_(o.code_), jit_(o.jit_), pcre2_pattern_(std::move(o.pcre2_pattern_)) {
  o.code_ = nullptr;
}

Pretokenizer& Pretokenizer::operator=(Pretokenizer&& o) noexcept {
  if (this != &o) {
    if (code_) pcre2_code_free(code_);
    code_ = o.code_;
    jit_ = o.jit_;
    pcre2_pattern_ = std::move(o.pcre2_pattern_);
    o.code_ = nullptr;
  }
  return *this;
}

void Pretokenizer::split(std::string_view text,
                         const std::function<void(std::string_view)>& on_piece) const {
  thread_local MatchScratch scratch;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  PCRE2_SIZE* ov = pcre2_get_ovector_pointer(scratch.data);
  size_t offset = 0;
  while (offset < n) {
    int rc = PCRE2_ERROR_JIT_STACKLIMIT;
    if (jit_) rc = pcre2_jit_match(code_, subject, n, offset, 0, scratch.data, scratch.context);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      if (jit_ && !g_warned_jit_fallback.exchange(true))
        spdlog::warn("pre-tokenizer: a piece exceeded the PCRE2 JIT stack; using the interpreter");
      rc =
          pcre2_match(code_, subject, n, offset, PCRE2_NO_UTF_CHECK, scratch.data, scratch.context);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      fail("pre-tokenizer: PCRE2 match failed at byte ", offset, ": ",
           reinterpret_cast<const char*>(msg));
    }
    const size_t start = ov[0], end = ov[1];
    if (end == start) {  // empty match: step over one character, as find_iter does
      offset = end + 1;
      while (offset < n && (static_cast<unsigned char>(text[offset]) & 0xC0) == 0x80) ++offset;
      continue;
    }
    on_piece(text.substr(start, end - start));
    offset = end;
  }
}

std::vector<std::string_view> Pretokenizer::split(std::string_view text) const {
  std::vector<std::string_view> pieces;
  split(text, [&](std::string_view p) { pieces.push_back(p); });
  return pieces;
}

}  // namespace kimi
