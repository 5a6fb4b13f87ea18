// Golden model tests on the CUDA backend: ../shared/golden/model-a (float64 reference) on the GPU.
// bf16 weights and activations: logits within 2e-2 relative L2 per row and top-1 agreement on
// >= 99% of the positions before the first route_margin < 1e-3 (where bf16 rounding may
// legitimately pick another expert). Then self-consistency: prefill-then-decode and chunked
// prefill equal one prefill, and a mixed batch equals the same sequences run alone.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/check.h"  // before gpu_test_util.h, which uses str() but does not include it
#include "../ops/gpu_test_util.h"
#include "model/model.h"
#include "model/safetensors.h"

namespace kimi {
namespace {

const std::string kDir = std::string(KIMI_GOLDEN_DIR) + "/model-a";
constexpr double kRowTol = 2e-2;    // relative L2 per logits row against the golden reference
// GPU against GPU along another kernel path (fused fp32 KDA decode vs the chunked prefill with bf16
// tensor-core operands; batching). Each path lands ~1e-2 from the float64 reference on this model,
// so they may differ by up to twice that: measured 1.5e-2 / 1.9e-2 (H200, 2026-11-27). The strict
// path-equivalence checks are CudaVsCpu.* (test_cuda_model.cpp: 2.1e-3 over hundreds of positions).
constexpr double kSelfTol = 3e-2;

struct GoldenCase {
  std::vector<int> ids;
  std::vector<float> logits;  // [T, V]
  int limit = 0;              // positions before the first route_margin < 1e-3
};

double rel_l2(const float* a, const float* b, int n) {
  double num = 0, den = 0;
  for (int i = 0; i < n; ++i) {
    num += double(a[i] - b[i]) * (a[i] - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}
int argmax(const float* x, int n) { return int(std::max_element(x, x + n) - x); }

class GoldenCuda : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
#if KIMI_HAVE_CUDA
    if (!std::filesystem::exists(kDir + "/config.json")) return;
    if (!test::gpu_unavailable_reason().empty()) return;
    ModelOptions opts;
    opts.backend = "cuda";
    opts.cache.num_slots = 8;
    opts.cache.num_blocks = 64;
    opts.max_batch_tokens = 1024;
    model_ = load_model(kDir, opts).release();
    expected_ = new SafetensorsFile(kDir + "/expected.safetensors");
    std::ifstream f(kDir + "/cases.json");
    num_cases_ = int(nlohmann::json::parse(f)["cases"].size());
#endif
  }
  static void TearDownTestSuite() {
    delete model_;
    delete expected_;
    model_ = nullptr;
    expected_ = nullptr;
  }
  void SetUp() override {
#if KIMI_HAVE_CUDA
    const std::string why = test::gpu_unavailable_reason();
    if (!why.empty()) {
      std::fprintf(stderr, "GPU golden test skipped: %s\n", why.c_str());
      GTEST_SKIP() << "GPU golden test skipped: " << why;
    }
#else
    std::fprintf(stderr, "GPU golden test skipped: built without the CUDA backend\n");
    GTEST_SKIP() << "built without the CUDA backend";
#endif
    if (!model_) GTEST_SKIP() << "golden data not found at " << kDir << " (needs ../shared/golden)";
  }
  static GoldenCase load_case(int n) {
    GoldenCase c;
    const TensorInfo& ids = expected_->tensors().at(str("case", n, ".input_ids"));
    c.ids.resize(ids.numel());
    std::memcpy(c.ids.data(), ids.data, c.ids.size() * 4);
    c.logits = tensor_to_f32(expected_->tensors().at(str("case", n, ".logits")));
    std::vector<float> margin = tensor_to_f32(expected_->tensors().at(str("case", n, ".route_margin")));
    c.limit = int(c.ids.size());
    for (int t = 0; t < int(margin.size()); ++t)
      if (margin[t] < 1e-3f) {
        c.limit = t;
        break;
      }
    return c;
  }
  static std::vector<int> blocks(int first, int n) {
    std::vector<int> b(n);
    for (int i = 0; i < n; ++i) b[i] = first + i;
    return b;
  }
  static std::vector<float> prefill(const std::vector<int>& ids, int slot = 0, int first_block = 0) {
    model_->reset_slot(slot);
    Batch b;
    b.all_logits = true;
    b.add(ids, int(ids.size()), slot, blocks(first_block, int(ids.size() + 70) / kBlockSize + 1));
    std::vector<float> logits;
    model_->forward(b, logits);
    return logits;
  }
  static Model* model_;

 public:
  static const SafetensorsFile* expected() { return expected_; }

 protected:
  static SafetensorsFile* expected_;
  static int num_cases_;
};

Model* GoldenCuda::model_ = nullptr;
SafetensorsFile* GoldenCuda::expected_ = nullptr;
int GoldenCuda::num_cases_ = 0;

TEST_F(GoldenCuda, LogitsAndTop1MatchEveryCase) {
  const int V = model_->config().vocab_size;
  ASSERT_GE(num_cases_, 7);
  int compared = 0, agree = 0;
  for (int n = 0; n < num_cases_; ++n) {
    GoldenCase c = load_case(n);
    std::vector<float> got = prefill(c.ids);
    ASSERT_EQ(got.size(), c.logits.size());
    double worst = 0;
    int worst_at = -1;
    for (int t = 0; t < c.limit; ++t) {
      const float* g = got.data() + size_t(t) * V;
      const float* r = c.logits.data() + size_t(t) * V;
      const double e = rel_l2(g, r, V);
      if (e > worst) worst = e, worst_at = t;
      ++compared;
      const bool same = argmax(g, V) == argmax(r, V);
      agree += same;
      if (!same) std::printf("top-1 miss: case %d position %d\n", n, t);
    }
    std::printf("case %d: T=%zu, %d positions compared, max relative L2 %.3g (at %d)\n", n,
                c.ids.size(), c.limit, worst, worst_at);
    EXPECT_LE(worst, kRowTol) << "case " << n << " position " << worst_at;
  }
  std::printf("top-1 agreement: %d of %d positions (%.2f%%)\n", agree, compared,
              100.0 * agree / std::max(compared, 1));
  EXPECT_GE(agree, 0.99 * compared);
}

// Positions before the first route_margin < 3e-3: there two bf16 GPU paths (different kernels,
// different rounding) still pick the same experts. Model-a's tiny random router has many small
// margins, so this compares few positions; test_cuda_model.cpp checks the same paths against the
// CPU over long sequences on a model without routing ambiguity.
int stable_prefix(int n) {
  std::vector<float> margin =
      tensor_to_f32(GoldenCuda::expected()->tensors().at(str("case", n, ".route_margin")));
  for (int t = 0; t < int(margin.size()); ++t)
    if (margin[t] < 3e-3f) return t;
  return int(margin.size());
}

// Prefill of a prefix, then token-by-token decode (the fused KDA step, single-query MLA items)
// gives the logits of one prefill.
TEST_F(GoldenCuda, PrefillThenDecodeEqualsOnePrefill) {
  const int V = model_->config().vocab_size;
  const int n = 4;  // case 4 (T = 65) has the longest stable prefix
  GoldenCase c = load_case(n);
  const int stable = stable_prefix(n);
  ASSERT_GE(stable, 5);
  std::vector<float> whole = prefill(c.ids);
  for (int split : {1, 3}) {
    std::vector<int> head(c.ids.begin(), c.ids.begin() + split);
    std::vector<float> logits = prefill(head);
    std::vector<int> bl = blocks(0, int(c.ids.size() + 70) / kBlockSize + 1);
    double worst = 0;
    int mismatched_top1 = 0, steps = 0;
    for (int t = split; t < stable; ++t, ++steps) {
      Batch d;
      d.add({c.ids[t]}, t + 1, 0, bl);
      model_->forward(d, logits);
      worst = std::max(worst, rel_l2(logits.data(), whole.data() + size_t(t) * V, V));
      mismatched_top1 += argmax(logits.data(), V) != argmax(whole.data() + size_t(t) * V, V);
    }
    std::printf("split %d: %d decode steps, max relative L2 vs one prefill %.3g, top-1 mismatches %d\n",
                split, steps, worst, mismatched_top1);
    // Top-1 is printed, not asserted: this 256-token random model has near-tied logits (one
    // mismatch seen at split 3 on an H200), and routing decides the rest.
    EXPECT_LE(worst, kSelfTol) << "split at " << split;
  }
}

// The residual stream after every layer against the reference, over all 257 positions of the
// last case. Layer 0 (KDA with multi-chunk prefill + dense MLP) has no routing, so it must match
// everywhere; later layers are printed (routing flips past the first small margin are legitimate).
TEST_F(GoldenCuda, HiddenStatesPerLayer) {
  const int n = num_cases_ - 1;
  GoldenCase c = load_case(n);
  const int H = model_->config().hidden_size, T = int(c.ids.size());
  std::vector<std::vector<float>> got(model_->config().num_hidden_layers);
  model_->on_layer_output = [&](int l, const float* x, int rows) { got[l].assign(x, x + size_t(rows) * H); };
  prefill(c.ids);
  model_->on_layer_output = nullptr;
  for (int l = 0; l < int(got.size()); ++l) {
    const std::string name = str("case", n, ".hidden.layer", l);
    if (!expected_->tensors().count(name)) continue;
    std::vector<float> want = tensor_to_f32(expected_->tensors().at(name));
    double worst = 0, worst_stable = 0;
    int worst_at = 0;
    for (int t = 0; t < T; ++t) {
      const double e = rel_l2(got[l].data() + size_t(t) * H, want.data() + size_t(t) * H, H);
      if (e > worst) worst = e, worst_at = t;
      if (t < c.limit) worst_stable = std::max(worst_stable, e);
    }
    std::printf("layer %d: max relative L2 %.3g at %d over %d positions; %.3g before position %d\n", l,
                worst, worst_at, T, worst_stable, c.limit);
    if (l == 0) {
      EXPECT_LE(worst, 1e-2) << "layer 0 has no routing: every position must match";
    }
    EXPECT_LE(worst_stable, kRowTol) << "layer " << l;
  }
}

// One batch holding a fresh prefill, a decode step and a continued prefill equals the three
// sequences run alone (scattered slots and blocks). Rows are compared where the reference's
// route margins are >= 1e-3 (golden_limit): past a smaller margin the batched and the solo runs
// (other kernel splits, other rounding) may pick another expert, and every later row may differ.
// Model-a's margins are small almost everywhere, so the sequences are the cases' stable prefixes;
// CudaVsCpu.MixedBatchMatchesCpu checks mixed batches on a model without routing decisions.
TEST_F(GoldenCuda, MixedBatchEqualsSingleSequences) {
  const int V = model_->config().vocab_size;
  GoldenCase ca = load_case(5), cb = load_case(1), cc = load_case(4);
  // a: case 5 whole (its first `limit` rows compared); b: case 1's stable prefix, its last token
  // decoded; c: case 4's first 20 tokens, the last 9 a continued prefill.
  ASSERT_GE(ca.limit, 5);
  ASSERT_GE(cb.limit, 2);
  ASSERT_GE(cc.limit, 20);
  const std::vector<int> a = ca.ids, b(cb.ids.begin(), cb.ids.begin() + cb.limit),
                         c(cc.ids.begin(), cc.ids.begin() + 20);
  const int bp = int(b.size()) - 1, cp = int(c.size()) - 9;
  std::vector<float> a_alone = prefill(a, 3, 40);
  prefill(std::vector<int>(b.begin(), b.begin() + bp), 5, 10);
  std::vector<int> bbl = blocks(10, int(b.size() + 70) / kBlockSize + 1);
  Batch bd;
  bd.add({b[bp]}, bp + 1, 5, bbl);
  std::vector<float> b_alone;
  model_->forward(bd, b_alone);
  prefill(std::vector<int>(c.begin(), c.begin() + cp), 1, 25);
  std::vector<int> cbl = blocks(25, int(c.size() + 70) / kBlockSize + 1);
  Batch cd;
  cd.all_logits = true;
  cd.add(std::vector<int>(c.begin() + cp, c.end()), int(c.size()), 1, cbl);
  std::vector<float> c_alone;
  model_->forward(cd, c_alone);

  // Together: same states rebuilt, then one batch.
  prefill(std::vector<int>(b.begin(), b.begin() + bp), 5, 10);
  prefill(std::vector<int>(c.begin(), c.begin() + cp), 1, 25);
  model_->reset_slot(3);
  Batch m;
  m.all_logits = true;
  m.add(a, int(a.size()), 3, blocks(40, int(a.size() + 70) / kBlockSize + 1));
  m.add({b[bp]}, bp + 1, 5, bbl);
  m.add(std::vector<int>(c.begin() + cp, c.end()), int(c.size()), 1, cbl);
  std::vector<float> mixed;
  model_->forward(m, mixed);
  const int Ta = int(a.size());
  double worst = 0;
  int compared = 0;
  auto row = [&](const float* x, const float* y) {
    worst = std::max(worst, rel_l2(x, y, V));
    ++compared;
  };
  for (int t = 0; t < ca.limit; ++t) row(mixed.data() + size_t(t) * V, a_alone.data() + size_t(t) * V);
  row(mixed.data() + size_t(Ta) * V, b_alone.data());
  for (int i = 0; i < 9; ++i) row(mixed.data() + size_t(Ta + 1 + i) * V, c_alone.data() + size_t(i) * V);
  std::printf("mixed batch: max relative L2 vs sequences alone %.3g over %d rows\n", worst, compared);
  EXPECT_LE(worst, kSelfTol);
}

}  // namespace
}  // namespace kimi
