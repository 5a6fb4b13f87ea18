// KDA kernel benchmark (H = 32, D = 128): the device-to-device copy ceiling measured in the same
// run, the fused decode step at B = 1, 2, 4, 8, 16, 32, 64, 256 (time per layer, state bytes/s as %
// of the ceiling), the decode with its f/z up-projections (the separate batch-2 GEMM + decode pair
// against the decode that folds them in), and prefill tokens/s at T = 4k, 32k, 128k (prep, scan,
// gated norm).
// Timing: CUDA events around groups of launches, median over many groups, after warm-up; random
// non-zero inputs; decode rotates over enough slot sets that the state is not L2-resident.
// Usage: bench_kda [--quick] [--decode-only | --prefill-only]; KIMI_BENCH_KDA_B=64 times that
// decode batch alone (for a profiler).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"

#if KIMI_HAVE_CUDA
#include "common.h"
#include "gemm/gemm.h"
#include "kda/kda.h"
#include "ops/cuda/device_buffer.h"
#include "bench_util.h"

namespace {

using kimi::bench::copy_ceiling_gbs;
using kimi::bench::fill_random;
using kimi::bench::graph_ms;
using kimi::cuda::GemmArgs;
using kimi::bench::median_ms;

using kimi::cuda::bf16;
using kimi::cuda::DeviceBuffer;
constexpr int H = 32, D = 128, HD = H * D, C = 3 * HD;

struct Weights {
  DeviceBuffer<float> conv_w{size_t(C) * 4}, A_log{H}, dt_bias{HD}, o_norm{D};
  Weights() {
    fill_random(conv_w, -0.6f, 0.6f, 1);
    fill_random(A_log, -1.f, 1.5f, 2);
    fill_random(dt_bias, -2.f, 1.f, 3);
    fill_random(o_norm, 0.5f, 1.5f, 4);
  }
  kimi::cuda::KdaWeights view() {
    return {conv_w.data(), A_log.data(), dt_bias.data(), o_norm.data()};
  }
};

void bench_decode(Weights& w, double ceiling, bool quick) {
  constexpr int kLayers = 20;  // launches per graph (the model's KDA layers)
  kimi::cuda::Gemm gemm;
  std::printf("decode+up: us per layer (graph) of the up-projection GEMM + decode pair, of the "
              "folded decode, and their difference\n");
  std::printf("\n%-10s %6s %8s %12s %12s %10s %12s %12s %10s\n", "decode", "B", "kernel",
              "us/layer", "state GB/s", "% copy", "graph us", "graph GB/s", "% copy");
  const char* only = std::getenv("KIMI_BENCH_KDA_B");
  for (int B : {1, 2, 4, 8, 16, 32, 64, 256}) {
    if (only && std::atoi(only) != B) continue;
    // Enough distinct slot sets that one set's state (B·2 MiB) is cold again when reused.
    const int sets = std::max(2, int((size_t(512) << 20) / (size_t(B) * H * D * D * 4)));
    const int num_slots = std::min(sets * B, std::max(2 * B, 256));
    const int rot = std::max(1, num_slots / B);
    std::vector<int> slots(size_t(rot) * B);
    std::mt19937 rng(B);
    for (int r = 0; r < rot; ++r) {
      std::vector<int> perm(num_slots);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      std::copy(perm.begin(), perm.begin() + B, slots.begin() + size_t(r) * B);
    }
    DeviceBuffer<int> d_slots(slots.size());
    d_slots.upload(slots);
    DeviceBuffer<bf16> qkv(size_t(B) * C), f(size_t(B) * HD), b(size_t(B) * H), z(size_t(B) * HD),
        y(size_t(B) * HD), conv(size_t(num_slots) * C * 3);
    DeviceBuffer<float> state(size_t(num_slots) * H * D * D);
    fill_random(qkv, -2.f, 2.f, 5);
    fill_random(f, -4.f, 2.f, 6);
    fill_random(b, -4.f, 4.f, 7);
    fill_random(z, -3.f, 3.f, 8);
    fill_random(conv, -2.f, 2.f, 9);
    fill_random(state, -0.5f, 0.5f, 10);
    kimi::cuda::KdaDecodeParams p;
    p.batch = B;
    p.num_heads = H;
    p.qkv = qkv.data();
    p.f = f.data();
    p.b = b.data();
    p.z = z.data();
    p.w = w.view();
    p.conv_state = conv.data();
    p.state = state.data();
    p.y = y.data();
    const double bytes = double(B) * H * D * D * 4 * 2;
    // The automatic choice, then each kernel forced: the cluster kernel (32 columns per CTA;
    // 32smem: S staged in shared memory), the persistent kernel.
    struct Variant {
      const char* name;
      int smem_state, persistent;
    };
    for (const Variant& v : {Variant{"auto", -1, -1}, Variant{"32", 0, 0}, Variant{"32smem", 1, 0},
                             Variant{"persist", -1, 1}}) {
      p.smem_state = v.smem_state;
      p.persistent = v.persistent;
      const double ms = median_ms(
          [&](int i) {
            p.slots = d_slots.data() + size_t(i % rot) * B;
            kimi::cuda::run_kda_decode(p, nullptr);
          },
          quick ? 10 : 50, 20);
      // The same launches replayed from a CUDA graph (how decode steps run): no launch gaps.
      // Consecutive launches here stand for consecutive layers (separate pools in the model); as
      // they share one pool and the slot sets overlap, a launch may read a state before its
      // predecessor has written it (the kernels read the state before their PDL wait:
      // kda_decode.cuh). That changes values, which nobody checks here, not the traffic.
      cudaStream_t st;
      CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      const int per_graph = 20;
      CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
      for (int i = 0; i < per_graph; ++i) {
        p.slots = d_slots.data() + size_t(i % rot) * B;
        kimi::cuda::run_kda_decode(p, st);
      }
      CUDA_CHECK(cudaStreamEndCapture(st, &graph));
      CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
      const double gms = median_ms([&](int) { CUDA_CHECK(cudaGraphLaunch(exec, st)); },
                                   quick ? 10 : 30, 1, 3, st) /
                         per_graph;
      CUDA_CHECK(cudaStreamSynchronize(st));
      CUDA_CHECK(cudaGraphExecDestroy(exec));
      CUDA_CHECK(cudaGraphDestroy(graph));
      CUDA_CHECK(cudaStreamDestroy(st));
      const double gbs = bytes / (ms * 1e-3) / 1e9, ggbs = bytes / (gms * 1e-3) / 1e9;
      std::printf("%-10s %6d %8s %12.2f %12.1f %9.1f%% %12.2f %12.1f %9.1f%%\n", "decode", B,
                  v.name, ms * 1e3, gbs, 100 * gbs / ceiling, gms * 1e3, ggbs,
                  100 * ggbs / ceiling);
    }

    // With the f/z up-projections, graph replay as the model runs them: "pair" = the batch-2
    // GEMM (the model's GemmArgs: small-M kernel up to B = 8, cuBLASLt above) then the decode on
    // f and z; "folded" = one decode launch that forms f and z from the low-rank row. Each of the
    // graph's launches (a layer) has its own up weights, so they come from DRAM as in the model.
    DeviceBuffer<bf16> up(size_t(kLayers) * 2 * HD * D), low(size_t(B) * 2 * D);
    DeviceBuffer<bf16> fz(size_t(2) * B * HD);  // the GEMM's f, then z
    fill_random(up, -0.4f, 0.4f, 11);
    fill_random(low, -1.f, 1.f, 12);
    cudaStream_t st;
    CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    auto launch = [&](int i, cudaStream_t s, bool fold) {
      const bf16* w = up.data() + size_t(i % kLayers) * 2 * HD * D;
      p.slots = d_slots.data() + size_t(i % rot) * B;
      if (fold) {
        p.f = p.z = nullptr;
        p.fg_low = low.data();
        p.fg_b = w;
      } else {
        GemmArgs ga;
        ga.M = B;
        ga.N = HD;
        ga.K = D;
        ga.A = low.data();
        ga.lda = 2 * D;
        ga.stride_a = D;
        ga.B = w;
        ga.ldb = D;
        ga.stride_b = int64_t(HD) * D;
        ga.C = fz.data();
        ga.ldc = HD;
        ga.stride_c = int64_t(B) * HD;
        ga.batch = 2;
        gemm.run(ga, s);
        p.fg_low = p.fg_b = nullptr;
        p.f = fz.data();
        p.z = fz.data() + size_t(B) * HD;
      }
      kimi::cuda::run_kda_decode(p, s);
    };
    for (const Variant& v : {Variant{"auto", -1, -1}, Variant{"32", 0, 0}, Variant{"32smem", 1, 0},
                             Variant{"persist", -1, 1}}) {
      p.smem_state = v.smem_state;
      p.persistent = v.persistent;
      double us[2];
      for (int fold = 0; fold < 2; ++fold) {
        launch(0, st, fold);  // plans and attributes outside the capture
        CUDA_CHECK(cudaStreamSynchronize(st));
        us[fold] = 1e3 * graph_ms([&](int i, cudaStream_t s) { launch(i, s, fold); }, kLayers,
                                  quick ? 10 : 30, st);
      }
      std::printf("%-10s %6d %8s %12.2f %12.2f %+11.2f %14s\n", "decode+up", B, v.name, us[0],
                  us[1], us[1] - us[0],
                  kimi::cuda::kda_decode_folds_up(B, H) ? "folds (auto)" : "pair (auto)");
    }
    p.fg_low = p.fg_b = nullptr;
    p.f = f.data();
    p.z = z.data();
    CUDA_CHECK(cudaStreamDestroy(st));
  }
}

void bench_prefill(Weights& w, double ceiling, bool quick) {
  std::printf("\n%-10s %8s %10s %10s %10s %10s %14s %14s\n", "prefill", "T", "prep ms", "scan ms",
              "norm ms", "total ms", "scan Mtok/s", "layer Mtok/s");
  for (int T : {4096, 32768, 131072}) {
    if (quick && T > 32768) continue;
    std::vector<int> cu = {0, T}, slots = {1};
    DeviceBuffer<int> d_cu(2), d_slots(1);
    d_cu.upload(cu);
    d_slots.upload(slots);
    DeviceBuffer<bf16> qkv(size_t(T) * C), f(size_t(T) * HD), b(size_t(T) * H), z(size_t(T) * HD),
        q(size_t(T) * HD), k(size_t(T) * HD), v(size_t(T) * HD), o(size_t(T) * HD),
        y(size_t(T) * HD), conv(size_t(2) * C * 3);
    DeviceBuffer<float> state(size_t(2) * H * D * D);
    fill_random(qkv, -2.f, 2.f, 11);
    fill_random(f, -4.f, 2.f, 12);
    fill_random(b, -4.f, 4.f, 13);
    fill_random(z, -3.f, 3.f, 14);
    fill_random(conv, -2.f, 2.f, 15);
    fill_random(state, -0.5f, 0.5f, 16);
    kimi::cuda::KdaPrepParams pp;
    pp.num_seqs = 1;
    pp.num_tokens = T;
    pp.num_heads = H;
    pp.cu_seqlens = d_cu.data();
    pp.slots = d_slots.data();
    pp.qkv = qkv.data();
    pp.f = f.data();
    pp.b = b.data();
    pp.w = w.view();
    pp.conv_state = conv.data();
    pp.q = q.data();
    pp.k = k.data();
    pp.v = v.data();
    const kimi::cuda::KdaScanParams sp = kimi::cuda::kda_scan_after_prep(pp, state.data(), o.data());
    kimi::cuda::KdaGatedNormParams np;
    np.num_tokens = T;
    np.num_heads = H;
    np.o = o.data();
    np.z = z.data();
    np.weight = w.o_norm.data();
    np.y = y.data();
    const int reps = quick ? 3 : (T >= 131072 ? 5 : 10);
    const double prep = median_ms([&](int) { kimi::cuda::run_kda_prep(pp, nullptr); }, reps, 1, 1);
    // The prep's bytes: q|k|v projections in, q, k, v out (bf16); the conv state is negligible.
    const double prep_gbs = 2.0 * T * C * 2 / (prep * 1e-3) / 1e9;
    std::printf("%-10s %8d   prep %.1f GB/s = %.1f%% of copy\n", "  prep", T, prep_gbs,
                100 * prep_gbs / ceiling);
    const double norm =
        median_ms([&](int) { kimi::cuda::run_kda_gated_rmsnorm(np, nullptr); }, reps, 1, 1);
    const kimi::cuda::KdaChunkPlan plan = kimi::cuda::make_kda_chunk_plan(cu.data(), 1);
    DeviceBuffer<int> cs(plan.chunk_seq.size()), cst(plan.chunk_start.size()),
        sf(plan.seq_first_chunk.size());
    cs.upload(plan.chunk_seq);
    cst.upload(plan.chunk_start);
    sf.upload(plan.seq_first_chunk);
    const size_t wsb = kimi::cuda::kda_chunked_workspace_bytes(plan.num_chunks, H);
    DeviceBuffer<unsigned char> ws(std::max<size_t>(wsb, 1));
    kimi::cuda::KdaChunkedArgs a{plan.num_chunks, cs.data(), cst.data(), sf.data(), ws.data(), wsb};
    const double scan =
        median_ms([&](int) { kimi::cuda::run_kda_chunked(sp, a, nullptr); }, reps, 1, 1);
    const char* name = "chunked";
    a.stages = 1;
    const double intra =
        median_ms([&](int) { kimi::cuda::run_kda_chunked(sp, a, nullptr); }, reps, 1, 1);
    a.stages = 2;
    const double inter =
        median_ms([&](int) { kimi::cuda::run_kda_chunked(sp, a, nullptr); }, reps, 1, 1);
    a.stages = 3;
    std::printf("%-10s %8d   intra %.3f ms, inter %.3f ms\n", "  split", T, intra, inter);
    const double total = prep + scan + norm;
    std::printf("%-10s %8d %10.3f %10.3f %10.3f %10.3f %14.2f %14.2f\n", name, T, prep, scan, norm,
                total, T / (scan * 1e-3) / 1e6, T / (total * 1e-3) / 1e6);
  }
  // The token-by-token scan at 4k for comparison.
  {
    const int T = 4096;
    std::vector<int> cu = {0, T}, slots = {0};
    DeviceBuffer<int> d_cu(2), d_slots(1);
    d_cu.upload(cu);
    d_slots.upload(slots);
    DeviceBuffer<bf16> q(size_t(T) * HD), k(size_t(T) * HD), v(size_t(T) * HD), o(size_t(T) * HD),
        f(size_t(T) * HD), b(size_t(T) * H);
    DeviceBuffer<float> state(size_t(H) * D * D);
    fill_random(q, -0.09f, 0.09f, 21);
    fill_random(k, -0.09f, 0.09f, 22);
    fill_random(v, -2.f, 2.f, 23);
    fill_random(f, -4.f, 2.f, 24);
    fill_random(b, -4.f, 4.f, 25);
    fill_random(state, -0.5f, 0.5f, 26);
    kimi::cuda::KdaScanParams sp;
    sp.num_seqs = 1;
    sp.num_tokens = T;
    sp.num_heads = H;
    sp.cu_seqlens = d_cu.data();
    sp.slots = d_slots.data();
    sp.q = q.data();
    sp.k = k.data();
    sp.v = v.data();
    sp.f = f.data();
    sp.b = b.data();
    sp.w = w.view();
    sp.state = state.data();
    sp.o = o.data();
    const double scan = median_ms([&](int) { kimi::cuda::run_kda_scan_recurrent(sp, nullptr); },
                                  quick ? 3 : 5, 1, 1);
    std::printf("%-10s %8d %10s %10.3f %10s %10s %14.2f\n", "recurrent", T, "-", scan, "-", "-",
                T / (scan * 1e-3) / 1e6);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, decode_only = false, prefill_only = false;
  for (int i = 1; i < argc; ++i) {
    quick |= std::string(argv[i]) == "--quick";
    decode_only |= std::string(argv[i]) == "--decode-only";
    prefill_only |= std::string(argv[i]) == "--prefill-only";
  }
  try {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    int mem_clock_khz = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&mem_clock_khz, cudaDevAttrMemoryClockRate, dev));
    std::printf("bench_kda: %s, %d SMs, L2 %d MB, H=%d D=%d\n", prop.name, prop.multiProcessorCount,
                prop.l2CacheSize >> 20, H, D);
    const double ceiling = copy_ceiling_gbs();
    std::printf("copy ceiling (1 GiB D2D, read+write): %.1f GB/s\n", ceiling);
    Weights w;
    if (!prefill_only) bench_decode(w, ceiling, quick);
    if (!decode_only) bench_prefill(w, ceiling, quick);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_kda: %s\n", e.what());
    return 1;
  }
  return 0;
}
#else
int main() {
  std::printf("bench_kda: built without the CUDA backend; nothing to measure\n");
  return 0;
}
#endif
