// Kimi Delta Attention on the GPU: params structs and run_* launchers (model.md §3).
// Plain header: host code (tests, benchmarks, src/ops/cuda glue) includes it; the __global__ code
// is in kda_*.cuh, instantiated in small .cu files.
//
// Shapes (H = num_heads, D = kKdaHeadDim = 128, C = 3·H·D conv channels, q|k|v side by side):
//   qkv projections (pre-conv)  : [T, C]    bf16
//   f (pre-gate), z (out gate)  : [T, H·D]  bf16
//   b (pre-sigmoid beta)        : [T, H]    bf16
//   conv weight                 : [C, 4]    fp32 (tap 3 multiplies the current token)
//   A_log [H], dt_bias [H·D], o_norm weight [D]: fp32
//   conv state pool             : [num_slots, C, 3] bf16 — the last 3 pre-conv inputs, oldest
//   first.
//       bf16 loses nothing: the conv inputs are bf16 GEMM outputs, so the state holds them exactly.
//   recurrent state pool        : [num_slots, H, D(key), D(value)] fp32, K-major like the CPU
//       reference (row d is scaled by exp(g[d])).
// High precision (docs/precision.md): the prep, the recurrent scan and the gated norm also run
// with T = float for every activation above and the conv state (the *ParamsT<float> overloads);
// the fused decode and the chunked kernels are bf16 only.
// Sequences address their state through slot ids (one id for both pools); slots of one launch must
// be distinct. All pointers are device pointers; every launcher checks its arguments and the
// launch, and throws kimi::Error.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace kimi::cuda {

using bf16 = __nv_bfloat16;

constexpr int kKdaD = 128;  // == kimi::kKdaHeadDim
constexpr float kKdaL2Eps = 1e-6f;
constexpr float kKdaNormEps = 1e-5f;  // rms_norm_eps of the gated output norm

struct KdaWeights {
  const float* conv_weight = nullptr;  // [C, 4]
  const float* A_log = nullptr;        // [H]
  const float* dt_bias = nullptr;      // [H·D]
  const float* o_norm = nullptr;       // [D]
};

// ---- Decode: one fused launch per layer for a batch of single-token sequences. ----
struct KdaDecodeParams {
  int batch = 0;
  int num_heads = 0;
  const int* slots = nullptr;  // [B]; slot < 0 marks a padding row: y row = 0, no state touched
  const bf16* qkv = nullptr;   // [B, C]
  const bf16* b = nullptr;     // [B, H]
  // f and z: either given (the up-projections ran as their own GEMM) ...
  const bf16* f = nullptr;  // [B, H·D]
  const bf16* z = nullptr;  // [B, H·D]
  // ... or, folded (f and z null), formed in the kernel in fp32 from the low-rank halves:
  // f = W_fb·f_low, z = W_gb·g_low. kda_decode_folds_up says where folding pays.
  const bf16* fg_low = nullptr;  // [B, 2·D]: f_low | g_low (the f_a | g_a projections)
  const bf16* fg_b = nullptr;    // [2, H·D, D]: W_fb | W_gb
  KdaWeights w;
  bf16* conv_state = nullptr;  // [num_slots, C, 3], updated in place
  float* state = nullptr;      // [num_slots, H, D, D], updated in place
  bf16* y = nullptr;           // [B, H·D] gated RMSNorm output, ready for o_proj
  int smem_state = -1;         // tuning: -1 = automatic, 0 / 1 = the cluster kernel with S in
                               // registers / staged in shared memory
  int persistent = -1;         // tuning: -1 = automatic, 0 = the cluster kernel (4 CTAs per head),
                               // 1 = the persistent grid (a CTA per (sequence, head) item, TMA)
};
// conv + SiLU -> gate/beta -> L2 norm (q·D^-1/2) -> one recurrence step -> gated RMSNorm.
void run_kda_decode(const KdaDecodeParams& p, cudaStream_t stream);
// Whether the decode of this batch should take the folded up-projections (fg_low, fg_b) rather
// than a separate f/z GEMM: true where the automatic kernel choice folds them (measured,
// docs/perf-log.md session 9). Folded params are accepted at any size.
bool kda_decode_folds_up(int batch, int num_heads);

// ---- Prefill, stage 1: conv + SiLU, L2 norm for a varlen batch. ----
// T: the activations' type, bf16 or float (high precision).
template <typename T>
struct KdaPrepParamsT {
  int num_seqs = 0;
  int num_tokens = 0;  // T = cu_seqlens[num_seqs]
  int num_heads = 0;
  const int* cu_seqlens = nullptr;  // [num_seqs + 1]
  const int* slots = nullptr;       // [num_seqs]
  const T* qkv = nullptr;           // [T, C]
  const T* f = nullptr;             // [T, H·D]
  const T* b = nullptr;             // [T, H]
  KdaWeights w;                     // conv_weight, A_log, dt_bias
  T* conv_state = nullptr;          // [num_slots, C, 3]: read, then set to each sequence's last 3
  T* q = nullptr;                   // [T, H, D]  L2-normed, scaled by D^-1/2
  T* k = nullptr;                   // [T, H, D]  L2-normed
  T* v = nullptr;                   // [T, H, D]
  // bf16's kernel: -1 by step length (kda_prep.cu), 0 the register kernel, 1 the bulk-copy tile
  // kernel (needs 16-byte aligned qkv). fp32 has the register kernel only.
  int tile = -1;
};
using KdaPrepParams = KdaPrepParamsT<bf16>;
// conv + SiLU + L2 norm of q and k (the gate and beta are left to the scans, which read f and b:
// 2 bytes per element instead of the 4 + 4 of an fp32 g written here and read back).
// Two launches: the prep itself, then the conv-state update (which must follow every read).
// f, b and w.A_log, w.dt_bias are not read.
void run_kda_prep(const KdaPrepParamsT<bf16>& p, cudaStream_t stream);
void run_kda_prep(const KdaPrepParamsT<float>& p, cudaStream_t stream);

// ---- Prefill, stage 2: the gated delta rule over a varlen batch. ----
template <typename T>
struct KdaScanParamsT {
  int num_seqs = 0;
  int num_tokens = 0;
  int num_heads = 0;
  const int* cu_seqlens = nullptr;  // [num_seqs + 1]
  const int* slots = nullptr;       // [num_seqs]
  const T* q = nullptr;             // [T, H, D] as written by run_kda_prep
  const T* k = nullptr;
  const T* v = nullptr;
  // The gate g = −exp(A_log)·softplus(f + dt_bias) and β = sigmoid(b) are computed on the fly
  // (fp32, the formulas of the decode kernel) from the raw projections:
  const T* f = nullptr;    // [T, H·D] pre-gate
  const T* b = nullptr;    // [T, H]   pre-sigmoid beta
  KdaWeights w;            // A_log, dt_bias (conv_weight and o_norm are not read)
  float* state = nullptr;  // [num_slots, H, D, D]: initial state in, final state out
  T* o = nullptr;          // [T, H, D]
};
using KdaScanParams = KdaScanParamsT<bf16>;
// The scan of what a prep wrote: its sequences, slots, q/k/v, f, b and weights.
template <typename T>
KdaScanParamsT<T> kda_scan_after_prep(const KdaPrepParamsT<T>& pp, float* state, T* o) {
  KdaScanParamsT<T> sp;
  sp.num_seqs = pp.num_seqs;
  sp.num_tokens = pp.num_tokens;
  sp.num_heads = pp.num_heads;
  sp.cu_seqlens = pp.cu_seqlens;
  sp.slots = pp.slots;
  sp.q = pp.q;
  sp.k = pp.k;
  sp.v = pp.v;
  sp.f = pp.f;
  sp.b = pp.b;
  sp.w = pp.w;
  sp.state = state;
  sp.o = o;
  return sp;
}
// Token-by-token recurrence (the definition), state in registers: short sequences, and every
// step in high precision (fp32 throughout: the CPU recurrence up to summation order).
void run_kda_scan_recurrent(const KdaScanParamsT<bf16>& p, cudaStream_t stream);
void run_kda_scan_recurrent(const KdaScanParamsT<float>& p, cudaStream_t stream);

// Chunked WY/UT form (chunk 64, model.md §3.5): an intra-chunk kernel (parallel over chunks and
// heads) packs each chunk into W, U, decayed Q and K, the causal q·k decay matrix and the chunk's
// total decay; an inter-chunk kernel (sequential over a sequence's chunks, split over value
// columns) carries the fp32 state on tensor cores (wgmma) and writes o. Needs a plan made from the
// host copy of cu_seqlens (plan/run split: it depends only on batch metadata) and a workspace.
struct KdaChunkPlan {
  int num_chunks = 0;
  std::vector<int> chunk_seq;        // [num_chunks] sequence of each chunk (a sequence's in order)
  std::vector<int> chunk_start;      // [num_chunks] first token of each chunk
  std::vector<int> seq_first_chunk;  // [num_seqs + 1] chunks of sequence s: [first[s], first[s+1])
};
KdaChunkPlan make_kda_chunk_plan(const int* cu_seqlens_host, int num_seqs);
// Workspace bytes for a plan with `num_chunks` chunks and `num_heads` heads (72.5 KiB each).
size_t kda_chunked_workspace_bytes(int num_chunks, int num_heads);
struct KdaChunkedArgs {
  int num_chunks = 0;
  const int* chunk_seq = nullptr;  // device copies of the plan's arrays
  const int* chunk_start = nullptr;
  const int* seq_first_chunk = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int stages = 3;  // benchmarking: bit 0 runs the intra-chunk kernel, bit 1 the inter-chunk one
};
void run_kda_chunked(const KdaScanParams& p, const KdaChunkedArgs& a, cudaStream_t stream);
// The intra-chunk kernel takes the diagonal 4×4 tiles of a chunk's 16-row block through each
// tile's first column as reference when, for every such tile and every channel, Γ₂ (the gate's
// cumsum in log2 units) falls by at most this much over the tile's 4 rows; otherwise those 4
// tiles take one exp per pair. (Exposed for the tests, which check that both paths run.)
constexpr float kKdaDiagRefSpread = 96.f;

// ---- Output: y = o / sqrt(mean(o²) + eps) · w · sigmoid(z), per head over D. ----
template <typename T>
struct KdaGatedNormParamsT {
  int num_tokens = 0;
  int num_heads = 0;
  const T* o = nullptr;           // [T, H, D]
  const T* z = nullptr;           // [T, H·D]
  const float* weight = nullptr;  // [D]
  T* y = nullptr;                 // [T, H·D]; may alias o
};
using KdaGatedNormParams = KdaGatedNormParamsT<bf16>;
void run_kda_gated_rmsnorm(const KdaGatedNormParamsT<bf16>& p, cudaStream_t stream);
void run_kda_gated_rmsnorm(const KdaGatedNormParamsT<float>& p, cudaStream_t stream);

}  // namespace kimi::cuda
