// Any bytes through encode (with and without special tokens) and decode: valid UTF-8 round
// trips exactly; invalid UTF-8 is a clean kimi::Error.
#include <cstdlib>
#include <memory>
#include <string>

#include "core/check.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const kimi::Tokenizer tok = kimi::Tokenizer::load(std::string(KIMI_BINARY_DIR) + "/default-model");
  std::string text(reinterpret_cast<const char*>(data), size);
  for (bool special : {false, true}) {
    std::vector<int> ids;
    try {
      ids = tok.encode(text, special);
    } catch (const kimi::Error&) {
      continue;  // invalid UTF-8
    }
    if (!special && tok.decode(ids) != text) std::abort();
    // Streaming decode of the same ids gives the same text.
    kimi::StreamDecoder dec(tok);
    std::string streamed;
    for (int id : ids) streamed += dec.push(id);
    streamed += dec.flush();
    if (!special && streamed != text) std::abort();
  }
  return 0;
}
