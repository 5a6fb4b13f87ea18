// What every GPU benchmark shares: random device data, median timing with CUDA events, CUDA-graph
// timing, and the card's two ceilings measured in the same run (device-to-device copy bandwidth,
// cuBLASLt bf16 GEMM rate). Header-only; include after the CUDA headers, inside KIMI_HAVE_CUDA.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include "common.h"
#include "core/dtype.h"
#include "gemm/gemm.h"
#include "ops/cuda/device_buffer.h"

namespace kimi::bench {

using cuda::bf16;
using cuda::DeviceBuffer;

// Fills a device buffer with random values in [lo, hi): one random block of up to 4 Mi values,
// tiled over the buffer on the device.
template <typename T>
void fill_random(DeviceBuffer<T>& buf, float lo, float hi, uint32_t seed) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "fp32 or bf16 buffers");
  if (buf.size() == 0) return;
  const size_t block = std::min<size_t>(buf.size(), size_t(1) << 22);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<T> h(block);
  for (auto& x : h) {
    const float v = u(rng);
    if constexpr (std::is_same_v<T, float>) {
      x = v;
    } else {
      const uint16_t b = f32_to_bf16(v);
      std::memcpy(static_cast<void*>(&x), &b, 2);
    }
  }
  buf.upload(h.data(), block);
  for (size_t off = block; off < buf.size(); off += block) {
    const size_t n = std::min(block, buf.size() - off);
    CUDA_CHECK(cudaMemcpy(buf.data() + off, buf.data(), n * sizeof(T), cudaMemcpyDeviceToDevice));
  }
}

// Median milliseconds per call of fn(i) (i counts calls from 0) over `groups` groups of
// `per_group` calls on `stream`, after `warmup` calls.
template <typename F>
double median_ms(F&& fn, int groups, int per_group, int warmup = 3, cudaStream_t stream = nullptr) {
  int call = 0;
  for (int i = 0; i < warmup; ++i) fn(call++);
  CUDA_CHECK(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  std::vector<double> t;
  for (int g = 0; g < groups; ++g) {
    CUDA_CHECK(cudaEventRecord(a, stream));
    for (int i = 0; i < per_group; ++i) fn(call++);
    CUDA_CHECK(cudaEventRecord(b, stream));
    CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(double(ms) / per_group);
  }
  CUDA_CHECK(cudaEventDestroy(a));
  CUDA_CHECK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Medians of two workloads timed in alternation (a, b, a, b, ...), one call each per sample:
// {ms of a, ms of b}. For ratios between them: both see the same clock and power state, which
// drifts over a long run (a row timed first in a process can come out several % faster).
template <typename A, typename B>
std::pair<double, double> paired_median_ms(A&& a, B&& b, int samples, int warmup = 2) {
  for (int i = 0; i < warmup; ++i) a(i), b(i);
  CUDA_CHECK(cudaDeviceSynchronize());
  cudaEvent_t e0, e1, e2;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  CUDA_CHECK(cudaEventCreate(&e2));
  std::vector<double> ta, tb;
  for (int i = 0; i < samples; ++i) {
    CUDA_CHECK(cudaEventRecord(e0, nullptr));
    a(warmup + i);
    CUDA_CHECK(cudaEventRecord(e1, nullptr));
    b(warmup + i);
    CUDA_CHECK(cudaEventRecord(e2, nullptr));
    CUDA_CHECK(cudaEventSynchronize(e2));
    float ms_a = 0.f, ms_b = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&ms_a, e0, e1));
    CUDA_CHECK(cudaEventElapsedTime(&ms_b, e1, e2));
    ta.push_back(ms_a);
    tb.push_back(ms_b);
  }
  CUDA_CHECK(cudaEventDestroy(e0));
  CUDA_CHECK(cudaEventDestroy(e1));
  CUDA_CHECK(cudaEventDestroy(e2));
  std::sort(ta.begin(), ta.end());
  std::sort(tb.begin(), tb.end());
  return {ta[ta.size() / 2], tb[tb.size() / 2]};
}

// Median ms per call of call(i, stream), replayed from one CUDA graph holding `per_graph` calls.
template <typename F>
double graph_ms(F&& call, int per_graph, int groups, cudaStream_t st) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < per_graph; ++i) call(i, st);
  CUDA_CHECK(cudaStreamEndCapture(st, &graph));
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  const double ms =
      median_ms([&](int) { CUDA_CHECK(cudaGraphLaunch(exec, st)); }, groups, 1, 2, st) / per_graph;
  CUDA_CHECK(cudaStreamSynchronize(st));
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  return ms;
}

// Device-to-device copy of 1 GiB: GB/s counting read + write (the bandwidth ceiling).
inline double copy_ceiling_gbs() {
  const size_t bytes = size_t(1) << 30;
  DeviceBuffer<char> a(bytes), b(bytes);
  CUDA_CHECK(cudaMemset(a.data(), 1, bytes));
  const double ms = median_ms(
      [&](int) {
        CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice));
      },
      20, 1);
  return 2.0 * bytes / (ms * 1e-3) / 1e9;
}

// cuBLASLt bf16 GEMM n × n × n (bf16 out, fp32 accumulate), TFLOP/s: the card's dense ceiling.
inline double gemm_ceiling_tflops(int n = 8192) {
  DeviceBuffer<bf16> a(size_t(n) * n), b(size_t(n) * n), c(size_t(n) * n);
  fill_random(a, -1.f, 1.f, 1);
  fill_random(b, -1.f, 1.f, 2);
  cuda::Gemm gemm;
  const double ms = median_ms(
      [&](int) { gemm.linear(a.data(), b.data(), c.data(), n, n, n, cuda::GemmOut::kBF16, nullptr); },
      10, 3, 2);
  return 2.0 * n * n * double(n) / (ms * 1e-3) / 1e12;
}

}  // namespace kimi::bench
