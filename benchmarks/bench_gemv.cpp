// Small-M dense projections (Kimi Linear 48B decode shapes, one GPU): the small-M kernels
// (gemm/gemv.h) against cuBLASLt forced through the same Gemm::run, M = 1, 2, 4, 8, 16.
//   Each call's weights rotate over enough copies (>= 256 MB in all) that they come from DRAM,
//   not L2; time per call from CUDA-graph replay (median over groups); GB/s = weight bytes /
//   time, as % of the device-to-device copy ceiling measured in the same run. Both paths'
//   outputs are compared (the op tests check each against the CPU).
//   "per step": Σ calls per decode step × time, from these isolated timings (an estimate: in the
//   model, neighbouring kernels overlap launch tails and share L2).
//   "no PDL": the small-M kernels launched without programmatic dependent launch (each call
//   waits for the previous one to finish before its weight prologue starts).
//   --splits: also sweeps the k split count of the mma kernel for the small-N shapes at M = 1.
//   --shapes a,b: only the shapes whose name contains one of the comma-separated words;
//   --rows 1,8: only these M (default 1, 2, 4, 8, 16).
// Usage: bench_gemv [--quick] [--splits] [--shapes a,b] [--rows 1,8]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/dtype.h"

#if KIMI_HAVE_CUDA
#include "common.h"
#include "gemm/gemm.h"
#include "gemm/gemv.h"
#include "launch.h"
#include "ops/cuda/device_buffer.h"
#include "bench_util.h"

namespace {

using kimi::bench::copy_ceiling_gbs;
using kimi::bench::fill_random;
using kimi::bench::graph_ms;
using kimi::cuda::bf16;
using kimi::cuda::DeviceBuffer;
using kimi::cuda::GemmArgs;
using kimi::cuda::GemmOut;
using kimi::cuda::GemmPath;

struct Shape {
  const char* name;
  int per_step;  // calls per decode step of the 48B model (27 layers: 20 KDA, 7 MLA, 1 dense)
  int N, K;
  GemmOut out = GemmOut::kBF16;
  float beta = 0.f;
  bool in_f32 = false;
  int lda = 0;  // 0: K
  int batch = 1;
  bool b_kn = false;
};

std::vector<Shape> model_shapes() {
  const GemmOut f32 = GemmOut::kF32;
  std::vector<Shape> s = {
      {"kda qkv", 20, 12288, 2304},
      {"kda fg_a", 20, 256, 2304},
      {"kda b", 20, 32, 2304},
      {"kda f_b/g_b", 40, 4096, 128, GemmOut::kBF16, 0.f, false, 256},
      {"o_proj +=", 27, 2304, 4096, f32, 1.f},
      {"mla q", 7, 6144, 2304},
      {"mla kv_a", 7, 576, 2304, f32},
      {"mla q_abs x32", 7, 512, 128, GemmOut::kBF16, 0.f, false, 0, 32, true},
      {"mla attn x32", 7, 128, 512, GemmOut::kBF16, 0.f, false, 0, 32},
      {"mlp gate_up", 1, 18432, 2304},
      {"mlp down +=", 1, 2304, 9216, f32, 1.f},
      {"shared gate_up", 0, 2048, 2304},  // fused into the MoE kernels at decode
      {"shared down +=", 0, 2304, 1024, f32, 1.f},
      {"router f32", 26, 256, 2304, f32, 0.f, true},
      {"lm_head", 1, 163840, 2304, f32},
  };
  return s;
}

// The comma-separated items of s.
std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    const size_t e = std::min(s.find(',', b), s.size());
    if (e > b) out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

// Whether shape `name` passes the --shapes filter (empty: every shape).
bool selected(const char* name, const std::vector<std::string>& only) {
  if (only.empty()) return true;
  for (const std::string& w : only)
    if (std::string(name).find(w) != std::string::npos) return true;
  return false;
}

// Operands of one shape: `copies` weight copies (rotated), input rows and two outputs.
struct Operands {
  Shape s;
  int lda, ldb, ldc, copies;
  int64_t a_stride, b_stride, c_stride, w_elems;
  double w_bytes;
  DeviceBuffer<char> w, a, c_ours, c_ref;

  Operands(const Shape& sh, int max_m) : s(sh) {
    const int isz = s.in_f32 ? 4 : 2, osz = s.out == GemmOut::kF32 ? 4 : 2;
    // Batched shapes lay heads side by side in a row, as the model does.
    lda = s.batch > 1 ? s.batch * s.K : (s.lda ? s.lda : s.K);
    a_stride = s.batch > 1 ? s.K : 0;
    ldb = s.b_kn ? s.N : s.K;
    b_stride = int64_t(s.N) * s.K;
    ldc = s.batch * s.N;
    c_stride = s.batch > 1 ? s.N : 0;
    w_elems = b_stride * s.batch;
    w_bytes = double(w_elems) * isz;
    copies = std::max(2, int(std::ceil(256e6 / w_bytes)));
    w = DeviceBuffer<char>(size_t(w_bytes) * copies);
    a = DeviceBuffer<char>(size_t(max_m) * lda * isz);
    c_ours = DeviceBuffer<char>(size_t(max_m) * ldc * osz);
    c_ref = DeviceBuffer<char>(size_t(max_m) * ldc * osz);
    auto fill = [&](DeviceBuffer<char>& b, float lo, float hi, uint32_t seed) {
      if (s.in_f32) {
        DeviceBuffer<float> tmp(b.size() / 4);
        fill_random(tmp, lo, hi, seed);
        CUDA_CHECK(cudaMemcpy(b.data(), tmp.data(), b.size(), cudaMemcpyDeviceToDevice));
      } else {
        DeviceBuffer<bf16> tmp(b.size() / 2);
        fill_random(tmp, lo, hi, seed);
        CUDA_CHECK(cudaMemcpy(b.data(), tmp.data(), b.size(), cudaMemcpyDeviceToDevice));
      }
    };
    fill(w, -0.05f, 0.05f, 1);
    fill(a, -1.f, 1.f, 2);
    CUDA_CHECK(cudaMemset(c_ours.data(), 0, c_ours.size()));
    CUDA_CHECK(cudaMemset(c_ref.data(), 0, c_ref.size()));
  }

  GemmArgs args(int M, int copy, bool ours) const {
    const int isz = s.in_f32 ? 4 : 2;
    GemmArgs g;
    g.M = M, g.N = s.N, g.K = s.K, g.batch = s.batch, g.b_kn = s.b_kn, g.in_f32 = s.in_f32;
    g.A = reinterpret_cast<const bf16*>(a.data()), g.lda = lda, g.stride_a = a_stride;
    g.B = reinterpret_cast<const bf16*>(w.data() + size_t(copy) * w_elems * isz);
    g.ldb = ldb, g.stride_b = b_stride;
    g.C = const_cast<char*>(ours ? c_ours.data() : c_ref.data()), g.ldc = ldc,
    g.stride_c = c_stride;
    g.out = s.out, g.beta = s.beta;
    return g;
  }
};

// Relative RMS difference of two outputs (bf16 or fp32).
double out_diff(const Operands& o, int M) {
  const size_t n = size_t(M) * o.ldc;
  std::vector<double> x(n), y(n);
  if (o.s.out == GemmOut::kF32) {
    std::vector<float> a(n), b(n);
    CUDA_CHECK(cudaMemcpy(a.data(), o.c_ours.data(), n * 4, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(b.data(), o.c_ref.data(), n * 4, cudaMemcpyDeviceToHost));
    std::copy(a.begin(), a.end(), x.begin());
    std::copy(b.begin(), b.end(), y.begin());
  } else {
    std::vector<uint16_t> a(n), b(n);
    CUDA_CHECK(cudaMemcpy(a.data(), o.c_ours.data(), n * 2, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(b.data(), o.c_ref.data(), n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; ++i) x[i] = kimi::bf16_to_f32(a[i]), y[i] = kimi::bf16_to_f32(b[i]);
  }
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) num += (x[i] - y[i]) * (x[i] - y[i]), den += y[i] * y[i];
  return std::sqrt(num / std::max(den, 1e-30));
}

double time_calls(kimi::cuda::Gemm& gemm, const Operands& o, int M, bool ours, int groups,
                  cudaStream_t st) {
  const int per_graph = o.copies * std::max(1, 16 / o.copies);
  gemm.run(o.args(M, 0, ours), st);  // cuBLASLt plans are made outside the capture
  CUDA_CHECK(cudaStreamSynchronize(st));
  return graph_ms([&](int i, cudaStream_t s) { gemm.run(o.args(M, i % o.copies, ours), s); },
                  per_graph, groups, st);
}

void bench_shapes(double ceiling, int sms, bool quick, const std::vector<std::string>& only,
                  const std::vector<int>& Ms, cudaStream_t st) {
  // "ours": the small-M kernels wherever they can run (M = 16 too, above the kAuto threshold),
  // else what kAuto does (cuBLASLt); the path column says which ran.
  kimi::cuda::Gemm small, small_plain, automatic, cublas;
  small.set_path(GemmPath::kSmallM);
  small_plain.set_path(GemmPath::kSmallM);
  cublas.set_path(GemmPath::kCublasLt);
  const int groups = quick ? 7 : 15;
  std::printf("\n%-15s %6s %6s %8s %3s %8s %6s %8s %8s %8s %7s %7s %7s %8s\n", "shape", "N", "K",
              "MB", "M", "path", "splits", "ours us", "no PDL", "cuBLASLt", "speedup", "% copy",
              "cuBL %", "rel diff");
  std::vector<double> step_ours(Ms.size()), step_cublas(Ms.size());
  for (const Shape& s : model_shapes()) {
    if (!selected(s.name, only)) continue;
    Operands o(s, *std::max_element(Ms.begin(), Ms.end()));
    for (size_t mi = 0; mi < Ms.size(); ++mi) {
      const int M = Ms[mi];
      const bool is_small = small.uses_small_m(o.args(M, 0, true));
      kimi::cuda::Gemm& ours = is_small ? small : automatic;
      const double t_ours = time_calls(ours, o, M, true, groups, st);
      kimi::cuda::set_pdl_enabled(false);  // "no PDL": the same kernels launched plainly
      const double t_plain = is_small ? time_calls(small_plain, o, M, true, groups, st) : t_ours;
      kimi::cuda::set_pdl_enabled(true);
      const double t_cub = time_calls(cublas, o, M, false, groups, st);
      // One call each from equal C (beta = 1 accumulates: the timed calls left different sums).
      CUDA_CHECK(cudaMemsetAsync(o.c_ours.data(), 0, o.c_ours.size(), st));
      CUDA_CHECK(cudaMemsetAsync(o.c_ref.data(), 0, o.c_ref.size(), st));
      ours.run(o.args(M, 0, true), st);
      cublas.run(o.args(M, 0, false), st);
      CUDA_CHECK(cudaStreamSynchronize(st));
      const double diff = out_diff(o, M);
      const double gbs = o.w_bytes / (t_ours * 1e-3) / 1e9,
                   gbs_c = o.w_bytes / (t_cub * 1e-3) / 1e9;
      const GemmArgs a = o.args(M, 0, true);
      const int splits = is_small ? kimi::cuda::gemv_splits(a, sms) : 0;
      std::printf(
          "%-15s %6d %6d %8.2f %3d %8s %6d %8.2f %8.2f %8.2f %6.2fx %6.1f%% %6.1f%% %8.1e%s\n",
          s.name, s.N, s.K, o.w_bytes / 1e6, M, is_small ? "small-M" : "cuBLASLt", splits,
          t_ours * 1e3, t_plain * 1e3, t_cub * 1e3, t_cub / t_ours, 100 * gbs / ceiling,
          100 * gbs_c / ceiling, diff,
          diff < (s.out == GemmOut::kF32 ? 1e-4 : 8e-3) ? "" : "  ** MISMATCH **");
      step_ours[mi] += s.per_step * (M <= kimi::cuda::kGemmSmallMaxRows ? t_ours : t_cub);
      step_cublas[mi] += s.per_step * t_cub;
    }
  }
  std::printf(
      "\nper decode step (Σ calls × isolated time, 48B model, shared expert fused; "
      "kAuto = small-M up to M %d, then cuBLASLt):\n",
      kimi::cuda::kGemmSmallMaxRows);
  for (size_t mi = 0; mi < Ms.size(); ++mi)
    std::printf("  M %2d: kAuto %7.1f us, cuBLASLt %7.1f us (%.2fx)\n", Ms[mi], step_ours[mi] * 1e3,
                step_cublas[mi] * 1e3, step_cublas[mi] / step_ours[mi]);
}

// The k split count of the mma kernel against its heuristic, small-N shapes, M = 1 and 8.
void bench_splits(int sms, const std::vector<std::string>& only, cudaStream_t st) {
  kimi::cuda::Gemm gemm;
  gemm.set_path(GemmPath::kSmallM);
  std::printf("\nk splits (us per call; * = the heuristic's choice)\n%-15s %3s", "shape", "M");
  const std::vector<int> splits = {1, 2, 3, 4, 5, 6, 8};
  for (int s : splits) std::printf(" %8d", s);
  std::printf("\n");
  for (const Shape& s : model_shapes()) {
    if (s.b_kn || s.in_f32 || int64_t(s.N) * s.batch > 8192 || !selected(s.name, only)) continue;
    Operands o(s, 8);
    for (int M : {1, 8}) {
      const int chosen = kimi::cuda::gemv_splits(o.args(M, 0, true), sms);
      std::printf("%-15s %3d", s.name, M);
      for (int sp : splits) {
        gemm.set_small_m_splits(sp);
        const double t = time_calls(gemm, o, M, true, 7, st);
        std::printf(" %7.2f%s", t * 1e3, sp == chosen ? "*" : " ");
      }
      std::printf("\n");
    }
  }
  gemm.set_small_m_splits(0);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, splits = false;
  std::vector<std::string> only;
  std::vector<int> Ms = {1, 2, 4, 8, 16};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--splits") {
      splits = true;
    } else if (a == "--shapes" && i + 1 < argc) {
      only = split_list(argv[++i]);
    } else if (a == "--rows" && i + 1 < argc) {
      Ms.clear();
      for (const std::string& r : split_list(argv[++i])) Ms.push_back(std::atoi(r.c_str()));
    } else {
      Ms.clear();
    }
    if (Ms.empty() || std::any_of(Ms.begin(), Ms.end(), [](int m) { return m < 1 || m > 16; })) {
      std::fprintf(stderr, "usage: bench_gemv [--quick] [--splits] [--shapes a,b] [--rows 1,8]\n");
      return 2;
    }
  }
  try {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    std::printf("bench_gemv: %s, %d SMs, L2 %d MB; weights rotated over >= 256 MB of copies\n",
                prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    const double ceiling = copy_ceiling_gbs();
    std::printf("copy ceiling (1 GiB D2D, read+write): %.1f GB/s\n", ceiling);
    cudaStream_t st;
    CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    bench_shapes(ceiling, prop.multiProcessorCount, quick, only, Ms, st);
    if (splits) bench_splits(prop.multiProcessorCount, only, st);
    CUDA_CHECK(cudaStreamDestroy(st));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gemv: %s\n", e.what());
    return 1;
  }
  return 0;
}
#else
int main() {
  std::printf("bench_gemv: built without the CUDA backend; nothing to measure\n");
  return 0;
}
#endif
