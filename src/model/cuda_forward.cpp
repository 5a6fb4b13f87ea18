// CudaModel::forward: per-step metadata (one H2D copy), then the layers as straight-line calls
// of the launchers, every projection through cuBLASLt with fp32 accumulation.
// High precision (ModelOptions::precision, docs/precision.md): the block inputs stay fp32 (act.hf),
// every large-share GEMM input is split into bf16 hi + lo planes (split_input) and its GEMM runs
// over both (Gemm::run_hilo, or the expert kernels' second k pass), KDA runs in fp32 through the
// prep, the recurrent scan and the gated norm at every step.
#if KIMI_HAVE_CUDA

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>

#include <spdlog/spdlog.h>
#if KIMI_HAVE_NCCL
#include <nccl.h>
#endif

#include "core/check.h"
#include "kda/kda.h"
#include "mla/mla.h"
#include "mla/mla_layer.h"
#include "model/cuda_model.h"
#include "model/cuda_model_impl.h"
#include "moe/moe.h"
#include "norm/norm.h"
#include "sampling/logprobs.h"
#include "sampling/sampling.h"

namespace kimi {

using cuda::GemmArgs;
using cuda::GemmOut;

constexpr int kHeadRowsPerHead = kMlaNopeDim + kMlaVDim;  // kv_b rows per head

namespace {

static_assert(sizeof(cuda::MlaWorkItem) == 7 * sizeof(int), "MlaWorkItem is packed as 7 ints");
static_assert(sizeof(cuda::MlaPrefillItem) == 7 * sizeof(int), "MlaPrefillItem: 7 ints");
static_assert(sizeof(cuda::MlaPrefillSeg) == 4 * sizeof(int), "MlaPrefillSeg: 4 ints");

// Device views of one step's metadata.
struct StepMeta {
  int T = 0, S = 0, R = 0, mb = 0;
  int *tokens, *cu, *ctx, *slots, *tables, *rows, *split_base, *num_splits;
  const cuda::MlaWorkItem *items1, *items4;
  int n1 = 0, n4 = 0, num_partials = 0;
  // Expanded MLA prefill of the long prefills (host plan; its segments and items on the device).
  const cuda::MlaPrefillPlan* prefill = nullptr;
  const cuda::MlaPrefillSeg* pf_segs = nullptr;
  const cuda::MlaPrefillItem* pf_items = nullptr;
  int num_chunks = 0;  // chunked KDA plan (0: decode step or recurrent fallback)
  int *chunk_seq = nullptr, *chunk_start = nullptr, *seq_first_chunk = nullptr;
};

// The residual update of a sub-layer whose output is a sum over ranks: rank 0 adds its partial
// into the residual stream x, the others overwrite x with theirs, and the all-reduce that
// follows leaves x + Σ partials on every rank (model/tensor_parallel.h).
float residual_beta(const CudaModel::Impl& m) { return m.tp.rank == 0 ? 1.f : 0.f; }

// The all-reduce after a sub-layer. norm_weight: the next sub-layer's RMSNorm, which the push
// kernel applies on the way (act.a = bf16(RMSNorm(x)·norm_weight), as rmsnorm() writes it);
// returns whether it did (bf16 path only: high precision also needs the fp32 input).
bool all_reduce_residual(CudaModel::Impl& m, int T, const float* norm_weight = nullptr) {
  if (m.tp.world == 1) return false;
  bool normed = false;
#if KIMI_HAVE_NCCL
  const bool prof = m.profile && m.prof_ar_used + 2 <= int(m.prof_ar_ev.size());
  if (prof) CUDA_CHECK(cudaEventRecord(m.prof_ar_ev[m.prof_ar_used], m.stream));
  const int hid = m.cfg.hidden_size;
  const int64_t n = int64_t(T) * hid;
  if (m.peer_ar && n <= m.peer.capacity && n % 4 == 0) {  // small: through peer memory
    if (m.peer_push && hid % 4 == 0) {
      cuda::PeerPushParams p;
      p.rows = T;
      p.dim = hid;
      p.x = m.act.x;
      if (norm_weight && !m.high && m.fuse_norms) {
        p.norm_weight = norm_weight;
        p.eps = m.cfg.rms_norm_eps;
        p.normed = m.act.a;
        normed = true;
      }
      cuda::run_peer_allreduce_push(m.peer, p, m.stream);
    } else {
      cuda::run_peer_allreduce(m.peer, m.act.x, n, m.stream);
    }
  } else {
    const ncclResult_t r = ncclAllReduce(m.act.x, m.act.x, size_t(n), ncclFloat, ncclSum,
                                         static_cast<ncclComm_t>(m.tp.comm), m.stream);
    if (r != ncclSuccess) fail("NCCL all-reduce failed on rank ", m.tp.rank, ": ", ncclGetErrorString(r));
  }
  if (prof) {
    CUDA_CHECK(cudaEventRecord(m.prof_ar_ev[m.prof_ar_used + 1], m.stream));
    m.prof_ar_used += 2;
  }
#else
  KIMI_CHECK(false, "tensor parallelism without NCCL");
#endif
  return normed;
}

// High precision: x [rows, cols] fp32 into the hi plane (act.planes) and the lo plane after it
// (rows·cols further), the input of a Gemm::run_hilo with lo offset rows·cols.
const bf16* split_input(CudaModel::Impl& m, const float* x, int rows, int cols) {
  const int64_t n = int64_t(rows) * cols;
  cuda::SplitParams p;
  p.n = n;
  p.x = x;
  p.hi = m.act.planes;
  p.lo = m.act.planes + n;
  cuda::run_split_bf16(p, m.stream);
  return m.act.planes;
}

// The KDA mixer on activations of type E: bf16, or fp32 in high precision (hi/lo split GEMM
// inputs, fp32 projections and prep, the recurrent scan at every step).
template <typename E>
void kda_mixer(CudaModel::Impl& m, const DevKda& w, int kind, const StepMeta& s, const KdaActs<E>& A) {
  constexpr bool kHigh = std::is_same_v<E, float>;
  constexpr GemmOut kOut = kHigh ? GemmOut::kF32 : GemmOut::kBF16;
  const ModelConfig& c = m.cfg;
  const int T = s.T, H = c.kda_num_heads, D = kKdaHeadDim, HD = H * D, hid = c.hidden_size;
  cuda::Gemm& g = *m.gemm;
  // Every sequence decodes one token: the fused step (bf16 only), which at most batch sizes also
  // forms f and z from the low-rank halves itself (no up-projection launch).
  const bool fused = !kHigh && T == s.S && m.kda_path == 0;
  const bool fold_up = fused && cuda::kda_decode_folds_up(T, H);
  {  // q/k/v, the f/g low-rank halves and beta read the same input: one launch at decode
    const bf16* in = kHigh ? split_input(m, m.act.hf, T, hid) : m.act.a;
    const GemmArgs proj[] = {cuda::Gemm::linear_args(in, w.qkv, A.qkv, T, 3 * HD, hid, kOut),
                             cuda::Gemm::linear_args(in, w.fg_a, A.low, T, 2 * D, hid, kOut),
                             cuda::Gemm::linear_args(in, w.b, A.bb, T, H, hid, kOut)};
    if constexpr (kHigh) g.run_hilo(proj, 3, int64_t(T) * hid, m.stream);
    else g.run_group(proj, 3, m.stream);
  }
  if (!fold_up) {  // f = W_fb (W_fa a), z = W_gb (W_ga a): one launch, batch 2 (A.z follows A.f)
    GemmArgs ga;
    ga.M = T;
    ga.N = HD;
    ga.K = D;
    ga.lda = 2 * D;
    ga.stride_a = D;
    ga.B = w.fg_b;
    ga.ldb = D;
    ga.stride_b = int64_t(HD) * D;
    ga.C = A.f;
    ga.ldc = HD;
    ga.stride_c = int64_t(m.Tm) * HD;
    ga.batch = 2;
    ga.out = kOut;
    if constexpr (kHigh) {
      ga.A = split_input(m, A.low, T, 2 * D);
      g.run_hilo(&ga, 1, int64_t(T) * 2 * D, m.stream);
    } else {
      ga.A = A.low;
      g.run(ga, m.stream);
    }
  }
  cuda::KdaWeights kw;
  kw.conv_weight = w.conv;
  kw.A_log = w.A_log;
  kw.dt_bias = w.dt_bias;
  kw.o_norm = w.o_norm;
  E* conv_state = static_cast<E*>(m.conv_state) + size_t(kind) * m.cache.num_slots * m.conv_per_slot;
  float* state = m.kda_state + size_t(kind) * m.cache.num_slots * m.state_per_slot;
  if constexpr (!kHigh) {
    if (fused) {
      cuda::KdaDecodeParams p;
      p.batch = T;
      p.num_heads = H;
      p.slots = s.slots;
      p.qkv = A.qkv;
      p.b = A.bb;
      if (fold_up) {
        p.fg_low = A.low;
        p.fg_b = w.fg_b;
      } else {
        p.f = A.f;
        p.z = A.z;
      }
      p.w = kw;
      p.conv_state = conv_state;
      p.state = state;
      p.y = A.y;
      cuda::run_kda_decode(p, m.stream);
    }
  }
  if (!fused) {
    cuda::KdaPrepParamsT<E> pp;
    pp.num_seqs = s.S;
    pp.num_tokens = T;
    pp.num_heads = H;
    pp.cu_seqlens = s.cu;
    pp.slots = s.slots;
    pp.qkv = A.qkv;
    pp.f = A.f;
    pp.b = A.bb;
    pp.w = kw;
    pp.conv_state = conv_state;
    pp.q = A.q;
    pp.k = A.k;
    pp.v = A.v;
    cuda::run_kda_prep(pp, m.stream);
    const cuda::KdaScanParamsT<E> sp = cuda::kda_scan_after_prep(pp, state, A.o);
    bool chunked = false;
    if constexpr (!kHigh) {  // high precision plans no chunks: the recurrent scan is exact
      chunked = s.num_chunks > 0;
      if (chunked) {
        cuda::KdaChunkedArgs ca;
        ca.num_chunks = s.num_chunks;
        ca.chunk_seq = s.chunk_seq;
        ca.chunk_start = s.chunk_start;
        ca.seq_first_chunk = s.seq_first_chunk;
        ca.workspace = m.act.kda_ws;
        ca.workspace_bytes = m.act.kda_ws_bytes;
        cuda::run_kda_chunked(sp, ca, m.stream);
      }
    }
    if (!chunked) cuda::run_kda_scan_recurrent(sp, m.stream);
    cuda::KdaGatedNormParamsT<E> np;
    np.num_tokens = T;
    np.num_heads = H;
    np.o = A.o;
    np.z = A.z;
    np.weight = w.o_norm;
    np.y = A.y;
    cuda::run_kda_gated_rmsnorm(np, m.stream);
  }
  if constexpr (kHigh) {  // x += o_proj(y)
    const GemmArgs o = cuda::Gemm::linear_args(split_input(m, A.y, T, HD), w.o, m.act.x, T, hid, HD,
                                               GemmOut::kF32, residual_beta(m));
    g.run_hilo(&o, 1, int64_t(T) * HD, m.stream);
  } else {
    g.linear(A.y, w.o, m.act.x, T, hid, HD, GemmOut::kF32, m.stream, residual_beta(m));
  }
}

// The attention over the latent cache for the step's decode items (split-KV partials where the
// plan splits), shared by the GEMM chain and the fused chain; returns the params for the merge.
cuda::MlaAttnParams mla_attention(CudaModel::Impl& m, const uint8_t* cache, const StepMeta& s) {
  auto& A = m.act;
  cuda::MlaAttnParams ap;
  ap.num_tokens = s.T;
  ap.num_heads = m.cfg.num_attention_heads;
  ap.q_abs = A.q_abs;
  ap.q = A.mq;
  ap.cache = m.fp8_cache ? nullptr : reinterpret_cast<const bf16*>(cache);
  ap.cache8 = m.fp8_cache ? cache : nullptr;
  ap.num_blocks = m.cache.num_blocks;
  ap.block_tables = s.tables;
  ap.max_blocks_per_seq = s.mb;
  ap.scale = 1.f / std::sqrt(float(kMlaQkDim));
  ap.split_base = s.split_base;
  ap.num_splits = s.num_splits;
  ap.partials = A.partials;
  ap.u = A.u;
  ap.tensor_cores = m.mla_tensor_cores;
  ap.items = s.items1;
  ap.num_items = s.n1;
  cuda::run_mla_attention(ap, 1, m.stream);
  ap.items = s.items4;
  ap.num_items = s.n4;
  cuda::run_mla_attention(ap, 4, m.stream);
  return ap;
}

// The absorbed path (decode items and short prefills): q_abs GEMM, attention over the latent
// cache, combine, W_UV GEMM into attn (rows of expanded sequences are overwritten after).
// cache: the layer's MLA cache, bf16 rows or fp8 records (m.fp8_cache).
void absorbed_attention(CudaModel::Impl& m, const DevMla& w, const uint8_t* cache,
                        const StepMeta& s) {
  const int T = s.T, H = m.cfg.num_attention_heads;
  auto& A = m.act;
  cuda::Gemm& g = *m.gemm;
  {  // q_abs[t, h] = W_UK(h)ᵀ q_nope[t, h]: per head [T,128] · [128,512]
    GemmArgs ga;
    ga.M = T;
    ga.N = kMlaLatentDim;
    ga.K = kMlaNopeDim;
    ga.A = A.mq;
    ga.lda = H * kMlaQkDim;
    ga.stride_a = kMlaQkDim;
    ga.B = w.kv_b;
    ga.ldb = kMlaLatentDim;
    ga.stride_b = int64_t(kHeadRowsPerHead) * kMlaLatentDim;
    ga.b_kn = true;
    ga.C = A.q_abs;
    ga.ldc = H * kMlaLatentDim;
    ga.stride_c = kMlaLatentDim;
    ga.batch = H;
    g.run(ga, m.stream);
  }
  const cuda::MlaAttnParams ap = mla_attention(m, cache, s);
  if (s.num_partials > 0) cuda::run_mla_combine(ap, m.stream);
  {  // attn[t, h] = W_UV(h) u[t, h]: per head [T,512] · [128,512]ᵀ
    GemmArgs ga;
    ga.M = T;
    ga.N = kMlaVDim;
    ga.K = kMlaLatentDim;
    ga.A = A.u;
    ga.lda = H * kMlaLatentDim;
    ga.stride_a = kMlaLatentDim;
    ga.B = w.kv_b + size_t(kMlaNopeDim) * kMlaLatentDim;
    ga.ldb = kMlaLatentDim;
    ga.stride_b = int64_t(kHeadRowsPerHead) * kMlaLatentDim;
    ga.C = A.attn;
    ga.ldc = H * kMlaVDim;
    ga.stride_c = kMlaVDim;
    ga.batch = H;
    g.run(ga, m.stream);
  }
}

// The fused chain runs steps of at most this many tokens (bench_mla --layer, one H200, 4k: 30.8
// vs 36.2 us a layer at batch 1, 45.3 vs 42.0 at batch 4; at batch 2 a slower variant of
// run_mla_uv measured 36.0 vs 38.4: docs/perf-log.md, session 10).
constexpr int kMlaFusedMaxTokens = 2;
static_assert(kMlaFusedMaxTokens <= cuda::kMlaLayerMaxTokens);

// The fused chain of a small decode step (mla_layer.h): q | latent in one grouped projection,
// q rounding + q_abs + cache write in one launch, the attention, split merge + W_UV in one
// launch (Impl::mla_fused_chain).
bool mla_layer_fused(const CudaModel::Impl& m, const StepMeta& s) {
  return m.mla_fused_chain && !m.high && s.T >= 1 && s.T <= kMlaFusedMaxTokens &&
         !(s.prefill && !s.prefill->rounds.empty());
}

void mla_attention_fused(CudaModel::Impl& m, const DevMla& w, const uint8_t* cache,
                         const StepMeta& s, const cuda::MlaCacheWriteParams& wp) {
  const int T = s.T, H = m.cfg.num_attention_heads;
  auto& A = m.act;
  cuda::MlaQPrepParams qp;
  qp.num_tokens = T;
  qp.num_heads = H;
  qp.q32 = A.mq32;
  qp.kv_b = w.kv_b;
  qp.q = A.mq;
  qp.q_abs = A.q_abs;
  qp.cache = wp;
  cuda::run_mla_q_prep(qp, m.stream);
  mla_attention(m, cache, s);
  cuda::MlaUvParams up;
  up.num_tokens = T;
  up.num_heads = H;
  up.split_base = s.split_base;
  up.num_splits = s.num_splits;
  up.partials = A.partials;
  up.u = A.u;
  up.kv_b = w.kv_b;
  up.out = A.attn;
  cuda::run_mla_uv(up, m.stream);
}

void mla_mixer(CudaModel::Impl& m, const DevMla& w, int kind, const StepMeta& s) {
  const ModelConfig& c = m.cfg;
  const int T = s.T, H = c.num_attention_heads, hid = c.hidden_size;
  auto& A = m.act;
  cuda::Gemm& g = *m.gemm;
  const bool fused = mla_layer_fused(m, s);
  if (m.high) {  // q and the latent from the split input; q is then rounded for the MLA kernels
    const bf16* in = split_input(m, A.hf, T, hid);
    const GemmArgs proj[] = {
        cuda::Gemm::linear_args(in, w.q, A.mq32, T, H * kMlaQkDim, hid, GemmOut::kF32),
        cuda::Gemm::linear_args(in, w.kv_a, A.latent, T, kMlaCacheDim, hid, GemmOut::kF32)};
    g.run_hilo(proj, 2, int64_t(T) * hid, m.stream);
    cuda::SplitParams r;
    r.n = int64_t(T) * H * kMlaQkDim;
    r.x = A.mq32;
    r.hi = A.mq;
    cuda::run_split_bf16(r, m.stream);
  } else if (fused) {  // one launch; q in fp32, rounded to bf16 by run_mla_q_prep
    const GemmArgs proj[] = {
        cuda::Gemm::linear_args(A.a, w.q, A.mq32, T, H * kMlaQkDim, hid, GemmOut::kF32),
        cuda::Gemm::linear_args(A.a, w.kv_a, A.latent, T, kMlaCacheDim, hid, GemmOut::kF32)};
    g.run_group(proj, 2, m.stream);
  } else {
    g.linear(A.a, w.q, A.mq, T, H * kMlaQkDim, hid, GemmOut::kBF16, m.stream);
    g.linear(A.a, w.kv_a, A.latent, T, kMlaCacheDim, hid, GemmOut::kF32, m.stream);
  }
  uint8_t* cache = m.mla_cache + size_t(kind) * m.cache.num_blocks * m.mla_block_bytes;
  cuda::MlaCacheWriteParams wp;
  wp.num_seqs = s.S;
  wp.num_tokens = T;
  wp.cu_seqlens = s.cu;
  wp.context_lens = s.ctx;
  wp.block_tables = s.tables;
  wp.max_blocks_per_seq = s.mb;
  wp.latent = A.latent;
  wp.norm_weight = w.kv_norm;
  wp.eps = c.rms_norm_eps;
  wp.cache = m.fp8_cache ? nullptr : reinterpret_cast<bf16*>(cache);
  wp.cache8 = m.fp8_cache ? cache : nullptr;
  if (fused) {
    mla_attention_fused(m, w, cache, s, wp);
  } else {
    cuda::run_mla_cache_write(wp, m.stream);
    if (s.n1 + s.n4 > 0) absorbed_attention(m, w, cache, s);
  }
  if (s.prefill && !s.prefill->rounds.empty()) {  // after the absorbed path: state aliases u
    cuda::MlaPrefillParams pp;
    pp.num_heads = H;
    pp.q = A.mq;
    pp.cache = m.fp8_cache ? nullptr : reinterpret_cast<const bf16*>(cache);
    pp.cache8 = m.fp8_cache ? cache : nullptr;
    pp.block_tables = s.tables;
    pp.max_blocks_per_seq = s.mb;
    pp.kv_b = w.kv_b;
    pp.scale = 1.f / std::sqrt(float(kMlaQkDim));
    pp.segs = s.pf_segs;
    pp.items = s.pf_items;
    pp.workspace = A.mla_ws;
    pp.piece_rows = m.mla_piece;
    pp.state = A.mla_state;
    pp.out = A.attn;
    cuda::run_mla_prefill(pp, *s.prefill, g, m.stream);
  }
  g.linear(A.attn, w.o, A.x, T, hid, H * kMlaVDim, GemmOut::kF32, m.stream, residual_beta(m));
}


// x += down(SiLU(gate a) ⊙ up a); beta 0 overwrites x (a tensor-parallel rank's partial).
// High precision: a (act.hf) and the activation split into hi/lo planes.
void mlp(CudaModel::Impl& m, const DevMlp& w, int T, float beta) {
  const int hid = m.cfg.hidden_size;
  auto& A = m.act;
  if (m.high) {
    const GemmArgs gu = cuda::Gemm::linear_args(split_input(m, A.hf, T, hid), w.gate_up, A.gu, T,
                                                2 * w.inter, hid, GemmOut::kF32);
    m.gemm->run_hilo(&gu, 1, int64_t(T) * hid, m.stream);
    cuda::SiluMulParams<float> sp;
    sp.rows = T;
    sp.dim = w.inter;
    sp.gate_up = A.gu;
    sp.out = A.act32;
    cuda::run_silu_mul(sp, m.stream);
    const GemmArgs down = cuda::Gemm::linear_args(split_input(m, A.act32, T, w.inter), w.down, A.x,
                                                  T, hid, w.inter, GemmOut::kF32, beta);
    m.gemm->run_hilo(&down, 1, int64_t(T) * w.inter, m.stream);
    return;
  }
  m.gemm->linear(A.a, w.gate_up, A.gu, T, 2 * w.inter, hid, GemmOut::kF32, m.stream);
  cuda::SiluMulParams<bf16> sp;
  sp.rows = T;
  sp.dim = w.inter;
  sp.gate_up = A.gu;
  sp.out = A.act;
  cuda::run_silu_mul(sp, m.stream);
  m.gemm->linear(A.act, w.down, A.x, T, hid, w.inter, GemmOut::kF32, m.stream, beta);
}

void rmsnorm(CudaModel::Impl& m, const float* w, int rows, const int* row_index, bf16* out,
             float* out_f32 = nullptr) {
  cuda::RmsNormParams p;
  p.rows = rows;
  p.dim = m.cfg.hidden_size;
  p.x = m.act.x;
  p.row_index = row_index;
  p.weight = w;
  p.y = out;
  p.y_f32 = out_f32;
  p.eps = m.cfg.rms_norm_eps;
  cuda::run_rmsnorm(p, m.stream);
}

// The MoE block with its RMSNorm (post_norm): x += experts(RMSNorm(x)). Decode-sized steps fold
// the norm into the routing launch, and with next_norm (the next block's norm weight; only where
// the un-permute completes the residual row, i.e. one GPU) the un-permute also writes the next
// block's normed input into act.a. Returns whether it did (the caller then skips that norm).
bool moe(CudaModel::Impl& m, const DevMoe& w, const float* post_norm, const float* next_norm,
         int T) {
  const ModelConfig& c = m.cfg;
  const int E = c.num_experts, K = c.num_experts_per_token, hid = c.hidden_size;
  // The experts this GPU runs: all E, or its run of them under expert parallelism.
  const ExpertRange mine = local_experts(m.full_cfg, m.tp.rank, m.tp.world, m.tp.expert_parallel);
  const int El = mine.count;
  auto& A = m.act;
  // The routing of the T tokens over all E experts into act's ids and weights, the shared expert
  // as expert `shared` (-1: none); under expert parallelism, ids local to this GPU's run.
  auto route_params = [&](int shared) {
    cuda::MoeRouteParams rp;
    rp.num_tokens = T;
    rp.num_experts = E;
    rp.top_k = K;
    rp.renormalize = c.moe_renormalize;
    rp.scaling = c.routed_scaling_factor;
    rp.logits = A.router_logits;
    rp.correction_bias = w.bias;
    rp.expert_ids = A.route_ids;
    rp.weights = A.route_w;
    rp.shared_expert = shared;
    if (El != E) {
      rp.expert_first = mine.first;
      rp.local_experts = El;
    }
    return rp;
  };
  // One token: the whole block in one launch (route, experts, residual; on one GPU the next
  // norm too). Under tensor parallelism with the experts split by intermediate dimension every
  // rank routes over all E and runs its slice of every expert: its partial goes into x by
  // residual_beta's rule and the all-reduce that follows completes the row.
  if (T == 1 && m.moe_fused && m.fuse_norms && El == E &&
      (w.shared_in_experts || c.num_shared_experts == 0) && hid <= cuda::kMoeDecodeFusedMaxHidden &&
      c.moe_intermediate_size <= cuda::kMoeDecodeFusedMaxInter) {
    cuda::MoeDecodeFusedParams fp;
    fp.route = route_params(w.shared_in_experts ? E : -1);
    fp.x = A.x;
    fp.norm_weight = post_norm;
    fp.eps = c.rms_norm_eps;
    fp.router = w.router;
    fp.w13 = w.w13;
    fp.w2 = w.w2;
    fp.hidden = hid;
    fp.inter = c.moe_intermediate_size;
    fp.accumulate = m.tp.rank == 0;  // see residual_beta
    if (m.tp.world > 1) next_norm = nullptr;
    if (next_norm) {
      fp.next_norm = next_norm;
      fp.next_normed = A.a;
    }
    fp.scratch = A.moe_fused_scratch;
    fp.barrier = A.moe_fused_barrier;
    cuda::run_moe_decode_fused(fp, m.stream);
    return next_norm != nullptr;
  }
  // Tiles of 128 rows (the wgmma kernel) once experts average 2+ rows (moe.h); 16 for decode-sized
  // batches. KIMI_CUDA_MOE=tiled: the old 64-row WMMA tiles instead of wgmma.
  int block_m = cuda::moe_block_m(int64_t(T) * K, E, m.moe_wgmma_rows);
  if (block_m == 128 && !m.moe_wgmma) block_m = 64;
  cuda::MoeGemmParams gp;
  gp.num_tokens = T;
  gp.num_experts = El + 1;
  gp.top_k = K + 1;
  gp.block_m = block_m;
  gp.gemv_max_rows_per_expert = m.moe_gemv_rows;
  gp.hidden = hid;
  gp.inter = c.moe_intermediate_size;
  if (m.high) {  // the experts read hf split into the planes (written below, after the routing)
    gp.x_lo = A.planes + int64_t(T) * hid;
    gp.act_lo = A.moe_act_lo;
  }
  // Decode-sized steps run the shared expert as expert E in the same small-M launches (3 fewer
  // launches per layer); larger steps run it through cuBLASLt.
  const bool fuse = w.shared_in_experts && El + 1 <= 1024 &&
                    cuda::moe_gemm_path(gp) == cuda::MoeGemmPath::kGemv;
  const int Ek = El + fuse, Kk = K + fuse;
  gp.num_experts = Ek;
  gp.top_k = Kk;
  // The tiled kernel has no split input: high precision takes the wgmma tiles there instead.
  if (m.high && cuda::moe_gemm_path(gp) == cuda::MoeGemmPath::kTiled) gp.block_m = block_m = 128;
  const cuda::MoeRouteParams rp = route_params(fuse ? El : -1);
  // The fused routing launch pays up to 2 tokens: its routing CTA's work grows with T·E (bench_moe
  // --route, H200: 13.0 vs 17.5 us for the separate launches at T = 1, 39.6 vs 25.5 at T = 8).
  constexpr int kFusedRouteMaxTokens = 2;
  const bool decode_route = block_m == 16 && T <= std::min(kFusedRouteMaxTokens, cuda::moe_route_decode_max_tokens(E)) &&
                            hid % 4 == 0;
  const bool fuse_norm = decode_route && m.fuse_norms;
  if (!fuse_norm) rmsnorm(m, post_norm, T, nullptr, A.a, A.hf);  // a: null in high precision
  if (decode_route) {
    // Decode: (the norm,) router logits, routing and permutation in one launch.
    cuda::MoeRouteDecodeParams dp;
    dp.route = rp;
    dp.x = fuse_norm ? A.x : A.hf;
    if (fuse_norm) {
      dp.norm_weight = post_norm;
      dp.eps = c.rms_norm_eps;
      dp.normed = A.a;
    }
    dp.router = w.router;
    dp.hidden = hid;
    dp.block_m = block_m;
    dp.workspace = A.perm_ws;
    dp.ticket = A.route_ticket;
    cuda::run_moe_route_decode(dp, m.stream);
  } else {
    {  // router logits in fp32 from the unrounded normed input (HF computes them in fp32 too)
      GemmArgs ga;
      ga.M = T;
      ga.N = E;
      ga.K = hid;
      ga.A = reinterpret_cast<const bf16*>(A.hf);
      ga.lda = hid;
      ga.B = reinterpret_cast<const bf16*>(w.router);
      ga.ldb = hid;
      ga.C = A.router_logits;
      ga.ldc = E;
      ga.out = GemmOut::kF32;
      ga.in_f32 = true;
      m.gemm->run(ga, m.stream);
    }
    cuda::run_moe_route(rp, m.stream);
    cuda::MoePermuteParams pp;
    pp.num_tokens = T;
    pp.num_experts = Ek;
    pp.top_k = Kk;
    pp.block_m = block_m;
    pp.expert_ids = A.route_ids;
    pp.workspace = A.perm_ws;
    cuda::run_moe_permute(pp, m.stream);
  }
  gp.workspace = A.perm_ws;
  gp.x = m.high ? split_input(m, A.hf, T, hid) : A.a;
  gp.w13 = w.w13;
  gp.w2 = w.w2;
  gp.act = A.moe_act;
  gp.y = A.moe_y;
  cuda::run_moe_gate_up(gp, m.stream);
  cuda::run_moe_down(gp, m.stream);
  cuda::MoeUnpermuteParams up;
  up.num_tokens = T;
  up.top_k = Kk;
  up.hidden = hid;
  up.num_experts = Ek;
  up.workspace = A.perm_ws;
  up.weights = A.route_w;
  up.y = A.moe_y;
  up.out = A.x;
  up.accumulate = m.tp.rank == 0;  // see residual_beta
  const bool fuse_next = m.fuse_norms && next_norm && m.tp.world == 1 && block_m == 16 &&
                         (fuse || c.num_shared_experts == 0) &&
                         hid <= cuda::kMoeUnpermuteNormMaxHidden;
  if (fuse_next) {
    up.norm_weight = next_norm;
    up.eps = c.rms_norm_eps;
    up.normed = A.a;
  }
  cuda::run_moe_unpermute(up, m.stream);
  if (!fuse && c.num_shared_experts > 0) mlp(m, w.shared, T, 1.f);
  return fuse_next;
}

}  // namespace

void CudaModel::forward(const Batch& b, std::vector<float>& logits) {
  const int V = impl_->full_cfg.vocab_size;
  logits.resize(size_t(b.num_logit_rows()) * V);
  forward_into(b, logits.data(), V);
}

void CudaModel::forward_into(const Batch& b, float* logits, int64_t ld) {
  Impl& m = *impl_;
  const int Vr = m.cfg.vocab_size;
  const int64_t vr0 = int64_t(m.tp.rank) * Vr;  // this rank's columns of the logits
  KIMI_CHECK(ld >= m.full_cfg.vocab_size);
  run_step(b, [&](int r0, int n) {
    CUDA_CHECK(cudaMemcpy2DAsync(logits + r0 * ld + vr0, ld * 4, m.act.logits, size_t(Vr) * 4,
                                 size_t(Vr) * 4, n, cudaMemcpyDefault, m.stream));
  });
}

// The draws of a step staged for the sampling and logprob kernels: one pinned area and its device
// twin, rows | offsets | adjustments | logprob requests (copied to the device) | tokens | records
// (copied back); host_slot[r]: where row r's logits go in host_logits (-1: drawn on the device
// only); req_rows: the row of each logprob request, ascending.
struct CudaModel::DrawStage {
  uint8_t* dev = nullptr;
  int* dev_tok = nullptr;
  int* host_tok = nullptr;
  cuda::LogprobRecord* dev_rec = nullptr;
  cuda::LogprobRecord* host_rec = nullptr;
  size_t off_rows = 0, off_csr = 0, off_adj = 0, off_req = 0;
  std::vector<int> host_slot;
  std::vector<int> req_rows;
  std::vector<int> req_k;  // the requests' k, in req_rows' order
};

static_assert(sizeof(RowLogprobs) == sizeof(cuda::LogprobRecord) &&
                  offsetof(RowLogprobs, token) == offsetof(cuda::LogprobRecord, token) &&
                  offsetof(RowLogprobs, rank) == offsetof(cuda::LogprobRecord, rank) &&
                  offsetof(RowLogprobs, logprob) == offsetof(cuda::LogprobRecord, logprob) &&
                  offsetof(RowLogprobs, num_top) == offsetof(cuda::LogprobRecord, num_top) &&
                  offsetof(RowLogprobs, top_id) == offsetof(cuda::LogprobRecord, top_id) &&
                  offsetof(RowLogprobs, top_logprob) ==
                      offsetof(cuda::LogprobRecord, top_logprob) &&
                  kMaxTopLogprobs == cuda::kMaxTopLogprobs,
              "one layout, copied as bytes");

CudaModel::DrawStage CudaModel::stage_draws(const DrawBatch& d, int R, std::vector<float>& host_logits) {
  Impl& m = *impl_;
  const int V = m.full_cfg.vocab_size;
  KIMI_CHECK(int(d.rows.size()) == R, "draws for ", d.rows.size(), " rows, the step has ", R);
  DrawStage st;
  st.host_slot.assign(R, -1);
  int num_host = 0;
  for (int r = 0; r < R; ++r) {
    const RowDraw& x = d.rows[r];
    if (x.host) st.host_slot[r] = num_host++;
    KIMI_CHECK(valid_logprob_request(x, V), "draw row ", r, ": logprobs ", x.logprobs, " of token ",
               x.logprob_token, (x.host ? " (a host row)" : ""));
    if (x.logprobs >= 0) st.req_rows.push_back(r), st.req_k.push_back(x.logprobs);
  }
  host_logits.resize(size_t(num_host) * V);
  static_assert(sizeof(LogitAdjust) == sizeof(cuda::SampleAdjust), "one layout, copied as bytes");
  const size_t A = d.adjust.size(), Q = st.req_rows.size();
  auto align = [](size_t x) { return (x + 15) & ~size_t(15); };
  st.off_rows = 0;
  st.off_csr = align(R * sizeof(cuda::SampleRow));
  st.off_adj = st.off_csr + align((R + 1) * sizeof(int));
  st.off_req = st.off_adj + align(std::max<size_t>(A, 1) * sizeof(cuda::SampleAdjust));
  const size_t off_tok = st.off_req + align(std::max<size_t>(Q, 1) * sizeof(cuda::LogprobRequest)),
               off_rec = off_tok + align(R * sizeof(int)),
               bytes = off_rec + align(Q * sizeof(cuda::LogprobRecord));
  if (bytes > m.draw_cap) {
    CUDA_CHECK(cudaStreamSynchronize(m.stream));
    if (m.draw_host) CUDA_CHECK(cudaFreeHost(m.draw_host));
    m.draw_cap = std::max(bytes, 2 * m.draw_cap);
    CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&m.draw_host), m.draw_cap));
    m.draw_dev = cuda::DeviceBuffer<uint8_t>(m.draw_cap);
  }
  uint8_t* h = m.draw_host;
  auto* rows = reinterpret_cast<cuda::SampleRow*>(h + st.off_rows);
  auto* csr = reinterpret_cast<int*>(h + st.off_csr);
  for (int r = 0; r < R; ++r) {
    const RowDraw& x = d.rows[r];
    KIMI_CHECK(x.adjust_begin >= 0 && x.adjust_begin <= x.adjust_end && size_t(x.adjust_end) <= A &&
                   (r == 0 || x.adjust_begin == d.rows[r - 1].adjust_end),
               "draw row ", r, ": adjustments ", x.adjust_begin, "..", x.adjust_end);
    rows[r] = cuda::SampleRow{x.temperature, x.top_k, x.top_p, x.min_p, x.u};
    csr[r] = x.adjust_begin;
  }
  csr[R] = R ? d.rows[R - 1].adjust_end : 0;
  if (A) std::memcpy(h + st.off_adj, d.adjust.data(), A * sizeof(LogitAdjust));
  auto* req = reinterpret_cast<cuda::LogprobRequest*>(h + st.off_req);
  for (size_t i = 0; i < Q; ++i) {
    const RowDraw& x = d.rows[st.req_rows[i]];
    req[i] = cuda::LogprobRequest{st.req_rows[i], x.logprob_token < 0 ? -1 : x.logprob_token,
                                  x.logprobs};
  }
  CUDA_CHECK(cudaMemcpyAsync(m.draw_dev.data(), h, off_tok, cudaMemcpyHostToDevice, m.stream));
  st.dev = m.draw_dev.data();
  st.dev_tok = reinterpret_cast<int*>(st.dev + off_tok);
  st.host_tok = reinterpret_cast<int*>(h + off_tok);
  st.dev_rec = reinterpret_cast<cuda::LogprobRecord*>(st.dev + off_rec);
  st.host_rec = reinterpret_cast<cuda::LogprobRecord*>(h + off_rec);
  return st;
}

// Rows r0 .. r0 + n of the step, their logits at `logits` (row pitch: the vocabulary): drawn
// into the staged tokens, their logprob records computed; both copied back with the host rows'
// logits.
void CudaModel::draw_rows(const DrawStage& st, const float* logits, int r0, int n,
                          std::vector<float>& host_logits) {
  Impl& m = *impl_;
  const int V = m.full_cfg.vocab_size;
  cuda::SampleParams sp;
  sp.rows = n;
  sp.vocab = V;
  sp.logits = logits;
  sp.row_params = reinterpret_cast<const cuda::SampleRow*>(st.dev + st.off_rows) + r0;
  sp.adjust_offsets = reinterpret_cast<const int*>(st.dev + st.off_csr) + r0;
  sp.adjust = reinterpret_cast<const cuda::SampleAdjust*>(st.dev + st.off_adj);
  sp.token = st.dev_tok + r0;
  cuda::run_sample(sp, m.stream);
  const auto& qr = st.req_rows;  // the requests of rows r0 .. r0 + n - 1: q0 .. q1 - 1
  const int q0 = int(std::lower_bound(qr.begin(), qr.end(), r0) - qr.begin());
  const int q1 = int(std::lower_bound(qr.begin(), qr.end(), r0 + n) - qr.begin());
  if (q1 > q0) {
    cuda::LogprobParams lp;
    lp.count = q1 - q0;
    lp.rows = n;
    lp.row_begin = r0;
    lp.vocab = V;
    lp.logits = logits;
    lp.sampled = st.dev_tok + r0;
    lp.requests = reinterpret_cast<const cuda::LogprobRequest*>(st.dev + st.off_req) + q0;
    lp.out = st.dev_rec + q0;
    lp.max_k = *std::max_element(st.req_k.begin() + q0, st.req_k.begin() + q1);
    cuda::run_logprobs(lp, m.stream);
    CUDA_CHECK(cudaMemcpyAsync(st.host_rec + q0, st.dev_rec + q0,
                               size_t(q1 - q0) * sizeof(cuda::LogprobRecord),
                               cudaMemcpyDeviceToHost, m.stream));
  }
  CUDA_CHECK(cudaMemcpyAsync(st.host_tok + r0, st.dev_tok + r0, size_t(n) * sizeof(int),
                             cudaMemcpyDeviceToHost, m.stream));
  for (int r = r0; r < r0 + n; ++r)
    if (st.host_slot[r] >= 0)
      CUDA_CHECK(cudaMemcpyAsync(host_logits.data() + size_t(st.host_slot[r]) * V,
                                 logits + size_t(r - r0) * V, size_t(V) * sizeof(float),
                                 cudaMemcpyDeviceToHost, m.stream));
}

// The records of a finished step (the stream synchronised) into logprobs.
void CudaModel::take_records(const DrawStage& st, std::vector<RowLogprobs>& logprobs) {
  const size_t Q = st.req_rows.size();
  logprobs.resize(Q);
  if (Q) std::memcpy(static_cast<void*>(logprobs.data()), st.host_rec, Q * sizeof(RowLogprobs));
  for (size_t i = 0; i < Q; ++i)
    KIMI_CHECK(logprobs[i].token >= 0, "logprobs of row ", st.req_rows[i],
               ": the kernel refused it");
}

bool CudaModel::keeps_logit_rows() const { return impl_->tp.world == 1; }

bool CudaModel::forward_sampled(const Batch& b, const DrawBatch& d, std::vector<int>& tokens,
                                std::vector<float>& host_logits,
                                std::vector<RowLogprobs>& logprobs) {
  Impl& m = *impl_;
  if (m.tp.world > 1) return false;  // a rank's logits are a slice: TpModel gathers them first
  const int R = b.num_logit_rows();
  const DrawStage st = stage_draws(d, R, host_logits);
  run_step(b, [&](int r0, int n) { draw_rows(st, m.act.logits, r0, n, host_logits); });
  tokens.assign(st.host_tok, st.host_tok + R);
  take_records(st, logprobs);
  return true;
}

void CudaModel::sample_gathered(const float* logits, int rows, const DrawBatch& d,
                                std::vector<int>& tokens, std::vector<float>& host_logits,
                                std::vector<RowLogprobs>& logprobs) {
  Impl& m = *impl_;
  const DrawStage st = stage_draws(d, rows, host_logits);
  draw_rows(st, logits, 0, rows, host_logits);
  CUDA_CHECK(cudaStreamSynchronize(m.stream));
  tokens.assign(st.host_tok, st.host_tok + rows);
  take_records(st, logprobs);
}

float* CudaModel::logits_gather_buffer(size_t floats) {
  Impl& m = *impl_;
  if (m.gather.size() < floats) {
    CUDA_CHECK(cudaStreamSynchronize(m.stream));
    m.gather = cuda::DeviceBuffer<float>(floats);
  }
  return m.gather.data();
}

void CudaModel::run_step(const Batch& b, const std::function<void(int, int)>& consume) {
  Impl& m = *impl_;
  const ModelConfig& c = m.cfg;
  // V: the ids' vocabulary; Vr: this rank's rows of lm_head.
  const int T = b.num_tokens(), S = b.num_seqs(), V = m.full_cfg.vocab_size, hid = c.hidden_size;
  const int Vr = c.vocab_size;
  KIMI_CHECK(S >= 1 && T >= 1 && b.cu_seqlens.back() == T);
  if (T > m.Tm)
    fail("a step of ", T, " tokens exceeds max_batch_tokens ", m.Tm,
         " (the activation arena's size; raise ModelOptions::max_batch_tokens)");
  for (int s = 0; s < S; ++s) {
    const int n = b.cu_seqlens[s + 1] - b.cu_seqlens[s];
    KIMI_CHECK(n >= 1 && b.context_lens[s] >= n);
    KIMI_CHECK(b.slots[s] >= 0 && b.slots[s] < m.cache.num_slots, "slot ", b.slots[s]);
    for (int t = 0; t < s; ++t) KIMI_CHECK(b.slots[t] != b.slots[s], "slot ", b.slots[s], " twice");
    KIMI_CHECK((b.context_lens[s] + kBlockSize - 1) / kBlockSize <= b.max_blocks_per_seq);
    for (int j = 0; j < (b.context_lens[s] + kBlockSize - 1) / kBlockSize; ++j) {
      const int blk = b.block_tables[size_t(s) * b.max_blocks_per_seq + j];
      KIMI_CHECK(blk >= 0 && blk < m.cache.num_blocks, "block ", blk);
    }
  }
  for (int t = 0; t < T; ++t)
    KIMI_CHECK(b.tokens[t] >= 0 && b.tokens[t] < V, "token id ", b.tokens[t], " outside 0..", V - 1);

  // Metadata: tokens | cu | ctx | slots | tables | rows | split_base | num_splits | items1 | items4
  const int R = b.num_logit_rows();
  // Decode steps replay a CUDA graph: fixed launch shapes for a (batch size, table width).
  const bool graph = m.use_graphs && !m.profile && T == S && !on_layer_output && R <= m.logit_rows;
  const bool prof = m.profile;
  auto mark = [&](int i) {
    if (prof) CUDA_CHECK(cudaEventRecord(m.prof_ev[i], m.stream));
  };
  cuda::MlaAttnPlan plan;
  cuda::MlaPrefillPlan prefill;
  if (c.num_mla_layers() > 0 && graph) {
    plan = cuda::make_mla_decode_plan(S, b.context_lens.data(), c.num_attention_heads,
                                      m.prop.multiProcessorCount, m.max_partials,
                                      m.mla_tensor_cores);
  } else if (c.num_mla_layers() > 0) {
    // Sequences with many new tokens take the expanded prefill: its expansion GEMM (2·512·256·H
    // FLOPs per context position) is then small against the attention FLOPs it saves
    // (2·(1088 − 320)·H per query and key), and its 128-row tiles are full.
    std::vector<uint8_t> expand(S, 0);
    for (int s = 0; s < S; ++s)
      expand[s] = m.mla_expanded &&
                  b.cu_seqlens[s + 1] - b.cu_seqlens[s] >= cuda::kMlaExpandMinTokens;
    plan = cuda::make_mla_attn_plan(S, b.cu_seqlens.data(), b.context_lens.data(),
                                    c.num_attention_heads, m.prop.multiProcessorCount,
                                    m.max_partials, m.mla_tensor_cores, expand.data());
    prefill = cuda::make_mla_prefill_plan(S, b.cu_seqlens.data(), b.context_lens.data(),
                                          expand.data(), m.mla_piece);
  }
  cuda::KdaChunkPlan chunks;
  if (c.num_kda_layers() > 0 && (T != S || m.kda_path == 2) && m.kda_path != 1) {
    chunks = cuda::make_kda_chunk_plan(b.cu_seqlens.data(), S);
    if (chunks.num_chunks > m.kda_chunk_cap) {
      if (!m.warned_recurrent)
        spdlog::warn("cuda: a step of {} sequences has {} KDA chunks, more than the workspace's {}: "
                     "such steps use the recurrent scan", S, chunks.num_chunks, m.kda_chunk_cap);
      m.warned_recurrent = true;
      chunks = cuda::KdaChunkPlan{};
    }
  }
  const int mb = b.max_blocks_per_seq;
  const size_t n_items = 7 * (plan.items1.size() + plan.items4.size());
  const size_t need = size_t(T) + (S + 1) + 2 * S + size_t(S) * mb + R + 2 * size_t(T) + n_items +
                      2 * size_t(chunks.num_chunks) + (S + 1) + 4 * prefill.segs.size() +
                      7 * prefill.items.size() + 64;
  if (need > m.meta_cap) {  // grows only when a batch is larger than all before it
    CUDA_CHECK(cudaStreamSynchronize(m.stream));
    m.drop_graphs();  // they point into the old buffer
    if (m.meta_host) CUDA_CHECK(cudaFreeHost(m.meta_host));
    m.meta_cap = std::max(need, m.meta_cap * 2);
    CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&m.meta_host), m.meta_cap * sizeof(int)));
    m.meta_dev = cuda::DeviceBuffer<int>(m.meta_cap);
  }
  int* h = m.meta_host;
  size_t off = 0;
  StepMeta sm;
  sm.T = T;
  sm.S = S;
  sm.R = R;
  sm.mb = mb;
  auto put = [&](const int* src, size_t n) {
    int* dev = m.meta_dev.data() + off;
    if (n) std::memcpy(h + off, src, n * sizeof(int));
    off += n;
    return dev;
  };
  sm.tokens = put(b.tokens.data(), T);
  sm.cu = put(b.cu_seqlens.data(), S + 1);
  sm.ctx = put(b.context_lens.data(), S);
  sm.slots = put(b.slots.data(), S);
  sm.tables = put(b.block_tables.data(), size_t(S) * mb);
  const std::vector<int> rows = b.logit_token_rows();
  sm.rows = put(rows.data(), R);
  if (plan.split_base.empty()) {
    plan.split_base.assign(T, -1);
    plan.num_splits.assign(T, 0);
  }
  sm.split_base = put(plan.split_base.data(), T);
  sm.num_splits = put(plan.num_splits.data(), T);
  sm.items1 = reinterpret_cast<const cuda::MlaWorkItem*>(
      put(reinterpret_cast<const int*>(plan.items1.data()), 7 * plan.items1.size()));
  sm.items4 = reinterpret_cast<const cuda::MlaWorkItem*>(
      put(reinterpret_cast<const int*>(plan.items4.data()), 7 * plan.items4.size()));
  sm.n1 = int(plan.items1.size());
  sm.n4 = int(plan.items4.size());
  sm.num_partials = plan.num_partials;
  sm.prefill = &prefill;
  sm.pf_segs = reinterpret_cast<const cuda::MlaPrefillSeg*>(
      put(reinterpret_cast<const int*>(prefill.segs.data()), 4 * prefill.segs.size()));
  sm.pf_items = reinterpret_cast<const cuda::MlaPrefillItem*>(
      put(reinterpret_cast<const int*>(prefill.items.data()), 7 * prefill.items.size()));
  if (chunks.num_chunks > 0) {
    sm.num_chunks = chunks.num_chunks;
    sm.chunk_seq = put(chunks.chunk_seq.data(), chunks.num_chunks);
    sm.chunk_start = put(chunks.chunk_start.data(), chunks.num_chunks);
    sm.seq_first_chunk = put(chunks.seq_first_chunk.data(), S + 1);
  }
  CUDA_CHECK(cudaMemcpyAsync(m.meta_dev.data(), h, off * sizeof(int), cudaMemcpyHostToDevice, m.stream));

  m.prof_ar_used = 0;
  auto device_work = [&]() {
    mark(0);
    cuda::EmbeddingParams ep;
    ep.num_tokens = T;
    ep.dim = hid;
    ep.vocab = V;
    ep.ids = sm.tokens;
    ep.table = m.embed;
    ep.x = m.act.x;
    cuda::run_embedding(ep, m.stream);
    bool in_normed = false;  // act.a already holds this layer's normed input
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      const DevLayer& L = m.layers[l];
      // High precision: the block input in fp32 only (act.a is not allocated).
      if (!in_normed) rmsnorm(m, L.in_norm, T, nullptr, m.act.a, m.high ? m.act.hf : nullptr);
      if (!c.is_kda(l)) mla_mixer(m, L.mla, c.kind_index(l), sm);
      else if (m.high) kda_mixer(m, L.kda, c.kind_index(l), sm, m.act.kda32);
      else kda_mixer(m, L.kda, c.kind_index(l), sm, m.act.kda);
      // Under tensor parallelism the all-reduces may write the next sub-layer's normed input.
      const bool post_normed = all_reduce_residual(m, T, c.is_moe(l) ? nullptr : L.post_norm);
      mark(2 * l + 1);
      in_normed = false;
      const float* next_norm = l + 1 < c.num_hidden_layers ? m.layers[l + 1].in_norm : nullptr;
      if (c.is_moe(l)) {
        in_normed = moe(m, L.moe, L.post_norm, next_norm, T);
      } else {
        if (!post_normed) rmsnorm(m, L.post_norm, T, nullptr, m.act.a, m.high ? m.act.hf : nullptr);
        mlp(m, L.mlp, T, residual_beta(m));
      }
      if (all_reduce_residual(m, T, next_norm)) in_normed = true;
      mark(2 * l + 2);
      if (on_layer_output) {
        m.layer_out.resize(size_t(T) * hid);
        CUDA_CHECK(cudaMemcpyAsync(m.layer_out.data(), m.act.x, m.layer_out.size() * 4,
                                   cudaMemcpyDeviceToHost, m.stream));
        CUDA_CHECK(cudaStreamSynchronize(m.stream));
        on_layer_output(l, m.layer_out.data(), T);
      }
    }
  };
  auto logits_rows = [&](int r0, int n) {
    rmsnorm(m, m.final_norm, n, sm.rows + r0, m.act.final_x);
    m.gemm->linear(m.act.final_x, m.lm_head, m.act.logits, n, Vr, hid, GemmOut::kF32, m.stream);
  };
  cudaGraphExec_t exec = nullptr;
  if (graph) {
    const std::pair<int, int> key{T, mb};
    auto it = m.graphs.find(key);
    if (it != m.graphs.end()) {
      exec = it->second;
    } else {
      cudaGraph_t g = nullptr;
      try {
        CUDA_CHECK(cudaStreamBeginCapture(m.stream, cudaStreamCaptureModeThreadLocal));
        try {
          device_work();
          logits_rows(0, R);
        } catch (...) {
          cudaStreamEndCapture(m.stream, &g);
          if (g) cudaGraphDestroy(g);
          throw;
        }
        CUDA_CHECK(cudaStreamEndCapture(m.stream, &g));
        const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
        cudaGraphDestroy(g);
        CUDA_CHECK(e);
        m.graphs.emplace(key, exec);
      } catch (const std::exception& e) {
        // Tensor-parallel ranks must launch the same collectives: a rank that fell back alone
        // would leave the others waiting, so the step fails instead (KIMI_CUDA_GRAPHS=0 runs
        // every step eagerly).
        if (m.tp.world > 1) throw;
        spdlog::warn("cuda: decode-step graph capture failed, running eagerly from now on: {}", e.what());
        cudaGetLastError();  // capture errors are not sticky: clear them
        m.use_graphs = false;
        exec = nullptr;
      }
    }
  }
  if (exec) {
    CUDA_CHECK(cudaGraphLaunch(exec, m.stream));
    consume(0, R);
  } else {
    device_work();
    for (int r0 = 0; r0 < R; r0 += m.logit_rows) {
      const int n = std::min(m.logit_rows, R - r0);
      logits_rows(r0, n);
      consume(r0, n);
    }
    mark(2 * c.num_hidden_layers + 1);
  }
  CUDA_CHECK(cudaStreamSynchronize(m.stream));
  if (prof && !on_layer_output) {
    const std::string phase = T == S ? "decode" : "prefill";
    auto ms = [&](int a, int b) {
      float v = 0.f;
      CUDA_CHECK(cudaEventElapsedTime(&v, m.prof_ev[a], m.prof_ev[b]));
      return double(v);
    };
    const int L = c.num_hidden_layers;
    // The all-reduces sit at the end of each mixer and FFN interval: counted apart.
    auto ar = [&](int i) {
      if (2 * i + 1 >= m.prof_ar_used) return 0.0;
      float v = 0.f;
      CUDA_CHECK(cudaEventElapsedTime(&v, m.prof_ar_ev[2 * i], m.prof_ar_ev[2 * i + 1]));
      return double(v);
    };
    for (int l = 0; l < L; ++l) {
      const double a0 = ar(2 * l), a1 = ar(2 * l + 1);
      m.prof_ms[phase + (c.is_kda(l) ? ".kda" : ".mla")] += ms(2 * l, 2 * l + 1) - a0;
      m.prof_ms[phase + (c.is_moe(l) ? ".moe" : ".dense_mlp")] += ms(2 * l + 1, 2 * l + 2) - a1;
      if (m.tp.world > 1) m.prof_ms[phase + ".allreduce"] += a0 + a1;
    }
    m.prof_ms[phase + ".logits"] += ms(2 * L, 2 * L + 1);
    ++m.prof_steps[phase];
  }
}

}  // namespace kimi

#endif
