// End-to-end CUDA model benchmark (issue 8/9): prefill P tokens (in steps of at most --chunk
// tokens), then decode D tokens greedily for --batch B sequences in lockstep, on a real checkpoint
// or on weights drawn on the GPU from config.json alone (--random-weights; --layers N keeps the
// first N layers when the card is too small). Prints the card, the memory held, prefill and decode
// tokens/s, and checks every logit is finite (prefill, and one decode step after the timed ones).
// Decode steps draw the greedy token on the device as the engine does (Model::forward_sampled;
// tensor parallelism: logits to the host and argmax there, as the engine does too).
//   bench_cuda_model --model benchmarks/configs/kimi-linear-48b-a3b --random-weights [--layers 13]
//                    [--prefill 4096] [--chunk 4096] [--decode 128] [--batch B] [--context C]
//                    [--tensor-parallel-size N [--enable-expert-parallel]] [--precision bf16|high]
//                    [--kv-cache-dtype auto|bf16|fp8] [--logprobs K] [--prompt-logprobs K]
// --logprobs K: every decode row also asks for the logprob record of its token with K
// alternatives (kernels/sampling/logprobs.h), as a request with logprobs / top_logprobs does.
// --prompt-logprobs K: after the timed prefill, the prompt again with a logits row per token and
// each row's record of the next prompt token (vLLM prompt_logprobs, as the engine runs it, in
// steps of --chunk: the engine's are its prefill chunks on one GPU, 256 tokens where rows go to
// the host): records on the GPU (forward_sampled), every row to the host and the records there
// (forward + draw_on_host, the path before), the GPU again.
// --context C: the decode starts at context C without running a prefill for it: the caches hold
// C positions of zeros, which costs the same bytes and FLOPs as real ones (timing only: such
// tokens are not a model output). Without it every sequence is prefilled with the P tokens.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>

#include "core/check.h"
#include "model/model.h"
#include "runtime/sampler.h"
#if KIMI_HAVE_CUDA
#include <cuda_profiler_api.h>

#include "common.h"
#include "model/cuda_model.h"
#include "model/tp_model.h"
#endif

#if KIMI_HAVE_CUDA
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

size_t count_nonfinite(const std::vector<float>& v) {
  size_t n = 0;
  for (float x : v) n += !std::isfinite(x);
  return n;
}

}  // namespace
#endif

int main(int argc, char** argv) {
  using namespace kimi;
  std::string dir;
  bool random_weights = false, expert_parallel = false;
  std::string precision = "bf16", kv_cache_dtype = "auto";
  int layers = 0, prefill = 4096, decode = 128, tp = 1, chunk = 0, batch = 1, context = 0;
  int logprobs = -1, prompt_logprobs = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--model") dir = next();
    else if (a == "--random-weights") random_weights = true;
    else if (a == "--layers") layers = std::atoi(next());
    else if (a == "--prefill") prefill = std::atoi(next());
    else if (a == "--decode") decode = std::atoi(next());
    else if (a == "--chunk") chunk = std::atoi(next());
    else if (a == "--batch") batch = std::atoi(next());
    else if (a == "--context") context = std::atoi(next());
    else if (a == "--tensor-parallel-size" || a == "-tp") tp = std::atoi(next());
    else if (a == "--enable-expert-parallel") expert_parallel = true;
    else if (a == "--precision") precision = next();
    else if (a == "--kv-cache-dtype") kv_cache_dtype = next();
    else if (a == "--logprobs") logprobs = std::atoi(next());
    else if (a == "--prompt-logprobs") prompt_logprobs = std::atoi(next());
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (dir.empty()) {
    std::printf("bench_cuda_model: nothing to do without --model DIR (see the header comment)\n");
    return 0;
  }
#if !KIMI_HAVE_CUDA
  (void)random_weights, (void)layers, (void)prefill, (void)decode, (void)tp, (void)expert_parallel;
  (void)chunk, (void)batch, (void)context, (void)logprobs, (void)prompt_logprobs;
  std::printf("bench_cuda_model: built without the CUDA backend\n");
  return 0;
#else
  if (chunk <= 0) chunk = std::min(prefill, 4096);
  if (prefill < 1 || decode < 0 || batch < 1 || context < 0 || chunk < 1 ||
      logprobs > kMaxTopLogprobs || prompt_logprobs > kMaxTopLogprobs) {
    std::fprintf(stderr,
                 "bench_cuda_model: --prefill, --chunk and --batch must be positive, "
                 "--decode and --context not negative, --logprobs and --prompt-logprobs at "
                 "most %d\n",
                 kMaxTopLogprobs);
    return 2;
  }
  try {
    ModelOptions opts;
    opts.backend = "cuda";
    opts.random_weights = random_weights;
    opts.num_layers = layers;
    opts.tensor_parallel = tp;
    opts.expert_parallel = expert_parallel;
    opts.precision = parse_precision(precision);
    opts.kv_cache_dtype = parse_kv_cache_dtype(kv_cache_dtype);
    opts.max_batch_tokens = std::max(chunk, batch);
    // Decode passes (eager, graphs, profiled) continue one another's contexts.
    const int blocks_per_seq =
        (std::max(prefill, context) + 2 * decode + std::min(decode, 32) + 1 + kBlockSize - 1) / kBlockSize + 1;
    opts.cache.num_slots = batch;
    opts.cache.num_blocks = batch * blocks_per_seq;
    const double t_load = now_s();
    std::unique_ptr<Model> model = load_model(dir, opts);
    auto* tpm = dynamic_cast<TpModel*>(model.get());
    auto* cm = tpm ? &tpm->rank(0) : dynamic_cast<CudaModel*>(model.get());
    // Settings that touch CUDA objects go to every rank, each on its own thread.
    auto each_rank = [&](const std::function<void(CudaModel&)>& f) {
      if (tpm) tpm->run_on_all([&](int, CudaModel& m) { f(m); });
      else f(*cm);
    };
    const ModelConfig& c = model->config();
    std::printf("card: %s%s\n", cm->device_name().c_str(),
                tp > 1 ? str(" x ", tp, " (tensor parallel", expert_parallel ? ", experts split by expert" : "", ")").c_str() : "");
    std::printf(
        "model: %s, %d layers (%d KDA, %d MLA)%s, hidden %d, %d experts top-%d, vocab %d, "
        "precision %s, kv cache %s\n",
        dir.c_str(), c.num_hidden_layers, c.num_kda_layers(), c.num_mla_layers(),
        random_weights ? ", random weights" : "", c.hidden_size, c.num_experts,
        c.num_experts_per_token, c.vocab_size, precision_name(opts.precision),
        kv_cache_dtype_name(opts.kv_cache_dtype));
    std::printf("memory%s: weights %.2f GiB, caches %.3f GiB, activations %.2f GiB; load %.1f s\n",
                tp > 1 ? " (rank 0)" : "", cm->weight_bytes() / 1073741824.0, cm->cache_bytes() / 1073741824.0,
                cm->arena_bytes() / 1073741824.0, now_s() - t_load);

    std::mt19937 rng(1);
    std::vector<int> ids(prefill);
    for (int& t : ids) t = int(rng() % uint32_t(std::min(c.vocab_size, 100000)));
    auto blocks_of = [&](int slot) {
      std::vector<int> b(blocks_per_seq);
      for (int i = 0; i < blocks_per_seq; ++i) b[i] = slot * blocks_per_seq + i;
      return b;
    };
    const int V = c.vocab_size;
    std::vector<float> logits;
    auto run_prefill = [&](int slot, int upto) {  // the first `upto` prompt tokens
      model->reset_slot(slot);
      const std::vector<int> blocks = blocks_of(slot);
      for (int off = 0; off < upto; off += chunk) {
        const int n = std::min(chunk, upto - off);
        Batch b;
        b.add(std::vector<int>(ids.begin() + off, ids.begin() + off + n), off + n, slot, blocks);
        model->forward(b, logits);
      }
    };
    run_prefill(0, std::min(prefill, chunk));  // warm-up: cuBLASLt plans, module loading
    const double t0 = now_s();
    run_prefill(0, prefill);
    const double t_prefill = now_s() - t0;
    size_t bad = count_nonfinite(logits);
    std::printf("prefill: %d tokens in %.1f ms = %.0f tokens/s (steps of %d tokens)\n", prefill,
                t_prefill * 1e3, prefill / t_prefill, chunk);
    if (prompt_logprobs >= 0) {
      // Records of the last step of each way, compared.
      std::vector<RowLogprobs> recs, recs_dev, recs_host;
      std::vector<int> drawn;
      std::vector<float> rows;
      for (bool device : {true, false, true}) {  // the GPU way twice: cold, then warm
        model->reset_slot(0);
        const std::vector<int> blocks = blocks_of(0);
        size_t n_rec = 0;
        const double tp0 = now_s();
        for (int off = 0; off < prefill; off += chunk) {
          const int n = std::min(chunk, prefill - off);
          Batch b;
          b.add(std::vector<int>(ids.begin() + off, ids.begin() + off + n), off + n, 0, blocks);
          b.seq_all_logits = {1};
          DrawBatch d;
          d.rows.resize(size_t(n));
          for (int j = 0; j < n; ++j) {
            d.rows[size_t(j)].temperature = 0.f;
            if (off + j + 1 < prefill) {
              d.rows[size_t(j)].logprobs = prompt_logprobs;
              d.rows[size_t(j)].logprob_token = ids[size_t(off + j + 1)];
            }
          }
          if (!device || !model->forward_sampled(b, d, drawn, rows, recs)) {
            model->forward(b, rows);
            draw_on_host(rows, V, d, drawn, recs);
          }
          n_rec += recs.size();
        }
        const double tpl = now_s() - tp0;
        std::printf("prompt logprobs (%s): %d tokens in %.1f ms = %.0f tokens/s, %zu records of "
                    "k %d (steps of %d tokens)\n",
                    device ? "records on the GPU" : "rows to the host", prefill, tpl * 1e3,
                    prefill / tpl, n_rec, prompt_logprobs, chunk);
        if (device) recs_dev = recs;
        else recs_host = recs;
      }
      double worst = 0;
      int same_rank = 0;
      for (size_t i = 0; i < std::min(recs_host.size(), recs_dev.size()); ++i) {
        worst = std::max(worst, double(std::fabs(recs_host[i].logprob - recs_dev[i].logprob)));
        same_rank += recs_host[i].rank == recs_dev[i].rank;
      }
      std::printf("prompt logprobs, last step: GPU vs host records: max |logprob difference| %.3g, "
                  "equal ranks %d/%zu\n",
                  worst, same_rank, recs_host.size());
    }
    // Every sequence at its starting context: prefilled (slot 0 by the timed prefill above), or
    // (--context) zeros taken as context.
    std::vector<int> last(batch);
    for (int s = 0; s < batch; ++s) {
      if (context > 0) {
        model->reset_slot(s);
        last[s] = ids[0];
        continue;
      }
      if (s > 0) run_prefill(s, prefill);
      last[s] = int(std::max_element(logits.end() - V, logits.end()) - (logits.end() - V));
    }
    int ctx = context > 0 ? context : prefill;
    DrawBatch greedy;
    greedy.rows.resize(size_t(batch));
    for (RowDraw& r : greedy.rows) {
      r.temperature = 0.f;
      r.logprobs = logprobs;
    }
    std::vector<int> drawn;
    std::vector<float> host_logits;  // none: no row is drawn on the host
    std::vector<RowLogprobs> records;
    // on_host: logits to the host and the argmax there (the check step below).
    auto decode_step = [&](int ctx, bool on_host = false) {
      Batch d;
      for (int s = 0; s < batch; ++s) d.add({last[s]}, ctx, s, blocks_of(s));
      if (!on_host && model->forward_sampled(d, greedy, drawn, host_logits, records)) {
        for (int s = 0; s < batch; ++s) last[s] = drawn[size_t(s)];
        return;
      }
      model->forward(d, logits);
      for (int s = 0; s < batch; ++s) {
        const float* row = logits.data() + size_t(s) * V;
        last[s] = int(std::max_element(row, row + V) - row);
      }
      bad += count_nonfinite(logits);
    };

    // Decode D tokens greedily, eagerly (one launch per kernel) and then replaying CUDA graphs.
    for (bool graphs : {false, true}) {
      each_rank([&](CudaModel& m) { m.set_use_graphs(graphs); });
      double t_first = 0;
      // nsys --capture-range=cudaProfilerApi records just the graph-replayed decode steps.
      if (graphs) CUDA_CHECK(cudaProfilerStart());
      const double t1 = now_s();
      for (int s = 0; s < decode; ++s) {
        const double ts = now_s();
        decode_step(++ctx);
        if (s == 0) t_first = now_s() - ts;
      }
      const double t_decode = now_s() - t1;
      if (graphs) CUDA_CHECK(cudaProfilerStop());
      std::printf("decode (%s): %d steps at batch %d, context %d -> %d, in %.1f ms = %.1f tokens/s "
                  "(%.2f ms/step; first step %.2f ms)\n",
                  graphs ? "CUDA graphs" : "eager", decode, batch, ctx - decode, ctx, t_decode * 1e3,
                  double(decode) * batch / t_decode, t_decode * 1e3 / std::max(decode, 1),
                  t_first * 1e3);
    }
    // Where the time goes: CUDA events around every layer's mixer and FFN (eager steps): one
    // prefill step (the first chunk, slot 0 restarted; batch 1 without --context only), then
    // decode steps.
    each_rank([](CudaModel& m) { m.set_profile(true); });
    if (context == 0 && batch == 1) {
      run_prefill(0, std::min(prefill, chunk));
      ctx = std::min(prefill, chunk);
      last[0] = int(std::max_element(logits.end() - V, logits.end()) - (logits.end() - V));
    }
    for (int s = 0; s < std::min(decode, 32); ++s) decode_step(++ctx);
    std::printf("%s", cm->profile_report().c_str());
    each_rank([](CudaModel& m) { m.set_profile(false); });
    if (decode > 0) decode_step(++ctx, /*on_host=*/true);  // the logits of a decode step, checked
    std::printf("logits: %zu non-finite values\n", bad);
    return bad == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_model: %s\n", e.what());
    return 1;
  }
#endif
}
