// Internals of CudaModel shared by cuda_model.cpp (start-up, forward) and cuda_weights.cpp
// (weight layout, upload, random draw). Host C++: calls the launchers of kernels/ through their
// plain headers.
#pragma once

#if KIMI_HAVE_CUDA

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "comm/peer_allreduce.h"
#include "common.h"
#include "gemm/gemm.h"
#include "misc/misc.h"
#include "mla/mla.h"
#include "moe/moe.h"
#include "model/cuda_model.h"
#include "model/tensor_parallel.h"
#include "ops/cuda/device_buffer.h"

namespace kimi {

using cuda::bf16;

// Bump allocator over one device allocation. Pass 1 (base == nullptr) only measures; pass 2
// hands out the same offsets inside the real buffer.
struct Carver {
  uint8_t* base = nullptr;
  size_t used = 0;
  template <typename T>
  T* take(size_t n) {
    used = (used + 255) & ~size_t(255);
    T* p = base ? reinterpret_cast<T*>(base + used) : nullptr;
    used += n * sizeof(T);
    return p;
  }
};

struct DevKda {
  bf16* qkv = nullptr;    // [3·H·D, hidden]
  bf16* fg_a = nullptr;   // [2·D, hidden]: f_a | g_a
  bf16* b = nullptr;      // [H, hidden]
  bf16* fg_b = nullptr;   // [2, H·D, D]: f_b | g_b (one batched GEMM)
  bf16* o = nullptr;      // [hidden, H·D]
  float* conv = nullptr;  // [3·H·D, 4]
  float* A_log = nullptr; // [H]
  float* dt_bias = nullptr;  // [H·D]
  float* o_norm = nullptr;   // [D]
};
struct DevMla {
  bf16* q = nullptr;        // [H·192, hidden]
  bf16* kv_a = nullptr;     // [576, hidden]
  float* kv_norm = nullptr; // [512]
  bf16* kv_b = nullptr;     // [H·256, 512]
  bf16* o = nullptr;        // [hidden, H·128]
};
struct DevMlp {
  int inter = 0;
  bf16* gate_up = nullptr;  // [2·inter, hidden]: gate | up
  bf16* down = nullptr;     // [hidden, inter]
};
struct DevMoe {
  float* router = nullptr;  // [E, hidden] fp32: routing picks discrete experts, keep it exact
  float* bias = nullptr;    // [E]
  bf16* w13 = nullptr;      // [E (+1), 2I, hidden]: w1 | w3 per expert
  bf16* w2 = nullptr;       // [E (+1), hidden, I]
  bool shared_in_experts = false;  // the one shared expert is expert E of w13/w2
  DevMlp shared;                   // its gate_up/down point there then
};
struct DevLayer {
  float* in_norm = nullptr;
  float* post_norm = nullptr;
  DevKda kda;
  DevMla mla;
  DevMlp mlp;
  DevMoe moe;
};

// One checkpoint tensor, or the rank's slice of it, in a weight fill.
struct WeightPart {
  std::string name;
  TensorSlice slice;
};
// One destination of the weight arena and the checkpoint tensors concatenated into it.
struct WeightFill {
  void* dst = nullptr;
  bool bf16 = true;  // else fp32
  std::vector<WeightPart> parts;
};

// The KDA activations of one step: bf16, or fp32 in high precision (ModelOptions::precision).
template <typename T>
struct KdaActs {
  T *qkv, *low, *bb, *f, *z, *q, *k, *v, *o, *y;
};

struct CudaModel::Impl {
  ModelConfig full_cfg;  // the whole model (checkpoint names and shapes, vocabulary of the ids)
  ModelConfig cfg;       // this rank's share (rank_config): local heads, intermediate, vocabulary
  TpRank tp;
  ModelOptions opts;
  CacheSizes cache;
  int device = 0;
  cudaDeviceProp prop{};
  cudaStream_t stream = nullptr;
  std::unique_ptr<cuda::Gemm> gemm;

  // Weights.
  cuda::DeviceBuffer<uint8_t> weight_buf;
  bf16* embed = nullptr;      // [V, hidden]
  float* final_norm = nullptr;
  bf16* lm_head = nullptr;    // [V, hidden]
  std::vector<DevLayer> layers;
  std::vector<WeightFill> fills;

  // Caches.
  cuda::DeviceBuffer<uint8_t> cache_buf;
  void* conv_state = nullptr;  // [Lk, slots, C, 3] bf16, fp32 in high precision
  size_t conv_elem = 2;        // its element bytes
  float* kda_state = nullptr;  // [Lk, slots, H, D, D]
  uint8_t* mla_cache = nullptr;  // [Lm, blocks, 64, 576] bf16, or fp8 [Lm, blocks, 64, 656 bytes]
  size_t conv_per_slot = 0, state_per_slot = 0, mla_block_bytes = 0;
  bool fp8_cache = false;  // ModelOptions::kv_cache_dtype fp8 (kernels/mla/mla.h's record)

  // Activation arena (sized for Tm = opts.max_batch_tokens).
  cuda::DeviceBuffer<uint8_t> arena_buf;
  int Tm = 0, logit_rows = 0, max_partials = 0, kda_chunk_cap = 0;
  int mla_piece = 0;  // context positions per round of the expanded MLA prefill
  struct Act {
    float* x;          // [Tm, hidden] residual stream
    bf16* a;           // [Tm, hidden] normed input of a block (bf16 precision)
    KdaActs<bf16> kda;    // bf16 precision
    KdaActs<float> kda32; // high precision
    void* kda_ws;   // chunked KDA workspace for kda_chunk_cap chunks
    size_t kda_ws_bytes;
    bf16 *mq, *q_abs, *u, *attn;  // MLA
    float *latent, *partials;
    void* mla_ws;                 // expanded prefill: one round's gathered latents and K/V
    float* mla_state;             // [Tm, H, 130] its (o, m, l) across rounds: aliases u
    float* gu;                    // dense MLP / shared expert: gate | up, fp32
    bf16* act;                    // SiLU(gate)·up (bf16 precision)
    // hf: [Tm, hidden] fp32 normed input of the router, and of every block in high precision.
    float *hf, *router_logits, *route_w;
    int* route_ticket;                    // the fused decode routing's ticket (zeroed once)
    // The fused one-token MoE block (run_moe_decode_fused): scratch and grid barrier (zeroed once).
    float* moe_fused_scratch;
    unsigned* moe_fused_barrier;
    int *route_ids, *perm_ws;
    bf16* moe_act;
    float* moe_y;
    bf16* final_x;                // [logit_rows, hidden]
    float* logits;                // [logit_rows, V]
    // High precision only (docs/precision.md):
    bf16* planes;      // [2, Tm, max K]: hi and lo planes of the next split GEMM input
    float* mq32;       // [Tm, H·192] the MLA q projection, before its rounding into mq (bf16
                       // precision: the fused small-decode chain's, kMlaLayerMaxTokens rows)
    float* act32;      // [Tm, inter] dense / shared-expert SiLU(gate)·up
    bf16* moe_act_lo;  // [Tm·(K+1), moe inter] lo plane of the expert activations
  } act{};

  // Per-step metadata: one pinned host staging buffer and its device twin (grown if a batch
  // needs more; a step of the sizes seen before allocates nothing).
  cuda::DeviceBuffer<int> meta_dev;
  int* meta_host = nullptr;
  size_t meta_cap = 0;
  std::vector<float> layer_out;  // on_layer_output staging
  // forward_sampled: pinned staging of the draws and tokens, and its device twin.
  uint8_t* draw_host = nullptr;
  size_t draw_cap = 0;
  cuda::DeviceBuffer<uint8_t> draw_dev;
  cuda::DeviceBuffer<float> gather;  // rank 0 under TP: the ranks' logits slices side by side
  bool warned_recurrent = false;
  // Per-component timing (eager steps only): events at every layer boundary.
  bool profile = false;
  std::vector<cudaEvent_t> prof_ev;
  std::vector<cudaEvent_t> prof_ar_ev;  // before/after each tensor-parallel all-reduce
  // Small all-reduces through peer memory when set (set_peer_allreduce).
  bool peer_ar = false;
  bool peer_push = true;  // the one-shot push kernel (else the pull kernel)
  cuda::PeerAllReduceView peer;
  int prof_ar_used = 0;
  std::map<std::string, double> prof_ms;
  std::map<std::string, int> prof_steps;
  // CUDA graphs of decode steps, keyed by (batch size, block-table width); replayed with the
  // step's metadata copied into the same device buffer. Env KIMI_CUDA_GRAPHS=0 turns them off.
  bool use_graphs = true;
  std::map<std::pair<int, int>, cudaGraphExec_t> graphs;
  void drop_graphs();
  // Debug (env KIMI_CUDA_KDA): 0 auto (fused decode, chunked prefill), 1 recurrent scan only,
  // 2 chunked only (no fused decode).
  int kda_path = 0;
  bool mla_tensor_cores = true;  // MLA attention on tensor cores (KIMI_CUDA_MLA)
  // Steps of 1-2 tokens run the MLA layer as the fused chain of mla_layer.h (KIMI_CUDA_MLA_LAYER=gemm:
  // the GEMM chain, for comparison).
  bool mla_fused_chain = true;
  // Long prefills of MLA in the expanded form (KIMI_CUDA_MLA_PREFILL=absorbed: never).
  bool mla_expanded = true;
  bool moe_wgmma = true;         // prefill expert GEMMs on wgmma, else the old WMMA tiles (KIMI_CUDA_MOE)
  // Average rows per expert up to which the small-M gemv runs, and from which the 128-row wgmma
  // tiles do (between them: 16-row tiles); KIMI_CUDA_MOE_GEMV_ROWS / KIMI_CUDA_MOE_WGMMA_ROWS.
  int moe_gemv_rows = cuda::kMoeGemvMaxRowsPerExpert;
  int moe_wgmma_rows = cuda::kMoeWgmmaMinRowsPerExpert;
  // Decode: RMSNorms folded into the MoE routing and un-permute launches (KIMI_CUDA_FUSE_NORM=0:
  // separate launches, for comparison). Off in high precision (they write bf16 only).
  bool fuse_norms = true;
  // One-token decode steps run each MoE block as one persistent launch (run_moe_decode_fused)
  // where the device fits it (KIMI_CUDA_MOE_FUSED=0: the routing, expert and un-permute launches).
  bool moe_fused = true;
  // ModelOptions::precision == kHigh: hi/lo split GEMM inputs, KDA in fp32 by the recurrent scan.
  bool high = false;

  ~Impl();
  size_t weight_bytes() const { return weight_buf.bytes(); }
  // cuda_weights.cpp
  size_t layout_weights(Carver& c);  // sets pointers (pass 2) and fills
  void load_weights(const Checkpoint& ckpt);
  void draw_weights(uint64_t seed);
  // cuda_model.cpp
  size_t layout_arena(Carver& c);
  // Bytes of the weights, the activation arena, workspace + reserve, one KDA slot and one MLA
  // block (sets the sizes the layouts use: Tm, logit_rows, ...). Allocates nothing.
  struct Sizes {
    size_t weights = 0, arena = 0, fixed = 0, slot = 0, block = 0;
  };
  Sizes plan_sizes();
};

}  // namespace kimi

#endif
