// Launcher of the decode-sized grouped expert GEMMs (moe_gemv.cuh; chosen by moe_gemm_path).
// Arguments are checked by run_moe_gate_up / run_moe_down before they get here.
#include <algorithm>
#include <cstdint>

#include "common.h"
#include "launch.h"
#include "moe/moe_gemv.cuh"

namespace kimi::cuda::moe {

namespace {

// Rows per pass: a tile holds at most min(T, block_m) rows when each token picks distinct
// experts; one n tile of 8 rows up to 8 of them, else two. A split input stages both planes:
// 8 rows per pass keep them in the shared memory of 16 (a tile of more re-streams the weights).
int gemv_pass_rows(const MoeGemmParams& p) {
  return std::min({p.num_tokens, p.block_m, p.split() ? 8 : 16});
}

template <bool SWIGLU, int NT, bool SPLIT>
void launch(const MoeGemmParams& p, int pass_rows, cudaStream_t stream) {
  const int64_t rows = int64_t(p.num_tokens) * p.top_k;
  MoePermuteView v = moe_permute_view(const_cast<int*>(p.workspace), p.num_experts, rows);
  const int N = SWIGLU ? p.inter : p.hidden;
  const dim3 grid(moe_max_tiles(rows, p.num_experts, p.block_m), ceil_div(N, SWIGLU ? 16 : 32));
  KIMI_CHECK(grid.y <= 65535, "moe gemv: ", grid.y, " column slices");
  const size_t smem = moe_gemv_smem_bytes(p, SWIGLU);
  // 9 chunks of 32 per warp at hidden 2304 (gate_up), 4 at inter 1024 (down): whole batches.
  constexpr int U = SWIGLU ? 3 : 4;
  auto kernel = moe_gemv_kernel<SWIGLU, NT, U, SPLIT>;
  // Per launch rather than once per process: the attribute belongs to the current device, and
  // the call is legal during stream capture (FlashAttention's launchers do the same).
  if (smem > size_t(48) << 10)
    CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  launch_kernel(kernel, grid, kGvThreads, LaunchOptions{smem, true}, stream, p, v, pass_rows);
}

}  // namespace

size_t moe_gemv_smem_bytes(const MoeGemmParams& p, bool swiglu) {
  const int P = gemv_pass_rows(p), NT = P > 8 ? 2 : 1;
  const int K = swiglu ? p.hidden : p.inter;
  const size_t staged = size_t(P) * moe_gemv_lds(K) * sizeof(bf16) * (p.split() ? 2 : 1);
  const size_t reduction = size_t(kGvWarps) * 2 * NT * 4 * 32 * sizeof(float);
  return std::max(staged, reduction);
}

void launch_moe_gemv(const MoeGemmParams& p, bool swiglu, cudaStream_t stream) {
  const int P = gemv_pass_rows(p);
  KIMI_CHECK(P >= 1 && P <= 16, "moe gemv: pass of ", P, " rows");
  for (const void* ptr : {static_cast<const void*>(p.x), static_cast<const void*>(p.w13),
                          static_cast<const void*>(p.w2), static_cast<const void*>(p.act),
                          static_cast<const void*>(p.x_lo), static_cast<const void*>(p.act_lo)})
    KIMI_CHECK((reinterpret_cast<uintptr_t>(ptr) & 15) == 0,
               "moe gemv: x, w13, w2, act and the lo planes must be 16-byte aligned");
  const size_t smem = moe_gemv_smem_bytes(p, swiglu);
  KIMI_CHECK(smem <= size_t(227) << 10, "moe gemv: ", smem, " bytes of shared memory for hidden ",
             p.hidden, ", inter ", p.inter);
  if (p.split()) {  // P <= 8: one n tile
    if (swiglu)
      launch<true, 1, true>(p, P, stream);
    else
      launch<false, 1, true>(p, P, stream);
  } else if (swiglu) {
    if (P > 8)
      launch<true, 2, false>(p, P, stream);
    else
      launch<true, 1, false>(p, P, stream);
  } else {
    if (P > 8)
      launch<false, 2, false>(p, P, stream);
    else
      launch<false, 1, false>(p, P, stream);
  }
}

}  // namespace kimi::cuda::moe
