// GPU sampling benchmark (kernels/sampling) at the Kimi vocabulary, 163840: time per run_sample at
// rows 1, 8, 64, 256 for greedy, temperature only, typical top-k/top-p, top-p, min-p and with
// penalties; the logits' read bandwidth against the device-to-device copy ceiling measured in the
// same run (the copy counts read + write).
// Timing: CUDA events around groups of launches, median over groups, after warm-up. The logits
// rotate over >= 512 MB of distinct rows so that they come from DRAM, not L2.
// Two logit shapes: "lm" (30 high logits over a normal bulk: little mass outside the head) and
// "flat" (uniform in [-3, 3]: the mass spread over the whole vocabulary).
// --logprobs: the logprob kernel (kernels/sampling/logprobs.h) instead, at rows 1, 8, 64, 256 and
// k 0, 5, 20, one request per row (the drawn token): us per launch replayed from a CUDA graph, the
// split kernel ("split") and the former one CTA per request ("1-CTA"), GB/s of logits (one read
// of each row) against the copy ceiling.
// Usage: bench_sampling [--quick] [--logprobs]
#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#if KIMI_HAVE_CUDA
#include "common.h"
#include "ops/cuda/device_buffer.h"
#include "bench_util.h"
#include "runtime/sampler.h"
#include "sampling/logprobs.h"
#include "sampling/sampling.h"

namespace {

using kimi::bench::copy_ceiling_gbs;
using kimi::bench::fill_random;
using kimi::bench::graph_ms;
using kimi::bench::median_ms;

using kimi::cuda::DeviceBuffer;
constexpr int V = 163840;

// `rows_total` rows of one shape, generated from 64 distinct rows (tiled on the device).
void fill_rows(DeviceBuffer<float>& buf, size_t rows_total, bool flat, uint32_t seed) {
  const size_t distinct = std::min<size_t>(rows_total, 64);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(-4.f, 2.f);
  std::uniform_real_distribution<float> uni(0.f, 1.f);
  std::uniform_int_distribution<int> id(0, V - 1);
  std::vector<float> h(distinct * V);
  for (size_t r = 0; r < distinct; ++r) {
    float* l = h.data() + r * V;
    for (int i = 0; i < V; ++i) l[i] = flat ? -3.f + 6.f * uni(rng) : normal(rng);
    if (!flat)
      for (int i = 0; i < 30; ++i) l[id(rng)] = 8.f + 6.f * uni(rng);
  }
  buf.upload(h.data(), h.size());
  for (size_t off = h.size(); off < buf.size(); off += h.size()) {
    const size_t n = std::min(h.size(), buf.size() - off);
    CUDA_CHECK(
        cudaMemcpy(buf.data() + off, buf.data(), n * sizeof(float), cudaMemcpyDeviceToDevice));
  }
}

struct Mode {
  const char* name;
  float temperature;
  int top_k;
  float top_p;
  float min_p;
  bool penalties;
};

void bench(double ceiling, bool flat, bool quick) {
  const Mode modes[] = {
      {"greedy", 0.f, 0, 1.f, 0.f, false},           {"temp 1", 1.f, 0, 1.f, 0.f, false},
      {"k50 p0.9 t0.7", 0.7f, 50, 0.9f, 0.f, false}, {"p0.95", 1.f, 0, 0.95f, 0.f, false},
      {"min_p 0.05", 1.f, 0, 1.f, 0.05f, false},     {"temp 1 +pen", 1.f, 0, 1.f, 0.f, true},
  };
  std::printf("\n%-6s %-15s %6s %10s %10s %8s\n", flat ? "flat" : "lm", "mode", "rows", "us",
              "read GB/s", "% copy");
  for (int rows : {1, 8, 64, 256}) {
    const size_t row_bytes = size_t(V) * 4;
    const int sets = std::max(2, int((size_t(512) << 20) / (rows * row_bytes)));
    DeviceBuffer<float> logits(size_t(sets) * rows * V);
    fill_rows(logits, size_t(sets) * rows, flat, 7 + rows);
    DeviceBuffer<kimi::cuda::SampleRow> rp(rows);
    DeviceBuffer<int> tok(rows);
    DeviceBuffer<float> lp(rows);
    // Penalties: a 2000-token prompt with repetition penalty, 300 generated tokens, 10 biases.
    std::vector<kimi::LogitAdjust> adj;
    std::vector<int> offsets = {0};
    {
      kimi::SamplingParams sp;
      sp.repetition_penalty = 1.1f;
      sp.presence_penalty = 0.5f;
      sp.frequency_penalty = 0.2f;
      std::mt19937 rng(3);
      std::uniform_int_distribution<int> id(0, V - 1);
      for (int i = 0; i < 10; ++i) sp.logit_bias.emplace_back(id(rng), 5.f);
      for (int r = 0; r < rows; ++r) {
        kimi::TokenHistory h;
        std::vector<int> prompt(2000);
        for (auto& t : prompt) t = id(rng);
        h.set_prompt(prompt);
        for (int i = 0; i < 300; ++i) h.add_generated(id(rng));
        kimi::append_logit_adjustments(sp, h, V, adj);
        offsets.push_back(int(adj.size()));
      }
    }
    std::vector<kimi::cuda::SampleAdjust> hadj(adj.size());
    for (size_t i = 0; i < adj.size(); ++i)
      hadj[i] = {adj[i].id, adj[i].bias, adj[i].rep, adj[i].post};
    DeviceBuffer<kimi::cuda::SampleAdjust> dadj(adj.size());
    DeviceBuffer<int> doff(offsets.size());
    dadj.upload(hadj);
    doff.upload(offsets);
    for (const Mode& m : modes) {
      std::vector<kimi::cuda::SampleRow> h(rows);
      for (int r = 0; r < rows; ++r) {
        h[r].temperature = m.temperature;
        h[r].top_k = m.top_k;
        h[r].top_p = m.top_p;
        h[r].min_p = m.min_p;
        h[r].u = kimi::uniform_from(1234 + r, 0);
      }
      rp.upload(h);
      kimi::cuda::SampleParams p;
      p.rows = rows;
      p.vocab = V;
      p.row_params = rp.data();
      p.token = tok.data();
      p.logprob = lp.data();
      if (m.penalties) {
        p.adjust_offsets = doff.data();
        p.adjust = dadj.data();
      }
      const double ms = median_ms(
          [&](int i) {
            p.logits = logits.data() + size_t(i % sets) * rows * V;
            kimi::cuda::run_sample(p, nullptr);
          },
          quick ? 10 : 40, 10);
      const double gbs = kimi::cuda::sample_bytes(rows, V, 0) / (ms * 1e-3) / 1e9;
      std::printf("%-6s %-15s %6d %10.2f %10.1f %7.1f%%\n", flat ? "flat" : "lm", m.name, rows,
                  ms * 1e3, gbs, 100 * gbs / ceiling);
    }
  }
}

void bench_logprobs(double ceiling, bool quick) {
  std::printf("\n%-9s %6s %4s %10s %10s %8s\n", "logprobs", "rows", "k", "us", "read GB/s",
              "% copy");
  cudaStream_t st;
  CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  for (int rows : {1, 8, 64, 256}) {
    const size_t row_bytes = size_t(V) * 4;
    const int sets = std::max(2, int((size_t(512) << 20) / (rows * row_bytes)));
    DeviceBuffer<float> logits(size_t(sets) * rows * V);
    fill_rows(logits, size_t(sets) * rows, false, 11 + rows);
    std::mt19937 rng(5);
    std::uniform_int_distribution<int> id(0, V - 1);
    std::vector<int> tok(rows);
    for (auto& t : tok) t = id(rng);
    DeviceBuffer<int> dtok(rows);
    dtok.upload(tok);
    DeviceBuffer<kimi::cuda::LogprobRequest> dq(rows);
    DeviceBuffer<kimi::cuda::LogprobRecord> dout(rows);
    for (int k : {0, 5, 20}) {
      std::vector<kimi::cuda::LogprobRequest> q(rows);
      for (int r = 0; r < rows; ++r) q[r] = {r, -1, k};
      dq.upload(q);
      for (bool one_cta : {false, true}) {
        kimi::cuda::LogprobParams p;
        p.count = rows;
        p.rows = rows;
        p.vocab = V;
        p.sampled = dtok.data();
        p.requests = dq.data();
        p.out = dout.data();
        p.kernel = one_cta ? kimi::cuda::LogprobKernel::kOneCta : kimi::cuda::LogprobKernel::kSplit;
        const double ms = graph_ms(
            [&](int i, cudaStream_t s) {
              p.logits = logits.data() + size_t(i % sets) * rows * V;
              kimi::cuda::run_logprobs(p, s);
            },
            std::clamp(sets, 16, 200), quick ? 7 : 21, st);
        const double gbs = double(rows) * row_bytes / (ms * 1e-3) / 1e9;
        std::printf("%-9s %6d %4d %10.2f %10.1f %7.1f%%\n", one_cta ? "1-CTA" : "split", rows, k,
                    ms * 1e3, gbs, 100 * gbs / ceiling);
      }
    }
  }
  CUDA_CHECK(cudaStreamDestroy(st));
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, logprobs = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--logprobs") {
      logprobs = true;
    } else {
      std::fprintf(stderr, "usage: bench_sampling [--quick] [--logprobs]\n");
      return 2;
    }
  }
  try {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    const kimi::cuda::SampleShape s = kimi::cuda::sample_shape(V);
    std::printf("bench_sampling: %s, %d SMs, L2 %d MB, vocab %d, %d CTAs of %d logits per row\n",
                prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, V, s.cluster, s.slice);
    const double ceiling = copy_ceiling_gbs();
    std::printf("copy ceiling (1 GiB D2D, read+write): %.1f GB/s\n", ceiling);
    if (logprobs) {
      bench_logprobs(ceiling, quick);
    } else {
      bench(ceiling, false, quick);
      bench(ceiling, true, quick);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_sampling: %s\n", e.what());
    return 1;
  }
  return 0;
}
#else
int main() {
  std::printf("bench_sampling: built without the CUDA backend; nothing to measure\n");
  return 0;
}
#endif
