// Launcher of the small-M dense GEMM kernels (gemv.cuh): which kernel, how many k splits.
#include "gemm/gemv.h"

#include <algorithm>
#include <cstdint>

#include "common.h"
#include "gemm/gemv.cuh"

namespace kimi::cuda {

namespace {

// p and every step of `ld` / `stride` elements of `elem` bytes stay on 16-byte boundaries.
bool aligned16(const void* p, int64_t ld, int64_t stride, int elem) {
  const int64_t per = 16 / elem;
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && ld % per == 0 && stride % per == 0;
}

// Per n tile count of 8 input rows: one mma n tile up to 8 rows, else two. U: chunks in flight
// per warp (three with two n tiles, to stay within the 128 registers of 2 CTAs per SM).
template <bool OUT_F32>
void launch_mma(const GemmArgs& a, int splits, const GemvWorkspace& ws, cudaStream_t stream) {
  const int chunks = ceil_div(a.K, kGvChunk);
  const int split_chunks = ceil_div(chunks, splits);
  const dim3 grid(ceil_div(a.N, kGvTileCols), a.batch, splits);
  if (a.M <= 8)
    gemv_mma_kernel<1, 4, OUT_F32>
        <<<grid, kGvThreads, 0, stream>>>(a, split_chunks, ws.partials, ws.counters);
  else
    gemv_mma_kernel<2, 3, OUT_F32>
        <<<grid, kGvThreads, 0, stream>>>(a, split_chunks, ws.partials, ws.counters);
  KIMI_CHECK_LAUNCH();
}

template <bool OUT_F32>
void launch_kn(GemmArgs a, cudaStream_t stream) {
  const dim3 grid(ceil_div(a.N, kKnCols), a.batch);
  const int M = a.M, osz = OUT_F32 ? 4 : 2;
  for (int m0 = 0; m0 < M; m0 += kKnMaxRows) {  // weights of the second pass come from L2
    GemmArgs part = a;
    part.M = std::min(kKnMaxRows, M - m0);
    part.A = a.A + int64_t(m0) * a.lda;
    part.C = static_cast<char*>(a.C) + int64_t(m0) * a.ldc * osz;
    gemv_kn_kernel<4, OUT_F32><<<grid, kGvThreads, 0, stream>>>(part);
    KIMI_CHECK_LAUNCH();
  }
}

}  // namespace

bool gemv_supported(const GemmArgs& a) {
  if (a.M < 1 || a.M > kGemvMaxRows || a.batch > 65535) return false;
  if (a.in_f32)
    return !a.b_kn && a.out == GemmOut::kF32 && a.K % 4 == 0 &&
           aligned16(a.A, a.lda, a.batch > 1 ? a.stride_a : 0, 4) &&
           aligned16(a.B, a.ldb, a.batch > 1 ? a.stride_b : 0, 4);
  if (a.b_kn)  // A is read element by element: no alignment needed
    return a.N % 8 == 0 && aligned16(a.B, a.ldb, a.batch > 1 ? a.stride_b : 0, 2);
  return a.K % 8 == 0 && aligned16(a.A, a.lda, a.batch > 1 ? a.stride_a : 0, 2) &&
         aligned16(a.B, a.ldb, a.batch > 1 ? a.stride_b : 0, 2);
}

int gemv_splits(const GemmArgs& a, int num_sms) {
  if (a.b_kn || a.in_f32) return 1;
  const int64_t tiles = int64_t(ceil_div(a.N, kGvTileCols)) * a.batch;
  const int64_t target = 2 * int64_t(std::max(num_sms, 1));  // resident CTAs: 2 per SM
  if (tiles >= target) return 1;
  // Enough CTAs to fill the card, but at least one chunk per warp of each CTA.
  const int chunks = ceil_div(a.K, kGvChunk);
  const int want = int(std::min<int64_t>((target + tiles - 1) / tiles, 64));
  const int s = std::max(1, std::min(want, chunks / kGvWarps));
  return ceil_div(chunks, ceil_div(chunks, s));  // no empty split
}

void run_gemv(const GemmArgs& a, const GemvWorkspace& ws, cudaStream_t stream) {
  KIMI_CHECK(gemv_supported(a), "gemv: unsupported call M ", a.M, " N ", a.N, " K ", a.K);
  const bool f32 = a.out == GemmOut::kF32;
  if (a.in_f32) {
    gemv_f32_kernel<4><<<dim3(ceil_div(a.N, kF32RowsPerCta), a.batch), kGvThreads, 0, stream>>>(a);
    KIMI_CHECK_LAUNCH();
    return;
  }
  if (a.b_kn) {
    if (f32)
      launch_kn<true>(a, stream);
    else
      launch_kn<false>(a, stream);
    return;
  }
  const int chunks = ceil_div(a.K, kGvChunk);
  int splits = ws.force_splits > 0 ? ceil_div(chunks, ceil_div(chunks, std::min(ws.force_splits, chunks)))
                                   : gemv_splits(a, ws.num_sms);
  const int64_t tiles = int64_t(ceil_div(a.N, kGvTileCols)) * a.batch;
  const int64_t items = 2 * (a.M > 8 ? 2 : 1) * 4 * 32;
  if (splits > 1 && (tiles > ws.num_counters || tiles * splits * items > ws.partial_floats))
    splits = 1;  // scratch too small (a card with many more SMs than sized for): no split
  if (f32)
    launch_mma<true>(a, splits, ws, stream);
  else
    launch_mma<false>(a, splits, ws, stream);
}

}  // namespace kimi::cuda
