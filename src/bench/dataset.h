// Benchmark prompts, built like vLLM's datasets (serving.md §3.4) from fixed seeds:
//   random:   input/output lengths uniform in [len·(1−r), len·(1+r)], optional shared random
//             prefix; with a tokenizer the prompt is a run of consecutive base-token ids
//             ((offset + i + k) mod vocab), decoded to text and re-encoded to hit the length
//             exactly; without one it is random English words, one per intended token (the
//             server's usage.prompt_tokens then gives the real count).
//   sharegpt: a ShareGPT JSON file; conversations with >= 2 turns, shuffled by the seed; turn 0 is
//             the prompt, turn 1's token count the output length (unless --output-len); pairs with
//             prompt < 4 or output < 4 tokens, prompt > 1024 or prompt + output > 2048 are dropped.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kimi {
class Tokenizer;
}

namespace kimi::bench {

struct SampleRequest {
  std::string prompt;
  int prompt_len = 0;  // tokens: exact with a tokenizer, an estimate without
  bool prompt_len_exact = false;
  int expected_output_len = 0;
};

struct RandomDatasetOptions {
  int num_prompts = 0;
  int input_len = 1024;
  int output_len = 128;
  double range_ratio = 0;
  int prefix_len = 0;
  uint64_t seed = 0;
};

// tok may be null (random words).
std::vector<SampleRequest> random_dataset(const RandomDatasetOptions& o, const Tokenizer* tok);

struct ShareGptOptions {
  std::string path;
  int num_prompts = 0;
  std::optional<int> output_len;  // overrides the reference completion length
  uint64_t seed = 0;
};

// Token counts come from tok when given, else from a whitespace word count (an estimate; a
// warning says so).
std::vector<SampleRequest> sharegpt_dataset(const ShareGptOptions& o, const Tokenizer* tok);

// Same text → same estimate: words separated by whitespace.
int estimate_tokens(const std::string& text);

// Tokens in text by tok (invalid UTF-8 repaired first, no special tokens); 0 without tok.
// Counts generated text when a server sends no usage (vLLM re-tokenizes too).
int count_tokens(const std::string& text, const Tokenizer* tok);

}  // namespace kimi::bench
