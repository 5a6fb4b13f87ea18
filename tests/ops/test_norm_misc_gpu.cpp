// RMSNorm and the element-wise kernels (embedding, SiLU·mul, random fill) against the CPU
// reference (src/ops/cpu/basic.h) on bf16-exact random inputs, odd row counts, poisoned outputs
// inside guard regions. Tolerances: bf16 outputs carry 2^-9 relative rounding, so 8e-3 relative
// RMS.
#include <algorithm>
#include <bit>
#include <numeric>

#include "core/check.h"  // before gpu_test_util.h, which uses str() but does not include it
#include "gpu_test_util.h"
#include "ops/cpu/basic.h"

#if KIMI_HAVE_CUDA
#include "misc/misc.h"
#include "norm/norm.h"
#endif

namespace kimi::test {
namespace {

#if KIMI_HAVE_CUDA
using cuda::bf16;
#endif

TEST(NormGpu, RmsNormF32AndBf16InputsWithRowIndex) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(9);
  for (int T : kRows)
    for (int D : {8, 136, 512, 2304, 5000}) {  // 5000: beyond the 4096 values held in registers
      if (int64_t(T) * D > (int64_t(1) << 22)) continue;
      auto x = random_f32(rng, size_t(T) * D, -3.f, 3.f);
      auto w = random_f32(rng, D, 0.5f, 1.5f);
      std::vector<float> ref(x.size());
      cpu::rmsnorm(x.data(), w.data(), ref.data(), T, D, 1e-5f);
      GuardedBuffer<float> dx(x.size()), dw(D);
      GuardedBuffer<uint16_t> dy(x.size());
      dx.upload(x);
      dw.upload(w);
      dy.poison();
      cuda::RmsNormParams p;
      p.rows = T, p.dim = D, p.x = dx.data(), p.weight = dw.data(), p.y = dev<bf16>(dy);
      cuda::run_rmsnorm(p, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      auto got = bf16_to_float(dy.to_host());
      expect_close(str("rmsnorm f32 T", T, " D", D), got.data(), ref.data(), ref.size(), 8e-3, 0.05);
      EXPECT_TRUE(dy.guards_intact());
      // Both outputs at once: the fp32 copy is unrounded.
      GuardedBuffer<float> dyf(x.size());
      dyf.poison();
      p.y_f32 = dyf.data();
      cuda::run_rmsnorm(p, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      auto gotf = dyf.to_host();
      expect_close(str("rmsnorm f32 out T", T, " D", D), gotf.data(), ref.data(), ref.size(), 1e-6, 1e-5);
      EXPECT_TRUE(dyf.guards_intact());
      p.y_f32 = nullptr;
      // bf16 input, reversed row order through row_index.
      auto xb = random_bf16(rng, size_t(T) * D, -3.f, 3.f);
      auto xbf = bf16_to_float(xb);
      std::vector<int> idx(T);
      std::iota(idx.rbegin(), idx.rend(), 0);
      std::vector<float> ref2(x.size());
      for (int r = 0; r < T; ++r)
        cpu::rmsnorm(xbf.data() + size_t(idx[r]) * D, w.data(), ref2.data() + size_t(r) * D, 1, D, 1e-5f);
      GuardedBuffer<uint16_t> dxb(xb.size());
      GuardedBuffer<int> didx(T);
      dxb.upload(xb);
      didx.upload(idx);
      dy.poison();
      p.x = dxb.data(), p.x_bf16 = true, p.row_index = didx.data();
      cuda::run_rmsnorm(p, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      got = bf16_to_float(dy.to_host());
      expect_close(str("rmsnorm bf16 idx T", T, " D", D), got.data(), ref2.data(), ref2.size(), 8e-3, 0.05);
      EXPECT_TRUE(dy.guards_intact());
    }
#endif
}

TEST(MiscGpu, EmbeddingAndSiluMul) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(10);
  const int V = 1000, D = 136;
  auto table = random_bf16(rng, size_t(V) * D, -2.f, 2.f);
  GuardedBuffer<uint16_t> dt(table.size());
  dt.upload(table);
  for (int T : kRows) {
    std::vector<int> ids(T);
    for (auto& i : ids) i = int(rng() % V);
    std::vector<float> ref(size_t(T) * D);
    for (int t = 0; t < T; ++t)
      for (int d = 0; d < D; ++d) ref[size_t(t) * D + d] = bf16_to_f32(table[size_t(ids[t]) * D + d]);
    GuardedBuffer<int> di(T);
    GuardedBuffer<float> dx(ref.size());
    di.upload(ids);
    dx.poison();
    cuda::EmbeddingParams p;
    p.num_tokens = T, p.dim = D, p.vocab = V, p.ids = di.data(), p.table = dev<bf16>(dt), p.x = dx.data();
    cuda::run_embedding(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    auto got = dx.to_host();
    expect_close(str("embedding T", T), got.data(), ref.data(), ref.size(), 0.0, 0.0);
    EXPECT_TRUE(dx.guards_intact());

    const int I = 72;
    auto guf = random_f32(rng, size_t(T) * 2 * I, -4.f, 4.f);
    std::vector<float> ref2(size_t(T) * I);
    cpu::silu_mul(guf.data(), ref2.data(), T, I);
    GuardedBuffer<float> dgu(guf.size());
    GuardedBuffer<uint16_t> dout(ref2.size());
    dgu.upload(guf);
    dout.poison();
    cuda::SiluMulParams<bf16> sp;
    sp.rows = T, sp.dim = I, sp.gate_up = dgu.data(), sp.out = dev<bf16>(dout);
    cuda::run_silu_mul(sp, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    auto got2 = bf16_to_float(dout.to_host());
    expect_close(str("silu_mul T", T), got2.data(), ref2.data(), ref2.size(), 8e-3, 0.05);
    EXPECT_TRUE(dout.guards_intact());
    // fp32 output (high precision): unrounded, only __expf's few ulps.
    GuardedBuffer<float> dout32(ref2.size());
    dout32.poison();
    cuda::SiluMulParams<float> sp32;
    sp32.rows = T, sp32.dim = I, sp32.gate_up = dgu.data(), sp32.out = dout32.data();
    cuda::run_silu_mul(sp32, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    auto got3 = dout32.to_host();
    expect_close(str("silu_mul f32 T", T), got3.data(), ref2.data(), ref2.size(), 1e-6, 1e-5);
    EXPECT_TRUE(dout32.guards_intact());
  }
#endif
}

// hi = bf16(x) exactly (round to nearest even, as the host's f32_to_bf16), lo = bf16(x − hi), and
// hi + lo within 2^-17 of x (relative per element); with lo null only hi is written.
TEST(MiscGpu, SplitBf16HiLo) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(12);
  for (int n : {1, 7, 63, 65, 769, 100003}) {
    auto x = random_f32(rng, n, -300.f, 300.f);
    x[0] = 1e-30f;  // tiny and exactly representable values
    if (n > 1) x[1] = 2.f;
    GuardedBuffer<float> dx(n);
    GuardedBuffer<uint16_t> dhi(n), dlo(n);
    dx.upload(x);
    dhi.poison();
    dlo.poison();
    cuda::SplitParams p;
    p.n = n, p.x = dx.data(), p.hi = dev<bf16>(dhi), p.lo = dev<bf16>(dlo);
    cuda::run_split_bf16(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    auto hi = dhi.to_host(), lo = dlo.to_host();
    size_t bad_hi = 0, bad_sum = 0;
    for (int i = 0; i < n; ++i) {
      bad_hi += hi[i] != f32_to_bf16(x[i]);
      const double sum = double(bf16_to_f32(hi[i])) + bf16_to_f32(lo[i]);
      bad_sum += std::fabs(sum - x[i]) > std::ldexp(std::fabs(double(x[i])), -16);
    }
    EXPECT_EQ(bad_hi, 0u) << "n " << n;
    EXPECT_EQ(bad_sum, 0u) << "n " << n;
    EXPECT_TRUE(dhi.guards_intact() && dlo.guards_intact());
    dlo.poison();
    p.lo = nullptr;
    cuda::run_split_bf16(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_EQ(dhi.to_host(), hi);
    auto untouched = dlo.to_host();
    dlo.poison();
    EXPECT_EQ(untouched, dlo.to_host()) << "lo written with lo == nullptr";
  }
#endif
}

// Drawn weights: reproducible per seed, distinct across seeds, moments of the family.
TEST(MiscGpu, RandomFillMoments) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  const int64_t n = 1 << 20;
  cuda::DeviceBuffer<float> a(n), b(n);
  cuda::RandomFillParams p;
  p.n = n, p.out_bf16 = false, p.seed = 42, p.dist = cuda::RandomDist::kNormal, p.a = 0.f, p.b = 0.02f;
  p.out = a.data();
  cuda::run_random_fill(p, nullptr);
  p.out = b.data();
  cuda::run_random_fill(p, nullptr);
  auto ha = a.to_host(), hb = b.to_host();
  EXPECT_EQ(ha, hb);
  double s = 0, s2 = 0;
  for (float v : ha) s += v, s2 += double(v) * v;
  EXPECT_NEAR(s / n, 0.0, 1e-4);
  EXPECT_NEAR(std::sqrt(s2 / n), 0.02, 2e-4);
  p.seed = 43;
  cuda::run_random_fill(p, nullptr);
  hb = b.to_host();
  EXPECT_NE(ha, hb);
  p.dist = cuda::RandomDist::kDtBias;
  cuda::run_random_fill(p, nullptr);
  hb = b.to_host();
  for (float v : hb) {  // softplus(v) = dt in [1e-3, 1e-1]
    const double dt = std::log1p(std::exp(double(v)));
    ASSERT_GE(dt, 0.999e-3);
    ASSERT_LE(dt, 1.001e-1);
  }
#endif
}

}  // namespace
}  // namespace kimi::test
