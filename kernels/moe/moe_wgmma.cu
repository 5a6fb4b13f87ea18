// Launcher of the prefill grouped expert GEMMs on wgmma (moe_wgmma.cuh; chosen by moe_gemm_path).
// Arguments are checked by run_moe_gate_up / run_moe_down before they get here.
#include <cstdint>
#include <cstdlib>

#include "common.h"
#include "moe/moe_wgmma.cuh"
#include "tensor_map.h"

namespace kimi::cuda::moe {

namespace {

// TEMPORARY (session 7 A/B): set_moe_wgmma_variant's value, else KIMI_MOE_WG_VARIANT, else 0.
int g_variant = -1;
int moe_wgmma_variant() {
  if (g_variant < 0) {
    const char* env = std::getenv("KIMI_MOE_WG_VARIANT");
    g_variant = env ? std::atoi(env) : 0;
  }
  return g_variant;
}

template <bool SWIGLU, bool SPLIT>
void launch(const MoeGemmParams& p, cudaStream_t stream) {
  const int64_t rows = int64_t(p.num_tokens) * p.top_k;
  MoePermuteView v = moe_permute_view(const_cast<int*>(p.workspace), p.num_experts, rows);
  const int N = SWIGLU ? p.inter : p.hidden;
  // Every expert's units launch the wide tiles' column blocks (the tall pair of an expert needs as
  // many CTAs as the two units it replaces: moe_wgmma_tile_of).
  const int wide_blocks = ceil_div(N, SWIGLU ? kWgBRows / 2 : kWgBRows);
  const int64_t ctas = int64_t(moe_max_tiles(rows, p.num_experts, kWgRows)) * wide_blocks;
  KIMI_CHECK(ctas < (int64_t(1) << 31), "moe wgmma: ", ctas, " CTAs");
  WgmmaArgs a;
  a.p = p, a.v = v, a.wide_blocks = wide_blocks, a.variant = moe_wgmma_variant();
  const int Kd = SWIGLU ? p.hidden : p.inter;
  const uint64_t w_rows = uint64_t(p.num_experts) * (SWIGLU ? 2 * p.inter : p.hidden);
  a.b = tensor_map_2d(SWIGLU ? p.w13 : p.w2, Kd, w_rows, uint64_t(Kd) * 2, kWgBoxRows);
  auto kernel = (a.variant & 8)
                    ? ((a.variant & 16) ? moe_wgmma_kernel<SWIGLU, SPLIT, true, true>
                                        : moe_wgmma_kernel<SWIGLU, SPLIT, true, false>)
                    : ((a.variant & 16) ? moe_wgmma_kernel<SWIGLU, SPLIT, false, true>
                                        : moe_wgmma_kernel<SWIGLU, SPLIT, false, false>);
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kWgSmemBytes));
  kernel<<<unsigned(ctas), kWgThreads, kWgSmemBytes, stream>>>(a);
  KIMI_CHECK_LAUNCH();
}

}  // namespace

void set_moe_wgmma_variant(int variant) { g_variant = variant; }

void launch_moe_wgmma(const MoeGemmParams& p, bool swiglu, cudaStream_t stream) {
  KIMI_CHECK(p.block_m == kWgRows, "moe wgmma: the permutation must use block_m ", kWgRows,
             ", got ", p.block_m);
  for (const void* ptr : {static_cast<const void*>(p.x), static_cast<const void*>(p.w13),
                          static_cast<const void*>(p.w2), static_cast<const void*>(p.act),
                          static_cast<const void*>(p.y), static_cast<const void*>(p.x_lo),
                          static_cast<const void*>(p.act_lo)})
    KIMI_CHECK((reinterpret_cast<uintptr_t>(ptr) & 15) == 0,
               "moe wgmma: x, w13, w2, act, y and the lo planes must be 16-byte aligned");
  // The producer keeps its input rows as 32-bit element offsets into x and act.
  const int64_t rows = int64_t(p.num_tokens) * p.top_k;
  KIMI_CHECK(int64_t(p.num_tokens) * p.hidden < (int64_t(1) << 31) &&
                 rows * p.inter < (int64_t(1) << 31),
             "moe wgmma: x [", p.num_tokens, ", ", p.hidden, "] or act [", rows, ", ", p.inter,
             "] past 2^31 elements; split the batch");
  if (swiglu) {
    if (p.split()) launch<true, true>(p, stream);
    else launch<true, false>(p, stream);
  } else {
    if (p.split()) launch<false, true>(p, stream);
    else launch<false, false>(p, stream);
  }
}

}  // namespace kimi::cuda::moe
