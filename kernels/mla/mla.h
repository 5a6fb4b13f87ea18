// MLA (NoPE) over the paged bf16 latent cache on the GPU (model.md §4).
//
// Cache: [num_blocks, 64, 576] bf16 per MLA layer; row = ĉ (512, RMS-normed) | k_pe (64).
// Token position p of sequence s lives at row p % 64 of block block_tables[s][p / 64].
// Query token i of a sequence with n new tokens and context length L (new tokens included,
// already written) sits at position L − n + i and attends to positions 0 .. L − n + i.
//
// Attention runs in the absorbed form (MQA with one 576-wide KV head shared by all heads):
//   q_abs[t, h] = W_UK(h)ᵀ q_nope[t, h]                        (a batched GEMM, outside)
//   s_j = scale · ([q_abs | q_pe] · cache_j),  p = softmax_j(s)  (fp32, max subtracted)
//   u[t, h] = Σ_j p_j ĉ_j  (512)                                  (this kernel)
//   out[t, h] = W_UV(h) u[t, h]                                   (a batched GEMM, outside)
// Work is split by a host plan (plan/run split: depends only on batch metadata): items of up
// to 4 query tokens of one sequence (1 for decode) × groups of heads × optional KV splits.
// Decode items (items1) run on tensor cores with all (up to 32) heads of the rank in one CTA, so
// each cache row is read once (mla_decode_tc.cuh); prefill items (items4) run on tensor cores in
// groups of 16 heads (a 64-row tile of 4 tokens × 16 heads, mla_tc.cuh). With
// MlaAttnParams::tensor_cores false both run on CUDA cores in groups of 8 heads (mla.cuh, kept
// for comparison). Split items write (unnormalised u, running max m, sum l) partials that
// run_mla_combine merges; unsplit items write u directly.
//
// fp8 cache (--kv-cache-dtype fp8; set `cache8` instead of `cache` in every params struct): per
// token a kMlaFp8Row = 656-byte record, ĉ as e4m3 codes (512 bytes) | k_pe bf16 (128 bytes) | 4
// fp32 scales (16 bytes), one per 128 values of ĉ: scale = 2^k, the smallest power of two with
// amax <= 448 · 2^k, code = e4m3(x · 2^-k) rounded to nearest even, subnormal codes flushed to
// ±0 (cpu::mla_fp8_quantize computes the same codes). 656 = 41 · 16: records stay 16-byte
// aligned for TMA. code · scale is then exact in bf16: the readers decode it with integer and
// bf16x2 multiply instructions (mla_fp8.cuh) where the bf16 path reads the cache (the decode
// kernel's tile, the prefill kernel's tile, the expanded prefill's gathered latents).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace kimi::cuda {

using bf16 = __nv_bfloat16;

constexpr int kMlaLat = 512;
constexpr int kMlaPe = 64;
constexpr int kMlaRow = 576;
constexpr int kMlaQk = 192;    // q row per head: q_nope (128) | q_pe (64)
constexpr int kMlaBlock = 64;  // tokens per cache block
constexpr int kMlaHeadsPerCta = 8;      // CUDA-core kernel
constexpr int kMlaTcHeadsPerCta = 16;   // tensor-core kernel (prefill items)
constexpr int kMlaDecHeadsPerCta = 32;  // tensor-core decode kernel (items1): all heads of a rank
// u (512) | m | l | 2 unused (rows 16-byte aligned for the combine), fp32, per (partial, head).
constexpr int kMlaPartialStride = kMlaLat + 4;
// Fewest KV positions per split of a tensor-core decode item: a split costs H·2 KB of partials
// (written, then read by the combine) and a pipeline ramp; shorter splits cost more than they
// gain in parallelism.
constexpr int kMlaDecodeMinSplit = 128;
// fp8 cache record (bytes): codes | k_pe | scales.
constexpr int kMlaFp8Row = 656;
constexpr int kMlaFp8PeOff = 512;
constexpr int kMlaFp8ScaleOff = 640;
constexpr int kMlaFp8Group = 128;  // ĉ values per scale
static_assert(kMlaFp8PeOff == kMlaLat && kMlaFp8ScaleOff == kMlaFp8PeOff + 2 * kMlaPe &&
              kMlaFp8Row == kMlaFp8ScaleOff + 4 * (kMlaLat / kMlaFp8Group) && kMlaFp8Row % 16 == 0);
// Bytes of one cached token (one MLA layer) in either format.
inline size_t mla_cache_row_bytes(bool fp8) {
  return fp8 ? kMlaFp8Row : kMlaRow * sizeof(bf16);
}

// ---- Latent cache write: RMSNorm of ĉ (fp32 in), k_pe passed through, bf16 into the cache. ----
struct MlaCacheWriteParams {
  int num_seqs = 0;
  int num_tokens = 0;
  const int* cu_seqlens = nullptr;    // [S + 1]
  const int* context_lens = nullptr;  // [S]
  const int* block_tables = nullptr;  // [S, max_blocks_per_seq]
  int max_blocks_per_seq = 0;
  const float* latent = nullptr;      // [T, 576] kv_a projection: c (512) | k_pe (64)
  const float* norm_weight = nullptr; // [512] kv_a_layernorm
  float eps = 1e-5f;
  bf16* cache = nullptr;              // [num_blocks, 64, 576]
  uint8_t* cache8 = nullptr;          // fp8 cache [num_blocks, 64, 656 bytes] (instead of cache)
};
void run_mla_cache_write(const MlaCacheWriteParams& p, cudaStream_t stream);

// ---- Attention plan (host). ----
struct MlaWorkItem {
  int seq = 0;       // sequence (block table row)
  int q_begin = 0;   // first query token (global row of q / u)
  int nq = 0;        // query tokens in this item (1..4; 0: an idle slot of the decode plan)
  int q_pos0 = 0;    // cache position of the first query token
  int kv_begin = 0;  // KV positions [kv_begin, kv_end) handled here
  int kv_end = 0;
  int split = -1;    // -1: write u directly; else split index k (partial slot split_base[t] + k)
};
struct MlaAttnPlan {
  std::vector<MlaWorkItem> items1;  // single-query items (decode)
  std::vector<MlaWorkItem> items4;  // up to 4 queries per item (prefill)
  std::vector<int> split_base;      // [T] first partial slot of token t (−1: not split)
  std::vector<int> num_splits;      // [T] partial slots of token t (0: not split)
  int num_partials = 0;
};
// num_sms: multiprocessors to fill; max_partials: partial slots the workspace holds;
// tensor_cores: the kernels that will run the items (MlaAttnParams::tensor_cores), which set how
// many CTAs an item takes and so how far to split.
// skip (optional, [S]): sequences marked non-zero get no items (they run the expanded prefill).
MlaAttnPlan make_mla_attn_plan(int num_seqs, const int* cu_seqlens, const int* context_lens,
                               int num_heads, int num_sms, int max_partials, bool tensor_cores,
                               const uint8_t* skip = nullptr);
// Decode plan for CUDA-graph replay: every sequence has exactly one new token and the same number
// of item slots, mla_decode_splits(), chosen from the batch size alone, so the launch shapes (and
// num_partials, hence whether the combine runs) stay fixed while the contexts grow; the slots'
// KV ranges are recomputed every step from the contexts and uploaded with the step's metadata.
// Tensor cores: splits of at least kMlaDecodeMinSplit positions; slots past the last split of a
// short context are idle (nq = 0) and num_splits[s] counts the busy ones (0: one split, u
// written directly). CUDA cores: every slot busy, splits past a short context empty (merged with
// zero weight).
MlaAttnPlan make_mla_decode_plan(int num_seqs, const int* context_lens, int num_heads, int num_sms,
                                 int max_partials, bool tensor_cores);
int mla_decode_splits(int num_seqs, int num_heads, int num_sms, int max_partials,
                      bool tensor_cores);
// Bytes of partials workspace per partial slot.
inline size_t mla_partial_bytes(int num_heads) {
  return size_t(num_heads) * kMlaPartialStride * sizeof(float);
}

struct MlaAttnParams {
  int num_tokens = 0;
  int num_heads = 0;
  const bf16* q_abs = nullptr;        // [T, H, 512]
  const bf16* q = nullptr;            // [T, H, 192]: q_pe is q[t, h, 128:192]
  const bf16* cache = nullptr;        // [num_blocks, 64, 576]
  const uint8_t* cache8 = nullptr;    // fp8 cache [num_blocks, 64, 656 bytes] (instead of cache;
                                      // tensor-core kernels only)
  int num_blocks = 0;                 // the cache's blocks (the decode kernel's TMA extent)
  const int* block_tables = nullptr;  // [S, max_blocks_per_seq]
  int max_blocks_per_seq = 0;
  float scale = 0.f;                  // 1/sqrt(192)
  const MlaWorkItem* items = nullptr; // device copy of plan.items1 or plan.items4
  int num_items = 0;
  const int* split_base = nullptr;    // [T] device copy of plan.split_base
  const int* num_splits = nullptr;    // [T]
  float* partials = nullptr;          // [num_partials, H, 514]
  bf16* u = nullptr;                  // [T, H, 512]
  // Items on tensor cores (decode: mla_decode_tc.cuh, prefill: mla_tc.cuh); false: the CUDA-core
  // kernel for both (comparison only). Plans must be made with the same choice.
  bool tensor_cores = true;
};
// Sets the kernels' shared-memory limits; call once before the first launch (and before any CUDA
// graph capture). run_mla_attention calls it too.
void mla_prepare();
// queries_per_item: 1 for items1, 4 for items4 (tensor cores unless p.tensor_cores is false).
// Items with nq = 0 are skipped.
void run_mla_attention(const MlaAttnParams& p, int queries_per_item, cudaStream_t stream);
// Merges split partials into u for every token with num_splits > 0.
void run_mla_combine(const MlaAttnParams& p, cudaStream_t stream);

// ---- Expanded prefill (mla_prefill.cuh): per-head K/V, flash attention on wgmma + TMA. ----
// Long prefills run MLA as plain multi-head attention (as vLLM's prefill does): per head
// K = [W_UK(h) ĉ_j (128) | k_pe_j (64)], V = W_UV(h) ĉ_j (128), s = scale · q·K over 192 and
// o = Σ softmax(s) V straight into o_proj's input. Per (query, key, head) that costs 2·(192 + 128)
// FLOPs against the absorbed form's 2·(576 + 512), plus one GEMM that expands each context
// position once: worth it when a sequence brings many new tokens (kMlaExpandMinTokens).
// The context is expanded in pieces of at most `piece_rows` positions (the workspace): a round
// gathers the cache rows of its segments into lat [piece, 576], two head-batched GEMMs make
// k_nope [piece, H, 128] and Vᵀ [H, 128, piece] (keys contiguous: the K-major B operand of P·V),
// then the attention kernel runs the round's items. Segments start at workspace rows that are
// multiples of 8 (the attention kernel's TMA boxes of Vᵀ start on 16-byte boundaries; the gather
// zeroes the gaps). Sequences whose context spans several rounds carry (o, m, l) in fp32 across
// them (state).
constexpr int kMlaExpandMinTokens = 128;  // new tokens of a sequence from which it expands
constexpr int kMlaPrefillRows = 128;      // query rows (tokens of one head) per CTA
constexpr int kMlaStateStride = 130;      // state row: o (128) | m | l, fp32, per (token, head)

// One contiguous run of a sequence's context positions expanded in a round.
struct MlaPrefillSeg {
  int seq = 0;
  int pos_begin = 0, pos_end = 0;  // context positions [pos_begin, pos_end)
  int ws_row = 0;                  // workspace row of pos_begin
};
// One CTA's work (per head): up to kMlaPrefillRows query tokens of a sequence against one segment.
struct MlaPrefillItem {
  int q_begin = 0;   // first query token (global row of q / out / state)
  int nq = 0;        // 1 .. kMlaPrefillRows
  int q_pos0 = 0;    // cache position of the first query token
  int kv_begin = 0;  // context positions [kv_begin, kv_end) of the segment (clipped by causality)
  int kv_end = 0;
  int ws_row = 0;    // workspace row of kv_begin
  int flags = 0;     // kMlaFirst: no state yet; kMlaLast: write out, else write the state
};
constexpr int kMlaFirst = 1, kMlaLast = 2;
struct MlaPrefillRound {
  int seg_begin = 0, seg_end = 0;    // segments gathered in this round
  int item_begin = 0, item_end = 0;  // items run in this round
  int rows = 0;                      // workspace rows used
};
struct MlaPrefillPlan {
  std::vector<MlaPrefillSeg> segs;
  std::vector<MlaPrefillItem> items;
  std::vector<MlaPrefillRound> rounds;
  bool uses_state = false;  // some sequence spans several rounds
};
// expanded (optional, [S]): only sequences marked non-zero (all when null); piece_rows: the
// workspace's rows (a positive multiple of 8).
MlaPrefillPlan make_mla_prefill_plan(int num_seqs, const int* cu_seqlens, const int* context_lens,
                                     const uint8_t* expanded, int piece_rows);
// Workspace bytes for piece_rows positions: lat, k_nope, Vᵀ (each 256-byte aligned).
size_t mla_prefill_workspace_bytes(int piece_rows, int num_heads);

class Gemm;
struct MlaPrefillParams {
  int num_heads = 0;
  const bf16* q = nullptr;            // [T, H, 192]: q_nope | q_pe
  const bf16* cache = nullptr;        // [num_blocks, 64, 576]
  const uint8_t* cache8 = nullptr;    // fp8 cache [num_blocks, 64, 656 bytes] (instead of cache)
  const int* block_tables = nullptr;  // [S, max_blocks_per_seq]
  int max_blocks_per_seq = 0;
  const bf16* kv_b = nullptr;         // [H·256, 512]: per head W_UK (128 rows) then W_UV (128)
  float scale = 0.f;                  // 1/sqrt(192)
  const MlaPrefillSeg* segs = nullptr;    // device copy of plan.segs
  const MlaPrefillItem* items = nullptr;  // device copy of plan.items
  void* workspace = nullptr;          // mla_prefill_workspace_bytes(piece_rows, H)
  int piece_rows = 0;
  float* state = nullptr;             // [T, H, kMlaStateStride] (needed when plan.uses_state)
  bf16* out = nullptr;                // [T, H, 128]: only the plan's tokens are written
};
void mla_prefill_prepare();
// Runs the plan's rounds on `stream` (gather, GEMM through `gemm`, attention per round).
void run_mla_prefill(const MlaPrefillParams& p, const MlaPrefillPlan& plan, Gemm& gemm,
                     cudaStream_t stream);

}  // namespace kimi::cuda
