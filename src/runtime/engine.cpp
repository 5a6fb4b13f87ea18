// The engine loop: one thread owns the model; each step it applies cancellations, asks the
// scheduler for a batch, runs one forward, samples, and pushes events to the request handles.
#include "kimi/engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <list>
#include <map>
#include <numeric>
#include <random>
#include <thread>
#include <unordered_set>

#include "core/check.h"
#include "core/log.h"
#include "model/model.h"
#include "runtime/json_token_mask.h"
#include "runtime/pools.h"
#include "runtime/prefix_cache.h"
#include "runtime/sampler.h"
#include "runtime/scheduler.h"
#include "runtime/sequence.h"

namespace kimi {
namespace {

using Clock = std::chrono::steady_clock;

double secs(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Prompt tokens a sequence with prompt logprobs computes per step where each is a logits row (V
// floats) that comes to the host (a backend that samples there, tensor parallelism). Where the
// model keeps the rows on the device (Model::keeps_logit_rows) only the step's token budget
// bounds the chunk: steps of 256 tokens ran a 4k prompt ~10x slower than one step (the experts'
// weights are read once a step).
constexpr int kPromptLogprobsChunk = 256;

// The API's form of a logprob record (runtime/sampler.h row_logprobs, or the GPU's).
TokenLogprob token_logprob(const RowLogprobs& r) {
  TokenLogprob t;
  t.id = r.token;
  t.logprob = r.logprob;
  t.rank = r.rank;
  for (int j = 0; j < r.num_top; ++j) t.top.push_back({r.top_id[j], r.top_logprob[j]});
  return t;
}

// What orders s in the waiting queue (queues_before).
SchedSeq queue_key(const Sequence& s) {
  SchedSeq k;
  k.priority = s.req->req.priority;
  k.arrival = s.order;
  return k;
}

class EngineImpl final : public Engine {
 public:
  explicit EngineImpl(const EngineOptions& opts);
  ~EngineImpl() override { stop_loop(); }

  std::shared_ptr<RequestHandle> submit(Request req) override;
  void cancel(uint64_t id) override;
  const ModelConfig& config() const override { return model_->config(); }
  const Tokenizer* tokenizer() const override { return tokenizer_.get(); }
  int64_t max_model_len() const override { return max_model_len_; }
  EngineMetrics metrics() const override;
  void shutdown(std::chrono::milliseconds grace) override;

 private:
  void loop();
  void step();
  void stop_loop();
  void admit_incoming();
  // Where s goes in waiting_: behind every sequence that queues before it under the policy.
  std::list<std::unique_ptr<Sequence>>::iterator waiting_place(const Sequence& s);
  void apply_cancellations();
  void free_seq(Sequence& s);
  void finish_seq(Sequence& s, FinishReason r, const std::string& why = {});
  void fork_samples(Sequence& leader, const float* logits);
  // Prefix cache: an admitted sequence starts from the longest cached entry its tokens extend
  // (its full blocks shared; the caller copies the state and the partial block); a sequence
  // leaves a copy of its state and blocks when its prompt has just been computed and when it
  // finishes (prompt and answer: the next turn of a chat extends them).
  void start_from_prefix(Sequence& s, int entry);
  void cache_computed(Sequence& s);
  int free_or_reclaimable_blocks() const;
  void sample_and_emit(Sequence& s, const float* logits);
  void emit(Sequence& s, int tok, GenerationEvent ev);
  // The ids the next draw of s may not take: EOS and stop ids while min_tokens holds them back.
  std::vector<int> held_back_ids(const Sequence& s) const;
  void fail_all(const std::string& why);
  void publish_metrics();
  void observe_finished(const Sequence& s, Clock::time_point now);

  EngineOptions opts_;
  SchedulingPolicy policy_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<JsonTokenMask> json_mask_;  // made on the first JSON-mode request
  int64_t max_model_len_ = 0;
  std::vector<int> eos_ids_;
  int tokenizer_eos_ = -1;  // the tokenizer's eos_token: a stop on it has no stop_reason (vLLM)

  // Shared with submitters, under mu_.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<RequestState>> incoming_;
  std::unordered_set<uint64_t> cancel_ids_;
  bool accepting_ = true, stop_ = false;
  uint64_t next_id_ = 1;
  EngineMetrics metrics_;

  // Owned by the loop thread.
  BlockPool blocks_;
  SlotPool slots_;
  std::optional<PrefixCache> prefix_;  // with enable_prefix_caching
  std::list<std::unique_ptr<Sequence>> waiting_, running_;  // waiting_ in queue order
  uint64_t next_order_ = 0;
  std::vector<float> logits_;      // the host rows' logits (forward_sampled)
  std::vector<float> all_logits_;  // every row, when the backend samples on the host
  std::thread thread_;
};

int prefix_cache_slots(const EngineOptions& o) {
  if (!o.enable_prefix_caching) return 0;
  return o.prefix_cache_slots > 0 ? o.prefix_cache_slots : o.max_num_seqs;
}

CacheSizes size_caches(const ModelConfig& c, const EngineOptions& o, const ModelOptions& mo,
                       int64_t* max_len) {
  CacheSizes cs;
  cs.num_slots = o.max_num_seqs + prefix_cache_slots(o);
  int64_t want_len = o.max_model_len > 0 ? o.max_model_len : c.model_max_length;
  if (o.num_blocks > 0) {
    cs.num_blocks = o.num_blocks;
  } else {
    ModelOptions probe = mo;
    probe.cache = cs;
    const CacheBudget b = cache_budget(c, probe, o.memory_fraction, o.cpu_cache_bytes);
    const int64_t avail = b.budget_bytes - b.slot_bytes * cs.num_slots;
    if (avail < b.block_bytes)
      fail("the cache budget (", b.budget_bytes >> 20, " MiB: ", b.how,
           ") cannot hold the KDA state of ", o.max_num_seqs, " sequences and ", prefix_cache_slots(o),
           " cached prompts (", (b.slot_bytes * cs.num_slots) >> 20,
           " MiB) and one cache block: lower --max-num-seqs or --prefix-cache-slots",
           mo.backend == "cuda" ? ", raise --gpu-memory-utilization or use more GPUs" : " or raise the budget");
    // Never more than every sequence at full length needs.
    int64_t cap = int64_t(cs.num_slots) * blocks_for_tokens(int(std::min<int64_t>(want_len, 1 << 30)), kBlockSize);
    cs.num_blocks = int(std::min<int64_t>({avail / b.block_bytes, cap, int64_t(1) << 30}));
  }
  *max_len = std::min<int64_t>(want_len, int64_t(cs.num_blocks) * kBlockSize);
  if (o.max_model_len > 0 && *max_len < o.max_model_len)
    fail("max_model_len ", o.max_model_len, " needs ", blocks_for_tokens(int(o.max_model_len), kBlockSize),
         " cache blocks but only ", cs.num_blocks, " fit: lower max_model_len or raise the cache budget");
  return cs;
}

EngineImpl::EngineImpl(const EngineOptions& opts)
    : opts_(opts), policy_(parse_scheduling_policy(opts.scheduling_policy)), blocks_(1), slots_(1) {
  const std::string& dir = opts.model_dir;
  if (dir.empty()) fail("no model directory given");
  KIMI_CHECK(opts.max_num_seqs >= 1 && opts.max_num_seqs <= 4096, "max_num_seqs must be in 1..4096");
  KIMI_CHECK(opts.prefix_cache_slots >= 0 && opts.prefix_cache_slots <= 4096,
             "prefix_cache_slots must be in 0..4096");
  KIMI_CHECK(opts.max_num_batched_tokens >= 1, "max_num_batched_tokens must be positive");
  ModelConfig cfg = ModelConfig::from_file(dir + "/config.json");
  ModelOptions mo;
  mo.backend = opts.backend;
  mo.tensor_parallel = opts.tensor_parallel_size;
  mo.expert_parallel = opts.enable_expert_parallel;
  mo.precision = parse_precision(opts.precision);
  mo.kv_cache_dtype = parse_kv_cache_dtype(opts.kv_cache_dtype);
  // CUDA: the activation arena holds one step of the scheduler's token budget.
  mo.max_batch_tokens = std::max(opts.max_num_batched_tokens, opts.max_num_seqs);
  mo.cache = size_caches(cfg, opts, mo, &max_model_len_);
  model_ = load_model(dir, mo);
  blocks_ = BlockPool(mo.cache.num_blocks);
  // Slots 0 .. max_num_seqs - 1 run sequences; the rest hold the prefix cache's states.
  slots_ = SlotPool(opts.max_num_seqs);
  if (const int n = prefix_cache_slots(opts); n > 0) {
    KIMI_CHECK(mo.cache.num_slots == opts.max_num_seqs + n);
    std::vector<int> reserved;
    for (int i = 0; i < n; ++i) reserved.push_back(opts.max_num_seqs + i);
    prefix_.emplace(std::move(reserved), blocks_);
  }
  tokenizer_ = load_tokenizer_if_present(dir);
  eos_ids_ = cfg.eos_token_ids;
  if (tokenizer_) tokenizer_eos_ = tokenizer_->eos_id();
  if (tokenizer_)
    for (int id : tokenizer_->stop_ids())
      if (std::find(eos_ids_.begin(), eos_ids_.end(), id) == eos_ids_.end()) eos_ids_.push_back(id);
  metrics_.total_blocks = mo.cache.num_blocks;
  metrics_.total_slots = opts.max_num_seqs;
  metrics_.block_size = kBlockSize;
  metrics_.cache_dtype = opts.kv_cache_dtype;
  metrics_.prefix_caching = opts.enable_prefix_caching;
  spdlog::info(
      "engine: model {} ({} layers), {} KDA slots ({} for cached prompts), {} cache blocks "
      "({} MLA cache), max_model_len {}",
      dir, cfg.num_hidden_layers, mo.cache.num_slots, prefix_cache_slots(opts), mo.cache.num_blocks,
      kv_cache_dtype_name(mo.kv_cache_dtype), max_model_len_);
  thread_ = std::thread([this] { loop(); });
}

std::shared_ptr<RequestHandle> EngineImpl::submit(Request req) {
  const int V = model_->config().vocab_size;
  const int P = int(req.prompt_ids.size());
  if (P == 0) fail("the prompt is empty");
  for (int id : req.prompt_ids)
    if (id < 0 || id >= V) fail("prompt token ", id, " is outside the vocabulary 0..", V - 1);
  if (P >= max_model_len_)
    fail("This model's maximum context length is ", max_model_len_, " tokens. However, you requested ",
         P, " tokens in the prompt (", P, " in the messages, 0 in the completion). Please reduce the length of the messages.");
  if (req.max_tokens < 0) req.max_tokens = int(max_model_len_ - P);
  if (P + int64_t(req.max_tokens) > max_model_len_)
    fail("This model's maximum context length is ", max_model_len_, " tokens. However, you requested ",
         P + int64_t(req.max_tokens), " tokens (", P, " in the messages, ", req.max_tokens,
         " in the completion). Please reduce the length of the messages or completion.");
  if (req.n < 1 || req.n > 128) fail("n must be in 1..128");
  if (req.n > opts_.max_num_seqs) fail("n (", req.n, ") exceeds max_num_seqs (", opts_.max_num_seqs, ")");
  if (req.logprobs > 20) fail("logprobs/top_logprobs must be at most 20");
  if (req.prompt_logprobs > 20) fail("prompt_logprobs must be at most 20");
  std::string bad = req.sampling.validate(V);
  if (!bad.empty()) fail(bad);
  for (int id : req.stop_token_ids)
    if (id < 0 || id >= V) fail("stop_token_ids names token ", id, ", outside the vocabulary");
  if (req.min_tokens < 0) fail("min_tokens must be greater than or equal to 0, got ", req.min_tokens);
  if (req.max_tokens >= 0 && req.min_tokens > req.max_tokens)
    fail("min_tokens must be less than or equal to max_tokens=", req.max_tokens, ", got ", req.min_tokens);
  if (!req.stop.empty() && !tokenizer_) fail("stop strings need the model's tokenizer, which is absent");
  if (req.cache_point < 0 || req.cache_point >= P)
    fail("cache_point must be in 0..", P - 1, " (the prompt's length less one), got ", req.cache_point);
  if (req.response_format != ResponseFormat::kText) {
    // The document ends with EOS, which these would hold back or ignore.
    const char* format = req.response_format == ResponseFormat::kJsonObject ? "json_object" : "json_schema";
    if (!tokenizer_) fail("response_format ", format, " needs the model's tokenizer, which is absent");
    if (req.ignore_eos) fail("ignore_eos cannot be combined with response_format ", format);
    if (req.min_tokens > 0) fail("min_tokens cannot be combined with response_format ", format);
    if ((req.response_format == ResponseFormat::kJsonSchema) != bool(req.json_schema))
      fail("json_schema is given exactly with response_format json_schema");
  }
  std::optional<ToolCallMarkers> tool_markers;
  if (req.tool_calls) {
    // The calls end the answer with EOS, and their own format excludes any other.
    if (!tokenizer_) fail("tool_choice required / named needs the model's tokenizer");
    tool_markers = ToolCallMarkers::of(*tokenizer_);
    if (!tool_markers) fail("tool_choice required / named: the tokenizer lacks the tool-call markers");
    if (req.response_format != ResponseFormat::kText)
      fail("tool_choice required / named cannot be combined with a response format");
    if (req.ignore_eos) fail("ignore_eos cannot be combined with tool_choice required / named");
    if (req.min_tokens > 0) fail("min_tokens cannot be combined with tool_choice required / named");
  }
  for (auto& s : req.stop)
    if (s.empty()) fail("stop strings must not be empty");
  if (!req.seed_given) req.sampling.seed = std::random_device{}() * 0x100000001ull + std::random_device{}();

  std::lock_guard lk(mu_);
  if (!accepting_) fail("the server is shutting down");
  auto st = std::make_shared<RequestState>();
  st->handle = std::make_shared<RequestHandle>(next_id_++, req.n);
  st->req = std::move(req);
  if (tool_markers) st->tool_markers = *tool_markers;
  st->arrival = Clock::now();
  st->handle->add_usage(P, 0);
  incoming_.push_back(st);
  cv_.notify_all();
  return st->handle;
}

void EngineImpl::cancel(uint64_t id) {
  std::lock_guard lk(mu_);
  cancel_ids_.insert(id);
  cv_.notify_all();
}

EngineMetrics EngineImpl::metrics() const {
  std::lock_guard lk(mu_);
  return metrics_;
}

void EngineImpl::shutdown(std::chrono::milliseconds grace) {
  auto deadline = Clock::now() + grace;
  {
    std::lock_guard lk(mu_);
    accepting_ = false;
  }
  while (Clock::now() < deadline) {
    {
      std::lock_guard lk(mu_);
      if (metrics_.num_running == 0 && metrics_.num_waiting == 0 && incoming_.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  stop_loop();
}

void EngineImpl::stop_loop() {
  {
    std::lock_guard lk(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
  // Whatever is left is cancelled, so no client waits forever.
  for (auto* q : {&running_, &waiting_})
    for (auto& s : *q) finish_seq(*s, FinishReason::kCancelled);
  running_.clear();
  waiting_.clear();
  std::lock_guard lk(mu_);
  for (auto& st : incoming_)
    for (int i = 0; i < st->req.n; ++i) {
      GenerationEvent ev;
      ev.index = i;
      ev.finish = FinishReason::kCancelled;
      st->handle->push(std::move(ev));
    }
  incoming_.clear();
}

void EngineImpl::loop() {
  while (true) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] {
        return stop_ || !incoming_.empty() || !cancel_ids_.empty() || !running_.empty() ||
               !waiting_.empty();
      });
      if (stop_) return;
    }
    try {
      step();
    } catch (const std::exception& e) {
      spdlog::error("engine step failed: {}", e.what());
      fail_all(e.what());
    }
  }
}

void EngineImpl::admit_incoming() {
  std::vector<std::shared_ptr<RequestState>> in;
  {
    std::lock_guard lk(mu_);
    in.swap(incoming_);
  }
  for (auto& st : in) {
    // The leader computes the prompt; its siblings fork from it after the prefill.
    auto s = std::make_unique<Sequence>(st, 0, next_order_++, st->req.prompt_ids);
    if (prefix_) {
      // The request's own point (a chat's system prompt) or a head an earlier prompt shared,
      // whichever reaches further; points shorter than a block save too little (as
      // cache_computed's rule).
      const int point =
          std::max(st->req.cache_point, prefix_->shared_head(st->req.prompt_ids, kBlockSize));
      if (point >= kBlockSize) s->cache_point = point;
    }
    s->init_decoder(tokenizer_.get());
    waiting_.insert(waiting_place(*s), std::move(s));
  }
}

std::list<std::unique_ptr<Sequence>>::iterator EngineImpl::waiting_place(const Sequence& s) {
  // From the back: a new arrival goes last under FCFS, so this costs nothing there.
  auto pos = waiting_.end();
  while (pos != waiting_.begin() &&
         queues_before(queue_key(s), queue_key(**std::prev(pos)), policy_))
    --pos;
  return pos;
}

void EngineImpl::apply_cancellations() {
  std::unordered_set<uint64_t> ids;
  {
    std::lock_guard lk(mu_);
    ids.swap(cancel_ids_);
  }
  if (ids.empty()) return;
  for (auto* q : {&running_, &waiting_})
    for (auto it = q->begin(); it != q->end();) {
      if (ids.count((*it)->req->handle->id())) {
        finish_seq(**it, FinishReason::kCancelled);
        it = q->erase(it);
      } else {
        ++it;
      }
    }
}

void EngineImpl::free_seq(Sequence& s) {
  for (int b : s.blocks) blocks_.release(b);
  s.blocks.clear();
  if (s.slot >= 0) slots_.release(s.slot);
  s.slot = -1;
  s.num_computed = 0;
}

void EngineImpl::start_from_prefix(Sequence& s, int entry) {
  const PrefixCache::Entry& e = prefix_->entry(entry);
  const int n = int(e.tokens.size());
  KIMI_CHECK(s.num_computed == 0 && s.blocks.empty());
  for (int i = 0; i < n / kBlockSize; ++i) {
    blocks_.retain(e.blocks[size_t(i)]);
    s.blocks.push_back(e.blocks[size_t(i)]);
  }
  s.num_computed = n;
}

// Caches s's computed tokens (its state is at their end; a drawn token not fed yet is not
// among them). Called at the end of the prompt and when s finishes.
void EngineImpl::cache_computed(Sequence& s) {
  if (s.index != 0 || s.num_computed < kBlockSize) return;  // short prompts save too little
  const std::optional<int> slot = prefix_->insert(std::span<const int>(s.tokens.data(), size_t(s.num_computed)),
                                                  s.blocks, kBlockSize);
  if (slot) model_->copy_slot(s.slot, *slot);
}

int EngineImpl::free_or_reclaimable_blocks() const {
  return blocks_.num_free() + (prefix_ ? prefix_->reclaimable_blocks() : 0);
}

void EngineImpl::finish_seq(Sequence& s, FinishReason r, const std::string& why) {
  free_seq(s);
  if (s.finished) return;
  s.finished = true;
  publish_metrics();
  GenerationEvent ev;
  ev.index = s.index;
  ev.finish = r;
  if (r == FinishReason::kError) ev.error = why;
  else ev.stop_reason = why;
  ev.text = s.flush_text(r);
  auto now = Clock::now();
  observe_finished(s, now);  // before the finish event: its latencies are seen with it
  // Samples that were never started (cancelled before the fork) finish here too.
  int unstarted = s.index == 0 && !s.forked ? s.req->req.n - 1 : 0;
  s.req->handle->push(std::move(ev));
  for (int i = 1; i <= unstarted; ++i) {
    GenerationEvent e2;
    e2.index = i;
    e2.finish = r;
    e2.error = r == FinishReason::kError ? why : "";
    s.req->handle->push(std::move(e2));
  }
}

void EngineImpl::fail_all(const std::string& why) {
  for (auto* q : {&running_, &waiting_})
    for (auto& s : *q) finish_seq(*s, FinishReason::kError, why);
  running_.clear();
  waiting_.clear();
}

void EngineImpl::step() {
  admit_incoming();
  apply_cancellations();

  // Scheduler view, by position in running_ then waiting_.
  std::vector<Sequence*> table;
  SchedulerInput in;
  auto view = [&](const Sequence& s) {
    int shared = 0;
    for (int b : s.blocks) shared += blocks_.ref_count(b) > 1;
    int stop_at = s.cache_point;      // ends the chunk: at a prefix-cache point, and every
    if (s.wants_prompt_logprobs() && !model_->keeps_logit_rows()) {  // rows to the host
      const int cap = s.num_computed + kPromptLogprobsChunk;
      stop_at = stop_at > s.num_computed ? std::min(stop_at, cap) : cap;
    }
    return SchedSeq{
        int(table.size()), int(s.tokens.size()), s.num_computed, int(s.blocks.size()), shared,
        stop_at,           s.req->req.priority,  s.order};
  };
  for (auto& s : running_) {
    in.running.push_back(view(*s));
    table.push_back(s.get());
  }
  // A waiting sequence that extends a cached prompt is offered to the scheduler as starting
  // from it: that many tokens computed, its full blocks held. Nothing is taken before admission
  // (waiting sequences hold no blocks), and the entry stays pinned until the admissions are done,
  // so no eviction takes it meanwhile. One such sequence per step: a second one waits (FCFS)
  // for the next step, so that pinned entries never keep the first from the blocks they hold.
  std::vector<int> from_prefix(running_.size() + waiting_.size(), -1);  // by table index
  int offered = -1;
  for (auto& s : waiting_) {
    SchedSeq v = view(*s);
    if (prefix_ && int(in.waiting.size()) < slots_.num_free() && s->req->req.prompt_logprobs < 0)
      if (const std::optional<int> id = prefix_->match(s->tokens)) {
        if (offered >= 0) break;
        offered = *id;
        prefix_->pin(offered);
        from_prefix[table.size()] = offered;
        const int n = int(prefix_->entry(offered).tokens.size());
        v.num_computed = n;
        v.num_blocks = v.shared_blocks = n / kBlockSize;
      }
    in.waiting.push_back(v);
    table.push_back(s.get());
  }
  in.free_blocks = free_or_reclaimable_blocks();
  in.free_slots = slots_.num_free();
  SchedulerLimits lim{opts_.max_num_seqs, opts_.max_num_batched_tokens, kBlockSize, policy_};
  SchedulerOutput plan = schedule(in, lim);
  if (offered >= 0 && plan.scheduled.empty() && running_.empty()) {
    // Only the cached prompt's own blocks are left and they are one short (its partial last
    // block would be copied): drop the entry, and the sequence starts from scratch next step.
    prefix_->unpin(offered);
    prefix_->erase(offered);
    offered = -1;
    return;
  }

  // Preemption by recompute: free everything, back to its place in the waiting queue (it keeps
  // its arrival).
  for (int id : plan.preempted) {
    Sequence* s = table[id];
    free_seq(*s);
    auto it = std::find_if(running_.begin(), running_.end(), [&](auto& p) { return p.get() == s; });
    waiting_.splice(waiting_place(*s), running_, it);
    std::lock_guard lk(mu_);
    metrics_.preemptions_total += 1;
  }

  Batch batch;
  std::vector<Sequence*> batch_seqs;
  for (const ScheduledSeq& sc : plan.scheduled) {
    Sequence* s = table[sc.id];
    const int entry = sc.admitted ? from_prefix[size_t(sc.id)] : -1;
    if (entry >= 0) start_from_prefix(*s, entry);
    // The scheduler counted the blocks of unpinned cached prompts as free: evict as needed.
    while (blocks_.num_free() < sc.new_blocks && prefix_ && prefix_->evict_one()) {
    }
    const size_t first_new = s->blocks.size();
    KIMI_CHECK(blocks_.allocate(sc.new_blocks, s->blocks), "scheduler over-committed blocks");
    if (sc.admitted) {
      s->slot = slots_.allocate();
      KIMI_CHECK(s->slot >= 0);
      int cached = 0;
      if (entry >= 0) {
        // Start from the cached prompt: its state, and a copy of its partial last block (this
        // sequence writes the rest of that block).
        const PrefixCache::Entry& e = prefix_->entry(entry);
        cached = int(e.tokens.size());
        model_->copy_slot(e.slot, s->slot);
        if (cached % kBlockSize != 0) model_->copy_block(e.blocks.back(), s->blocks[first_new]);
      } else {
        model_->reset_slot(s->slot);
      }
      if (!s->scheduled) {  // kept over preemptions, as vLLM's first SCHEDULED
        s->scheduled = true;
        s->scheduled_at = Clock::now();
      }
      if (s->index == 0 && !s->queue_timed) {  // vLLM: QUEUED to first SCHEDULED
        s->queue_timed = true;
        std::lock_guard lk(mu_);
        metrics_.queue.observe(secs(s->req->arrival, Clock::now()));
      }
      if (prefix_ && s->index == 0) {
        s->req->handle->add_usage(0, 0, cached);
        std::lock_guard lk(mu_);
        metrics_.prefix_cache_queries_total += s->tokens.size();
        metrics_.prefix_cache_hits_total += uint64_t(cached);
      }
      auto it = std::find_if(waiting_.begin(), waiting_.end(), [&](auto& p) { return p.get() == s; });
      running_.splice(running_.end(), waiting_, it);
    }
    int from = s->num_computed;
    batch.add(std::vector<int>(s->tokens.begin() + from, s->tokens.begin() + from + sc.num_new_tokens),
              from + sc.num_new_tokens, s->slot, s->blocks);
    batch.seq_all_logits.push_back(s->wants_prompt_logprobs());
    batch_seqs.push_back(s);
  }
  const bool prompt_rows = std::any_of(batch.seq_all_logits.begin(), batch.seq_all_logits.end(),
                                       [](uint8_t f) { return f; });
  if (!prompt_rows) batch.seq_all_logits.clear();
  if (offered >= 0) prefix_->unpin(offered);
  publish_metrics();
  if (batch_seqs.empty()) return;
  {  // prefill chunks + decode inputs (vLLM's iteration), before this step's events
    std::lock_guard lk(mu_);
    metrics_.iteration_tokens.observe(batch.cu_seqlens.back());
  }

  const int V = model_->config().vocab_size;
  // Rows that draw a token this step (a prefill chunk that does not end its prompt draws none),
  // and those of them drawn on the host: the fork of n > 1 samples, JSON mode, forced tool calls
  // and Request::host_sampling (their logits come back). The others draw on the device when the
  // backend can. The logprob records (of the token drawn, of the next prompt token on a
  // prompt-logprobs row) are computed where the logits are, from the raw logits.
  std::vector<bool> draws(batch_seqs.size()), on_host(batch_seqs.size());
  for (size_t i = 0; i < batch_seqs.size(); ++i) {
    const Sequence* s = batch_seqs[i];
    const int n = batch.cu_seqlens[i + 1] - batch.cu_seqlens[i];
    draws[i] = s->num_computed + n >= int(s->tokens.size());
    const Request& r = s->req->req;
    on_host[i] = draws[i] && ((s->index == 0 && !s->forked && r.n > 1) || s->json || s->tool ||
                              r.host_sampling);
  }
  DrawBatch d;
  for (size_t i = 0; i < batch_seqs.size(); ++i) {
    const Sequence* s = batch_seqs[i];
    const Request& r = s->req->req;
    const int n = batch.cu_seqlens[i + 1] - batch.cu_seqlens[i], from = s->num_computed;
    const bool every_row = prompt_rows && batch.seq_all_logits[i];
    // Row j of a prompt-logprobs chunk gives token from + j + 1's logprob while that token is in
    // the prompt; positions collected before (a preempted sequence recomputes) are skipped.
    int first = 0, last = -1;
    if (every_row) {
      KIMI_CHECK(int(s->prompt_logprobs.size()) >= std::min(from, s->prompt_len - 1),
                 "prompt logprobs: a chunk from ", from, " after ", s->prompt_logprobs.size(),
                 " positions");
      first = std::max(int(s->prompt_logprobs.size()) + 1, from + 1);
      last = std::min(s->prompt_len - 1, from + n);
    }
    const int rows = every_row ? n : 1;
    for (int j = 0; j < rows; ++j) {
      RowDraw row;  // rows that draw nothing (or on the host): greedy, result unused
      row.temperature = 0.f;
      row.adjust_begin = int(d.adjust.size());
      const int pos = from + j + 1;
      if (every_row && pos >= first && pos <= last) {
        row.logprobs = r.prompt_logprobs;
        row.logprob_token = s->tokens[size_t(pos)];
      }
      if (j == rows - 1) {
        row.host = on_host[i];
        if (draws[i] && !on_host[i]) {
          const SamplingParams& sp = s->sampling;
          row.temperature = sp.temperature;
          row.top_k = sp.top_k;
          row.top_p = sp.top_p;
          row.min_p = sp.min_p;
          row.u = uniform_from(sp.seed, uint64_t(s->generated));
          append_logit_adjustments(sp, s->history, V, d.adjust, held_back_ids(*s));
          if (r.logprobs >= 0) {
            KIMI_CHECK(row.logprobs < 0, "a drawing row with a prompt logprob");
            row.logprobs = r.logprobs;  // of the token drawn
          }
        }
      }
      row.adjust_end = int(d.adjust.size());
      d.rows.push_back(row);
    }
  }
  std::vector<int> drawn;
  std::vector<RowLogprobs> records;  // of the rows that ask, in row order
  const bool on_device = model_->forward_sampled(batch, d, drawn, logits_, records);
  if (!on_device) {
    model_->forward(batch, all_logits_);
    draw_on_host(all_logits_, V, d, drawn, records);
  }
  uint64_t prompt_tokens = 0;
  int host_row = 0;   // with on_device: the next host row's place in logits_
  int first_row = 0;  // sequence i's first row
  size_t next_record = 0;
  for (size_t i = 0; i < batch_seqs.size(); ++i) {
    Sequence* s = batch_seqs[i];
    int n = batch.cu_seqlens[i + 1] - batch.cu_seqlens[i];
    int before = s->num_computed;
    const bool every_row = prompt_rows && batch.seq_all_logits[i];
    const int last_row = first_row + (every_row ? n : 1) - 1;
    const RowLogprobs* drawn_record = nullptr;
    for (int row = first_row; row <= last_row; ++row) {
      const RowDraw& x = d.rows[size_t(row)];
      if (x.logprobs < 0) continue;
      KIMI_CHECK(next_record < records.size(), "logprob records: ", records.size(),
                 " for more rows");
      const RowLogprobs& rec = records[next_record++];
      if (x.logprob_token >= 0) {
        s->prompt_logprobs.push_back(token_logprob(rec));
      } else {
        drawn_record = &rec;
      }
    }
    first_row = last_row + 1;
    s->num_computed += n;
    prompt_tokens += std::max(0, std::min(s->prompt_len, s->num_computed) - std::min(s->prompt_len, before));
    if (prefix_ && before < s->prompt_len && s->num_computed == s->prompt_len) cache_computed(*s);
    if (prefix_ && before < s->cache_point && s->num_computed == s->cache_point) cache_computed(*s);
    if (s->index == 0 && s->req->req.prompt_logprobs >= 0 && !s->prompt_logprobs_sent &&
        s->num_computed >= s->prompt_len) {
      GenerationEvent ev;  // before the first token's
      ev.prompt_logprobs = std::move(s->prompt_logprobs);
      s->prompt_logprobs_sent = true;
      s->req->handle->push(std::move(ev));
    }
    if (!draws[i]) continue;  // prefill chunk: nothing to sample yet
    if (!on_host[i]) {
      GenerationEvent ev;
      ev.index = s->index;
      if (drawn_record) ev.logprobs.push_back(token_logprob(*drawn_record));
      emit(*s, drawn[size_t(last_row)], std::move(ev));
      continue;
    }
    const float* row = on_device ? logits_.data() + size_t(host_row++) * V
                                 : all_logits_.data() + size_t(last_row) * V;
    if (s->index == 0 && !s->forked && s->req->req.n > 1) fork_samples(*s, row);
    sample_and_emit(*s, row);
  }
  KIMI_CHECK(next_record == records.size(), "logprob records: ", records.size(), " for ",
             next_record, " rows");
  // Drop finished sequences.
  for (auto it = running_.begin(); it != running_.end();) {
    if ((*it)->finished) it = running_.erase(it);
    else ++it;
  }
  {
    std::lock_guard lk(mu_);
    metrics_.prompt_tokens_total += prompt_tokens;
  }
  publish_metrics();
}

// Pool and queue counters. Called before a finish event is pushed, so a client that sees its
// request finish also sees the resources returned.
void EngineImpl::publish_metrics() {
  int running = 0, waiting = 0;
  for (auto& s : running_) running += !s->finished;
  for (auto& s : waiting_) waiting += !s->finished;
  std::lock_guard lk(mu_);
  metrics_.num_running = running;
  metrics_.num_waiting = waiting;
  // Blocks only the prefix cache holds count as free, as in vLLM: they go when needed.
  const int free_blocks = free_or_reclaimable_blocks();
  metrics_.free_blocks = free_blocks;
  metrics_.free_slots = slots_.num_free();
  metrics_.cache_usage = 1.0 - double(free_blocks) / blocks_.num_blocks();
}

void EngineImpl::fork_samples(Sequence& leader, const float* logits) {
  leader.forked = true;
  const int n = leader.req->req.n;
  for (int i = 1; i < n; ++i) {
    auto s = std::make_unique<Sequence>(leader.req, i, next_order_++, leader.tokens);
    s->init_decoder(tokenizer_.get());
    int slot = slots_.allocate();
    // Share the full blocks; copy the partial last one (it will be written by this sample).
    int full = leader.num_computed / kBlockSize;
    bool partial = leader.num_computed % kBlockSize != 0;
    std::vector<int> fresh;
    if (slot >= 0 && (!partial || blocks_.allocate(1, fresh))) {
      s->slot = slot;
      model_->copy_slot(leader.slot, slot);
      for (int b = 0; b < full; ++b) {
        blocks_.retain(leader.blocks[b]);
        s->blocks.push_back(leader.blocks[b]);
      }
      if (partial) {
        model_->copy_block(leader.blocks[full], fresh[0]);
        s->blocks.push_back(fresh[0]);
      }
      s->num_computed = leader.num_computed;
      s->scheduled = true;  // its prompt was the leader's: the leader's prefill
      s->scheduled_at = leader.scheduled_at;
      sample_and_emit(*s, logits);
      if (!s->finished) running_.push_back(std::move(s));
    } else {
      // No room to fork now: this sample recomputes the prompt when it is admitted.
      if (slot >= 0) slots_.release(slot);
      waiting_.insert(waiting_place(*s), std::move(s));
    }
  }
}

void EngineImpl::sample_and_emit(Sequence& s, const float* logits) {
  const int V = model_->config().vocab_size;
  const Request& r = s.req->req;
  std::vector<float> row(logits, logits + V);
  GenerationEvent ev;
  ev.index = s.index;
  apply_logit_processors(row, s.sampling, s.history, held_back_ids(s));
  if (s.json || s.tool) {
    if (!json_mask_) json_mask_ = std::make_unique<JsonTokenMask>(*tokenizer_, V);
    std::vector<int> end = eos_ids_;
    end.insert(end.end(), r.stop_token_ids.begin(), r.stop_token_ids.end());
    const std::vector<uint64_t>& mask =
        s.json ? json_mask_->allowed(*s.json, end) : json_mask_->allowed(*s.tool, end);
    if (std::all_of(mask.begin(), mask.end(), [](uint64_t w) { return w == 0; })) {
      finish_seq(s, FinishReason::kError,
                 s.json ? "response_format: no token of the vocabulary continues the JSON text"
                        : "tool_choice: no token of the vocabulary continues the tool call");
      return;
    }
    JsonTokenMask::apply(mask, row);
  }
  int tok = sample_token(row, s.sampling, uint64_t(s.generated));
  // Of the raw logits (before the processors), as on the device.
  if (r.logprobs >= 0)
    ev.logprobs.push_back(token_logprob(row_logprobs({logits, size_t(V)}, tok, r.logprobs)));
  emit(s, tok, std::move(ev));
}

std::vector<int> EngineImpl::held_back_ids(const Sequence& s) const {
  const Request& r = s.req->req;
  if (s.generated >= r.min_tokens) return {};
  std::vector<int> ids = r.stop_token_ids;
  if (!r.ignore_eos) ids.insert(ids.end(), eos_ids_.begin(), eos_ids_.end());
  return ids;
}

// Appends the drawn token, streams its text, and finishes the sequence when it ends it.
void EngineImpl::emit(Sequence& s, int tok, GenerationEvent ev) {
  const Request& r = s.req->req;
  s.tokens.push_back(tok);
  s.history.add_generated(tok);
  s.generated += 1;
  s.req->handle->add_usage(0, 1);
  auto now = Clock::now();
  {
    std::lock_guard lk(mu_);
    metrics_.generation_tokens_total += 1;
    if (s.generated == 1) {
      s.first_token_at = now;
      s.ttft = secs(s.req->arrival, now);
      metrics_.ttft.observe(s.ttft);
    } else {
      metrics_.itl.observe(secs(s.last_token_at, now));
    }
  }
  s.last_token_at = now;
  ev.token_ids.push_back(tok);

  FinishReason fin = FinishReason::kNone;
  std::string why;
  bool is_eos = !r.ignore_eos && std::find(eos_ids_.begin(), eos_ids_.end(), tok) != eos_ids_.end();
  bool is_stop_id = std::find(r.stop_token_ids.begin(), r.stop_token_ids.end(), tok) != r.stop_token_ids.end();
  if (s.json && !is_eos && !is_stop_id)  // the mask allowed only tokens the matcher accepts
    KIMI_CHECK(s.json->step(tokenizer_->token_bytes(tok)), "JSON mode drew token ", tok,
               ", which breaks the JSON text");
  if (s.tool && !is_eos && !is_stop_id)
    KIMI_CHECK(tokenizer_->is_special(tok) ? s.tool->step_marker(tok)
                                           : s.tool->step(tokenizer_->token_bytes(tok)),
               "tool_choice drew token ", tok, ", which breaks the tool call");
  // Text first: a stop string may end the sequence at this token.
  TextDelta td = s.push_text(tok, is_eos || is_stop_id, /*match_stops=*/s.generated >= r.min_tokens);
  ev.text = std::move(td.text);
  if (td.stopped) {
    fin = FinishReason::kStop;
    why = td.stop_string;
  } else if (is_eos || is_stop_id) {
    fin = FinishReason::kStop;
    // vLLM: the tokenizer's eos ends with stop_reason null; config / generation-config eos ids
    // (Kimi's <|im_end|>) and stop_token_ids with the id.
    if (is_stop_id || tok != tokenizer_eos_) ev.stop_token = tok;
  } else if (s.generated >= r.max_tokens || int64_t(s.tokens.size()) >= max_model_len_) {
    fin = FinishReason::kLength;
  }
  if (fin == FinishReason::kNone) {
    s.req->handle->push(std::move(ev));
    return;
  }
  // The final event carries the last token and the finish reason together.
  ev.finish = fin;
  ev.stop_reason = why;
  std::string rest = s.flush_text(fin);
  ev.text += rest;
  s.finished = true;
  if (prefix_) cache_computed(s);
  free_seq(s);
  publish_metrics();
  observe_finished(s, now);  // before the finish event: its latencies are seen with it
  s.req->handle->push(std::move(ev));  // siblings were forked before this first sample
}

// A finished sample's count and, if it drew a token, its e2e latency, TPOT (two or more) and
// vLLM's prefill (first scheduled to first token), decode (first to last token) and inference
// (first scheduled to last token) times.
void EngineImpl::observe_finished(const Sequence& s, Clock::time_point now) {
  std::lock_guard lk(mu_);
  metrics_.requests_finished_total += 1;
  if (s.generated == 0) return;
  const double e2e = secs(s.req->arrival, now);
  metrics_.e2e.observe(e2e);
  if (s.generated > 1) metrics_.tpot.observe((e2e - s.ttft) / (s.generated - 1));
  if (!s.scheduled) return;
  metrics_.prefill.observe(secs(s.scheduled_at, s.first_token_at));
  metrics_.decode.observe(secs(s.first_token_at, s.last_token_at));
  metrics_.inference.observe(secs(s.scheduled_at, s.last_token_at));
}

}  // namespace

std::unique_ptr<Engine> Engine::create(const EngineOptions& opts) {
  return std::make_unique<EngineImpl>(opts);
}

}  // namespace kimi
