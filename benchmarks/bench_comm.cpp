// Peer-memory all-reduce benchmark (kernels/comm/peer_allreduce.h) over the first N visible GPUs
// (--ranks N, default 2): decode-sized residual all-reduces (rows of hidden 2304, fp32), as the
// tensor-parallel decode step runs them (54 per step at batch 1):
//   push       the one-shot push kernel (the default)
//   push+norm  the same writing the next sub-layer's bf16 normed input
//   pull       the flag-and-pull kernel (KIMI_TP_ALLREDUCE=pull)
//   rmsnorm    one RMSNorm launch on each GPU alone: what the fold saves
// Each GPU captures a CUDA graph of kCalls calls; the graphs are launched on every GPU back to
// back (the calls then meet on the devices: after the first, no rank waits for a late launch),
// and the time per call is each GPU's event time over kCalls, median of groups, the residual
// rows re-drawn (random, non-zero) before each group. Every CUDA call is checked.
// Usage: bench_comm [--ranks N]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#if KIMI_HAVE_CUDA
#include "comm/peer_allreduce.h"
#include "common.h"
#include "norm/norm.h"
#endif

int main(int argc, char** argv) {
#if !KIMI_HAVE_CUDA
  (void)argc;
  (void)argv;
  std::printf("bench_comm: built without CUDA\n");
  return 0;
#else
  using namespace kimi;
  int want = 2;
  for (int i = 1; i < argc; ++i) {
    char* end = nullptr;
    if (!std::strcmp(argv[i], "--ranks") && i + 1 < argc) {
      want = int(std::strtol(argv[++i], &end, 10));
      if (*end != '\0' || want < 2 || want > cuda::kPeerMaxRanks) {
        std::fprintf(stderr, "bench_comm: --ranks takes 2..%d, got '%s'\n", cuda::kPeerMaxRanks, argv[i]);
        return 2;
      }
    } else {
      std::fprintf(stderr, "bench_comm: unknown argument '%s' (usage: bench_comm [--ranks N])\n", argv[i]);
      return 2;
    }
  }
  int n = 0;
  CUDA_CHECK(cudaGetDeviceCount(&n));
  n = std::min({n, want, cuda::kPeerMaxRanks});
  if (n < 2) {
    std::printf("bench_comm: needs 2 GPUs, %d visible\n", n);
    return 0;
  }
  constexpr int kHidden = 2304, kCalls = 54, kGroups = 15;
  constexpr int64_t kCap = 64 * 1024;
  std::vector<void*> mem(n);
  std::vector<float*> x(n), w(n);
  std::vector<cuda::bf16*> normed(n);
  std::vector<cudaStream_t> st(n);
  std::vector<cudaEvent_t> ev0(n), ev1(n);
  std::vector<cuda::PeerAllReduceView> v(n);
  for (int r = 0; r < n; ++r) {
    CUDA_CHECK(cudaSetDevice(r));
    for (int q = 0; q < n; ++q) {
      if (q == r) continue;
      int ok = 0;
      CUDA_CHECK(cudaDeviceCanAccessPeer(&ok, r, q));
      if (!ok) {
        std::printf("bench_comm: GPU %d cannot access GPU %d\n", r, q);
        return 0;
      }
      const cudaError_t e = cudaDeviceEnablePeerAccess(q, 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();
      else CUDA_CHECK(e);
    }
    const size_t bytes = cuda::peer_allreduce_bytes(kCap, n);
    CUDA_CHECK(cudaMalloc(&mem[r], bytes));
    CUDA_CHECK(cudaMemset(mem[r], 0, bytes));
    CUDA_CHECK(cudaMalloc(&x[r], kCap * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&w[r], kHidden * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&normed[r], kCap * sizeof(cuda::bf16)));
    CUDA_CHECK(cudaStreamCreateWithFlags(&st[r], cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreate(&ev0[r]));
    CUDA_CHECK(cudaEventCreate(&ev1[r]));
  }
  for (int r = 0; r < n; ++r) {
    v[r].rank = r, v[r].world = n, v[r].capacity = kCap;
    for (int q = 0; q < n; ++q) cuda::peer_allreduce_carve(mem[q], kCap, q, v[r]);
  }
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  auto draw = [&]() {  // fresh residual rows (sums of 54 calls stay finite: ≤ 1.5·N^54)
    std::vector<float> h(kCap);
    for (int r = 0; r < n; ++r) {
      for (auto& f : h) f = u(rng) * (rng() & 1 ? 1.f : -1.f) * 1e-12f;
      CUDA_CHECK(cudaSetDevice(r));
      CUDA_CHECK(cudaMemcpy(x[r], h.data(), h.size() * 4, cudaMemcpyHostToDevice));
      CUDA_CHECK(cudaMemcpy(w[r], h.data(), kHidden * 4, cudaMemcpyHostToDevice));
    }
  };
  std::printf("bench_comm: %d GPUs, %d calls per graph, median of %d groups (us per call; rank 0 .. %d)\n",
              n, kCalls, kGroups, n - 1);
  for (int rows : {1, 4, 16}) {
    for (const char* kind : {"push", "push+norm", "pull", "rmsnorm"}) {
      const std::string k = kind;
      std::vector<cudaGraphExec_t> exec(n);
      for (int r = 0; r < n; ++r) {
        CUDA_CHECK(cudaSetDevice(r));
        cudaGraph_t g = nullptr;
        CUDA_CHECK(cudaStreamBeginCapture(st[r], cudaStreamCaptureModeThreadLocal));
        for (int c = 0; c < kCalls; ++c) {
          if (k == "pull") {
            cuda::run_peer_allreduce(v[r], x[r], int64_t(rows) * kHidden, st[r]);
          } else if (k == "rmsnorm") {
            cuda::RmsNormParams p;
            p.rows = rows;
            p.dim = kHidden;
            p.x = x[r];
            p.weight = w[r];
            p.y = normed[r];
            cuda::run_rmsnorm(p, st[r]);
          } else {
            cuda::PeerPushParams p;
            p.rows = rows;
            p.dim = kHidden;
            p.x = x[r];
            if (k == "push+norm") {
              p.norm_weight = w[r];
              p.normed = normed[r];
            }
            cuda::run_peer_allreduce_push(v[r], p, st[r]);
          }
        }
        CUDA_CHECK(cudaStreamEndCapture(st[r], &g));
        CUDA_CHECK(cudaGraphInstantiate(&exec[r], g, 0));
        CUDA_CHECK(cudaGraphDestroy(g));
      }
      std::vector<std::vector<double>> t(n);
      for (int grp = -2; grp < kGroups; ++grp) {  // two warm-up groups
        draw();
        for (int r = 0; r < n; ++r) {
          CUDA_CHECK(cudaSetDevice(r));
          CUDA_CHECK(cudaEventRecord(ev0[r], st[r]));
          CUDA_CHECK(cudaGraphLaunch(exec[r], st[r]));
          CUDA_CHECK(cudaEventRecord(ev1[r], st[r]));
        }
        for (int r = 0; r < n; ++r) {
          CUDA_CHECK(cudaSetDevice(r));
          CUDA_CHECK(cudaEventSynchronize(ev1[r]));
          float ms = 0.f;
          CUDA_CHECK(cudaEventElapsedTime(&ms, ev0[r], ev1[r]));
          if (grp >= 0) t[r].push_back(1e3 * ms / kCalls);
        }
      }
      std::printf("rows %2d  %-10s", rows, kind);
      for (int r = 0; r < n; ++r) {
        std::sort(t[r].begin(), t[r].end());
        std::printf("  %6.2f", t[r][t[r].size() / 2]);
      }
      std::printf("\n");
      for (int r = 0; r < n; ++r) {
        CUDA_CHECK(cudaSetDevice(r));
        CUDA_CHECK(cudaGraphExecDestroy(exec[r]));
      }
    }
  }
  for (int r = 0; r < n; ++r) {
    CUDA_CHECK(cudaSetDevice(r));
    CUDA_CHECK(cudaStreamDestroy(st[r]));
    CUDA_CHECK(cudaEventDestroy(ev0[r]));
    CUDA_CHECK(cudaEventDestroy(ev1[r]));
    CUDA_CHECK(cudaFree(mem[r]));
    CUDA_CHECK(cudaFree(x[r]));
    CUDA_CHECK(cudaFree(w[r]));
    CUDA_CHECK(cudaFree(normed[r]));
  }
  return 0;
#endif
}
