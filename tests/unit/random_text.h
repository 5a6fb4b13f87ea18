// Random Unicode text for the tokenizer property tests: every plane, combining marks, emoji ZWJ
// sequences, CR/LF runs, odd whitespace and special-token strings. Deterministic per seed.
#pragma once

#include <random>
#include <string>
#include <vector>

#include "tokenizer/utf8.h"

namespace kimi::test {

inline std::string random_text(std::mt19937& rng, int atoms) {
  static const std::vector<std::string> kPieces = {
      "\r\n",
      "\r\r\n\n",
      "\n\n\n",
      "   ",
      "\t \t",
      "e\xCC\x81",
      "\xCC\x81\xCC\x88",
      "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7",  // family ZWJ
      "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",                                          // thumbs, tone
      "\xF0\x9F\x87\xAB\xF0\x9F\x87\xB7",                                          // flag FR
      "\xE2\x9D\xA4\xEF\xB8\x8F",
      "\xE4\xB8\xAD\xE6\x96\x87",
      "\xE3\x80\x81",  // 中文 、
      "\xE3\x80\x80",
      "\xC2\xA0",
      "\xE1\xA0\x8E",
      "<|im_end|>",
      "[BOS]",
      "<|im_",
      "Don't",
      "HELLO",
      "world",
      "12345",
      "x=1;",
      "'ll",
      "\xF0\x9D\x94\x98",  // 𝔘
  };
  std::string s;
  for (int i = 0; i < atoms; ++i) {
    const int kind = static_cast<int>(rng() % 10);
    if (kind < 3) {
      s += kPieces[rng() % kPieces.size()];
    } else if (kind < 6) {
      s += static_cast<char>(0x20 + rng() % 0x5F);  // printable ASCII
    } else {
      uint32_t cp;
      do {
        switch (rng() % 4) {
          case 0:
            cp = 0x80 + rng() % (0x800 - 0x80);
            break;  // two-byte
          case 1:
            cp = 0x800 + rng() % (0x10000 - 0x800);
            break;  // BMP
          case 2:
            cp = 0x10000 + rng() % 0x20000;
            break;  // planes 1-2
          default:
            cp = 0x30000 + rng() % (0x110000 - 0x30000);  // planes 3-16
        }
      } while (cp >= 0xD800 && cp < 0xE000);
      append_utf8(s, cp);
    }
  }
  return s;
}

}  // namespace kimi::test
