// Peer-memory all-reduce (kernels/comm/peer_allreduce.h) over every visible GPU (2..8): each
// rank's x becomes the sum of all ranks' x, summed in rank order, so it equals the host's sum in
// the same order exactly, on every rank; consecutive calls alternate the staging buffers and
// sizes change between calls (one CTA and many); bytes around x stay untouched. Skips with a
// message below 2 GPUs or without peer access.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "gpu_test_util.h"

#if KIMI_HAVE_CUDA
#include "comm/peer_allreduce.h"
#endif

namespace kimi::test {
namespace {

TEST(CommGpu, PeerAllReduceSumsInRankOrder) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  int n = 0;
  CUDA_CHECK(cudaGetDeviceCount(&n));
  n = std::min(n, cuda::kPeerMaxRanks);
  if (n < 2) GTEST_SKIP() << "peer all-reduce needs 2 GPUs, " << n << " visible";
  for (int r = 0; r < n; ++r)
    for (int q = 0; q < n; ++q) {
      int ok = 1;
      if (q != r) CUDA_CHECK(cudaDeviceCanAccessPeer(&ok, r, q));
      if (!ok) GTEST_SKIP() << "GPU " << r << " cannot access GPU " << q;
    }
  constexpr int64_t cap = 64 * 1024, guard = 64;
  std::vector<void*> mem(n);
  std::vector<float*> x(n);
  std::vector<cudaStream_t> st(n);
  for (int r = 0; r < n; ++r) {
    CUDA_CHECK(cudaSetDevice(r));
    for (int q = 0; q < n; ++q) {
      if (q == r) continue;
      const cudaError_t e = cudaDeviceEnablePeerAccess(q, 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();
      else CUDA_CHECK(e);
    }
    CUDA_CHECK(cudaMalloc(&mem[r], cuda::peer_allreduce_bytes(cap)));
    CUDA_CHECK(cudaMemset(mem[r], 0, cuda::peer_allreduce_bytes(cap)));
    CUDA_CHECK(cudaMalloc(&x[r], (cap + 2 * guard) * sizeof(float)));
    CUDA_CHECK(cudaStreamCreate(&st[r]));
  }
  std::vector<cuda::PeerAllReduceView> v(n);
  for (int r = 0; r < n; ++r) {
    v[r].rank = r, v[r].world = n, v[r].capacity = cap;
    for (int q = 0; q < n; ++q) {
      uint32_t* counters = nullptr;
      cuda::peer_allreduce_carve(mem[q], cap, &v[r].stage[q], &v[r].flags[q], &counters);
      if (q == r) v[r].counters = counters;
    }
  }
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-3.f, 3.f);
  int call = 0;
  for (int64_t len : {int64_t(4), int64_t(2304), int64_t(4 * 1023), int64_t(7 * 2304), cap, int64_t(2304)}) {
    SCOPED_TRACE(testing::Message() << "n " << len << ", call " << call++);
    std::vector<std::vector<float>> in(n, std::vector<float>(size_t(len + 2 * guard)));
    for (auto& h : in)
      for (auto& f : h) f = u(rng);
    for (int r = 0; r < n; ++r) {
      CUDA_CHECK(cudaSetDevice(r));
      CUDA_CHECK(cudaMemcpy(x[r], in[r].data(), in[r].size() * 4, cudaMemcpyHostToDevice));
    }
    // Every rank's launch is queued before any completes: the kernels meet on the device.
    for (int r = 0; r < n; ++r) {
      CUDA_CHECK(cudaSetDevice(r));
      cuda::run_peer_allreduce(v[r], x[r] + guard, len, st[r]);
    }
    std::vector<float> want(static_cast<size_t>(len));
    for (int64_t i = 0; i < len; ++i) {
      float acc = 0.f;
      for (int r = 0; r < n; ++r) acc += in[r][size_t(guard + i)];
      want[size_t(i)] = acc;
    }
    for (int r = 0; r < n; ++r) {
      CUDA_CHECK(cudaSetDevice(r));
      CUDA_CHECK(cudaStreamSynchronize(st[r]));
      std::vector<float> got(in[r].size());
      CUDA_CHECK(cudaMemcpy(got.data(), x[r], got.size() * 4, cudaMemcpyDeviceToHost));
      for (int64_t i = 0; i < len; ++i)
        ASSERT_EQ(got[size_t(guard + i)], want[size_t(i)]) << "rank " << r << " element " << i;
      for (int64_t i = 0; i < guard; ++i) {
        ASSERT_EQ(got[size_t(i)], in[r][size_t(i)]) << "rank " << r << " guard before";
        ASSERT_EQ(got[size_t(guard + len + i)], in[r][size_t(guard + len + i)]) << "rank " << r << " guard after";
      }
    }
  }
  for (int r = 0; r < n; ++r) {
    CUDA_CHECK(cudaSetDevice(r));
    CUDA_CHECK(cudaStreamDestroy(st[r]));
    CUDA_CHECK(cudaFree(mem[r]));
    CUDA_CHECK(cudaFree(x[r]));
  }
  CUDA_CHECK(cudaSetDevice(0));
#endif
}

}  // namespace
}  // namespace kimi::test
