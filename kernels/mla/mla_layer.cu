// Launchers of the fused small-decode MLA kernels (contracts in mla_layer.h).
#include <algorithm>
#include <atomic>

#include "common.h"
#include "launch.h"
#include "mla/mla_layer.cuh"

namespace kimi::cuda {

void run_mla_q_prep(const MlaQPrepParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.num_tokens >= 0 && p.num_tokens <= kMlaLayerMaxTokens && p.num_heads > 0,
             "mla q prep: T ", p.num_tokens, " (at most ", kMlaLayerMaxTokens, "), H ", p.num_heads);
  if (p.num_tokens == 0) return;
  const MlaCacheWriteParams& c = p.cache;
  KIMI_CHECK(p.q32 && p.kv_b && p.q && p.q_abs, "mla q prep: null pointer");
  KIMI_CHECK(c.num_tokens == p.num_tokens && c.num_seqs > 0 && c.max_blocks_per_seq > 0 &&
                 c.cu_seqlens && c.context_lens && c.block_tables && c.latent && c.norm_weight &&
                 (c.cache != nullptr) != (c.cache8 != nullptr),
             "mla q prep: cache write of ", c.num_tokens, " tokens for ", p.num_tokens,
             ", or a null pointer (or both cache and cache8 set)");
  const dim3 grid(5, std::max(p.num_heads, p.num_tokens));
  launch_kernel(mla::mla_q_prep_kernel, grid, mla::kLayerThreads, LaunchOptions{0, true}, stream, p);
}

void run_mla_uv(const MlaUvParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.num_tokens >= 0 && p.num_tokens <= kMlaLayerMaxTokens && p.num_heads > 0,
             "mla uv: T ", p.num_tokens, " (at most ", kMlaLayerMaxTokens, "), H ", p.num_heads);
  if (p.num_tokens == 0) return;
  KIMI_CHECK(p.split_base && p.num_splits && p.partials && p.u && p.kv_b && p.out,
             "mla uv: null pointer");
  LaunchOptions o;
  o.pdl = true;
  o.cluster = dim3(4, 1, 1);
  launch_kernel(p.dependents_at_entry ? mla::mla_uv_kernel<true> : mla::mla_uv_kernel<false>,
                dim3(4, p.num_heads), mla::kLayerThreads, o, stream, p);
}

int mla_o_proj_rows(int out_dim, int in_dim, int num_sms) {
  if (out_dim <= 0 || in_dim <= 0 || in_dim % 8 != 0 || in_dim > 8192 || num_sms <= 0) return 0;
  const int R = ceil_div(out_dim, num_sms);
  return R <= kMlaOProjMaxRows && size_t(R) * in_dim * 2 <= size_t(200) << 10 ? R : 0;
}

void run_mla_o_proj(const MlaOProjParams& p, int num_sms, cudaStream_t stream) {
  KIMI_CHECK(p.num_tokens >= 0 && p.num_tokens <= kMlaLayerMaxTokens, "mla o_proj: T ",
             p.num_tokens, " (at most ", kMlaLayerMaxTokens, ")");
  if (p.num_tokens == 0) return;
  const int R = mla_o_proj_rows(p.out_dim, p.in_dim, num_sms);
  KIMI_CHECK(R > 0, "mla o_proj: ", p.out_dim, " x ", p.in_dim, " does not fit ", num_sms,
             " SMs' shared memory");
  KIMI_CHECK(p.in && p.w && p.x, "mla o_proj: null pointer");
  KIMI_CHECK(reinterpret_cast<uintptr_t>(p.in) % 16 == 0 && reinterpret_cast<uintptr_t>(p.w) % 16 == 0,
             "mla o_proj: operands not 16-byte aligned");
  const size_t smem = size_t(R) * p.in_dim * 2;
  {  // the dynamic shared-memory limit (200 KiB): per function and device, set once on each
    static std::atomic<uint64_t> done{0};
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    const uint64_t bit = uint64_t(1) << (dev & 63);
    if (!(done.load() & bit)) {
      CUDA_CHECK(cudaFuncSetAttribute(mla::mla_o_proj_kernel,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, 200 << 10));
      done.fetch_or(bit);
    }
  }
  launch_kernel(mla::mla_o_proj_kernel, dim3(ceil_div(p.out_dim, R)), mla::kLayerThreads,
                LaunchOptions{smem, true}, stream, p, R);
}

}  // namespace kimi::cuda
