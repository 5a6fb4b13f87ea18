#include "model/cpu_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <omp.h>
#include <xmmintrin.h>

#include "core/check.h"
#include "ops/cpu/basic.h"
#include "ops/cpu/kda.h"
#include "ops/cpu/mla.h"
#include "ops/cpu/moe.h"

namespace kimi {

using std::vector;

namespace {

// Flush denormals to zero on every OpenMP thread: decaying KDA states and MLA softmax tails
// underflow into denormals, which run ~100x slower on x86 and change nothing above 1e-38.
void enable_flush_to_zero() {
#pragma omp parallel
  _mm_setcsr(_mm_getcsr() | 0x8040);  // FTZ | DAZ
  _mm_setcsr(_mm_getcsr() | 0x8040);
}

}  // namespace

CpuModel::CpuModel(const ModelConfig& config, const Checkpoint& ckpt, CacheSizes cache,
                   KvCacheDtype kv_cache_dtype)
    : config_(config),
      w_(load_weights_f32(config, ckpt)),
      cache_(cache),
      fp8_cache_(kv_cache_dtype == KvCacheDtype::kFp8) {
  enable_flush_to_zero();
  KIMI_CHECK(cache.num_slots >= 1 && cache.num_blocks >= 1);
  const size_t HD = size_t(config.kda_num_heads) * kKdaHeadDim;
  for (int i = 0; i < config.num_kda_layers(); ++i) {
    conv_state_.emplace_back(size_t(cache.num_slots) * 3 * HD * (kKdaConvSize - 1), 0.f);
    kda_state_.emplace_back(size_t(cache.num_slots) * HD * kKdaHeadDim, 0.f);
  }
  for (int i = 0; i < config.num_mla_layers(); ++i)
    mla_cache_.emplace_back(size_t(cache.num_blocks) * kBlockSize * kMlaCacheDim, 0.f);
}

void CpuModel::reset_slot(int slot) {
  KIMI_CHECK(slot >= 0 && slot < cache_.num_slots);
  for (auto* pool : {&conv_state_, &kda_state_})
    for (auto& s : *pool) {
      size_t per = s.size() / cache_.num_slots;
      std::fill_n(s.begin() + per * slot, per, 0.f);
    }
}

void CpuModel::copy_slot(int src, int dst) {
  KIMI_CHECK(src >= 0 && src < cache_.num_slots && dst >= 0 && dst < cache_.num_slots);
  for (auto* pool : {&conv_state_, &kda_state_})
    for (auto& s : *pool) {
      size_t per = s.size() / cache_.num_slots;
      std::copy_n(s.begin() + per * src, per, s.begin() + per * dst);
    }
}

void CpuModel::copy_block(int src, int dst) {
  KIMI_CHECK(src >= 0 && src < cache_.num_blocks && dst >= 0 && dst < cache_.num_blocks);
  const size_t per = size_t(kBlockSize) * kMlaCacheDim;
  for (auto& c : mla_cache_) std::copy_n(c.begin() + per * src, per, c.begin() + per * dst);
}

void CpuModel::kda_mixer(int layer, const Batch& b, const float* a, float* out) {
  const KdaLayerWeights& w = w_.layers[layer].kda;
  const int H = config_.kda_num_heads, D = kKdaHeadDim, hidden = config_.hidden_size;
  const int64_t T = b.num_tokens(), HD = int64_t(H) * D;
  const int kind = config_.kind_index(layer);

  vector<float> qkv(T * 3 * HD), conv(T * 3 * HD);
  cpu::matmul(a, w.qkv.data(), qkv.data(), T, 3 * HD, hidden);
  cpu::KdaConvParams cp;
  cp.num_seqs = b.num_seqs();
  cp.cu_seqlens = b.cu_seqlens.data();
  cp.slots = b.slots.data();
  cp.num_slots = cache_.num_slots;
  cp.channels = int(3 * HD);
  cp.x = qkv.data();
  cp.weight = w.conv.data();
  cp.state = conv_state_[kind].data();
  cp.out = conv.data();
  cpu::kda_conv(cp);
  // Split the conv output into contiguous q, k, v [T, H, D].
  vector<float> q(T * HD), k(T * HD), v(T * HD);
  for (int64_t t = 0; t < T; ++t) {
    const float* row = conv.data() + t * 3 * HD;
    std::copy_n(row, HD, q.data() + t * HD);
    std::copy_n(row + HD, HD, k.data() + t * HD);
    std::copy_n(row + 2 * HD, HD, v.data() + t * HD);
  }
  cpu::kda_l2norm(q.data(), T, H, 1e-6f, 1.f / std::sqrt(float(D)));
  cpu::kda_l2norm(k.data(), T, H, 1e-6f, 1.f);

  // Gates read the normed layer input a, not the conv outputs.
  vector<float> low(T * D), g(T * HD), beta(T * H);
  cpu::matmul(a, w.f_a.data(), low.data(), T, D, hidden);
  cpu::matmul(low.data(), w.f_b.data(), g.data(), T, HD, D);
  cpu::matmul(a, w.b.data(), beta.data(), T, H, hidden);
  cpu::kda_gate(g.data(), beta.data(), w.A_log.data(), w.dt_bias.data(), T, H);

  vector<float> o(T * HD);
  cpu::KdaScanParams sp;
  sp.num_seqs = b.num_seqs();
  sp.cu_seqlens = b.cu_seqlens.data();
  sp.slots = b.slots.data();
  sp.num_slots = cache_.num_slots;
  sp.num_heads = H;
  sp.q = q.data();
  sp.k = k.data();
  sp.v = v.data();
  sp.g = g.data();
  sp.beta = beta.data();
  sp.state = kda_state_[kind].data();
  sp.out = o.data();
  // Pure decode steps take the recurrence; anything longer the chunked algorithm.
  if (T == b.num_seqs()) cpu::kda_recurrent(sp);
  else cpu::kda_chunked(sp);

  vector<float> z(T * HD);
  cpu::matmul(a, w.g_a.data(), low.data(), T, D, hidden);
  cpu::matmul(low.data(), w.g_b.data(), z.data(), T, HD, D);
  cpu::kda_gated_rmsnorm(o.data(), z.data(), w.o_norm.data(), o.data(), T, H,
                         config_.rms_norm_eps);
  cpu::matmul(o.data(), w.o.data(), out, T, hidden, HD);
}

void CpuModel::mla_mixer(int layer, const Batch& b, const float* a, float* out) {
  const MlaLayerWeights& w = w_.layers[layer].mla;
  const int H = config_.num_attention_heads, hidden = config_.hidden_size;
  const int64_t T = b.num_tokens();
  const int kind = config_.kind_index(layer);

  vector<float> q(T * H * kMlaQkDim), latent(T * kMlaCacheDim);
  cpu::matmul(a, w.q.data(), q.data(), T, int64_t(H) * kMlaQkDim, hidden);
  cpu::matmul(a, w.kv_a.data(), latent.data(), T, kMlaCacheDim, hidden);
  // RMSNorm on the 512 latent values only; k_pe (the last 64) passes through.
  for (int64_t t = 0; t < T; ++t) {
    float* row = latent.data() + t * kMlaCacheDim;
    cpu::rmsnorm(row, w.kv_norm.data(), row, 1, kMlaLatentDim, config_.rms_norm_eps);
  }
  cpu::MlaCacheWriteParams wp;
  wp.num_seqs = b.num_seqs();
  wp.cu_seqlens = b.cu_seqlens.data();
  wp.context_lens = b.context_lens.data();
  wp.block_tables = b.block_tables.data();
  wp.max_blocks_per_seq = b.max_blocks_per_seq;
  wp.num_blocks = cache_.num_blocks;
  wp.latent = latent.data();
  wp.cache = mla_cache_[kind].data();
  wp.fp8 = fp8_cache_;
  cpu::mla_cache_write(wp);

  vector<float> attn(T * H * kMlaVDim);
  cpu::MlaAttnParams ap;
  ap.num_seqs = b.num_seqs();
  ap.cu_seqlens = b.cu_seqlens.data();
  ap.context_lens = b.context_lens.data();
  ap.block_tables = b.block_tables.data();
  ap.max_blocks_per_seq = b.max_blocks_per_seq;
  ap.num_blocks = cache_.num_blocks;
  ap.cache = mla_cache_[kind].data();
  ap.num_heads = H;
  ap.q = q.data();
  ap.kv_b = w.kv_b.data();
  ap.scale = 1.f / std::sqrt(float(kMlaQkDim));
  ap.out = attn.data();
  // Decode (one new token per sequence) uses weight absorption; prefill the expanded form,
  // which costs fewer FLOPs when many queries share the context.
  if (T == b.num_seqs()) cpu::mla_attention_absorbed(ap);
  else cpu::mla_attention_expanded(ap);
  cpu::matmul(attn.data(), w.o.data(), out, T, hidden, int64_t(H) * kMlaVDim);
}

void CpuModel::mlp(const MlpWeights& w, const float* x, float* out, int64_t T) {
  vector<float> gate_up(T * 2 * w.inter), act(T * w.inter);
  cpu::matmul(x, w.gate_up.data(), gate_up.data(), T, 2 * w.inter, config_.hidden_size);
  cpu::silu_mul(gate_up.data(), act.data(), T, w.inter);
  cpu::matmul(act.data(), w.down.data(), out, T, config_.hidden_size, w.inter);
}

void CpuModel::moe(const MoeWeights& w, const float* x, float* out, int64_t T) {
  const int E = config_.num_experts, K = config_.num_experts_per_token;
  const int hidden = config_.hidden_size;
  vector<float> logits(T * E), weights(T * K);
  vector<int> ids(T * K);
  cpu::matmul(x, w.router.data(), logits.data(), T, E, hidden);
  cpu::MoeRouteParams rp;
  rp.num_tokens = T;
  rp.num_experts = E;
  rp.top_k = K;
  rp.renormalize = config_.moe_renormalize;
  rp.scaling = config_.routed_scaling_factor;
  rp.logits = logits.data();
  rp.correction_bias = w.correction_bias.data();
  rp.expert_ids = ids.data();
  rp.weights = weights.data();
  vector<float> margins;
  if (route_margins) {
    margins.resize(T);
    rp.margins = margins.data();
  }
  cpu::moe_route(rp);
  if (route_margins) {
    for (int64_t t = 0; t < T; ++t) (*route_margins)[t] = std::min((*route_margins)[t], margins[t]);
  }

  if (config_.num_shared_experts > 0) mlp(w.shared, x, out, T);
  else std::fill_n(out, T * hidden, 0.f);
  // Group the (token, k) pairs by expert, run each expert once on its tokens, scatter-add.
  vector<vector<int64_t>> rows(E);
  for (int64_t i = 0; i < T * K; ++i) rows[ids[i]].push_back(i);
  vector<float> xin, y;
  for (int e = 0; e < E; ++e) {
    const auto& r = rows[e];
    if (r.empty()) continue;
    const int64_t n = int64_t(r.size());
    xin.resize(n * hidden);
    y.resize(n * hidden);
    for (int64_t j = 0; j < n; ++j)
      std::copy_n(x + (r[j] / K) * hidden, hidden, xin.data() + j * hidden);
    mlp(w.experts[e], xin.data(), y.data(), n);
    for (int64_t j = 0; j < n; ++j) {
      float wt = weights[r[j]];
      float* o = out + (r[j] / K) * hidden;
      const float* yr = y.data() + j * hidden;
      for (int d = 0; d < hidden; ++d) o[d] += wt * yr[d];
    }
  }
}

void CpuModel::forward(const Batch& b, vector<float>& logits) {
  const int64_t T = b.num_tokens();
  const int S = b.num_seqs(), hidden = config_.hidden_size, V = config_.vocab_size;
  KIMI_CHECK(S >= 1 && T >= 1 && b.cu_seqlens.back() == T);
  if (route_margins) route_margins->assign(T, INFINITY);
  for (int s = 0; s < S; ++s) {
    int n = b.cu_seqlens[s + 1] - b.cu_seqlens[s];
    KIMI_CHECK(n >= 1 && b.context_lens[s] >= n);
    KIMI_CHECK(b.slots[s] >= 0 && b.slots[s] < cache_.num_slots, "slot ", b.slots[s]);
    for (int j = 0; j < (b.context_lens[s] + kBlockSize - 1) / kBlockSize; ++j) {
      int blk = b.block_tables[size_t(s) * b.max_blocks_per_seq + j];
      KIMI_CHECK(blk >= 0 && blk < cache_.num_blocks, "block ", blk);
    }
  }
  for (int64_t t = 0; t < T; ++t)
    KIMI_CHECK(b.tokens[t] >= 0 && b.tokens[t] < V, "token id ", b.tokens[t], " outside 0..",
               V - 1);

  vector<float> x(T * hidden), a(T * hidden), mix(T * hidden);
  for (int64_t t = 0; t < T; ++t)
    std::copy_n(w_.embed.data() + int64_t(b.tokens[t]) * hidden, hidden, x.data() + t * hidden);
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    const LayerWeights& L = w_.layers[l];
    cpu::rmsnorm(x.data(), L.input_norm.data(), a.data(), T, hidden, config_.rms_norm_eps);
    if (config_.is_kda(l)) kda_mixer(l, b, a.data(), mix.data());
    else mla_mixer(l, b, a.data(), mix.data());
    for (int64_t i = 0; i < T * hidden; ++i) x[i] += mix[i];
    cpu::rmsnorm(x.data(), L.post_norm.data(), a.data(), T, hidden, config_.rms_norm_eps);
    if (config_.is_moe(l)) moe(L.moe, a.data(), mix.data(), T);
    else mlp(L.mlp, a.data(), mix.data(), T);
    for (int64_t i = 0; i < T * hidden; ++i) x[i] += mix[i];
    if (on_layer_output) on_layer_output(l, x.data(), int(T));
  }
  // Final norm and lm_head on the rows that need logits.
  const int R = b.num_logit_rows();
  vector<float> last(int64_t(R) * hidden);
  const std::vector<int> rows = b.logit_token_rows();
  for (int r = 0; r < R; ++r)
    std::copy_n(x.data() + int64_t(rows[size_t(r)]) * hidden, hidden,
                last.data() + int64_t(r) * hidden);
  cpu::rmsnorm(last.data(), w_.final_norm.data(), last.data(), R, hidden, config_.rms_norm_eps);
  logits.resize(size_t(R) * V);
  cpu::matmul(last.data(), w_.lm_head.data(), logits.data(), R, V, hidden);
}

}  // namespace kimi
