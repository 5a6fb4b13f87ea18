// A small byte-level BPE trainer for the tiny default model's tokenizer (kimi-make-tiny).
// Base tokens 0..255 are the single bytes in byte order; each merge then adds the most frequent
// adjacent pair of tokens inside the Kimi pre-tokenizer's pieces (ties: the pair with the
// smaller (left id, right id)). Deterministic: same corpus and count, same vocabulary.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kimi {

// The embedded mixed-language training corpus (English, Chinese, Japanese, code, digits, emoji).
std::string_view tiny_training_corpus();

// Returns tokens[rank] = bytes: 256 single bytes followed by num_merges merged tokens.
// Throws kimi::Error if the corpus has fewer than num_merges possible merges.
std::vector<std::string> train_bpe(std::string_view corpus, int num_merges);

// Trains on tiny_training_corpus() and writes DIR/tiktoken.model and DIR/tokenizer_config.json
// with the Kimi special-token layout from id 256 + num_merges on. Creates DIR if needed.
void write_trained_tokenizer(const std::string& dir, int num_merges);

}  // namespace kimi
