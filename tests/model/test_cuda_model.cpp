// CudaModel start-up and --random-weights: weights drawn from config.json alone are reproducible
// and give finite logits; a model that does not fit is refused with the sizes in the message;
// the cpu backend refuses random weights and layer truncation needs random weights.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "../ops/gpu_test_util.h"
#include "core/check.h"
#include "model/model.h"
#include "model/tiny.h"

namespace kimi {
namespace {

namespace fs = std::filesystem;

// A model directory holding only config.json (the tiny test shapes, 4 layers: 3 KDA + 1 MLA).
std::string config_only_dir() {
  const fs::path dir = fs::temp_directory_path() / "kimi-cuda-config-only";
  fs::create_directories(dir);
  TinySpec spec;
  std::ofstream(dir / "config.json") << tiny_config_json(spec);
  return dir.string();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
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
