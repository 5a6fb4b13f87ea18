// CPU attention references: tokens/s of kda_chunked vs kda_recurrent (prefill, T = 4096, one
// sequence, H = 2..8) and of mla_attention_absorbed decode at context 4096. Medians over runs;
// one "perf" line per case for the perf log. Threads: OMP_NUM_THREADS (default: all cores).
//
// Usage: bench_cpu_ops [runs]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "model/config.h"
#include "ops/cpu/kda.h"
#include "ops/cpu/mla.h"

namespace {

using namespace kimi;
using namespace kimi::cpu;

std::vector<float> randn(size_t n, uint32_t seed, float stddev = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, stddev);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

template <typename F>
double median_seconds(int runs, F&& f) {
  std::vector<double> t;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void bench_kda(int T, int H, int runs) {
  constexpr int D = kKdaHeadDim;
  const size_t n = size_t(T) * H * D;
  auto q = randn(n, 1), k = randn(n, 2), v = randn(n, 3), g = randn(n, 4, 1.5f);
  auto beta = randn(size_t(T) * H, 5);
  const std::vector<float> a_log(H, 0.f), dt_bias(size_t(H) * D, -1.f);
  kda_l2norm(q.data(), T, H, 1e-6f, 1.f / std::sqrt(float(D)));
  kda_l2norm(k.data(), T, H, 1e-6f, 1.f);
  kda_gate(g.data(), beta.data(), a_log.data(), dt_bias.data(), T, H);
  std::vector<float> state(size_t(H) * D * D), out(n);
  const int cu[2] = {0, T}, slot = 0;
  KdaScanParams p;
  p.num_seqs = 1;
  p.cu_seqlens = cu;
  p.slots = &slot;
  p.num_slots = 1;
  p.num_heads = H;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.g = g.data();
  p.beta = beta.data();
  p.state = state.data();
  p.out = out.data();
  using Op = void (*)(const KdaScanParams&);
  const std::pair<const char*, Op> ops[] = {{"kda_chunked", kda_chunked},
                                            {"kda_recurrent", kda_recurrent}};
  for (auto [name, op] : ops) {
    const double s = median_seconds(runs, [&] {
      std::fill(state.begin(), state.end(), 0.f);
      op(p);
    });
    std::printf("perf cpu %-14s T=%d H=%d threads=%d: %9.0f tok/s  %8.0f tok·head/s  (%.1f ms)\n",
                name, T, H, omp_get_max_threads(), T / s, T * double(H) / s, s * 1e3);
  }
}

void bench_mla_decode(int ctx, int H, int batch, int runs) {
  constexpr int kRow = kMlaCacheDim;
  const int blocks_per_seq = (ctx + kMlaBlockSize - 1) / kMlaBlockSize;
  const int num_blocks = blocks_per_seq * batch;
  auto cache = randn(size_t(num_blocks) * kMlaBlockSize * kRow, 6);
  auto q = randn(size_t(batch) * H * kMlaQkDim, 7);
  auto kv_b = randn(size_t(H) * 256 * kMlaLatentDim, 8, 1.f / std::sqrt(512.f));
  std::vector<int> cu(batch + 1), ctx_lens(batch, ctx), tables(num_blocks);
  for (int s = 0; s <= batch; ++s) cu[s] = s;
  for (int b = 0; b < num_blocks; ++b) tables[b] = (b * 7919) % num_blocks;  // scattered
  std::vector<float> out(size_t(batch) * H * kMlaVDim);
  MlaAttnParams p;
  p.num_seqs = batch;
  p.cu_seqlens = cu.data();
  p.context_lens = ctx_lens.data();
  p.block_tables = tables.data();
  p.max_blocks_per_seq = blocks_per_seq;
  p.num_blocks = num_blocks;
  p.cache = cache.data();
  p.num_heads = H;
  p.q = q.data();
  p.kv_b = kv_b.data();
  p.scale = 1.f / std::sqrt(float(kMlaQkDim));
  p.out = out.data();
  const double s = median_seconds(runs, [&] { mla_attention_absorbed(p); });
  // Each 16-head group streams the context twice (scores, then Σ p ĉ).
  const double groups = (H + 15) / 16;
  const double bytes = double(batch) * groups * 2 * ctx * kRow * sizeof(float);
  std::printf(
      "perf cpu mla_absorbed   decode ctx=%d H=%d batch=%d threads=%d: %7.1f tok/s  (%.2f ms, "
      "%.1f GB/s cache reads)\n",
      ctx, H, batch, omp_get_max_threads(), batch / s, s * 1e3, bytes / s * 1e-9);
}

}  // namespace

int main(int argc, char** argv) {
  const int runs = argc > 1 ? std::max(1, std::atoi(argv[1])) : 5;
  for (int H : {2, 4, 8}) bench_kda(4096, H, runs);
  for (int H : {8, 32}) bench_mla_decode(4096, H, 1, runs);
  bench_mla_decode(4096, 32, 4, runs);
  return 0;
}
