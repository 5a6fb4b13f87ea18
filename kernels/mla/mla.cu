// MLA launchers and the host attention plan (contracts in mla.h).
#include <algorithm>
#include <atomic>

#include "common.h"
#include "launch.h"
#include "mla/mla.cuh"
#include "mla/mla_decode_fp8.cuh"
#include "mla/mla_decode_tc.cuh"
#include "mla/mla_tc.cuh"
#include "tensor_map.h"

namespace kimi::cuda {

void run_mla_cache_write(const MlaCacheWriteParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.num_seqs >= 0 && p.num_tokens >= 0, "cache write S ", p.num_seqs, " T ", p.num_tokens);
  if (p.num_tokens == 0) return;
  KIMI_CHECK(p.num_seqs > 0 && p.max_blocks_per_seq > 0, "cache write: no sequences/blocks");
  KIMI_CHECK(p.cu_seqlens && p.context_lens && p.block_tables && p.latent && p.norm_weight &&
                 (p.cache != nullptr) != (p.cache8 != nullptr),
             "cache write: null pointer (or both cache and cache8 set)");
  launch_kernel(mla::mla_cache_write_kernel, p.num_tokens, 128, LaunchOptions{0, true}, stream, p);
}

namespace {
// CTAs a decode item (one query token) takes.
int decode_ctas_per_item(int num_heads, bool tensor_cores) {
  return ceil_div(num_heads, tensor_cores ? kMlaDecHeadsPerCta : kMlaHeadsPerCta);
}
}  // namespace

MlaAttnPlan make_mla_attn_plan(int num_seqs, const int* cu, const int* ctx, int num_heads,
                               int num_sms, int max_partials, bool tensor_cores,
                               const uint8_t* skip) {
  KIMI_CHECK(num_seqs >= 0 && num_heads > 0 && num_sms > 0, "mla plan S ", num_seqs, " H ",
             num_heads, " SMs ", num_sms);
  MlaAttnPlan plan;
  const int T = num_seqs ? cu[num_seqs] : 0;
  plan.split_base.assign(T, -1);
  plan.num_splits.assign(T, 0);
  for (int s = 0; s < num_seqs; ++s) {
    const int n = cu[s + 1] - cu[s], L = ctx[s], pos0 = L - n;
    KIMI_CHECK(n >= 0 && L >= n, "mla plan: sequence ", s, " has ", n, " new tokens, context ", L);
    if (skip && skip[s]) continue;
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
  // items run 16 heads per CTA on tensor cores (8 on CUDA cores), decode items 32 (8).
  const int64_t base =
      int64_t(plan.items1.size()) * decode_ctas_per_item(num_heads, tensor_cores) +
      int64_t(plan.items4.size()) *
          ceil_div(num_heads, tensor_cores ? kMlaTcHeadsPerCta : kMlaHeadsPerCta);
  if (base == 0 || base >= 2 * num_sms) return plan;
  const int want = int(ceil_div(2 * num_sms, int(base)));
  // Splits start on whole tiles: a cache block for the decode kernel (its tile), else kTile.
  const int align = tensor_cores ? kMlaBlock : mla::kTile;
  for (auto* list : {&plan.items1, &plan.items4}) {
    std::vector<MlaWorkItem> out;
    for (const MlaWorkItem& it : *list) {
      const int len = it.kv_end - it.kv_begin;
      int ns = std::min(want, ceil_div(len, 256));
      if (ns > 1) {
        const int chunk = ceil_div(ceil_div(len, ns), align) * align;
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

int mla_decode_splits(int num_seqs, int num_heads, int num_sms, int max_partials,
                      bool tensor_cores) {
  const int S = std::max(1, num_seqs), per_item = decode_ctas_per_item(num_heads, tensor_cores);
  if (!tensor_cores) {
    const int want = ceil_div(2 * num_sms, S * per_item);
    return std::max(1, std::min(want, max_partials / S));
  }
  // One CTA per SM (208 KB of shared memory): the fewest splits whose CTAs fill the waves within
  // 3% of the best fill reachable (e.g. 132 SMs: 129 splits at batch 1, 2 at batch 64).
  const int cap = std::max(1, std::min(2 * num_sms, max_partials / S));
  auto fill = [&](int ns) {
    const int64_t ctas = int64_t(S) * ns * per_item, waves = (ctas + num_sms - 1) / num_sms;
    return double(ctas) / double(waves * num_sms);
  };
  double best = 0.0;
  for (int ns = 1; ns <= cap; ++ns) best = std::max(best, fill(ns));
  for (int ns = 1; ns <= cap; ++ns)
    if (fill(ns) >= 0.97 * best) return ns;
  return 1;
}

MlaAttnPlan make_mla_decode_plan(int num_seqs, const int* ctx, int num_heads, int num_sms,
                                 int max_partials, bool tensor_cores) {
  MlaAttnPlan plan;
  const int ns = mla_decode_splits(num_seqs, num_heads, num_sms, max_partials, tensor_cores);
  plan.split_base.assign(num_seqs, -1);
  plan.num_splits.assign(num_seqs, 0);
  // Fixed partial slots (ns per sequence) whatever the contexts: whether the combine runs is part
  // of the captured graph.
  if (ns > 1) plan.num_partials = num_seqs * ns;
  for (int s = 0; s < num_seqs; ++s) {
    const int L = ctx[s];
    KIMI_CHECK(L >= 1, "mla decode plan: sequence ", s, " has context ", L);
    if (ns == 1) {
      plan.items1.push_back({s, s, 1, L - 1, 0, L, -1});
      continue;
    }
    int chunk = ceil_div(L, ns);
    if (tensor_cores) chunk = std::max(chunk, kMlaDecodeMinSplit);
    const int align = tensor_cores ? kMlaBlock : mla::kTile;  // the kernel's tile
    chunk = ceil_div(chunk, align) * align;
    const int busy = tensor_cores ? ceil_div(L, chunk) : ns;
    if (busy == 1) {  // one split: u directly, the other slots idle
      plan.items1.push_back({s, s, 1, L - 1, 0, L, -1});
      for (int k = 1; k < ns; ++k) plan.items1.push_back({s, s, 0, L - 1, L, L, -1});
      continue;
    }
    plan.split_base[s] = s * ns;
    plan.num_splits[s] = busy;
    for (int k = 0; k < ns; ++k) {
      const int b = std::min(L, k * chunk), e = std::min(L, (k + 1) * chunk);
      if (k < busy) plan.items1.push_back({s, s, 1, L - 1, b, e, k});
      else plan.items1.push_back({s, s, 0, L - 1, L, L, -1});
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

void launch_decode_tc(const MlaAttnParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.num_blocks > 0, "mla decode: num_blocks (the cache's extent) not set");
  mla::DecArgs a{};
  a.p = p;
  const dim3 grid(p.num_items, ceil_div(p.num_heads, kMlaDecHeadsPerCta));
  // fp8: the register-operand kernel where a CTA's KV range averages kDec8MinTiles tiles or
  // more (from the widest block table: fixed for a captured decode graph), else the converter
  // kernel (mla_decode_fp8.cuh says why).
  const bool fp8_reg = int64_t(p.num_tokens) * p.max_blocks_per_seq >=
                       int64_t(mla::kDec8MinTiles) * std::max(p.num_items, 1);
  if (p.cache8 && fp8_reg) {
    launch_kernel(mla::mla_decode_fp8_kernel, grid, mla::Dec8Layout::kThreads,
                  LaunchOptions{mla::Dec8Layout::kSmem, true}, stream, a);
  } else if (p.cache8) {  // whole records by bulk copies: no tensor map
    launch_kernel(mla::mla_decode_kernel<true>, grid, mla::DecLayout<true>::kThreads,
                  LaunchOptions{mla::DecLayout<true>::kSmem, true}, stream, a);
  } else {
    a.cache = tensor_map_2d(p.cache, kMlaRow, uint64_t(p.num_blocks) * kMlaBlock, kMlaRow * 2,
                            kMlaBlock);
    launch_kernel(mla::mla_decode_kernel<false>, grid, mla::DecLayout<false>::kThreads,
                  LaunchOptions{mla::DecLayout<false>::kSmem, true}, stream, a);
  }
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
  CUDA_CHECK(cudaFuncSetAttribute(mla::mla_decode_kernel<false>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(mla::DecLayout<false>::kSmem)));
  CUDA_CHECK(cudaFuncSetAttribute(mla::mla_decode_kernel<true>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(mla::DecLayout<true>::kSmem)));
  CUDA_CHECK(cudaFuncSetAttribute(mla::mla_decode_fp8_kernel,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(mla::Dec8Layout::kSmem)));
  done.fetch_or(bit);
}

void run_mla_attention(const MlaAttnParams& p, int queries_per_item, cudaStream_t stream) {
  mla_prepare();
  KIMI_CHECK(p.num_items >= 0 && p.num_heads > 0, "mla attention items ", p.num_items, " H ",
             p.num_heads);
  if (p.num_items == 0) return;
  KIMI_CHECK(p.num_items <= 0x7fffffff && p.items && p.q_abs && p.q && p.block_tables && p.u &&
                 p.split_base && (p.cache != nullptr) != (p.cache8 != nullptr),
             "mla attention: null pointer (or both cache and cache8 set)");
  KIMI_CHECK(!p.cache8 || p.tensor_cores,
             "mla attention: the fp8 cache has no CUDA-core kernel (KIMI_CUDA_MLA=cuda_cores)");
  KIMI_CHECK(p.scale > 0.f, "mla attention scale ", p.scale);
  if (queries_per_item == 1 && p.tensor_cores) launch_decode_tc(p, stream);
  else if (queries_per_item == 1) launch_attn<1>(p, stream);
  else if (queries_per_item == 4 && p.tensor_cores) launch_attn_tc(p, stream);
  else if (queries_per_item == 4) launch_attn<4>(p, stream);
  else fail("mla attention: queries_per_item must be 1 or 4, got ", queries_per_item);
}

void run_mla_combine(const MlaAttnParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return;
  KIMI_CHECK(p.num_splits && p.split_base && p.partials && p.u, "mla combine: null pointer");
  // Few (token, head) pairs (small batches, which split the most): 4 CTAs per pair.
  const LaunchOptions pdl{0, true};
  if (int64_t(p.num_tokens) * p.num_heads < 512)
    launch_kernel(mla::mla_combine_kernel<4, 256>, dim3(p.num_tokens, p.num_heads, 4), 256, pdl, stream, p);
  else
    launch_kernel(mla::mla_combine_kernel<1, 128>, dim3(p.num_tokens, p.num_heads, 1), 128, pdl, stream, p);
}

}  // namespace kimi::cuda
