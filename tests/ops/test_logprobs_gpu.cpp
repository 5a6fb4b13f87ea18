// GPU logprob records (kernels/sampling/logprobs.h) against the host's row_logprobs
// (src/runtime/sampler.h): the same raw rows, the same token (given, or the one in `sampled`) and
// k. Records must be equal field by field (values bit for bit, NaN where the host has NaN): both
// round the same double normaliser to fp32; the GPU sums in another order, so a normaliser within
// an ulp of a float rounding boundary may round the other way (about one row in 10^7), and at
// most one row in 200 may differ, then only by an ulp of the normaliser.
// Rows: LM-like, coarse ties, all equal, -inf sprinkled, NaN / +inf (lse NaN), nothing finite;
// vocab 1, 7, 1000, 32001 (odd, unaligned rows), 163840; k 0, 1, 20 and random; the token the
// argmax, the last-ranked, random or drawn (sampled); rows in a window (row_begin) and a stride.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/check.h"  // before gpu_test_util.h, which uses str() but does not include it
#include "gpu_test_util.h"
#include "runtime/sampler.h"

#if KIMI_HAVE_CUDA
#include "sampling/logprobs.h"
#endif

namespace kimi::test {
namespace {

#if KIMI_HAVE_CUDA

static_assert(sizeof(RowLogprobs) == sizeof(cuda::LogprobRecord));
static_assert(offsetof(RowLogprobs, top_logprob) == offsetof(cuda::LogprobRecord, top_logprob));

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNan = std::numeric_limits<float>::quiet_NaN();

enum class Shape { kLm, kTies, kEqual, kMinusInf, kNan, kPlusInf, kNothing };
constexpr Shape kShapes[] = {Shape::kLm,       Shape::kTies,    Shape::kEqual,
                             Shape::kMinusInf, Shape::kLm,      Shape::kTies,
                             Shape::kNan,      Shape::kPlusInf, Shape::kNothing};

std::vector<float> make_row(std::mt19937& rng, int V, Shape s) {
  std::vector<float> l(static_cast<size_t>(V));
  std::normal_distribution<float> normal(0.f, 2.f);
  std::uniform_real_distribution<float> uni(0.f, 1.f);
  std::uniform_int_distribution<int> id(0, V - 1);
  switch (s) {
    case Shape::kLm:
      for (auto& x : l) x = normal(rng) - 4.f;
      for (int i = 0; i < std::min(V, 30); ++i) l[size_t(id(rng))] = 8.f + 6.f * uni(rng);
      break;
    case Shape::kTies:
      for (auto& x : l) x = std::floor(uni(rng) * 12.f) * 0.5f - 4.f;
      break;
    case Shape::kEqual:
      std::fill(l.begin(), l.end(), 0.25f);
      break;
    case Shape::kMinusInf:
      for (auto& x : l) x = uni(rng) < 0.3f ? -kInf : normal(rng);
      l[size_t(id(rng))] = 1.f;
      break;
    case Shape::kNan:
      for (auto& x : l) x = normal(rng);
      l[size_t(id(rng))] = kNan;
      break;
    case Shape::kPlusInf:
      for (auto& x : l) x = normal(rng);
      l[size_t(id(rng))] = kInf;
      break;
    case Shape::kNothing:
      std::fill(l.begin(), l.end(), -kInf);
      break;
  }
  return l;
}

bool same_float(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || a == b;
}

// The first difference between two records, or "".
std::string differ(const RowLogprobs& g, const RowLogprobs& w) {
  if (g.token != w.token) return str("token ", g.token, " vs ", w.token);
  if (g.rank != w.rank) return str("rank ", g.rank, " vs ", w.rank);
  if (!same_float(g.logprob, w.logprob)) return str("logprob ", g.logprob, " vs ", w.logprob);
  if (g.num_top != w.num_top) return str("num_top ", g.num_top, " vs ", w.num_top);
  for (int j = 0; j < kMaxTopLogprobs; ++j) {
    if (g.top_id[j] != w.top_id[j]) return str("top ", j, " id ", g.top_id[j], " vs ", w.top_id[j]);
    if (!same_float(g.top_logprob[j], w.top_logprob[j]))
      return str("top ", j, " logprob ", g.top_logprob[j], " vs ", w.top_logprob[j]);
  }
  return "";
}

struct Counts {
  int records = 0, exact = 0;
};

// One launch over R rows of V (row pitch stride): a record for every row, and a second request
// for some rows (of a low-ranked token), some of the drawn token.
// kernel: which kernels serve it; no_top: every request asks for k = 0 (and says so in max_k).
void run_case(int V, int R, int64_t stride, int row_begin, uint32_t seed, Counts& c,
              cuda::LogprobKernel kernel = cuda::LogprobKernel::kAuto, bool no_top = false) {
  std::mt19937 rng(seed);
  std::vector<float> logits(size_t(R) * size_t(stride), 0.f);
  std::vector<int> sampled(static_cast<size_t>(R));
  std::vector<cuda::LogprobRequest> req;
  std::uniform_int_distribution<int> any(0, V - 1), anyk(0, kMaxTopLogprobs);
  for (int r = 0; r < R; ++r) {
    const Shape s = kShapes[size_t(r + int(seed)) % std::size(kShapes)];
    const std::vector<float> l = make_row(rng, V, s);
    std::copy(l.begin(), l.end(), logits.begin() + size_t(r) * size_t(stride));
    sampled[size_t(r)] = any(rng);
    const int ks[] = {0, 1, kMaxTopLogprobs, anyk(rng)};
    const int k = no_top ? 0 : ks[size_t(r) % 4];
    const int argmax = int(std::max_element(l.begin(), l.end()) - l.begin());
    const int worst = int(std::min_element(l.begin(), l.end()) - l.begin());
    switch (r % 4) {
      case 0:
        req.push_back({row_begin + r, argmax, k});
        break;
      case 1:
        req.push_back({row_begin + r, worst, k});
        break;
      case 2:
        req.push_back({row_begin + r, any(rng), k});
        break;
      case 3:
        req.push_back({row_begin + r, -1, k});
        break;  // the drawn token
    }
    if (r % 3 == 0) req.push_back({row_begin + r, any(rng), no_top ? 0 : anyk(rng)});
  }
  cuda::DeviceBuffer<float> dl(logits.size());
  cuda::DeviceBuffer<int> ds(sampled.size());
  cuda::DeviceBuffer<cuda::LogprobRequest> dq(req.size());
  cuda::DeviceBuffer<cuda::LogprobRecord> dout(req.size());
  dl.upload(logits);
  ds.upload(sampled);
  dq.upload(req);
  CUDA_CHECK(cudaMemset(dout.data(), 0xff, dout.bytes()));  // poisoned
  cuda::LogprobParams p;
  p.count = int(req.size());
  p.rows = R;
  p.row_begin = row_begin;
  p.vocab = V;
  p.stride = stride;
  p.logits = dl.data();
  p.sampled = ds.data();
  p.requests = dq.data();
  p.out = dout.data();
  p.max_k = no_top ? 0 : kMaxTopLogprobs;
  p.kernel = kernel;
  cuda::run_logprobs(p, nullptr);
  std::vector<RowLogprobs> got(req.size());
  CUDA_CHECK(cudaMemcpy(static_cast<void*>(got.data()), dout.data(), dout.bytes(),
                        cudaMemcpyDeviceToHost));
  int inexact = 0;
  for (size_t i = 0; i < req.size(); ++i) {
    const int r = req[i].row - row_begin;
    const int tok = req[i].token >= 0 ? req[i].token : sampled[size_t(r)];
    const std::span<const float> row(logits.data() + size_t(r) * size_t(stride), size_t(V));
    const RowLogprobs want = row_logprobs(row, tok, req[i].k);
    const std::string d = differ(got[i], want);
    ++c.records;
    if (d.empty()) {
      ++c.exact;
      continue;
    }
    ++inexact;
    // Only the normaliser's last bit may differ: the same token and ids, values within an ulp.
    const float tol = 4e-7f * (1.f + std::fabs(want.logprob)) + 1e-6f;
    EXPECT_EQ(got[i].token, want.token) << "V " << V << " request " << i << ": " << d;
    EXPECT_NEAR(got[i].logprob, want.logprob, tol) << "V " << V << " request " << i << ": " << d;
    EXPECT_LE(std::abs(got[i].rank - want.rank), V / 100 + 2)
        << "V " << V << " request " << i << ": " << d;
  }
  EXPECT_LE(inexact, int(req.size()) / 200) << "V " << V << " R " << R;
}

#endif

TEST(LogprobsGpu, MatchesHostOnRandomRows) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  Counts c;
  uint32_t seed = 300;
  for (int V : {1, 7, 1000, 32001, 163840})
    for (int rows : {1, 9, 40}) run_case(V, rows, V, 0, seed++, c);
  run_case(1000, 17, 1003, 500, seed++, c);  // a row pitch above the vocabulary, a window of rows
  run_case(163840, 300, 163840, 0, seed++, c);      // a prompt-logprobs chunk's worth (2 launches)
  const auto one_cta = cuda::LogprobKernel::kOneCta;
  run_case(163840, 9, 163840, 0, seed++, c, one_cta);
  run_case(1000, 17, 1003, 500, seed++, c, one_cta);
  run_case(163840, 70, 163840, 0, seed++, c, cuda::LogprobKernel::kAuto, true);  // auto: one CTA
  run_case(1000, 70, 1000, 0, seed++, c, cuda::LogprobKernel::kSplit, true);
  std::printf("    [logprobs] %d records, %d bit-exact\n", c.records, c.exact);
  EXPECT_GE(c.exact, c.records - c.records / 200);
#endif
}

// Captured in a CUDA graph and replayed over changing rows: the per-request tickets return to 0
// after each launch (else a replay would merge too early or never), records equal to direct
// launches bit for bit, and to the host's. 150 rows of 163840 with two requests each: more
// requests than one launch pair serves (the launcher slices them).
TEST(LogprobsGpu, GraphReplaysMatchDirectLaunches) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  const int V = 163840, R = 150;
  std::mt19937 rng(41);
  std::uniform_int_distribution<int> any(0, V - 1), anyk(0, kMaxTopLogprobs);
  std::vector<cuda::LogprobRequest> req;
  for (int r = 0; r < R; ++r) {
    req.push_back({r, -1, anyk(rng)});
    req.push_back({r, any(rng), r % 2 ? 0 : kMaxTopLogprobs});
  }
  std::vector<int> sampled(static_cast<size_t>(R));
  cuda::DeviceBuffer<float> dl(size_t(R) * V);
  cuda::DeviceBuffer<int> ds(sampled.size());
  cuda::DeviceBuffer<cuda::LogprobRequest> dq(req.size());
  cuda::DeviceBuffer<cuda::LogprobRecord> dg(req.size()), dd(req.size());
  dq.upload(req);
  cuda::LogprobParams p;
  p.count = int(req.size());
  p.rows = R;
  p.vocab = V;
  p.logits = dl.data();
  p.sampled = ds.data();
  p.requests = dq.data();
  cudaStream_t st;
  CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  p.out = dg.data();
  CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  cuda::run_logprobs(p, st);
  CUDA_CHECK(cudaStreamEndCapture(st, &graph));
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  Counts c;
  for (int step = 0; step < 3; ++step) {
    std::vector<float> logits(size_t(R) * V);
    for (int r = 0; r < R; ++r) {
      const Shape s = step == 1 && r % 5 == 0 ? Shape::kTies : Shape::kLm;
      const std::vector<float> l = make_row(rng, V, s);
      std::copy(l.begin(), l.end(), logits.begin() + size_t(r) * V);
      sampled[size_t(r)] = any(rng);
    }
    dl.upload(logits);
    ds.upload(sampled);
    CUDA_CHECK(cudaDeviceSynchronize());  // st does not wait for the legacy stream's copies
    CUDA_CHECK(cudaMemsetAsync(dg.data(), 0xff, dg.bytes(), st));
    CUDA_CHECK(cudaGraphLaunch(exec, st));
    p.out = dd.data();
    cuda::run_logprobs(p, st);
    p.out = dg.data();
    CUDA_CHECK(cudaStreamSynchronize(st));
    std::vector<RowLogprobs> g(req.size()), d(req.size());
    CUDA_CHECK(
        cudaMemcpy(static_cast<void*>(g.data()), dg.data(), dg.bytes(), cudaMemcpyDeviceToHost));
    CUDA_CHECK(
        cudaMemcpy(static_cast<void*>(d.data()), dd.data(), dd.bytes(), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < req.size(); ++i) {
      ASSERT_EQ(differ(g[i], d[i]), "") << "step " << step << " request " << i;
      const int r = req[i].row;
      const int tok = req[i].token >= 0 ? req[i].token : sampled[size_t(r)];
      const RowLogprobs want =
          row_logprobs({logits.data() + size_t(r) * V, size_t(V)}, tok, req[i].k);
      ++c.records;
      c.exact += differ(g[i], want).empty();
    }
  }
  EXPECT_GE(c.exact, c.records - c.records / 200) << c.exact << " of " << c.records;
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  CUDA_CHECK(cudaStreamDestroy(st));
#endif
}

// Hand-made rows with known answers: ties go to the lower id (-0 and +0 logits tie too), a -inf
// logit, the top list of a vocabulary smaller than k, and requests the kernel cannot serve.
TEST(LogprobsGpu, KnownAnswers) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  const int V = 5;
  // lse of {1, 1, 0, -inf, 1}: 1 + log(3 + e^-1).
  const std::vector<float> logits = {1.f, 1.f,  0.f, -kInf, 1.f,     // row 0
                                     0.f, -0.f, 0.f, -0.f,  -kInf};  // row 1
  const std::vector<cuda::LogprobRequest> req = {{0, 4, 5}, {0, 2, 2}, {0, 3, 20}, {1, 3, 1},
                                                 {1, 1, 0}, {2, 0, 1}, {0, 5, 1}};
  cuda::DeviceBuffer<float> dl(logits.size());
  cuda::DeviceBuffer<cuda::LogprobRequest> dq(req.size());
  cuda::DeviceBuffer<cuda::LogprobRecord> dout(req.size());
  dl.upload(logits);
  dq.upload(req);
  cuda::LogprobParams p;
  p.count = int(req.size());
  p.rows = 2;
  p.vocab = V;
  p.logits = dl.data();
  p.requests = dq.data();
  p.out = dout.data();
  cuda::run_logprobs(p, nullptr);
  std::vector<RowLogprobs> g(req.size());
  CUDA_CHECK(
      cudaMemcpy(static_cast<void*>(g.data()), dout.data(), dout.bytes(), cudaMemcpyDeviceToHost));
  const float lse = float(1.0 + std::log(3.0 + std::exp(-1.0)));
  EXPECT_EQ(g[0].rank, 3);  // ids 0 and 1 tie with 4 and come first
  EXPECT_EQ(g[0].logprob, 1.f - lse);
  ASSERT_EQ(g[0].num_top, 5);  // k = 5 = V
  const int order[] = {0, 1, 4, 2, 3};
  for (int j = 0; j < 5; ++j) EXPECT_EQ(g[0].top_id[j], order[j]) << j;
  EXPECT_EQ(g[0].top_logprob[4], -kInf);
  EXPECT_EQ(g[1].rank, 4);
  EXPECT_EQ(g[2].rank, 5);
  EXPECT_EQ(g[2].logprob, -kInf);
  EXPECT_EQ(g[2].num_top, 5);  // k 20 over a vocabulary of 5
  EXPECT_EQ(g[2].top_id[5], 0);
  EXPECT_EQ(g[3].rank, 4);  // -0 ties with +0: ids 0, 1, 2 first
  ASSERT_EQ(g[3].num_top, 1);
  EXPECT_EQ(g[3].top_id[0], 0);
  EXPECT_EQ(g[4].rank, 2);
  EXPECT_EQ(g[4].num_top, 0);
  EXPECT_EQ(g[5].token, -1);  // row 2 of 2 rows
  EXPECT_EQ(g[6].token, -1);  // token 5 of a vocabulary of 5
  for (size_t i = 0; i < 5; ++i) {
    const int tok = req[i].token;
    const RowLogprobs want =
        row_logprobs({logits.data() + size_t(req[i].row) * V, size_t(V)}, tok, req[i].k);
    EXPECT_EQ(differ(g[i], want), "") << "request " << i;
  }
#endif
}

// The launcher's checks, before anything touches a GPU (runs without one).
// Many requests without alternatives go to one CTA per request, everything else to the split
// kernels, and a forced choice stands.
TEST(LogprobsGpu, KernelChoice) {
#if KIMI_HAVE_CUDA
  using K = cuda::LogprobKernel;
  auto pick = [](int count, int max_k, K forced = K::kAuto) {
    cuda::LogprobParams p;
    p.count = count, p.max_k = max_k, p.kernel = forced;
    return cuda::choose_logprob_kernel(p);
  };
  EXPECT_EQ(pick(cuda::kLogprobOneCtaFromRequests, 0), K::kOneCta);
  EXPECT_EQ(pick(4096, 0), K::kOneCta);
  EXPECT_EQ(pick(cuda::kLogprobOneCtaFromRequests - 1, 0), K::kSplit);
  EXPECT_EQ(pick(4096, 1), K::kSplit);
  EXPECT_EQ(pick(4096, kMaxTopLogprobs), K::kSplit);
  EXPECT_EQ(pick(1, 5, K::kOneCta), K::kOneCta);
  EXPECT_EQ(pick(4096, 0, K::kSplit), K::kSplit);
#else
  GTEST_SKIP() << "built without the CUDA backend";
#endif
}

TEST(LogprobsGpu, RefusesBadArguments) {
#if KIMI_HAVE_CUDA
  float f = 0.f;
  cuda::LogprobRequest q;
  cuda::LogprobRecord o;
  cuda::LogprobParams ok;
  ok.count = 1, ok.rows = 1, ok.vocab = 1, ok.logits = &f, ok.requests = &q, ok.out = &o;
  auto bad = [&](auto edit, const char* want) {
    cuda::LogprobParams p = ok;
    edit(p);
    std::string msg;
    try {
      cuda::run_logprobs(p, nullptr);
    } catch (const Error& e) {
      msg = e.what();
    }
    EXPECT_NE(msg.find(want), std::string::npos) << "wanted '" << want << "', got '" << msg << "'";
  };
  bad([](auto& p) { p.count = -1; }, "-1 requests");
  bad([](auto& p) { p.rows = 0; }, "rows 0");
  bad([](auto& p) { p.vocab = 0; }, "vocab 0");
  bad([](auto& p) { p.logits = nullptr; }, "null pointer");
  bad([](auto& p) { p.requests = nullptr; }, "null pointer");
  bad([](auto& p) { p.out = nullptr; }, "null pointer");
  bad([](auto& p) { p.vocab = 8, p.stride = 7; }, "stride 7 below vocab 8");
  bad([](auto& p) { p.max_k = 21; }, "max_k 21");
  bad([](auto& p) { p.max_k = -1; }, "max_k -1");
  cuda::LogprobParams none;  // nothing to do: no launch, no error
  EXPECT_NO_THROW(cuda::run_logprobs(none, nullptr));
#else
  GTEST_SKIP() << "built without the CUDA backend";
#endif
}

}  // namespace
}  // namespace kimi::test
