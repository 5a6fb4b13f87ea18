// Peer-memory all-reduce (kernels/comm/peer_allreduce.h) over every visible GPU (2..8): each
// rank's x becomes the sum of all ranks' x, summed in rank order, so it equals the host's sum in
// the same order exactly, on every rank; consecutive calls cycle the buffers and sizes change
// between calls; bytes around x stay untouched. The push kernel's normed output against a double
// reference, the same bits on every rank; zeros and negative zeros (the push kernel's idle word
// is 0) sum like any value. Skips with a message below 2 GPUs or without peer access.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gpu_test_util.h"

#if KIMI_HAVE_CUDA
#include "comm/peer_allreduce.h"
#endif

namespace kimi::test {
namespace {

#if KIMI_HAVE_CUDA
constexpr int64_t kCap = 64 * 1024, kGuard = 64;

// Every visible GPU (up to kPeerMaxRanks) with peer access, its part of the peer memory, an x of
// kCap floats between guards, a stream; empty (world 0) when the machine cannot run the test.
struct PeerGroup {
  int world = 0;
  std::string skip;
  std::vector<void*> mem;
  std::vector<float*> x;
  std::vector<cudaStream_t> st;
  std::vector<cuda::PeerAllReduceView> v;

  PeerGroup() {
    int n = 0;
    CUDA_CHECK(cudaGetDeviceCount(&n));
    n = std::min(n, cuda::kPeerMaxRanks);
    if (n < 2) {
      skip = str("peer all-reduce needs 2 GPUs, ", n, " visible");
      return;
    }
    for (int r = 0; r < n; ++r)
      for (int q = 0; q < n; ++q) {
        int ok = 1;
        if (q != r) CUDA_CHECK(cudaDeviceCanAccessPeer(&ok, r, q));
        if (!ok) {
          skip = str("GPU ", r, " cannot access GPU ", q);
          return;
        }
      }
    world = n;
    mem.resize(n);
    x.resize(n);
    st.resize(n);
    v.resize(n);
    const size_t bytes = cuda::peer_allreduce_bytes(kCap, n);
    for (int r = 0; r < n; ++r) {
      CUDA_CHECK(cudaSetDevice(r));
      for (int q = 0; q < n; ++q) {
        if (q == r) continue;
        const cudaError_t e = cudaDeviceEnablePeerAccess(q, 0);
        if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();
        else CUDA_CHECK(e);
      }
      CUDA_CHECK(cudaMalloc(&mem[r], bytes));
      CUDA_CHECK(cudaMemset(mem[r], 0, bytes));
      CUDA_CHECK(cudaMalloc(&x[r], (kCap + 2 * kGuard) * sizeof(float)));
      CUDA_CHECK(cudaStreamCreate(&st[r]));
    }
    for (int r = 0; r < n; ++r) {
      v[r].rank = r, v[r].world = n, v[r].capacity = kCap;
      for (int q = 0; q < n; ++q) cuda::peer_allreduce_carve(mem[q], kCap, q, v[r]);
    }
  }
  ~PeerGroup() {
    for (int r = 0; r < world; ++r) {
      cudaSetDevice(r);
      cudaStreamDestroy(st[r]);
      cudaFree(mem[r]);
      cudaFree(x[r]);
    }
    cudaSetDevice(0);
  }
  // in[r]: rank r's x with its guards (len + 2·kGuard floats).
  void upload(const std::vector<std::vector<float>>& in) {
    for (int r = 0; r < world; ++r) {
      CUDA_CHECK(cudaSetDevice(r));
      CUDA_CHECK(cudaMemcpy(x[r], in[r].data(), in[r].size() * 4, cudaMemcpyHostToDevice));
    }
  }
  // Checks every rank's x against the rank-order sum, exactly, and the guards.
  void check_sum(const std::vector<std::vector<float>>& in, int64_t len) {
    std::vector<float> want(static_cast<size_t>(len));
    for (int64_t i = 0; i < len; ++i) {
      float acc = 0.f;
      for (int r = 0; r < world; ++r) acc += in[r][size_t(kGuard + i)];
      want[size_t(i)] = acc;
    }
    for (int r = 0; r < world; ++r) {
      CUDA_CHECK(cudaSetDevice(r));
      CUDA_CHECK(cudaStreamSynchronize(st[r]));
      std::vector<float> got(in[r].size());
      CUDA_CHECK(cudaMemcpy(got.data(), x[r], got.size() * 4, cudaMemcpyDeviceToHost));
      for (int64_t i = 0; i < len; ++i)
        ASSERT_EQ(got[size_t(kGuard + i)], want[size_t(i)]) << "rank " << r << " element " << i;
      for (int64_t i = 0; i < kGuard; ++i) {
        ASSERT_EQ(got[size_t(i)], in[r][size_t(i)]) << "rank " << r << " guard before";
        ASSERT_EQ(got[size_t(kGuard + len + i)], in[r][size_t(kGuard + len + i)]) << "rank " << r << " guard after";
      }
    }
  }
};

std::vector<std::vector<float>> random_inputs(std::mt19937& rng, int world, int64_t len) {
  std::uniform_real_distribution<float> u(-3.f, 3.f);
  std::vector<std::vector<float>> in(world, std::vector<float>(size_t(len + 2 * kGuard)));
  for (auto& h : in)
    for (auto& f : h) f = u(rng);
  for (int64_t i = 0; i < len; i += 7) {  // zeros of both signs among the values
    in[0][size_t(kGuard + i)] = 0.f;
    in[1][size_t(kGuard + i)] = -0.f;
  }
  return in;
}
#endif

TEST(CommGpu, PeerAllReduceSumsInRankOrder) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  PeerGroup g;
  if (!g.world) GTEST_SKIP() << g.skip;
  std::mt19937 rng(5);
  int call = 0;
  for (int64_t len : {int64_t(4), int64_t(2304), int64_t(4 * 1023), int64_t(7 * 2304), kCap, int64_t(2304)}) {
    SCOPED_TRACE(testing::Message() << "n " << len << ", call " << call++);
    const auto in = random_inputs(rng, g.world, len);
    g.upload(in);
    // Every rank's launch is queued before any completes: the kernels meet on the device.
    for (int r = 0; r < g.world; ++r) {
      CUDA_CHECK(cudaSetDevice(r));
      cuda::run_peer_allreduce(g.v[r], g.x[r] + kGuard, len, g.st[r]);
    }
    g.check_sum(in, len);
  }
#endif
}

// The push kernel: rows of odd widths (1 float4, a multiple of 4 not of 32, wider than one pass
// of 1024 threads), one row and many (up to the capacity), with and without the norm; more calls
// than buffers, in an order that reuses each buffer at different sizes.
TEST(CommGpu, PeerAllReducePushSumsAndNorms) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  PeerGroup g;
  if (!g.world) GTEST_SKIP() << g.skip;
  std::mt19937 rng(7);
  struct Case {
    int rows, dim;
    bool norm;
  };
  int call = 0;
  for (const Case& c : {Case{1, 2304, true}, Case{1, 4, false}, Case{3, 1028, true}, Case{2, 4100, true},
                        Case{28, 2304, true}, Case{1, 2304, false}, Case{5, 36, true}, Case{1, 2304, true}}) {
    SCOPED_TRACE(testing::Message() << c.rows << " x " << c.dim << (c.norm ? " norm" : "") << ", call "
                                    << call++);
    const int64_t len = int64_t(c.rows) * c.dim;
    const auto in = random_inputs(rng, g.world, len);
    const auto w = random_f32(rng, size_t(c.dim), 0.5f, 1.5f);
    constexpr float kEps = 1e-6f;
    std::vector<GuardedBuffer<float>> dw;
    std::vector<GuardedBuffer<uint16_t>> dn;
    for (int r = 0; r < g.world; ++r) {
      CUDA_CHECK(cudaSetDevice(r));
      dw.emplace_back(size_t(c.dim));
      dw.back().upload(w);
      dn.emplace_back(size_t(len));
      dn.back().poison();
    }
    g.upload(in);
    for (int r = 0; r < g.world; ++r) {
      CUDA_CHECK(cudaSetDevice(r));
      cuda::PeerPushParams p;
      p.rows = c.rows;
      p.dim = c.dim;
      p.x = g.x[r] + kGuard;
      if (c.norm) {
        p.norm_weight = dw[size_t(r)].data();
        p.eps = kEps;
        p.normed = dev<__nv_bfloat16>(dn[size_t(r)]);
      }
      cuda::run_peer_allreduce_push(g.v[r], p, g.st[r]);
    }
    g.check_sum(in, len);
    std::vector<float> sum(static_cast<size_t>(len)), ref(static_cast<size_t>(len));
    for (int64_t i = 0; i < len; ++i)
      for (int r = 0; r < g.world; ++r) sum[size_t(i)] += in[r][size_t(kGuard + i)];
    for (int row = 0; row < c.rows; ++row) {
      double ss = 0;
      for (int d = 0; d < c.dim; ++d) ss += double(sum[size_t(row) * c.dim + d]) * sum[size_t(row) * c.dim + d];
      const double inv = 1.0 / std::sqrt(ss / c.dim + kEps);
      for (int d = 0; d < c.dim; ++d)
        ref[size_t(row) * c.dim + d] = float(sum[size_t(row) * c.dim + d] * inv * w[size_t(d)]);
    }
    std::vector<uint16_t> first;
    for (int r = 0; r < g.world; ++r) {
      CUDA_CHECK(cudaSetDevice(r));
      const auto got = dn[size_t(r)].to_host();
      EXPECT_TRUE(dn[size_t(r)].guards_intact()) << "rank " << r;
      if (!c.norm) {
        for (uint16_t b : got) ASSERT_EQ(b, 0xffff) << "rank " << r << ": normed written without a norm";
        continue;
      }
      expect_close(str("push normed rank ", r), bf16_to_float(got).data(), ref.data(), ref.size(), 5e-3, 3e-2);
      if (r == 0) first = got;
      else EXPECT_EQ(got, first) << "rank " << r << " normed differs from rank 0's";
    }
  }
  CUDA_CHECK(cudaSetDevice(0));
#endif
}

TEST(CommGpu, PeerAllReducePushRefusesBadArguments) {
#if KIMI_HAVE_CUDA
  cuda::PeerAllReduceView v;
  v.rank = 0, v.world = 2, v.capacity = 4096;
  v.recv[0] = reinterpret_cast<float*>(0x1000), v.recv[1] = reinterpret_cast<float*>(0x2000);
  v.push_state = reinterpret_cast<uint32_t*>(0x3000);
  cuda::PeerPushParams ok;
  ok.rows = 1, ok.dim = 2304, ok.x = reinterpret_cast<float*>(0x4000);
  auto bad = [&](auto edit, const char* what) {
    cuda::PeerAllReduceView vv = v;
    cuda::PeerPushParams p = ok;
    edit(vv, p);
    EXPECT_THROW(cuda::run_peer_allreduce_push(vv, p, nullptr), Error) << what;
  };
  bad([](auto&, auto& p) { p.dim = 2302; }, "dim not a multiple of 4");
  bad([](auto&, auto& p) { p.rows = 2; }, "over the capacity");
  bad([](auto&, auto& p) { p.x = reinterpret_cast<float*>(0x4004); }, "misaligned x");
  bad([](auto&, auto& p) { p.norm_weight = reinterpret_cast<const float*>(0x5000); }, "norm without output");
  bad([](auto& vv, auto&) { vv.recv[1] = nullptr; }, "a rank's receive buffer missing");
  bad([](auto& vv, auto&) { vv.push_state = nullptr; }, "no call count");
  bad([](auto& vv, auto&) { vv.rank = 2; }, "rank outside the group");
#else
  GTEST_SKIP() << "built without the CUDA backend";
#endif
}

}  // namespace
}  // namespace kimi::test
