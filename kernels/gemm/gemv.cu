// Launcher of the small-M dense GEMM kernels (gemv.cuh): which kernel, how many k splits.
#include "gemm/gemv.h"

#include <algorithm>
#include <cstdint>

#include "common.h"
#include "gemm/gemv.cuh"
#include "launch.h"

namespace kimi::cuda {

namespace {

// p and every step of `ld` / `stride` elements of `elem` bytes stay on 16-byte boundaries.
bool aligned16(const void* p, int64_t ld, int64_t stride, int elem) {
  const int64_t per = 16 / elem;
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && ld % per == 0 && stride % per == 0;
}

// Launches kernel with 256 threads as a programmatic dependent launch (the kernels wait for the
// previous grid before touching anything it may write; their constant weight prologue
// overlaps it), in clusters of grid.z CTAs when cluster_z.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, bool pdl, bool cluster_z, cudaStream_t stream,
            Args... args) {
  LaunchOptions o;
  o.pdl = pdl;
  if (cluster_z) o.cluster = dim3(1, 1, grid.z);
  launch_kernel(kernel, grid, dim3(kGvThreads), o, stream, args...);
}

// Per n tile count of 8 input rows: one mma n tile up to 8 rows, else two. U: chunks in flight
// per warp (three with two n tiles, to stay within the 128 registers of 2 CTAs per SM).
// tiles: 32-column tiles of the launch (a.N's, or the group's).
template <bool OUT_F32>
void launch_mma(const GemmArgs& a, int tiles, int splits, const GemvGroup& group, int fold,
                cudaStream_t stream) {
  KIMI_CHECK(fold == 0 || 2 * fold == a.M, "gemv: fold of ", fold, " rows needs M = ", 2 * fold,
             ", got ", a.M);
  const int chunks = ceil_div(a.K, kGvChunk);
  const int split_chunks = ceil_div(chunks, splits);
  const dim3 grid(tiles, a.batch, splits);
  auto kernel = a.M <= 8 ? (fold ? gemv_mma_kernel<1, 4, OUT_F32, true> : gemv_mma_kernel<1, 4, OUT_F32, false>)
                        : (fold ? gemv_mma_kernel<2, 3, OUT_F32, true> : gemv_mma_kernel<2, 3, OUT_F32, false>);
  launch(kernel, grid, true, splits > 1, stream, a, split_chunks, group, fold);
}

int pick_splits(const GemmArgs& a, const GemvOptions& opt) {
  const int chunks = ceil_div(a.K, kGvChunk);
  return opt.force_splits > 0
             ? ceil_div(chunks, ceil_div(chunks, std::min({opt.force_splits, chunks, kGemvMaxSplits})))
             : gemv_splits(a, opt.num_sms);
}

}  // namespace

bool gemv_supported(const GemmArgs& a) {
  if (a.M < 1 || a.M > kGemvMaxRows || a.batch > 65535) return false;
  if (a.in_f32)
    return !a.b_kn && a.out == GemmOut::kF32 && a.K % 4 == 0 &&
           aligned16(a.A, a.lda, a.batch > 1 ? a.stride_a : 0, 4) &&
           aligned16(a.B, a.ldb, a.batch > 1 ? a.stride_b : 0, 4);
  if (a.b_kn) return false;  // cuBLASLt was as fast or faster for the one such call (q_abs)
  return a.K % 8 == 0 && aligned16(a.A, a.lda, a.batch > 1 ? a.stride_a : 0, 2) &&
         aligned16(a.B, a.ldb, a.batch > 1 ? a.stride_b : 0, 2);
}

int gemv_splits(const GemmArgs& a, int num_sms) {
  if (a.b_kn || a.in_f32) return 1;
  // Measured on H200 (bench_gemv --splits): a split pays only where a warp would otherwise issue
  // more than one batch of U chunks, and only while every CTA stays resident at once (2 per SM);
  // the cross-CTA reduction costs time, so each warp keeps >= 2 chunks.
  // A cluster must fit whole into one GPC, so a grid of nearly 2 CTAs per SM does not fit at
  // once: 256 CTAs in clusters of 4 took two waves (N 2048, K 2304: 6.3 us vs 4.2 us at 3
  // splits); stay within 85% of the resident slots. Re-swept with the st.async split reduction
  // (session 8): o_proj (N 2304, K 4096) still best at 3 splits (5.9 us; 2: 6.6, 4: 7.7); kv_a
  // and f_a|g_a (N 576 / 256, K 2304) 0.05-0.12 us faster at 5-6 splits than the 4 chosen.
  const int64_t tiles = int64_t(ceil_div(a.N, kGvTileCols)) * a.batch;
  const int chunks = ceil_div(a.K, kGvChunk);
  const int64_t resident = 2 * int64_t(std::max(num_sms, 1));
  if (chunks <= kGvWarps * 4 || tiles * 2 > resident) return 1;
  const int want = int(std::min<int64_t>(resident * 85 / 100 / tiles, kGemvMaxSplits));
  const int s = std::max(1, std::min(want, chunks / (2 * kGvWarps)));
  return ceil_div(chunks, ceil_div(chunks, s));  // no empty split
}

void run_gemv(const GemmArgs& a, const GemvOptions& opt, cudaStream_t stream) {
  KIMI_CHECK(gemv_supported(a), "gemv: unsupported call M ", a.M, " N ", a.N, " K ", a.K);
  if (a.in_f32) {
    KIMI_CHECK(opt.fold_rows == 0, "gemv: no row fold for fp32 operands");
    launch(gemv_f32_kernel<4>, dim3(ceil_div(a.N, kF32RowsPerCta), a.batch), false, false, stream,
           a);
    return;
  }
  const int splits = pick_splits(a, opt);
  const int tiles = ceil_div(a.N, kGvTileCols);
  if (a.out == GemmOut::kF32)
    launch_mma<true>(a, tiles, splits, GemvGroup{}, opt.fold_rows, stream);
  else
    launch_mma<false>(a, tiles, splits, GemvGroup{}, opt.fold_rows, stream);
}

bool gemv_group_supported(const GemmArgs* a, int n) {
  if (n < 1 || n > kGemvMaxGroup) return false;
  for (int i = 0; i < n; ++i) {
    const GemmArgs& x = a[i];
    if (!gemv_supported(x) || x.in_f32 || x.batch != 1) return false;
    if (x.A != a[0].A || x.M != a[0].M || x.K != a[0].K || x.lda != a[0].lda ||
        x.out != a[0].out || x.alpha != a[0].alpha || x.beta != a[0].beta)
      return false;
  }
  return true;
}

void run_gemv_group(const GemmArgs* a, int n, const GemvOptions& opt, cudaStream_t stream) {
  KIMI_CHECK(gemv_group_supported(a, n), "gemv group: ", n, " GEMMs that cannot share a launch");
  GemvGroup g;
  g.count = n;
  int tiles = 0;
  for (int i = 0; i < n; ++i) {
    tiles += ceil_div(a[i].N, kGvTileCols);
    g.tile_end[i] = tiles;
    g.B[i] = a[i].B;
    g.C[i] = a[i].C;
    g.N[i] = a[i].N;
    g.ldb[i] = a[i].ldb;
    g.ldc[i] = a[i].ldc;
  }
  GemmArgs all = a[0];
  all.N = tiles * kGvTileCols;  // the split choice sees the launch's tiles
  const int splits = pick_splits(all, opt);
  if (a[0].out == GemmOut::kF32)
    launch_mma<true>(a[0], tiles, splits, g, opt.fold_rows, stream);
  else
    launch_mma<false>(a[0], tiles, splits, g, opt.fold_rows, stream);
}

}  // namespace kimi::cuda
