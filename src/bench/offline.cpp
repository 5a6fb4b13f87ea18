#include "bench/offline.h"

#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>

#include "bench/device.h"
#include "bench/progress.h"
#include "bench/stats.h"
#include "bench/sysinfo.h"
#include "core/check.h"
#include "model/model.h"

namespace kimi::bench {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// User + system CPU seconds of the whole process (all threads).
double process_cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

int blocks_for(int64_t tokens) {
  return int((tokens + kBlockSize - 1) / kBlockSize);
}

// Deterministic ordinary-looking token ids (no specials at the top of the vocabulary).
std::vector<int> token_run(int n, int salt, int vocab) {
  const int base = std::max(1, vocab - 256);
  std::vector<int> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i)
    t[size_t(i)] = int((uint64_t(i) * 2654435761u + uint64_t(salt) * 97u) % uint64_t(base));
  return t;
}

class Runner {
 public:
  Runner(Model& m, int blocks_per_seq) : m_(m), bps_(blocks_per_seq), V_(m.config().vocab_size) {}

  std::vector<int> blocks(int slot) const {
    std::vector<int> b(static_cast<size_t>(bps_));
    for (int i = 0; i < bps_; ++i) b[size_t(i)] = slot * bps_ + i;
    return b;
  }

  // Prefills `len` tokens into slot from zero state, `chunk` tokens per forward.
  void prefill(int slot, int len, int chunk, int salt) {
    m_.reset_slot(slot);
    std::vector<int> toks = token_run(len, salt, V_);
    for (int off = 0; off < len; off += chunk) {
      int n = std::min(chunk, len - off);
      Batch b;
      b.add(std::vector<int>(toks.begin() + off, toks.begin() + off + n), off + n, slot,
            blocks(slot));
      m_.forward(b, logits_);
    }
  }

  // One decode step for slots 0..batch-1, each at `context` tokens before the step.
  void decode_step(int batch, int context, int step) {
    Batch d;
    for (int s = 0; s < batch; ++s)
      d.add({(step * 31 + s * 7) % std::max(1, V_ - 256)}, context + 1, s, blocks(s));
    m_.forward(d, logits_);
  }

 private:
  Model& m_;
  int bps_, V_;
  std::vector<float> logits_;
};

}  // namespace

int weight_elem_bytes(const std::string& backend) {
  if (backend == "cpu") return 4;   // load_weights_f32
  if (backend == "cuda") return 2;  // bf16 weights
  fail("unknown backend '", backend, "' (expected cpu or cuda)");
}

OfflineResults run_offline(const OfflineOptions& o) {
  if (o.prompt_lens.empty() && o.batches.empty())
    fail("nothing to measure: no prompt lengths and no batch sizes");
  for (int L : o.prompt_lens)
    if (L < 1) fail("--prompt-lens: ", L, " is not a positive length");
  for (int B : o.batches)
    if (B < 1) fail("--batches: ", B, " is not a positive batch size");
  for (int C : o.contexts)
    if (C < 1) fail("--contexts: ", C, " is not a positive depth");
  if (!o.batches.empty() && o.contexts.empty())
    fail("--batches needs at least one --contexts depth");
  if (o.decode_steps < 2) fail("--decode-steps must be at least 2 (the first step is not timed)");
  if (o.reps < 1) fail("--reps must be at least 1");
  if (o.prefill_chunk < 1) fail("--prefill-chunk must be positive");

  OfflineResults r;
  r.backend = o.backend;
  r.weight_elem_bytes = weight_elem_bytes(o.backend);
  r.threads = omp_get_max_threads();
  if (o.random_weights) {
    if (o.config_file.empty()) fail("--random-weights needs --config FILE");
    r.config = ModelConfig::from_file(o.config_file);
  } else {
    if (o.model_dir.empty()) fail("give --model DIR (or --random-weights --config FILE)");
    r.config = ModelConfig::from_file(o.model_dir + "/config.json");
  }
  r.split = {o.backend == "cuda" ? std::max(o.tensor_parallel, 1) : 1, o.expert_parallel};
  r.params = param_counts(r.config, r.split);

  // Caches for the largest shape measured: one slot per sequence, blocks for the longest run.
  int max_batch = o.batches.empty() ? 1 : *std::max_element(o.batches.begin(), o.batches.end());
  int64_t longest = 1;
  for (int L : o.prompt_lens) longest = std::max<int64_t>(longest, L);
  for (int C : o.contexts) longest = std::max<int64_t>(longest, int64_t(C) + o.decode_steps);
  const int bps = blocks_for(longest);
  ModelOptions mo;
  mo.backend = o.backend;
  mo.tensor_parallel = o.tensor_parallel;
  mo.expert_parallel = o.expert_parallel;
  mo.precision = parse_precision(o.precision);
  mo.kv_cache_dtype = parse_kv_cache_dtype(o.kv_cache_dtype);
  mo.cache.num_slots = max_batch;
  mo.cache.num_blocks = max_batch * bps;
  mo.max_batch_tokens = std::max(o.prefill_chunk, max_batch);  // CUDA: the activation arena's size
  std::unique_ptr<Model> model =
      o.random_weights ? random_weights_model(r.config, mo) : load_model(o.model_dir, mo);
  r.kv_cache_dtype = kv_cache_dtype_name(mo.kv_cache_dtype);
  r.cache = cache_entry_bytes(r.config, mo);
  // Over N GPUs: every rank holds the whole tensors, the embedding and the latent cache.
  const int world = r.split.world;
  r.memory.weight_bytes =
      (r.params.total + r.params.dense_replicas + (world - 1) * r.params.embed) *
      r.weight_elem_bytes;
  r.memory.cache_bytes = int64_t(mo.cache.num_slots) * r.cache.slot +
                         int64_t(world) * mo.cache.num_blocks * kBlockSize * r.cache.mla_token;

  Runner run(*model, bps);
  run.prefill(0, std::min(64, o.prompt_lens.empty() ? 64 : o.prompt_lens.front()), o.prefill_chunk,
              99);  // warm-up

  int total_units = int(o.prompt_lens.size()) + int(o.batches.size() * o.contexts.size());
  Progress progress("offline", total_units, o.progress);
  for (int L : o.prompt_lens) {
    std::vector<double> t;
    double cpu0 = process_cpu_seconds(), wall = 0;
    for (int rep = 0; rep < o.reps; ++rep) {
      auto t0 = Clock::now();
      run.prefill(0, L, o.prefill_chunk, rep);
      t.push_back(seconds_since(t0));
      wall += t.back();
    }
    PrefillPoint p;
    p.cpu_share = (process_cpu_seconds() - cpu0) / (wall * r.threads);
    p.prompt_len = L;
    p.seconds = median(t);
    p.tokens_per_s = L / p.seconds;
    r.prefill.push_back(p);
    progress.tick();
  }
  for (int C : o.contexts) {
    for (int B : o.batches) {
      for (int s = 0; s < B; ++s) run.prefill(s, C, o.prefill_chunk, 1000 + s);
      std::vector<double> t;
      run.decode_step(B, C, 0);  // not timed: first step after the prefills
      double cpu0 = process_cpu_seconds(), wall = 0;
      for (int step = 1; step < o.decode_steps; ++step) {
        auto t0 = Clock::now();
        run.decode_step(B, C + step, step);
        t.push_back(seconds_since(t0));
        wall += t.back();
      }
      DecodePoint d;
      d.cpu_share = (process_cpu_seconds() - cpu0) / (wall * r.threads);
      d.batch = B;
      d.context = C;
      double step_s = median(t);
      d.tpot_ms = step_s * 1e3;
      d.tokens_per_s = B / step_s;
      // Depth in the middle of the timed steps.
      d.bytes = decode_step_bytes(r.config, B, C + o.decode_steps / 2, r.weight_elem_bytes, r.cache,
                                  r.split);
      d.achieved_gbps = d.bytes.total() / step_s / 1e9;
      r.decode.push_back(d);
      progress.tick();
    }
  }
  progress.finish();
  r.memory.rss_bytes = rss_bytes();
  r.memory.peak_rss_bytes = peak_rss_bytes();
  r.memory.device = device_memory_used(o.backend);
  r.copy_gbps = copy_bandwidth_gbps(o.backend, &r.copy_note);
  return r;
}

}  // namespace kimi::bench
