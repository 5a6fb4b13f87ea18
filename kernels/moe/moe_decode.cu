// Launcher of the fused one-token MoE block (moe_decode.cuh; contract in moe.h).
#include <cstdint>

#include "common.h"
#include "launch.h"
#include "moe/moe_decode.cuh"

namespace kimi::cuda {

namespace {

int grid_size() {
  int dev = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

}  // namespace

size_t moe_decode_fused_scratch_floats(int top_k, int hidden, int inter) {
  const size_t S = size_t(top_k) + 1;  // room for the shared expert's slot
  return S * 2 * inter + S * hidden;
}

bool moe_decode_fused_supported() {
  // The largest shape's shared memory; one CTA per multiprocessor must fit beside nothing else.
  const size_t smem = moe::fused_smem_bytes(1024, 33, kMoeDecodeFusedMaxHidden, kMoeDecodeFusedMaxInter);
  auto kernel = moe::moe_decode_fused_kernel;
  if (smem > (size_t(48) << 10))
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  int blocks = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, moe::kFusedThreads, smem));
  return blocks >= 1;
}

void run_moe_decode_fused(const MoeDecodeFusedParams& p, cudaStream_t stream) {
  const MoeRouteParams& r = p.route;
  KIMI_CHECK(r.num_tokens == 1, "moe fused decode: one token, got ", r.num_tokens);
  KIMI_CHECK(r.num_experts > 0 && r.num_experts <= 1024 && r.top_k > 0 && r.top_k <= 32 &&
                 r.top_k <= r.num_experts,
             "moe fused decode E ", r.num_experts, " K ", r.top_k);
  KIMI_CHECK(r.local_experts == 0 && r.expert_first == 0,
             "moe fused decode: no expert parallelism (all experts on this GPU)");
  KIMI_CHECK(r.shared_expert < 0 || r.shared_expert == r.num_experts,
             "moe fused decode: the shared expert must be expert E (", r.num_experts, "), got ",
             r.shared_expert);
  KIMI_CHECK(p.hidden > 0 && p.hidden % 8 == 0 && p.hidden <= kMoeDecodeFusedMaxHidden,
             "moe fused decode: hidden ", p.hidden, " must be a multiple of 8 and at most ",
             kMoeDecodeFusedMaxHidden);
  KIMI_CHECK(p.inter > 0 && p.inter % 8 == 0 && p.inter <= kMoeDecodeFusedMaxInter,
             "moe fused decode: inter ", p.inter, " must be a multiple of 8 and at most ",
             kMoeDecodeFusedMaxInter);
  KIMI_CHECK(r.logits && r.correction_bias && r.expert_ids && r.weights && p.x && p.norm_weight &&
                 p.router && p.w13 && p.w2 && p.scratch && p.barrier,
             "moe fused decode: null pointer");
  KIMI_CHECK(!p.next_norm == !p.next_normed, "moe fused decode: next_norm and next_normed go together");
  KIMI_CHECK(p.accumulate || !p.next_norm,
             "moe fused decode: next_norm needs accumulate (a partial row has no norm)");
  for (const void* ptr : {static_cast<const void*>(p.router), static_cast<const void*>(p.norm_weight),
                          static_cast<const void*>(p.w13), static_cast<const void*>(p.w2)})
    KIMI_CHECK((reinterpret_cast<uintptr_t>(ptr) & 15) == 0,
               "moe fused decode: router, norm weight, w13 and w2 must be 16-byte aligned");
  const int S = r.top_k + (r.shared_expert >= 0);
  const size_t smem = moe::fused_smem_bytes(r.num_experts, S, p.hidden, p.inter);
  auto kernel = moe::moe_decode_fused_kernel;
  if (smem > (size_t(48) << 10))
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  launch_kernel(kernel, grid_size(), moe::kFusedThreads, LaunchOptions{smem, true}, stream, p);
}

}  // namespace kimi::cuda
