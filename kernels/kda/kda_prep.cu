// Launchers of the KDA prefill prep (conv, L2 norm), the conv-state update and the
// gated output norm (kda_prep.cuh).
#include <cstdint>

#include "common.h"
#include "kda/kda_prep.cuh"

namespace kimi::cuda {

namespace {

// The conv states after the prep has read them (its own launch: every read of the old state first).
template <typename T>
void conv_state(const KdaPrepParamsT<T>& p, cudaStream_t stream) {
  const int C = 3 * p.num_heads * kKdaD;
  KIMI_CHECK(p.num_seqs <= 65535, "too many sequences for the grid: ", p.num_seqs);
  kda::kda_conv_state_kernel<T><<<dim3(ceil_div(C, 256), p.num_seqs), 256, 0, stream>>>(p);
  KIMI_CHECK_LAUNCH();
}

// bf16 with 16-byte aligned rows, steps of kPrepTileMinTokens or more: the bulk-copy tile kernel
// (one H200, H = 32, against the register kernel in the same process: T = 128k 2.21 vs 2.61 ms =
// 69% vs 59% of copy, 32k 0.574 vs 0.664 ms, but 4k 0.098 vs 0.094 ms; docs/perf-log.md session
// 13; the bound lies between the measured sizes). Launches it and returns true, or returns false:
// shorter steps (the engine's default 2048-token steps among them), fp32 (high precision) and
// other alignments take the register kernel.
constexpr int kPrepTileMinTokens = 16384;
bool prep_tile(const KdaPrepParamsT<float>& p, cudaStream_t) {
  KIMI_CHECK(p.tile < 1, "prep: the tile kernel has no fp32 form");
  return false;
}
bool prep_tile(const KdaPrepParamsT<bf16>& p, cudaStream_t stream) {
  const bool aligned = (reinterpret_cast<uintptr_t>(p.qkv) & 15u) == 0;
  KIMI_CHECK(p.tile < 1 || aligned, "prep: the tile kernel needs 16-byte aligned qkv");
  if (p.tile == 0 || !aligned || (p.tile < 0 && p.num_tokens < kPrepTileMinTokens)) return false;
  const int64_t tiles = int64_t(ceil_div(p.num_tokens, kda::kPrepTileTokens)) * p.num_heads;
  KIMI_CHECK(tiles < (int64_t(1) << 31), "too many prep tiles for the grid: ", tiles);
  CUDA_CHECK(cudaFuncSetAttribute(kda::kda_prep_tile_kernel,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(kda::kPrepTileSmem)));
  kda::kda_prep_tile_kernel<<<unsigned(tiles), kda::kPrepTileThreads, kda::kPrepTileSmem,
                              stream>>>(p);
  return true;
}

template <typename T>
void prep(const KdaPrepParamsT<T>& p, cudaStream_t stream) {
  KIMI_CHECK(p.num_seqs >= 0 && p.num_tokens >= 0 && p.num_heads > 0 && p.num_heads <= 65535,
             "seqs ", p.num_seqs, ", tokens ", p.num_tokens, ", heads ", p.num_heads);
  KIMI_CHECK(p.tile >= -1 && p.tile <= 1, "prep: tile must be -1, 0 or 1, got ", p.tile);
  if (p.num_seqs == 0) return;
  KIMI_CHECK(
      p.cu_seqlens && p.slots && p.qkv && p.conv_state && p.q && p.k && p.v && p.w.conv_weight,
      "null pointer");
  // 4 channels per vector access: 8 bytes of bf16, 16 of fp32.
  const auto a4 = [](const void* q) {
    return reinterpret_cast<uintptr_t>(q) % (4 * sizeof(T)) == 0;
  };
  KIMI_CHECK(a4(p.qkv) && a4(p.q) && a4(p.k) && a4(p.v) &&
                 (reinterpret_cast<uintptr_t>(p.w.conv_weight) & 15u) == 0,
             "prep: qkv, q, k, v must be aligned to 4 elements and the conv weight to 16 bytes");
  if (p.num_tokens > 0) {
    if (!prep_tile(p, stream))
      kda::kda_prep_kernel<T><<<dim3(ceil_div(p.num_tokens, kda::kPrepTokens), p.num_heads),
                                kda::kPrepThreads, 0, stream>>>(p);
    KIMI_CHECK_LAUNCH();
  }
  conv_state(p, stream);
}

template <typename T>
void gated_rmsnorm(const KdaGatedNormParamsT<T>& p, cudaStream_t stream) {
  KIMI_CHECK(p.num_tokens >= 0 && p.num_heads > 0, "tokens ", p.num_tokens, ", heads ",
             p.num_heads);
  if (p.num_tokens == 0) return;
  KIMI_CHECK(p.o && p.z && p.weight && p.y, "null pointer");
  const int rows = p.num_tokens * p.num_heads;
  kda::kda_gated_rmsnorm_kernel<T><<<ceil_div(rows, 4), 128, 0, stream>>>(p);
  KIMI_CHECK_LAUNCH();
}

}  // namespace

void run_kda_prep(const KdaPrepParamsT<bf16>& p, cudaStream_t stream) { prep(p, stream); }
void run_kda_prep(const KdaPrepParamsT<float>& p, cudaStream_t stream) { prep(p, stream); }
void run_kda_gated_rmsnorm(const KdaGatedNormParamsT<bf16>& p, cudaStream_t stream) {
  gated_rmsnorm(p, stream);
}
void run_kda_gated_rmsnorm(const KdaGatedNormParamsT<float>& p, cudaStream_t stream) {
  gated_rmsnorm(p, stream);
}

}  // namespace kimi::cuda
