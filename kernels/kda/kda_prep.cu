// Launchers of the KDA prefill prep (conv, L2 norm), the conv-state update and the
// gated output norm (kda_prep.cuh).
#include "common.h"
#include "kda/kda_prep.cuh"

namespace kimi::cuda {

namespace kda {
void launch_kda_conv_state(const KdaPrepParams& p, cudaStream_t stream);
}  // namespace kda

void run_kda_prep(const KdaPrepParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.num_seqs >= 0 && p.num_tokens >= 0 && p.num_heads > 0 && p.num_heads <= 65535,
             "seqs ", p.num_seqs, ", tokens ", p.num_tokens, ", heads ", p.num_heads);
  if (p.num_seqs == 0) return;
  KIMI_CHECK(
      p.cu_seqlens && p.slots && p.qkv && p.conv_state && p.q && p.k && p.v && p.w.conv_weight,
      "null pointer");
  const auto a8 = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 7u) == 0; };
  KIMI_CHECK(a8(p.qkv) && a8(p.q) && a8(p.k) && a8(p.v) &&
                 (reinterpret_cast<uintptr_t>(p.w.conv_weight) & 15u) == 0,
             "prep: qkv, q, k, v must be 8-byte aligned and the conv weight 16-byte aligned");
  if (p.num_tokens > 0) {
    kda::kda_prep_kernel<<<dim3(ceil_div(p.num_tokens, kda::kPrepTokens), p.num_heads),
                           kda::kPrepThreads, 0, stream>>>(p);
    KIMI_CHECK_LAUNCH();
  }
  kda::launch_kda_conv_state(p, stream);
}

namespace kda {
void launch_kda_conv_state(const KdaPrepParams& p, cudaStream_t stream) {
  const int C = 3 * p.num_heads * kKdaD;
  KIMI_CHECK(p.num_seqs <= 65535, "too many sequences for the grid: ", p.num_seqs);
  kda_conv_state_kernel<<<dim3(ceil_div(C, 256), p.num_seqs), 256, 0, stream>>>(p);
  KIMI_CHECK_LAUNCH();
}
}  // namespace kda

void run_kda_gated_rmsnorm(const KdaGatedNormParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.num_tokens >= 0 && p.num_heads > 0, "tokens ", p.num_tokens, ", heads ",
             p.num_heads);
  if (p.num_tokens == 0) return;
  KIMI_CHECK(p.o && p.z && p.weight && p.y, "null pointer");
  const int rows = p.num_tokens * p.num_heads;
  kda::kda_gated_rmsnorm_kernel<<<ceil_div(rows, 4), 128, 0, stream>>>(p);
  KIMI_CHECK_LAUNCH();
}

}  // namespace kimi::cuda
