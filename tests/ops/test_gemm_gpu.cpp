// cuBLASLt wrapper and the small-M GEMM path (kernels/gemm) against the CPU reference
// (src/ops/cpu/basic.h) or a double reference, on bf16-exact random inputs, odd shapes, poisoned
// outputs inside guard regions. Tolerances: bf16 outputs carry 2^-9 relative rounding, so 8e-3
// relative RMS; fp32 outputs of bf16 products 1e-5 (only summation order differs).
#include <algorithm>
#include <bit>
#include <numeric>

#include "core/check.h"  // before gpu_test_util.h, which uses str() but does not include it
#include "gpu_test_util.h"
#include "ops/cpu/basic.h"

#if KIMI_HAVE_CUDA
#include "gemm/gemm.h"
#include "gemm/gemv.h"
#endif

namespace kimi::test {
namespace {

#if KIMI_HAVE_CUDA
using cuda::bf16;
#endif

TEST(GemmGpu, LinearBf16AndF32AccumulateOddShapes) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(7);
  cuda::Gemm gemm;
  for (int M : kRows)
    for (auto [N, K] : {std::pair{72, 136}, std::pair{576, 2304 / 8}, std::pair{33, 40}}) {
      auto x = random_bf16(rng, size_t(M) * K, -1.f, 1.f), w = random_bf16(rng, size_t(N) * K, -1.f, 1.f);
      auto xf = bf16_to_float(x), wf = bf16_to_float(w);
      std::vector<float> ref(size_t(M) * N);
      cpu::matmul(xf.data(), wf.data(), ref.data(), M, N, K);
      GuardedBuffer<uint16_t> dx(x.size()), dw(w.size()), dy(ref.size());
      dx.upload(x);
      dw.upload(w);
      dy.poison();
      gemm.linear(dev<bf16>(dx), dev<bf16>(dw), dy.data(), M, N, K, cuda::GemmOut::kBF16, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      auto got = bf16_to_float(dy.to_host());
      expect_close(str("gemm bf16 M", M, " N", N, " K", K), got.data(), ref.data(), ref.size(), 8e-3, 0.1);
      EXPECT_TRUE(dy.guards_intact());
      // fp32 out, beta = 1: y = y0 + x·wᵀ
      auto y0 = random_f32(rng, ref.size(), -2.f, 2.f);
      GuardedBuffer<float> dyf(ref.size());
      dyf.upload(y0);
      gemm.linear(dev<bf16>(dx), dev<bf16>(dw), dyf.data(), M, N, K, cuda::GemmOut::kF32, nullptr, 1.f);
      CUDA_CHECK(cudaDeviceSynchronize());
      auto gotf = dyf.to_host();
      for (size_t i = 0; i < ref.size(); ++i) ref[i] += y0[i];
      expect_close(str("gemm f32+= M", M, " N", N, " K", K), gotf.data(), ref.data(), ref.size(), 1e-5, 1e-3);
      EXPECT_TRUE(dyf.guards_intact());
    }
#endif
}

// High precision (Gemm::run_hilo): fp32 inputs split on the host into bf16 hi + lo planes; three
// projections of one input (one small-M group launch per plane at M <= 8, cuBLASLt above),
// accumulating into fp32 outputs (beta 1), against a double reference on the unrounded fp32 x.
// hi + lo carries x to 2^-16, so the error must be ~1e-5, far below the hi-only GEMM's ~1e-3
// (asserted too: the test would catch a lo pass that is skipped or reads the wrong plane).
TEST(GemmGpu, HiLoSplitInputMatchesFp32Reference) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(41);
  cuda::Gemm gemm;
  for (int M : {1, 2, 7, 8, 63, 65, 769})
    for (int K : {136, 2304}) {
      const int Ns[3] = {1000, 33, 72};
      auto x = random_f32(rng, size_t(M) * K, -1.f, 1.f);
      std::vector<uint16_t> planes(2 * x.size());
      for (size_t i = 0; i < x.size(); ++i) {
        planes[i] = f32_to_bf16(x[i]);
        planes[x.size() + i] = f32_to_bf16(x[i] - bf16_to_f32(planes[i]));
      }
      GuardedBuffer<uint16_t> dp(planes.size());
      dp.upload(planes);
      std::vector<GuardedBuffer<uint16_t>> w;
      std::vector<GuardedBuffer<float>> y;
      std::vector<std::vector<float>> ref, hi_ref;
      std::vector<uint16_t> w0;
      cuda::GemmArgs args[3];
      for (int i = 0; i < 3; ++i) {
        auto wh = random_bf16(rng, size_t(Ns[i]) * K, -0.1f, 0.1f);
        if (i == 0) w0 = wh;
        auto y0 = random_f32(rng, size_t(M) * Ns[i], -1.f, 1.f);
        std::vector<float> r(y0.size()), rh(y0.size());
        for (int m = 0; m < M; ++m)
          for (int n = 0; n < Ns[i]; ++n) {
            double acc = y0[size_t(m) * Ns[i] + n], acc_hi = acc;
            for (int k = 0; k < K; ++k) {
              const double wk = bf16_to_f32(wh[size_t(n) * K + k]);
              acc += double(x[size_t(m) * K + k]) * wk;
              acc_hi += double(bf16_to_f32(planes[size_t(m) * K + k])) * wk;
            }
            r[size_t(m) * Ns[i] + n] = float(acc);
            rh[size_t(m) * Ns[i] + n] = float(acc_hi);
          }
        ref.push_back(r);
        hi_ref.push_back(rh);
        w.emplace_back(wh.size());
        w[i].upload(wh);
        y.emplace_back(y0.size());
        y[i].upload(y0);
        args[i] = cuda::Gemm::linear_args(dev<bf16>(dp), dev<bf16>(w[i]), y[i].data(), M, Ns[i], K,
                                          cuda::GemmOut::kF32, 1.f);
      }
      gemm.run_hilo(args, 3, int64_t(M) * K, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      for (int i = 0; i < 3; ++i) {
        auto got = y[i].to_host();
        const std::string what = str("hi/lo M", M, " N", Ns[i], " K", K);
        const ErrorStats e = expect_close(what, got.data(), ref[i].data(), got.size(), 3e-5, 1e-3);
        const ErrorStats eh = compare(hi_ref[i].data(), ref[i].data(), got.size());
        EXPECT_GT(eh.rel_rms, 20 * e.rel_rms) << what << ": hi-only error " << eh.rel_rms;
        EXPECT_TRUE(y[i].guards_intact());
      }
      // The first GEMM alone (run_gemv rather than the group launch at M <= 8), beta 0: W·x.
      for (float& r : ref[0]) r = 0.f;
      for (int m = 0; m < M; ++m)
        for (int n = 0; n < Ns[0]; ++n) {
          double acc = 0;
          for (int k = 0; k < K; ++k)
            acc += double(x[size_t(m) * K + k]) * bf16_to_f32(w0[size_t(n) * K + k]);
          ref[0][size_t(m) * Ns[0] + n] = float(acc);
        }
      y[0].poison();
      args[0].beta = 0.f;
      gemm.run_hilo(args, 1, int64_t(M) * K, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      const auto alone = y[0].to_host();
      expect_close(str("hi/lo alone M", M, " N", Ns[0], " K", K), alone.data(), ref[0].data(), alone.size(),
                   3e-5, 1e-3);
      EXPECT_TRUE(dp.guards_intact());
    }
#endif
}

// run_hilo on one strided-batched GEMM shaped like the KDA f/g second stage: two batches read the
// two halves of each input row (lda 2K, stride K), own weights and output planes. M <= 8 takes
// the stacked small-M launch (rows m and m + M of one launch added in its epilogue), larger M the
// two cuBLASLt passes; both against a double reference on the fp32 input, 3e-5 as above.
TEST(GemmGpu, HiLoBatchedStridedInput) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(43);
  cuda::Gemm gemm;
  const int K = 128, N = 200;
  for (int M : {1, 3, 5, 8, 65}) {
    auto x = random_f32(rng, size_t(M) * 2 * K, -1.f, 1.f);  // [M, 2K]: batch b reads columns bK..
    std::vector<uint16_t> planes(2 * x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      planes[i] = f32_to_bf16(x[i]);
      planes[x.size() + i] = f32_to_bf16(x[i] - bf16_to_f32(planes[i]));
    }
    auto w = random_bf16(rng, size_t(2) * N * K, -0.1f, 0.1f);  // [2, N, K]
    std::vector<float> ref(size_t(2) * M * N);                // [2, M, N]
    for (int b = 0; b < 2; ++b)
      for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
          double acc = 0;
          for (int k = 0; k < K; ++k)
            acc += double(x[size_t(m) * 2 * K + b * K + k]) * bf16_to_f32(w[(size_t(b) * N + n) * K + k]);
          ref[(size_t(b) * M + m) * N + n] = float(acc);
        }
    GuardedBuffer<uint16_t> dp(planes.size()), dw(w.size());
    GuardedBuffer<float> dy(ref.size());
    dp.upload(planes);
    dw.upload(w);
    dy.poison();
    cuda::GemmArgs ga;
    ga.M = M, ga.N = N, ga.K = K;
    ga.A = dev<bf16>(dp), ga.lda = 2 * K, ga.stride_a = K;
    ga.B = dev<bf16>(dw), ga.ldb = K, ga.stride_b = int64_t(N) * K;
    ga.C = dy.data(), ga.ldc = N, ga.stride_c = int64_t(M) * N;
    ga.out = cuda::GemmOut::kF32, ga.batch = 2;
    gemm.run_hilo(&ga, 1, int64_t(M) * 2 * K, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto got = dy.to_host();
    expect_close(str("hi/lo batched M", M), got.data(), ref.data(), got.size(), 3e-5, 1e-4);
    EXPECT_TRUE(dy.guards_intact() && dp.guards_intact());
  }
#endif
}

// Strided batched with B stored [K, N] (the MLA absorption shape: per head q_nope · W_UK).
TEST(GemmGpu, BatchedStridedKN) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(8);
  cuda::Gemm gemm;
  const int H = 3, K = 128, N = 512, lda = H * 192, ldc = H * 512;
  for (int M : {1, 65}) {
    auto a = random_bf16(rng, size_t(M) * lda, -1.f, 1.f);
    auto b = random_bf16(rng, size_t(H) * 256 * N, -1.f, 1.f);
    GuardedBuffer<uint16_t> da(a.size()), db(b.size()), dc(size_t(M) * ldc);
    da.upload(a);
    db.upload(b);
    dc.poison();
    cuda::GemmArgs g;
    g.M = M, g.N = N, g.K = K, g.A = dev<bf16>(da), g.lda = lda, g.stride_a = 192;
    g.B = dev<bf16>(db), g.ldb = N, g.stride_b = int64_t(256) * N, g.b_kn = true;
    g.C = dc.data(), g.ldc = ldc, g.stride_c = 512, g.batch = H;
    gemm.run(g, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    auto got = bf16_to_float(dc.to_host());
    std::vector<float> ref(got.size());
    for (int h = 0; h < H; ++h)
      for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
          double s = 0;
          for (int k = 0; k < K; ++k)
            s += double(bf16_to_f32(a[size_t(m) * lda + h * 192 + k])) *
                 bf16_to_f32(b[size_t(h) * 256 * N + size_t(k) * N + n]);
          ref[size_t(m) * ldc + h * 512 + n] = float(s);
        }
    expect_close(str("batched kn M", M), got.data(), ref.data(), ref.size(), 8e-3, 0.1);
    EXPECT_TRUE(dc.guards_intact());
  }
#endif
}

// fp32 operands (the MoE router): true fp32 math, no TF32, against a double reference.
TEST(GemmGpu, Fp32OperandsForTheRouter) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(17);
  cuda::Gemm gemm;
  for (int M : kRows) {
    const int N = 256, K = 2304;
    auto x = random_f32(rng, size_t(M) * K, -1.f, 1.f), w = random_f32(rng, size_t(N) * K, -0.05f, 0.05f);
    std::vector<double> refd(size_t(M) * N);
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        double s = 0;
        for (int k = 0; k < K; ++k) s += double(x[size_t(m) * K + k]) * w[size_t(n) * K + k];
        refd[size_t(m) * N + n] = s;
      }
    GuardedBuffer<float> dx(x.size()), dw(w.size()), dy(refd.size());
    dx.upload(x);
    dw.upload(w);
    dy.poison();
    cuda::GemmArgs g;
    g.M = M, g.N = N, g.K = K, g.A = reinterpret_cast<const bf16*>(dx.data()), g.lda = K;
    g.B = reinterpret_cast<const bf16*>(dw.data()), g.ldb = K, g.C = dy.data(), g.ldc = N;
    g.out = cuda::GemmOut::kF32, g.in_f32 = true;
    gemm.run(g, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    auto got = dy.to_host();
    expect_close(str("gemm fp32 operands M", M), got.data(), refd.data(), refd.size(), 2e-6, 1e-5);
    EXPECT_TRUE(dy.guards_intact());
  }
#endif
}

// ---- small-M path (gemm/gemv.h): every GemmArgs feature against a double reference ----
#if KIMI_HAVE_CUDA
struct SmallMCase {
  int M = 1, N = 1, K = 8;
  int lda = 0, ldb = 0, ldc = 0;  // 0: packed
  int batch = 1;
  int64_t sa = 0, sb = 0, sc = 0;  // 0: packed batches
  int64_t b_off = 0;               // B starts this many elements into its buffer
  bool b_kn = false, in_f32 = false;
  cuda::GemmOut out = cuda::GemmOut::kBF16;
  float alpha = 1.f, beta = 0.f;
  bool inf_nan = false;  // an Inf in A row 0 and a NaN in weight column 0
};

SmallMCase packed(SmallMCase c) {
  if (!c.lda) c.lda = c.K;
  if (!c.ldb) c.ldb = c.b_kn ? c.N : c.K;
  if (!c.ldc) c.ldc = c.N;
  if (c.batch > 1) {
    if (!c.sa) c.sa = int64_t(c.M) * c.lda;
    if (!c.sb) c.sb = int64_t(c.b_kn ? c.K : c.N) * c.ldb;
    if (!c.sc) c.sc = int64_t(c.M) * c.ldc;
  }
  return c;
}

std::string name_of(const SmallMCase& c) {
  return str("M", c.M, " N", c.N, " K", c.K, c.batch > 1 ? str(" batch", c.batch) : "",
             c.b_kn ? " kn" : "", c.in_f32 ? " f32in" : "",
             c.out == cuda::GemmOut::kF32 ? " f32out" : " bf16out", " a", c.alpha, " b", c.beta,
             c.lda > c.K ? " lda+" : "", c.ldc > c.N ? " ldc+" : "");
}

// Runs c on `gemm` and checks the whole C buffer (gaps between ldc rows must keep their values)
// and its guards; returns the raw output bits for determinism checks.
std::vector<uint32_t> check_small_m(cuda::Gemm& gemm, SmallMCase c, std::mt19937& rng) {
  c = packed(c);
  const int64_t a_n = (c.batch - 1) * c.sa + int64_t(c.M - 1) * c.lda + c.K;
  const int64_t b_n = c.b_off + (c.batch - 1) * c.sb +
                      (c.b_kn ? int64_t(c.K - 1) * c.ldb + c.N : int64_t(c.N - 1) * c.ldb + c.K);
  const int64_t c_n = (c.batch - 1) * c.sc + int64_t(c.M - 1) * c.ldc + c.N;
  const bool f32out = c.out == cuda::GemmOut::kF32;
  // Operands as the GPU sees them (bf16-exact unless in_f32); C starts random, and NaN on the
  // outputs when beta = 0 (a kernel that reads C then shows it).
  std::vector<float> a =
      c.in_f32 ? random_f32(rng, a_n, -1.f, 1.f) : bf16_to_float(random_bf16(rng, a_n, -1.f, 1.f));
  std::vector<float> b =
      c.in_f32 ? random_f32(rng, b_n, -1.f, 1.f) : bf16_to_float(random_bf16(rng, b_n, -1.f, 1.f));
  std::vector<float> c0 =
      f32out ? random_f32(rng, c_n, -2.f, 2.f) : bf16_to_float(random_bf16(rng, c_n, -2.f, 2.f));
  auto a_at = [&](int bt, int m, int k) { return (bt * c.sa) + int64_t(m) * c.lda + k; };
  auto b_at = [&](int bt, int k, int n) {
    return c.b_off + bt * c.sb + (c.b_kn ? int64_t(k) * c.ldb + n : int64_t(n) * c.ldb + k);
  };
  auto c_at = [&](int bt, int m, int n) { return bt * c.sc + int64_t(m) * c.ldc + n; };
  if (c.inf_nan) {
    a[a_at(0, 0, c.K / 2)] = INFINITY;
    b[b_at(0, c.K - 1, 0)] = NAN;
  }
  std::vector<double> ref(c0.begin(), c0.end());
  for (int bt = 0; bt < c.batch; ++bt)
    for (int m = 0; m < c.M; ++m)
      for (int n = 0; n < c.N; ++n) {
        double s = 0;
        for (int k = 0; k < c.K; ++k) s += double(a[a_at(bt, m, k)]) * b[b_at(bt, k, n)];
        const int64_t i = c_at(bt, m, n);
        ref[i] = double(c.alpha) * s + (c.beta != 0.f ? double(c.beta) * c0[i] : 0.0);
        if (c.beta == 0.f) c0[i] = NAN;
      }
  auto to_bf16 = [](const std::vector<float>& v) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
    return h;
  };
  GuardedBuffer<float> da32(c.in_f32 ? a_n : 0), db32(c.in_f32 ? b_n : 0), dc32(f32out ? c_n : 0);
  GuardedBuffer<uint16_t> da16(c.in_f32 ? 0 : a_n), db16(c.in_f32 ? 0 : b_n),
      dc16(f32out ? 0 : c_n);
  if (c.in_f32) {
    da32.upload(a);
    db32.upload(b);
  } else {
    da16.upload(to_bf16(a));
    db16.upload(to_bf16(b));
  }
  if (f32out)
    dc32.upload(c0);
  else
    dc16.upload(to_bf16(c0));
  cuda::GemmArgs g;
  g.M = c.M, g.N = c.N, g.K = c.K, g.lda = c.lda, g.ldb = c.ldb, g.ldc = c.ldc, g.batch = c.batch;
  g.stride_a = c.sa, g.stride_b = c.sb, g.stride_c = c.sc, g.b_kn = c.b_kn, g.in_f32 = c.in_f32;
  g.out = c.out, g.alpha = c.alpha, g.beta = c.beta;
  g.A = c.in_f32 ? reinterpret_cast<const bf16*>(da32.data()) : dev<bf16>(da16);
  g.B =
      (c.in_f32 ? reinterpret_cast<const bf16*>(db32.data() + c.b_off) : dev<bf16>(db16) + c.b_off);
  g.C = f32out ? static_cast<void*>(dc32.data()) : static_cast<void*>(dc16.data());
  gemm.run(g, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> got;
  std::vector<uint32_t> bits;
  if (f32out) {
    got = dc32.to_host();
    for (float v : got) bits.push_back(std::bit_cast<uint32_t>(v));
  } else {
    const auto h = dc16.to_host();
    got = bf16_to_float(h);
    bits.assign(h.begin(), h.end());
  }
  double max_ref = 0;
  for (double v : ref)
    if (std::isfinite(v)) max_ref = std::max(max_ref, std::fabs(v));
  // bf16 out: the output rounding (2^-9 relative) dominates; fp32 out: only the summation order
  // differs (fp32 accumulation over K ≤ 9216 terms vs double); fp32 operands: no bf16 rounding.
  const double rel = f32out ? (c.in_f32 ? 2e-6 : 1e-5) : 8e-3;
  const double abs = f32out ? 2e-5 * std::max(max_ref, 1.0) : 4e-3 * std::max(max_ref, 1.0);
  const std::string what = name_of(c) + (gemm.uses_small_m(g) ? " [small-M]" : " [cuBLASLt]");
  expect_close(what, got.data(), ref.data(), ref.size(), rel, abs);
  EXPECT_TRUE(f32out ? dc32.guards_intact() : dc16.guards_intact()) << what;
  return bits;
}
#endif

// Odd shapes and every GemmArgs feature on the forced small-M path (M ≤ 16).
TEST(GemmGpu, SmallMOddShapesAndFeatures) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(31);
  cuda::Gemm gemm, auto_gemm;
  gemm.set_path(cuda::GemmPath::kSmallM);
  int i = 0;
  for (int M : {1, 2, 3, 7, 8, 9, 16})
    for (int N : {1, 7, 33, 257, 4097})
      for (int K : {8, 136, 2304}) {
        SmallMCase c;
        c.M = M, c.N = N, c.K = K;
        c.lda = K + 8 * (i % 2);
        c.ldc = N + 3 * (i % 3 == 1);
        c.out = i % 2 ? cuda::GemmOut::kF32 : cuda::GemmOut::kBF16;
        c.beta = i % 4 < 2 ? 0.f : 1.f;
        c.alpha = i % 3 == 2 ? -0.75f : 1.f;
        check_small_m(gemm, c, rng);
        ++i;
      }
  // Strided batches with padded strides, both outputs; B [K, N] goes to cuBLASLt (kAuto).
  for (int M : {1, 9, 16})
    for (bool kn : {false, true}) {
      SmallMCase c;
      c.M = M, c.N = kn ? 136 : 33, c.K = kn ? 7 : 136, c.batch = 3, c.b_kn = kn;
      c.lda = 3 * 144, c.sa = 144, c.ldb = kn ? 144 : 136, c.sb = 150 * 144, c.b_off = 8;
      c.ldc = 3 * 160 + 1, c.sc = 160, c.alpha = 0.5f, c.beta = 1.f;
      cuda::Gemm& g = kn ? auto_gemm : gemm;
      check_small_m(g, c, rng);
      c.out = cuda::GemmOut::kF32, c.beta = 0.f;
      check_small_m(g, c, rng);
    }
  for (int M : {1, 3, 8, 16})  // fp32 operands
    for (int N : {1, 7, 257})
      for (int K : {8, 136, 2304}) {
        SmallMCase c;
        c.M = M, c.N = N, c.K = K, c.lda = K + 4, c.in_f32 = true, c.out = cuda::GemmOut::kF32;
        c.beta = N == 7 ? 1.f : 0.f, c.alpha = N == 257 ? 2.f : 1.f;
        check_small_m(gemm, c, rng);
      }
  // Inf and NaN operands reach the outputs as in the reference (split-k and unsplit shapes).
  for (int N : {33, 4097}) {
    SmallMCase c;
    c.M = 3, c.N = N, c.K = 2304, c.out = cuda::GemmOut::kF32, c.inf_nan = true;
    check_small_m(gemm, c, rng);
  }
  // Every k split count (cluster sizes 1..8, a short last split included); K 4104 gives each
  // warp several refills of its chunk registers and a k tail inside the last chunk.
  for (int splits = 1; splits <= 8; ++splits) {
    SmallMCase c;
    c.M = 3, c.N = 70, c.K = 1032, c.out = cuda::GemmOut::kF32, c.beta = 1.f;
    gemm.set_small_m_splits(splits);
    check_small_m(gemm, c, rng);
    for (int M : {1, 16}) {
      SmallMCase l;
      l.M = M, l.N = 77, l.K = 4104, l.beta = 1.f, l.alpha = M == 1 ? 1.f : -0.75f;
      l.out = M == 1 ? cuda::GemmOut::kF32 : cuda::GemmOut::kBF16;
      check_small_m(gemm, l, rng);
    }
  }
  gemm.set_small_m_splits(0);
  // Split-k partials are summed in a fixed order: bit-identical reruns.
  SmallMCase d;
  d.M = 5, d.N = 40, d.K = 4096, d.out = cuda::GemmOut::kF32;
  std::mt19937 r1(5), r2(5);
  EXPECT_EQ(check_small_m(gemm, d, r1), check_small_m(gemm, d, r2));
  // What the small-M kernels cannot take: kSmallM refuses, kAuto falls back to cuBLASLt.
  SmallMCase u;
  u.M = 2, u.N = 33, u.K = 12;
  EXPECT_THROW(check_small_m(gemm, u, rng), Error);
  check_small_m(auto_gemm, u, rng);
  SmallMCase kn;
  kn.M = 2, kn.N = 64, kn.K = 64, kn.b_kn = true;
  EXPECT_THROW(check_small_m(gemm, kn, rng), Error);
#endif
}

// The model's decode projections through the default path (kAuto must pick the small-M kernels
// for all but q_abs, whose B [K, N] stays on cuBLASLt), and one M above the threshold.
TEST(GemmGpu, SmallMModelShapes) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(32);
  cuda::Gemm gemm;
  const auto f32 = cuda::GemmOut::kF32;
  std::vector<SmallMCase> shapes;
  shapes.reserve(16);  // add() hands out pointers into it
  auto add = [&](int N, int K, cuda::GemmOut out = cuda::GemmOut::kBF16, float beta = 0.f) {
    SmallMCase c;
    c.N = N, c.K = K, c.out = out, c.beta = beta;
    shapes.push_back(c);
    return &shapes.back();
  };
  add(12288, 2304);                    // KDA qkv
  add(256, 2304);                      // KDA f_a | g_a
  add(32, 2304);                       // KDA b
  add(4096, 128)->lda = 256;           // KDA f_b, g_b: half of the low-rank rows
  add(2304, 4096, f32, 1.f);           // KDA o_proj into the residual
  add(2304, 4096, f32, 0.f);           // o_proj of a tensor-parallel rank
  add(6144, 2304);                     // MLA q
  add(576, 2304, f32);                 // MLA kv_a
  add(18432, 2304);                    // dense MLP gate_up
  add(2304, 9216, f32, 1.f);           // dense MLP down
  add(256, 2304, f32)->in_f32 = true;  // MoE router
  {
    SmallMCase* q = add(512, 128);  // MLA q_abs: per head q_nope · W_UK, B [K, N]
    q->batch = 32, q->b_kn = true, q->lda = 32 * 192, q->sa = 192, q->ldb = 512;
    q->sb = int64_t(256) * 512, q->ldc = 32 * 512, q->sc = 512;
    SmallMCase* o = add(128, 512);  // MLA attn: per head u · W_UVᵀ
    o->batch = 32, o->lda = 32 * 512, o->sa = 512, o->ldb = 512, o->b_off = 128 * 512;
    o->sb = int64_t(256) * 512, o->ldc = 32 * 128, o->sc = 128;
  }
  for (const SmallMCase& s : shapes)
    for (int M : {1, 8}) {
      SmallMCase c = s;
      c.M = M;
      cuda::GemmArgs probe;  // kAuto routing of the packed shape (alignment of cudaMalloc'd rows)
      const SmallMCase p = packed(c);
      probe.M = M, probe.N = p.N, probe.K = p.K, probe.lda = p.lda, probe.ldb = p.ldb;
      probe.ldc = p.ldc, probe.batch = p.batch, probe.stride_a = p.sa, probe.stride_b = p.sb;
      probe.b_kn = p.b_kn, probe.in_f32 = p.in_f32, probe.out = p.out;
      probe.A = probe.B = reinterpret_cast<const bf16*>(uintptr_t(256));
      EXPECT_EQ(gemm.uses_small_m(probe), !p.b_kn) << name_of(p);
      check_small_m(gemm, c, rng);
    }
  SmallMCase lm;  // lm_head, 755 MB of weights at full vocabulary: one row
  lm.M = 1, lm.N = 163840, lm.K = 2304, lm.out = f32;
  check_small_m(gemm, lm, rng);
  SmallMCase big = shapes[0];
  big.M = cuda::kGemmSmallMaxRows + 1;
  check_small_m(gemm, big, rng);
  cuda::GemmArgs probe;
  probe.M = big.M, probe.N = big.N, probe.K = big.K, probe.lda = big.K, probe.ldb = big.K;
  probe.ldc = big.N, probe.A = probe.B = reinterpret_cast<const bf16*>(uintptr_t(256));
  EXPECT_FALSE(gemm.uses_small_m(probe));
#endif
}

// Dependent small-M calls back to back on a stream (programmatic dependent launch: each kernel's
// weight prologue overlaps the previous kernel) and replayed from a CUDA graph must give the
// bits of the same calls run one at a time on the legacy stream (no overlap).
// Which GEMMs may share a grouped launch: host logic, checked without a GPU (pointers are
// aligned stand-ins, never dereferenced).
TEST(GemmGpu, SmallMGroupSupportIsHostLogic) {
#if KIMI_HAVE_CUDA
  auto ptr = [](uintptr_t a) { return reinterpret_cast<const bf16*>(a); };
  auto args = [&](uintptr_t w, int N) {
    return cuda::Gemm::linear_args(ptr(1 << 20), ptr(w), reinterpret_cast<void*>(w << 4), 1, N, 2304,
                                   cuda::GemmOut::kBF16);
  };
  cuda::GemmArgs g[5] = {args(2 << 20, 12288), args(4 << 20, 256), args(6 << 20, 32),
                         args(8 << 20, 64), args(10 << 20, 64)};
  EXPECT_TRUE(cuda::gemv_group_supported(g, 3));
  EXPECT_TRUE(cuda::gemv_group_supported(g, 4));
  EXPECT_FALSE(cuda::gemv_group_supported(g, 5)) << "more than kGemvMaxGroup";
  EXPECT_FALSE(cuda::gemv_group_supported(g, 0));
  auto refused = [&](const char* what, auto edit) {
    cuda::GemmArgs h[2] = {g[0], g[1]};
    edit(h[1]);
    EXPECT_FALSE(cuda::gemv_group_supported(h, 2)) << what;
  };
  refused("another input", [&](cuda::GemmArgs& a) { a.A = ptr(3 << 20); });
  refused("another K", [](cuda::GemmArgs& a) { a.K = 1024; });
  refused("another output type", [](cuda::GemmArgs& a) { a.out = cuda::GemmOut::kF32; });
  refused("accumulating beside overwriting", [](cuda::GemmArgs& a) { a.beta = 1.f; });
  refused("a batch", [](cuda::GemmArgs& a) { a.batch = 2; });
  refused("more rows than the small-M kernels take", [](cuda::GemmArgs& a) { a.M = 17; });
  refused("B stored [K, N]", [](cuda::GemmArgs& a) { a.b_kn = true; });
#endif
}

// Grouped small-M launch (Gemm::run_group): three projections of one input, odd widths, both
// output types, accumulation. With the k split fixed, each output equals its separate call bit
// for bit; with the split chosen per launch (from the group's tile count), within summation
// order. A group the kernel cannot share (different K) runs as separate calls.
TEST(GemmGpu, SmallMGroupEqualsSeparateCalls) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(35);
  for (int M : {1, 3, 8, 16})
    for (int K : {136, 2304})
      for (cuda::GemmOut out : {cuda::GemmOut::kBF16, cuda::GemmOut::kF32})
        for (float beta : {0.f, 1.f}) {
          const bool f32 = out == cuda::GemmOut::kF32;
          const int Ns[3] = {1000, 33, 7};
          GuardedBuffer<uint16_t> x(size_t(M) * K);
          x.upload(random_bf16(rng, x.size(), -1.f, 1.f));
          std::vector<GuardedBuffer<uint16_t>> w;
          std::vector<GuardedBuffer<float>> y32;
          std::vector<GuardedBuffer<uint16_t>> y16;
          std::vector<std::vector<float>> y0;
          for (int i = 0; i < 3; ++i) {
            w.emplace_back(size_t(Ns[i]) * K);
            w[i].upload(random_bf16(rng, w[i].size(), -0.1f, 0.1f));
            y0.push_back(random_f32(rng, size_t(M) * Ns[i], -1.f, 1.f));
            y32.emplace_back(f32 ? y0[i].size() : 0);
            y16.emplace_back(f32 ? 0 : y0[i].size());
          }
          auto reset = [&]() {
            for (int i = 0; i < 3; ++i) {
              if (f32) {
                y32[i].upload(y0[i]);
              } else {
                std::vector<uint16_t> h(y0[i].size());
                for (size_t j = 0; j < h.size(); ++j) h[j] = f32_to_bf16(y0[i][j]);
                y16[i].upload(h);
              }
            }
          };
          auto args = [&](int i) {
            void* c = f32 ? static_cast<void*>(y32[i].data()) : static_cast<void*>(y16[i].data());
            return cuda::Gemm::linear_args(dev<bf16>(x), dev<bf16>(w[i]), c, M, Ns[i], K, out, beta);
          };
          auto outputs = [&]() {
            CUDA_CHECK(cudaDeviceSynchronize());
            std::vector<float> v;
            for (int i = 0; i < 3; ++i) {
              const auto o = f32 ? y32[i].to_host() : bf16_to_float(y16[i].to_host());
              v.insert(v.end(), o.begin(), o.end());
            }
            return v;
          };
          const std::string what = str("group M", M, " K", K, f32 ? " f32out" : " bf16out", " beta", beta);
          cuda::Gemm gemm;
          const cuda::GemmArgs group[3] = {args(0), args(1), args(2)};
          ASSERT_TRUE(cuda::gemv_group_supported(group, 3)) << what;
          for (int splits : {2, 0}) {  // fixed, then chosen per launch
            gemm.set_small_m_splits(splits);
            reset();
            for (int i = 0; i < 3; ++i) gemm.run(args(i), nullptr);
            const auto separate = outputs();
            reset();
            gemm.run_group(group, 3, nullptr);
            const auto grouped = outputs();
            if (splits > 0) {
              for (size_t j = 0; j < grouped.size(); ++j)
                ASSERT_EQ(std::bit_cast<uint32_t>(grouped[j]), std::bit_cast<uint32_t>(separate[j]))
                    << what << " value " << j;
            } else {
              expect_close(what, grouped.data(), separate.data(), separate.size(), f32 ? 1e-5 : 8e-3,
                           f32 ? 1e-4 : 2e-2);
            }
          }
          for (int i = 0; i < 3; ++i)
            EXPECT_TRUE(w[i].guards_intact() && y32[i].guards_intact() && y16[i].guards_intact()) << what;
        }
  // Not shareable: a different K (or input) runs call by call, with the same results.
  GuardedBuffer<uint16_t> x(2304), w1(64 * 2304), w2(64 * 1024);
  GuardedBuffer<float> y1(64), y2(64), r1(64), r2(64);
  x.upload(random_bf16(rng, x.size(), -1.f, 1.f));
  w1.upload(random_bf16(rng, w1.size(), -0.1f, 0.1f));
  w2.upload(random_bf16(rng, w2.size(), -0.1f, 0.1f));
  const cuda::GemmArgs mixed[2] = {
      cuda::Gemm::linear_args(dev<bf16>(x), dev<bf16>(w1), y1.data(), 1, 64, 2304, cuda::GemmOut::kF32),
      cuda::Gemm::linear_args(dev<bf16>(x), dev<bf16>(w2), y2.data(), 1, 64, 1024, cuda::GemmOut::kF32)};
  EXPECT_FALSE(cuda::gemv_group_supported(mixed, 2));
  cuda::Gemm gemm;
  gemm.run_group(mixed, 2, nullptr);
  gemm.linear(dev<bf16>(x), dev<bf16>(w1), r1.data(), 1, 64, 2304, cuda::GemmOut::kF32, nullptr);
  gemm.linear(dev<bf16>(x), dev<bf16>(w2), r2.data(), 1, 64, 1024, cuda::GemmOut::kF32, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(y1.to_host(), r1.to_host());
  EXPECT_EQ(y2.to_host(), r2.to_host());
#endif
}

TEST(GemmGpu, SmallMBackToBackMatchesSerial) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(33);
  const int M = 4, H = 2304, R = 256, W = 4096;
  cuda::DeviceBuffer<bf16> x(size_t(M) * H), w1(size_t(R) * H), w2(size_t(W) * R),
      w3(size_t(H) * W);
  cuda::DeviceBuffer<bf16> y1(size_t(M) * R), y2(size_t(M) * W);
  cuda::DeviceBuffer<float> r(size_t(M) * H);
  auto up = [&](cuda::DeviceBuffer<bf16>& b, float lo, float hi) {
    const auto h = random_bf16(rng, b.size(), lo, hi);
    CUDA_CHECK(cudaMemcpy(b.data(), h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  };
  up(x, -1.f, 1.f), up(w1, -0.05f, 0.05f), up(w2, -0.1f, 0.1f), up(w3, -0.02f, 0.02f);
  const auto r0 = random_f32(rng, r.size(), -1.f, 1.f);
  cuda::Gemm gemm;
  auto sequence = [&](cudaStream_t st) {
    gemm.linear(x.data(), w1.data(), y1.data(), M, R, H, cuda::GemmOut::kBF16, st);   // split k
    gemm.linear(y1.data(), w2.data(), y2.data(), M, W, R, cuda::GemmOut::kBF16, st);  // reads y1
    for (int i = 0; i < 2; ++i)  // split k, accumulating into what the previous call wrote
      gemm.linear(y2.data(), w3.data(), r.data(), M, H, W, cuda::GemmOut::kF32, st, 1.f);
  };
  auto result = [&]() {
    CUDA_CHECK(cudaDeviceSynchronize());
    auto a = y2.to_host();
    auto b = r.to_host();
    std::vector<uint32_t> bits;
    for (auto v : a) bits.push_back(std::bit_cast<uint16_t>(v));
    for (float v : b) bits.push_back(std::bit_cast<uint32_t>(v));
    return bits;
  };
  r.upload(r0);
  for (int i = 0; i < 4; ++i) {  // the legacy stream: no programmatic launch, plain ordering
    if (i == 0) gemm.linear(x.data(), w1.data(), y1.data(), M, R, H, cuda::GemmOut::kBF16, nullptr);
    if (i == 1)
      gemm.linear(y1.data(), w2.data(), y2.data(), M, W, R, cuda::GemmOut::kBF16, nullptr);
    if (i >= 2)
      gemm.linear(y2.data(), w3.data(), r.data(), M, H, W, cuda::GemmOut::kF32, nullptr, 1.f);
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  const auto serial = result();
  cudaStream_t st;
  CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  r.upload(r0);
  CUDA_CHECK(cudaMemset(y1.data(), 0, y1.size() * 2));
  CUDA_CHECK(cudaMemset(y2.data(), 0, y2.size() * 2));
  sequence(st);
  EXPECT_EQ(result(), serial) << "eager stream";
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  sequence(st);
  CUDA_CHECK(cudaStreamEndCapture(st, &graph));
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int rep = 0; rep < 3; ++rep) {
    r.upload(r0);
    CUDA_CHECK(cudaMemset(y1.data(), 0, y1.size() * 2));
    CUDA_CHECK(cudaMemset(y2.data(), 0, y2.size() * 2));
    CUDA_CHECK(cudaGraphLaunch(exec, st));
    EXPECT_EQ(result(), serial) << "graph replay " << rep;
  }
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  CUDA_CHECK(cudaStreamDestroy(st));
#endif
}

}  // namespace
}  // namespace kimi::test
