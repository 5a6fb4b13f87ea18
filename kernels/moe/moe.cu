// MoE launchers (contracts in moe.h): argument checks, grid upper bounds, instantiations.
#include <algorithm>

#include "common.h"
#include "launch.h"
#include "moe/moe.cuh"

namespace kimi::cuda {

size_t moe_permute_workspace_ints(int E, int64_t max_rows) {
  return size_t(2 * E + 2 * (E + 1)) + 2 * size_t(max_rows) + 2;
}

MoePermuteView moe_permute_view(int* ws, int E, int64_t max_rows) {
  MoePermuteView v;
  v.counts = ws;
  v.cursor = ws + E;
  v.offsets = ws + 2 * E;
  v.tile_start = v.offsets + E + 1;
  v.row_token = v.tile_start + E + 1;
  v.pair_row = v.row_token + max_rows;
  v.gemm_next = v.pair_row + max_rows;
  return v;
}

void run_moe_route(const MoeRouteParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.num_tokens >= 0 && p.num_experts > 0 && p.num_experts <= 1024 && p.top_k > 0 &&
                 p.top_k <= 32 && p.top_k <= p.num_experts,
             "moe route T ", p.num_tokens, " E ", p.num_experts, " K ", p.top_k);
  if (p.num_tokens == 0) return;
  KIMI_CHECK(p.logits && p.correction_bias && p.expert_ids && p.weights, "moe route: null pointer");
  KIMI_CHECK(p.local_experts >= 0 && p.expert_first >= 0 &&
                 p.expert_first + p.local_experts <= p.num_experts,
             "moe route: local experts ", p.expert_first, " + ", p.local_experts, " of ", p.num_experts);
  const int local = p.local_experts ? p.local_experts : p.num_experts;
  KIMI_CHECK(p.shared_expert < 0 || p.shared_expert >= local,
             "moe route: the shared expert's id ", p.shared_expert, " is a routed expert's");
  const size_t smem = size_t(4) * p.num_experts * sizeof(float);  // 4 warps' sigmoids
  moe::moe_route_kernel<<<ceil_div(p.num_tokens, 4), 128, smem, stream>>>(p);
  KIMI_CHECK_LAUNCH();
}

int moe_route_decode_max_tokens(int num_experts) {
  constexpr int kScoreBytes = 40 << 10;  // dynamic shared memory left beside the static ~5 KB
  return std::min(moe::kRouteDecodeMaxTokens, kScoreBytes / (12 * std::max(num_experts, 1)));
}

void run_moe_route_decode(const MoeRouteDecodeParams& p, cudaStream_t stream) {
  const MoeRouteParams& r = p.route;
  KIMI_CHECK(r.num_tokens >= 1 && r.num_tokens <= moe_route_decode_max_tokens(r.num_experts) && r.num_experts > 0 &&
                 r.num_experts <= 1024 && r.top_k > 0 && r.top_k <= 32 && r.top_k <= r.num_experts,
             "moe decode route T ", r.num_tokens, " E ", r.num_experts, " K ", r.top_k);
  KIMI_CHECK(p.hidden > 0 && p.hidden % 4 == 0, "moe decode route: hidden ", p.hidden, " not a multiple of 4");
  KIMI_CHECK(p.block_m == 16 || p.block_m == 64, "moe block_m must be 16 or 64, got ", p.block_m);
  KIMI_CHECK(r.logits && r.correction_bias && r.expert_ids && r.weights && p.x && p.router &&
                 p.workspace && p.ticket, "moe decode route: null pointer");
  KIMI_CHECK(reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && reinterpret_cast<uintptr_t>(p.router) % 16 == 0 &&
                 reinterpret_cast<uintptr_t>(p.norm_weight) % 16 == 0,
             "moe decode route: x, router and norm weight must be 16-byte aligned");
  KIMI_CHECK(!p.norm_weight || p.normed, "moe decode route: the fused norm needs its output");
  KIMI_CHECK(r.local_experts >= 0 && r.expert_first >= 0 && r.expert_first + r.local_experts <= r.num_experts,
             "moe decode route: local experts ", r.expert_first, " + ", r.local_experts, " of ", r.num_experts);
  const int local = r.local_experts ? r.local_experts : r.num_experts;
  KIMI_CHECK(r.shared_expert < 0 || r.shared_expert == local,
             "moe decode route: the shared expert must follow the local experts (id ", local, ")");
  const int stride = r.top_k + (r.shared_expert >= 0);
  MoePermuteView v = moe_permute_view(p.workspace, local + (r.shared_expert >= 0),
                                      int64_t(r.num_tokens) * stride);
  const int grid = ceil_div(r.num_experts, moe::kRouteExpertsPerCta);
  const size_t smem = size_t(3) * r.num_tokens * r.num_experts * sizeof(float);
  launch_kernel(moe::moe_route_decode_kernel, grid, 1024, LaunchOptions{smem, true}, stream, p, v);
}

void run_moe_permute(const MoePermuteParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.num_tokens >= 0 && p.num_experts > 0 && p.num_experts <= 1024 && p.top_k > 0,
             "moe permute T ", p.num_tokens, " E ", p.num_experts, " K ", p.top_k);
  KIMI_CHECK(p.block_m == 16 || p.block_m == 64 || p.block_m == 128,
             "moe block_m must be 16, 64 or 128, got ", p.block_m);
  if (p.num_tokens == 0) return;
  KIMI_CHECK(p.expert_ids && p.workspace, "moe permute: null pointer");
  const int64_t pairs = int64_t(p.num_tokens) * p.top_k;
  MoePermuteView v = moe_permute_view(p.workspace, p.num_experts, pairs);
  if (pairs <= moe::kSmallPermute) {  // decode-sized: one launch
    moe::moe_permute_small_kernel<<<1, 1024, 0, stream>>>(int(pairs), p.num_experts, p.top_k,
                                                         p.block_m, p.expert_ids, v);
    KIMI_CHECK_LAUNCH();
    return;
  }
  CUDA_CHECK(cudaMemsetAsync(v.counts, 0, sizeof(int) * 2 * p.num_experts, stream));  // + cursor
  const int grid = int(std::min<int64_t>((pairs + 255) / 256, 1024));
  moe::moe_count_kernel<<<grid, 256, 0, stream>>>(pairs, p.num_experts, p.expert_ids, v.counts);
  KIMI_CHECK_LAUNCH();
  moe::moe_scan_kernel<<<1, 1024, 0, stream>>>(p.num_experts, p.block_m, v.counts, v.offsets,
                                               v.tile_start, v.gemm_next);
  KIMI_CHECK_LAUNCH();
  moe::moe_scatter_kernel<<<grid, 256, 0, stream>>>(pairs, p.num_experts, p.top_k, p.expert_ids,
                                                    v.offsets, v.cursor, v.row_token, v.pair_row);
  KIMI_CHECK_LAUNCH();
}

namespace {

void check_gemm(const MoeGemmParams& p) {
  KIMI_CHECK(p.num_tokens >= 0 && p.num_experts > 0 && p.top_k > 0 && p.hidden > 0 && p.inter > 0,
             "moe gemm T ", p.num_tokens, " E ", p.num_experts, " K ", p.top_k, " hidden ", p.hidden,
             " inter ", p.inter);
  KIMI_CHECK(p.hidden % 8 == 0 && p.inter % 8 == 0, "moe gemm needs hidden and inter multiples of 8 (",
             p.hidden, ", ", p.inter, ")");
  KIMI_CHECK(p.block_m == 16 || p.block_m == 64 || p.block_m == 128,
             "moe block_m must be 16, 64 or 128, got ", p.block_m);
  KIMI_CHECK(p.workspace && p.x && p.w13 && p.w2 && p.act && p.y, "moe gemm: null pointer");
  KIMI_CHECK(!p.x_lo == !p.act_lo, "moe gemm: the lo planes of x and act go together");
  KIMI_CHECK(!p.split() || moe_gemm_path(p) != MoeGemmPath::kTiled,
             "moe gemm: the tiled kernel has no hi/lo split input (block_m ", p.block_m,
             "); use block_m 128 (wgmma) or a decode-sized step (gemv)");
}

template <bool SWIGLU>
void launch_gemm(const MoeGemmParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.block_m == 16 || p.block_m == 64, "moe tiled kernel: block_m must be 16 or 64, got ",
             p.block_m);
  const int64_t rows = int64_t(p.num_tokens) * p.top_k;
  MoePermuteView v = moe_permute_view(const_cast<int*>(p.workspace), p.num_experts, rows);
  const int N = SWIGLU ? p.inter : p.hidden;
  const dim3 grid(moe_max_tiles(rows, p.num_experts, p.block_m), ceil_div(N, moe::kBN));
  if (p.block_m == 16)
    moe::moe_gemm_kernel<16, SWIGLU><<<grid, 128, 0, stream>>>(p, v);
  else
    moe::moe_gemm_kernel<64, SWIGLU><<<grid, 128, 0, stream>>>(p, v);
  KIMI_CHECK_LAUNCH();
}

}  // namespace

MoeGemmPath moe_gemm_path(const MoeGemmParams& p) {
  if (p.path != MoeGemmPath::kAuto) return p.path;
  if (p.block_m == 128) return MoeGemmPath::kWgmma;
  const int64_t rows = int64_t(p.num_tokens) * p.top_k;
  if (p.block_m != 16 || rows > int64_t(p.gemv_max_rows_per_expert) * p.num_experts)
    return MoeGemmPath::kTiled;
  // Staged rows beyond ~100 KB (hidden > ~3k; both planes of a split input) would leave one CTA
  // per SM: keep the tiles there.
  const size_t smem_cap = size_t(100) << 10;
  if (moe::moe_gemv_smem_bytes(p, true) > smem_cap || moe::moe_gemv_smem_bytes(p, false) > smem_cap)
    return MoeGemmPath::kTiled;
  return MoeGemmPath::kGemv;
}

void run_moe_gate_up(const MoeGemmParams& p, cudaStream_t stream) {
  check_gemm(p);
  if (p.num_tokens == 0) return;
  switch (moe_gemm_path(p)) {
    case MoeGemmPath::kGemv: return moe::launch_moe_gemv(p, true, stream);
    case MoeGemmPath::kWgmma: return moe::launch_moe_wgmma(p, true, moe::moe_wgmma_tile(p), stream);
    default: return launch_gemm<true>(p, stream);
  }
}

void run_moe_down(const MoeGemmParams& p, cudaStream_t stream) {
  check_gemm(p);
  if (p.num_tokens == 0) return;
  switch (moe_gemm_path(p)) {
    case MoeGemmPath::kGemv: return moe::launch_moe_gemv(p, false, stream);
    case MoeGemmPath::kWgmma: return moe::launch_moe_wgmma(p, false, moe::moe_wgmma_tile(p), stream);
    default: return launch_gemm<false>(p, stream);
  }
}

void run_moe_unpermute(const MoeUnpermuteParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.num_tokens >= 0 && p.top_k > 0 && p.hidden > 0 && p.num_experts > 0,
             "moe unpermute T ", p.num_tokens, " K ", p.top_k, " hidden ", p.hidden);
  if (p.num_tokens == 0) return;
  KIMI_CHECK(p.workspace && p.weights && p.y && p.out, "moe unpermute: null pointer");
  const int64_t rows = int64_t(p.num_tokens) * p.top_k;
  MoePermuteView v = moe_permute_view(const_cast<int*>(p.workspace), p.num_experts, rows);
  KIMI_CHECK(p.top_k <= 32, "moe unpermute top_k ", p.top_k);
  if (p.norm_weight) {
    KIMI_CHECK(p.normed && p.accumulate && p.hidden <= kMoeUnpermuteNormMaxHidden,
               "moe unpermute: the fused norm needs its output, accumulation and hidden <= ",
               kMoeUnpermuteNormMaxHidden, " (hidden ", p.hidden, ")");
    const int cols = ceil_div(p.hidden, moe::kUnpermuteNormCtas);
    LaunchOptions o;
    o.pdl = true;
    o.cluster = dim3(moe::kUnpermuteNormCtas, 1, 1);
    launch_kernel(moe::moe_unpermute_norm_kernel, dim3(moe::kUnpermuteNormCtas, p.num_tokens),
                  ceil_div(cols, 32) * 32, o, stream, p, v.pair_row);
    return;
  }
  const dim3 grid(p.num_tokens, ceil_div(p.hidden, moe::kUnpermuteThreads));
  launch_kernel(moe::moe_unpermute_kernel, grid, moe::kUnpermuteThreads, LaunchOptions{0, true}, stream,
                p, v.pair_row);
}

}  // namespace kimi::cuda
