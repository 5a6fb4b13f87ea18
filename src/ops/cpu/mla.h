// CPU reference for MLA attention over the compressed, paged latent cache (model.md §4).
// Each cached token holds kMlaCacheDim = 576 values: the normed latent ĉ (512) then k_pe (64).
// The cache is a pool of blocks of kMlaBlockSize tokens; a sequence's block table lists its
// blocks in order, so token position p sits in block_table[p / 64] at row p % 64.
//
// fp8 latent cache (--kv-cache-dtype fp8, docs/precision.md): ĉ is stored as float8 e4m3 with
// one scale per group of 128 values, the smallest power of two 2^k with amax <= 448 · 2^k (448:
// e4m3's largest finite value), code = e4m3(x · 2^-k) rounded to nearest even, codes below
// e4m3's normal range (|x| < 2^(k-6)) flushed to ±0; k_pe is not quantised. Power-of-two scales
// and normal codes make every decoded value code · 2^k exact in bf16, so the CUDA readers decode
// with integer and bf16 multiply instructions alone (docs/kernels-mla-moe.md). The CPU cache
// stays fp32 and holds each value's fp8 round trip (code · scale): the values the CUDA fp8 cache
// decodes to, so both backends attend over the same keys.
#pragma once

#include <cstdint>

namespace kimi::cpu {

constexpr int kMlaBlockSize = 64;
constexpr int kMlaFp8Group = 128;  // ĉ values per fp32 scale
constexpr float kE4m3Max = 448.f;

// float -> e4m3 code (round to nearest even, saturating to ±448; NaN -> 0x7f), and back.
uint8_t e4m3_from_float(float x);
float e4m3_to_float(uint8_t code);
// k of a group's scale 2^k: the smallest with amax <= 448 · 2^k.
int mla_fp8_scale_exponent(float amax);
// The code of x given 1 / scale (a power of two), subnormal codes flushed to ±0.
uint8_t mla_fp8_code(float x, float inv_scale);
// ĉ (512 values) -> codes [512] and scales [4]; a group of zeros (amax below FLT_MIN) gets scale
// 0 and zero codes.
void mla_fp8_quantize(const float* latent, uint8_t* codes, float* scales);

struct MlaCacheWriteParams {
  int num_seqs = 0;
  const int* cu_seqlens = nullptr;    // [num_seqs + 1] new tokens of each sequence
  const int* context_lens = nullptr;  // [num_seqs] cached tokens after this step (new included)
  const int* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  int max_blocks_per_seq = 0;
  int num_blocks = 0;                 // blocks in the cache pool (range check)
  const float* latent = nullptr;      // [T, 576] normed ĉ | k_pe of the new tokens
  float* cache = nullptr;             // [num_blocks, 64, 576]
  bool fp8 = false;                   // store ĉ's fp8 round trip (the fp8 cache's values)
};
// Writes the new tokens' latents at positions context_len - n_new ... context_len - 1.
void mla_cache_write(const MlaCacheWriteParams& p);

struct MlaAttnParams {
  int num_seqs = 0;
  const int* cu_seqlens = nullptr;    // [num_seqs + 1] new (query) tokens of each sequence
  const int* context_lens = nullptr;  // [num_seqs] cached tokens, new ones included (already written)
  const int* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  int max_blocks_per_seq = 0;
  int num_blocks = 0;                 // blocks in the cache pool (range check)
  const float* cache = nullptr;       // [num_blocks, 64, 576]
  int num_heads = 0;
  const float* q = nullptr;           // [T, H, 192]: q_nope (128) | q_pe (64)
  const float* kv_b = nullptr;        // [H·256, 512]: per head W_UK (128 rows) then W_UV (128 rows)
  float scale = 0.f;                  // 1/sqrt(192)
  float* out = nullptr;               // [T, H, 128] attention output per head (before o_proj)
};
// Query token i of sequence s sits at position context_len - n_new + i and attends causally to
// positions 0..its own. Absorbed: q_abs = W_UKᵀ q_nope, scores against ĉ, output W_UV · Σ p ĉ.
void mla_attention_absorbed(const MlaAttnParams& p);
// Expanded: k_nope = W_UK ĉ and v = W_UV ĉ per head, then plain softmax attention.
void mla_attention_expanded(const MlaAttnParams& p);

}  // namespace kimi::cpu
