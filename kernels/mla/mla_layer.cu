// Launchers of the fused small-decode MLA kernels (contracts in mla_layer.h).
#include <algorithm>

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
  launch_kernel(mla::mla_uv_kernel, dim3(4, p.num_heads), mla::kLayerThreads, o, stream, p);
}

}  // namespace kimi::cuda
