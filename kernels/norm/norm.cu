// Launcher of the RMSNorm kernel: argument checks, fp32 or bf16 input instantiation.
#include "common.h"
#include "launch.h"
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
  const LaunchOptions pdl{0, true};
  if (p.x_bf16)
    launch_kernel(norm::rmsnorm_kernel<bf16>, p.rows, norm::kThreads, pdl, stream, p);
  else
    launch_kernel(norm::rmsnorm_kernel<float>, p.rows, norm::kThreads, pdl, stream, p);
}

}  // namespace kimi::cuda
