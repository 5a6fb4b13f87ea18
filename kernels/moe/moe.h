// MoE block on the GPU (model.md §5): routing, permutation by expert, grouped expert GEMMs,
// weighted un-permute. Everything stays on the device (no host sync): launch shapes use upper
// bounds and CTAs past the real work exit at once, so a step is CUDA-graph friendly.
//
//   route     : s = sigmoid(logits) (fp32), top-k of s + bias (ties: lower expert), weights =
//               s[idx] (unbiased), renormalised (sum), × scaling. One warp per token.
//   permute   : counts per expert → offsets (exclusive scan) → each (t, k) pair gets a row in
//               its expert's contiguous range: row_token[row] = t, pair_row[t·K + k] = row.
//               Row order inside an expert is not deterministic; every row's values are.
//   grouped GEMM (tensor cores, mma.sync through WMMA, fp32 accumulate), per expert e and its rows:
//     gate_up : act[row] = SiLU(x[row_token[row]] · W1_eᵀ) ⊙ (x[row_token[row]] · W3_eᵀ)
//               w13: [E, 2I, hidden] (rows 0..I−1 = w1 = gate, I..2I−1 = w3 = up) → act [R, I] bf16
//     down    : y[row] = act[row] · W2_eᵀ,  w2: [E, hidden, I] → y [R, hidden] fp32 (unrounded:
//               it is summed straight into the fp32 residual stream)
//   unpermute : out[t] (+)= Σ_k w[t, k] · y[pair_row[t·K + k]]  (fp32; accumulate adds into the
//               residual stream).
// R = T·K rows. Tiles: BM rows × 64 columns × 32 k per step, 4 warps; BM = 16 for small batches,
// 64 otherwise. tile_start[e] = Σ_{e' < e} ceil(count[e'] / BM) lets a CTA find its expert.
// Three kernels run the grouped GEMMs (same inputs, outputs and workspace; moe_gemm_path picks):
//   wgmma : prefill-sized batches (compute-bound) on Hopper: 128-row tiles (block_m 128) ×
//           128 or 256 weight rows, warp-specialised: a producer warpgroup gathers the input
//           rows with cp.async and the weights with TMA into mbarrier rings, two consumer
//           warpgroups run wgmma from 128-byte-swizzled shared memory, SwiGLU in registers
//           (moe_wgmma.cuh).
//   tiled : the WMMA tiles above (block_m 16 or 64): the previous prefill kernel, kept for
//           comparison and for permutations of 16/64-row tiles.
//   gemv  : decode-sized batches (experts with 1..16 rows, bandwidth-bound): CTA = (row tile,
//           32 weight rows), 8 warps split k and stream the weights with 16-byte loads into
//           mma.sync with the weights as the M side (moe_gemv.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kimi::cuda {

using bf16 = __nv_bfloat16;

struct MoeRouteParams {
  int num_tokens = 0;
  int num_experts = 0;   // E <= 1024
  int top_k = 0;         // K <= 32
  bool renormalize = true;
  float scaling = 1.f;
  const float* logits = nullptr;           // [T, E]
  const float* correction_bias = nullptr;  // [E]
  int* expert_ids = nullptr;               // [T, K], best first
  float* weights = nullptr;                // [T, K]
  // >= 0: each token gets K + 1 entries ([T, K + 1]), the last (shared_expert, weight 1): the
  // shared expert, stored as one more expert, runs in the same grouped launches as the routed.
  int shared_expert = -1;
  // Expert parallelism: this GPU runs experts [expert_first, expert_first + local_experts) only.
  // The selection and weights are over all E; expert_ids holds local ids (e − expert_first) and
  // −1 for another GPU's expert (the permutation skips it, the un-permute adds nothing for it).
  // local_experts 0: all E (no expert parallelism).
  int expert_first = 0;
  int local_experts = 0;
};
void run_moe_route(const MoeRouteParams& p, cudaStream_t stream);

// Decode steps (num_tokens <= moe_route_decode_max_tokens()): the router logits (fp32 x · fp32
// routerᵀ, written to route.logits), run_moe_route and run_moe_permute in one launch, with the
// same outputs. ticket: one int of device memory, zero before the first launch (each launch
// leaves it zero).
struct MoeRouteDecodeParams {
  MoeRouteParams route;          // logits: written here, then read back by the routing
  const float* x = nullptr;      // [T, hidden] normed input, fp32 (the residual with norm_weight)
  // The block's RMSNorm fused in (one launch fewer): with norm_weight set, x is the residual
  // stream, the router reads RMSNorm(x) · norm_weight in fp32 and `normed` receives it in bf16
  // (the experts' input), as run_rmsnorm would write it.
  const float* norm_weight = nullptr;  // [hidden]
  float eps = 1e-5f;
  bf16* normed = nullptr;              // [T, hidden]
  const float* router = nullptr; // [E, hidden] fp32
  int hidden = 0;                // multiple of 4
  int block_m = 16;              // of the grouped GEMMs that follow
  int* workspace = nullptr;      // permutation workspace: moe_permute_workspace_ints(E', T·K')
  int* ticket = nullptr;
  // Benchmarks only (null otherwise): %globaltimer (ns) at the kernel's phase boundaries,
  // kMoeRouteStamps values: CTA 0 at entry, after the wait, logits published, normed slice
  // written; the routing CTA after its ticket, after routing, at the end.
  unsigned long long* stamps = nullptr;
};
constexpr int kMoeRouteStamps = 7;
// Most tokens the fused launch takes for E experts (its shared memory holds 3·T·E scores and ranks).
int moe_route_decode_max_tokens(int num_experts);
void run_moe_route_decode(const MoeRouteDecodeParams& p, cudaStream_t stream);

// Device workspace of the permutation for up to max_rows = T·K rows and E experts (ints):
//   counts [E], cursor [E], offsets [E + 1], tile_start [E + 1], row_token [R], pair_row [R],
//   gemm_next [2] (the wgmma GEMMs' item counters: zeroed by the permutation, each launch leaves
//   its counter zero).
size_t moe_permute_workspace_ints(int num_experts, int64_t max_rows);

struct MoePermuteParams {
  int num_tokens = 0;
  int num_experts = 0;
  int top_k = 0;
  int block_m = 64;                // BM of the grouped GEMMs that follow (16, 64 or 128)
  const int* expert_ids = nullptr; // [T, K]
  int* workspace = nullptr;        // moe_permute_workspace_ints(E, T·K) ints
};
void run_moe_permute(const MoePermuteParams& p, cudaStream_t stream);
// Views into the permutation workspace.
struct MoePermuteView {
  int* counts;
  int* cursor;
  int* offsets;
  int* tile_start;
  int* row_token;
  int* pair_row;
  int* gemm_next;
};
MoePermuteView moe_permute_view(int* workspace, int num_experts, int64_t max_rows);
// Upper bound on grouped-GEMM row tiles for R rows over E experts with tile BM.
inline int moe_max_tiles(int64_t rows, int num_experts, int block_m) {
  const int64_t busy = rows < num_experts ? rows : num_experts;
  return int((rows + block_m - 1) / block_m + busy);
}

// kAuto: wgmma when the tiles are of 128 rows (block_m 128, what the model picks once experts
// average kMoeWgmmaMinRowsPerExpert+ rows); gemv when they are of 16 rows and
// T·K <= gemv_max_rows_per_expert · E (decode: few rows per expert); else tiled. kTiled / kGemv /
// kWgmma force a kernel (tests, benchmarks): tiled needs block_m 16 or 64, wgmma block_m 128;
// gemv runs any shape but re-reads the weights for every 16 rows of a tile.
enum class MoeGemmPath { kAuto, kTiled, kGemv, kWgmma };
inline constexpr int kMoeGemvMaxRowsPerExpert = 4;
// From 1 row per expert (T >= 32 at 256 experts top-8) the persistent wgmma kernel beats the
// gemv and the 16-row tiles in the whole model: batch-32 decode 7.22 -> 5.18 ms a step, 1.6x at
// batch 64 (against gemv), 1.7x at batch 128 and in 256- and 512-token prefill steps (against the
// tiles); docs/perf-log.md sessions 12-13. Below (T < 32) gemv stays: at T = 16 the kernel table
// (uniform routing) has wgmma 7% faster, not measured in the model.
inline constexpr int kMoeWgmmaMinRowsPerExpert = 1;
// block_m of the permutation for a batch of T·K rows over E experts: 128 (the wgmma kernel) once
// experts average wgmma_min_rows+ rows, else 16 (decode-sized: gemv or 16-row tiles).
inline int moe_block_m(int64_t rows, int num_experts,
                       int wgmma_min_rows = kMoeWgmmaMinRowsPerExpert) {
  return rows >= int64_t(wgmma_min_rows) * num_experts ? 128 : 16;
}

struct MoeGemmParams {
  int num_tokens = 0;
  int num_experts = 0;
  int top_k = 0;
  int block_m = 64;                 // of the permutation: 16 or 64 (tiled, gemv), 128 (wgmma)
  int hidden = 0;                   // model hidden size (K of gate_up, N of down)
  int inter = 0;                    // I (N of gate_up, K of down); multiples of 8
  const int* workspace = nullptr;   // the permutation workspace (after run_moe_permute)
  const bf16* x = nullptr;          // [T, hidden] normed input
  const bf16* w13 = nullptr;        // [E, 2I, hidden]
  const bf16* w2 = nullptr;         // [E, hidden, I]
  bf16* act = nullptr;              // [T·K, I]
  float* y = nullptr;               // [T·K, hidden]
  MoeGemmPath path = MoeGemmPath::kAuto;
  int gemv_max_rows_per_expert = kMoeGemvMaxRowsPerExpert;  // kAuto's gemv bound (see above)
  // High precision (docs/precision.md), both or neither: the lo planes of x and act (x = hi + lo,
  // each bf16; x and act hold the hi planes). Both GEMMs then run a second k pass over the lo plane
  // with the same weights (W·hi + W·lo, one fp32 accumulator), and gate_up writes SiLU(g)·u split
  // into act (hi) and act_lo. The gemv and wgmma kernels only (the tiled kernel refuses).
  const bf16* x_lo = nullptr;       // [T, hidden]
  bf16* act_lo = nullptr;           // [T·K, I]
  bool split() const { return x_lo != nullptr; }
};
void run_moe_gate_up(const MoeGemmParams& p, cudaStream_t stream);
void run_moe_down(const MoeGemmParams& p, cudaStream_t stream);
// The kernel run_moe_gate_up / run_moe_down launch for p: kTiled, kGemv or kWgmma, never kAuto.
MoeGemmPath moe_gemm_path(const MoeGemmParams& p);
namespace moe {
// The gemv kernels (moe_gemv.cu); run_moe_gate_up / run_moe_down call it after their checks.
void launch_moe_gemv(const MoeGemmParams& p, bool swiglu, cudaStream_t stream);
// Dynamic shared memory of the gemv kernel for p (bytes): the staged input rows or the k-split
// reduction, whichever is larger.
size_t moe_gemv_smem_bytes(const MoeGemmParams& p, bool swiglu);
// The wgmma kernel (moe_wgmma.cu, warp-specialised, persistent: one CTA per SM over the work
// items): tiles of 128 rows × bn weight rows (128 or 256) through a ring of `stages` k steps of
// 64. max_ctas (tests): caps the grid (0: one CTA per SM). bench_moe times all of
// kMoeWgmmaTiles, test_moe_gpu checks all of them; run_moe_gate_up / run_moe_down take
// moe_wgmma_tile(p).
struct MoeWgmmaTile {
  int bn;
  int stages;
  int max_ctas = 0;
};
inline constexpr MoeWgmmaTile kMoeWgmmaTiles[] = {{128, 4}, {128, 6}, {256, 3}, {256, 4}};
// 128 × 256, 4 stages at every size: fastest of the four at T = 4096 and 16384 (bench_moe, H200,
// docs/perf-log.md sessions 5 and 12).
inline MoeWgmmaTile moe_wgmma_tile(const MoeGemmParams&) {
  return MoeWgmmaTile{256, 4};
}
void launch_moe_wgmma(const MoeGemmParams& p, bool swiglu, MoeWgmmaTile tile, cudaStream_t stream);
}  // namespace moe

// The whole MoE block of a one-token decode step in one persistent launch (moe_decode.cuh), for
// one GPU or one tensor-parallel rank with the experts split by intermediate dimension (every
// expert on every rank, I its slice; not expert parallelism), bf16 weights, the shared expert
// stored as expert E:
//   a = RMSNorm(x)·norm_weight;  logits = a·routerᵀ (fp32);  route (as run_moe_route);
//   x = (accumulate ? x : 0) + Σ_k w_k · down_k(SiLU(gate_k(bf16 a)) ⊙ up_k(bf16 a))
//       (+ the shared expert, weight 1);
//   next_normed = bf16(RMSNorm(x)·next_norm)  (optional, accumulate only: the next block's input).
// Same arithmetic as run_moe_route_decode (with its norm) → gate_up → down → run_moe_unpermute
// (with the next norm), up to the order of the sums of squares. One CTA per multiprocessor, all
// resident at once: the phases meet at grid-wide barriers (the barrier's two uints: zero before
// the first launch; each launch leaves them ready for the next).
struct MoeDecodeFusedParams {
  MoeRouteParams route;          // num_tokens 1, no expert parallelism; logits: written here;
                                 // expert_ids / weights: K (+ 1 with shared_expert == E) entries
  float* x = nullptr;            // [hidden] the residual stream, updated in place
  const float* norm_weight = nullptr;  // [hidden] the block's RMSNorm
  float eps = 1e-5f;
  const float* router = nullptr; // [E, hidden] fp32
  const bf16* w13 = nullptr;     // [E (+ 1), 2I, hidden]
  const bf16* w2 = nullptr;      // [E (+ 1), hidden, I]
  int hidden = 0;                // multiple of 8, <= kMoeDecodeFusedMaxHidden
  int inter = 0;                 // multiple of 8, <= kMoeDecodeFusedMaxInter
  // false: x is overwritten with this rank's partial of the block (a tensor-parallel rank other
  // than 0; the all-reduce that follows adds the residual back once, as run_moe_unpermute's).
  bool accumulate = true;
  const float* next_norm = nullptr;  // [hidden] or null
  bf16* next_normed = nullptr;       // [hidden]
  float* scratch = nullptr;          // moe_decode_fused_scratch_floats(...)
  unsigned* barrier = nullptr;       // 2 uints
  // Benchmarks only (null otherwise; zero before the launch): %globaltimer (ns), kMoeFusedStamps
  // values: CTA 0 at entry, after the wait, logits published, after barrier 1, routed, gate_up
  // done, after barrier 2, down done; the last CTA done once it knows it, with the residual
  // written; the last CTA's gate_up and down ends; CTA 0's routing warp with its scores, with its
  // choice; CTA 0 counted done; the last CTA's end.
  unsigned long long* stamps = nullptr;
};
constexpr int kMoeFusedStamps = 16;
constexpr int kMoeDecodeFusedMaxHidden = 2304, kMoeDecodeFusedMaxInter = 1024;
size_t moe_decode_fused_scratch_floats(int top_k, int hidden, int inter);
// Whether this device runs the fused kernel (one CTA on every multiprocessor must fit).
bool moe_decode_fused_supported();
void run_moe_decode_fused(const MoeDecodeFusedParams& p, cudaStream_t stream);

struct MoeUnpermuteParams {
  int num_tokens = 0;
  int top_k = 0;
  int hidden = 0;
  int num_experts = 0;
  const int* workspace = nullptr;  // permutation workspace (pair_row)
  const float* weights = nullptr;  // [T, K]
  const float* y = nullptr;        // [T·K, hidden]
  float* out = nullptr;            // [T, hidden]
  bool accumulate = true;          // out += Σ (else out = Σ)
  // The next block's RMSNorm fused in (accumulate only: out is then the whole residual row):
  // normed = bf16(RMSNorm(out) · norm_weight), what run_rmsnorm writes up to the order of the
  // sum of squares (within one bf16 ulp). A cluster of 8 CTAs per token (hidden <=
  // kMoeUnpermuteNormMaxHidden): for decode-sized steps, where it saves the norm's launch.
  const float* norm_weight = nullptr;  // [hidden]
  float eps = 1e-5f;
  bf16* normed = nullptr;              // [T, hidden]
};
void run_moe_unpermute(const MoeUnpermuteParams& p, cudaStream_t stream);
constexpr int kMoeUnpermuteNormMaxHidden = 8 * 1024;

}  // namespace kimi::cuda
