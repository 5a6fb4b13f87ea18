// MLA prefill attention benchmark (H = 32 heads, absorbed MQA over the paged 576-wide latent
// cache): one sequence of T = 4096 and 16384 new tokens (no history), the prefill items on the
// CUDA-core kernel (mla_attn_kernel<4>) and on tensor cores (mla_attn_tc_kernel), time per layer
// and achieved TFLOP/s, against a cuBLASLt bf16 GEMM (8192³) measured in the same run.
// FLOPs: 2·(576 + 512) per (query row, visible key): QKᵀ over 576 and P·V over 512, causal.
// Timing: CUDA events, median over groups of launches after warm-up; random non-zero inputs;
// a scattered block table. The two kernels' u are compared (relative RMS) as a sanity check.
// Usage: bench_mla [--quick]   (--quick: T = 4096 only)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"

#if KIMI_HAVE_CUDA
#include "common.h"
#include "gemm/gemm.h"
#include "mla/mla.h"
#include "ops/cuda/device_buffer.h"
#include "bench_util.h"

namespace {

using kimi::bench::copy_ceiling_gbs;
using kimi::bench::fill_random;
using kimi::bench::graph_ms;
using kimi::bench::median_ms;

using kimi::cuda::bf16;
using kimi::cuda::DeviceBuffer;
constexpr int H = 32;

void bench_prefill(int T, int num_sms, double peak) {
  std::mt19937 rng(T);
  const int nb = (T + 63) / 64;
  std::vector<int> table(nb);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  const int cu[2] = {0, T}, ctx[1] = {T};
  const int max_partials = 8 * num_sms;
  kimi::cuda::MlaAttnPlan plan =
      kimi::cuda::make_mla_attn_plan(1, cu, ctx, H, num_sms, max_partials);
  DeviceBuffer<bf16> cache(size_t(nb) * 64 * 576), q_abs(size_t(T) * H * 512),
      q(size_t(T) * H * 192);
  DeviceBuffer<bf16> u_cc(size_t(T) * H * 512), u_tc(size_t(T) * H * 512);
  fill_random(cache, -1.f, 1.f, 3);
  fill_random(q_abs, -0.5f, 0.5f, 4);
  fill_random(q, -1.f, 1.f, 5);
  DeviceBuffer<int> dtab(nb), dsb(T), dns(T);
  DeviceBuffer<int> ditems(std::max<size_t>(1, 7 * plan.items4.size()));
  DeviceBuffer<float> parts(size_t(max_partials) * H * kimi::cuda::kMlaPartialStride);
  dtab.upload(table);
  dsb.upload(plan.split_base);
  dns.upload(plan.num_splits);
  static_assert(sizeof(kimi::cuda::MlaWorkItem) == 7 * sizeof(int));
  ditems.upload(reinterpret_cast<const int*>(plan.items4.data()), 7 * plan.items4.size());

  kimi::cuda::MlaAttnParams ap;
  ap.num_tokens = T, ap.num_heads = H, ap.q_abs = q_abs.data(), ap.q = q.data();
  ap.cache = cache.data(), ap.block_tables = dtab.data(), ap.max_blocks_per_seq = nb;
  ap.scale = 1.f / std::sqrt(192.f), ap.split_base = dsb.data(), ap.num_splits = dns.data();
  ap.partials = parts.data();
  ap.items = reinterpret_cast<const kimi::cuda::MlaWorkItem*>(ditems.data());
  ap.num_items = int(plan.items4.size());
  auto run = [&](bool tc) {
    ap.tensor_cores = tc;
    ap.u = tc ? u_tc.data() : u_cc.data();
    kimi::cuda::run_mla_attention(ap, 4, nullptr);
    if (plan.num_partials > 0) kimi::cuda::run_mla_combine(ap, nullptr);
  };
  const double flop = 2.0 * (576 + 512) * H * (double(T) * (T + 1) / 2);
  // The CUDA-core kernel is quadratic and slow: few repetitions.
  const double ms_cc = median_ms([&](int) { run(false); }, T > 4096 ? 3 : 5, 1, 1);
  const double ms_tc = median_ms([&](int) { run(true); }, 10, T > 4096 ? 1 : 3, 2);
  CUDA_CHECK(cudaDeviceSynchronize());
  // Sanity: the two kernels' u agree to bf16 rounding.
  std::vector<uint16_t> a(u_cc.size()), b(u_tc.size());
  CUDA_CHECK(cudaMemcpy(a.data(), u_cc.data(), a.size() * 2, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(b.data(), u_tc.data(), b.size() * 2, cudaMemcpyDeviceToHost));
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = kimi::bf16_to_f32(a[i]), y = kimi::bf16_to_f32(b[i]);
    num += (x - y) * (x - y);
    den += x * x;
  }
  for (int tc = 0; tc < 2; ++tc) {
    const double ms = tc ? ms_tc : ms_cc, tf = flop / (ms * 1e-3) / 1e12;
    std::printf("%-6d %-12s %5zu items %10.3f ms %9.1f TFLOP/s %7.1f%% of GEMM\n", T,
                tc ? "tensor cores" : "CUDA cores", plan.items4.size(), ms, tf, 100 * tf / peak);
  }
  std::printf("%-6d speed-up %.1fx; u rel RMS (tensor cores vs CUDA cores) %.2e; %d KV splits\n", T,
              ms_cc / ms_tc, std::sqrt(num / std::max(den, 1e-300)), plan.num_partials);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  try {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    std::printf("bench_mla: %s, %d SMs, H=%d, one sequence, prefill (no history)\n", prop.name,
                prop.multiProcessorCount, H);
    const double peak = kimi::bench::gemm_ceiling_tflops();
    std::printf("cuBLASLt bf16 GEMM 8192^3: %.1f TFLOP/s\n", peak);
    std::printf("%-6s %-12s %11s %13s %17s\n", "T", "kernel", "", "time", "");
    kimi::cuda::mla_prepare();
    for (int T : {4096, 16384}) {
      if (quick && T > 4096) break;
      bench_prefill(T, prop.multiProcessorCount, peak);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_mla: %s\n", e.what());
    return 1;
  }
  return 0;
}
#else
int main() {
  std::printf("bench_mla: built without the CUDA backend; nothing to measure\n");
  return 0;
}
#endif
