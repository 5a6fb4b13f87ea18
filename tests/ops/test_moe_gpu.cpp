// MoE GPU kernels against the CPU reference: routing (src/ops/cpu/moe.h; ids must match exactly,
// weights to fp32 rounding) and the routed-expert path (permute → grouped gate_up GEMM with
// SwiGLU → grouped down GEMM → weighted un-permute into an fp32 accumulator) against per-expert
// fp32 SwiGLU MLPs (cpu::matmul, cpu::silu_mul), for the three expert kernels (wgmma, tiled and
// gemv, see moe.h). Tolerance 8e-3 relative RMS for every kernel: the error is the bf16 rounding
// of act (~2.5e-3 measured, 2^-9 relative per value), which every kernel shares; fp32
// accumulation order adds ~1e-6.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <tuple>

#include "core/check.h"  // before gpu_test_util.h, which uses str() but does not include it
#include "gpu_test_util.h"
#include "ops/cpu/basic.h"
#include "ops/cpu/moe.h"

#if KIMI_HAVE_CUDA
#include "moe/moe.h"
#include "norm/norm.h"
#endif

namespace kimi::test {
namespace {

#if KIMI_HAVE_CUDA
constexpr float kRouteScaling = 2.446f;

// The CPU reference's routing of T rows of E logits (renormalised, scaled by kRouteScaling).
void cpu_route(const std::vector<float>& logits, const std::vector<float>& bias, int T, int E,
               int K, std::vector<int>& ids, std::vector<float>& weights) {
  ids.assign(size_t(T) * K, 0);
  weights.assign(size_t(T) * K, 0.f);
  cpu::MoeRouteParams cp;
  cp.num_tokens = T, cp.num_experts = E, cp.top_k = K, cp.renormalize = true;
  cp.scaling = kRouteScaling, cp.logits = logits.data(), cp.correction_bias = bias.data();
  cp.expert_ids = ids.data(), cp.weights = weights.data();
  cpu::moe_route(cp);
}

// The fused block's input side on the CPU: xn = RMSNorm(x) · norm_w (fp32), a = bf16(xn) (the
// experts' input) and the fp32 router logits from xn.
void fused_block_input(const std::vector<float>& x, const std::vector<float>& norm_w,
                       const std::vector<float>& router, int H, int E, float eps,
                       std::vector<float>& xn, std::vector<float>& a, std::vector<float>& logits) {
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  const double inv = 1.0 / std::sqrt(ss / H + eps);
  xn.assign(size_t(H), 0.f);
  a.assign(size_t(H), 0.f);
  for (int k = 0; k < H; ++k) {
    xn[size_t(k)] = float(x[size_t(k)] * inv * norm_w[size_t(k)]);
    a[size_t(k)] = bf16_to_f32(f32_to_bf16(xn[size_t(k)]));
  }
  logits.assign(size_t(E), 0.f);
  for (int e = 0; e < E; ++e) {
    double acc = 0;
    for (int k = 0; k < H; ++k) acc += double(xn[size_t(k)]) * router[size_t(e) * H + k];
    logits[size_t(e)] = float(acc);
  }
}

// The routing rule of every device test here (renormalised, scaled by kRouteScaling, as
// cpu_route) over device buffers.
cuda::MoeRouteParams route_rule(int T, int E, int K, const float* logits, const float* bias,
                                int* ids, float* weights) {
  cuda::MoeRouteParams p;
  p.num_tokens = T, p.num_experts = E, p.top_k = K, p.renormalize = true;
  p.scaling = kRouteScaling, p.logits = logits, p.correction_bias = bias;
  p.expert_ids = ids, p.weights = weights;
  return p;
}

// run_moe_route on the device with the same rule; `p` may be changed between runs (the shared
// expert, expert parallelism), the outputs are poisoned before each run.
struct DeviceRoute {
  GuardedBuffer<float> logits, bias, weights;
  GuardedBuffer<int> ids;
  cuda::MoeRouteParams p;
  DeviceRoute(const std::vector<float>& l, const std::vector<float>& b, int T, int E, int K,
              int row = 0)
      : logits(l.size()), bias(b.size()), weights(size_t(T) * (row ? row : K)),
        ids(size_t(T) * (row ? row : K)) {
    logits.upload(l);
    bias.upload(b);
    p = route_rule(T, E, K, logits.data(), bias.data(), ids.data(), weights.data());
  }
  void run() {
    ids.poison();
    weights.poison();
    cuda::run_moe_route(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  bool guards_intact() const { return ids.guards_intact() && weights.guards_intact(); }
};
#endif

TEST(MoeGpu, RouteMatchesCpu) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(21);
  for (auto [E, K] : {std::pair{256, 8}, std::pair{16, 4}, std::pair{20, 3}, std::pair{1024, 32}})
    for (int T : {1, 7, 63, 64, 65, 769}) {
      auto logits = random_f32(rng, size_t(T) * E, -6.f, 6.f);
      auto bias = random_f32(rng, E, -0.5f, 0.5f);
      // An exact tie, always chosen: experts 1 and 2 score the same in every token.
      for (int t = 0; t < T; ++t) logits[size_t(t) * E + 2] = logits[size_t(t) * E + 1];
      bias[1] = bias[2] = 3.f;
      // E > 256: the experts e ≡ 3 (mod 32) first, so that one lane of the warp has more choices
      // than its register list holds (kRouteLaneKeys: refills), in groups of three equal scores
      // (ties across a refill).
      if (E > 256)
        for (int e = 3; e < E; e += 32) {
          bias[size_t(e)] = 2.f;
          for (int t = 0; t < T; ++t) logits[size_t(t) * E + e] = logits[size_t(t) * E + 3 + 96 * (e / 96)];
        }
      std::vector<int> ids;
      std::vector<float> w;
      cpu_route(logits, bias, T, E, K, ids, w);
      DeviceRoute d(logits, bias, T, E, K);
      d.run();
      EXPECT_EQ(d.ids.to_host(), ids) << "E " << E << " K " << K << " T " << T;
      auto gw = d.weights.to_host();
      expect_close(str("route weights E", E, " T", T), gw.data(), w.data(), w.size(), 1e-6, 1e-5);
      EXPECT_TRUE(d.guards_intact());
      // With the shared expert as expert E: rows of K + 1, the routed part unchanged.
      DeviceRoute d1(logits, bias, T, E, K, K + 1);
      d1.p.shared_expert = E;
      d1.run();
      const auto ids1 = d1.ids.to_host();
      const auto w1 = d1.weights.to_host();
      for (int t = 0; t < T; ++t) {
        for (int k = 0; k < K; ++k) {
          ASSERT_EQ(ids1[size_t(t) * (K + 1) + k], ids[size_t(t) * K + k]) << "t " << t;
          ASSERT_EQ(w1[size_t(t) * (K + 1) + k], gw[size_t(t) * K + k]) << "t " << t;
        }
        ASSERT_EQ(ids1[size_t(t) * (K + 1) + K], E) << "t " << t;
        ASSERT_EQ(w1[size_t(t) * (K + 1) + K], 1.f) << "t " << t;
      }
      EXPECT_TRUE(d1.guards_intact());
      // Expert parallelism over 4 GPUs (E divisible by 4 here): GPU g sees the same selection
      // and weights, its experts as local ids e − g·E/4, the others' as −1.
      if (E % 4 == 0) {
        const int n = E / 4;
        for (int g = 0; g < 4; ++g) {
          d.p.expert_first = g * n, d.p.local_experts = n;
          d.run();
          const auto idsg = d.ids.to_host();
          const auto wg = d.weights.to_host();
          for (size_t i = 0; i < ids.size(); ++i) {
            const int e = ids[i];
            ASSERT_EQ(idsg[i], e >= g * n && e < (g + 1) * n ? e - g * n : -1) << "pair " << i;
            ASSERT_EQ(wg[i], gw[i]) << "pair " << i;
          }
          EXPECT_TRUE(d.guards_intact());
        }
      }
    }
#endif
}

// The routing's NaN rule (run_moe_route; the fused block routes with the same warp code): a NaN
// logit is never chosen, even with a bias that would put it first, and with fewer than K finite
// scores the remaining slots stay empty (id −1, weight 0) while the finite choices keep the CPU's
// order and weights (the CPU reference routes the finite experts alone).
TEST(MoeGpu, RouteNeverChoosesNan) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(5);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (auto [E, K, nans] : {std::tuple{256, 8, 40}, std::tuple{20, 6, 16}, std::tuple{40, 32, 10}}) {
    constexpr int T = 5;
    auto logits = random_f32(rng, size_t(T) * E, -6.f, 6.f);
    auto bias = random_f32(rng, E, -0.5f, 0.5f);
    std::vector<int> finite;  // the experts with finite logits, in increasing order
    for (int e = 0; e < E; ++e) {
      if ((e * 37 + 11) % E < nans) {  // 37 is prime to E: exactly `nans` experts
        bias[size_t(e)] = 10.f;
        for (int t = 0; t < T; ++t) logits[size_t(t) * E + e] = nan;
      } else {
        finite.push_back(e);
      }
    }
    const int F = int(finite.size()), Kf = std::min(K, F);
    std::vector<float> lf(size_t(T) * F), bf(static_cast<size_t>(F)), wf;
    std::vector<int> idf;
    for (int i = 0; i < F; ++i) {
      bf[size_t(i)] = bias[size_t(finite[size_t(i)])];
      for (int t = 0; t < T; ++t) lf[size_t(t) * F + i] = logits[size_t(t) * E + finite[size_t(i)]];
    }
    cpu_route(lf, bf, T, F, Kf, idf, wf);
    DeviceRoute d(logits, bias, T, E, K);
    d.run();
    const auto gi = d.ids.to_host();
    const auto gw = d.weights.to_host();
    for (int t = 0; t < T; ++t)
      for (int k = 0; k < K; ++k) {
        const size_t i = size_t(t) * K + k;
        const std::string at = str("E ", E, " K ", K, " t ", t, " k ", k);
        if (k < Kf) {
          ASSERT_EQ(gi[i], finite[size_t(idf[size_t(t) * Kf + k])]) << at;
          ASSERT_NEAR(gw[i], wf[size_t(t) * Kf + k], 1e-5f) << at;
        } else {
          ASSERT_EQ(gi[i], -1) << at;
          ASSERT_EQ(gw[i], 0.f) << at;
        }
      }
    EXPECT_TRUE(d.guards_intact());
  }
#endif
}

#if KIMI_HAVE_CUDA
// Expert weights of one (E, hidden, I) shape on the host (bf16 and fp32 views) and the device.
// Weights uniform in ±min(0.1, 2/sqrt(fan_in)): outputs O(1) at every size.
struct ExpertWeights {
  int E, hidden, I;
  std::vector<uint16_t> w13, w2;
  std::vector<float> w13f, w2f;
  GuardedBuffer<uint16_t> dw13, dw2;
  ExpertWeights(int E_, int hidden_, int I_, uint32_t seed)
      : E(E_), hidden(hidden_), I(I_), dw13(size_t(E_) * 2 * I_ * hidden_),
        dw2(size_t(E_) * hidden_ * I_) {
    std::mt19937 rng(seed);
    const float r13 = std::min(0.1f, 2.f / std::sqrt(float(hidden))),
                r2 = std::min(0.1f, 2.f / std::sqrt(float(I)));
    w13 = random_bf16(rng, dw13.size(), -r13, r13);
    w2 = random_bf16(rng, dw2.size(), -r2, r2);
    w13f = bf16_to_float(w13);
    w2f = bf16_to_float(w2);
    dw13.upload(w13);
    dw2.upload(w2);
  }
};

// Routing: distinct experts per token (as the router makes them) or, with repeats, K draws with
// replacement (a token may list an expert twice; the kernels must still be right).
std::vector<int> random_ids(std::mt19937& rng, int T, int E, int K, bool repeats) {
  std::vector<int> ids(size_t(T) * K), perm(E);
  std::iota(perm.begin(), perm.end(), 0);
  std::uniform_int_distribution<int> any(0, E - 1);
  for (int t = 0; t < T; ++t) {
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int k = 0; k < K; ++k) ids[size_t(t) * K + k] = repeats ? any(rng) : perm[k];
  }
  return ids;
}

// One routed-expert case: per (t, k) pair the fp32 CPU reference of act = SiLU(W1 x) ⊙ W3 x and
// y = W2 act, and out = out0 + Σ_k w · y. The expert MLPs run per expert over all its tokens.
struct ExpertCase {
  int T, K;
  std::vector<uint16_t> x;
  std::vector<int> ids;
  std::vector<float> wts, out0, act_ref, y_ref, out_ref;  // act_ref [T·K, I], y_ref [T·K, hidden]
};

// ids: a given routing [T, K] instead of a random one.
ExpertCase make_case(const ExpertWeights& w, int T, int K, bool repeats, uint32_t seed,
                     const std::vector<int>* ids = nullptr) {
  const int E = w.E, hidden = w.hidden, I = w.I;
  std::mt19937 rng(seed);
  ExpertCase c;
  c.T = T, c.K = K;
  c.x = random_bf16(rng, size_t(T) * hidden, -1.f, 1.f);
  c.ids = ids ? *ids : random_ids(rng, T, E, K, repeats);
  c.wts = random_f32(rng, size_t(T) * K, 0.05f, 1.f);
  c.out0 = random_f32(rng, size_t(T) * hidden, -1.f, 1.f);
  const auto xf = bf16_to_float(c.x);
  const size_t R = size_t(T) * K;
  c.act_ref.assign(R * I, 0.f);
  c.y_ref.assign(R * hidden, 0.f);
  for (int e = 0; e < E; ++e) {
    std::vector<size_t> pairs;
    for (size_t i = 0; i < R; ++i)
      if (c.ids[i] == e) pairs.push_back(i);
    const int n = int(pairs.size());
    if (n == 0) continue;
    std::vector<float> xe(size_t(n) * hidden), gu(size_t(n) * 2 * I), act(size_t(n) * I),
        y(size_t(n) * hidden);
    for (int j = 0; j < n; ++j)
      std::copy_n(&xf[(pairs[j] / K) * hidden], hidden, &xe[size_t(j) * hidden]);
    cpu::matmul(xe.data(), &w.w13f[size_t(e) * 2 * I * hidden], gu.data(), n, 2 * I, hidden);
    cpu::silu_mul(gu.data(), act.data(), n, I);
    cpu::matmul(act.data(), &w.w2f[size_t(e) * hidden * I], y.data(), n, hidden, I);
    for (int j = 0; j < n; ++j) {
      std::copy_n(&act[size_t(j) * I], I, &c.act_ref[pairs[j] * I]);
      std::copy_n(&y[size_t(j) * hidden], hidden, &c.y_ref[pairs[j] * hidden]);
    }
  }
  c.out_ref = c.out0;
  for (size_t i = 0; i < R; ++i)
    for (int d = 0; d < hidden; ++d)
      c.out_ref[(i / K) * hidden + d] += c.wts[i] * c.y_ref[i * hidden + d];
  return c;
}

const char* path_name(cuda::MoeGemmPath p) {
  switch (p) {
    case cuda::MoeGemmPath::kGemv: return "gemv";
    case cuda::MoeGemmPath::kTiled: return "tiled";
    case cuda::MoeGemmPath::kWgmma: return "wgmma";
    default: return "auto";
  }
}

// The permutation's block_m a forced path needs: wgmma tiles of 128 rows, the tiled kernel 16 or
// 64 (64 in place of 128), gemv any.
int block_m_for(cuda::MoeGemmPath path, int block_m) {
  if (path == cuda::MoeGemmPath::kWgmma) return 128;
  if (path == cuda::MoeGemmPath::kTiled && block_m == 128) return 64;
  return block_m;
}

// Runs the routed path on the GPU: for each path in `paths` (kAuto runs what moe_gemm_path picks)
// a permutation with the block_m that path needs (block_m_for), the grouped gate_up + down GEMMs
// on it, and the weighted un-permute into out0. Checks, per path: act and y of every (t, k) pair
// against the CPU (through that permutation's pair_row), the routed contribution out − out0,
// every row written (the outputs were NaN-poisoned), guards intact. With two paths, their y rows
// are also compared with each other, pair by pair. expect_auto: the kernel kAuto must pick for
// these sizes at `block_m`. wgmma_tile: runs the wgmma path with this tile shape instead of the
// default ones.
void check_experts(ExpertWeights& w, const ExpertCase& c, int block_m,
                   std::vector<cuda::MoeGemmPath> paths, cuda::MoeGemmPath expect_auto,
                   const cuda::moe::MoeWgmmaTile* wgmma_tile = nullptr) {
  const int T = c.T, K = c.K, E = w.E, hidden = w.hidden, I = w.I;
  const int64_t R = int64_t(T) * K;
  GuardedBuffer<uint16_t> dx(c.x.size()), dact(R * I);
  GuardedBuffer<float> dy(R * hidden), dwts(c.wts.size()), dout(c.out0.size());
  GuardedBuffer<int> dids(c.ids.size()), dws(cuda::moe_permute_workspace_ints(E, R));
  dx.upload(c.x);
  dids.upload(c.ids);
  dwts.upload(c.wts);
  std::vector<int> pair_row;
  // Permutes for tiles of bm rows; pair_row from the workspace: where each (t, k) pair's row went.
  auto permute = [&](int bm) {
    cuda::MoePermuteParams pp;
    pp.num_tokens = T, pp.num_experts = E, pp.top_k = K, pp.block_m = bm;
    pp.expert_ids = dids.data(), pp.workspace = dws.data();
    cuda::run_moe_permute(pp, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<int> ws = dws.to_host();
    const cuda::MoePermuteView hv = cuda::moe_permute_view(ws.data(), E, R);
    pair_row.assign(hv.pair_row, hv.pair_row + R);
  };

  cuda::MoeGemmParams gp;
  gp.num_tokens = T, gp.num_experts = E, gp.top_k = K, gp.block_m = block_m, gp.hidden = hidden;
  gp.inter = I, gp.workspace = dws.data(), gp.x = reinterpret_cast<cuda::bf16*>(dx.data());
  gp.w13 = reinterpret_cast<cuda::bf16*>(w.dw13.data());
  gp.w2 = reinterpret_cast<cuda::bf16*>(w.dw2.data());
  gp.act = reinterpret_cast<cuda::bf16*>(dact.data()), gp.y = dy.data();
  EXPECT_EQ(cuda::moe_gemm_path(gp), expect_auto) << "T " << T << " E " << E << " K " << K;

  std::vector<std::vector<float>> y_by_path;
  for (cuda::MoeGemmPath path : paths) {
    std::string what = str(path_name(path), " T", T, " E", E, " K", K, " hid", hidden, " I", I,
                           " BM", block_m);
    if (wgmma_tile && path == cuda::MoeGemmPath::kWgmma)
      what += str(" tile ", wgmma_tile->bn, "x", wgmma_tile->stages, " ctas ", wgmma_tile->max_ctas);
    gp.path = path;
    gp.block_m = block_m_for(path, block_m);
    if (path != cuda::MoeGemmPath::kAuto) {
      ASSERT_EQ(cuda::moe_gemm_path(gp), path);
    }
    permute(gp.block_m);
    for (int64_t i = 0; i < R; ++i)
      ASSERT_TRUE(pair_row[i] >= 0 && pair_row[i] < R) << what << " pair " << i;
    dact.poison();
    dy.poison();
    dout.upload(c.out0);
    if (wgmma_tile && path == cuda::MoeGemmPath::kWgmma) {
      cuda::moe::launch_moe_wgmma(gp, true, *wgmma_tile, nullptr);
      cuda::moe::launch_moe_wgmma(gp, false, *wgmma_tile, nullptr);
    } else {
      cuda::run_moe_gate_up(gp, nullptr);
      cuda::run_moe_down(gp, nullptr);
    }
    cuda::MoeUnpermuteParams up;
    up.num_tokens = T, up.top_k = K, up.hidden = hidden, up.num_experts = E;
    up.workspace = dws.data();
    up.weights = dwts.data(), up.y = dy.data(), up.out = dout.data();
    up.accumulate = true;
    cuda::run_moe_unpermute(up, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto act_rows = bf16_to_float(dact.to_host());
    const auto y_rows = dy.to_host();
    // Every row is some pair's row: all of act and y must have been written.
    auto finite = [](float v) { return std::isfinite(v); };
    EXPECT_TRUE(std::all_of(act_rows.begin(), act_rows.end(), finite)) << what;
    EXPECT_TRUE(std::all_of(y_rows.begin(), y_rows.end(), finite)) << what;
    std::vector<float> act_pair(size_t(R) * I), y_pair(size_t(R) * hidden);
    for (int64_t i = 0; i < R; ++i) {
      std::copy_n(&act_rows[size_t(pair_row[i]) * I], I, &act_pair[size_t(i) * I]);
      std::copy_n(&y_rows[size_t(pair_row[i]) * hidden], hidden, &y_pair[size_t(i) * hidden]);
    }
    expect_close(what + " act", act_pair.data(), c.act_ref.data(), act_pair.size(), 8e-3, 0.05);
    expect_close(what + " y", y_pair.data(), c.y_ref.data(), y_pair.size(), 8e-3, 0.05);
    // The routed contribution (out − out0), so the accumulator's base does not hide errors.
    const auto got = dout.to_host();
    std::vector<float> gd(got.size()), rd(got.size());
    for (size_t i = 0; i < got.size(); ++i)
      gd[i] = got[i] - c.out0[i], rd[i] = c.out_ref[i] - c.out0[i];
    expect_close(what + " out", gd.data(), rd.data(), rd.size(), 8e-3, 0.05);
    EXPECT_TRUE(dact.guards_intact() && dy.guards_intact() && dout.guards_intact()) << what;
    y_by_path.push_back(std::move(y_pair));
  }
  if (y_by_path.size() == 2)  // the two kernels differ only in summation order and act rounding
    expect_close(str(path_name(paths[1]), " vs ", path_name(paths[0]), " y T", T, " hid", hidden,
                     " I", I),
                 y_by_path[1].data(),
                 y_by_path[0].data(), y_by_path[0].size(), 5e-3, 0.05);
  EXPECT_TRUE(dws.guards_intact() && dx.guards_intact() && w.dw13.guards_intact() &&
              w.dw2.guards_intact());
}

const std::vector<cuda::MoeGemmPath> kBothPaths = {cuda::MoeGemmPath::kTiled,
                                                   cuda::MoeGemmPath::kGemv};

// The block_m the model picks (cuda_forward.cpp): 128 once experts average 32+ rows.
int model_block_m(int T, int E, int K) {
  return cuda::moe_block_m(int64_t(T) * K, E);
}
cuda::MoeGemmPath expected_auto(int T, int E, int K, int block_m) {
  if (block_m == 128) return cuda::MoeGemmPath::kWgmma;
  return block_m == 16 && int64_t(T) * K <= int64_t(cuda::kMoeGemvMaxRowsPerExpert) * E
             ? cuda::MoeGemmPath::kGemv
             : cuda::MoeGemmPath::kTiled;
}
#endif

// The path choice is host logic: checked without a GPU.
// The permutation's workspace on both launch paths (one CTA up to 4096 pairs, count/scan/scatter
// beyond): counts, exclusive offsets, tile starts for both tile heights, every valid pair in its
// expert's row range exactly once with row_token pointing back, invalid ids (-1, E) skipped.
TEST(MoeGpu, PermuteInvariantsOnBothPaths) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(31);
  for (auto [T, E, K] : {std::tuple{1, 256, 8}, std::tuple{7, 16, 4}, std::tuple{512, 256, 8},
                         std::tuple{513, 256, 8}, std::tuple{1000, 64, 6}, std::tuple{300, 1024, 2}})
    for (int block_m : {16, 64, 128}) {
      const int64_t R = int64_t(T) * K;
      std::vector<int> ids(R);
      for (int t = 0; t < T; ++t) {
        std::vector<int> pick(E);
        std::iota(pick.begin(), pick.end(), 0);
        std::shuffle(pick.begin(), pick.end(), rng);
        for (int k = 0; k < K; ++k) ids[size_t(t) * K + k] = pick[k];
      }
      ids[R / 2] = -1;  // dropped pairs
      ids[R - 1] = E;
      GuardedBuffer<int> dids(R), dws(cuda::moe_permute_workspace_ints(E, R));
      dids.upload(ids);
      dws.poison();
      cuda::MoePermuteParams pp;
      pp.num_tokens = T, pp.num_experts = E, pp.top_k = K, pp.block_m = block_m;
      pp.expert_ids = dids.data(), pp.workspace = dws.data();
      cuda::run_moe_permute(pp, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      const std::string what = str("T", T, " E", E, " K", K, " BM", block_m);
      std::vector<int> ws = dws.to_host();
      EXPECT_TRUE(dws.guards_intact()) << what;
      const cuda::MoePermuteView v = cuda::moe_permute_view(ws.data(), E, R);
      std::vector<int> count(E, 0);
      for (int x : ids)
        if (x >= 0 && x < E) ++count[x];
      ASSERT_EQ(v.offsets[0], 0) << what;
      ASSERT_EQ(v.tile_start[0], 0) << what;
      for (int e = 0; e < E; ++e) {
        ASSERT_EQ(v.counts[e], count[e]) << what << " expert " << e;
        ASSERT_EQ(v.offsets[e + 1] - v.offsets[e], count[e]) << what << " expert " << e;
        ASSERT_EQ(v.tile_start[e + 1] - v.tile_start[e], (count[e] + block_m - 1) / block_m) << what;
      }
      std::vector<int> seen(size_t(v.offsets[E]), 0);
      for (int64_t i = 0; i < R; ++i) {
        const int x = ids[i], row = v.pair_row[i];
        if (x < 0 || x >= E) {
          ASSERT_EQ(row, -1) << what << " pair " << i;
          continue;
        }
        ASSERT_TRUE(row >= v.offsets[x] && row < v.offsets[x + 1]) << what << " pair " << i;
        ASSERT_EQ(v.row_token[row], int(i / K)) << what << " pair " << i;
        ++seen[size_t(row)];
      }
      for (size_t r = 0; r < seen.size(); ++r) ASSERT_EQ(seen[r], 1) << what << " row " << r;
    }
#endif
}

// The fused decode routing (router logits + routing + permutation in one launch) against the
// CPU: logits within fp32 summation-order error, the same experts (local ids under expert
// parallelism, the shared expert appended), weights within 1e-5, and the permutation workspace
// of those ids (counts, offsets, tile starts exact; every kept pair in its expert's rows once).
TEST(MoeGpu, FusedDecodeRouteMatchesCpu) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(77);
  struct Case {
    int T, E, K, H;
    bool shared;
    int first, local;  // expert parallelism (local 0: off)
    bool norm;         // the RMSNorm fused in: x is the residual stream
  };
  for (const Case& c : {Case{1, 256, 8, 2304, true, 0, 0, false}, Case{8, 256, 8, 2304, false, 0, 0, false},
                        Case{3, 20, 3, 64, true, 0, 0, false}, Case{5, 256, 8, 2304, false, 128, 128, false},
                        Case{2, 16, 4, 136, true, 4, 4, false}, Case{1, 256, 8, 2304, true, 0, 0, true},
                        Case{8, 256, 8, 2304, true, 0, 0, true}, Case{3, 20, 3, 68, false, 0, 0, true},
                        Case{7, 64, 6, 1028, true, 16, 16, true}}) {
    const std::string what = str("T", c.T, " E", c.E, " K", c.K, " H", c.H, c.shared ? " shared" : "",
                                 " local ", c.first, "+", c.local, c.norm ? " norm" : "");
    ASSERT_LE(c.T, cuda::moe_route_decode_max_tokens(c.E)) << what;
    auto x = random_f32(rng, size_t(c.T) * c.H, -1.f, 1.f);
    if (c.norm)  // a residual stream: not unit scale
      for (float& v : x) v *= 7.f;
    auto router = random_f32(rng, size_t(c.E) * c.H, -0.1f, 0.1f);
    auto bias = random_f32(rng, c.E, -0.3f, 0.3f);
    // An exact tie that is always chosen: experts 1 and 2 score the same (ties go to the lower).
    std::copy_n(&router[size_t(c.H)], c.H, &router[size_t(2) * c.H]);
    bias[1] = bias[2] = 10.f;
    const auto norm_w = random_f32(rng, c.H, 0.5f, 1.5f);
    constexpr float kEps = 1e-6f;
    std::vector<float> xn = x;  // the router's input (normed in double when the norm is fused)
    if (c.norm)
      for (int t = 0; t < c.T; ++t) {
        double ss = 0;
        for (int k = 0; k < c.H; ++k) ss += double(x[size_t(t) * c.H + k]) * x[size_t(t) * c.H + k];
        const double inv = 1.0 / std::sqrt(ss / c.H + kEps);
        for (int k = 0; k < c.H; ++k) xn[size_t(t) * c.H + k] = float(x[size_t(t) * c.H + k] * inv * norm_w[k]);
      }
    std::vector<float> logits(size_t(c.T) * c.E);
    for (int t = 0; t < c.T; ++t)
      for (int e = 0; e < c.E; ++e) {
        double acc = 0;
        for (int k = 0; k < c.H; ++k) acc += double(xn[size_t(t) * c.H + k]) * router[size_t(e) * c.H + k];
        logits[size_t(t) * c.E + e] = float(acc);
      }
    std::vector<int> ids;
    std::vector<float> w;
    cpu_route(logits, bias, c.T, c.E, c.K, ids, w);
    const int El = c.local ? c.local : c.E, Ek = El + c.shared, stride = c.K + c.shared;
    const int64_t R = int64_t(c.T) * stride;
    GuardedBuffer<float> dx(x.size()), dr(router.size()), db(c.E), dl(logits.size()), dw(R), dnw(c.H);
    GuardedBuffer<int> di(R), dws(cuda::moe_permute_workspace_ints(Ek, R)), dticket(1);
    GuardedBuffer<uint16_t> dnormed(x.size());
    dx.upload(x);
    dnw.upload(norm_w);
    dnormed.poison();
    dr.upload(router);
    db.upload(bias);
    dl.poison();
    dw.poison();
    di.poison();
    dws.poison();
    dticket.upload(std::vector<int>{0});
    cuda::MoeRouteDecodeParams p;
    p.route = route_rule(c.T, c.E, c.K, dl.data(), db.data(), di.data(), dw.data());
    p.route.shared_expert = c.shared ? El : -1;
    p.route.expert_first = c.first, p.route.local_experts = c.local;
    p.x = dx.data(), p.router = dr.data(), p.hidden = c.H, p.block_m = 16;
    p.workspace = dws.data(), p.ticket = dticket.data();
    if (c.norm) {
      p.norm_weight = dnw.data();
      p.eps = kEps;
      p.normed = reinterpret_cast<cuda::bf16*>(dnormed.data());
    }
    for (int rep = 0; rep < 2; ++rep) {  // the ticket resets itself: a second launch works too
      cuda::run_moe_route_decode(p, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
    }
    const auto gl = dl.to_host();
    expect_close(str("fused logits ", what), gl.data(), logits.data(), logits.size(), 1e-5, 1e-4);
    if (c.norm) {  // the experts' input: bf16 of the normed rows (half an ulp of bf16 each)
      const auto gn = bf16_to_float(dnormed.to_host());
      for (size_t i = 0; i < gn.size(); ++i)
        ASSERT_NEAR(gn[i], xn[i], std::abs(xn[i]) * (1.f / 256) + 1e-6f) << what << " normed " << i;
    }
    EXPECT_TRUE(dnormed.guards_intact()) << what;
    const auto gi = di.to_host();
    const auto gw = dw.to_host();
    for (int t = 0; t < c.T; ++t) {
      for (int k = 0; k < c.K; ++k) {
        const int e = ids[size_t(t) * c.K + k];
        const int want = c.local == 0 ? e : (e >= c.first && e < c.first + c.local ? e - c.first : -1);
        ASSERT_EQ(gi[size_t(t) * stride + k], want) << what << " t " << t << " k " << k;
        ASSERT_NEAR(gw[size_t(t) * stride + k], w[size_t(t) * c.K + k], 1e-5f) << what << " t " << t;
      }
      if (c.shared) {
        ASSERT_EQ(gi[size_t(t) * stride + c.K], El) << what;
        ASSERT_EQ(gw[size_t(t) * stride + c.K], 1.f) << what;
      }
    }
    EXPECT_EQ(dticket.to_host()[0], 0) << what;
    EXPECT_TRUE(dl.guards_intact() && dw.guards_intact() && di.guards_intact() && dws.guards_intact()) << what;
    std::vector<int> ws = dws.to_host();
    const cuda::MoePermuteView v = cuda::moe_permute_view(ws.data(), Ek, R);
    std::vector<int> count(size_t(Ek), 0);
    for (int e : gi)
      if (e >= 0) ++count[size_t(e)];
    for (int e = 0; e < Ek; ++e) {
      ASSERT_EQ(v.counts[e], count[size_t(e)]) << what << " expert " << e;
      ASSERT_EQ(v.offsets[e + 1] - v.offsets[e], count[size_t(e)]) << what << " expert " << e;
      ASSERT_EQ(v.tile_start[e + 1] - v.tile_start[e], (count[size_t(e)] + 15) / 16) << what;
    }
    std::vector<int> seen(size_t(v.offsets[Ek]), 0);
    for (int64_t i = 0; i < R; ++i) {
      const int e = gi[size_t(i)], row = v.pair_row[i];
      if (e < 0) {
        ASSERT_EQ(row, -1) << what << " pair " << i;
        continue;
      }
      ASSERT_TRUE(row >= v.offsets[e] && row < v.offsets[e + 1]) << what << " pair " << i;
      ASSERT_EQ(v.row_token[row], int(i / stride)) << what << " pair " << i;
      ++seen[size_t(row)];
    }
    for (size_t r = 0; r < seen.size(); ++r) ASSERT_EQ(seen[r], 1) << what << " row " << r;
    // Rows of an expert follow pair order (deterministic), and the cursor equals the count.
    for (int64_t i = 0; i < R; ++i)
      for (int64_t j = i + 1; j < R; ++j) {
        if (gi[size_t(i)] >= 0 && gi[size_t(i)] == gi[size_t(j)]) {
          ASSERT_LT(v.pair_row[i], v.pair_row[j]) << what << " pairs " << i << ", " << j;
        }
      }
    for (int e = 0; e < Ek; ++e) ASSERT_EQ(v.cursor[e], v.counts[e]) << what << " expert " << e;
  }
#endif
}

// The un-permute with the next block's RMSNorm fused in against the two launches it replaces
// (run_moe_unpermute + run_rmsnorm): the residual bit for bit, the bf16 normed rows within one
// bf16 ulp (the sum of squares is added in another order). Odd widths, several tokens, pairs
// routed to no expert (-1).
TEST(MoeGpu, UnpermuteNormEqualsSeparateLaunches) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(91);
  for (auto [T, E, K, H] : {std::tuple{1, 257, 9, 2304}, std::tuple{8, 257, 9, 2304},
                            std::tuple{3, 16, 4, 7}, std::tuple{5, 20, 3, 769},
                            std::tuple{2, 64, 6, 4096}, std::tuple{1, 9, 9, 8192}}) {
    const std::string what = str("T", T, " E", E, " K", K, " H", H);
    const int64_t R = int64_t(T) * K;
    std::vector<int> ids(static_cast<size_t>(R));
    for (auto& id : ids) id = int(rng() % (E + 1)) - 1;  // -1: another GPU's expert
    const auto y = random_f32(rng, size_t(R) * H, -2.f, 2.f);
    const auto wts = random_f32(rng, size_t(R), 0.f, 1.f);
    const auto x0 = random_f32(rng, size_t(T) * H, -5.f, 5.f);
    const auto nw = random_f32(rng, size_t(H), 0.5f, 1.5f);
    GuardedBuffer<int> dids(ids.size()), dws(cuda::moe_permute_workspace_ints(E, R));
    GuardedBuffer<float> dy(y.size()), dw(wts.size()), dx(x0.size()), dnw(nw.size());
    GuardedBuffer<uint16_t> da(x0.size());
    dids.upload(ids);
    dy.upload(y);
    dw.upload(wts);
    dnw.upload(nw);
    cuda::MoePermuteParams pp;
    pp.num_tokens = T, pp.num_experts = E, pp.top_k = K, pp.block_m = 16;
    pp.expert_ids = dids.data(), pp.workspace = dws.data();
    cuda::run_moe_permute(pp, nullptr);
    cuda::MoeUnpermuteParams up;
    up.num_tokens = T, up.top_k = K, up.hidden = H, up.num_experts = E;
    up.workspace = dws.data(), up.weights = dw.data(), up.y = dy.data(), up.out = dx.data();
    up.accumulate = true;
    // Separate launches.
    dx.upload(x0);
    da.poison();
    cuda::run_moe_unpermute(up, nullptr);
    cuda::RmsNormParams np;
    np.rows = T, np.dim = H, np.x = dx.data(), np.weight = dnw.data(), np.eps = 1e-6f;
    np.y = dev<cuda::bf16>(da);
    cuda::run_rmsnorm(np, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto x_sep = dx.to_host();
    const auto a_sep = da.to_host();
    // Fused.
    dx.upload(x0);
    da.poison();
    up.norm_weight = dnw.data(), up.eps = 1e-6f, up.normed = dev<cuda::bf16>(da);
    cuda::run_moe_unpermute(up, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto x_fused = dx.to_host();
    const auto a_fused = da.to_host();
    int differ = 0;
    for (size_t i = 0; i < x_sep.size(); ++i) {
      ASSERT_EQ(x_fused[i], x_sep[i]) << what << " residual " << i;
      const float f = bf16_to_f32(a_fused[i]), r = bf16_to_f32(a_sep[i]);
      ASSERT_LE(std::abs(f - r), std::abs(r) * (1.f / 128)) << what << " normed " << i;
      differ += a_fused[i] != a_sep[i];
    }
    std::printf("    [err] %-28s normed values one ulp apart: %d of %zu\n", what.c_str(), differ,
                a_sep.size());
    EXPECT_TRUE(dx.guards_intact() && da.guards_intact() && dy.guards_intact()) << what;
  }
  // Refusals: the fused norm needs accumulation and rows of at most kMoeUnpermuteNormMaxHidden.
  cuda::MoeUnpermuteParams bad;
  GuardedBuffer<int> dws(cuda::moe_permute_workspace_ints(4, 4));
  GuardedBuffer<float> f(cuda::kMoeUnpermuteNormMaxHidden + 1);
  GuardedBuffer<uint16_t> a(cuda::kMoeUnpermuteNormMaxHidden + 1);
  bad.num_tokens = 1, bad.top_k = 4, bad.hidden = cuda::kMoeUnpermuteNormMaxHidden + 1, bad.num_experts = 4;
  bad.workspace = dws.data(), bad.weights = f.data(), bad.y = f.data(), bad.out = f.data();
  bad.norm_weight = f.data(), bad.normed = dev<cuda::bf16>(a);
  EXPECT_THROW(cuda::run_moe_unpermute(bad, nullptr), Error);
  bad.hidden = 64;
  bad.accumulate = false;
  EXPECT_THROW(cuda::run_moe_unpermute(bad, nullptr), Error);
#endif
}

// The fused one-token MoE block (run_moe_decode_fused) against the CPU reference of the whole
// block: RMSNorm, fp32 router logits, routing (cpu::moe_route; ids exact, weights to fp32
// rounding), the chosen experts' fp32 SwiGLU MLPs on bf16(normed x) plus the shared expert, the
// residual, and the next block's norm. Tolerance on the block's contribution: 8e-3 relative RMS
// (the bf16 rounding of act, as for the other expert kernels). Shapes: the model's; odd ones
// (rows of 8, 17 and 287 pieces, inter 40 and 1016); more experts than the grid holds in
// registers (300); every expert chosen (K = E); with and without the shared expert and the next
// norm; an exact tie and a NaN logit (never chosen); E 16 with K 8 (the routing warp's merge,
// like the model's shape). Each case runs twice: the grid barrier resets itself, and the second
// launch must write the first's bits.
TEST(MoeGpu, FusedDecodeBlockMatchesCpu) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  ASSERT_TRUE(cuda::moe_decode_fused_supported());
  std::mt19937 rng(123);
  struct Case {
    int E, K, H, I;
    bool shared, next;
  };
  for (const Case& c : {Case{256, 8, 2304, 1024, true, true}, Case{20, 3, 64, 40, true, false},
                        Case{40, 6, 136, 72, false, true}, Case{300, 8, 2296, 1016, true, true},
                        Case{9, 9, 8, 8, true, true}, Case{16, 8, 72, 24, true, true}}) {
    const std::string what = str("E", c.E, " K", c.K, " H", c.H, " I", c.I, c.shared ? " shared" : "",
                                 c.next ? " next-norm" : "");
    const int E = c.E, K = c.K, H = c.H, I = c.I, S = K + c.shared;
    constexpr float kEps = 1e-6f;
    auto x = random_f32(rng, H, -7.f, 7.f);  // a residual stream: not unit scale
    auto router = random_f32(rng, size_t(E) * H, -0.1f, 0.1f);
    auto bias = random_f32(rng, E, -0.3f, 0.3f);
    // An exact tie that is always chosen: experts 1 and 2 score the same (ties go to the lower).
    std::copy_n(&router[size_t(H)], H, &router[size_t(2) * H]);
    bias[1] = bias[2] = 10.f;
    // Expert 3 (when E > K): a NaN router row, so a NaN logit, with the bias of a sure choice:
    // never chosen (the reference scores it −inf).
    const bool nan3 = E > K && E > 3;
    auto bias_ref = bias;
    if (nan3) {
      std::fill_n(&router[size_t(3) * H], H, std::numeric_limits<float>::quiet_NaN());
      bias[3] = 10.f;
      bias_ref[3] = -INFINITY;
    }
    const auto norm_w = random_f32(rng, H, 0.5f, 1.5f), next_w = random_f32(rng, H, 0.5f, 1.5f);

    // Reference.
    std::vector<float> xn, a, logits;
    fused_block_input(x, norm_w, router, H, E, kEps, xn, a, logits);
    std::vector<int> ids;
    std::vector<float> wts;
    auto logits_ref = logits;
    if (nan3) logits_ref[3] = 0.f;
    cpu_route(logits_ref, bias_ref, 1, E, K, ids, wts);
    ASSERT_EQ(ids[0], 1) << what;
    ASSERT_EQ(ids[1], 2) << what;
    // Weights for the chosen experts only (drawing all of them at the model's size took 40 s):
    // every other expert keeps GuardedBuffer's fill, bf16 0x5b5b ≈ 3.6e16, so a wrong choice
    // cannot pass unnoticed.
    GuardedBuffer<uint16_t> dw13(size_t(E + c.shared) * 2 * I * H), dw2(size_t(E + c.shared) * H * I);
    std::vector<float> delta(size_t(H), 0.f), gu(size_t(2) * I), act(static_cast<size_t>(I)), y(static_cast<size_t>(H));
    const float r13 = std::min(0.1f, 2.f / std::sqrt(float(H))), r2 = std::min(0.1f, 2.f / std::sqrt(float(I)));
    for (int s = 0; s < S; ++s) {
      const int e = s < K ? ids[size_t(s)] : E;
      const float wt = s < K ? wts[size_t(s)] : 1.f;
      const auto w13 = random_bf16(rng, size_t(2) * I * H, -r13, r13), w2 = random_bf16(rng, size_t(H) * I, -r2, r2);
      CUDA_CHECK(cudaMemcpy(dw13.data() + size_t(e) * w13.size(), w13.data(), w13.size() * 2, cudaMemcpyHostToDevice));
      CUDA_CHECK(cudaMemcpy(dw2.data() + size_t(e) * w2.size(), w2.data(), w2.size() * 2, cudaMemcpyHostToDevice));
      cpu::matmul(a.data(), bf16_to_float(w13).data(), gu.data(), 1, 2 * I, H);
      cpu::silu_mul(gu.data(), act.data(), 1, I);
      cpu::matmul(act.data(), bf16_to_float(w2).data(), y.data(), 1, H, I);
      for (int d = 0; d < H; ++d) delta[size_t(d)] += wt * y[size_t(d)];
    }
    std::vector<float> x_ref(static_cast<size_t>(H)), normed_ref(static_cast<size_t>(H));
    double ss2 = 0;
    for (int d = 0; d < H; ++d) {
      x_ref[size_t(d)] = x[size_t(d)] + delta[size_t(d)];
      ss2 += double(x_ref[size_t(d)]) * x_ref[size_t(d)];
    }
    const double inv2 = 1.0 / std::sqrt(ss2 / H + kEps);
    for (int d = 0; d < H; ++d) normed_ref[size_t(d)] = float(x_ref[size_t(d)] * inv2 * next_w[size_t(d)]);

    // GPU.
    GuardedBuffer<float> dx(static_cast<size_t>(H)), dr(router.size()), db(static_cast<size_t>(E)), dl(static_cast<size_t>(E)), dw(static_cast<size_t>(S)),
        dnw(static_cast<size_t>(H)), dnext(static_cast<size_t>(H)),
        dscratch(cuda::moe_decode_fused_scratch_floats(K, H, I));
    GuardedBuffer<int> di(static_cast<size_t>(S)), dbar(2);
    GuardedBuffer<uint16_t> dnormed(static_cast<size_t>(H));
    dr.upload(router);
    db.upload(bias);
    dnw.upload(norm_w);
    dnext.upload(next_w);
    dbar.upload(std::vector<int>{0, 0});
    cuda::MoeDecodeFusedParams p;
    p.route = route_rule(1, E, K, dl.data(), db.data(), di.data(), dw.data());
    p.route.shared_expert = c.shared ? E : -1;
    p.x = dx.data(), p.norm_weight = dnw.data(), p.eps = kEps, p.router = dr.data();
    p.w13 = dev<cuda::bf16>(dw13), p.w2 = dev<cuda::bf16>(dw2), p.hidden = H, p.inter = I;
    if (c.next) p.next_norm = dnext.data(), p.next_normed = dev<cuda::bf16>(dnormed);
    p.scratch = dscratch.data();
    p.barrier = reinterpret_cast<unsigned*>(dbar.data());
    std::vector<float> gx0;
    std::vector<uint16_t> gn0;
    for (int rep = 0; rep < 2; ++rep) {
      dx.upload(x);
      dl.poison();
      dw.poison();
      di.poison();
      dnormed.poison();
      dscratch.poison();
      cuda::run_moe_decode_fused(p, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      const std::string run = str(what, " run ", rep);
      auto gl = dl.to_host();
      if (nan3) {
        ASSERT_TRUE(std::isnan(gl[3])) << run;
        gl[3] = logits[3] = 0.f;
      }
      expect_close(str("fused block logits ", run), gl.data(), logits.data(), logits.size(), 1e-5, 1e-4);
      const auto gi = di.to_host();
      const auto gw = dw.to_host();
      for (int k = 0; k < K; ++k) {
        ASSERT_EQ(gi[size_t(k)], ids[size_t(k)]) << run << " k " << k;
        ASSERT_NEAR(gw[size_t(k)], wts[size_t(k)], 1e-5f) << run << " k " << k;
      }
      if (c.shared) {
        ASSERT_EQ(gi[size_t(K)], E) << run;
        ASSERT_EQ(gw[size_t(K)], 1.f) << run;
      }
      const auto gx = dx.to_host();
      std::vector<float> gdelta(static_cast<size_t>(H));
      for (int d = 0; d < H; ++d) gdelta[size_t(d)] = gx[size_t(d)] - x[size_t(d)];
      expect_close(str("fused block delta ", run), gdelta.data(), delta.data(), delta.size(), 8e-3, 1e-1);
      if (c.next)
        expect_close(str("fused block next normed ", run), bf16_to_float(dnormed.to_host()).data(),
                     normed_ref.data(), normed_ref.size(), 8e-3, 5e-2);
      else
        for (uint16_t v : dnormed.to_host()) ASSERT_EQ(v, 0xffff) << run << ": next_normed written";
      // Deterministic: the second launch writes the first's bits (fixed summation orders).
      if (rep == 0) {
        gx0 = gx;
        gn0 = dnormed.to_host();
      } else {
        EXPECT_EQ(gx, gx0) << run << ": the residual differs from run 0";
        EXPECT_EQ(dnormed.to_host(), gn0) << run << ": next_normed differs from run 0";
      }
      EXPECT_EQ(dbar.to_host(), (std::vector<int>{0, 0})) << run << ": the barrier is reset";
      EXPECT_TRUE(dx.guards_intact() && dl.guards_intact() && dw.guards_intact() && di.guards_intact() &&
                  dnormed.guards_intact() && dscratch.guards_intact() && dw13.guards_intact() &&
                  dw2.guards_intact())
          << run;
    }
  }
#endif
}

// The fused block's launcher refuses what it cannot run, before touching the device (pointers
// are stand-ins, never dereferenced).
TEST(MoeGpu, FusedDecodeBlockRefusesBadArguments) {
#if KIMI_HAVE_CUDA
  auto f = [](uintptr_t a) { return reinterpret_cast<float*>(a); };
  cuda::MoeDecodeFusedParams ok;
  ok.route.num_tokens = 1, ok.route.num_experts = 16, ok.route.top_k = 4;
  ok.route.logits = f(0x1000), ok.route.correction_bias = f(0x2000);
  ok.route.expert_ids = reinterpret_cast<int*>(0x3000), ok.route.weights = f(0x4000);
  ok.x = f(0x5000), ok.norm_weight = f(0x6000), ok.router = f(0x7000);
  ok.w13 = reinterpret_cast<const cuda::bf16*>(0x8000), ok.w2 = reinterpret_cast<const cuda::bf16*>(0x9000);
  ok.hidden = 64, ok.inter = 32, ok.scratch = f(0xa000), ok.barrier = reinterpret_cast<unsigned*>(0xb000);
  auto bad = [&](auto edit, const char* what) {
    cuda::MoeDecodeFusedParams p = ok;
    edit(p);
    EXPECT_THROW(cuda::run_moe_decode_fused(p, nullptr), Error) << what;
  };
  bad([](auto& p) { p.route.num_tokens = 2; }, "two tokens");
  bad([](auto& p) { p.route.top_k = 17; }, "top_k > E");
  bad([](auto& p) { p.route.local_experts = 8; }, "expert parallelism");
  bad([](auto& p) { p.route.shared_expert = 3; }, "shared expert not E");
  bad([](auto& p) { p.hidden = 60; }, "hidden not a multiple of 8");
  bad([](auto& p) { p.hidden = cuda::kMoeDecodeFusedMaxHidden + 8; }, "hidden too large");
  bad([](auto& p) { p.inter = cuda::kMoeDecodeFusedMaxInter + 8; }, "inter too large");
  bad([](auto& p) { p.barrier = nullptr; }, "no barrier");
  bad([&](auto& p) { p.next_norm = f(0xc000); }, "next_norm without its output");
  bad([&](auto& p) { p.next_norm = f(0xc000), p.next_normed = reinterpret_cast<cuda::bf16*>(0xd000), p.accumulate = false; },
      "next_norm of a partial row");
  bad([](auto& p) { p.router = reinterpret_cast<const float*>(0x7004); }, "misaligned router");
#else
  GTEST_SKIP() << "built without the CUDA backend";
#endif
}

// The fused block on one tensor-parallel rank's slice (experts split by intermediate dimension:
// rank r holds gate/up rows [r·Ir, (r+1)·Ir) and the down columns of the same range of every
// expert, the shared one too): each of `ranks` launches routes over all E as the whole block
// does and writes its partial, rank 0 onto x (accumulate), the others over it; the partials
// summed on the host give the whole block's residual update. Against the CPU reference per rank
// (8e-3 relative RMS) and in sum. Odd slices (Ir 40 and 8, hidden 136 and 64) and the model's
// at TP = 2.
TEST(MoeGpu, FusedDecodeBlockTensorParallelSlices) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  ASSERT_TRUE(cuda::moe_decode_fused_supported());
  std::mt19937 rng(321);
  struct Case {
    int E, K, H, Ir, ranks;
    bool shared;
  };
  for (const Case& c : {Case{256, 8, 2304, 512, 2, true}, Case{40, 6, 136, 40, 2, true},
                        Case{20, 3, 64, 8, 4, false}}) {
    const std::string what = str("E", c.E, " K", c.K, " H", c.H, " Ir", c.Ir, " ranks ", c.ranks,
                                 c.shared ? " shared" : "");
    const int E = c.E, K = c.K, H = c.H, Ir = c.Ir, I = Ir * c.ranks, S = K + c.shared;
    constexpr float kEps = 1e-6f;
    const auto x = random_f32(rng, H, -7.f, 7.f);
    const auto router = random_f32(rng, size_t(E) * H, -0.1f, 0.1f);
    const auto bias = random_f32(rng, E, -0.3f, 0.3f);
    const auto norm_w = random_f32(rng, H, 0.5f, 1.5f);

    // Reference: routing from the whole row, then each rank's slice of every chosen expert.
    std::vector<float> xn, a, logits;
    fused_block_input(x, norm_w, router, H, E, kEps, xn, a, logits);
    std::vector<int> ids;
    std::vector<float> wts;
    cpu_route(logits, bias, 1, E, K, ids, wts);
    // Per rank: its weights (the chosen experts' slices only; the rest keeps GuardedBuffer's
    // fill) and its partial.
    std::vector<GuardedBuffer<uint16_t>> dw13, dw2;
    std::vector<std::vector<float>> part(c.ranks, std::vector<float>(size_t(H), 0.f));
    for (int r = 0; r < c.ranks; ++r) {
      dw13.emplace_back(size_t(E + c.shared) * 2 * Ir * H);
      dw2.emplace_back(size_t(E + c.shared) * H * Ir);
    }
    const float r13 = std::min(0.1f, 2.f / std::sqrt(float(H))), r2 = std::min(0.1f, 2.f / std::sqrt(float(I)));
    std::vector<float> gu(size_t(2) * Ir), act(static_cast<size_t>(Ir)), y(static_cast<size_t>(H));
    for (int s = 0; s < S; ++s) {
      const int e = s < K ? ids[size_t(s)] : E;
      const float wt = s < K ? wts[size_t(s)] : 1.f;
      const auto w13 = random_bf16(rng, size_t(2) * I * H, -r13, r13), w2 = random_bf16(rng, size_t(H) * I, -r2, r2);
      for (int r = 0; r < c.ranks; ++r) {
        std::vector<uint16_t> s13(size_t(2) * Ir * H), s2(size_t(H) * Ir);
        for (int half = 0; half < 2; ++half)  // gate rows, then up rows
          std::copy_n(&w13[(size_t(half) * I + size_t(r) * Ir) * H], size_t(Ir) * H, &s13[size_t(half) * Ir * H]);
        for (int n = 0; n < H; ++n) std::copy_n(&w2[size_t(n) * I + size_t(r) * Ir], Ir, &s2[size_t(n) * Ir]);
        CUDA_CHECK(cudaMemcpy(dw13[size_t(r)].data() + size_t(e) * s13.size(), s13.data(), s13.size() * 2,
                              cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(dw2[size_t(r)].data() + size_t(e) * s2.size(), s2.data(), s2.size() * 2,
                              cudaMemcpyHostToDevice));
        cpu::matmul(a.data(), bf16_to_float(s13).data(), gu.data(), 1, 2 * Ir, H);
        cpu::silu_mul(gu.data(), act.data(), 1, Ir);
        cpu::matmul(act.data(), bf16_to_float(s2).data(), y.data(), 1, H, Ir);
        for (int d = 0; d < H; ++d) part[size_t(r)][size_t(d)] += wt * y[size_t(d)];
      }
    }

    GuardedBuffer<float> dx(static_cast<size_t>(H)), dr(router.size()), db(static_cast<size_t>(E)),
        dl(static_cast<size_t>(E)), dw(static_cast<size_t>(S)), dnw(static_cast<size_t>(H)),
        dscratch(cuda::moe_decode_fused_scratch_floats(K, H, Ir));
    GuardedBuffer<int> di(static_cast<size_t>(S)), dbar(2);
    dr.upload(router);
    db.upload(bias);
    dnw.upload(norm_w);
    dbar.upload(std::vector<int>{0, 0});
    std::vector<float> total = x, want_total = x;
    for (int r = 0; r < c.ranks; ++r) {
      const std::string run = str(what, " rank ", r);
      cuda::MoeDecodeFusedParams p;
      p.route = route_rule(1, E, K, dl.data(), db.data(), di.data(), dw.data());
      p.route.shared_expert = c.shared ? E : -1;
      p.x = dx.data(), p.norm_weight = dnw.data(), p.eps = kEps, p.router = dr.data();
      p.w13 = dev<cuda::bf16>(dw13[size_t(r)]), p.w2 = dev<cuda::bf16>(dw2[size_t(r)]);
      p.hidden = H, p.inter = Ir, p.accumulate = r == 0;
      p.scratch = dscratch.data();
      p.barrier = reinterpret_cast<unsigned*>(dbar.data());
      dx.upload(x);
      di.poison();
      dw.poison();
      dscratch.poison();
      cuda::run_moe_decode_fused(p, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      const auto gi = di.to_host();
      for (int k = 0; k < K; ++k) ASSERT_EQ(gi[size_t(k)], ids[size_t(k)]) << run << " k " << k;
      const auto gx = dx.to_host();
      std::vector<float> got(static_cast<size_t>(H));
      for (int d = 0; d < H; ++d) got[size_t(d)] = r == 0 ? gx[size_t(d)] - x[size_t(d)] : gx[size_t(d)];
      expect_close(str("tp partial ", run), got.data(), part[size_t(r)].data(), size_t(H), 8e-3, 1e-1);
      for (int d = 0; d < H; ++d) {
        total[size_t(d)] += got[size_t(d)];
        want_total[size_t(d)] += part[size_t(r)][size_t(d)];
      }
      EXPECT_EQ(dbar.to_host(), (std::vector<int>{0, 0})) << run << ": the barrier is reset";
      EXPECT_TRUE(dx.guards_intact() && dscratch.guards_intact() && dw13[size_t(r)].guards_intact() &&
                  dw2[size_t(r)].guards_intact())
          << run;
    }
    expect_close(str("tp sum of partials ", what), total.data(), want_total.data(), size_t(H), 2e-3, 1e-1);
  }
#endif
}

// The decode launchers' argument checks run before anything touches the device: checked without
// a GPU (pointers are stand-ins, never dereferenced).
TEST(MoeGpu, DecodeLaunchersRefuseBadArguments) {
#if KIMI_HAVE_CUDA
  auto fake = [](uintptr_t a) { return reinterpret_cast<float*>(a); };
  cuda::MoeRouteDecodeParams p;
  p.route.num_tokens = 1, p.route.num_experts = 256, p.route.top_k = 8;
  p.route.logits = fake(256), p.route.correction_bias = fake(512);
  p.route.expert_ids = reinterpret_cast<int*>(768), p.route.weights = fake(1024);
  p.x = fake(4096), p.router = fake(8192), p.hidden = 2304, p.block_m = 16;
  p.workspace = reinterpret_cast<int*>(12288), p.ticket = reinterpret_cast<int*>(16384);
  auto refused = [&](const char* what, auto edit) {
    cuda::MoeRouteDecodeParams q = p;
    edit(q);
    EXPECT_THROW(cuda::run_moe_route_decode(q, nullptr), Error) << what;
  };
  refused("no tokens", [](auto& q) { q.route.num_tokens = 0; });
  refused("more tokens than the launch takes", [](auto& q) { q.route.num_tokens = 9; });
  refused("hidden not a multiple of 4", [](auto& q) { q.hidden = 2302; });
  refused("unaligned input", [&](auto& q) { q.x = fake(4100); });
  refused("unaligned norm weight", [&](auto& q) {
    q.norm_weight = fake(20004), q.normed = reinterpret_cast<cuda::bf16*>(24576);
  });
  refused("norm without its output", [&](auto& q) { q.norm_weight = fake(20480); });
  refused("no ticket", [](auto& q) { q.ticket = nullptr; });
  refused("block_m 128", [](auto& q) { q.block_m = 128; });
  refused("shared expert not after the local ones", [](auto& q) { q.route.shared_expert = 3; });
  cuda::MoeUnpermuteParams u;
  u.num_tokens = 1, u.top_k = 9, u.hidden = 2304, u.num_experts = 257;
  u.workspace = reinterpret_cast<int*>(256), u.weights = fake(512), u.y = fake(1024), u.out = fake(2048);
  u.norm_weight = fake(4096);
  EXPECT_THROW(cuda::run_moe_unpermute(u, nullptr), Error) << "fused norm without its output";
  u.normed = reinterpret_cast<cuda::bf16*>(8192);
  u.accumulate = false;
  EXPECT_THROW(cuda::run_moe_unpermute(u, nullptr), Error) << "fused norm without accumulation";
  u.accumulate = true, u.hidden = cuda::kMoeUnpermuteNormMaxHidden + 8;
  EXPECT_THROW(cuda::run_moe_unpermute(u, nullptr), Error) << "fused norm over a too wide row";
#endif
}

TEST(MoeGpu, PathChoice) {
#if KIMI_HAVE_CUDA
  cuda::MoeGemmParams p;
  p.num_experts = 256, p.top_k = 8, p.hidden = 2304, p.inter = 1024, p.block_m = 16;
  for (int T : {1, 3, 7, 16, 64, 128}) {
    p.num_tokens = T;
    EXPECT_EQ(cuda::moe_gemm_path(p), cuda::MoeGemmPath::kGemv) << "T " << T;
  }
  for (int T : {129, 769}) {
    p.num_tokens = T;
    EXPECT_EQ(cuda::moe_gemm_path(p), cuda::MoeGemmPath::kTiled) << "T " << T;
  }
  p.num_tokens = 64, p.block_m = 64;  // tiles of 64 rows: the tiled kernel
  EXPECT_EQ(cuda::moe_gemm_path(p), cuda::MoeGemmPath::kTiled);
  p.num_tokens = 4096;
  EXPECT_EQ(cuda::moe_gemm_path(p), cuda::MoeGemmPath::kTiled);
  // The model's block_m: 128 (wgmma) from kMoeWgmmaMinRowsPerExpert (1) row per expert on
  // average, 16 below; another bound when asked (KIMI_CUDA_MOE_WGMMA_ROWS).
  EXPECT_EQ(cuda::moe_block_m(int64_t(31) * 8, 256), 16);
  EXPECT_EQ(cuda::moe_block_m(int64_t(32) * 8, 256), 128);
  EXPECT_EQ(cuda::moe_block_m(int64_t(1023) * 8, 256, 32), 16);
  EXPECT_EQ(cuda::moe_block_m(int64_t(1024) * 8, 256, 32), 128);
  for (int T : {32, 64, 256, 1024, 4096, 16384}) {
    p.num_tokens = T, p.block_m = cuda::moe_block_m(int64_t(T) * 8, 256);
    EXPECT_EQ(cuda::moe_gemm_path(p), cuda::MoeGemmPath::kWgmma) << "T " << T;
  }
  // The wgmma tile: 128 × 256, 4 stages, at every size.
  for (int T : {4096, 16384}) {
    p.num_tokens = T;
    EXPECT_EQ(cuda::moe::moe_wgmma_tile(p).bn, 256) << "T " << T;
    EXPECT_EQ(cuda::moe::moe_wgmma_tile(p).stages, 4) << "T " << T;
  }
  p.path = cuda::MoeGemmPath::kTiled;  // forced: the old kernel stays selectable
  EXPECT_EQ(cuda::moe_gemm_path(p), cuda::MoeGemmPath::kTiled);
  p.path = cuda::MoeGemmPath::kAuto;
  p.block_m = 16, p.num_tokens = 1;
  p.path = cuda::MoeGemmPath::kTiled;  // forced either way
  EXPECT_EQ(cuda::moe_gemm_path(p), cuda::MoeGemmPath::kTiled);
  p.path = cuda::MoeGemmPath::kGemv, p.num_tokens = 4096, p.block_m = 64;
  EXPECT_EQ(cuda::moe_gemm_path(p), cuda::MoeGemmPath::kGemv);
  p.path = cuda::MoeGemmPath::kAuto, p.num_tokens = 64, p.block_m = 16;
  p.hidden = 8192;  // 16 staged rows of 8k would take 256 KB of shared memory
  EXPECT_EQ(cuda::moe_gemm_path(p), cuda::MoeGemmPath::kTiled);
  // Shared memory: staged rows (stride ≡ 32 mod 64, >= K) or the k-split reduction.
  p.hidden = 2304;
  p.num_tokens = 1;
  EXPECT_EQ(cuda::moe::moe_gemv_smem_bytes(p, true), size_t(8 * 2 * 1 * 4 * 32 * 4));  // 1 row
  p.num_tokens = 64;
  EXPECT_EQ(cuda::moe::moe_gemv_smem_bytes(p, true), size_t(16) * 2336 * 2);
  EXPECT_EQ(cuda::moe::moe_gemv_smem_bytes(p, false), size_t(16) * 1056 * 2);
  p.num_tokens = 7;
  EXPECT_EQ(cuda::moe::moe_gemv_smem_bytes(p, true), size_t(7) * 2336 * 2);
  p.hidden = 136, p.inter = 40;
  EXPECT_EQ(cuda::moe::moe_gemv_smem_bytes(p, true), size_t(8 * 2 * 1 * 4 * 32 * 4));
#else
  GTEST_SKIP() << "built without the CUDA backend";
#endif
}

// Small odd shapes (hidden 136, I 40: neither a multiple of 16 or 32), both kernels, both tile
// heights, decode and prefill-sized T.
TEST(MoeGpu, ExpertsSmallShapes) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  ExpertWeights w(16, 136, 40, 29);
  for (int T : {1, 7, 63, 64, 65})
    for (int bm : {16, 64}) {
      const ExpertCase c = make_case(w, T, 4, false, 30 + T + bm);
      check_experts(w, c, bm, kBothPaths, expected_auto(T, 16, 4, bm));
    }
#endif
}

TEST(MoeGpu, ExpertsRealisticShapes) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  struct Case {
    int T, E, hidden, I, bm;
  };
  for (const Case& k : {Case{1, 256, 512, 1024, 16}, Case{65, 256, 256, 128, 16},
                        Case{769, 64, 256, 96, 64}, Case{769, 256, 128, 64, 16}}) {
    ExpertWeights w(k.E, k.hidden, k.I, 41 + k.T);
    const ExpertCase c = make_case(w, k.T, 8, false, 42 + k.T);
    check_experts(w, c, k.bm, kBothPaths, expected_auto(k.T, k.E, 8, k.bm));
  }
#endif
}

// The decode path (issue 9) at the model's sizes and its tensor-parallel slices: T = 1, 3, 7, 64
// tokens, top-8, against the CPU and against the tiled kernel on the same permutation. The full
// hidden sizes use fewer experts (host memory for the fp32 reference weights); 256 experts at
// the small ones give the decode pattern of many experts with 1..3 rows.
TEST(MoeGpu, ExpertsDecodeGemv) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  struct Shape {
    int E, hidden, I;
  };
  for (const Shape& s : {Shape{16, 2304, 1024}, Shape{32, 2304, 512}, Shape{256, 128, 32},
                         Shape{256, 128, 16}}) {
    ExpertWeights w(s.E, s.hidden, s.I, 50 + s.I);
    for (int T : {1, 3, 7, 64}) {
      const ExpertCase c = make_case(w, T, 8, false, 51 + T + s.I);
      const int bm = model_block_m(T, s.E, 8);
      check_experts(w, c, bm, kBothPaths, expected_auto(T, s.E, 8, bm));
      // Forced at tiles of 64 rows: several 16-row passes per tile.
      if (T == 64 && bm != 64)
        check_experts(w, c, 64, {cuda::MoeGemmPath::kGemv}, cuda::MoeGemmPath::kTiled);
    }
  }
#endif
}

// Experts listed twice by one token (K > E forces it): tiles with more rows than T, so the gemv
// kernel runs several passes of T rows over one tile.
TEST(MoeGpu, ExpertsRepeatedIds) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  ExpertWeights w(4, 128, 32, 60);
  for (int T : {1, 3, 9}) {
    const ExpertCase c = make_case(w, T, 8, true, 61 + T);
    for (int bm : {16, 64}) check_experts(w, c, bm, kBothPaths, expected_auto(T, 4, 8, bm));
  }
#endif
}

// A prefill-sized batch under kAuto takes the wgmma kernel (block_m 128 as the model picks).
TEST(MoeGpu, ExpertsPrefillTakesWgmma) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  ExpertWeights w(256, 128, 32, 70);
  const int T = 4096, bm = model_block_m(T, 256, 8);
  ASSERT_EQ(bm, 128);
  const ExpertCase c = make_case(w, T, 8, false, 71);
  check_experts(w, c, bm, {cuda::MoeGemmPath::kAuto}, cuda::MoeGemmPath::kWgmma);
#endif
}

#if KIMI_HAVE_CUDA
// Skewed routing: every token lists expert 0 (it gets T rows, 1/K of all), the other K − 1
// experts come from 1..busy−1, and experts busy..E−1 get no rows at all.
ExpertCase skewed_case(const ExpertWeights& w, int T, int K, int busy, uint32_t seed) {
  std::mt19937 rng(seed + 1);
  std::vector<int> ids(size_t(T) * K), pick(busy - 1);
  std::iota(pick.begin(), pick.end(), 1);
  for (int t = 0; t < T; ++t) {
    std::shuffle(pick.begin(), pick.end(), rng);
    ids[size_t(t) * K] = 0;
    for (int k = 1; k < K; ++k) ids[size_t(t) * K + k] = pick[k - 1];
  }
  return make_case(w, T, K, false, seed, &ids);
}

const std::vector<cuda::MoeGemmPath> kWgmmaAndTiled = {cuda::MoeGemmPath::kWgmma,
                                                       cuda::MoeGemmPath::kTiled};
#endif

// The wgmma kernel forced (block_m 128) against the CPU and the old tiled kernel: odd small shapes
// (hidden 136 = 2·64 + 8, I 40: k tails of one 16-byte piece, column blocks mostly empty) and a
// 256-expert one, T = 1, 7, 65, 769, 4096 (1..128 rows per expert: single-row tiles, tails in the
// second warpgroup, experts spanning several tiles).
TEST(MoeGpu, ExpertsWgmmaSmallShapes) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  struct Shape {
    int E, K, hidden, I;
  };
  for (const Shape& s : {Shape{16, 4, 136, 40}, Shape{256, 8, 128, 64}}) {
    ExpertWeights w(s.E, s.hidden, s.I, 80 + s.E);
    for (int T : {1, 7, 65, 769, 4096}) {
      const ExpertCase c = make_case(w, T, s.K, false, 81 + T + s.E);
      check_experts(w, c, 128, kWgmmaAndTiled, cuda::MoeGemmPath::kWgmma);
    }
  }
#endif
}

// Skewed routing at a small shape: expert 0 holds half the rows (K = 2, 32 tiles of 128), experts
// 6..15 none, so CTAs of empty experts and long experts meet in one launch.
TEST(MoeGpu, ExpertsWgmmaSkewed) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  ExpertWeights w(16, 256, 192, 90);
  for (int T : {65, 4096}) {
    const ExpertCase c = skewed_case(w, T, 2, 6, 91 + T);
    check_experts(w, c, 128, kWgmmaAndTiled, cuda::MoeGemmPath::kWgmma);
  }
#endif
}

// The model's sizes (hidden 2304, I 1024, top-8) on 32 experts (host memory and CPU time of the
// fp32 reference), T = 1, 7, 65, 769; and T = 4096 skewed on 64 experts: expert 0 in every token
// (4096 rows, ~4.4× the others), experts 32..63 empty. T = 769 and 4096 also run the 128 × 128
// tile (moe_wgmma_tile picks 128 × 256).
TEST(MoeGpu, ExpertsWgmmaFullSize) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  {
    ExpertWeights w(32, 2304, 1024, 100);
    for (int T : {1, 7, 65, 769}) {
      const ExpertCase c = make_case(w, T, 8, false, 101 + T);
      check_experts(w, c, 128, kWgmmaAndTiled, cuda::MoeGemmPath::kWgmma);
      if (T == 769)
        check_experts(w, c, 128, {cuda::MoeGemmPath::kWgmma}, cuda::MoeGemmPath::kWgmma,
                      &cuda::moe::kMoeWgmmaTiles[0]);
    }
  }
  ExpertWeights w(64, 2304, 1024, 110);
  const ExpertCase c = skewed_case(w, 4096, 8, 32, 111);
  check_experts(w, c, 128, kWgmmaAndTiled, cuda::MoeGemmPath::kWgmma);
  check_experts(w, c, 128, {cuda::MoeGemmPath::kWgmma}, cuda::MoeGemmPath::kWgmma,
                &cuda::moe::kMoeWgmmaTiles[0]);
#endif
}

// Every wgmma tile shape bench_moe times (the defaults are one of them), at a shape with k and
// column tails in both GEMMs (hidden 264 = 4·64 + 8, I 200 = 3·64 + 8).
TEST(MoeGpu, ExpertsWgmmaTileShapes) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  ExpertWeights w(8, 264, 200, 120);
  const ExpertCase c = make_case(w, 300, 2, false, 121);
  for (const cuda::moe::MoeWgmmaTile& tile : cuda::moe::kMoeWgmmaTiles)
    check_experts(w, c, 128, {cuda::MoeGemmPath::kWgmma}, cuda::MoeGemmPath::kWgmma, &tile);
#endif
}

#if KIMI_HAVE_CUDA
// Routing that gives expert e exactly counts[e] rows: K = 2 experts per token, the pairs dealt
// expert by expert over the tokens (pair i to token i % T, slot i / T), so no token lists an
// expert twice while counts[e] <= T. sum(counts) must be even.
std::vector<int> ids_for_counts(const std::vector<int>& counts) {
  const int total = std::accumulate(counts.begin(), counts.end(), 0), T = total / 2;
  std::vector<int> ids(static_cast<size_t>(total));
  int i = 0;
  for (int e = 0; e < int(counts.size()); ++e)
    for (int j = 0; j < counts[e]; ++j, ++i) ids[size_t(i % T) * 2 + i / T] = e;
  return ids;
}
// Row counts at every edge of the 128-row tiles and their two 64-row warpgroups: empty, one row,
// 63 / 64 / 65 (the second warpgroup idle, then one row in it), 127 / 128 / 129 (a second tile
// with one row), 191 / 192 / 193, 255 / 256 / 257, 385. Sum even (two experts per token).
const std::vector<int> kEdgeCounts = {0, 1, 63, 64, 65, 127, 128, 129, 191, 192, 193, 255, 256, 257, 385, 8};
#endif

// Those row counts with k and column tails in both GEMMs (hidden 264 = 4·64 + 8, I 200 = 3·64 + 8;
// hidden 136, I 40: column blocks mostly empty), every tile shape.
TEST(MoeGpu, ExpertsWgmmaTileEdges) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  const std::vector<int> ids = ids_for_counts(kEdgeCounts);
  const int T = int(ids.size()) / 2;
  for (const auto& [hidden, I] : {std::pair{264, 200}, std::pair{136, 40}}) {
    ExpertWeights w(int(kEdgeCounts.size()), hidden, I, 120 + I);
    const ExpertCase c = make_case(w, T, 2, false, 121 + I, &ids);
    check_experts(w, c, 128, kWgmmaAndTiled, cuda::MoeGemmPath::kWgmma);
    for (const cuda::moe::MoeWgmmaTile& tile : cuda::moe::kMoeWgmmaTiles) {
      check_experts(w, c, 128, {cuda::MoeGemmPath::kWgmma}, cuda::MoeGemmPath::kWgmma, &tile);
      // A grid of 2 CTAs: each walks many items, the ring (3, 4 or 6 slots) running on across
      // items whose k steps (1 .. 5 per pass) are not a multiple of it.
      cuda::moe::MoeWgmmaTile few = tile;
      few.max_ctas = 2;
      check_experts(w, c, 128, {cuda::MoeGemmPath::kWgmma}, cuda::MoeGemmPath::kWgmma, &few);
    }
  }
#endif
}

#if KIMI_HAVE_CUDA
// High precision (MoeGemmParams::x_lo / act_lo): fp32 inputs split on the host into bf16 hi + lo
// planes; gate_up runs its second k pass over x_lo and writes SiLU(g)·u split into act / act_lo,
// down runs over both act planes. Against the fp32 CPU chain on the unrounded x with an unrounded
// act: hi + lo carries both to 2^-16, so act and y must land within 5e-5 relative (the bf16
// kernels' act alone is ~2e-3 off: asserted 20x worse for act's hi plane, so a skipped lo pass or a
// wrong plane fails). path: kGemv (block_m 16) or kWgmma (block_m 128, the tile given or
// moe_wgmma_tile's).
void check_experts_split(ExpertWeights& w, int T, int K, cuda::MoeGemmPath path, uint32_t seed,
                         const cuda::moe::MoeWgmmaTile* tile = nullptr,
                         const std::vector<int>* given_ids = nullptr) {
  const int E = w.E, hidden = w.hidden, I = w.I;
  const int64_t R = int64_t(T) * K;
  std::mt19937 rng(seed);
  const std::vector<int> ids = given_ids ? *given_ids : random_ids(rng, T, E, K, false);
  const std::vector<float> x = random_f32(rng, size_t(T) * hidden, -1.f, 1.f);
  std::vector<uint16_t> planes(2 * x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    planes[i] = f32_to_bf16(x[i]);
    planes[x.size() + i] = f32_to_bf16(x[i] - bf16_to_f32(planes[i]));
  }
  std::vector<float> act_ref(size_t(R) * I), y_ref(size_t(R) * hidden), gu(2 * I);
  for (int64_t i = 0; i < R; ++i) {
    const int e = ids[i];
    cpu::matmul(&x[size_t(i / K) * hidden], &w.w13f[size_t(e) * 2 * I * hidden], gu.data(), 1, 2 * I,
                hidden);
    cpu::silu_mul(gu.data(), &act_ref[size_t(i) * I], 1, I);
    cpu::matmul(&act_ref[size_t(i) * I], &w.w2f[size_t(e) * hidden * I], &y_ref[size_t(i) * hidden],
                1, hidden, I);
  }
  const int bm = path == cuda::MoeGemmPath::kWgmma ? 128 : 16;
  GuardedBuffer<uint16_t> dx(planes.size()), dact(R * I), dact_lo(R * I);
  GuardedBuffer<float> dy(R * hidden);
  GuardedBuffer<int> dids(ids.size()), dws(cuda::moe_permute_workspace_ints(E, R));
  dx.upload(planes);
  dids.upload(ids);
  cuda::MoePermuteParams pp;
  pp.num_tokens = T, pp.num_experts = E, pp.top_k = K, pp.block_m = bm;
  pp.expert_ids = dids.data(), pp.workspace = dws.data();
  cuda::run_moe_permute(pp, nullptr);
  cuda::MoeGemmParams gp;
  gp.num_tokens = T, gp.num_experts = E, gp.top_k = K, gp.block_m = bm, gp.hidden = hidden;
  gp.inter = I, gp.workspace = dws.data();
  gp.x = dev<cuda::bf16>(dx), gp.x_lo = gp.x + size_t(T) * hidden;
  gp.w13 = reinterpret_cast<const cuda::bf16*>(w.dw13.data());
  gp.w2 = reinterpret_cast<const cuda::bf16*>(w.dw2.data());
  gp.act = dev<cuda::bf16>(dact), gp.act_lo = dev<cuda::bf16>(dact_lo), gp.y = dy.data();
  gp.path = path;
  ASSERT_EQ(cuda::moe_gemm_path(gp), path);
  dact.poison();
  dact_lo.poison();
  dy.poison();
  if (tile) {
    cuda::moe::launch_moe_wgmma(gp, true, *tile, nullptr);
    cuda::moe::launch_moe_wgmma(gp, false, *tile, nullptr);
  } else {
    cuda::run_moe_gate_up(gp, nullptr);
    cuda::run_moe_down(gp, nullptr);
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<int> ws = dws.to_host();
  const cuda::MoePermuteView hv = cuda::moe_permute_view(ws.data(), E, R);
  const auto hi = bf16_to_float(dact.to_host()), lo = bf16_to_float(dact_lo.to_host());
  const auto y_rows = dy.to_host();
  std::vector<float> act_pair(size_t(R) * I), hi_pair(act_pair.size()), y_pair(size_t(R) * hidden);
  for (int64_t i = 0; i < R; ++i) {
    const size_t r = size_t(hv.pair_row[i]);
    for (int n = 0; n < I; ++n) {
      hi_pair[size_t(i) * I + n] = hi[r * I + n];
      act_pair[size_t(i) * I + n] = hi[r * I + n] + lo[r * I + n];
    }
    std::copy_n(&y_rows[r * hidden], hidden, &y_pair[size_t(i) * hidden]);
  }
  std::string what = str("split ", path_name(path), " T", T, " E", E, " K", K, " hid", hidden, " I", I);
  if (tile) what += str(" tile ", tile->bn, "x", tile->stages, " ctas ", tile->max_ctas);
  const ErrorStats ea = expect_close(what + " act", act_pair.data(), act_ref.data(), act_pair.size(), 5e-5, 1e-3);
  const ErrorStats eh = compare(hi_pair.data(), act_ref.data(), act_ref.size());
  EXPECT_GT(eh.rel_rms, 20 * ea.rel_rms) << what << ": the hi plane alone is " << eh.rel_rms << " off";
  expect_close(what + " y", y_pair.data(), y_ref.data(), y_pair.size(), 5e-5, 1e-3);
  EXPECT_TRUE(dact.guards_intact() && dact_lo.guards_intact() && dy.guards_intact() && dx.guards_intact())
      << what;
}
#endif

// The split-input kernels (high precision): gemv at decode sizes (1..8 rows per pass; T = 9 and
// 16: tiles of more rows than a pass), wgmma at odd small shapes, every tile shape, the tile-edge
// row counts, the model's sizes. Path choice: a split input's two staged planes still fit the gemv kernel at hidden 2304.
TEST(MoeGpu, ExpertsSplitInput) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  {
    ExpertWeights w(16, 136, 40, 130);
    for (int T : {1, 7, 9, 16}) check_experts_split(w, T, 4, cuda::MoeGemmPath::kGemv, 131 + T);
    for (int T : {1, 65, 769}) check_experts_split(w, T, 4, cuda::MoeGemmPath::kWgmma, 135 + T);
  }
  {
    ExpertWeights w(8, 264, 200, 140);
    for (const cuda::moe::MoeWgmmaTile& tile : cuda::moe::kMoeWgmmaTiles) {
      check_experts_split(w, 300, 2, cuda::MoeGemmPath::kWgmma, 141, &tile);
      cuda::moe::MoeWgmmaTile few = tile;  // 3 CTAs walking many items, two passes each
      few.max_ctas = 3;
      check_experts_split(w, 300, 2, cuda::MoeGemmPath::kWgmma, 141, &few);
    }
    ExpertWeights we(int(kEdgeCounts.size()), 264, 200, 142);
    const std::vector<int> ids = ids_for_counts(kEdgeCounts);
    check_experts_split(we, int(ids.size()) / 2, 2, cuda::MoeGemmPath::kWgmma, 143, nullptr, &ids);
  }
  {
    ExpertWeights w(16, 2304, 1024, 150);
    for (int T : {1, 3, 8}) {
      cuda::MoeGemmParams p;
      p.num_tokens = T, p.num_experts = 16, p.top_k = 8, p.block_m = 16, p.hidden = 2304, p.inter = 1024;
      cuda::bf16 dummy;
      p.x_lo = &dummy;
      EXPECT_EQ(cuda::moe_gemm_path(p), cuda::MoeGemmPath::kGemv) << "T " << T;
      check_experts_split(w, T, 8, cuda::MoeGemmPath::kGemv, 151 + T);
    }
    check_experts_split(w, 40, 8, cuda::MoeGemmPath::kWgmma, 160);
  }
#endif
}

// Exact layout probe of the wgmma down GEMM (one expert, k = I = 64, N = hidden = 256; 256 rows:
// two full tiles, 200 rows: a full tile and one of 72 rows, its second warpgroup partly past the
// end): act row r is one-hot at k(r) = (5r + 3) % 64, so y[r, n] = W2[n, k(r)] exactly. Two weight
// patterns tell a wrong output column (W2[n, k] = n + 1, exact in bf16 up to 256: y names the
// column computed) from a wrong k (W2[n, k] = k + 1: y names the k that met the one). Mismatches
// print both readings.
TEST(MoeGpu, WgmmaLayoutProbe) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  const int E = 1, K = 1, I = 64, H = 256;
  auto kof = [](int r) { return (5 * r + 3) % 64; };
  for (int T : {256, 200}) {
    std::vector<int> ids(T, 0);
    GuardedBuffer<int> dids(T), dws(cuda::moe_permute_workspace_ints(E, T));
    dids.upload(ids);
    cuda::MoePermuteParams pp;
    pp.num_tokens = T, pp.num_experts = E, pp.top_k = K, pp.block_m = 128;
    pp.expert_ids = dids.data(), pp.workspace = dws.data();
    cuda::run_moe_permute(pp, nullptr);
    std::vector<uint16_t> act(size_t(T) * I, f32_to_bf16(0.f));
    for (int r = 0; r < T; ++r) act[size_t(r) * I + kof(r)] = f32_to_bf16(1.f);
    GuardedBuffer<uint16_t> dact(act.size()), dx(size_t(T) * H), dw13(size_t(2) * I * H),
        dw2(size_t(H) * I);
    GuardedBuffer<float> dy(size_t(T) * H);
    dact.upload(act);
    for (int pattern = 0; pattern < 2; ++pattern) {
      std::vector<uint16_t> w2(size_t(H) * I);
      for (int n = 0; n < H; ++n)
        for (int k = 0; k < I; ++k) w2[size_t(n) * I + k] = f32_to_bf16(float(pattern ? k + 1 : n + 1));
      dw2.upload(w2);
      for (cuda::moe::MoeWgmmaTile tile : cuda::moe::kMoeWgmmaTiles) {
        dy.poison();
        cuda::MoeGemmParams gp;
        gp.num_tokens = T, gp.num_experts = E, gp.top_k = K, gp.block_m = 128, gp.hidden = H;
        gp.inter = I, gp.workspace = dws.data(), gp.x = reinterpret_cast<cuda::bf16*>(dx.data());
        gp.w13 = reinterpret_cast<cuda::bf16*>(dw13.data());
        gp.w2 = reinterpret_cast<cuda::bf16*>(dw2.data());
        gp.act = reinterpret_cast<cuda::bf16*>(dact.data()), gp.y = dy.data();
        cuda::moe::launch_moe_wgmma(gp, false, tile, nullptr);
        CUDA_CHECK(cudaDeviceSynchronize());
        const auto y = dy.to_host();
        int bad = 0;
        for (int r = 0; r < T; ++r)
          for (int n = 0; n < H; ++n) {
            const float want = float(pattern ? kof(r) + 1 : n + 1);
            const float got = y[size_t(r) * H + n];
            if (got == want) continue;
            if (bad++ < 12)
              std::printf("    [probe] %d rows, tile %dx%d %s: y[%d, %d] = %g, want %g\n", T,
                          tile.bn, tile.stages, pattern ? "k pattern" : "n pattern", r, n, got, want);
          }
        EXPECT_EQ(bad, 0) << T << " rows, tile " << tile.bn << "x" << tile.stages << " pattern " << pattern;
        EXPECT_TRUE(dy.guards_intact());
      }
    }
  }
#endif
}

}  // namespace
}  // namespace kimi::test
