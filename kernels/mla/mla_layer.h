// The MLA layer of a small decode step (T <= kMlaLayerMaxTokens new tokens) in fewer launches
// (docs/perf-log.md, session 10, "One MLA layer of a batch-1 decode step"). The chain:
//   1. q | latent: one grouped small-M launch of the q and kv_a projections, both fp32 out (the
//      caller: Gemm::run_group);
//   2. run_mla_q_prep: q rounded to bf16 (the values a bf16-out q projection gives), q_abs[t, h] =
//      W_UK(h)ᵀ bf16(q_nope[t, h]) (fp32 sums, bf16 out), and the new tokens' cache rows (the
//      cache write of mla.h, bf16 rows or fp8 records) in one launch;
//   3. run_mla_attention (mla.h), unchanged;
//   4. run_mla_uv: per (token, head) the split partials merged into u (rounded to bf16, as the
//      combine rounds it; or the u an unsplit item wrote) and attn[t, h] = W_UV(h) u in one
//      launch;
//   5. o_proj (the caller's small-M GEMM).
// bench_mla --layer on one H200, batch 1: 30.8 us a layer at 4k against the GEMM chain's 36.2
// (62.9 MB a layer: 48.6% of the copy ceiling, was 41.4%); docs/perf-log.md, session 10.
// Both kernels are programmatic dependent launches that read their weights (W_UK, W_UV slices:
// 32 KB per CTA) into registers before waiting for the previous kernel, so their weight bytes
// stream while the projection (2.) or the attention (3.) still runs; neither goes through
// cuBLASLt, whose kernels do not let the next launch start early.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "mla/mla.h"

namespace kimi::cuda {

// Most new tokens of a step that run_mla_q_prep / run_mla_uv take (each CTA loops over them
// with its weights in registers; the model uses them up to 2: at 4 the GEMM chain is faster).
inline constexpr int kMlaLayerMaxTokens = 4;

struct MlaQPrepParams {
  int num_tokens = 0;         // T <= kMlaLayerMaxTokens
  int num_heads = 0;          // H (a rank's heads)
  const float* q32 = nullptr; // [T, H, 192] the q projection in fp32: q_nope (128) | q_pe (64)
  const bf16* kv_b = nullptr; // [H·256, 512]: per head W_UK (128 rows) then W_UV (128 rows)
  bf16* q = nullptr;          // [T, H, 192] out: bf16(q32)
  bf16* q_abs = nullptr;      // [T, H, 512] out: bf16(Σ_k bf16(q_nope[k]) · W_UK[k, n])
  MlaCacheWriteParams cache;  // the T new tokens' latents into the cache (num_tokens = T)
};
// Grid (5, max(H, T)) of 256 threads: CTA (s < 4, h < H) makes q_abs columns 128s .. +128 of
// head h; CTA (4, y) rounds head y's q rows (y < H) and writes token y's cache row (y < T).
void run_mla_q_prep(const MlaQPrepParams& p, cudaStream_t stream);

struct MlaUvParams {
  int num_tokens = 0;               // T <= kMlaLayerMaxTokens
  int num_heads = 0;                // H
  const int* split_base = nullptr;  // [T] first partial slot of token t (the attention plan's)
  const int* num_splits = nullptr;  // [T] busy partial slots of token t (0: u written directly)
  const float* partials = nullptr;  // [slots, H, kMlaPartialStride]: u (512) | m | l
  const bf16* u = nullptr;          // [T, H, 512] u of the tokens with num_splits 0
  const bf16* kv_b = nullptr;       // [H·256, 512]: W_UV(h) is rows h·256 + 128 .. +128
  bf16* out = nullptr;              // [T, H, 128] attn = W_UV(h) u[t, h]
};
// Grid (4, H) in clusters of 4 (the 4 slices of 128 latent columns of one head), 256 threads:
// each CTA merges its 128 columns of u (m, l of every split: the same weights in all four) and
// multiplies them by its 128 × 128 slice of W_UV(h); ranks 1-3 send their 128 partial sums to
// rank 0's shared memory, which adds them in rank order and stores bf16.
void run_mla_uv(const MlaUvParams& p, cudaStream_t stream);

}  // namespace kimi::cuda
