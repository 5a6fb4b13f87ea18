// CudaModel start-up and --random-weights: weights drawn from config.json alone are reproducible
// and give finite logits; a model that does not fit is refused with the sizes in the message;
// the cpu backend refuses random weights and layer truncation needs random weights.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include "../error_of.h"
#include "core/check.h"  // before gpu_test_util.h, which uses str() but does not include it
#include "../ops/gpu_test_util.h"
#include "model/model.h"
#include "kimi/engine.h"
#include "model/tiny.h"
#include "runtime/sampler.h"
#if KIMI_HAVE_CUDA
#include "model/cuda_model.h"
#endif

namespace kimi {
namespace {

using test::error_of;

namespace fs = std::filesystem;

// A model directory holding only config.json (the tiny test shapes, 4 layers: 3 KDA + 1 MLA).
std::string config_only_dir() {
  const fs::path dir = fs::temp_directory_path() / "kimi-cuda-config-only";
  fs::create_directories(dir);
  TinySpec spec;
  std::ofstream(dir / "config.json") << tiny_config_json(spec);
  return dir.string();
}

TEST(CudaModelHost, RandomWeightsNeedCudaAndLayersNeedRandom) {
  const std::string dir = config_only_dir();
  ModelOptions o;
  o.random_weights = true;
  EXPECT_NE(error_of([&] { load_model(dir, o); }).find("need the cuda backend"), std::string::npos);
  ModelOptions o2;
  o2.num_layers = 2;
  EXPECT_NE(error_of([&] { load_model(dir, o2); }).find("needs random weights"), std::string::npos);
}

class CudaModelGpu : public ::testing::Test {
 protected:
  void SetUp() override {
#if KIMI_HAVE_CUDA
    const std::string why = test::gpu_unavailable_reason();
    if (!why.empty()) {
      std::fprintf(stderr, "GPU model test skipped: %s\n", why.c_str());
      GTEST_SKIP() << why;
    }
#else
    std::fprintf(stderr, "GPU model test skipped: built without the CUDA backend\n");
    GTEST_SKIP() << "built without the CUDA backend";
#endif
  }
};

std::vector<float> run_once(const std::string& dir, uint64_t seed, int layers) {
  ModelOptions o;
  o.backend = "cuda";
  o.random_weights = true;
  o.seed = seed;
  o.num_layers = layers;
  o.cache.num_slots = 2;
  o.cache.num_blocks = 4;
  o.max_batch_tokens = 200;
  auto m = load_model(dir, o);
  EXPECT_EQ(m->config().num_hidden_layers, layers ? layers : 4);
  Batch b;
  b.all_logits = true;
  std::vector<int> ids(150);
  for (int i = 0; i < 150; ++i) ids[i] = (i * 37) % 1000;
  b.add(ids, 150, 1, {2, 0, 3});
  std::vector<float> logits;
  m->forward(b, logits);
  Batch d;
  d.add({5}, 151, 1, {2, 0, 3});
  std::vector<float> step;
  m->forward(d, step);
  logits.insert(logits.end(), step.begin(), step.end());
  return logits;
}

// Per-sequence logits rows (prompt logprobs) on the device: a flagged sequence's every token, the
// others' last, equal to an all_logits step's rows of the same batch.
TEST_F(CudaModelGpu, PerSequenceAllLogitsRows) {
  ModelOptions o;
  o.backend = "cuda";
  o.random_weights = true;
  o.seed = 3;
  o.cache.num_slots = 6;
  o.cache.num_blocks = 12;
  o.max_batch_tokens = 200;
  auto m = load_model(config_only_dir(), o);
  const int V = m->config().vocab_size;
  const int lens[] = {70, 3, 1};
  auto step = [&](int slot0, bool all, std::vector<uint8_t> flags, std::vector<float>& out) {
    Batch b;
    for (int s = 0; s < 3; ++s) {
      std::vector<int> ids(static_cast<size_t>(lens[s]));
      for (int i = 0; i < lens[s]; ++i) ids[size_t(i)] = (i * 31 + s * 7) % 1000;
      m->reset_slot(slot0 + s);
      b.add(ids, lens[s], slot0 + s, {2 * (slot0 + s), 2 * (slot0 + s) + 1});
    }
    b.all_logits = all;
    b.seq_all_logits = std::move(flags);
    m->forward(b, out);
    return b.logit_token_rows();
  };
  std::vector<float> all, mixed;
  step(0, true, {}, all);
  const std::vector<int> rows = step(3, false, {0, 1, 1}, mixed);
  ASSERT_EQ(rows, (std::vector<int>{69, 70, 71, 72, 73}));
  ASSERT_EQ(mixed.size(), rows.size() * size_t(V));
  for (size_t r = 0; r < rows.size(); ++r)
    for (int i = 0; i < V; ++i)
      ASSERT_NEAR(mixed[r * V + i], all[size_t(rows[r]) * V + i],
                  1e-3f * (1 + std::fabs(all[size_t(rows[r]) * V + i])))
          << "row " << r << " id " << i;
}

TEST_F(CudaModelGpu, RandomWeightsFromConfigAloneAreReproducible) {
  const std::string dir = config_only_dir();
  std::vector<float> a = run_once(dir, 7, 0), b = run_once(dir, 7, 0), c = run_once(dir, 8, 0);
  size_t bad = 0;
  for (float v : a) bad += !std::isfinite(v);
  EXPECT_EQ(bad, 0u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  double mean_abs = 0;
  for (float v : a) mean_abs += std::fabs(v);
  EXPECT_GT(mean_abs / a.size(), 1e-3);  // not all zeros
  std::vector<float> two = run_once(dir, 7, 2);
  EXPECT_EQ(two.size(), a.size());
  EXPECT_NE(two, a);
}

// The engine sizes the caches from GPU memory (--gpu-memory-utilization): per-slot and per-block
// bytes of the full-size model on the GPU, the 91.5 GiB of weights taken off the budget, and at
// TP = 2 half the KDA state and half the weights per rank (the latent cache is whole on each).
TEST_F(CudaModelGpu, CacheBudgetComesFromGpuMemory) {
#if KIMI_HAVE_CUDA
  const ModelConfig c = ModelConfig::from_file(std::string(KIMI_SOURCE_DIR) +
                                               "/benchmarks/configs/kimi-linear-48b-a3b/config.json");
  ModelOptions o;
  o.backend = "cuda";
  o.cache.num_slots = 64;
  const CacheBudget b = cache_budget(c, o, 0.9, 0);
  std::printf("TP=1 budget: %lld MiB (%s); slot %lld B, block %lld B\n",
              (long long)(b.budget_bytes >> 20), b.how.c_str(), (long long)b.slot_bytes,
              (long long)b.block_bytes);
  const int64_t HD = int64_t(c.kda_num_heads) * kKdaHeadDim;
  EXPECT_EQ(b.slot_bytes, c.num_kda_layers() * (3 * HD * (kKdaConvSize - 1) * 2 + HD * kKdaHeadDim * 4));
  EXPECT_EQ(b.block_bytes, int64_t(c.num_mla_layers()) * kBlockSize * kMlaCacheDim * 2);
  EXPECT_NE(b.how.find("90% of GPU 0"), std::string::npos) << b.how;
  EXPECT_NE(b.how.find(" MiB of weights"), std::string::npos) << b.how;
  // The weights (91.5 GiB) come off: on any card the budget is below 90% of it less them.
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  EXPECT_LE(b.budget_bytes, std::max<int64_t>(0, int64_t(0.9 * double(total_b)) - (int64_t(91) << 30)));
  int gpus = 0;
  cudaGetDeviceCount(&gpus);
  if (gpus >= 2) {
    o.tensor_parallel = 2;
    const CacheBudget two = cache_budget(c, o, 0.9, 0);
    std::printf("TP=2 budget: %lld MiB (%s)\n", (long long)(two.budget_bytes >> 20), two.how.c_str());
    EXPECT_EQ(two.slot_bytes * 2, b.slot_bytes);
    EXPECT_EQ(two.block_bytes, b.block_bytes);
    // Each rank holds about half the weights (embedding, norms, router and latent projections
    // are whole). Budgets themselves move with what other tests hold on the GPU meanwhile.
    o.tensor_parallel = 1;
    const CudaMemoryPlan one_rank = CudaModel::plan_memory(c, o, 0);
    o.tensor_parallel = 2;
    for (int r = 0; r < 2; ++r) {
      const CudaMemoryPlan half = CudaModel::plan_memory(c, o, r);
      EXPECT_LT(half.weight_bytes, one_rank.weight_bytes * 0.53) << "rank " << r;
      EXPECT_GT(half.weight_bytes, one_rank.weight_bytes * 0.5) << "rank " << r;
    }
  }
#endif
}

// kimi-serve's path on the GPU: an Engine on the cuda backend with caches sized from memory
// serves a greedy request to its length.
TEST_F(CudaModelGpu, EngineSizesCachesFromGpuMemoryAndServes) {
  EngineOptions eo;
  eo.model_dir = std::string(KIMI_BINARY_DIR) + "/default-model";
  eo.backend = "cuda";
  eo.max_num_seqs = 4;
  auto eng = Engine::create(eo);
  EXPECT_GT(eng->max_model_len(), 1000);
  Request r;
  r.prompt_ids = {1, 2, 3, 4, 5};
  r.sampling.temperature = 0;
  r.max_tokens = 12;
  r.ignore_eos = true;
  auto h = eng->submit(r);
  int tokens = 0;
  FinishReason finish = FinishReason::kNone;
  while (auto ev = h->next(std::chrono::seconds(60))) {
    tokens += int(ev->token_ids.size());
    if (ev->finish != FinishReason::kNone) finish = ev->finish;
  }
  EXPECT_EQ(finish, FinishReason::kLength);
  EXPECT_EQ(tokens, 12);
}

// Device sampling (Model::forward_sampled) draws what the host sampler draws from the same GPU
// logits: a request with Request::host_sampling takes the host path, the same request without it
// the device path, alone and in the same steps. Seeded, with temperature / top-k / top-p / min-p
// and penalties.
TEST_F(CudaModelGpu, DeviceSamplingDrawsWhatTheHostDraws) {
  EngineOptions eo;
  eo.model_dir = std::string(KIMI_BINARY_DIR) + "/default-model";
  eo.backend = "cuda";
  eo.max_num_seqs = 4;
  auto eng = Engine::create(eo);
  // Every run here is a two-row step: a batch-1 step takes other kernels than a batch-2 one (the
  // one-launch MoE block, other split plans), whose logits differ in the last bits, and at these
  // temperatures that can move a draw. So a run "alone" has a greedy twin of the same prompt
  // beside it, the same shapes as the run of the device and host rows together.
  auto run = [&](Request r) {
    Request twin = r;
    twin.sampling = SamplingParams{};
    twin.sampling.temperature = 0;
    twin.host_sampling = false;
    std::vector<int> ids;
    auto h = eng->submit(r);
    auto ht = eng->submit(twin);
    while (auto ev = h->next(std::chrono::seconds(60)))
      ids.insert(ids.end(), ev->token_ids.begin(), ev->token_ids.end());
    while (ht->next(std::chrono::seconds(60))) {
    }
    return ids;
  };
  int same = 0, total = 0;
  for (int c = 0; c < 6; ++c) {
    Request r;
    for (int i = 0; i < 20 + 7 * c; ++i) r.prompt_ids.push_back((i * 31 + c * 7) % 1000);
    r.max_tokens = 24;
    r.ignore_eos = true;
    r.seed_given = true;
    r.sampling.seed = 100 + c;
    r.sampling.temperature = 0.6f + 0.2f * c;
    if (c % 2) r.sampling.top_k = 20;
    if (c % 3 == 1) r.sampling.top_p = 0.9f;
    if (c == 4) r.sampling.min_p = 0.05f;
    if (c == 5) r.sampling.repetition_penalty = 1.2f, r.sampling.presence_penalty = 0.5f;
    const std::vector<int> device = run(r);
    r.host_sampling = true;
    const std::vector<int> host = run(r);
    ASSERT_EQ(device.size(), host.size());
    // A difference could only come from a u within ~1e-6 of a boundary (the sums run in
    // another order): about one draw in a million.
    int k = 0;
    while (k < int(host.size()) && host[k] == device[k]) ++k;
    same += k;
    total += int(host.size());
    std::printf("request %d: %d/%zu tokens equal before any difference\n", c, k, host.size());
    // Both at once: one step then holds a device row and a host row (whose logits alone come
    // back); each draws what it drew alone.
    Request d = r;
    d.host_sampling = false;
    auto hd = eng->submit(d), hh = eng->submit(r);
    std::vector<int> together_device, together_host;
    while (auto ev = hd->next(std::chrono::seconds(60)))
      together_device.insert(together_device.end(), ev->token_ids.begin(), ev->token_ids.end());
    while (auto ev = hh->next(std::chrono::seconds(60)))
      together_host.insert(together_host.end(), ev->token_ids.begin(), ev->token_ids.end());
    EXPECT_EQ(together_device, device) << "request " << c;
    EXPECT_EQ(together_host, host) << "request " << c;
  }
  EXPECT_EQ(same, total);
}

TEST_F(CudaModelGpu, RefusesAModelThatDoesNotFit) {
  const std::string dir = config_only_dir();
  ModelOptions o;
  o.backend = "cuda";
  o.random_weights = true;
  o.cache.num_blocks = 200'000'000;  // 200M blocks × 64 tokens × 1152 B: far beyond any card
  const std::string msg = error_of([&] { load_model(dir, o); });
  std::printf("refusal: %s\n", msg.c_str());
  for (const char* part : {"does not fit", "needs", "free", "MLA cache", "blocks", "fit"})
    EXPECT_NE(msg.find(part), std::string::npos) << part << " not in: " << msg;
}

}  // namespace
}  // namespace kimi

namespace kimi {
namespace {

// A tiny BF16 checkpoint whose router selects every expert (top_k = num_experts): no discrete
// routing decision, so GPU and CPU logits can be compared at every position of long sequences.
// 8 layers (MLA at 4 and 8), hidden 256, 2 KDA and 2 MLA heads, 16 experts.
class CudaVsCpu : public CudaModelGpu {
 protected:
  static void SetUpTestSuite() {
#if KIMI_HAVE_CUDA
    if (!test::gpu_unavailable_reason().empty()) return;
    dir_ = (fs::temp_directory_path() / "kimi-cuda-vs-cpu").string();
    TinySpec spec;
    spec.layers = 8;
    spec.top_k = spec.experts;
    spec.seed = 5;
    write_tiny_checkpoint(dir_, spec);
    ModelOptions o;
    o.cache.num_slots = 6;
    o.cache.num_blocks = 40;
    cpu_ = load_model(dir_, o).release();
    o.kv_cache_dtype = KvCacheDtype::kFp8;
    cpu_fp8_ = load_model(dir_, o).release();
    o.backend = "cuda";
    o.max_batch_tokens = 512;
    gpu_fp8_ = load_model(dir_, o).release();
    o.kv_cache_dtype = KvCacheDtype::kBf16;
    gpu_ = load_model(dir_, o).release();
    o.precision = Precision::kHigh;
    gpu_high_ = load_model(dir_, o).release();
#endif
  }
  static void TearDownTestSuite() {
    for (Model** m : {&cpu_, &gpu_, &gpu_high_, &cpu_fp8_, &gpu_fp8_}) {
      delete *m;
      *m = nullptr;
    }
  }
  void SetUp() override {
    CudaModelGpu::SetUp();
    if (!IsSkipped()) {
      ASSERT_TRUE(gpu_ && gpu_high_ && cpu_ && cpu_fp8_ && gpu_fp8_);
    }
  }
  static std::vector<int> ids(int n, int salt) {
    std::vector<int> v(n);
    for (int i = 0; i < n; ++i) v[i] = (i * 131 + salt * 17 + 7) % 1024;
    return v;
  }
  static std::vector<int> blocks(int first, int n) {
    std::vector<int> b(n);
    for (int i = 0; i < n; ++i) b[i] = first + i;
    return b;
  }
  // Whole-prompt prefill, every position's logits.
  static std::vector<float> prefill(Model* m, const std::vector<int>& t, int slot, int first_block) {
    m->reset_slot(slot);
    Batch b;
    b.all_logits = true;
    b.add(t, int(t.size()), slot, blocks(first_block, int(t.size()) / kBlockSize + 2));
    std::vector<float> logits;
    m->forward(b, logits);
    return logits;
  }
  static double rel_l2(const float* a, const float* b, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; ++i) num += double(a[i] - b[i]) * (a[i] - b[i]), den += double(b[i]) * b[i];
    return std::sqrt(num / std::max(den, 1e-30));
  }
  static std::string dir_;
  static Model *cpu_, *gpu_, *gpu_high_;  // gpu_high_: ModelOptions::precision high
  static Model *cpu_fp8_, *gpu_fp8_;      // ModelOptions::kv_cache_dtype fp8
};
std::string CudaVsCpu::dir_;
Model* CudaVsCpu::cpu_fp8_ = nullptr;
Model* CudaVsCpu::gpu_fp8_ = nullptr;
Model* CudaVsCpu::cpu_ = nullptr;
Model* CudaVsCpu::gpu_ = nullptr;
Model* CudaVsCpu::gpu_high_ = nullptr;
constexpr double kVsCpuTol = 2e-2;

TEST_F(CudaVsCpu, LongPrefillEveryPosition) {
  const int V = gpu_->config().vocab_size;
  for (int n : {1, 65, 300}) {
    const std::vector<int> t = ids(n, n);
    const std::vector<float> ref = prefill(cpu_, t, 0, 0), got = prefill(gpu_, t, 0, 0);
    double worst = 0;
    int top1 = 0;
    for (int i = 0; i < n; ++i) {
      worst = std::max(worst, rel_l2(got.data() + size_t(i) * V, ref.data() + size_t(i) * V, V));
      top1 += std::max_element(got.begin() + size_t(i) * V, got.begin() + size_t(i + 1) * V) - got.begin() ==
              std::max_element(ref.begin() + size_t(i) * V, ref.begin() + size_t(i + 1) * V) - ref.begin();
    }
    std::printf("prefill T=%d: max relative L2 vs CPU %.3g, top-1 agreement %d/%d\n", n, worst, top1, n);
    EXPECT_LE(worst, kVsCpuTol) << "T=" << n;
  }
}

// GPU prefill of a prefix then GPU decode steps against one CPU prefill of the whole sequence.
TEST_F(CudaVsCpu, PrefillThenDecodeMatchesCpu) {
#if KIMI_HAVE_CUDA
  const int V = gpu_->config().vocab_size, n = 200;
  const std::vector<int> t = ids(n, 3);
  const std::vector<float> ref = prefill(cpu_, t, 1, 10);
  auto* cm = dynamic_cast<CudaModel*>(gpu_);
  ASSERT_TRUE(cm);
  for (bool graphs : {true, false}) {
    cm->set_use_graphs(graphs);
    for (int split : {1, 64, 130}) {
      std::vector<float> logits = prefill(gpu_, std::vector<int>(t.begin(), t.begin() + split), 2, 20);
      double worst = 0;
      for (int i = split; i < n; ++i) {
        Batch d;
        d.add({t[i]}, i + 1, 2, blocks(20, n / kBlockSize + 2));
        gpu_->forward(d, logits);
        worst = std::max(worst, rel_l2(logits.data(), ref.data() + size_t(i) * V, V));
      }
      std::printf("split %d: %d GPU decode steps (%s), max relative L2 vs CPU prefill %.3g\n", split,
                  n - split, graphs ? "graphs" : "eager", worst);
      EXPECT_LE(worst, kVsCpuTol) << "split " << split << (graphs ? " graphs" : " eager");
    }
    if (graphs) {
      EXPECT_GE(cm->num_graphs(), 1u) << "decode steps should have been captured";
    } else {
      EXPECT_EQ(cm->num_graphs(), 0u);
    }
  }
  cm->set_use_graphs(true);
#endif
}

// High precision against the fp32 CPU, layer by layer: the residual stream after every layer of a
// 300-token prefill (several KDA chunks' worth, all through the fp32 recurrent scan). Up to the
// first MLA layer (KDA and MoE only) nothing is rounded to bf16 but the weights, so the stream
// must match to 1e-4 (and 20x closer than bf16); after it, the small-share MLA operands that stay
// bf16 (docs/precision.md) add ~1e-3, still at most half of bf16's error. The logits carry the
// bf16 lm_head input in both precisions (~2e-3 of a row), so they are only checked against
// kVsCpuTol.
TEST_F(CudaVsCpu, HighPrecisionIsCloserToCpu) {
  const int V = gpu_->config().vocab_size, H = gpu_->config().hidden_size, n = 300;
  const int L = gpu_->config().num_hidden_layers;
  const std::vector<int> t = ids(n, 8);
  Model* models[3] = {cpu_, gpu_, gpu_high_};
  std::vector<std::vector<float>> hidden[3], logits(3);
  for (int i = 0; i < 3; ++i) {
    hidden[i].resize(L);
    models[i]->on_layer_output = [&, i](int l, const float* x, int rows) {
      hidden[i][l].assign(x, x + size_t(rows) * H);
    };
    logits[i] = prefill(models[i], t, 2, 20);
    models[i]->on_layer_output = nullptr;
  }
  auto worst_row = [&](const std::vector<float>& a, const std::vector<float>& b, int width) {
    double w = 0;
    for (size_t r = 0; r < a.size() / width; ++r)
      w = std::max(w, rel_l2(a.data() + r * width, b.data() + r * width, width));
    return w;
  };
  int first_mla = L;
  for (int l = 0; l < L; ++l)
    if (!gpu_->config().is_kda(l)) {
      first_mla = l;
      break;
    }
  ASSERT_GT(first_mla, 0);
  for (int l = 0; l < L; ++l) {
    const double bf = worst_row(hidden[1][l], hidden[0][l], H), hi = worst_row(hidden[2][l], hidden[0][l], H);
    std::printf("layer %d: residual max relative L2 vs CPU bf16 %.3g high %.3g\n", l, bf, hi);
    if (l < first_mla) {
      EXPECT_LE(hi, 1e-4) << "layer " << l;
      EXPECT_LE(20 * hi, bf) << "layer " << l;
    }
    EXPECT_LE(2 * hi, bf) << "layer " << l;
  }
  const double lb = worst_row(logits[1], logits[0], V), lh = worst_row(logits[2], logits[0], V);
  std::printf("logits: max relative L2 vs CPU bf16 %.3g high %.3g\n", lb, lh);
  EXPECT_LE(lh, kVsCpuTol);
}

// The fp8 latent cache on both backends (the CPU's fp32 cache holds the same fp8 round trip):
// every reader of the GPU cache against the CPU, as the bf16 cache's tests do: a 300-token
// prefill (expanded: the gather decodes the records), pieces of 57 and 70 tokens after it (the
// absorbed prefill kernel's fp8 tiles), then decode steps replayed from CUDA graphs and eager
// (the decode kernel's converter warps). How far fp8 moves the GPU logits from the bf16 cache's
// is printed (the rounding of ĉ to 3 mantissa bits; docs/precision.md).
TEST_F(CudaVsCpu, Fp8CacheMatchesCpu) {
#if KIMI_HAVE_CUDA
  const int V = gpu_->config().vocab_size, n = 460, first = 300;
  const std::vector<int> t = ids(n, 8);
  const std::vector<float> ref = prefill(cpu_fp8_, t, 1, 10), plain = prefill(gpu_, t, 1, 10);
  auto* cm = dynamic_cast<CudaModel*>(gpu_fp8_);
  ASSERT_TRUE(cm);
  for (bool graphs : {true, false}) {
    cm->set_use_graphs(graphs);
    std::vector<float> got =
        prefill(gpu_fp8_, std::vector<int>(t.begin(), t.begin() + first), 2, 20);
    double worst_prefill = 0, worst_pieces = 0, worst_decode = 0, vs_bf16 = 0;
    for (int i = 0; i < first; ++i) {
      worst_prefill = std::max(worst_prefill,
                               rel_l2(got.data() + size_t(i) * V, ref.data() + size_t(i) * V, V));
      vs_bf16 =
          std::max(vs_bf16, rel_l2(got.data() + size_t(i) * V, plain.data() + size_t(i) * V, V));
    }
    int pos = first;
    for (int piece : {57, 70}) {
      Batch b;
      b.all_logits = true;
      b.add(std::vector<int>(t.begin() + pos, t.begin() + pos + piece), pos + piece, 2,
            blocks(20, n / kBlockSize + 2));
      gpu_fp8_->forward(b, got);
      for (int i = 0; i < piece; ++i)
        worst_pieces = std::max(
            worst_pieces, rel_l2(got.data() + size_t(i) * V, ref.data() + size_t(pos + i) * V, V));
      pos += piece;
    }
    for (; pos < n; ++pos) {
      Batch d;
      d.add({t[pos]}, pos + 1, 2, blocks(20, n / kBlockSize + 2));
      gpu_fp8_->forward(d, got);
      worst_decode = std::max(worst_decode, rel_l2(got.data(), ref.data() + size_t(pos) * V, V));
      vs_bf16 = std::max(vs_bf16, rel_l2(got.data(), plain.data() + size_t(pos) * V, V));
    }
    std::printf(
        "fp8 cache (%s decode): max relative L2 vs CPU fp8: prefill %.3g, pieces %.3g, "
        "decode %.3g; vs the GPU's bf16 cache %.3g\n",
        graphs ? "graphs" : "eager", worst_prefill, worst_pieces, worst_decode, vs_bf16);
    EXPECT_LE(worst_prefill, kVsCpuTol);
    EXPECT_LE(worst_pieces, kVsCpuTol);
    EXPECT_LE(worst_decode, kVsCpuTol) << (graphs ? "graphs" : "eager");
  }
  cm->set_use_graphs(true);
#endif
}

// The prompt fed to the GPU in odd pieces (continued chunked prefill, one single-token piece).
// The CUDA engine's logprobs, computed on the GPU (kernels/sampling/logprobs.h: prompt_logprobs,
// and the logprobs of the tokens drawn on the device) against the fp32 CPU model's log-softmax of
// the same sequence (one whole-sequence prefill): values within a tolerance scaled to the row,
// ranks up to near-ties, the alternatives best first with the CPU's values in that order. The
// record of a greedy token is exact: rank 1, itself first (the record and the draw read the same
// logits); a sampled token's record is of the token drawn. Two requests share the steps (one
// greedy with prompt logprobs, one sampled with 20 alternatives and prompt logprobs k = 0).
TEST_F(CudaVsCpu, EngineLogprobsMatchCpu) {
  EngineOptions eo;
  eo.model_dir = dir_;
  eo.backend = "cuda";
  eo.max_num_seqs = 2;
  eo.num_blocks = 16;
  eo.precision = "high";
  auto eng = Engine::create(eo);
  const int V = eng->config().vocab_size;
  const std::vector<int> prompt = ids(70, 11);  // more than one cache block
  Request g;
  g.prompt_ids = prompt;
  g.max_tokens = 6;
  g.ignore_eos = true;
  g.sampling.temperature = 0;
  g.logprobs = 5;
  g.prompt_logprobs = 3;
  Request t = g;
  t.sampling.temperature = 1.f;
  t.seed_given = true;
  t.sampling.seed = 7;
  t.logprobs = 20;
  t.prompt_logprobs = 0;
  struct Out {
    std::vector<TokenLogprob> prompt_lps, lps;
    std::vector<int> ids;
  };
  auto hg = eng->submit(g), ht = eng->submit(t);
  auto collect = [](RequestHandle& h) {
    Out o;
    while (auto ev = h.next(std::chrono::seconds(60))) {
      if (ev->prompt_logprobs) o.prompt_lps = *ev->prompt_logprobs;
      o.ids.insert(o.ids.end(), ev->token_ids.begin(), ev->token_ids.end());
      o.lps.insert(o.lps.end(), ev->logprobs.begin(), ev->logprobs.end());
    }
    return o;
  };
  const Out og = collect(*hg), ot = collect(*ht);
  int checked = 0;
  auto check = [&](const Out& o, const Request& r, const char* name) {
    ASSERT_EQ(o.ids.size(), size_t(r.max_tokens)) << name;
    ASSERT_EQ(o.lps.size(), o.ids.size()) << name;
    ASSERT_EQ(o.prompt_lps.size(), prompt.size() - 1) << name;
    std::vector<int> seq = prompt;
    seq.insert(seq.end(), o.ids.begin(), o.ids.end() - 1);
    const std::vector<float> ref = prefill(cpu_, seq, 5, 30);  // row p - 1 gives token p
    for (size_t p = 1; p < seq.size() + 1; ++p) {
      const bool generated = p >= prompt.size();
      const TokenLogprob& x = generated ? o.lps[p - prompt.size()] : o.prompt_lps[p - 1];
      const int k = generated ? r.logprobs : r.prompt_logprobs;
      const int want_id = generated ? o.ids[p - prompt.size()] : seq[p];
      const std::string at = str(name, " position ", p, generated ? " (generated)" : " (prompt)");
      ASSERT_EQ(x.id, want_id) << at;
      const float* row = ref.data() + (p - 1) * size_t(V);
      const double lse = log_sum_exp({row, size_t(V)});
      double ms = 0;
      for (int i = 0; i < V; ++i) ms += double(row[i]) * row[i];
      const double tol = 0.02 + 0.05 * std::sqrt(ms / V);
      auto lp = [&](int i) { return double(row[i]) - lse; };
      EXPECT_NEAR(x.logprob, lp(x.id), tol) << at;
      int lo = 1, hi = 1;
      for (int i = 0; i < V; ++i) {
        lo += lp(i) > lp(x.id) + 2 * tol;
        hi += i != x.id && lp(i) >= lp(x.id) - 2 * tol;
      }
      EXPECT_GE(x.rank, lo) << at;
      EXPECT_LE(x.rank, hi) << at;
      ASSERT_EQ(x.top.size(), size_t(k)) << at;
      std::vector<double> best(static_cast<size_t>(V));
      for (int i = 0; i < V; ++i) best[size_t(i)] = lp(i);
      std::sort(best.begin(), best.end(), std::greater<>());
      for (int j = 0; j < k; ++j) {
        EXPECT_NEAR(x.top[j].second, best[size_t(j)], tol) << at << " alternative " << j;
        EXPECT_NEAR(x.top[j].second, lp(x.top[j].first), tol) << at << " alternative " << j;
        if (j > 0) {
          EXPECT_GE(x.top[j - 1].second, x.top[j].second) << at;
        }
      }
      if (generated && r.sampling.temperature == 0) {
        EXPECT_EQ(x.rank, 1) << at;
        ASSERT_GE(x.top.size(), 1u);
        EXPECT_EQ(x.top[0].first, x.id) << at;
        EXPECT_EQ(x.top[0].second, x.logprob) << at;
      }
      ++checked;
    }
  };
  check(og, g, "greedy");
  check(ot, t, "sampled");
  EXPECT_EQ(checked, 2 * int(prompt.size() - 1 + 6));
}

TEST_F(CudaVsCpu, ChunkedPrefillMatchesCpu) {
  const int V = gpu_->config().vocab_size, n = 257;
  const std::vector<int> t = ids(n, 4);
  const std::vector<float> ref = prefill(cpu_, t, 1, 10);
  gpu_->reset_slot(3);
  double worst = 0;
  int pos = 0;
  for (int piece : {7, 57, 65, 1, 127}) {
    Batch b;
    b.all_logits = true;
    b.add(std::vector<int>(t.begin() + pos, t.begin() + pos + piece), pos + piece, 3, blocks(30, n / kBlockSize + 2));
    std::vector<float> logits;
    gpu_->forward(b, logits);
    for (int i = 0; i < piece; ++i)
      worst = std::max(worst, rel_l2(logits.data() + size_t(i) * V, ref.data() + size_t(pos + i) * V, V));
    pos += piece;
  }
  ASSERT_EQ(pos, n);
  std::printf("chunked prefill (7, 57, 65, 1, 127): max relative L2 vs CPU %.3g\n", worst);
  EXPECT_LE(worst, kVsCpuTol);
}

// One GPU batch: a fresh 150-token prefill, a decode step, a 9-token continuation; against the
// CPU running each alone.
TEST_F(CudaVsCpu, MixedBatchMatchesCpu) {
  const int V = gpu_->config().vocab_size;
  const std::vector<int> a = ids(150, 5), b = ids(90, 6), c = ids(70, 7);
  auto setup = [&](Model* m) {
    prefill(m, std::vector<int>(b.begin(), b.end() - 1), 4, 0);
    prefill(m, std::vector<int>(c.begin(), c.end() - 9), 1, 5);
    m->reset_slot(5);
  };
  auto run_alone = [&](Model* m) {
    setup(m);
    std::vector<float> out = prefill(m, a, 5, 10), x;
    Batch bd;
    bd.add({b.back()}, 90, 4, blocks(0, 3));
    m->forward(bd, x);
    out.insert(out.end(), x.begin(), x.end());
    Batch cd;
    cd.all_logits = true;
    cd.add(std::vector<int>(c.end() - 9, c.end()), 70, 1, blocks(5, 3));
    m->forward(cd, x);
    out.insert(out.end(), x.begin(), x.end());
    return out;
  };
  const std::vector<float> ref = run_alone(cpu_);
  setup(gpu_);
  Batch m;
  m.all_logits = true;
  m.add(a, 150, 5, blocks(10, 4));
  m.add({b.back()}, 90, 4, blocks(0, 3));
  m.add(std::vector<int>(c.end() - 9, c.end()), 70, 1, blocks(5, 3));
  std::vector<float> got;
  gpu_->forward(m, got);
  ASSERT_EQ(got.size(), ref.size());
  double worst = 0;
  for (size_t r = 0; r < got.size() / V; ++r)
    worst = std::max(worst, rel_l2(got.data() + r * V, ref.data() + r * V, V));
  std::printf("mixed batch (prefill 150 + decode + continue 9): max relative L2 vs CPU alone %.3g\n", worst);
  EXPECT_LE(worst, kVsCpuTol);
}

}  // namespace
}  // namespace kimi
