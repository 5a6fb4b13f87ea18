// cuBLASLt plans and calls (see gemm.h for the row-major → column-major mapping).
// Host code only; built by nvcc with the rest of kimi_cuda.
#include "gemm/gemm.h"

#include <cublasLt.h>

#include <cstdio>

#include "common.h"
#include "gemm/gemv.h"

namespace kimi::cuda {

struct Gemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (desc) cublasLtMatmulDescDestroy(desc);
    for (auto l : {la, lb, lc})
      if (l) cublasLtMatrixLayoutDestroy(l);
  }
};

namespace {

// Largest power of two <= 256 dividing the address and every byte step from it.
int align_class(const void* p, int64_t ld_bytes, int64_t stride_bytes) {
  uint64_t v = reinterpret_cast<uintptr_t>(p) | uint64_t(ld_bytes) | uint64_t(stride_bytes) | 256u;
  return int(v & (~v + 1));
}

void set_batch(cublasLtMatrixLayout_t l, int batch, int64_t stride) {
  if (batch <= 1) return;
  CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch,
                                                sizeof(batch)));
  CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                &stride, sizeof(stride)));
}

}  // namespace

Gemm::Gemm(size_t workspace_bytes) : workspace_bytes_(workspace_bytes) {
  cublasLtHandle_t h = nullptr;
  CUBLAS_CHECK(cublasLtCreate(&h));
  handle_ = h;
  if (workspace_bytes_) CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, dev));
}

Gemm::~Gemm() {
  plans_.clear();
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
}

Gemm::Plan& Gemm::plan_for(const GemmArgs& a) {
  const int osz = a.out == GemmOut::kF32 ? 4 : 2;
  const int isz = a.in_f32 ? 4 : 2;
  const int al_a = align_class(a.A, int64_t(a.lda) * isz, a.stride_a * isz);
  const int al_b = align_class(a.B, int64_t(a.ldb) * isz, a.stride_b * isz);
  const int al_c = align_class(a.C, int64_t(a.ldc) * osz, a.stride_c * osz);
  const int flags = int(a.b_kn) | (int(a.out == GemmOut::kF32) << 1) | (int(a.beta != 0.f) << 2) |
                    (int(a.in_f32) << 3);
  const Key key{a.M, a.N, a.K, a.lda, a.ldb, a.ldc, a.stride_a, a.stride_b, a.stride_c,
                flags, a.batch, al_a | (al_b << 16), al_c};
  auto it = plans_.find(key);
  if (it != plans_.end()) return *it->second;

  auto p = std::make_unique<Plan>();
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // cuBLAS "A" is our B: stored col-major [K, N] (our [N, K] rows) with op T, or [N, K] with op N.
  const cublasOperation_t ta = a.b_kn ? CUBLAS_OP_N : CUBLAS_OP_T, tb = CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const cudaDataType_t ct = a.out == GemmOut::kF32 ? CUDA_R_32F : CUDA_R_16BF;
  const cudaDataType_t in_t = a.in_f32 ? CUDA_R_32F : CUDA_R_16BF;
  if (a.b_kn)
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->la, in_t, a.N, a.K, a.ldb));
  else
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->la, in_t, a.K, a.N, a.ldb));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lb, in_t, a.K, a.M, a.lda));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lc, ct, a.N, a.M, a.ldc));
  set_batch(p->la, a.batch, a.stride_b);
  set_batch(p->lb, a.batch, a.stride_a);
  set_batch(p->lc, a.batch, a.stride_c);

  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  uint32_t ua = uint32_t(al_b), ub = uint32_t(al_a), uc = uint32_t(al_c);
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &workspace_bytes_, sizeof(workspace_bytes_)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                    &ua, sizeof(ua)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                    &ub, sizeof(ub)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                    &uc, sizeof(uc)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                    &uc, sizeof(uc)));
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(
      static_cast<cublasLtHandle_t>(handle_), p->desc, p->la, p->lb, p->lc, p->lc, pref, 1, &res,
      &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0)
    fail("cuBLASLt has no algorithm for C[", a.M, ", ", a.N, "] = A[", a.M, ", ", a.K, "] · B",
         a.b_kn ? "" : "ᵀ", " (lda ", a.lda, ", ldb ", a.ldb, ", ldc ", a.ldc, ", batch ", a.batch,
         ", ", a.out == GemmOut::kF32 ? "fp32" : "bf16", " out, alignments ", al_a, "/", al_b, "/",
         al_c, "): status ", int(st));
  p->algo = res.algo;
  return *plans_.emplace(key, std::move(p)).first->second;
}

void Gemm::run(const GemmArgs& a, cudaStream_t stream) {
  KIMI_CHECK(a.M >= 0 && a.N > 0 && a.K > 0 && a.batch >= 1, "gemm M ", a.M, " N ", a.N, " K ", a.K,
             " batch ", a.batch);
  if (a.M == 0) return;
  KIMI_CHECK(a.A && a.B && a.C, "gemm: null operand");
  KIMI_CHECK(!a.in_f32 || a.out == GemmOut::kF32, "gemm: fp32 operands need an fp32 output");
  KIMI_CHECK(a.lda >= a.K && a.ldc >= a.N && a.ldb >= (a.b_kn ? a.N : a.K), "gemm: lda ", a.lda,
             " ldb ", a.ldb, " ldc ", a.ldc, " too small for M ", a.M, " N ", a.N, " K ", a.K);
  if (path_ != GemmPath::kCublasLt) {
    const int max_rows = path_ == GemmPath::kSmallM ? kGemvMaxRows : kGemmSmallMaxRows;
    if (a.M <= max_rows && gemv_supported(a)) {
      GemvOptions opt;
      opt.num_sms = num_sms_;
      opt.force_splits = small_m_splits_;
      run_gemv(a, opt, stream);
      return;
    }
    KIMI_CHECK(path_ != GemmPath::kSmallM, "gemm: the small-M kernels cannot run M ", a.M, " N ",
               a.N, " K ", a.K, " (lda ", a.lda, ", ldb ", a.ldb, ", b_kn ", a.b_kn, ", in_f32 ",
               a.in_f32, "): more than ", kGemvMaxRows, " rows or not 16-byte aligned");
    if (a.M <= max_rows && !a.b_kn && !warned_fallback_) {  // b_kn: cuBLASLt by choice (gemv.h)
      warned_fallback_ = true;
      std::fprintf(stderr,
                   "kimi gemm: M %d N %d K %d (lda %d, ldb %d) is not 16-byte aligned for the "
                   "small-M kernels; cuBLASLt runs it (said once per Gemm)\n",
                   a.M, a.N, a.K, a.lda, a.ldb);
    }
  }
  Plan& p = plan_for(a);
  CUBLAS_CHECK(cublasLtMatmul(static_cast<cublasLtHandle_t>(handle_), p.desc, &a.alpha, a.B, p.la,
                              a.A, p.lb, &a.beta, a.C, p.lc, a.C, p.lc, &p.algo, workspace_,
                              workspace_bytes_, stream));
}

bool Gemm::uses_small_m(const GemmArgs& a) const {
  if (path_ == GemmPath::kCublasLt) return false;
  const int max_rows = path_ == GemmPath::kSmallM ? kGemvMaxRows : kGemmSmallMaxRows;
  return a.M >= 1 && a.M <= max_rows && gemv_supported(a);
}

void Gemm::run_group(const GemmArgs* a, int n, cudaStream_t stream) {
  bool small = n >= 1 && gemv_group_supported(a, n);
  for (int i = 0; i < n && small; ++i) small = uses_small_m(a[i]);
  if (small) {
    GemvOptions opt;
    opt.num_sms = num_sms_;
    opt.force_splits = small_m_splits_;
    run_gemv_group(a, n, opt, stream);
    return;
  }
  for (int i = 0; i < n; ++i) run(a[i], stream);
}

void Gemm::run_hilo(const GemmArgs* a, int n, int64_t lo_offset, cudaStream_t stream) {
  KIMI_CHECK(n >= 1 && n <= kGemvMaxGroup && lo_offset > 0, "gemm hi/lo: ", n, " GEMMs, lo plane at +",
             lo_offset);
  GemmArgs lo[kGemvMaxGroup], stacked[kGemvMaxGroup];
  // Decode-sized: the lo plane is the M rows after the hi plane's (lo_offset = M·lda), so both
  // stack as 2M rows of one small-M launch whose epilogue adds the row pairs: the weights are read
  // once (GemvOptions::fold_rows).
  const int M = a[0].M;
  bool stack = path_ != GemmPath::kCublasLt && M <= kGemmSmallMaxRows && 2 * M <= kGemvMaxRows &&
               lo_offset == int64_t(M) * a[0].lda;
  for (int i = 0; i < n; ++i) {
    KIMI_CHECK(a[i].out == GemmOut::kF32 && !a[i].in_f32, "gemm hi/lo: bf16 inputs and an fp32 output");
    lo[i] = a[i];
    lo[i].A = a[i].A + lo_offset;
    lo[i].beta = 1.f;
    stacked[i] = a[i];
    stacked[i].M = 2 * M;
    stack = stack && a[i].M == M && gemv_supported(stacked[i]);
  }
  if (stack && (n == 1 || gemv_group_supported(stacked, n))) {
    GemvOptions opt;
    opt.num_sms = num_sms_;
    opt.force_splits = small_m_splits_;
    opt.fold_rows = M;
    if (n == 1) run_gemv(stacked[0], opt, stream);
    else run_gemv_group(stacked, n, opt, stream);
    return;
  }
  run_group(a, n, stream);
  run_group(lo, n, stream);
}

void Gemm::linear(const bf16* x, const bf16* w, void* y, int M, int N, int K, GemmOut out,
                  cudaStream_t stream, float beta) {
  run(linear_args(x, w, y, M, N, K, out, beta), stream);
}

GemmArgs Gemm::linear_args(const bf16* x, const bf16* w, void* y, int M, int N, int K, GemmOut out,
                           float beta) {
  GemmArgs a;
  a.M = M;
  a.N = N;
  a.K = K;
  a.A = x;
  a.lda = K;
  a.B = w;
  a.ldb = K;
  a.C = y;
  a.ldc = N;
  a.out = out;
  a.beta = beta;
  return a;
}

}  // namespace kimi::cuda
