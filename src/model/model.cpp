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
    check_tensor_parallel(config, opts.tensor_parallel);
    if (opts.backend != "cuda")
      fail("tensor parallelism (--tensor-parallel-size ", opts.tensor_parallel,
           ") needs the cuda backend; the ", opts.backend, " backend runs on one device");
  }
  if (opts.backend == "cpu") {
    if (opts.random_weights) fail("random weights (--random-weights) need the cuda backend");
    Checkpoint ckpt(dir);
    return std::make_unique<CpuModel>(config, ckpt, opts.cache);
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
