// The engine API that server/ and tools/ use. submit() a request, read its events from the
// handle (blocking, thread-safe), cancel() it any time. One engine loop thread owns the model
// and runs continuous batching (src/runtime/).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "runtime/sampler.h"

namespace kimi {

class Tokenizer;
class JsonSchema;
struct ToolCallGrammar;

struct EngineOptions {
  std::string model_dir;              // required (tools pass their default)
  std::string backend = "cpu";        // "cpu" or "cuda"
  int max_num_seqs = 64;              // running sequences at once
  int max_num_batched_tokens = 2048;  // token budget per step (chunked prefill)
  int64_t max_model_len = 0;          // 0: the config's model_max_length, capped by memory
  int num_blocks = 0;                 // MLA cache blocks; 0: sized from memory
  double memory_fraction = 0.9;       // of free device memory for the caches (GPU)
  int64_t cpu_cache_bytes = int64_t(2) << 30;  // cache budget on the CPU backend
  int tensor_parallel_size = 1;
  bool enable_expert_parallel = false;  // routed experts split by expert over the TP GPUs
  std::string precision = "bf16";       // cuda activations: "bf16" or "high" (ModelOptions::precision)
  std::string kv_cache_dtype = "auto";  // MLA latent cache: "auto" (bf16), "bf16" or "fp8"
  // Prefix caching (vLLM's --enable-prefix-caching, runtime/prefix_cache.h): a request whose
  // prompt extends an earlier prompt (multi-turn chat) starts from that prompt's KDA state and
  // MLA blocks. Each cached prompt keeps a copy of the KDA state in a slot of its own.
  bool enable_prefix_caching = true;
  int prefix_cache_slots = 0;  // cached prompts at most; 0: max_num_seqs
  // Waiting queue order and preemption choice (vLLM's --scheduling-policy, runtime/scheduler.h):
  // "fcfs" (by arrival) or "priority" (by Request::priority, then arrival).
  std::string scheduling_policy = "fcfs";
};

// What the text must be: free text, one JSON object (JSON mode, response_format json_object) or
// one JSON document valid against Request::json_schema (structured outputs, json_schema),
// enforced by masking the tokens that would break it (runtime/json_token_mask.h).
enum class ResponseFormat { kText, kJsonObject, kJsonSchema };

enum class FinishReason { kNone, kStop, kLength, kToolCalls, kCancelled, kError };
const char* finish_reason_name(FinishReason r);  // "stop", "length", ...

struct TokenLogprob {
  int id = 0;
  float logprob = 0.f;
  int rank = 1;  // of id among the vocabulary by logprob (1: the best; ties: lower ids first)
  std::vector<std::pair<int, float>> top;  // top_logprobs alternatives, best first
};

struct Request {
  std::vector<int> prompt_ids;
  SamplingParams sampling;
  bool seed_given = false;            // otherwise the engine draws sampling.seed
  int max_tokens = 16;                // < 0: up to the context length
  bool ignore_eos = false;
  // EOS, stop_token_ids and stop strings take effect only once this many tokens are generated
  // (vLLM's min_tokens: the EOS and stop ids cannot be drawn before; stop strings are matched
  // from there on).
  int min_tokens = 0;
  std::vector<std::string> stop;      // stop strings, matched on the decoded text
  std::vector<int> stop_token_ids;    // besides the model's eos ids
  bool include_stop_str_in_output = false;
  bool skip_special_tokens = true;    // in the text deltas
  int n = 1;                          // samples sharing the prompt's prefill
  int logprobs = -1;                  // -1: none; k >= 0: the chosen token's plus top k
  // -1: none; k >= 0: each prompt token's logprob given the tokens before it (from the second
  // token on) plus the top k (vLLM's prompt_logprobs; the completions echo with logprobs). Such a
  // prompt is computed whole: the prefix cache is not asked for it.
  int prompt_logprobs = -1;
  ResponseFormat response_format = ResponseFormat::kText;
  std::shared_ptr<const JsonSchema> json_schema;  // kJsonSchema: compile_json_schema()'s
  // tool_choice required / named: the answer, which the prompt starts inside a Kimi tool call,
  // is masked to whole tool calls with valid arguments, then EOS (runtime/tool_call_matcher.h).
  // Only with the text format; like it, refuses ignore_eos and min_tokens.
  std::shared_ptr<const ToolCallGrammar> tool_calls;
  // > 0: the first cache_point prompt tokens are worth a prefix-cache entry of their own (a chat's
  // system prompt and tool declarations, which other requests share): with prefix caching on, the
  // prefill stops there once and saves the state. 0 <= cache_point < the prompt's length.
  int cache_point = 0;
  // Under the priority policy, lower values are admitted first and preempted last (ties by
  // arrival); ignored under fcfs, as in vLLM.
  int64_t priority = 0;
  // Tests: draw this request's tokens on the host sampler (runtime/sampler.h) even where the
  // backend draws on the device: the reference that device sampling is checked against.
  bool host_sampling = false;
};

struct GenerationEvent {
  int index = 0;                      // which of the n samples
  std::vector<int> token_ids;         // new tokens
  std::string text;                   // new text (whole UTF-8 characters, stop-aware)
  std::vector<TokenLogprob> logprobs; // one per new token, when asked
  // With Request::prompt_logprobs, once, in an event of its own (index 0, no tokens) before the
  // first token's: the logprobs of prompt tokens 1..P-1.
  std::optional<std::vector<TokenLogprob>> prompt_logprobs;
  FinishReason finish = FinishReason::kNone;
  std::string stop_reason;            // the stop string that ended it
  int stop_token = -1;                // or the stop token (-1: none, or the tokenizer's eos)
  std::string error;                  // for kError
};

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;  // prompt tokens taken from the prefix cache
};

// Events of one request, in order. The engine pushes; the client pops.
class RequestHandle {
 public:
  explicit RequestHandle(uint64_t id, int n) : id_(id), open_(n) {}
  uint64_t id() const { return id_; }
  // Waits for the next event; nullopt once every sample has finished and all events were read,
  // or when the timeout passes (check done()).
  std::optional<GenerationEvent> next(std::chrono::milliseconds timeout = std::chrono::hours(24));
  bool done() const;
  Usage usage() const;
  // Engine side.
  void push(GenerationEvent ev);
  void add_usage(int prompt, int completion, int cached = 0);

 private:
  const uint64_t id_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<GenerationEvent> events_;
  int open_;  // samples not yet finished
  Usage usage_;
};

// Cumulative histogram as Prometheus exposes it: counts[i] = observations <= bounds[i]
// (non-cumulative per bucket here; the exporter accumulates), plus the +Inf bucket, sum, count.
struct Histogram {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // bounds.size() + 1 (the last is +Inf)
  double sum = 0;
  uint64_t count = 0;

  explicit Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}
  void observe(double v);
  static Histogram ttft_buckets();
  static Histogram tpot_buckets();
  static Histogram e2e_buckets();
  static Histogram iteration_tokens_buckets();  // vLLM's 1, 8, 16, ..., 16384
};

struct EngineMetrics {
  int num_running = 0;
  int num_waiting = 0;
  double cache_usage = 0;  // fraction of MLA blocks in use
  int free_blocks = 0, total_blocks = 0;
  int free_slots = 0, total_slots = 0;
  uint64_t prompt_tokens_total = 0;
  uint64_t generation_tokens_total = 0;
  uint64_t requests_finished_total = 0;
  uint64_t preemptions_total = 0;
  // Prefix cache, in prompt tokens: looked up at admission / found there (vLLM's counters).
  uint64_t prefix_cache_queries_total = 0;
  uint64_t prefix_cache_hits_total = 0;
  // Latency histograms in seconds, with vLLM's bucket bounds (bounded memory on long runs).
  Histogram ttft = Histogram::ttft_buckets();
  Histogram tpot = Histogram::tpot_buckets();  // per request: (e2e - ttft) / (generated - 1)
  Histogram itl = Histogram::tpot_buckets();   // per token after a sequence's first: the gap
  Histogram e2e = Histogram::e2e_buckets();
  Histogram queue = Histogram::e2e_buckets();  // arrival to first scheduled, once per request
  // Per sample with a token, from its first scheduling (a preempted one keeps it; forked samples
  // take the leader's): to its first token / first to last token / to its last token (vLLM's
  // prefill, decode and inference times).
  Histogram prefill = Histogram::e2e_buckets();
  Histogram decode = Histogram::e2e_buckets();
  Histogram inference = Histogram::e2e_buckets();
  // Tokens in each engine step's batch: prefill chunks plus decode inputs.
  Histogram iteration_tokens = Histogram::iteration_tokens_buckets();
  // The cache configuration (vLLM's cache_config_info labels).
  int block_size = 0;
  std::string cache_dtype = "auto";
  bool prefix_caching = false;
};

class Engine {
 public:
  virtual ~Engine() = default;
  static std::unique_ptr<Engine> create(const EngineOptions& opts);

  // Throws kimi::Error with a message for the client when the request is invalid (prompt over
  // the context length, bad sampling parameters, ...). Thread-safe.
  virtual std::shared_ptr<RequestHandle> submit(Request req) = 0;
  // The request finishes with kCancelled by the next step; its blocks and slot are freed.
  virtual void cancel(uint64_t request_id) = 0;
  virtual const ModelConfig& config() const = 0;
  virtual const Tokenizer* tokenizer() const = 0;  // nullptr when the model has none
  virtual int64_t max_model_len() const = 0;
  virtual EngineMetrics metrics() const = 0;
  // Stops accepting; lets in-flight requests finish for up to `grace`, then cancels the rest.
  virtual void shutdown(std::chrono::milliseconds grace) = 0;
};

}  // namespace kimi
