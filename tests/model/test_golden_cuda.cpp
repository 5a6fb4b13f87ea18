// Golden model tests on the CUDA backend: ../shared/golden/model-a (float64 reference) on the GPU,
// in both activation precisions (ModelOptions::precision, docs/precision.md).
// Acceptance (issue 8), high precision: logits within 2e-2 relative L2 per row and top-1 agreement
// on >= 99% of the positions before the first route_margin < 1e-3. Its gap noise (sigma ~0.34e-3)
// puts 1e-3 at ~3 sigma, so no expert may flip there.
// bf16 precision: the same positions under bounds derived from its measured gap noise (sigma
// 2.26e-3: flips below ~3 sigma are expected), see Bf16LogitsWithinGapNoise.
// Then self-consistency in both: prefill-then-decode and chunked prefill equal one prefill, and a
// mixed batch equals the same sequences run alone.
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
// bf16: GPU against GPU along another kernel path (fused fp32 KDA decode vs the chunked prefill
// with bf16 tensor-core operands; batching). Each path lands ~1e-2 from the float64 reference on
// this model, so they may differ by up to twice that: measured 1.5e-2 / 1.9e-2 (H200,
// 2026-11-27). The strict path-equivalence checks are CudaVsCpu.* (test_cuda_model.cpp: 2.1e-3
// over hundreds of positions).
constexpr double kSelfTol = 3e-2;
// High precision: prefill and decode run the same fp32 KDA kernels; the paths differ in GEMM
// summation order and in the bf16 MLA operands (small shares): measured 2.8e-3 (prefill then
// decode) and 2.5e-3 (mixed batch), H200.
constexpr double kHighSelfTol = 1e-2;
// bf16 gap noise (docs/precision.md): positions whose reference margin is at least 3 sigma.
constexpr double kBf16GapSigma = 2.26e-3;

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
    models_[0] = load_model(kDir, opts).release();
    opts.precision = Precision::kHigh;
    models_[1] = load_model(kDir, opts).release();
    opts.precision = Precision::kBf16;
    opts.kv_cache_dtype = KvCacheDtype::kFp8;
    fp8_ = load_model(kDir, opts).release();
    expected_ = new SafetensorsFile(kDir + "/expected.safetensors");
    std::ifstream f(kDir + "/cases.json");
    num_cases_ = int(nlohmann::json::parse(f)["cases"].size());
#endif
  }
  static void TearDownTestSuite() {
    for (Model*& m : models_) {
      delete m;
      m = nullptr;
    }
    delete fp8_;
    fp8_ = nullptr;
    delete expected_;
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
    if (!models_[0]) GTEST_SKIP() << "golden data not found at " << kDir << " (needs ../shared/golden)";
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
  static std::vector<float> prefill(Model& model, const std::vector<int>& ids, int slot = 0,
                                    int first_block = 0) {
    model.reset_slot(slot);
    Batch b;
    b.all_logits = true;
    b.add(ids, int(ids.size()), slot, blocks(first_block, int(ids.size() + 70) / kBlockSize + 1));
    std::vector<float> logits;
    model.forward(b, logits);
    return logits;
  }
  static Model& model(Precision p) { return *models_[p == Precision::kHigh]; }
  // Every compared row's relative L2 against the reference and whether its top-1 agrees, with the
  // row's reference margin (positions before each case's first route_margin < 1e-3).
  struct Row {
    int n, t;
    double err, margin;
    bool same_top1;
  };
  static std::vector<Row> compare_cases(Model& m) {
    const int V = m.config().vocab_size;
    std::vector<Row> rows;
    for (int n = 0; n < num_cases_; ++n) {
      GoldenCase c = load_case(n);
      std::vector<float> got = prefill(m, c.ids);
      EXPECT_EQ(got.size(), c.logits.size());
      if (got.size() != c.logits.size()) continue;
      const std::vector<float> margin =
          tensor_to_f32(expected_->tensors().at(str("case", n, ".route_margin")));
      double worst = 0;
      int worst_at = -1;
      for (int t = 0; t < c.limit; ++t) {
        const float* g = got.data() + size_t(t) * V;
        const float* r = c.logits.data() + size_t(t) * V;
        Row row{n, t, rel_l2(g, r, V), margin[t], argmax(g, V) == argmax(r, V)};
        if (row.err > worst) worst = row.err, worst_at = t;
        if (!row.same_top1) std::printf("top-1 miss: case %d position %d (margin %.3g)\n", n, t, row.margin);
        rows.push_back(row);
      }
      std::printf("case %d: T=%zu, %d positions compared, max relative L2 %.3g (at %d)\n", n,
                  c.ids.size(), c.limit, worst, worst_at);
    }
    return rows;
  }
  static Model* models_[2];  // bf16, high
  static Model* fp8_;        // bf16 activations, fp8 latent cache (ModelOptions::kv_cache_dtype)
  // The self-consistency checks below, on either model.
  static void prefill_then_decode(Model& m, int n, int stable, double tol);
  static void hidden_states_per_layer(Model& m, double layer0_tol);
  static void mixed_batch(Model& m, double tol);

 public:
  static const SafetensorsFile* expected() { return expected_; }

 protected:
  static SafetensorsFile* expected_;
  static int num_cases_;
};

Model* GoldenCuda::models_[2] = {nullptr, nullptr};
Model* GoldenCuda::fp8_ = nullptr;
SafetensorsFile* GoldenCuda::expected_ = nullptr;
int GoldenCuda::num_cases_ = 0;

// Issue 8's acceptance, in high precision.
TEST_F(GoldenCuda, HighLogitsAndTop1MatchEveryCase) {
  ASSERT_GE(num_cases_, 7);
  const std::vector<Row> rows = compare_cases(model(Precision::kHigh));
  int agree = 0;
  for (const Row& r : rows) {
    agree += r.same_top1;
    EXPECT_LE(r.err, kRowTol) << "case " << r.n << " position " << r.t << " (margin " << r.margin << ")";
  }
  std::printf("top-1 agreement: %d of %zu positions (%.2f%%)\n", agree, rows.size(),
              100.0 * agree / std::max<size_t>(rows.size(), 1));
  EXPECT_EQ(rows.size(), 54u);
  EXPECT_GE(agree, 0.99 * double(rows.size()));
}

// bf16 precision over the same positions, bounds from its measured gap noise (sigma 2.26e-3 on
// the expert-selection gap, docs/precision.md):
// - below 3 sigma, flips are expected (Σ Φ(−margin/sigma) ≈ 3.5 over the 54; the bf16 path showed
//   2 to 6): a flipped expert moved its own row by 0.19 and 0.23 (H200, 2026-11-27), so every
//   row within 0.35 and top-1 on >= 95% of the rows;
// - rows whose own margin is >= 3 sigma (6.8e-3; 25 of the 54) flip with probability < 0.2%
//   each, but an earlier row's flip reaches them through the KDA state and attention (case 5:
//   position 3 flipped, positions 6 and 11 at 2.9e-2 and 2.1e-2, H200): within 5e-2 and the same
//   top-1;
// - the median row within 1.5e-2 (the bf16 bulk, ~1e-2 per the golden README; 9.2e-3 measured).
// A real defect (a wrong kernel, weight or routing) moves most rows far past these.
TEST_F(GoldenCuda, Bf16LogitsWithinGapNoise) {
  ASSERT_GE(num_cases_, 7);
  const std::vector<Row> rows = compare_cases(model(Precision::kBf16));
  ASSERT_EQ(rows.size(), 54u);
  int agree = 0, wide = 0;
  std::vector<double> errs;
  for (const Row& r : rows) {
    agree += r.same_top1;
    errs.push_back(r.err);
    const std::string at = str("case ", r.n, " position ", r.t, " (margin ", r.margin, ")");
    if (r.margin >= 3 * kBf16GapSigma) {
      ++wide;
      EXPECT_LE(r.err, 5e-2) << at;
      EXPECT_TRUE(r.same_top1) << at;
    }
    EXPECT_LE(r.err, 0.35) << at;
  }
  std::nth_element(errs.begin(), errs.begin() + errs.size() / 2, errs.end());
  const double median = errs[errs.size() / 2];
  std::printf("bf16: top-1 %d of %zu, median row %.3g, %d rows with margin >= 3 sigma\n", agree,
              rows.size(), median, wide);
  EXPECT_GE(wide, 20);
  EXPECT_GE(agree, 0.95 * double(rows.size()));
  EXPECT_LE(median, 1.5e-2);
}

// The fp8 latent cache (bf16 activations) on the same positions, against the reference and
// against the bf16 cache's logits (docs/precision.md, "fp8 latent cache"). Measured (H200,
// session 7): top-1 53 of 54 against the reference, median row 2.02e-2 (the bf16 cache: 53,
// 8.95e-3), the worst rows 0.33 where an expert selection flipped; against the bf16 cache top-1
// 52 of 54, largest logit difference 0.95. Bounds: every row within 0.35 (a flip moved its row
// by up to 0.33), top-1 on >= 90% of the rows both ways, the median row within 3e-2: fp8's own
// error (~1.8e-2 in quadrature over bf16's) with a 1.5x margin; a wrong decode (a scale, a
// code) moves every row far past it.
TEST_F(GoldenCuda, Fp8CacheLogitsNearBf16Cache) {
  ASSERT_GE(num_cases_, 7);
  const std::vector<Row> rows = compare_cases(*fp8_);
  ASSERT_EQ(rows.size(), 54u);
  int agree = 0;
  std::vector<double> errs;
  for (const Row& r : rows) {
    agree += r.same_top1;
    errs.push_back(r.err);
    EXPECT_LE(r.err, 0.35) << "case " << r.n << " position " << r.t << " (margin " << r.margin
                           << ")";
  }
  std::nth_element(errs.begin(), errs.begin() + errs.size() / 2, errs.end());
  const double median = errs[errs.size() / 2];
  // Against the bf16 cache, GPU against GPU, every position of every case.
  Model& bf = model(Precision::kBf16);
  const int V = bf.config().vocab_size;
  int same = 0, total = 0;
  double max_abs = 0, worst_row = 0;
  for (int n = 0; n < num_cases_; ++n) {
    const GoldenCase c = load_case(n);
    const std::vector<float> a = prefill(*fp8_, c.ids), b = prefill(bf, c.ids);
    for (int t = 0; t < c.limit; ++t, ++total) {
      const float* x = a.data() + size_t(t) * V;
      const float* y = b.data() + size_t(t) * V;
      same += argmax(x, V) == argmax(y, V);
      worst_row = std::max(worst_row, rel_l2(x, y, V));
      for (int v = 0; v < V; ++v) max_abs = std::max(max_abs, double(std::fabs(x[v] - y[v])));
    }
  }
  std::printf(
      "fp8 cache: top-1 vs reference %d of %zu, median row %.3g; vs the bf16 cache: top-1 "
      "%d of %d, worst row %.3g, max logit difference %.3g\n",
      agree, rows.size(), median, same, total, worst_row, max_abs);
  EXPECT_GE(agree, 0.90 * double(rows.size()));
  EXPECT_LE(median, 3e-2);
  EXPECT_GE(same, 0.90 * double(total));
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
void GoldenCuda::prefill_then_decode(Model& m, int n, int stable, double tol) {
  const int V = m.config().vocab_size;
  GoldenCase c = load_case(n);
  ASSERT_GE(stable, 5);
  std::vector<float> whole = prefill(m, c.ids);
  for (int split : {1, 3}) {
    std::vector<int> head(c.ids.begin(), c.ids.begin() + split);
    std::vector<float> logits = prefill(m, head);
    std::vector<int> bl = blocks(0, int(c.ids.size() + 70) / kBlockSize + 1);
    double worst = 0;
    int mismatched_top1 = 0, steps = 0;
    for (int t = split; t < stable; ++t, ++steps) {
      Batch d;
      d.add({c.ids[t]}, t + 1, 0, bl);
      m.forward(d, logits);
      worst = std::max(worst, rel_l2(logits.data(), whole.data() + size_t(t) * V, V));
      mismatched_top1 += argmax(logits.data(), V) != argmax(whole.data() + size_t(t) * V, V);
    }
    std::printf("split %d: %d decode steps, max relative L2 vs one prefill %.3g, top-1 mismatches %d\n",
                split, steps, worst, mismatched_top1);
    // Top-1 is printed, not asserted: this 256-token random model has near-tied logits (one
    // mismatch seen at split 3 on an H200), and routing decides the rest.
    EXPECT_LE(worst, tol) << "split at " << split;
  }
}

TEST_F(GoldenCuda, PrefillThenDecodeEqualsOnePrefill) {
  // case 4 (T = 65) has the longest stable prefix
  prefill_then_decode(model(Precision::kBf16), 4, stable_prefix(4), kSelfTol);
}
// High precision: decode steps run the same fp32 KDA kernels as the prefill; compared up to the
// first margin < 1e-3 (~3 sigma of its gap noise, where bf16 needs 3e-3).
TEST_F(GoldenCuda, HighPrefillThenDecodeEqualsOnePrefill) {
  prefill_then_decode(model(Precision::kHigh), 4, load_case(4).limit, kHighSelfTol);
}

// The residual stream after every layer against the reference, over all 257 positions of the
// last case. Layer 0 (KDA with multi-chunk prefill + dense MLP) has no routing, so it must match
// everywhere; later layers are printed (routing flips past the first small margin are legitimate).
void GoldenCuda::hidden_states_per_layer(Model& m, double layer0_tol) {
  const int n = num_cases_ - 1;
  GoldenCase c = load_case(n);
  const int H = m.config().hidden_size, T = int(c.ids.size());
  std::vector<std::vector<float>> got(m.config().num_hidden_layers);
  m.on_layer_output = [&](int l, const float* x, int rows) { got[l].assign(x, x + size_t(rows) * H); };
  prefill(m, c.ids);
  m.on_layer_output = nullptr;
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
      EXPECT_LE(worst, layer0_tol) << "layer 0 has no routing: every position must match";
    }
    EXPECT_LE(worst_stable, kRowTol) << "layer " << l;
  }
}

TEST_F(GoldenCuda, HiddenStatesPerLayer) { hidden_states_per_layer(model(Precision::kBf16), 1e-2); }
// High precision: layer 0 (KDA + dense MLP) rounds nothing but the weights: 4.9e-6 measured (H200).
TEST_F(GoldenCuda, HighHiddenStatesPerLayer) {
  hidden_states_per_layer(model(Precision::kHigh), 1e-4);
}

// One batch holding a fresh prefill, a decode step and a continued prefill equals the three
// sequences run alone (scattered slots and blocks). Rows are compared where the reference's
// route margins are >= 1e-3 (golden_limit): past a smaller margin the batched and the solo runs
// (other kernel splits, other rounding) may pick another expert, and every later row may differ.
// Model-a's margins are small almost everywhere, so the sequences are the cases' stable prefixes;
// CudaVsCpu.MixedBatchMatchesCpu checks mixed batches on a model without routing decisions.
void GoldenCuda::mixed_batch(Model& m, double tol) {
  const int V = m.config().vocab_size;
  GoldenCase ca = load_case(5), cb = load_case(1), cc = load_case(4);
  // a: case 5 whole (its first `limit` rows compared); b: case 1's stable prefix, its last token
  // decoded; c: case 4's first 20 tokens, the last 9 a continued prefill.
  ASSERT_GE(ca.limit, 5);
  ASSERT_GE(cb.limit, 2);
  ASSERT_GE(cc.limit, 20);
  const std::vector<int> a = ca.ids, b(cb.ids.begin(), cb.ids.begin() + cb.limit),
                         c(cc.ids.begin(), cc.ids.begin() + 20);
  const int bp = int(b.size()) - 1, cp = int(c.size()) - 9;
  std::vector<float> a_alone = prefill(m, a, 3, 40);
  prefill(m, std::vector<int>(b.begin(), b.begin() + bp), 5, 10);
  std::vector<int> bbl = blocks(10, int(b.size() + 70) / kBlockSize + 1);
  Batch bd;
  bd.add({b[bp]}, bp + 1, 5, bbl);
  std::vector<float> b_alone;
  m.forward(bd, b_alone);
  prefill(m, std::vector<int>(c.begin(), c.begin() + cp), 1, 25);
  std::vector<int> cbl = blocks(25, int(c.size() + 70) / kBlockSize + 1);
  Batch cd;
  cd.all_logits = true;
  cd.add(std::vector<int>(c.begin() + cp, c.end()), int(c.size()), 1, cbl);
  std::vector<float> c_alone;
  m.forward(cd, c_alone);

  // Together: same states rebuilt, then one batch.
  prefill(m, std::vector<int>(b.begin(), b.begin() + bp), 5, 10);
  prefill(m, std::vector<int>(c.begin(), c.begin() + cp), 1, 25);
  m.reset_slot(3);
  Batch mb;
  mb.all_logits = true;
  mb.add(a, int(a.size()), 3, blocks(40, int(a.size() + 70) / kBlockSize + 1));
  mb.add({b[bp]}, bp + 1, 5, bbl);
  mb.add(std::vector<int>(c.begin() + cp, c.end()), int(c.size()), 1, cbl);
  std::vector<float> mixed;
  m.forward(mb, mixed);
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
  EXPECT_LE(worst, tol);
}

TEST_F(GoldenCuda, MixedBatchEqualsSingleSequences) { mixed_batch(model(Precision::kBf16), kSelfTol); }
TEST_F(GoldenCuda, HighMixedBatchEqualsSingleSequences) {
  mixed_batch(model(Precision::kHigh), kHighSelfTol);
}

}  // namespace
}  // namespace kimi
