// Small-M dense GEMM (M ≤ kGemvMaxRows rows: batch-1..16 decode), bandwidth-bound: the weights
// stream once from DRAM, so time ≈ weight bytes / copy bandwidth. Gemm::run sends a call here when
// gemv_supported() says the kernels take it; same semantics as GemmArgs (gemm.h).
//
// Two kernels (gemv.cuh):
//   B [N, K] bf16 : mma.sync with the weights as A (gemm/stream_mma.cuh), k split over the CTA's
//                   8 warps and, when the row tiles do not fill the card, over the ≤ 8 CTAs of
//                   a thread-block cluster: the others push their partials into the first CTA's
//                   shared memory (st.async), which sums them in split order.
//   fp32 A and B  : (in_f32, the MoE router) plain fp32 FMA, a warp per (row, k quarter).
// B stored [K, N] (b_kn: the MLA q_abs absorption) stays on cuBLASLt: a plain-FMA kernel for it
// measured slower than cuBLASLt at every M on H200 (4.3 vs 3.9 us at M = 1, 13.5 vs 3.9 at 8).
// Every reduction runs in a fixed order: results do not depend on timing.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "gemm/gemm.h"

namespace kimi::cuda {

inline constexpr int kGemvMaxRows = 16;

inline constexpr int kGemvMaxSplits = 8;  // k splits per tile: one portable cluster

// Per-call choices the owner (Gemm) passes down; no device memory is needed.
struct GemvOptions {
  int num_sms = 0;       // of the device, queried once by the owner
  int force_splits = 0;  // > 0: this k split count (≤ kGemvMaxSplits) instead of gemv_splits()
  // > 0 (bf16 B only): the M = 2·fold_rows input rows are a hi/lo split input stacked (Gemm::
  // run_hilo), and C gets fold_rows rows: C[m] = result row m + result row m + fold_rows. The
  // weights are read once for both halves.
  int fold_rows = 0;
};

// Whether the small-M kernels run `a`: M ≤ kGemvMaxRows, B stored [N, K], and the operands meet
// the 16-byte alignment of the kernel's vector loads (K, leading dimensions and batch strides in
// whole 16-byte pieces). Pure function of the arguments, no device query.
bool gemv_supported(const GemmArgs& a);

// Launches the kernel for `a` (gemv_supported(a) must hold). Graph-capturable: no allocation,
// no synchronisation, no device query.
void run_gemv(const GemmArgs& a, const GemvOptions& opt, cudaStream_t stream);

// Several projections of one input in one launch (a decode step's q/k/v, f/g low-rank and beta
// projections read the same normed row): up to kGemvMaxGroup GEMMs that differ only in B, C, N,
// ldb and ldc, each gemv_supported, bf16 B [N, K], batch 1. The launch walks their 32-column
// tiles in order; each output is what run_gemv would write for it alone.
inline constexpr int kGemvMaxGroup = 4;
bool gemv_group_supported(const GemmArgs* a, int n);
void run_gemv_group(const GemmArgs* a, int n, const GemvOptions& opt, cudaStream_t stream);

// The k splits run_gemv would use for the B [N, K] bf16 kernel (1 for the other two).
int gemv_splits(const GemmArgs& a, int num_sms);

}  // namespace kimi::cuda
