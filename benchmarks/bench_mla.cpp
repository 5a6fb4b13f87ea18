// MLA attention benchmark (H = 32 heads, absorbed MQA over the paged 576-wide latent cache).
// Decode: one new token per sequence, batch B at context L, through the plan the model's CUDA
// graphs use (make_mla_decode_plan) with the combine, replayed from a CUDA graph: the CUDA-core
// kernel (mla_attn_kernel<1>, 8 heads per CTA) against the tensor-core decode kernel
// (mla_decode_kernel: wgmma + TMA, all heads per CTA); time per layer and cache bytes read
// (B·L·1152) per second as a fraction of the device-to-device copy rate measured in the same run.
// Then the tensor-core kernel on the fp8 cache (--kv-cache-dtype fp8: 656-byte records, B·L·656
// bytes read) at the same shape, and its time against the bf16 one; both caches are written from
// the same random latents by the cache-write kernel, so their u differ by the fp8 rounding alone.
// Prefill: one sequence of T = 4096 and 16384 new tokens with no history and with 112k positions
// before them: the absorbed chain (q_abs GEMM, prefill items on mla_attn_tc_kernel, or on the
// CUDA-core mla_attn_kernel<4> without history, W_UV GEMM) against the expanded prefill
// (mla_prefill.cuh: gather, kv_b GEMM, flash attention per 16k-position round), time per layer
// and achieved TFLOP/s against a cuBLASLt bf16 GEMM (8192³) measured in the same run; then the
// crossover at few new tokens. FLOPs per (query, visible key, head): absorbed 2·(576 + 512),
// expanded 2·(192 + 128); the expansion (gather + kv_b GEMMs) is in the expanded time but not in
// its FLOPs, and is timed apart: "attention alone" is the rate without it.
// Timing: CUDA events, median over groups of launches after warm-up; random non-zero inputs;
// scattered block tables. The two kernels' u are compared (relative RMS) as a sanity check.
// Layer (--layer): one whole MLA layer of a decode step at full size (hidden 2304, H = 32, batch
// B, context L, the decode plan), from the normed input row to the o_proj residual update: the
// GEMM chain (q and kv_a projections, cache write, q_abs GEMM, attention, combine, W_UV GEMM,
// o_proj: 8 launches) against the fused chain of mla_layer.h (q | kv_a grouped, q prep,
// attention, uv, o_proj: 5 launches), each replayed from a CUDA graph over 3 weight sets in
// turn (60 MB each: no replay finds the previous one's weights in L2); time per layer and the
// bytes a layer must move (W_q, kv_a, kv_b, W_o and the cache rows read) against the copy
// ceiling; then at B = 1, 4k each chain cut after each launch (one graph per prefix): the
// increments place the time per launch.
// Usage: bench_mla [--quick] [--decode | --prefill | --layer]
//   --quick: decode B = 1 at 4k and 32k, B = 64 at 4k; prefill T = 4096 without history only.
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
#include "mla/mla_layer.h"
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

double rel_rms(const DeviceBuffer<bf16>& a, const DeviceBuffer<bf16>& b) {
  std::vector<uint16_t> x(a.size()), y(b.size());
  CUDA_CHECK(cudaMemcpy(x.data(), a.data(), x.size() * 2, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(y.data(), b.data(), y.size() * 2, cudaMemcpyDeviceToHost));
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double u = kimi::bf16_to_f32(x[i]), v = kimi::bf16_to_f32(y[i]);
    num += (u - v) * (u - v);
    den += u * u;
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Both caches of B sequences of context L written by run_mla_cache_write from the same random
// latents (a chunk of positions of one sequence per launch, unit norm weights).
void write_caches(int B, int L, int per_seq, const DeviceBuffer<int>& dtab, bf16* cache,
                  uint8_t* cache8) {
  const int chunk = std::min(L, 65536);
  DeviceBuffer<float> latent(size_t(chunk) * 576), w(512);
  fill_random(latent, -2.f, 2.f, 6);
  const std::vector<float> ones(512, 1.f);
  w.upload(ones);
  DeviceBuffer<int> cu(2), ctx(1);
  for (int s = 0; s < B; ++s)
    for (int p0 = 0; p0 < L; p0 += chunk) {
      const int n = std::min(chunk, L - p0);
      cu.upload(std::vector<int>{0, n});
      ctx.upload(std::vector<int>{p0 + n});
      kimi::cuda::MlaCacheWriteParams p;
      p.num_seqs = 1, p.num_tokens = n, p.cu_seqlens = cu.data(), p.context_lens = ctx.data();
      p.block_tables = dtab.data() + size_t(s) * per_seq, p.max_blocks_per_seq = per_seq;
      p.latent = latent.data(), p.norm_weight = w.data();
      for (int f = 0; f < 2; ++f) {
        p.cache = f ? nullptr : cache;
        p.cache8 = f ? cache8 : nullptr;
        kimi::cuda::run_mla_cache_write(p, nullptr);
      }
    }
  CUDA_CHECK(cudaDeviceSynchronize());
}

// B sequences of context L decoding one token each: both kernels, graph-replayed with the decode
// plan and the combine; then the tensor-core kernel on the fp8 cache.
void bench_decode(int B, int L, int num_sms, double copy_gbs) {
  std::mt19937 rng(B * 7919 + L);
  const int per_seq = (L + 63) / 64, nb = B * per_seq;
  std::vector<int> ids(nb), table(size_t(B) * per_seq), ctx(B, L);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  for (size_t i = 0; i < table.size(); ++i) table[i] = ids[i];
  const int max_partials = 8 * num_sms;
  DeviceBuffer<bf16> cache(size_t(nb) * 64 * 576), q_abs(size_t(B) * H * 512),
      q(size_t(B) * H * 192);
  DeviceBuffer<uint8_t> cache8(size_t(nb) * 64 * kimi::cuda::kMlaFp8Row);
  DeviceBuffer<bf16> u_cc(size_t(B) * H * 512), u_tc(size_t(B) * H * 512),
      u_f8(size_t(B) * H * 512);
  fill_random(q_abs, -0.5f, 0.5f, 4);
  fill_random(q, -1.f, 1.f, 5);
  DeviceBuffer<int> dtab(table.size());
  DeviceBuffer<float> parts(size_t(max_partials) * H * kimi::cuda::kMlaPartialStride);
  dtab.upload(table);
  write_caches(B, L, per_seq, dtab, cache.data(), cache8.data());
  const double bytes = double(B) * L * 576 * 2, bytes8 = double(B) * L * kimi::cuda::kMlaFp8Row;
  cudaStream_t st;
  CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  // 0: CUDA cores; 1: tensor cores; 2: tensor cores on the fp8 cache.
  constexpr int num_paths = 3;
  double ms[num_paths] = {0, 0, 0}, ms_attn_tc = 0.0;
  int splits[num_paths] = {0, 0, 0};
  const char* name[num_paths] = {"CUDA cores", "tensor cores", "tc fp8"};
  for (int path = 0; path < num_paths; ++path) {
    const int tc = path > 0;
    const kimi::cuda::MlaAttnPlan plan =
        kimi::cuda::make_mla_decode_plan(B, ctx.data(), H, num_sms, max_partials, tc == 1);
    splits[path] = std::max(1, plan.num_splits[0]);
    DeviceBuffer<int> ditems(7 * plan.items1.size()), dsb(B), dns(B);
    ditems.upload(reinterpret_cast<const int*>(plan.items1.data()), 7 * plan.items1.size());
    dsb.upload(plan.split_base);
    dns.upload(plan.num_splits);
    kimi::cuda::MlaAttnParams ap;
    ap.num_tokens = B, ap.num_heads = H, ap.q_abs = q_abs.data(), ap.q = q.data();
    ap.cache = path == 2 ? nullptr : cache.data();
    ap.cache8 = path == 2 ? cache8.data() : nullptr;
    ap.block_tables = dtab.data(), ap.max_blocks_per_seq = per_seq;
    ap.scale = 1.f / std::sqrt(192.f), ap.split_base = dsb.data(), ap.num_splits = dns.data();
    ap.partials = parts.data(), ap.tensor_cores = tc == 1, ap.num_blocks = nb;
    ap.u = path == 0 ? u_cc.data() : path == 1 ? u_tc.data() : u_f8.data();
    ap.items = reinterpret_cast<const kimi::cuda::MlaWorkItem*>(ditems.data());
    ap.num_items = int(plan.items1.size());
    auto step = [&](int, cudaStream_t s) {
      kimi::cuda::run_mla_attention(ap, 1, s);
      if (plan.num_partials > 0) kimi::cuda::run_mla_combine(ap, s);
    };
    // About 20 ms of work per graph; the CUDA-core kernel moves ~0.1-0.3 TB/s.
    const double est_ms = (path == 2 ? bytes8 : bytes) / ((tc ? 3e12 : 1.5e11) * 1e-3);
    const int per_graph = std::clamp(int(20.0 / std::max(est_ms, 1e-3)), 1, 200);
    ms[path] = kimi::bench::graph_ms(step, per_graph, tc ? 9 : 3, st);
    if (path == 1 && plan.num_partials > 0) {  // the combine's share of the tensor-core step
      auto attn_only = [&](int, cudaStream_t s) { kimi::cuda::run_mla_attention(ap, 1, s); };
      ms_attn_tc = kimi::bench::graph_ms(attn_only, per_graph, 9, st);
    }
  }
  CUDA_CHECK(cudaStreamDestroy(st));
  for (int path = 0; path < num_paths; ++path) {
    const double gbs = (path == 2 ? bytes8 : bytes) / (ms[path] * 1e-3) / 1e9;
    std::printf("%-4d %-8d %-12s %4d splits %10.1f us %8.1f GB/s %6.1f%% of copy\n", B, L,
                name[path], splits[path], ms[path] * 1e3, gbs, 100 * gbs / copy_gbs);
  }
  std::printf("%-4d %-8d speed-up %.1fx; combine %.1f us of the tensor-core step; u rel RMS "
              "vs CUDA cores %.2e\n",
              B, L, ms[0] / ms[1], ms_attn_tc > 0 ? (ms[1] - ms_attn_tc) * 1e3 : 0.0,
              rel_rms(u_cc, u_tc));
  std::printf(
      "%-4d %-8d fp8 cache: %.2fx the bf16 tensor-core step (bytes 0.57x); u rel RMS vs "
      "bf16 cache %.2e\n",
      B, L, ms[1] / ms[2], rel_rms(u_tc, u_f8));
}

// One MLA layer at full size: B sequences at context L (the new token's row included), decode
// plan, bf16 or fp8 cache. Prints both chains' times; prefixes: the per-launch increments.
void bench_layer(int B, int L, bool fp8, bool prefixes, int num_sms, double copy_gbs) {
  using kimi::cuda::GemmArgs;
  using kimi::cuda::GemmOut;
  constexpr int kHid = 2304, kSets = 3;
  std::mt19937 rng(B * 31 + L);
  const int per_seq = (L + 63) / 64, nb = B * per_seq;
  std::vector<int> ids(nb), table(size_t(B) * per_seq), ctx(B, L), cu(B + 1);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  for (size_t i = 0; i < table.size(); ++i) table[i] = ids[i];
  std::iota(cu.begin(), cu.end(), 0);
  const int max_partials = 8 * num_sms;
  struct Weights {
    DeviceBuffer<bf16> q{size_t(H) * 192 * kHid}, kv_a{size_t(576) * kHid},
        kv_b{size_t(H) * 256 * 512}, o{size_t(kHid) * H * 128};
    DeviceBuffer<float> norm{512};
  };
  std::vector<Weights> w(kSets);
  for (int i = 0; i < kSets; ++i) {
    fill_random(w[i].q, -0.02f, 0.02f, 10 + i);
    fill_random(w[i].kv_a, -0.02f, 0.02f, 20 + i);
    fill_random(w[i].kv_b, -0.05f, 0.05f, 30 + i);
    fill_random(w[i].o, -0.02f, 0.02f, 40 + i);
    fill_random(w[i].norm, 0.5f, 1.5f, 50 + i);
  }
  DeviceBuffer<bf16> a(size_t(B) * kHid), mq(size_t(B) * H * 192), q_abs(size_t(B) * H * 512),
      u(size_t(B) * H * 512), attn(size_t(B) * H * 128), cache(size_t(nb) * 64 * 576);
  DeviceBuffer<uint8_t> cache8(size_t(nb) * 64 * kimi::cuda::kMlaFp8Row);
  DeviceBuffer<float> mq32(size_t(B) * H * 192), latent(size_t(B) * 576), x(size_t(B) * kHid),
      parts(size_t(max_partials) * H * kimi::cuda::kMlaPartialStride);
  fill_random(a, -1.f, 1.f, 60);
  fill_random(x, -1.f, 1.f, 61);
  DeviceBuffer<int> dtab(table.size()), dcu(B + 1), dctx(B);
  dtab.upload(table);
  dcu.upload(cu);
  dctx.upload(ctx);
  write_caches(B, L, per_seq, dtab, cache.data(), cache8.data());
  const kimi::cuda::MlaAttnPlan plan =
      kimi::cuda::make_mla_decode_plan(B, ctx.data(), H, num_sms, max_partials, true);
  DeviceBuffer<int> ditems(7 * plan.items1.size()), dsb(B), dns(B);
  ditems.upload(reinterpret_cast<const int*>(plan.items1.data()), 7 * plan.items1.size());
  dsb.upload(plan.split_base);
  dns.upload(plan.num_splits);
  kimi::cuda::Gemm gemm;
  kimi::cuda::MlaCacheWriteParams wp;
  wp.num_seqs = B, wp.num_tokens = B, wp.cu_seqlens = dcu.data(), wp.context_lens = dctx.data();
  wp.block_tables = dtab.data(), wp.max_blocks_per_seq = per_seq, wp.latent = latent.data();
  wp.cache = fp8 ? nullptr : cache.data();
  wp.cache8 = fp8 ? cache8.data() : nullptr;
  kimi::cuda::MlaAttnParams ap;
  ap.num_tokens = B, ap.num_heads = H, ap.q_abs = q_abs.data(), ap.q = mq.data();
  ap.cache = fp8 ? nullptr : cache.data();
  ap.cache8 = fp8 ? cache8.data() : nullptr;
  ap.num_blocks = nb, ap.block_tables = dtab.data(), ap.max_blocks_per_seq = per_seq;
  ap.scale = 1.f / std::sqrt(192.f), ap.split_base = dsb.data(), ap.num_splits = dns.data();
  ap.partials = parts.data(), ap.u = u.data(), ap.tensor_cores = true;
  ap.items = reinterpret_cast<const kimi::cuda::MlaWorkItem*>(ditems.data());
  ap.num_items = int(plan.items1.size());
  // The GEMM chain (cuda_forward.cpp before mla_layer.h): launches 1..upto of its 8.
  auto old_chain = [&](int i, cudaStream_t s, int upto) {
    const Weights& W = w[i % kSets];
    int n = 0;
    if (++n <= upto) gemm.linear(a.data(), W.q.data(), mq.data(), B, H * 192, kHid, GemmOut::kBF16, s);
    if (++n <= upto)
      gemm.linear(a.data(), W.kv_a.data(), latent.data(), B, 576, kHid, GemmOut::kF32, s);
    kimi::cuda::MlaCacheWriteParams c = wp;
    c.norm_weight = W.norm.data();
    if (++n <= upto) kimi::cuda::run_mla_cache_write(c, s);
    GemmArgs g1;
    g1.M = B, g1.N = 512, g1.K = 128, g1.A = mq.data(), g1.lda = H * 192, g1.stride_a = 192;
    g1.B = W.kv_b.data(), g1.ldb = 512, g1.stride_b = 256 * 512, g1.b_kn = true;
    g1.C = q_abs.data(), g1.ldc = H * 512, g1.stride_c = 512, g1.batch = H;
    if (++n <= upto) gemm.run(g1, s);
    if (++n <= upto) kimi::cuda::run_mla_attention(ap, 1, s);
    if (++n <= upto && plan.num_partials > 0) kimi::cuda::run_mla_combine(ap, s);
    GemmArgs g2;
    g2.M = B, g2.N = 128, g2.K = 512, g2.A = u.data(), g2.lda = H * 512, g2.stride_a = 512;
    g2.B = W.kv_b.data() + 128 * 512, g2.ldb = 512, g2.stride_b = 256 * 512;
    g2.C = attn.data(), g2.ldc = H * 128, g2.stride_c = 128, g2.batch = H;
    if (++n <= upto) gemm.run(g2, s);
    if (++n <= upto)
      gemm.linear(attn.data(), W.o.data(), x.data(), B, kHid, H * 128, GemmOut::kF32, s, 1.f);
  };
  // The fused chain (mla_layer.h): launches 1..upto of its 5.
  auto fused_chain = [&](int i, cudaStream_t s, int upto) {
    const Weights& W = w[i % kSets];
    int n = 0;
    const GemmArgs proj[] = {
        kimi::cuda::Gemm::linear_args(a.data(), W.q.data(), mq32.data(), B, H * 192, kHid, GemmOut::kF32),
        kimi::cuda::Gemm::linear_args(a.data(), W.kv_a.data(), latent.data(), B, 576, kHid, GemmOut::kF32)};
    if (++n <= upto) gemm.run_group(proj, 2, s);
    kimi::cuda::MlaQPrepParams qp;
    qp.num_tokens = B, qp.num_heads = H, qp.q32 = mq32.data(), qp.kv_b = W.kv_b.data();
    qp.q = mq.data(), qp.q_abs = q_abs.data(), qp.cache = wp;
    qp.cache.norm_weight = W.norm.data();
    if (++n <= upto) kimi::cuda::run_mla_q_prep(qp, s);
    if (++n <= upto) kimi::cuda::run_mla_attention(ap, 1, s);
    kimi::cuda::MlaUvParams up;
    up.num_tokens = B, up.num_heads = H, up.split_base = dsb.data(), up.num_splits = dns.data();
    up.partials = parts.data(), up.u = u.data(), up.kv_b = W.kv_b.data(), up.out = attn.data();
    if (++n <= upto) kimi::cuda::run_mla_uv(up, s);
    if (++n <= upto)
      gemm.linear(attn.data(), W.o.data(), x.data(), B, kHid, H * 128, GemmOut::kF32, s, 1.f);
  };
  constexpr int kChains = 2;
  auto run_chain = [&](int c, int i, cudaStream_t s, int upto) {
    if (c == 0) old_chain(i, s, upto);
    else fused_chain(i, s, upto);
  };
  const int launches[kChains] = {8, 5};
  const char* name[kChains] = {"GEMM chain (8)", "fused chain (5)"};
  cudaStream_t st;
  CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  auto time_chain = [&](int c, int upto) {
    for (int i = 0; i < kSets; ++i) run_chain(c, i, st, upto);  // plans made outside the capture
    CUDA_CHECK(cudaStreamSynchronize(st));
    return 1e3 * kimi::bench::graph_ms([&](int i, cudaStream_t s) { run_chain(c, i, s, upto); }, 30,
                                       15, st);
  };
  const double weight_bytes = 2.0 * (double(H) * 192 * kHid + 576.0 * kHid + H * 256.0 * 512 +
                                     double(kHid) * H * 128),
               cache_bytes = double(B) * L * (fp8 ? kimi::cuda::kMlaFp8Row : 1152),
               bytes = weight_bytes + cache_bytes, floor_us = bytes / (copy_gbs * 1e3);
  double us[kChains][2];
  for (int rep = 0; rep < 2; ++rep)  // alternated: each chain, then each again
    for (int c = 0; c < kChains; ++c) us[c][rep] = time_chain(c, launches[c]);
  // The chains' outputs from the same inputs: attn (rel RMS) and the residual x (fp32, reset).
  DeviceBuffer<bf16> attn_ref(attn.size());
  std::vector<float> x0(x.size()), x_ref(x.size()), x_got(x.size());
  double attn_err[kChains] = {0, 0}, x_err[kChains] = {0, 0};
  CUDA_CHECK(cudaMemcpy(x0.data(), x.data(), x.size() * 4, cudaMemcpyDeviceToHost));
  for (int c = 0; c < kChains; ++c) {
    x.upload(x0);
    run_chain(c, 0, st, launches[c]);
    CUDA_CHECK(cudaStreamSynchronize(st));
    std::vector<float>& dst = c == 0 ? x_ref : x_got;
    CUDA_CHECK(cudaMemcpy(dst.data(), x.data(), x.size() * 4, cudaMemcpyDeviceToHost));
    if (c == 0) {
      CUDA_CHECK(cudaMemcpy(attn_ref.data(), attn.data(), attn.size() * 2, cudaMemcpyDeviceToDevice));
      continue;
    }
    attn_err[c] = rel_rms(attn_ref, attn);
    double num = 0, den = 0;
    for (size_t k = 0; k < x0.size(); ++k) {
      num += double(x_got[k] - x_ref[k]) * (x_got[k] - x_ref[k]);
      den += double(x_ref[k] - x0[k]) * (x_ref[k] - x0[k]);
    }
    x_err[c] = std::sqrt(num / std::max(den, 1e-300));
  }
  for (int c = 0; c < kChains; ++c)
    std::printf("%-4d %-8d %-5s %-19s %8.1f / %8.1f us  bytes %6.1f MB (floor %5.1f us) %5.1f%% of copy\n",
                B, L, fp8 ? "fp8" : "bf16", name[c], us[c][0], us[c][1], bytes / 1e6, floor_us,
                100 * floor_us / std::min(us[c][0], us[c][1]));
  for (int c = 1; c < kChains; ++c)
    std::printf("%-4d %-8d %-5s %s: saved %.1f us per layer (best of 2 each); vs the GEMM chain: attn "
                "rel RMS %.2e, o_proj update rel RMS %.2e\n",
                B, L, fp8 ? "fp8" : "bf16", name[c],
                std::min(us[0][0], us[0][1]) - std::min(us[c][0], us[c][1]), attn_err[c], x_err[c]);
  if (prefixes) {
    const char* names[kChains][8] = {
        {"q gemv", "kv_a gemv", "cache write", "q_abs (cuBLASLt)", "attention", "combine",
         "W_UV (cuBLASLt)", "o_proj gemv"},
        {"q|kv_a grouped gemv", "q prep (q_abs+cache)", "attention", "uv (merge+W_UV)", "o_proj gemv"}};
    for (int c = 0; c < kChains; ++c) {
      double prev = 0;
      std::printf("  %s, cut after each launch (us; increment):\n", name[c]);
      for (int k = 1; k <= launches[c]; ++k) {
        const double t = time_chain(c, k);
        std::printf("    %-22s %8.2f  %+7.2f\n", names[c][k - 1], t, t - prev);
        prev = t;
      }
    }
  }
  CUDA_CHECK(cudaStreamDestroy(st));
}

// One sequence of T new tokens after `hist` positions of history (context L = hist + T), the
// expanded prefill (gather + kv_b GEMM + flash attention per round of kPiece positions) against
// the absorbed chain the model ran before (q_abs GEMM, tensor-core attention, W_UV GEMM); the
// CUDA-core kernel too where cuda_cores is set. Returns {absorbed ms, expanded ms}.
constexpr int kPiece = 16384;  // the model's workspace rows (cuda_model.cpp)
struct PrefillTimes {
  double absorbed = 0, expanded = 0;
};
PrefillTimes bench_prefill(int T, int hist, int num_sms, double peak, bool cuda_cores, bool print) {
  std::mt19937 rng(T + hist);
  const int L = hist + T, nb = (L + 63) / 64;
  std::vector<int> table(nb);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  const int cu[2] = {0, T}, ctx[1] = {L};
  const int max_partials = 8 * num_sms;
  kimi::cuda::MlaAttnPlan plan =
      kimi::cuda::make_mla_attn_plan(1, cu, ctx, H, num_sms, max_partials, true);
  const kimi::cuda::MlaPrefillPlan pplan =
      kimi::cuda::make_mla_prefill_plan(1, cu, ctx, nullptr, kPiece);
  kimi::cuda::MlaPrefillPlan expand_only = pplan;  // the gather + GEMM of every round alone
  for (auto& r : expand_only.rounds) r.item_end = r.item_begin;
  DeviceBuffer<bf16> cache(size_t(nb) * 64 * 576), q_abs(size_t(T) * H * 512),
      q(size_t(T) * H * 192), kv_b(size_t(H) * 256 * 512);
  DeviceBuffer<bf16> u_cc(size_t(T) * H * 512), u_tc(size_t(T) * H * 512);
  DeviceBuffer<bf16> o_abs(size_t(T) * H * 128), o_exp(size_t(T) * H * 128);
  fill_random(cache, -1.f, 1.f, 3);
  fill_random(q, -1.f, 1.f, 5);
  fill_random(kv_b, -0.25f, 0.25f, 6);
  DeviceBuffer<int> dtab(nb), dsb(T), dns(T);
  DeviceBuffer<int> ditems(std::max<size_t>(1, 7 * plan.items4.size()));
  DeviceBuffer<int> dsegs(4 * pplan.segs.size()), dpitems(7 * pplan.items.size());
  DeviceBuffer<float> parts(size_t(max_partials) * H * kimi::cuda::kMlaPartialStride);
  DeviceBuffer<float> state(size_t(T) * H * kimi::cuda::kMlaStateStride);
  DeviceBuffer<uint8_t> ws(kimi::cuda::mla_prefill_workspace_bytes(kPiece, H));
  dtab.upload(table);
  dsb.upload(plan.split_base);
  dns.upload(plan.num_splits);
  static_assert(sizeof(kimi::cuda::MlaWorkItem) == 7 * sizeof(int));
  ditems.upload(reinterpret_cast<const int*>(plan.items4.data()), 7 * plan.items4.size());
  dsegs.upload(reinterpret_cast<const int*>(pplan.segs.data()), 4 * pplan.segs.size());
  dpitems.upload(reinterpret_cast<const int*>(pplan.items.data()), 7 * pplan.items.size());
  kimi::cuda::Gemm gemm;

  kimi::cuda::MlaAttnParams ap;
  ap.num_tokens = T, ap.num_heads = H, ap.q_abs = q_abs.data(), ap.q = q.data();
  ap.cache = cache.data(), ap.block_tables = dtab.data(), ap.max_blocks_per_seq = nb;
  ap.scale = 1.f / std::sqrt(192.f), ap.split_base = dsb.data(), ap.num_splits = dns.data();
  ap.partials = parts.data();
  ap.items = reinterpret_cast<const kimi::cuda::MlaWorkItem*>(ditems.data());
  ap.num_items = int(plan.items4.size());
  kimi::cuda::GemmArgs g1;  // q_abs = W_UKᵀ q_nope per head
  g1.M = T, g1.N = 512, g1.K = 128, g1.A = q.data(), g1.lda = H * 192, g1.stride_a = 192;
  g1.B = kv_b.data(), g1.ldb = 512, g1.stride_b = 256 * 512, g1.b_kn = true;
  g1.C = q_abs.data(), g1.ldc = H * 512, g1.stride_c = 512, g1.batch = H;
  kimi::cuda::GemmArgs g2;  // out = W_UV u per head
  g2.M = T, g2.N = 128, g2.K = 512, g2.A = u_tc.data(), g2.lda = H * 512, g2.stride_a = 512;
  g2.B = kv_b.data() + 128 * 512, g2.ldb = 512, g2.stride_b = 256 * 512;
  g2.C = o_abs.data(), g2.ldc = H * 128, g2.stride_c = 128, g2.batch = H;
  auto absorbed = [&](bool tc) {
    gemm.run(g1, nullptr);
    ap.tensor_cores = tc;
    ap.u = tc ? u_tc.data() : u_cc.data();
    kimi::cuda::run_mla_attention(ap, 4, nullptr);
    if (plan.num_partials > 0) kimi::cuda::run_mla_combine(ap, nullptr);
    if (tc) gemm.run(g2, nullptr);
  };
  kimi::cuda::MlaPrefillParams pp;
  pp.num_heads = H, pp.q = q.data(), pp.cache = cache.data(), pp.block_tables = dtab.data();
  pp.max_blocks_per_seq = nb, pp.kv_b = kv_b.data(), pp.scale = 1.f / std::sqrt(192.f);
  pp.segs = reinterpret_cast<const kimi::cuda::MlaPrefillSeg*>(dsegs.data());
  pp.items = reinterpret_cast<const kimi::cuda::MlaPrefillItem*>(dpitems.data());
  pp.workspace = ws.data(), pp.piece_rows = kPiece, pp.state = state.data(), pp.out = o_exp.data();
  // Visible (query, key) pairs; FLOPs per pair and head: absorbed 2·(576 + 512), expanded
  // 2·(192 + 128); the expansion GEMM 2·512·256·H per context position per round.
  const double pairs = double(T) * hist + double(T) * (T + 1) / 2;
  const double f_abs = 2.0 * (576 + 512) * H * pairs, f_exp = 2.0 * (192 + 128) * H * pairs;
  const double work = f_abs / 175e12 * 1e3;  // ms at the absorbed kernel's rate
  const int reps = std::clamp(int(200.0 / std::max(work, 1e-3)), 1, 20);
  PrefillTimes r;
  r.absorbed = median_ms([&](int) { absorbed(true); }, reps > 1 ? 5 : 3, reps, 1);
  r.expanded = median_ms([&](int) { kimi::cuda::run_mla_prefill(pp, pplan, gemm, nullptr); },
                         5, std::max(1, 3 * reps), 1);
  const double ms_expand = median_ms(
      [&](int) { kimi::cuda::run_mla_prefill(pp, expand_only, gemm, nullptr); }, 5, 3, 1);
  double ms_cc = 0;
  if (cuda_cores) ms_cc = median_ms([&](int) { absorbed(false); }, T > 4096 ? 3 : 5, 1, 1);
  CUDA_CHECK(cudaDeviceSynchronize());
  if (!print) return r;
  auto row = [&](const char* name, double ms, double flop) {
    const double tf = flop / (ms * 1e-3) / 1e12;
    std::printf("%-6d %-7d %-22s %10.3f ms %8.1f TFLOP/s %6.1f%% of GEMM\n", T, hist, name, ms, tf,
                100 * tf / peak);
  };
  if (cuda_cores) row("absorbed, CUDA cores", ms_cc, f_abs);
  row("absorbed, tensor cores", r.absorbed, f_abs);
  row("expanded, wgmma", r.expanded, f_exp);
  const double tf_attn = f_exp / ((r.expanded - ms_expand) * 1e-3) / 1e12;
  std::printf("%-6d %-7d speed-up %.2fx (expanded vs absorbed tc); expansion (gather + GEMMs) "
              "%.3f ms in %zu rounds; attention alone %.1f TFLOP/s (%.1f%% of GEMM); out rel RMS "
              "expanded vs absorbed %.2e\n",
              T, hist, r.absorbed / r.expanded, ms_expand, pplan.rounds.size(), tf_attn,
              100 * tf_attn / peak, rel_rms(o_abs, o_exp));
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, decode = true, prefill = true, layer = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--decode") prefill = false;
    else if (a == "--prefill") decode = false;
    else if (a == "--layer") layer = true, decode = prefill = false;
    else {
      std::fprintf(stderr, "usage: bench_mla [--quick] [--decode | --prefill | --layer]\n");
      return 2;
    }
  }
  try {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    std::printf("bench_mla: %s, %d SMs, L2 %d MB, H=%d\n", prop.name, prop.multiProcessorCount,
                prop.l2CacheSize >> 20, H);
    kimi::cuda::mla_prepare();
    if (layer) {
      const double copy = copy_ceiling_gbs();
      std::printf("one MLA layer of a decode step (CUDA-graph replay, 3 weight sets in turn); copy "
                  "ceiling %.0f GB/s; times: two alternations\n", copy);
      bench_layer(1, 4096, false, true, prop.multiProcessorCount, copy);
      bench_layer(1, 4096, true, false, prop.multiProcessorCount, copy);
      bench_layer(2, 4096, false, false, prop.multiProcessorCount, copy);
      bench_layer(4, 4096, false, false, prop.multiProcessorCount, copy);
      if (!quick) {
        bench_layer(1, 32768, false, false, prop.multiProcessorCount, copy);
        bench_layer(1, 1 << 20, false, false, prop.multiProcessorCount, copy);
        bench_layer(1, 1 << 20, true, false, prop.multiProcessorCount, copy);
      }
    }
    if (decode) {
      const double copy = copy_ceiling_gbs();
      std::printf("decode (CUDA-graph replay, decode plan + combine); copy ceiling %.0f GB/s\n",
                  copy);
      std::printf("%-4s %-8s %-12s %11s %13s %13s\n", "B", "context", "kernel", "", "time/layer",
                  "cache read");
      const std::vector<std::pair<int, int>> shapes =
          quick ? std::vector<std::pair<int, int>>{{1, 4096}, {1, 32768}, {64, 4096}}
                : std::vector<std::pair<int, int>>{{1, 4096},    {1, 32768}, {1, 131072},
                                                   {1, 1 << 20}, {64, 4096}, {64, 32768},
                                                   {64, 131072}};
      for (auto [B, L] : shapes) {
        const size_t need =
            size_t(B) * ((L + 63) / 64) * 64 * (1152 + kimi::cuda::kMlaFp8Row) + (size_t(1) << 30);
        size_t free_b = 0, total_b = 0;
        CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
        if (need > free_b) {
          std::printf("%-4d %-8d skipped: %.1f GB of cache does not fit\n", B, L, need / 1e9);
          continue;
        }
        bench_decode(B, L, prop.multiProcessorCount, copy);
      }
    }
    if (prefill) {
      const double peak = kimi::bench::gemm_ceiling_tflops();
      std::printf("prefill, one sequence; cuBLASLt bf16 GEMM 8192^3: %.1f TFLOP/s\n", peak);
      std::printf("%-6s %-7s %-22s %13s\n", "T", "history", "path", "time (all 32 heads)");
      for (int hist : {0, 114688})
        for (int T : {4096, 16384}) {
          if (quick && (T > 4096 || hist > 0)) break;
          bench_prefill(T, hist, prop.multiProcessorCount, peak, hist == 0, true);
        }
      // Where the expanded path starts to pay (kMlaExpandMinTokens): few new tokens after a
      // history, whole chains (GEMMs included) as the model runs them.
      std::printf("crossover: new tokens after history, absorbed chain vs expanded (ms)\n");
      for (int hist : {16384, 114688}) {
        if (quick) break;
        for (int T : {32, 64, 128, 256, 512}) {
          const PrefillTimes t = bench_prefill(T, hist, prop.multiProcessorCount, peak, false, false);
          std::printf("  history %-7d new %-4d absorbed %8.3f expanded %8.3f ratio %.2f\n", hist, T,
                      t.absorbed, t.expanded, t.absorbed / t.expanded);
        }
      }
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
