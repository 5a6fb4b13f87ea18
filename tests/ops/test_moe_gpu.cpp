// MoE GPU kernels against the CPU reference: routing (src/ops/cpu/moe.h; ids must match exactly,
// weights to fp32 rounding) and the routed-expert path (permute → grouped gate_up GEMM with SwiGLU
// → grouped down GEMM → weighted un-permute into an fp32 accumulator) against per-expert fp32
// SwiGLU MLPs (cpu::matmul, cpu::silu_mul). The bf16 act rounding (~2.5e-3 measured): 8e-3 relative RMS allowed.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"  // before gpu_test_util.h, which uses str() but does not include it
#include "gpu_test_util.h"
#include "ops/cpu/basic.h"
#include "ops/cpu/moe.h"

#if KIMI_HAVE_CUDA
#include "moe/moe.h"
#endif

namespace kimi::test {
namespace {

TEST(MoeGpu, RouteMatchesCpu) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(21);
  for (auto [E, K] : {std::pair{256, 8}, std::pair{16, 4}, std::pair{20, 3}})
    for (int T : {1, 7, 63, 64, 65, 769}) {
      auto logits = random_f32(rng, size_t(T) * E, -6.f, 6.f);
      auto bias = random_f32(rng, E, -0.5f, 0.5f);
      std::vector<int> ids(size_t(T) * K);
      std::vector<float> w(size_t(T) * K);
      cpu::MoeRouteParams cp;
      cp.num_tokens = T, cp.num_experts = E, cp.top_k = K, cp.renormalize = true, cp.scaling = 2.446f;
      cp.logits = logits.data(), cp.correction_bias = bias.data(), cp.expert_ids = ids.data();
      cp.weights = w.data();
      cpu::moe_route(cp);
      GuardedBuffer<float> dl(logits.size()), db(E), dw(w.size());
      GuardedBuffer<int> di(ids.size());
      dl.upload(logits);
      db.upload(bias);
      dw.poison();
      di.poison();
      cuda::MoeRouteParams p;
      p.num_tokens = T, p.num_experts = E, p.top_k = K, p.renormalize = true, p.scaling = 2.446f;
      p.logits = dl.data(), p.correction_bias = db.data(), p.expert_ids = di.data(), p.weights = dw.data();
      cuda::run_moe_route(p, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_EQ(di.to_host(), ids) << "E " << E << " K " << K << " T " << T;
      auto gw = dw.to_host();
      expect_close(str("route weights E", E, " T", T), gw.data(), w.data(), w.size(), 1e-6, 1e-5);
      EXPECT_TRUE(dw.guards_intact() && di.guards_intact());
    }
#endif
}

#if KIMI_HAVE_CUDA
void run_experts(int T, int E, int K, int hidden, int I, int block_m, uint32_t seed) {
  std::mt19937 rng(seed);
  auto x = random_bf16(rng, size_t(T) * hidden, -1.f, 1.f);
  auto w13 = random_bf16(rng, size_t(E) * 2 * I * hidden, -0.1f, 0.1f);
  auto w2 = random_bf16(rng, size_t(E) * hidden * I, -0.1f, 0.1f);
  auto out0 = random_f32(rng, size_t(T) * hidden, -1.f, 1.f);
  // Distinct experts per token, random order, random positive weights.
  std::vector<int> ids(size_t(T) * K);
  std::vector<float> wts(size_t(T) * K);
  std::vector<int> perm(E);
  std::iota(perm.begin(), perm.end(), 0);
  for (int t = 0; t < T; ++t) {
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int k = 0; k < K; ++k) ids[size_t(t) * K + k] = perm[k];
  }
  wts = random_f32(rng, wts.size(), 0.05f, 1.f);
  // CPU: out = out0 + Σ_k w · W2_e (SiLU(W1_e x) ⊙ W3_e x)
  auto xf = bf16_to_float(x), w13f = bf16_to_float(w13), w2f = bf16_to_float(w2);
  std::vector<float> ref = out0, gu(2 * I), act(I), y(hidden);
  for (int t = 0; t < T; ++t)
    for (int k = 0; k < K; ++k) {
      const int e = ids[size_t(t) * K + k];
      cpu::matmul(&xf[size_t(t) * hidden], &w13f[size_t(e) * 2 * I * hidden], gu.data(), 1, 2 * I, hidden);
      cpu::silu_mul(gu.data(), act.data(), 1, I);
      cpu::matmul(act.data(), &w2f[size_t(e) * hidden * I], y.data(), 1, hidden, I);
      for (int d = 0; d < hidden; ++d) ref[size_t(t) * hidden + d] += wts[size_t(t) * K + k] * y[d];
    }
  const int64_t R = int64_t(T) * K;
  GuardedBuffer<uint16_t> dx(x.size()), dw13(w13.size()), dw2(w2.size()), dact(R * I);
  GuardedBuffer<float> dy(R * hidden);
  GuardedBuffer<int> dids(ids.size()), dws(cuda::moe_permute_workspace_ints(E, R));
  GuardedBuffer<float> dwts(wts.size()), dout(out0.size());
  dx.upload(x);
  dw13.upload(w13);
  dw2.upload(w2);
  dids.upload(ids);
  dwts.upload(wts);
  dout.upload(out0);
  dact.poison();
  dy.poison();
  cuda::MoePermuteParams pp;
  pp.num_tokens = T, pp.num_experts = E, pp.top_k = K, pp.block_m = block_m;
  pp.expert_ids = dids.data(), pp.workspace = dws.data();
  cuda::run_moe_permute(pp, nullptr);
  cuda::MoeGemmParams gp;
  gp.num_tokens = T, gp.num_experts = E, gp.top_k = K, gp.block_m = block_m, gp.hidden = hidden;
  gp.inter = I, gp.workspace = dws.data(), gp.x = reinterpret_cast<cuda::bf16*>(dx.data());
  gp.w13 = reinterpret_cast<cuda::bf16*>(dw13.data()), gp.w2 = reinterpret_cast<cuda::bf16*>(dw2.data());
  gp.act = reinterpret_cast<cuda::bf16*>(dact.data()), gp.y = dy.data();
  cuda::run_moe_gate_up(gp, nullptr);
  cuda::run_moe_down(gp, nullptr);
  cuda::MoeUnpermuteParams up;
  up.num_tokens = T, up.top_k = K, up.hidden = hidden, up.num_experts = E, up.workspace = dws.data();
  up.weights = dwts.data(), up.y = dy.data(), up.out = dout.data();
  up.accumulate = true;
  cuda::run_moe_unpermute(up, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  auto got = dout.to_host();
  // Compare the routed contribution (out − out0) so the accumulator's base does not hide errors.
  std::vector<float> gd(got.size()), rd(got.size());
  for (size_t i = 0; i < got.size(); ++i) gd[i] = got[i] - out0[i], rd[i] = ref[i] - out0[i];
  expect_close(str("moe T", T, " E", E, " K", K, " hid", hidden, " I", I, " BM", block_m), gd.data(),
               rd.data(), rd.size(), 8e-3, 0.05);
  // Every row was written (no NaN from the poison) and nothing outside.
  auto acth = bf16_to_float(dact.to_host());
  EXPECT_TRUE(std::all_of(acth.begin(), acth.end(), [](float v) { return std::isfinite(v); }));
  EXPECT_TRUE(dact.guards_intact() && dy.guards_intact() && dout.guards_intact() && dws.guards_intact());
}
#endif

TEST(MoeGpu, ExpertsSmallShapes) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  for (int T : {1, 7, 63, 64, 65})
    for (int bm : {16, 64}) run_experts(T, 16, 4, 136, 40, bm, 30 + T + bm);
#endif
}

TEST(MoeGpu, ExpertsRealisticShapes) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  run_experts(1, 256, 8, 512, 1024, 16, 41);
  run_experts(65, 256, 8, 256, 128, 16, 42);
  run_experts(769, 64, 8, 256, 96, 64, 43);
  run_experts(769, 256, 8, 128, 64, 16, 44);
#endif
}

}  // namespace
}  // namespace kimi::test
