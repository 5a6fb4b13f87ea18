// GPU op-test harness: skip-with-message when no GPU, error metrics (relative RMS + max-abs,
// NaN/Inf positions), poisoned outputs and guard regions that must stay untouched.
// Host code only; the CUDA parts exist when the build has the CUDA backend (KIMI_HAVE_CUDA).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"

#if KIMI_HAVE_CUDA
#include <cuda_runtime.h>

#include "common.h"
#include "ops/cuda/device_buffer.h"
#endif

namespace kimi::test {

// Error of `out` against `ref`: relative RMS over positions where both are finite, max-abs there,
// and the count of positions whose NaN/Inf class differs (NaN vs Inf vs ±Inf vs finite).
struct ErrorStats {
  size_t n = 0;
  double rel_rms = 0.0;
  double max_abs = 0.0;
  size_t max_abs_at = 0;
  size_t class_mismatch = 0;
  size_t first_mismatch = SIZE_MAX;
};

inline int value_class(double x) {
  if (std::isnan(x)) return 1;
  if (std::isinf(x)) return x > 0 ? 2 : 3;
  return 0;
}

template <typename A, typename B>
ErrorStats compare(const A* out, const B* ref, size_t n) {
  ErrorStats e;
  e.n = n;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double o = double(out[i]), r = double(ref[i]);
    if (value_class(o) != value_class(r)) {
      if (e.class_mismatch++ == 0) e.first_mismatch = i;
      continue;
    }
    if (value_class(r) != 0) continue;
    const double d = o - r;
    num += d * d;
    den += r * r;
    if (std::fabs(d) > e.max_abs) {
      e.max_abs = std::fabs(d);
      e.max_abs_at = i;
    }
  }
  e.rel_rms = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return e;
}

inline std::string describe(const ErrorStats& e) {
  return str("n=", e.n, " rel_rms=", e.rel_rms, " max_abs=", e.max_abs, " (at ", e.max_abs_at,
             ") nan/inf mismatches=", e.class_mismatch,
             e.class_mismatch ? str(" first at ", e.first_mismatch) : std::string());
}

// Asserts (non-fatally) rel_rms <= rel_tol, max_abs <= abs_tol and equal NaN/Inf positions;
// always prints the measured numbers so the logs carry them.
template <typename A, typename B>
ErrorStats expect_close(const std::string& what, const A* out, const B* ref, size_t n,
                        double rel_tol, double abs_tol) {
  ErrorStats e = compare(out, ref, n);
  std::printf("    [err] %-28s %s  (tol rel %.1e, abs %.1e)\n", what.c_str(), describe(e).c_str(),
              rel_tol, abs_tol);
  EXPECT_EQ(e.class_mismatch, 0u) << what << ": " << describe(e);
  EXPECT_LE(e.rel_rms, rel_tol) << what << ": " << describe(e);
  EXPECT_LE(e.max_abs, abs_tol) << what << ": " << describe(e);
  return e;
}

inline std::vector<float> bf16_to_float(const std::vector<uint16_t>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_f32(v[i]);
  return out;
}

// Random bf16 values uniform in [lo, hi) (exactly representable: the host reference sees the same).
inline std::vector<uint16_t> random_bf16(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = f32_to_bf16(u(rng));
  return v;
}
inline std::vector<float> random_f32(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// Row counts of the element-wise and GEMM tests: 1, odd, and around a 64-row tile.
inline constexpr int kRows[] = {1, 7, 63, 64, 65, 769};

#if KIMI_HAVE_CUDA

// Empty when a GPU is usable, else the reason (printed by KIMI_REQUIRE_GPU's skip message).
inline std::string gpu_unavailable_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) return str("cudaGetDeviceCount: ", cudaGetErrorString(e));
  if (n == 0) return "no CUDA device";
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return "cudaGetDeviceProperties failed";
  if (prop.major != 9)
    return str("device ", prop.name, " is sm_", prop.major, prop.minor,
               "; the kernels are built for sm_90a");
  return "";
}

// A device buffer with kGuard elements before and after the payload, filled with a byte pattern;
// guards_intact() checks that no kernel wrote outside [data(), data() + size()).
template <typename T>
class GuardedBuffer {
 public:
  static constexpr size_t kGuard = 1024;
  static constexpr int kPattern = 0x5b;
  explicit GuardedBuffer(size_t n) : n_(n), buf_(n + 2 * kGuard) { buf_.fill_bytes(kPattern); }
  T* data() { return buf_.data() + kGuard; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& h) { buf_.upload(h.data(), h.size(), kGuard); }
  std::vector<T> to_host() const {
    std::vector<T> h(n_);
    if (n_) buf_.download(h.data(), n_, kGuard);
    return h;
  }
  // Poison the payload (0xff bytes: NaN for float and bf16) so unwritten outputs show up.
  void poison() {
    if (n_) CUDA_CHECK(cudaMemset(data(), 0xff, n_ * sizeof(T)));
  }
  bool guards_intact() const {
    std::vector<unsigned char> g(kGuard * sizeof(T));
    for (size_t off : {size_t(0), kGuard + n_}) {
      buf_.download(reinterpret_cast<T*>(g.data()), kGuard, off);
      for (unsigned char c : g)
        if (c != kPattern) return false;
    }
    return true;
  }

 private:
  size_t n_;
  cuda::DeviceBuffer<T> buf_;
};

// A bf16 buffer (stored as uint16_t bits) seen as the kernel's element type.
template <typename T>
T* dev(GuardedBuffer<uint16_t>& b) {
  return reinterpret_cast<T*>(b.data());
}

#endif

}  // namespace kimi::test

#if KIMI_HAVE_CUDA
#define KIMI_REQUIRE_GPU()                                                  \
  do {                                                                      \
    const std::string kimi_why_ = ::kimi::test::gpu_unavailable_reason();   \
    if (!kimi_why_.empty()) {                                               \
      std::fprintf(stderr, "GPU op test skipped: %s\n", kimi_why_.c_str()); \
      GTEST_SKIP() << "GPU op test skipped: " << kimi_why_;                 \
    }                                                                       \
  } while (0)
#else
#define KIMI_REQUIRE_GPU()                                                         \
  do {                                                                             \
    std::fprintf(stderr, "GPU op test skipped: built without the CUDA backend\n"); \
    GTEST_SKIP() << "GPU op test skipped: built without the CUDA backend";         \
  } while (0)
#endif
