// CPU backend throughput on a model directory (default: the embedded tiny model):
// prefill tokens/s at several prompt lengths and decode tokens/s at several batch sizes.
// Medians over repeated runs; prints a markdown table for docs/perf-log.md.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <omp.h>

#include "model/model.h"

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CPU prefill/decode throughput"};
  std::string dir = KIMI_DEFAULT_MODEL_DIR;
  std::vector<int> prompt_lens = {128, 512, 2048}, batches = {1, 8};
  int decode_ctx = 512, decode_steps = 32, reps = 5;
  app.add_option("--model", dir);
  app.add_option("--prompt-lens", prompt_lens);
  app.add_option("--batches", batches);
  app.add_option("--decode-context", decode_ctx);
  app.add_option("--decode-steps", decode_steps);
  app.add_option("--reps", reps);
  CLI11_PARSE(app, argc, argv);

  int max_batch = *std::max_element(batches.begin(), batches.end());
  int max_len = std::max(*std::max_element(prompt_lens.begin(), prompt_lens.end()),
                         decode_ctx + decode_steps);
  int blocks_per_seq = (max_len + kimi::kBlockSize - 1) / kimi::kBlockSize;
  kimi::ModelOptions opts;
  opts.cache.num_slots = max_batch;
  opts.cache.num_blocks = max_batch * blocks_per_seq;
  auto model = kimi::load_model(dir, opts);
  const int V = model->config().vocab_size;
  auto seq_blocks = [&](int s) {
    std::vector<int> b(blocks_per_seq);
    for (int i = 0; i < blocks_per_seq; ++i) b[i] = s * blocks_per_seq + i;
    return b;
  };
  auto tokens = [&](int n, int salt) {
    std::vector<int> t(n);
    for (int i = 0; i < n; ++i) t[i] = int((uint64_t(i) * 2654435761u + salt * 97u) % uint64_t(V));
    return t;
  };
  std::printf("model %s, %d threads\n\n| phase | shape | tokens/s (median of %d) |\n|---|---|---|\n",
              dir.c_str(), omp_get_max_threads(), reps);
  std::vector<float> logits;
  for (int T : prompt_lens) {
    std::vector<double> times;
    for (int r = 0; r <= reps; ++r) {
      model->reset_slot(0);
      kimi::Batch b;
      b.add(tokens(T, r), T, 0, seq_blocks(0));
      auto t0 = std::chrono::steady_clock::now();
      model->forward(b, logits);
      if (r > 0) times.push_back(seconds_since(t0));  // run 0 is warm-up
    }
    std::printf("| prefill | %d tokens | %.0f |\n", T, T / median(times));
  }
  for (int B : batches) {
    // Prefill every sequence to decode_ctx, then time single-token steps over the batch.
    for (int s = 0; s < B; ++s) {
      model->reset_slot(s);
      kimi::Batch b;
      b.add(tokens(decode_ctx, s), decode_ctx, s, seq_blocks(s));
      model->forward(b, logits);
    }
    std::vector<double> times;
    for (int step = 0; step < decode_steps; ++step) {
      kimi::Batch d;
      for (int s = 0; s < B; ++s) d.add({(step * 31 + s) % V}, decode_ctx + step + 1, s, seq_blocks(s));
      auto t0 = std::chrono::steady_clock::now();
      model->forward(d, logits);
      if (step > 0) times.push_back(seconds_since(t0));
    }
    std::printf("| decode | batch %d, context %d | %.0f |\n", B, decode_ctx, B / median(times));
  }
  return 0;
}
