// cuBLASLt wrapper for every dense projection: bf16 operands, fp32 accumulation, bf16 or fp32
// output, optional accumulation into the output (beta = 1: the residual stream adds in place).
//
// in_f32: A and B are fp32 instead of bf16 (CUBLAS_COMPUTE_32F, no TF32), for the few small
// products whose inputs must not be rounded (the MoE router decides discrete expert choices).
//
// Row-major convention (PyTorch Linear):  C[M, N] = alpha · A[M, K] · op(B) + beta · C
//   B stored [N, K] (a Linear weight, b_kn = false): op(B) = Bᵀ;
//   B stored [K, N] (b_kn = true):                   op(B) = B.
// Leading dimensions are row strides in elements; batch > 1 walks A, B, C by their strides
// (strided batched, e.g. one batch per MLA head).
// cuBLASLt is column-major: we compute Cᵀ[N, M] = op(B)ᵀ · Aᵀ, i.e. cuBLAS "A" = our B.
//
// Small M (decode): a call with M <= kGemmSmallMaxRows, B stored [N, K] and operands on 16-byte
// boundaries runs the bandwidth-bound kernels of gemv.h instead of cuBLASLt; an unaligned one
// falls back to cuBLASLt and says so once on stderr. On a created stream those kernels are
// programmatic dependent launches that read their first weights while the previous kernel of
// the stream drains: B must not be written by the kernel right before the call.
//
// Plans (matmul descriptor, layouts, algorithm from the heuristic) are made once per shape,
// stride, output type and pointer-alignment class, then reused: after warm-up no call allocates
// or queries the heuristic. One Gemm per stream; not thread-safe.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

namespace kimi::cuda {

using bf16 = __nv_bfloat16;

enum class GemmOut { kBF16, kF32 };

// kAuto: the small-M kernels for M <= kGemmSmallMaxRows when the operands allow, else cuBLASLt.
// kCublasLt / kSmallM force one (benchmarks, tests); kSmallM takes M up to kGemvMaxRows (16)
// and refuses a call it cannot run.
enum class GemmPath { kAuto, kCublasLt, kSmallM };
// Measured on H200 (bench_gemv): at M = 16 cuBLASLt beats the small-M kernels on most shapes.
inline constexpr int kGemmSmallMaxRows = 8;

struct GemmArgs {
  int M = 0, N = 0, K = 0;
  const bf16* A = nullptr;  // (float* reinterpreted when in_f32)
  int lda = 0;
  int64_t stride_a = 0;
  const bf16* B = nullptr;
  int ldb = 0;
  int64_t stride_b = 0;
  bool b_kn = false;  // B stored [K, N] instead of [N, K]
  void* C = nullptr;  // bf16 or fp32 per out
  int ldc = 0;
  int64_t stride_c = 0;
  GemmOut out = GemmOut::kBF16;
  float alpha = 1.f;
  float beta = 0.f;  // 0: overwrite C; otherwise C is read (accumulate)
  int batch = 1;
  bool in_f32 = false;  // A and B fp32 (true fp32 math, no TF32): the MoE router
};

class Gemm {
 public:
  // workspace_bytes: cuBLASLt workspace, allocated once here.
  explicit Gemm(size_t workspace_bytes = size_t(32) << 20);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  void run(const GemmArgs& a, cudaStream_t stream);
  // GEMMs of one input (same A, M, K, out, alpha, beta; batch 1): one small-M launch where the
  // small-M kernels take them all (run_gemv_group), else one run() each.
  void run_group(const GemmArgs* a, int n, cudaStream_t stream);
  // High-precision input (docs/precision.md): every a[i] reads the hi plane of its input at A and
  // the lo plane lo_offset elements after it (x = hi + lo, misc.h run_split_bf16). Runs
  // run_group(a, n), then the same GEMMs over the lo planes with beta 1: C = W·hi + W·lo (+ beta·C),
  // i.e. W·x with x to ~16 significant bits and fp32 accumulation. Decode-sized calls whose lo
  // plane follows the hi plane's rows (lo_offset = M·lda) run instead as one small-M launch of 2M
  // stacked rows that adds the row pairs (the weights read once). Outputs must be fp32 (a bf16 C
  // would round between the passes) and n <= kGemvMaxGroup.
  void run_hilo(const GemmArgs* a, int n, int64_t lo_offset, cudaStream_t stream);
  // The GemmArgs of linear() below.
  static GemmArgs linear_args(const bf16* x, const bf16* w, void* y, int M, int N, int K,
                              GemmOut out, float beta = 0.f);
  // y[M, N] = x[M, K] · w[N, K]ᵀ, contiguous rows; out bf16 or fp32; beta = 1 accumulates.
  void linear(const bf16* x, const bf16* w, void* y, int M, int N, int K, GemmOut out,
              cudaStream_t stream, float beta = 0.f);
  size_t num_plans() const { return plans_.size(); }
  void set_path(GemmPath p) { path_ = p; }
  GemmPath path() const { return path_; }
  // k splits (1..8) of the small-M mma kernel; 0 (default): chosen per call. For benchmarks.
  void set_small_m_splits(int s) { small_m_splits_ = s; }
  // Whether run(a) would take the small-M kernels (same rule run uses).
  bool uses_small_m(const GemmArgs& a) const;

 private:
  struct Plan;
  using Key = std::tuple<int, int, int, int, int, int, int64_t, int64_t, int64_t, int, int, int, int>;
  Plan& plan_for(const GemmArgs& a);

  void* handle_ = nullptr;  // cublasLtHandle_t
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, std::unique_ptr<Plan>> plans_;
  GemmPath path_ = GemmPath::kAuto;
  int num_sms_ = 0;
  int small_m_splits_ = 0;
  bool warned_fallback_ = false;
};

}  // namespace kimi::cuda
