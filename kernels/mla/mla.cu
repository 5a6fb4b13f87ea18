// MLA launchers and the host attention plan (contracts in mla.h).
#include <algorithm>
#include <atomic>

#include "common.h"
#include "mla/mla.cuh"
#include "mla/mla_tc.cuh"

namespace kimi::cuda {

void run_mla_cache_write(const MlaCacheWriteParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.num_seqs >= 0 && p.num_tokens >= 0, "cache write S ", p.num_seqs, " T ", p.num_tokens);
  if (p.num_tokens == 0) return;
  KIMI_CHECK(p.num_seqs > 0 && p.max_blocks_per_seq > 0, "cache write: no sequences/blocks");
  KIMI_CHECK(p.cu_seqlens && p.context_lens && p.block_tables && p.latent && p.norm_weight && p.cache,
             "cache write: null pointer");
  mla::mla_cache_write_kernel<<<p.num_tokens, 128, 0, stream>>>(p);
  KIMI_CHECK_LAUNCH();
}

MlaAttnPlan make_mla_attn_plan(int num_seqs, const int* cu, const int* ctx, int num_heads,
                               int num_sms, int max_partials) {
  KIMI_CHECK(num_seqs >= 0 && num_heads > 0 && num_sms > 0, "mla plan S ", num_seqs, " H ",
             num_heads, " SMs ", num_sms);
  MlaAttnPlan plan;
  const int T = num_seqs ? cu[num_seqs] : 0;
  plan.split_base.assign(T, -1);
  plan.num_splits.assign(T, 0);
  for (int s = 0; s < num_seqs; ++s) {
    const int n = cu[s + 1] - cu[s], L = ctx[s], pos0 = L - n;
    KIMI_CHECK(n >= 0 && L >= n, "mla plan: sequence ", s, " has ", n, " new tokens, context ", L);
    if (n == 1) {
      plan.items1.push_back({s, cu[s], 1, pos0, 0, L, -1});
    } else {
      for (int i0 = 0; i0 < n; i0 += 4) {
        const int nq = std::min(4, n - i0);
        plan.items4.push_back({s, cu[s] + i0, nq, pos0 + i0, 0, pos0 + i0 + nq, -1});
      }
    }
  }
  // Split the KV range when the items alone leave the GPU idle (decode at small batch). Prefill
  // items run 16 heads per CTA (tensor cores), decode items 8.
  const int64_t base = int64_t(plan.items1.size()) * ceil_div(num_heads, kMlaHeadsPerCta) +
                       int64_t(plan.items4.size()) * ceil_div(num_heads, kMlaTcHeadsPerCta);
  if (base == 0 || base >= 2 * num_sms) return plan;
  const int want = int(ceil_div(2 * num_sms, int(base)));
  for (auto* list : {&plan.items1, &plan.items4}) {
    std::vector<MlaWorkItem> out;
    for (const MlaWorkItem& it : *list) {
      const int len = it.kv_end - it.kv_begin;
      int ns = std::min(want, ceil_div(len, 256));
      if (ns > 1) {
        const int chunk = ceil_div(ceil_div(len, ns), mla::kTile) * mla::kTile;
        ns = ceil_div(len, chunk);
        if (ns > 1 && plan.num_partials + it.nq * ns <= max_partials) {
          for (int i = 0; i < it.nq; ++i) {
            plan.split_base[it.q_begin + i] = plan.num_partials + i * ns;
            plan.num_splits[it.q_begin + i] = ns;
          }
          plan.num_partials += it.nq * ns;
          for (int k = 0; k < ns; ++k) {
            MlaWorkItem piece = it;
            piece.kv_begin = it.kv_begin + k * chunk;
            piece.kv_end = std::min(it.kv_end, piece.kv_begin + chunk);
            piece.split = k;
            out.push_back(piece);
          }
          continue;
        }
      }
      out.push_back(it);
    }
    *list = std::move(out);
  }
  return plan;
}

int mla_decode_splits(int num_seqs, int num_heads, int num_sms, int max_partials) {
  const int groups = ceil_div(num_heads, kMlaHeadsPerCta);
  const int want = ceil_div(2 * num_sms, std::max(1, num_seqs * groups));
  return std::max(1, std::min(want, max_partials / std::max(1, num_seqs)));
}

MlaAttnPlan make_mla_decode_plan(int num_seqs, const int* ctx, int num_heads, int num_sms,
                                 int max_partials) {
  MlaAttnPlan plan;
  const int ns = mla_decode_splits(num_seqs, num_heads, num_sms, max_partials);
  plan.split_base.assign(num_seqs, -1);
  plan.num_splits.assign(num_seqs, 0);
  for (int s = 0; s < num_seqs; ++s) {
    const int L = ctx[s];
    KIMI_CHECK(L >= 1, "mla decode plan: sequence ", s, " has context ", L);
    if (ns == 1) {
      plan.items1.push_back({s, s, 1, L - 1, 0, L, -1});
      continue;
    }
    plan.split_base[s] = plan.num_partials;
    plan.num_splits[s] = ns;
    plan.num_partials += ns;
    const int chunk = ceil_div(ceil_div(L, ns), mla::kTile) * mla::kTile;
    for (int k = 0; k < ns; ++k) {
      const int b = std::min(L, k * chunk), e = std::min(L, (k + 1) * chunk);
      plan.items1.push_back({s, s, 1, L - 1, b, e, k});
    }
  }
  return plan;
}

namespace {
template <int QB>
size_t attn_smem() {
  return size_t(QB * kMlaHeadsPerCta + mla::kTile) * kMlaRow * sizeof(bf16);
}

template <int QB>
void launch_attn(const MlaAttnParams& p, cudaStream_t stream) {
  const size_t smem = attn_smem<QB>();
  const dim3 grid(p.num_items, ceil_div(p.num_heads, kMlaHeadsPerCta));
  mla::mla_attn_kernel<QB><<<grid, 256, smem, stream>>>(p);
  KIMI_CHECK_LAUNCH();
}

void launch_attn_tc(const MlaAttnParams& p, cudaStream_t stream) {
  const dim3 grid(p.num_items, ceil_div(p.num_heads, kMlaTcHeadsPerCta));
  mla::mla_attn_tc_kernel<<<grid, mla::kTcThreads, mla::kTcSmem, stream>>>(p);
  KIMI_CHECK_LAUNCH();
}
}  // namespace

void mla_prepare() {
  // The attribute is per function and device: set once on each device this process uses
  // (tensor-parallel ranks run on several).
  static std::atomic<uint64_t> done{0};
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = uint64_t(1) << (dev & 63);
  if (done.load() & bit) return;
  CUDA_CHECK(cudaFuncSetAttribute(mla::mla_attn_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(attn_smem<1>())));
  CUDA_CHECK(cudaFuncSetAttribute(mla::mla_attn_kernel<4>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(attn_smem<4>())));
  CUDA_CHECK(cudaFuncSetAttribute(mla::mla_attn_tc_kernel,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, int(mla::kTcSmem)));
  done.fetch_or(bit);
}

void run_mla_attention(const MlaAttnParams& p, int queries_per_item, cudaStream_t stream) {
  mla_prepare();
  KIMI_CHECK(p.num_items >= 0 && p.num_heads > 0, "mla attention items ", p.num_items, " H ",
             p.num_heads);
  if (p.num_items == 0) return;
  KIMI_CHECK(p.num_items <= 0x7fffffff && p.items && p.q_abs && p.q && p.cache && p.block_tables &&
                 p.u && p.split_base,
             "mla attention: null pointer");
  KIMI_CHECK(p.scale > 0.f, "mla attention scale ", p.scale);
  if (queries_per_item == 1) launch_attn<1>(p, stream);
  else if (queries_per_item == 4 && p.tensor_cores) launch_attn_tc(p, stream);
  else if (queries_per_item == 4) launch_attn<4>(p, stream);
  else fail("mla attention: queries_per_item must be 1 or 4, got ", queries_per_item);
}

void run_mla_combine(const MlaAttnParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return;
  KIMI_CHECK(p.num_splits && p.split_base && p.partials && p.u, "mla combine: null pointer");
  mla::mla_combine_kernel<<<dim3(p.num_tokens, p.num_heads), 128, 0, stream>>>(p);
  KIMI_CHECK_LAUNCH();
}

}  // namespace kimi::cuda
