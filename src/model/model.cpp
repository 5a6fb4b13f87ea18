#include "model/model.h"

#ifdef KIMI_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "core/check.h"
#include "model/cpu_model.h"
#if KIMI_HAVE_CUDA
#include "model/cuda_model.h"
#include "model/tp_model.h"
#endif
#include "model/safetensors.h"
#include "model/tensor_parallel.h"

namespace kimi {

int Batch::first_logit_token(int s) const {
  if (all_logits) return cu_seqlens[s];
  if (seq_all_logits.empty()) return cu_seqlens[s + 1] - 1;
  KIMI_CHECK(int(seq_all_logits.size()) == num_seqs(), "seq_all_logits has ", seq_all_logits.size(),
             " entries for ", num_seqs(), " sequences");
  return seq_all_logits[size_t(s)] ? cu_seqlens[s] : cu_seqlens[s + 1] - 1;
}

int Batch::num_logit_rows() const {
  int rows = 0;
  for (int s = 0; s < num_seqs(); ++s) rows += cu_seqlens[s + 1] - first_logit_token(s);
  return rows;
}

std::vector<int> Batch::logit_token_rows() const {
  std::vector<int> rows;
  for (int s = 0; s < num_seqs(); ++s)
    for (int t = first_logit_token(s); t < cu_seqlens[s + 1]; ++t) rows.push_back(t);
  return rows;
}

void Batch::add(const std::vector<int>& new_tokens, int context_len, int slot,
                const std::vector<int>& blocks) {
  KIMI_CHECK(!new_tokens.empty(), "a sequence in a batch needs at least one new token");
  KIMI_CHECK(context_len >= int(new_tokens.size()));
  KIMI_CHECK(int(blocks.size()) * kBlockSize >= context_len, "too few cache blocks for ",
             context_len, " tokens");
  if (cu_seqlens.empty()) cu_seqlens.push_back(0);
  tokens.insert(tokens.end(), new_tokens.begin(), new_tokens.end());
  cu_seqlens.push_back(int(tokens.size()));
  context_lens.push_back(context_len);
  slots.push_back(slot);
  // Re-pack the block tables when this sequence needs a wider row.
  int width = std::max(max_blocks_per_seq, int(blocks.size()));
  if (width != max_blocks_per_seq) {
    std::vector<int> wide(size_t(num_seqs() - 1) * width, 0);
    for (int s = 0; s + 1 < num_seqs(); ++s)
      std::copy_n(block_tables.begin() + size_t(s) * max_blocks_per_seq, max_blocks_per_seq,
                  wide.begin() + size_t(s) * width);
    block_tables = std::move(wide);
    max_blocks_per_seq = width;
  }
  size_t row = block_tables.size();
  block_tables.resize(row + width, 0);
  std::copy(blocks.begin(), blocks.end(), block_tables.begin() + row);
}

Precision parse_precision(const std::string& name) {
  if (name == "bf16") return Precision::kBf16;
  if (name == "high") return Precision::kHigh;
  fail("precision must be bf16 or high, got '", name, "'");
}

const char* precision_name(Precision p) { return p == Precision::kHigh ? "high" : "bf16"; }

KvCacheDtype parse_kv_cache_dtype(const std::string& name) {
  if (name == "auto" || name == "bf16") return KvCacheDtype::kBf16;
  if (name == "fp8") return KvCacheDtype::kFp8;
  fail("kv cache dtype must be auto, bf16 or fp8, got '", name, "'");
}

const char* kv_cache_dtype_name(KvCacheDtype d) {
  return d == KvCacheDtype::kFp8 ? "fp8" : "bf16";
}

CacheEntryBytes cache_entry_bytes(const ModelConfig& c, const ModelOptions& opts) {
  const bool cuda = opts.backend == "cuda";
  const int64_t state = int64_t(c.kda_num_heads) * kKdaHeadDim * kKdaHeadDim;
  const int64_t conv = int64_t(3) * c.kda_num_heads * kKdaHeadDim * (kKdaConvSize - 1);
  const int conv_elem = cuda && opts.precision != Precision::kHigh ? 2 : 4;
  const int64_t row = !cuda                                       ? int64_t(kMlaCacheDim) * 4
                      : opts.kv_cache_dtype == KvCacheDtype::kFp8 ? int64_t(kMlaFp8RowBytes)
                                                                  : int64_t(kMlaCacheDim) * 2;
  return {c.num_kda_layers() * (state * 4 + conv * conv_elem), c.num_mla_layers() * row};
}

CacheBudget cache_budget(const ModelConfig& c, const ModelOptions& opts, double memory_fraction,
                         int64_t cpu_budget_bytes) {
  CacheBudget b;
  if (opts.backend != "cuda") {
    const CacheEntryBytes e = cache_entry_bytes(c, opts);
    b.slot_bytes = e.slot;
    // Priced as one MLA layer's at least, so a config without one still has a bounded count.
    b.block_bytes = kBlockSize * std::max<int64_t>(e.mla_token, kMlaCacheDim * 4);
    b.budget_bytes = cpu_budget_bytes;
    b.how = str("the CPU cache budget of ", cpu_budget_bytes >> 20, " MiB");
    return b;
  }
#if KIMI_HAVE_CUDA
  if (!(memory_fraction > 0 && memory_fraction <= 1))
    fail("gpu memory utilization ", memory_fraction, " must be in (0, 1]");
  const int world = std::max(opts.tensor_parallel, 1);
  if (world > 1) check_tensor_parallel(c, world, opts.expert_parallel);
  b.budget_bytes = INT64_MAX;
  for (int r = 0; r < world; ++r) {
    const CudaMemoryPlan p = CudaModel::plan_memory(c, opts, r);
    const int64_t used_by_others = int64_t(p.total_bytes - p.free_bytes);
    const int64_t budget = int64_t(memory_fraction * double(p.total_bytes)) - used_by_others -
                           int64_t(p.weight_bytes + p.arena_bytes + p.fixed_bytes);
    if (budget < b.budget_bytes) {
      b.budget_bytes = budget;
      b.how = str(int(memory_fraction * 100 + 0.5), "% of GPU ", r, "'s ", p.total_bytes >> 20,
                  " MiB, less ", used_by_others >> 20, " MiB in use, ", p.weight_bytes >> 20,
                  " MiB of weights, ", (p.arena_bytes + p.fixed_bytes) >> 20,
                  " MiB of activations and reserve");
    }
    b.slot_bytes = int64_t(p.slot_bytes);
    b.block_bytes = std::max<int64_t>(int64_t(p.block_bytes), 1);
  }
  b.budget_bytes = std::max<int64_t>(b.budget_bytes, 0);
  return b;
#else
  (void)memory_fraction;
  fail("unknown backend '", opts.backend, "' (this build has: cpu)");
#endif
}

std::string default_backend() {
#ifdef KIMI_HAVE_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) return "cuda";
  cudaGetLastError();  // clear the "no device" error
#endif
  return "cpu";
}

std::unique_ptr<Model> load_model(const std::string& dir, const ModelOptions& opts) {
  ModelConfig config = ModelConfig::from_file(dir + "/config.json");
  if (opts.num_layers != 0) {
    if (!opts.random_weights) fail("num_layers (--layers) needs random weights (--random-weights)");
    if (opts.num_layers < 1 || opts.num_layers > config.num_hidden_layers)
      fail("num_layers ", opts.num_layers, " outside 1..", config.num_hidden_layers, " (", dir,
           "/config.json)");
    config.num_hidden_layers = opts.num_layers;
    config.layer_kinds.resize(opts.num_layers);
  }
  if (opts.tensor_parallel != 1) {
    check_tensor_parallel(config, opts.tensor_parallel, opts.expert_parallel);
    if (opts.backend != "cuda")
      fail("tensor parallelism (--tensor-parallel-size ", opts.tensor_parallel,
           ") needs the cuda backend; the ", opts.backend, " backend runs on one device");
  }
  if (opts.backend == "cpu") {
    if (opts.random_weights) fail("random weights (--random-weights) need the cuda backend");
    Checkpoint ckpt(dir);
    return std::make_unique<CpuModel>(config, ckpt, opts.cache, opts.kv_cache_dtype);
  }
#if KIMI_HAVE_CUDA
  if (opts.backend == "cuda") {
    std::unique_ptr<Checkpoint> ckpt;
    if (!opts.random_weights) ckpt = std::make_unique<Checkpoint>(dir);
    if (opts.tensor_parallel > 1) return std::make_unique<TpModel>(config, ckpt.get(), opts);
    return std::make_unique<CudaModel>(config, ckpt.get(), opts);
  }
  fail("unknown backend '", opts.backend, "' (this build has: cpu, cuda)");
#else
  fail("unknown backend '", opts.backend, "' (this build has: cpu; cuda needs nvcc at configure time)");
#endif
}

}  // namespace kimi
