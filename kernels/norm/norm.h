// RMSNorm on the GPU (model.md §6): y = x / sqrt(mean(x²) + eps) · w, computed in fp32, written
// as bf16 (the input of the next projection).
//   x: [rows, dim] fp32 (the residual stream) or bf16, row stride x_stride elements;
//   optional row_index [rows]: output row r reads input row row_index[r] (the rows that need
//   logits); w: [dim] fp32; y: [rows, dim] bf16, row stride y_stride.
// y_f32 optionally receives the same values unrounded (fp32), e.g. for the MoE router.
// Launch: one 256-thread CTA per row, the row held in registers between the sum of squares and
// the scaling (rows beyond 4096 values are read twice).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kimi::cuda {

using bf16 = __nv_bfloat16;

struct RmsNormParams {
  int rows = 0;
  int dim = 0;
  const void* x = nullptr;
  bool x_bf16 = false;        // x is bf16 instead of fp32
  int64_t x_stride = 0;       // elements between input rows (0: dim)
  const int* row_index = nullptr;
  const float* weight = nullptr;
  bf16* y = nullptr;          // may be null when y_f32 is set
  float* y_f32 = nullptr;     // optional fp32 copy of the output (same strides as y)
  int64_t y_stride = 0;       // elements between output rows (0: dim)
  float eps = 1e-5f;
};
void run_rmsnorm(const RmsNormParams& p, cudaStream_t stream);

}  // namespace kimi::cuda
