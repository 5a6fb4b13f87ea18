// The model's perplexity on a token stream, measured as llama.cpp's llama-perplexity does: the
// tokens in chunks of ctx, each chunk computed from an empty state in one step with every
// position's logits, and the second half of each chunk scored (the first half is its context):
// the negative log-probability of each next token under the model's distribution.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/model.h"

namespace kimi::bench {

struct PerplexityResult {
  int chunks = 0;
  int64_t scored = 0;     // next tokens scored
  double nll = 0;         // their mean negative log-probability (nats)
  double nll_stderr = 0;  // its standard error
  double perplexity = 0;  // exp(nll)
  double seconds = 0;     // in the model's steps
};

// model's cache must hold one sequence of ctx tokens in slot 0 (blocks 0..). Uses
// min(max_chunks, tokens / ctx) whole chunks (max_chunks <= 0: all); needs one at least, and
// ctx >= 4. on_chunk sees the figures so far after each chunk.
PerplexityResult perplexity(Model& model, const std::vector<int>& tokens, int ctx, int max_chunks,
                            const std::function<void(const PerplexityResult&)>& on_chunk = {});

}  // namespace kimi::bench
