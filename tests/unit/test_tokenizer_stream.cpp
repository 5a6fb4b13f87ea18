// StreamDecoder and StopMatcher.
#include <random>

#include "random_text.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer_test_util.h"

namespace kimi {
namespace {

using test::golden_tokenizer;

// A tokenizer whose base tokens are the 256 single bytes: every multi-byte character is split.
const Tokenizer& byte_tokenizer() {
  static const Tokenizer tok = [] {
    std::vector<std::string> tokens;
    for (int b = 0; b < 256; ++b) tokens.emplace_back(1, char(b));
    return Tokenizer::from_parts(tokens, {{256, "[BOS]"}, {257, "[EOS]"}, {258, "<|im_end|>"}},
                                 "[BOS]", "[EOS]", "");
  }();
  return tok;
}

std::vector<int> bytes_of(std::string_view s) {
  std::vector<int> ids;
  for (const char c : s) ids.push_back(static_cast<unsigned char>(c));
  return ids;
}

TEST(StreamDecoder, HoldsBackPartialCharacters) {
  const Tokenizer& tok = byte_tokenizer();
  StreamDecoder dec(tok);
  // 中 = E4 B8 AD, 🙂 = F0 9F 99 82
  EXPECT_EQ(dec.push(0xE4), "");
  EXPECT_EQ(dec.push(0xB8), "");
  EXPECT_EQ(dec.pending_bytes(), 2u);
  EXPECT_EQ(dec.push(0xAD), "中");
  EXPECT_EQ(dec.push('a'), "a");
  for (const int b : {0xF0, 0x9F, 0x99}) EXPECT_EQ(dec.push(b), "");
  EXPECT_EQ(dec.push(0x82), "🙂");
  EXPECT_EQ(dec.flush(), "");
}

TEST(StreamDecoder, InvalidBytesBecomeReplacementCharacters) {
  const Tokenizer& tok = byte_tokenizer();
  StreamDecoder dec(tok);
  EXPECT_EQ(dec.push(0xFF), "\xEF\xBF\xBD");  // never valid
  EXPECT_EQ(dec.push(0xE4), "");
  EXPECT_EQ(dec.push('x'), "\xEF\xBF\xBDx");  // a truncated sequence cut by ASCII
  EXPECT_EQ(dec.push(0xE4), "");
  EXPECT_EQ(dec.push(0xB8), "");
  EXPECT_EQ(dec.push(256), "\xEF\xBF\xBD[BOS]");  // ... or by a special token
  EXPECT_EQ(dec.push(0xF0), "");
  EXPECT_EQ(dec.flush(), "\xEF\xBF\xBD");  // ... or by the end of the stream
  EXPECT_EQ(dec.flush(), "");
}

TEST(StreamDecoder, SkipsSpecialTokensWhenAsked) {
  const Tokenizer& tok = byte_tokenizer();
  StreamDecoder keep(tok), skip(tok, /*skip_special=*/true);
  EXPECT_EQ(keep.push(258), "<|im_end|>");
  EXPECT_EQ(skip.push(258), "");
  EXPECT_EQ(skip.push('o'), "o");
}

TEST(StreamDecoder, RandomByteStreamsAreValidUtf8AndLossless) {
  const Tokenizer& tok = byte_tokenizer();
  std::mt19937 rng(3);
  for (int i = 0; i < 200; ++i) {
    const std::string s = test::random_text(rng, 1 + static_cast<int>(rng() % 40));
    StreamDecoder dec(tok);
    std::string got;
    for (const int id : bytes_of(s)) got += dec.push(id);
    got += dec.flush();
    ASSERT_EQ(got, s);
    // Arbitrary bytes: every piece is valid UTF-8, and valid input bytes survive.
    StreamDecoder noisy(tok);
    std::string out;
    for (int k = 0; k < 40; ++k) {
      const std::string piece = noisy.push(static_cast<int>(rng() % 256));
      ASSERT_TRUE(is_valid_utf8(piece));
      out += piece;
    }
    out += noisy.flush();
    ASSERT_TRUE(is_valid_utf8(out));
  }
}

// Reference: the stop that ends first in the whole text (ties: the one starting first).
std::pair<std::string, std::optional<size_t>> reference_stop(
    const std::string& text, const std::vector<std::string>& stops) {
  size_t best_end = std::string::npos, best_start = 0;
  std::optional<size_t> which;
  for (size_t k = 0; k < stops.size(); ++k) {
    const size_t at = text.find(stops[k]);
    if (at == std::string::npos) continue;
    const size_t end = at + stops[k].size();
    if (end < best_end || (end == best_end && at < best_start)) {
      best_end = end;
      best_start = at;
      which = k;
    }
  }
  return which ? std::make_pair(text.substr(0, best_start), which) : std::make_pair(text, which);
}

TEST(StopMatcher, HoldsBackPossiblePrefixes) {
  StopMatcher m({"STOP", "\n\n"});
  auto r = m.push("hello ST");
  EXPECT_EQ(r.text, "hello ");
  EXPECT_FALSE(r.stop);
  r = m.push("OR");
  EXPECT_EQ(r.text, "STOR");  // "STOR" cannot grow into "STOP" any more
  r = m.push("Y\n");
  EXPECT_EQ(r.text, "Y");
  r = m.push("\nmore");
  EXPECT_EQ(r.text, "");
  ASSERT_TRUE(r.stop);
  EXPECT_EQ(*r.stop, 1u);
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.push("after").text, "");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, FlushReturnsHeldTail) {
  StopMatcher m({"</answer>"});
  EXPECT_EQ(m.push("42</ans").text, "42");
  EXPECT_EQ(m.flush(), "</ans");
  StopMatcher none({});
  EXPECT_EQ(none.push("anything").text, "anything");
}

TEST(StopMatcher, EarliestEndingStopWins) {
  StopMatcher m({"abcd", "bc"});
  auto r = m.push("xabcd");
  ASSERT_TRUE(r.stop);
  EXPECT_EQ(*r.stop, 1u);  // "bc" completes before "abcd" would
  EXPECT_EQ(r.text, "xa");
}

// Stop strings split across tokens: decode token by token, feed the matcher, compare with the
// reference on the whole text. Also feeds the same text in random chunks.
TEST(StopMatcher, StopsSplitAcrossTokens) {
  KIMI_REQUIRE_GOLDEN_TOKENIZER();
  const Tokenizer& tok = golden_tokenizer();
  std::mt19937 rng(17);
  int stopped = 0;
  for (int i = 0; i < 300; ++i) {
    const std::string text = test::random_text(rng, 4 + static_cast<int>(rng() % 40));
    // Stops: substrings of the text (at character boundaries) and a few that never occur.
    std::vector<std::string> stops = {"\xE2\x9B\x94never", "ZZZZZ"};
    for (int k = 0; k < 2; ++k) {
      size_t a = rng() % text.size(), len = 1 + rng() % 8;
      while (a > 0 && (static_cast<unsigned char>(text[a]) & 0xC0) == 0x80) --a;
      size_t b = std::min(text.size(), a + len);
      while (b < text.size() && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) ++b;
      stops.push_back(text.substr(a, b - a));
    }
    const auto [want_text, want_stop] = reference_stop(text, stops);
    StreamDecoder dec(tok);
    StopMatcher m(stops);
    std::string got;
    std::optional<size_t> got_stop;
    for (const int id : tok.encode(text, false)) {
      auto r = m.push(dec.push(id));
      got += r.text;
      if (r.stop) {
        got_stop = r.stop;
        break;
      }
    }
    if (!got_stop) {
      auto r = m.push(dec.flush());
      got += r.text;
      got_stop = r.stop;
      if (!got_stop) got += m.flush();
    }
    ASSERT_EQ(got, want_text) << "case " << i;
    ASSERT_EQ(got_stop, want_stop) << "case " << i;
    stopped += got_stop.has_value();
    // Same text in random chunks (at character boundaries) gives the same answer.
    StopMatcher m2(stops);
    std::string got2;
    std::optional<size_t> stop2;
    for (size_t pos = 0; pos < text.size() && !stop2;) {
      size_t end = std::min(text.size(), pos + 1 + rng() % 6);
      while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
      auto r = m2.push(std::string_view(text).substr(pos, end - pos));
      got2 += r.text;
      stop2 = r.stop;
      pos = end;
    }
    if (!stop2) got2 += m2.flush();
    ASSERT_EQ(got2, want_text) << "case " << i;
    ASSERT_EQ(stop2, want_stop) << "case " << i;
  }
  EXPECT_EQ(stopped, 300);  // every case has a stop taken from its own text
}

}  // namespace
}  // namespace kimi
