// MoE grouped expert GEMM benchmark (Kimi Linear sizes: 256 experts, top-8, hidden 2304,
// moe_intermediate 1024): gate_up + down, the wgmma, tiled and gemv kernels.
//   decode T = 1, 4, 16, 64 (and 128, 256 without --quick): uniform random routing (distinct
//     experts per token); time per layer, the weight bytes of the distinct experts touched, GB/s
//     and % of the device-to-device copy ceiling measured in the same run. Timed as CUDA graphs
//     of many calls (how decode steps run) and eagerly; the calls rotate over enough routings
//     that one routing's experts are no longer in L2 when it comes back.
//   prefill T = 4096 and 16384 (4096 only with --quick), uniform and skewed routing (expert
//     inclusion ∝ (rank + 1)^-0.7: the busiest expert ~14× the mean, the idlest ~1/4): the wgmma
//     kernel as the model runs it (timed first and again last: their spread is the noise), each
//     of its tile shapes, the old tiled kernel (64-row tiles) and two cuBLASLt bf16 GEMMs of the
//     same FLOPs (x · W13ᵀ, act · W2ᵀ of one expert over all T·K rows); TFLOP/s as % of that and
//     of the 8192³ cuBLASLt rate, same run; the headline: the kernel and that cuBLASLt pair
//     timed in alternation (the same clocks for both); and the 128-row tiles the routing needs.
//   the whole block at decode T = 1 (--block): the fused launch (run_moe_decode_fused) against the
//     launches it replaces (routing with the norm, gate_up, down, un-permute with the next norm);
//     bytes = router + the 8 routed and the shared expert's weights; CUDA graphs, the router and
//     the residual rows rotating (so the routings, and the experts read, change every call).
//   routing at decode T = 1, 8: the fused launch (router logits + routing + permutation, with and
//     without the RMSNorm folded in) against the launches it replaces (RMSNorm, fp32 router GEMM,
//     routing, permutation), per layer; CUDA graphs, the router weights rotating out of L2.
// Timing: CUDA events around groups of calls, median over groups, after warm-up; random non-zero
// weights and inputs. Every CUDA call is checked.
// Usage: bench_moe [--quick | --prefill | --route | --decode | --block]   (the last four: that
// table only; --decode with --quick's sizes)
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
#include "moe/moe.h"
#include "norm/norm.h"
#include "ops/cuda/device_buffer.h"
#include "bench_util.h"

namespace {

using kimi::bench::copy_ceiling_gbs;
using kimi::bench::fill_random;
using kimi::bench::graph_ms;
using kimi::bench::median_ms;
using kimi::bench::paired_median_ms;

using kimi::cuda::bf16;
using kimi::cuda::DeviceBuffer;
using kimi::cuda::MoeGemmPath;
constexpr int E = 256, K = 8, H = 2304, I = 1024;
constexpr double kExpertBytes = 3.0 * H * I * 2;  // w1 + w3 + w2, bf16

// E routed experts and the shared expert as expert E (the decode block runs it there).
struct Weights {
  DeviceBuffer<bf16> w13{size_t(E + 1) * 2 * I * H}, w2{size_t(E + 1) * H * I};
  Weights() {
    fill_random(w13, -0.04f, 0.04f, 1);
    fill_random(w2, -0.06f, 0.06f, 2);
  }
};

// One routing of T tokens, permuted on the device for tiles of block_m rows.
struct Routing {
  DeviceBuffer<int> ids, ws;
  int distinct = 0;
  int max_rows = 0, min_rows = 0;
  std::vector<int> rows;  // per expert
  // skew: K distinct experts per token drawn with weights (e + 1)^-0.7 (Efraimidis-Spirakis keys),
  // else uniformly.
  Routing(int T, int block_m, std::mt19937& rng, bool skew = false)
      : ids(size_t(T) * K), ws(kimi::cuda::moe_permute_workspace_ints(E, int64_t(T) * K)) {
    std::vector<int> h(size_t(T) * K), perm(E);
    rows.assign(E, 0);
    std::vector<char> used(E, 0);
    std::vector<double> key(E);
    std::uniform_real_distribution<double> u(1e-12, 1.0);
    std::iota(perm.begin(), perm.end(), 0);
    for (int t = 0; t < T; ++t) {
      if (skew) {
        for (int e = 0; e < E; ++e) key[e] = std::log(u(rng)) * std::pow(e + 1.0, 0.7);
        std::partial_sort(perm.begin(), perm.begin() + K, perm.end(),
                          [&](int a, int b) { return key[a] > key[b]; });
      } else {
        std::shuffle(perm.begin(), perm.end(), rng);
      }
      for (int k = 0; k < K; ++k) {
        used[h[size_t(t) * K + k] = perm[k]] = 1;
        ++rows[perm[k]];
      }
    }
    max_rows = *std::max_element(rows.begin(), rows.end());
    min_rows = *std::min_element(rows.begin(), rows.end());
    distinct = int(std::count(used.begin(), used.end(), 1));
    ids.upload(h);
    kimi::cuda::MoePermuteParams pp;
    pp.num_tokens = T, pp.num_experts = E, pp.top_k = K, pp.block_m = block_m;
    pp.expert_ids = ids.data(), pp.workspace = ws.data();
    kimi::cuda::run_moe_permute(pp, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  // pair_row [T·K] of the permutation: the y row of each (token, k) pair.
  std::vector<int> pair_rows() {
    const size_t R = ids.size();
    const int* d = kimi::cuda::moe_permute_view(ws.data(), E, int64_t(R)).pair_row;
    std::vector<int> h(R);
    CUDA_CHECK(cudaMemcpy(h.data(), d, R * sizeof(int), cudaMemcpyDeviceToHost));
    return h;
  }
};

const char* path_name(MoeGemmPath p) {
  return p == MoeGemmPath::kGemv ? "gemv" : p == MoeGemmPath::kWgmma ? "wgmma" : "tiled";
}

// Relative RMS difference of a against b.
double rel_rms(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// One line: label, then name and median of each series d[1..] (d[0] is unused: stamp 0 is the
// reference the others are taken from).
void print_medians(const char* label, const char* const* names, std::vector<std::vector<double>>& d) {
  std::printf("%s", label);
  for (size_t i = 1; i < d.size(); ++i) {
    std::sort(d[i].begin(), d[i].end());
    std::printf(" %s %.0f", names[i], d[i][d[i].size() / 2]);
  }
  std::printf("\n");
}

// Decode routing per layer: fused launch vs the separate launches; the router (2.4 MB fp32) and
// inputs rotate over `copies` layers' worth so they come from DRAM as in a decode step.
void bench_route(int l2_bytes) {
  using namespace kimi::cuda;
  const int copies = std::max(2, 2 * l2_bytes / int(size_t(E) * H * 4) + 1);
  DeviceBuffer<float> router(size_t(copies) * E * H), bias(E), x(size_t(copies) * 8 * H),
      xn(size_t(8) * H), normw(H), logits(size_t(8) * E), wts(size_t(8) * (K + 1));
  DeviceBuffer<bf16> a(size_t(8) * H);
  DeviceBuffer<int> ids(size_t(8) * (K + 1)), ws(moe_permute_workspace_ints(E + 1, 8 * (K + 1))),
      ticket(1);
  fill_random(router, -0.05f, 0.05f, 11);
  fill_random(bias, -0.1f, 0.1f, 12);
  fill_random(x, -3.f, 3.f, 13);
  fill_random(normw, 0.5f, 1.5f, 14);
  CUDA_CHECK(cudaMemset(ticket.data(), 0, sizeof(int)));
  Gemm gemm(size_t(32) << 20);
  cudaStream_t st;
  CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  std::printf("\n%-8s %3s %12s %12s %12s %9s\n", "route", "T", "separate us", "fused us",
              "fused+norm", "speedup");
  for (int T : {1, 8}) {
    MoeRouteParams rp;
    rp.num_tokens = T, rp.num_experts = E, rp.top_k = K, rp.scaling = 2.446f;
    rp.logits = logits.data(), rp.correction_bias = bias.data();
    rp.expert_ids = ids.data(), rp.weights = wts.data(), rp.shared_expert = E;
    auto xs = [&](int i) { return x.data() + size_t(i % copies) * 8 * H; };
    auto rt = [&](int i) { return router.data() + size_t(i % copies) * E * H; };
    auto separate = [&](int i, cudaStream_t s) {
      RmsNormParams np;
      np.rows = T, np.dim = H, np.x = xs(i), np.weight = normw.data(), np.y = a.data();
      np.y_f32 = xn.data();
      run_rmsnorm(np, s);
      GemmArgs ga;
      ga.M = T, ga.N = E, ga.K = H;
      ga.A = reinterpret_cast<const bf16*>(xn.data()), ga.lda = H;
      ga.B = reinterpret_cast<const bf16*>(rt(i)), ga.ldb = H;
      ga.C = logits.data(), ga.ldc = E, ga.out = GemmOut::kF32, ga.in_f32 = true;
      gemm.run(ga, s);
      run_moe_route(rp, s);
      MoePermuteParams pp;  // the shared expert as expert E, as the model runs decode steps
      pp.num_tokens = T, pp.num_experts = E + 1, pp.top_k = K + 1, pp.block_m = 16;
      pp.expert_ids = ids.data(), pp.workspace = ws.data();
      run_moe_permute(pp, s);
    };
    auto fused = [&](bool norm) {
      return [&, norm](int i, cudaStream_t s) {
        MoeRouteDecodeParams dp;
        dp.route = rp;
        dp.x = norm ? xs(i) : xn.data();
        dp.router = rt(i), dp.hidden = H, dp.block_m = 16;
        dp.workspace = ws.data(), dp.ticket = ticket.data();
        if (norm) dp.norm_weight = normw.data(), dp.normed = a.data();
        run_moe_route_decode(dp, s);
      };
    };
    separate(0, st);  // cuBLASLt plans outside the capture
    CUDA_CHECK(cudaStreamSynchronize(st));
    const int per_graph = 2 * copies, groups = 15;
    const double t_sep = graph_ms(separate, per_graph, groups, st);
    const double t_fused = graph_ms(fused(false), per_graph, groups, st);
    const double t_norm = graph_ms(fused(true), per_graph, groups, st);
    std::printf("%-8s %3d %12.2f %12.2f %12.2f %8.2fx\n", "decode", T, t_sep * 1e3, t_fused * 1e3,
                t_norm * 1e3, t_sep / t_norm);
    // Where the fused launch's time goes: %globaltimer at its phase boundaries (medians of 31
    // launches, each alone on the stream, norm folded in).
    DeviceBuffer<unsigned long long> stamps(kMoeRouteStamps);
    std::vector<std::vector<double>> d(kMoeRouteStamps);
    for (int rep = 0; rep < 31; ++rep) {
      MoeRouteDecodeParams dp;
      dp.route = rp;
      dp.x = xs(rep), dp.router = rt(rep), dp.hidden = H, dp.block_m = 16;
      dp.workspace = ws.data(), dp.ticket = ticket.data();
      dp.norm_weight = normw.data(), dp.normed = a.data();
      dp.stamps = stamps.data();
      run_moe_route_decode(dp, st);
      CUDA_CHECK(cudaStreamSynchronize(st));
      const auto h = stamps.to_host();
      for (int i = 1; i < kMoeRouteStamps; ++i) d[i].push_back(double(h[i]) - double(h[i - 1]));
    }
    const char* names[kMoeRouteStamps] = {"", "wait", "logits", "normed", "ticket", "route", "permute"};
    print_medians("  phases (ns, median):", names, d);
  }
  CUDA_CHECK(cudaStreamDestroy(st));
}

// The MoE block of a one-token decode step: the fused launch against the four it replaces.
void bench_block(Weights& w, double ceiling, int l2_bytes) {
  using namespace kimi::cuda;
  const int copies = std::max(2, 2 * l2_bytes / int(size_t(E) * H * 4) + 1);
  DeviceBuffer<float> router(size_t(copies) * E * H), bias(E), x(size_t(copies) * H), normw(H),
      nextw(H), logits(E + 1), wts(K + 1), y(size_t(K + 1) * H),
      scratch(moe_decode_fused_scratch_floats(K, H, I));
  DeviceBuffer<bf16> a(H), act(size_t(K + 1) * I);
  DeviceBuffer<int> ids(K + 1), ws(moe_permute_workspace_ints(E + 1, K + 1)), ticket(1), bar(2);
  fill_random(router, -0.05f, 0.05f, 21);
  fill_random(bias, -0.1f, 0.1f, 22);
  fill_random(x, -3.f, 3.f, 23);
  fill_random(normw, 0.5f, 1.5f, 24);
  fill_random(nextw, 0.5f, 1.5f, 25);
  CUDA_CHECK(cudaMemset(ticket.data(), 0, sizeof(int)));
  CUDA_CHECK(cudaMemset(bar.data(), 0, 2 * sizeof(int)));
  cudaStream_t st;
  CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  MoeRouteParams rp;
  rp.num_tokens = 1, rp.num_experts = E, rp.top_k = K, rp.scaling = 2.446f;
  rp.logits = logits.data(), rp.correction_bias = bias.data();
  rp.expert_ids = ids.data(), rp.weights = wts.data(), rp.shared_expert = E;
  auto xs = [&](int i) { return x.data() + size_t(i % copies) * H; };
  auto rt = [&](int i) { return router.data() + size_t(i % copies) * E * H; };
  auto chain = [&](int i, cudaStream_t s) {
    MoeRouteDecodeParams dp;
    dp.route = rp;
    dp.x = xs(i), dp.router = rt(i), dp.hidden = H, dp.block_m = 16;
    dp.workspace = ws.data(), dp.ticket = ticket.data();
    dp.norm_weight = normw.data(), dp.normed = a.data();
    run_moe_route_decode(dp, s);
    MoeGemmParams gp;
    gp.num_tokens = 1, gp.num_experts = E + 1, gp.top_k = K + 1, gp.block_m = 16, gp.hidden = H;
    gp.inter = I, gp.workspace = ws.data(), gp.x = a.data(), gp.w13 = w.w13.data();
    gp.w2 = w.w2.data(), gp.act = act.data(), gp.y = y.data();
    run_moe_gate_up(gp, s);
    run_moe_down(gp, s);
    MoeUnpermuteParams up;
    up.num_tokens = 1, up.top_k = K + 1, up.hidden = H, up.num_experts = E + 1;
    up.workspace = ws.data(), up.weights = wts.data(), up.y = y.data(), up.out = xs(i);
    up.norm_weight = nextw.data(), up.normed = a.data();
    run_moe_unpermute(up, s);
  };
  auto fused_params = [&](int i) {
    MoeDecodeFusedParams fp;
    fp.route = rp;
    fp.x = xs(i), fp.norm_weight = normw.data(), fp.router = rt(i);
    fp.w13 = w.w13.data(), fp.w2 = w.w2.data(), fp.hidden = H, fp.inter = I;
    fp.next_norm = nextw.data(), fp.next_normed = a.data();
    fp.scratch = scratch.data(), fp.barrier = reinterpret_cast<unsigned*>(bar.data());
    return fp;
  };
  const double bytes = double(E) * H * 4 + (K + 1) * kExpertBytes;
  auto pct = [&](double ms) { return 100 * bytes / (ms * 1e-3) / 1e9 / ceiling; };
  std::printf("\n%-6s %3s %9s %12s %8s %12s %8s %9s\n", "block", "T", "MB", "chain us", "% copy",
              "fused us", "% copy", "speedup");
  const int per_graph = 2 * copies, groups = 15;
  auto fused = [&](int i, cudaStream_t s) { run_moe_decode_fused(fused_params(i), s); };
  for (int rep = 0; rep < 2; ++rep) {  // alternated: the spread is the noise
    const double t_chain = graph_ms(chain, per_graph, groups, st);
    const double t = graph_ms(fused, per_graph, groups, st);
    std::printf("%-6s %3d %9.1f %12.2f %7.1f%% %12.2f %7.1f%% %8.2fx\n", "block", 1, bytes / 1e6,
                t_chain * 1e3, pct(t_chain), t * 1e3, pct(t), t_chain / t);
  }
  // Where the fused launch's time goes: %globaltimer at its phase boundaries (medians of 31
  // launches, each alone on the stream), relative to the entry of CTA 0.
  DeviceBuffer<unsigned long long> stamps(kMoeFusedStamps);
  const char* names[kMoeFusedStamps] = {"entry", "wait", "logits", "bar1", "routed", "gate_up0",
                                        "bar2", "down0", "last", "residual", "gate_up_last", "down_last",
                                        "scored", "chosen", "done0", "end_last"};
  std::vector<std::vector<double>> d(kMoeFusedStamps);
  for (int rep = 0; rep < 31; ++rep) {
    CUDA_CHECK(cudaMemsetAsync(stamps.data(), 0, kMoeFusedStamps * sizeof(unsigned long long), st));
    MoeDecodeFusedParams fp = fused_params(rep);
    fp.stamps = stamps.data();
    run_moe_decode_fused(fp, st);
    CUDA_CHECK(cudaStreamSynchronize(st));
    const auto h = stamps.to_host();
    for (int i = 1; i < kMoeFusedStamps; ++i) d[i].push_back(double(h[i]) - double(h[0]));
  }
  print_medians("  phase ends (ns after CTA 0's entry, median):", names, d);
  CUDA_CHECK(cudaStreamDestroy(st));
}

void bench_decode(Weights& w, double ceiling, int l2_bytes, bool quick) {
  std::printf("\n%-6s %5s %6s %8s %9s %10s %10s %10s %8s %10s %10s\n", "decode", "T", "path",
              "experts", "MB", "eager us", "graph us", "GB/s", "% copy", "gate_up us", "down us");
  cudaStream_t st;
  CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  std::vector<int> Ts = {1, 4, 16, 64};
  // Without --quick also the sizes between decode and prefill (chunked prefill, large decode
  // batches), where the choice among the three kernels is made by rows per expert.
  if (!quick) Ts.insert(Ts.end(), {128, 256, 512, 1024});
  const MoeGemmPath paths[] = {MoeGemmPath::kTiled, MoeGemmPath::kGemv, MoeGemmPath::kWgmma};
  for (int T : Ts) {
    const int R = T * K;
    // Enough routings that a routing's experts have left L2 when it is used again.
    const double expect = E * (1.0 - std::pow(1.0 - double(K) / E, T)) * kExpertBytes;
    const int sets = std::clamp(int(std::ceil(8.0 * l2_bytes / expect)), 4, 32);
    // The same routings permuted for 16-row tiles (tiled, gemv) and 128-row tiles (wgmma).
    std::vector<Routing> rs16, rs128;
    rs16.reserve(sets);
    rs128.reserve(sets);
    double distinct = 0;
    for (int bm : {16, 128}) {
      std::mt19937 rng(100 + T);
      for (int s = 0; s < sets; ++s) (bm == 16 ? rs16 : rs128).emplace_back(T, bm, rng);
    }
    for (const Routing& r : rs16) distinct += r.distinct;
    distinct /= sets;
    const double bytes = distinct * kExpertBytes;
    DeviceBuffer<bf16> x(size_t(T) * H), act(size_t(R) * I);
    DeviceBuffer<float> y(size_t(R) * H);
    fill_random(x, -1.f, 1.f, 7 + T);
    kimi::cuda::MoeGemmParams gp;
    gp.num_tokens = T, gp.num_experts = E, gp.top_k = K, gp.hidden = H;
    gp.inter = I, gp.x = x.data(), gp.w13 = w.w13.data(), gp.w2 = w.w2.data();
    gp.act = act.data(), gp.y = y.data();
    gp.path = MoeGemmPath::kAuto;
    gp.block_m = kimi::cuda::moe_block_m(int64_t(R), E);  // as cuda_forward.cpp
    const MoeGemmPath auto_path = kimi::cuda::moe_gemm_path(gp);
    std::vector<std::vector<float>> y_set0;
    double ms_of[3] = {0, 0, 0};
    for (int pi = 0; pi < 3; ++pi) {
      const MoeGemmPath path = paths[pi];
      gp.path = path;
      gp.block_m = path == MoeGemmPath::kWgmma ? 128 : 16;
      std::vector<Routing>& rs = path == MoeGemmPath::kWgmma ? rs128 : rs16;
      auto both = [&](int i, cudaStream_t s) {
        gp.workspace = rs[i % sets].ws.data();
        kimi::cuda::run_moe_gate_up(gp, s);
        kimi::cuda::run_moe_down(gp, s);
      };
      auto gate_up = [&](int i, cudaStream_t s) {
        gp.workspace = rs[i % sets].ws.data();
        kimi::cuda::run_moe_gate_up(gp, s);
      };
      auto down = [&](int i, cudaStream_t s) {
        gp.workspace = rs[i % sets].ws.data();
        kimi::cuda::run_moe_down(gp, s);
      };
      const int groups = quick || T >= 512 ? 10 : 30;
      const int per_graph = sets * std::max(1, 32 / sets);
      const double eager = median_ms([&](int i) { both(i, st); }, groups, sets, 3, st);
      const double graph = graph_ms(both, per_graph, groups, st);
      const double gu = graph_ms(gate_up, per_graph, groups, st);
      const double dn = graph_ms(down, per_graph, groups, st);
      ms_of[pi] = graph;
      const double gbs = bytes / (graph * 1e-3) / 1e9;
      std::printf("%-6s %5d %6s %8.1f %9.1f %10.2f %10.2f %10.1f %7.1f%% %10.2f %10.2f%s\n",
                  "decode", T, path_name(path), distinct, bytes / 1e6, eager * 1e3, graph * 1e3,
                  gbs, 100 * gbs / ceiling, gu * 1e3, dn * 1e3,
                  path == auto_path ? "  (auto)" : "");
      // The kernels on routing 0 must agree (op tests check each against the CPU).
      gp.workspace = rs[0].ws.data();
      kimi::cuda::run_moe_gate_up(gp, st);
      kimi::cuda::run_moe_down(gp, st);
      CUDA_CHECK(cudaStreamSynchronize(st));
      // y rows are in each permutation's row order: compare per (token, k) pair.
      std::vector<float> yh = y.to_host(), yp(yh.size());
      const std::vector<int> pr = rs[0].pair_rows();
      for (int q = 0; q < R; ++q)
        std::copy_n(yh.begin() + size_t(pr[size_t(q)]) * H, H, yp.begin() + size_t(q) * H);
      y_set0.push_back(std::move(yp));
    }
    const double d_gemv = rel_rms(y_set0[1], y_set0[0]), d_wgmma = rel_rms(y_set0[2], y_set0[0]);
    std::printf("%-6s %5d   tiled / gemv %.2fx, tiled / wgmma %.2fx; y rel diff vs tiled: gemv "
                "%.2e, wgmma %.2e%s\n",
                "", T, ms_of[0] / ms_of[1], ms_of[0] / ms_of[2], d_gemv, d_wgmma,
                d_gemv < 5e-3 && d_wgmma < 5e-3 ? "" : "  ** MISMATCH **");
  }
  CUDA_CHECK(cudaStreamDestroy(st));
}

void bench_prefill(Weights& w, double gemm_ceiling, bool quick) {
  using kimi::cuda::moe::MoeWgmmaTile;
  const std::vector<int> Ts = quick ? std::vector<int>{4096} : std::vector<int>{4096, 16384};
  const int reps = quick ? 5 : 11;
  for (int T : Ts) {
    const int R = T * K;
    DeviceBuffer<bf16> x(size_t(T) * H), act(size_t(R) * I), xr(size_t(R) * H), gu(size_t(R) * 2 * I);
    DeviceBuffer<float> y(size_t(R) * H);
    fill_random(x, -1.f, 1.f, 11);
    fill_random(xr, -1.f, 1.f, 12);
    fill_random(act, -1.f, 1.f, 13);
    const double flop = 6.0 * R * H * I;
    kimi::cuda::Gemm gemm;
    auto cublas = [&](int) {
      gemm.linear(xr.data(), w.w13.data(), gu.data(), R, 2 * I, H, kimi::cuda::GemmOut::kBF16,
                  nullptr);
      gemm.linear(act.data(), w.w2.data(), y.data(), R, H, I, kimi::cuda::GemmOut::kF32, nullptr);
    };
    const double t_cb = median_ms(cublas, reps, 1, 1);
    const double cb_tflops = flop / (t_cb * 1e-3) / 1e12;
    for (bool skew : {false, true}) {
      std::mt19937 rng64(7 + T), rng128(7 + T);  // same routing, two tile heights
      Routing r64(T, 64, rng64, skew), r128(T, 128, rng128, skew);
      kimi::cuda::MoeGemmParams gp;
      gp.num_tokens = T, gp.num_experts = E, gp.top_k = K, gp.hidden = H, gp.inter = I;
      gp.x = x.data(), gp.w13 = w.w13.data(), gp.w2 = w.w2.data(), gp.act = act.data();
      gp.y = y.data();
      std::printf(
          "\nprefill T = %d, %s routing (R = %d rows, %d experts touched, rows per expert %d..%d,"
          " mean %d): %.3g FLOP\n",
          T, skew ? "skewed" : "uniform", R, r128.distinct, r128.min_rows, r128.max_rows, R / E, flop);
      std::printf("%-38s %10s %10s %10s %10s %10s %10s\n", "", "gate_up ms", "down ms", "total ms",
                  "TFLOP/s", "% cuBLAS", "% 8192^3");
      auto row = [&](const char* name, double t_gu, double t_dn) {
        const double tf = flop / ((t_gu + t_dn) * 1e-3) / 1e12;
        std::printf("%-38s %10.3f %10.3f %10.3f %10.1f %9.1f%% %9.1f%%\n", name, t_gu, t_dn,
                    t_gu + t_dn, tf, 100 * tf / cb_tflops, 100 * tf / gemm_ceiling);
      };
      // kAuto as the model runs it: block_m 128 → wgmma with the default tiles.
      gp.block_m = 128, gp.workspace = r128.ws.data(), gp.path = MoeGemmPath::kAuto;
      auto auto_row = [&](const char* name) {
        const double t_gu = median_ms([&](int) { kimi::cuda::run_moe_gate_up(gp, nullptr); }, reps, 1, 1);
        const double t_dn = median_ms([&](int) { kimi::cuda::run_moe_down(gp, nullptr); }, reps, 1, 1);
        row(kimi::cuda::moe_gemm_path(gp) == MoeGemmPath::kWgmma ? name : "kAuto (not wgmma?)",
            t_gu, t_dn);
      };
      auto_row("wgmma (kAuto, default tiles)");
      // Two rounds over the tiles: rows timed earlier in a process come out faster, so each is
      // read against the same tile's other round.
      for (int round = 0; round < 2; ++round)
        for (const MoeWgmmaTile& tile : kimi::cuda::moe::kMoeWgmmaTiles) {
          const double t_gu = median_ms(
              [&](int) { kimi::cuda::moe::launch_moe_wgmma(gp, true, tile, nullptr); }, reps, 1, 1);
          const double t_dn = median_ms(
              [&](int) { kimi::cuda::moe::launch_moe_wgmma(gp, false, tile, nullptr); }, reps, 1, 1);
          const std::string name = "  wgmma 128x" + std::to_string(tile.bn) + ", " +
                                   std::to_string(tile.stages) + " st";
          row(name.c_str(), t_gu, t_dn);
        }
      gp.block_m = 64, gp.workspace = r64.ws.data(), gp.path = MoeGemmPath::kTiled;
      const double o_gu = median_ms([&](int) { kimi::cuda::run_moe_gate_up(gp, nullptr); }, reps, 1, 1);
      const double o_dn = median_ms([&](int) { kimi::cuda::run_moe_down(gp, nullptr); }, reps, 1, 1);
      row("tiled WMMA, 64-row tiles (old)", o_gu, o_dn);
      gp.block_m = 128, gp.workspace = r128.ws.data(), gp.path = MoeGemmPath::kAuto;
      auto_row("wgmma (kAuto), again");
      std::printf("%-38s %10s %10s %10.3f %10.1f %9.1f%% %9.1f%%\n", "cuBLASLt bf16, same FLOPs", "-",
                  "-", t_cb, cb_tflops, 100.0, 100 * cb_tflops / gemm_ceiling);
      // The headline ratio: kAuto's gate_up + down and the same-FLOP cuBLASLt pair timed in
      // alternation, so that both see the same clocks (the rows above are each timed in a block).
      const auto [t_moe, t_lt] = paired_median_ms(
          [&](int) {
            kimi::cuda::run_moe_gate_up(gp, nullptr);
            kimi::cuda::run_moe_down(gp, nullptr);
          },
          cublas, 2 * reps + 1);
      std::printf("%-38s %10s %10s %10.3f %10.1f %9.1f%%   (cuBLASLt %.3f ms in the same samples)\n",
                  "wgmma (kAuto), paired with cuBLASLt", "-", "-", t_moe, flop / (t_moe * 1e-3) / 1e12,
                  100 * t_lt / t_moe, t_lt);
      // 128-row tiles of this routing: an expert of c rows takes ceil(c / 128), its last one
      // partial unless c % 128 == 0 (at T = 4096, ~128 ± 11 rows each: about half need a second,
      // nearly empty tile).
      int tiles = 0, second = 0;
      for (int c : r128.rows) {
        tiles += (c + 127) / 128;
        second += c > 128 && c % 128 != 0;
      }
      std::printf("wgmma tiles: %d of 128 rows for %d rows (%.2f per expert; %d experts end in a partial one after a full one)\n",
                  tiles, R, double(tiles) / E, second);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool decode_only = argc > 1 && std::string(argv[1]) == "--decode";
  const bool quick = decode_only || (argc > 1 && std::string(argv[1]) == "--quick");
  const bool prefill_only = argc > 1 && std::string(argv[1]) == "--prefill";
  const bool route_only = argc > 1 && std::string(argv[1]) == "--route";
  const bool block_only = argc > 1 && std::string(argv[1]) == "--block";
  try {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    std::printf(
        "bench_moe: %s, %d SMs, L2 %d MB; E=%d top-%d hidden=%d inter=%d (%.2f MB/expert)\n",
        prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, E, K, H, I,
        kExpertBytes / 1e6);
    const double ceiling = copy_ceiling_gbs();
    std::printf("copy ceiling (1 GiB D2D, read+write): %.1f GB/s\n", ceiling);
    if (!prefill_only && !block_only) bench_route(prop.l2CacheSize);
    if (route_only) return 0;
    Weights w;
    if (!prefill_only) bench_block(w, ceiling, prop.l2CacheSize);
    if (block_only) return 0;
    if (!prefill_only) bench_decode(w, ceiling, prop.l2CacheSize, quick);
    if (decode_only) return 0;
    const double gemm_ceiling = kimi::bench::gemm_ceiling_tflops();
    std::printf("GEMM ceiling (cuBLASLt bf16 8192^3): %.1f TFLOP/s\n", gemm_ceiling);
    bench_prefill(w, gemm_ceiling, quick);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_moe: %s\n", e.what());
    return 1;
  }
  return 0;
}
#else
int main() {
  std::printf("bench_moe: built without the CUDA backend; nothing to measure\n");
  return 0;
}
#endif
