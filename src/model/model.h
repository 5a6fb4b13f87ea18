// The model as the runtime sees it: one forward step over a batch of sequences, each continuing
// from its cached state. A backend (CPU, CUDA) owns the weights and the cache pools:
//   - KDA state slots: recurrent [H, 128, 128] fp32 + conv state, per KDA layer, per slot;
//   - MLA latent blocks: kMlaBlockSize tokens × 576 values per MLA layer, per block.
// The runtime decides which slot and blocks each sequence uses (src/runtime/).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"

namespace kimi {

constexpr int kBlockSize = 64;  // tokens per MLA cache block

struct Batch {
  std::vector<int> tokens;        // [T] new tokens, sequence after sequence
  std::vector<int> cu_seqlens;    // [S + 1] offsets of each sequence's tokens
  std::vector<int> context_lens;  // [S] cached tokens after this step (new ones included)
  std::vector<int> slots;         // [S] KDA state slot of each sequence
  std::vector<int> block_tables;  // [S, max_blocks_per_seq] MLA cache blocks, in order
  int max_blocks_per_seq = 0;
  bool all_logits = false;        // logits for every token; otherwise the last of each sequence
  // Optional, [S]: 1 gives that sequence's every token a logits row (prompt logprobs), not only
  // its last.
  std::vector<uint8_t> seq_all_logits;

  int num_seqs() const { return int(cu_seqlens.size()) - 1; }
  int num_tokens() const { return int(tokens.size()); }
  // Rows of the logits output, in token order: T with all_logits, else per sequence its last
  // token, or all of them where seq_all_logits says so.
  int num_logit_rows() const;
  // The token (index into tokens) of each logits row.
  std::vector<int> logit_token_rows() const;
  // Sequence s's first token with a logits row (its rows run to its last token).
  int first_logit_token(int s) const;
  // Appends a sequence; checks the sizes (the runtime's and tests' one way to build a batch).
  void add(const std::vector<int>& new_tokens, int context_len, int slot,
           const std::vector<int>& blocks);
};

struct CacheSizes {
  int num_slots = 1;   // KDA state slots
  int num_blocks = 1;  // MLA cache blocks
};

// Sampling on the device (Model::forward_sampled): per logits row, the draw of
// src/runtime/sampler.h sample_with_u after the row's adjustments (append_logit_adjustments).
struct LogitAdjust {  // l' = rep(l + bias) + post,  rep(x) = x > 0 ? x / rep : x * rep
  int id = 0;
  float bias = 0.f;  // logit_bias
  float rep = 1.f;   // repetition_penalty when the token is in the prompt or the output, else 1
  float post = 0.f;  // -presence_frequency_offset(count) for generated tokens
};
struct RowDraw {
  float temperature = 1.f;  // < 1e-5: greedy
  int top_k = 0;
  float top_p = 1.f;
  float min_p = 0.f;
  double u = 0.0;                        // uniform_from(seed, step)
  int adjust_begin = 0, adjust_end = 0;  // this row's entries of DrawBatch::adjust
  // The row is drawn on the host (an n > 1 fork, JSON mode, forced tool calls): its logits come
  // back (forward_sampled's host_logits) and its device draw is meaningless.
  bool host = false;
  // logprobs >= 0: the row's RowLogprobs with that many alternatives (<= kMaxTopLogprobs), of
  // token logprob_token (a prompt token), or of the token drawn when logprob_token < 0.
  int logprobs = -1;
  int logprob_token = -1;
};
// Log-probabilities of one token under a raw logits row (before any adjustment: the model's
// distribution, vLLM's default), as the host's row_logprobs (runtime/sampler.h) defines them and
// the GPU computes them (kernels/sampling/logprobs.h LogprobRecord, the same layout).
constexpr int kMaxTopLogprobs = 20;
struct RowLogprobs {
  int token = 0;
  int rank = 1;  // 1 + the ids with a higher logprob, or an equal one and a lower id
  float logprob = 0.f;
  int num_top = 0;  // min(logprobs, vocab) alternatives, best first (ties: lower ids first)
  int top_id[kMaxTopLogprobs] = {};
  float top_logprob[kMaxTopLogprobs] = {};
};
// A row's logprob request is one forward_sampled accepts: none, or k in 0..kMaxTopLogprobs with a
// token in [0, vocab) or, on a row drawn on the device, the drawn token.
inline bool valid_logprob_request(const RowDraw& d, int vocab) {
  if (d.logprobs < 0) return true;
  return d.logprobs <= kMaxTopLogprobs && d.logprob_token < vocab &&
         (d.logprob_token >= 0 || !d.host);
}
struct DrawBatch {
  std::vector<RowDraw> rows;  // one per logits row of the step
  std::vector<LogitAdjust> adjust;
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  virtual CacheSizes cache_sizes() const = 0;
  // Runs one step; logits is resized to [num_logit_rows, vocab].
  virtual void forward(const Batch& batch, std::vector<float>& logits) = 0;
  // Runs one step and draws a token per logits row on the device (the logits stay there):
  // tokens is resized to [num_logit_rows]; the logits of the rows marked `host` are copied into
  // host_logits, [rows marked, vocab] in row order; logprobs gets the RowLogprobs of the rows
  // with RowDraw::logprobs >= 0, in row order. Returns false, running nothing, when the backend
  // samples only on the host (the caller then uses forward and the host's functions,
  // runtime/sampler.h draw_on_host).
  virtual bool forward_sampled(const Batch& batch, const DrawBatch& draws, std::vector<int>& tokens,
                               std::vector<float>& host_logits,
                               std::vector<RowLogprobs>& logprobs) {
    (void)batch, (void)draws, (void)tokens, (void)host_logits, (void)logprobs;
    return false;
  }
  // Whether forward_sampled serves steps with a logits row per token (prompt logprobs) of any
  // length on the device, keeping the rows there: then the engine need not cut such prompts into
  // short chunks to bound the rows coming to the host.
  virtual bool keeps_logit_rows() const { return false; }
  // Zeroes a slot's KDA state (a new sequence starts from zero state).
  virtual void reset_slot(int slot) = 0;
  // Copies a slot's KDA state (n > 1 samples share one prompt prefill).
  virtual void copy_slot(int src, int dst) = 0;
  // Copies one MLA cache block in every MLA layer (copy-on-write of a shared partial block).
  virtual void copy_block(int src, int dst) = 0;
  // Debug hook: called with the residual stream [T, hidden] after each layer.
  std::function<void(int layer, const float* x, int num_tokens)> on_layer_output;
};

// Activation precision of the CUDA backend (docs/precision.md). kBf16: bf16 GEMM inputs and KDA
// operands (the fast default, as in bf16 serving). kHigh: the large rounding points kept to ~16
// bits: GEMM inputs split into bf16 hi + lo halves (two passes over the same weights, fp32
// accumulation), KDA in fp32 end to end (the token-recurrent scan); ~7x less noise on the
// expert-selection gaps, slower. The CPU backend computes in fp32 whatever this says.
enum class Precision { kBf16, kHigh };
// "bf16" / "high" (the --precision values); anything else is refused.
Precision parse_precision(const std::string& name);
const char* precision_name(Precision p);

// MLA latent cache storage (vLLM's --kv-cache-dtype; docs/precision.md). kBf16: ĉ | k_pe in bf16
// on CUDA (1152 bytes per token and MLA layer), unquantised fp32 on the CPU. kFp8: ĉ as e4m3
// with one power-of-two scale per 128 values, k_pe still bf16 (656 bytes on CUDA: 0.57x, so
// 1.76x the tokens fit; decode reads 0.57x the bytes but is not faster yet, perf-log session 7);
// the CPU stores the same fp8 round trip in fp32.
enum class KvCacheDtype { kBf16, kFp8 };
// "auto" (= bf16) / "bf16" / "fp8" (the --kv-cache-dtype values); anything else is refused.
KvCacheDtype parse_kv_cache_dtype(const std::string& name);
const char* kv_cache_dtype_name(KvCacheDtype d);
// One token of one MLA layer in the CUDA fp8 cache: ĉ as e4m3 | k_pe in bf16 | one fp32 scale
// per 128 values of ĉ (kernels/mla/mla.h's kMlaFp8Row, which must equal it).
constexpr int kMlaFp8RowBytes = kMlaLatentDim + 2 * kMlaRopeDim + 4 * (kMlaLatentDim / 128);

struct ModelOptions {
  std::string backend = "cpu";  // "cpu" or "cuda"
  Precision precision = Precision::kBf16;
  KvCacheDtype kv_cache_dtype = KvCacheDtype::kBf16;
  CacheSizes cache;
  // CUDA: most tokens one forward may carry; the activation arena is sized for it at start-up.
  int max_batch_tokens = 4096;
  // CUDA: draw the weights on the GPU from config.json alone (no safetensors needed), seeded.
  bool random_weights = false;
  uint64_t seed = 1;
  // With random_weights: keep only the first num_layers layers of the config (0: all), so the
  // full-size shapes can be measured on a GPU too small for all 27 layers.
  int num_layers = 0;
  // CUDA: GPUs the model is split over (tensor parallelism, model/tensor_parallel.h): 1, 2, 4, 8.
  int tensor_parallel = 1;
  // CUDA, tensor_parallel > 1: split the routed experts by expert (each GPU holds E/N whole
  // experts) instead of by their intermediate dimension (vLLM's --enable-expert-parallel).
  bool expert_parallel = false;
};

// One KDA slot (recurrent + conv state over all KDA layers) and one token of the MLA latent cache
// (all MLA layers), in bytes, as opts.backend stores them: fp32 throughout on the CPU (the fp8
// round trip too); on CUDA the recurrent state in fp32, the conv state in the projections'
// precision (bf16; fp32 with Precision::kHigh) and the latent cache in bf16 (1152 bytes per token
// and layer) or fp8 (kMlaFp8RowBytes = 656). From the config alone: what the backends size their
// caches by, and what kimi-bench counts.
struct CacheEntryBytes {
  int64_t slot = 0, mla_token = 0;
};
CacheEntryBytes cache_entry_bytes(const ModelConfig& config, const ModelOptions& opts);

// What the caches may take on each device, and what one KDA slot and one MLA block cost there.
// CPU: cpu_budget_bytes (fp32 caches). CUDA: memory_fraction of each GPU's total memory, less
// what others use there now, the weights, the activation arena and a reserve; the smallest over
// the tensor-parallel ranks (each holds its heads' KDA state and the whole latent cache).
struct CacheBudget {
  int64_t slot_bytes = 0, block_bytes = 0, budget_bytes = 0;
  std::string how;  // the budget's derivation, for messages
};
CacheBudget cache_budget(const ModelConfig& config, const ModelOptions& opts,
                         double memory_fraction, int64_t cpu_budget_bytes);

// "cuda" when this build has the CUDA backend and a GPU is visible, else "cpu" (what --backend
// auto means).
std::string default_backend();

// Reads config.json and the safetensors from dir, validates everything, builds the backend.
std::unique_ptr<Model> load_model(const std::string& dir, const ModelOptions& opts);

}  // namespace kimi
