// Golden model tests: the CPU backend against ../shared/golden/model-a (float64 reference).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "bench/perplexity.h"
#include "core/check.h"
#include "model/model.h"
#include "model/safetensors.h"

namespace kimi {
namespace {

const std::string kDir = std::string(KIMI_GOLDEN_DIR) + "/model-a";

struct GoldenCase {
  std::vector<int> ids;
  std::vector<float> logits;  // [T, V]
  std::vector<int> greedy;
  std::vector<float> margin;  // [T]
  int limit = 0;              // positions before the first margin < 1e-5
};

class Golden : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(kDir + "/config.json")) return;
    ModelOptions opts;
    opts.cache.num_slots = 8;
    opts.cache.num_blocks = 64;
    model_ = load_model(kDir, opts).release();
    expected_ = new SafetensorsFile(kDir + "/expected.safetensors");
    std::ifstream f(kDir + "/cases.json");
    num_cases_ = int(nlohmann::json::parse(f)["cases"].size());
  }
  static void TearDownTestSuite() {
    delete model_;
    delete expected_;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "golden data not found at " << kDir << " (needs ../shared/golden)";
  }
  static std::vector<float> f32(const std::string& name) {
    return tensor_to_f32(expected_->tensors().at(name));
  }
  static GoldenCase load_case(int n) {
    GoldenCase c;
    const TensorInfo& ids = expected_->tensors().at(str("case", n, ".input_ids"));
    const TensorInfo& greedy = expected_->tensors().at(str("case", n, ".greedy"));
    auto as_ints = [](const TensorInfo& t) {
      std::vector<int> v(t.numel());
      std::memcpy(v.data(), t.data, v.size() * 4);
      return v;
    };
    c.ids = as_ints(ids);
    c.greedy = as_ints(greedy);
    c.logits = f32(str("case", n, ".logits"));
    c.margin = f32(str("case", n, ".route_margin"));
    c.limit = int(c.ids.size());
    for (int t = 0; t < int(c.margin.size()); ++t)
      if (c.margin[t] < 1e-5f) { c.limit = t; break; }
    return c;
  }
  static std::vector<int> blocks(int n) {
    std::vector<int> b(n);
    for (int i = 0; i < n; ++i) b[i] = i;
    return b;
  }
  // Prefill of the whole prompt in slot 0, logits for every position.
  static std::vector<float> prefill(const std::vector<int>& ids, int slot = 0, int first_block = 0) {
    model_->reset_slot(slot);
    Batch b;
    b.all_logits = true;
    std::vector<int> bl = blocks(int(ids.size() + 70) / kBlockSize + 1);
    for (int& x : bl) x += first_block;
    b.add(ids, int(ids.size()), slot, bl);
    std::vector<float> logits;
    model_->forward(b, logits);
    return logits;
  }
  static double rel_l2(const float* a, const float* b, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; ++i) {
      num += double(a[i] - b[i]) * (a[i] - b[i]);
      den += double(b[i]) * b[i];
    }
    return std::sqrt(num / std::max(den, 1e-30));
  }
  static Model* model_;
  static SafetensorsFile* expected_;
  static int num_cases_;
};

Model* Golden::model_ = nullptr;
SafetensorsFile* Golden::expected_ = nullptr;
int Golden::num_cases_ = 0;

TEST_F(Golden, LogitsMatchEveryCase) {
  const int V = model_->config().vocab_size;
  ASSERT_GE(num_cases_, 7);
  for (int n = 0; n < num_cases_; ++n) {
    GoldenCase c = load_case(n);
    std::vector<float> got = prefill(c.ids);
    ASSERT_EQ(got.size(), c.logits.size());
    double worst = 0;
    for (int t = 0; t < c.limit; ++t)
      worst = std::max(worst, rel_l2(got.data() + size_t(t) * V, c.logits.data() + size_t(t) * V, V));
    EXPECT_LE(worst, 1e-4) << "case " << n << " (T=" << c.ids.size() << ", compared "
                           << c.limit << " positions)";
    RecordProperty(str("case", n, "_max_rel_l2"), std::to_string(worst));
    std::printf("case %d: T=%zu, %d positions compared, max relative L2 %.3g\n", n, c.ids.size(),
                c.limit, worst);
  }
}

TEST_F(Golden, GreedyTokensMatch) {
  const int V = model_->config().vocab_size;
  for (int n = 0; n < num_cases_; ++n) {
    GoldenCase c = load_case(n);
    if (c.limit < int(c.ids.size())) continue;  // routing too close to call: skip this case
    std::vector<float> logits = prefill(c.ids);
    std::vector<int> bl = blocks(int(c.ids.size() + 70) / kBlockSize + 1);
    std::vector<int> out;
    std::vector<float> last(logits.end() - V, logits.end());
    int ctx = int(c.ids.size());
    for (size_t i = 0; i < c.greedy.size(); ++i) {
      int tok = int(std::max_element(last.begin(), last.end()) - last.begin());
      out.push_back(tok);
      Batch d;
      d.add({tok}, ++ctx, 0, bl);
      model_->forward(d, last);
    }
    EXPECT_EQ(out, c.greedy) << "case " << n;
  }
}

// Prefill of a prefix then token-by-token decode gives the logits of one whole prefill.
TEST_F(Golden, PrefillThenDecodeEqualsOnePrefill) {
  const int V = model_->config().vocab_size;
  GoldenCase c = load_case(num_cases_ - 1);
  std::vector<float> whole = prefill(c.ids);
  for (int split : {1, 64, 100}) {
    std::vector<int> head(c.ids.begin(), c.ids.begin() + split);
    std::vector<float> logits = prefill(head);
    std::vector<int> bl = blocks(int(c.ids.size() + 70) / kBlockSize + 1);
    double worst = 0;
    for (int t = split; t < int(c.ids.size()) && t < split + 80; ++t) {
      Batch d;
      d.add({c.ids[t]}, t + 1, 0, bl);
      model_->forward(d, logits);
      worst = std::max(worst, rel_l2(logits.data(), whole.data() + size_t(t) * V, V));
    }
    EXPECT_LE(worst, 1e-5) << "split at " << split;
  }
}

// Chunked prefill (the prompt fed in pieces of odd sizes) equals one prefill.
TEST_F(Golden, ChunkedPrefillEqualsOnePrefill) {
  const int V = model_->config().vocab_size;
  GoldenCase c = load_case(num_cases_ - 1);
  std::vector<float> whole = prefill(c.ids);
  model_->reset_slot(0);
  std::vector<int> bl = blocks(int(c.ids.size() + 70) / kBlockSize + 1);
  double worst = 0;
  int pos = 0;
  for (int piece : {7, 57, 65, 1, 127}) {
    piece = std::min(piece, int(c.ids.size()) - pos);
    Batch b;
    b.all_logits = true;
    b.add(std::vector<int>(c.ids.begin() + pos, c.ids.begin() + pos + piece), pos + piece, 0, bl);
    std::vector<float> logits;
    model_->forward(b, logits);
    for (int i = 0; i < piece; ++i)
      worst = std::max(worst, rel_l2(logits.data() + size_t(i) * V,
                                     whole.data() + size_t(pos + i) * V, V));
    pos += piece;
  }
  EXPECT_EQ(pos, int(c.ids.size()));
  EXPECT_LE(worst, 1e-5);
}

// The residual stream after each layer matches the reference (locates a mismatch by layer).
TEST_F(Golden, HiddenStatesPerLayer) {
  GoldenCase c = load_case(num_cases_ - 1);
  const int H = model_->config().hidden_size;
  std::vector<std::vector<float>> got(model_->config().num_hidden_layers);
  model_->on_layer_output = [&](int l, const float* x, int T) {
    got[l].assign(x, x + size_t(T) * H);
  };
  prefill(c.ids);
  model_->on_layer_output = nullptr;
  for (int l = 0; l < int(got.size()); ++l) {
    std::string name = str("case", num_cases_ - 1, ".hidden.layer", l);
    if (!expected_->tensors().count(name)) continue;
    std::vector<float> want = f32(name);
    double worst = 0;
    for (int t = 0; t < c.limit; ++t)
      worst = std::max(worst, rel_l2(got[l].data() + size_t(t) * H, want.data() + size_t(t) * H, H));
    EXPECT_LE(worst, 1e-4) << "layer " << l;
  }
}

// kimi-bench perplexity on a golden prompt as one chunk equals the perplexity the reference
// logits give its second half (cases whose routing margins are all clear); a text shorter than
// a chunk, a token outside the vocabulary and a chunk under 4 tokens are refused.
TEST_F(Golden, PerplexityMatchesTheReferenceLogits) {
  const int V = model_->config().vocab_size;
  int checked = 0;
  for (int n = 0; n < num_cases_; ++n) {
    GoldenCase c = load_case(n);
    const int T = int(c.ids.size());
    if (T < 8 || c.limit < T) continue;
    double nll = 0;
    for (int i = T / 2; i < T - 1; ++i) {
      const float* row = c.logits.data() + size_t(i) * V;
      double mx = row[0], z = 0;
      for (int v = 1; v < V; ++v) mx = std::max(mx, double(row[v]));
      for (int v = 0; v < V; ++v) z += std::exp(double(row[v]) - mx);
      nll += mx + std::log(z) - row[c.ids[size_t(i) + 1]];
    }
    const double want = std::exp(nll / (T - 1 - T / 2));
    const bench::PerplexityResult got = bench::perplexity(*model_, c.ids, T, 0);
    EXPECT_EQ(got.chunks, 1);
    EXPECT_EQ(got.scored, T - 1 - T / 2);
    EXPECT_NEAR(got.perplexity, want, 1e-4 * want) << "case " << n << " (T=" << T << ")";
    // Two chunks of half the length score their own second halves.
    const bench::PerplexityResult two = bench::perplexity(*model_, c.ids, T / 2, 0);
    EXPECT_EQ(two.chunks, 2);
    EXPECT_EQ(two.scored, 2 * (T / 2 - 1 - T / 4));
    std::printf("case %d: T=%d, perplexity %.4f (reference %.4f)\n", n, T, got.perplexity, want);
    ++checked;
  }
  EXPECT_GE(checked, 1);
  const std::vector<int> ids = load_case(num_cases_ - 1).ids;
  EXPECT_THROW(bench::perplexity(*model_, std::vector<int>(ids.begin(), ids.begin() + 7), 8, 0),
               Error);
  std::vector<int> bad = ids;
  bad[3] = V;
  EXPECT_THROW(bench::perplexity(*model_, bad, 64, 0), Error);
  EXPECT_THROW(bench::perplexity(*model_, ids, 3, 0), Error);
}

}  // namespace
}  // namespace kimi
