// Launcher of the prefill grouped expert GEMMs on wgmma (moe_wgmma.cuh; chosen by moe_gemm_path).
// Arguments are checked by run_moe_gate_up / run_moe_down before they get here.
#include <algorithm>
#include <cstdint>

#include "common.h"
#include "moe/moe_wgmma.cuh"
#include "tensor_map.h"

namespace kimi::cuda::moe {

namespace {

template <int BN, int STAGES, bool SWIGLU, bool SPLIT>
void launch(const MoeGemmParams& p, MoeWgmmaTile t, cudaStream_t stream) {
  using Shape = WgmmaShape<BN, STAGES>;
  const int64_t rows = int64_t(p.num_tokens) * p.top_k;
  MoePermuteView v = moe_permute_view(const_cast<int*>(p.workspace), p.num_experts, rows);
  const int N = SWIGLU ? p.inter : p.hidden;
  const int col_blocks = ceil_div(N, SWIGLU ? BN / 2 : BN);
  const int64_t items = int64_t(moe_max_tiles(rows, p.num_experts, kWgRows)) * col_blocks;
  KIMI_CHECK(items < (int64_t(1) << 31) - 1024, "moe wgmma: ", items, " work items");
  WgmmaArgs a;
  a.p = p, a.v = v, a.col_blocks = col_blocks;
  const int Kd = SWIGLU ? p.hidden : p.inter;
  const uint64_t w_rows = uint64_t(p.num_experts) * (SWIGLU ? 2 * p.inter : p.hidden);
  a.b = tensor_map_2d(SWIGLU ? p.w13 : p.w2, Kd, w_rows, uint64_t(Kd) * 2, kWgBoxRows);
  // One persistent CTA per SM (fewer when there are fewer items; max_ctas: tests).
  int dev = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  int64_t grid = std::min<int64_t>(items, sms);
  if (t.max_ctas > 0) grid = std::min<int64_t>(grid, t.max_ctas);
  auto kernel = moe_wgmma_kernel<BN, STAGES, SWIGLU, SPLIT>;
  CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Shape::kSmemBytes));
  kernel<<<unsigned(std::max<int64_t>(grid, 1)), kWgThreads, Shape::kSmemBytes, stream>>>(a);
  KIMI_CHECK_LAUNCH();
}

template <bool SWIGLU, bool SPLIT>
void launch_tile(const MoeGemmParams& p, MoeWgmmaTile t, cudaStream_t stream) {
  if (t.bn == 128 && t.stages == 4) return launch<128, 4, SWIGLU, SPLIT>(p, t, stream);
  if (t.bn == 128 && t.stages == 6) return launch<128, 6, SWIGLU, SPLIT>(p, t, stream);
  if (t.bn == 256 && t.stages == 3) return launch<256, 3, SWIGLU, SPLIT>(p, t, stream);
  if (t.bn == 256 && t.stages == 4) return launch<256, 4, SWIGLU, SPLIT>(p, t, stream);
  KIMI_CHECK(false, "moe wgmma: no tile of ", t.bn, " columns with ", t.stages, " stages");
}

}  // namespace

void launch_moe_wgmma(const MoeGemmParams& p, bool swiglu, MoeWgmmaTile tile, cudaStream_t stream) {
  KIMI_CHECK(p.block_m == kWgRows, "moe wgmma: the permutation must use block_m ", kWgRows,
             ", got ", p.block_m);
  KIMI_CHECK(p.num_experts <= kWgMaxExperts, "moe wgmma: at most ", kWgMaxExperts, " experts, got ",
             p.num_experts);
  for (const void* ptr : {static_cast<const void*>(p.x), static_cast<const void*>(p.w13),
                          static_cast<const void*>(p.w2), static_cast<const void*>(p.act),
                          static_cast<const void*>(p.y), static_cast<const void*>(p.x_lo),
                          static_cast<const void*>(p.act_lo)})
    KIMI_CHECK((reinterpret_cast<uintptr_t>(ptr) & 15) == 0,
               "moe wgmma: x, w13, w2, act, y and the lo planes must be 16-byte aligned");
  if (swiglu) {
    if (p.split()) launch_tile<true, true>(p, tile, stream);
    else launch_tile<true, false>(p, tile, stream);
  } else {
    if (p.split()) launch_tile<false, true>(p, tile, stream);
    else launch_tile<false, false>(p, tile, stream);
  }
}

}  // namespace kimi::cuda::moe
