// Launcher of the RMSNorm kernel: argument checks, fp32 or bf16 input instantiation.
#include "common.h"
#include "norm/norm.cuh"

namespace kimi::cuda {

void run_rmsnorm(const RmsNormParams& p0, cudaStream_t stream) {
  RmsNormParams p = p0;
  KIMI_CHECK(p.rows >= 0 && p.dim > 0, "rmsnorm rows ", p.rows, " dim ", p.dim);
  if (p.rows == 0) return;
  KIMI_CHECK(p.x && p.weight && (p.y || p.y_f32), "rmsnorm: null pointer");
  if (p.x_stride == 0) p.x_stride = p.dim;
  if (p.y_stride == 0) p.y_stride = p.dim;
  KIMI_CHECK(p.x_stride >= p.dim && p.y_stride >= p.dim, "rmsnorm strides ", p.x_stride, "/",
             p.y_stride, " below dim ", p.dim);
  const dim3 grid(p.rows);
  if (p.x_bf16)
    norm::rmsnorm_kernel<bf16><<<grid, norm::kThreads, 0, stream>>>(p);
  else
    norm::rmsnorm_kernel<float><<<grid, norm::kThreads, 0, stream>>>(p);
  KIMI_CHECK_LAUNCH();
}

}  // namespace kimi::cuda
