#include "bench/perplexity.h"

#include <chrono>
#include <cmath>

#include "core/check.h"
#include "runtime/sampler.h"

namespace kimi::bench {

PerplexityResult perplexity(Model& model, const std::vector<int>& tokens, int ctx, int max_chunks,
                            const std::function<void(const PerplexityResult&)>& on_chunk) {
  if (ctx < 4) fail("perplexity: the chunk length must be at least 4 tokens, got ", ctx);
  const int whole = int(tokens.size() / size_t(ctx));
  if (whole < 1)
    fail("perplexity: the text has ", tokens.size(), " tokens, fewer than one chunk of ", ctx);
  const int chunks = max_chunks > 0 ? std::min(max_chunks, whole) : whole;
  const int V = model.config().vocab_size;
  for (int t : tokens)
    if (t < 0 || t >= V) fail("perplexity: token ", t, " is outside the vocabulary 0..", V - 1);
  std::vector<int> blocks(size_t((ctx + kBlockSize - 1) / kBlockSize));
  for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = int(i);
  PerplexityResult r;
  double sum = 0, sum_sq = 0;
  std::vector<float> logits;
  for (int c = 0; c < chunks; ++c) {
    const std::vector<int> chunk(tokens.begin() + int64_t(c) * ctx,
                                 tokens.begin() + int64_t(c + 1) * ctx);
    model.reset_slot(0);
    Batch b;
    b.add(chunk, ctx, 0, blocks);
    b.all_logits = true;
    const auto t0 = std::chrono::steady_clock::now();
    model.forward(b, logits);
    r.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (int i = ctx / 2; i < ctx - 1; ++i) {  // row i gives token i + 1
      const float* row = logits.data() + size_t(i) * V;
      const double nll = log_sum_exp({row, size_t(V)}) - row[chunk[size_t(i) + 1]];
      sum += nll;
      sum_sq += nll * nll;
      ++r.scored;
    }
    r.chunks = c + 1;
    r.nll = sum / double(r.scored);
    const double var = std::max(0.0, sum_sq / double(r.scored) - r.nll * r.nll);
    r.nll_stderr = r.scored > 1 ? std::sqrt(var / double(r.scored - 1)) : 0;
    r.perplexity = std::exp(r.nll);
    if (on_chunk) on_chunk(r);
  }
  return r;
}

}  // namespace kimi::bench
