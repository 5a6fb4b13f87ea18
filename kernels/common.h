// CUDA error checking shared by kernels/ launchers, src/ops/cuda/ glue, tests and benchmarks.
// Every runtime/cuBLAS call goes through CUDA_CHECK / CUBLAS_CHECK, which throw kimi::Error with
// file, line, the failing statement and the library's error name and text (style.md "errors are
// loud and precise"). KIMI_CHECK_LAUNCH() checks the last error right after a kernel launch.
// No fmt/spdlog here: .cu files include this header (gpu-machine.md, nvcc 13 + fmt 9 trap).
#pragma once

#include <cublas_api.h>
#include <cuda_runtime.h>

#include "core/check.h"

#define CUDA_CHECK(stmt)                                                               \
  do {                                                                                 \
    cudaError_t kimi_err_ = (stmt);                                                    \
    if (kimi_err_ != cudaSuccess)                                                      \
      ::kimi::fail_check(__FILE__, __LINE__, #stmt,                                    \
                         ::kimi::str("CUDA error ", cudaGetErrorName(kimi_err_), ": ", \
                                     cudaGetErrorString(kimi_err_)));                  \
  } while (0)

#define CUBLAS_CHECK(stmt)                                                                     \
  do {                                                                                         \
    cublasStatus_t kimi_st_ = (stmt);                                                          \
    if (kimi_st_ != CUBLAS_STATUS_SUCCESS)                                                     \
      ::kimi::fail_check(                                                                      \
          __FILE__, __LINE__, #stmt,                                                           \
          ::kimi::str("cuBLAS error ", int(kimi_st_), ": ", cublasGetStatusString(kimi_st_))); \
  } while (0)

// After a <<<>>> launch or cudaLaunchKernelEx: catches bad configurations at the call site.
#define KIMI_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

namespace kimi::cuda {

inline int ceil_div(int a, int b) {
  return (a + b - 1) / b;
}

}  // namespace kimi::cuda
