// Tensor parallelism (issue 10). Host: the refusals (sizes that do not divide, too few GPUs, a
// backend without it), which CI checks without a GPU. GPU (>= 2 visible): TP = 2 (and 4 where
// 4 GPUs exist) against TP = 1 on the golden model-a (2 heads) and on a tiny random model with
// 8 KDA + 8 MLA heads and 8 experts: logits within bf16 tolerance, top-1 and greedy tokens
// identical except where the two runs' measured difference exceeds the top-2 gap (a tie).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "core/check.h"
#include "kimi/engine.h"
#include "model/cpu_model.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "model/tiny.h"
#include "runtime/sampler.h"

#if KIMI_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kimi {
namespace {

namespace fs = std::filesystem;
const std::string kGolden = std::string(KIMI_GOLDEN_DIR) + "/model-a";
// TP = N against TP = 1, both bf16: the split projections run other GEMM algorithms, so bf16
// outputs round differently here and there (one ulp is 4e-3 relative). Measured up to 5.2e-3 on
// model-a (H200, 2026-11-27); half the 2e-2 the golden test allows against float64.
constexpr double kTpTol = 1e-2;
// Routing margins (fp32 CPU model) below this may flip between two bf16 runs (the golden CUDA
// test's GPU-vs-GPU criterion).
constexpr float kMarginTol = 3e-3f;

int visible_gpus() {
#if KIMI_HAVE_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

std::string load_error(const std::string& dir, const std::string& backend, int tp) {
  ModelOptions o;
  o.backend = backend;
  o.tensor_parallel = tp;
  o.cache.num_slots = 1;
  o.cache.num_blocks = 4;
  try {
    load_model(dir, o);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A tiny random model that splits 2, 4 and 8 ways on the CUDA backend (intermediate slices stay
// multiples of 8).
std::string tiny_model_dir() {
  const fs::path dir = fs::temp_directory_path() / ("kimi-tp-tiny-" + std::to_string(getpid()));
  if (!fs::exists(dir / "config.json")) {
    TinySpec s;
    s.seed = 7;
    s.layers = 4;
    s.hidden = 256;
    s.kda_heads = 8;
    s.mla_heads = 8;
    s.experts = 8;
    s.top_k = 2;
    s.moe_inter = 128;
    s.dense_inter = 512;
    write_tiny_checkpoint(dir.string(), s);
  }
  return dir.string();
}

TEST(TensorParallelHost, RefusesWhatCannotSplitOrRun) {
  const std::string tiny = tiny_model_dir();
  const std::string bad_size = load_error(tiny, "cuda", 3);
  EXPECT_NE(bad_size.find("use 1, 2, 4 or 8"), std::string::npos) << bad_size;
  const std::string cpu = load_error(tiny, "cpu", 2);
  EXPECT_NE(cpu.find("needs the cuda backend"), std::string::npos) << cpu;
  if (fs::exists(kGolden + "/config.json")) {  // 2 KDA heads cannot split 4 ways
    const std::string heads = load_error(kGolden, "cuda", 4);
    EXPECT_NE(heads.find("does not divide linear_attn_config.num_heads (KDA heads) = 2"),
              std::string::npos) << heads;
  }
#if KIMI_HAVE_CUDA
  const int gpus = visible_gpus();
  if (gpus < 8) {
    const std::string few = load_error(tiny, "cuda", 8);
    EXPECT_NE(few.find(str("needs 8 GPUs but ", gpus)), std::string::npos) << few;
  }
#endif
}

double rel_l2(const float* a, const float* b, int n) {
  double num = 0, den = 0;
  for (int i = 0; i < n; ++i) {
    num += double(a[i] - b[i]) * (a[i] - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}
int argmax(const float* x, int n) { return int(std::max_element(x, x + n) - x); }
double max_abs_diff(const float* a, const float* b, int n) {
  double m = 0;
  for (int i = 0; i < n; ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}
// Gap between the best and the second-best logit.
double top2_gap(const float* x, int n) {
  const int best = argmax(x, n);
  double second = -INFINITY;
  for (int i = 0; i < n; ++i)
    if (i != best) second = std::max(second, double(x[i]));
  return double(x[best]) - second;
}
// Two runs may pick different top-1 tokens only where the reference run's top-2 gap is within
// twice their largest logit difference on that row: the pick is a tie at the precision the two
// runs agree to. Anything else is a real difference.
bool top1_agrees_or_ties(const float* run, const float* ref, int n) {
  return argmax(run, n) == argmax(ref, n) || top2_gap(ref, n) <= 2 * max_abs_diff(run, ref, n);
}

std::unique_ptr<Model> load(const std::string& dir, int tp, bool expert_parallel = false) {
  ModelOptions o;
  o.backend = "cuda";
  o.tensor_parallel = tp;
  o.expert_parallel = expert_parallel;
  o.cache.num_slots = 2;
  o.cache.num_blocks = 16;
  o.max_batch_tokens = 512;
  return load_model(dir, o);
}

class TensorParallelGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (visible_gpus() < 2) {
      std::fprintf(stderr, "tensor-parallel GPU test skipped: %d GPU(s) visible, 2 needed\n",
                   visible_gpus());
      GTEST_SKIP() << "needs 2 GPUs";
    }
  }
  // TP = tp against TP = 1, each prompt prefilled (all rows compared), then `steps` tokens
  // decoded greedily in lockstep: both models get TP = 1's token, so every step compares the
  // same context. Top-1 equal except at ties (top1_agrees_or_ties) and greedy tokens identical
  // except at such a tie, everywhere. Rows within kTpTol up to the first position where the
  // fp32 CPU model's routing margin is below kMarginTol: past such a near-tie two bf16 runs may
  // legitimately pick another expert (the random tiny model has margins down to 2e-5).
  // expert_parallel: the TP run splits the routed experts by expert.
  void compare(const std::string& dir, int tp, const std::vector<std::vector<int>>& prompts,
               int steps, bool expert_parallel = false) {
    auto one = load(dir, 1);
    auto many = load(dir, tp, expert_parallel);
    ModelOptions co;
    co.backend = "cpu";
    co.cache.num_slots = 2;
    co.cache.num_blocks = 16;
    auto cpu = load_model(dir, co);
    std::vector<float> margins, unused;
    dynamic_cast<CpuModel&>(*cpu).route_margins = &margins;
    int compared_total = 0;
    ASSERT_EQ(one->config().vocab_size, many->config().vocab_size);
    const int V = one->config().vocab_size;
    std::vector<int> blocks(16);
    for (int i = 0; i < 16; ++i) blocks[i] = i;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const std::vector<int>& ids = prompts[i];
      std::vector<float> a, b;
      for (Model* m : {one.get(), many.get(), cpu.get()}) {
        m->reset_slot(0);
        Batch pb;
        pb.all_logits = m != cpu.get();
        pb.add(ids, int(ids.size()), 0, blocks);
        m->forward(pb, m == one.get() ? a : m == many.get() ? b : unused);
      }
      // Rows [0, limit) are before any near-tie; decode steps count only if the prompt has none.
      int limit = 0;
      while (limit < int(ids.size()) && margins[size_t(limit)] >= kMarginTol) ++limit;
      bool tied = limit < int(ids.size());
      double worst = 0;
      int top1 = 0, ties = 0, greedy_same = 0, greedy_ties = 0, compared = 0;
      auto check_row = [&](const float* x, const float* y, const char* what, int at, bool near_tie) {
        if (!near_tie) {
          worst = std::max(worst, rel_l2(x, y, V));
          ++compared;
        }
        const bool same = argmax(x, V) == argmax(y, V);
        top1 += same;
        if (!same) {
          ++ties;
          EXPECT_TRUE(top1_agrees_or_ties(x, y, V))
              << what << " " << at << " of prompt " << i << ": top-1 " << argmax(x, V) << " vs "
              << argmax(y, V) << " with gap " << top2_gap(y, V) << " > 2 x max difference "
              << max_abs_diff(x, y, V);
        }
        return same;
      };
      for (size_t t = 0; t < ids.size(); ++t)
        check_row(b.data() + t * V, a.data() + t * V, "row", int(t), int(t) >= limit);
      std::vector<float> la(a.end() - V, a.end()), lb(b.end() - V, b.end());
      int ctx = int(ids.size());
      for (int s = 0; s < steps; ++s) {
        if (check_row(lb.data(), la.data(), "decode step", s, tied)) ++greedy_same;
        else ++greedy_ties;
        const int tok = argmax(la.data(), V);
        ++ctx;
        for (Model* m : {one.get(), many.get(), cpu.get()}) {
          Batch d;
          d.add({tok}, ctx, 0, blocks);
          m->forward(d, m == one.get() ? la : m == many.get() ? lb : unused);
        }
        tied = tied || margins[0] < kMarginTol;
      }
      std::printf("TP=%d%s vs TP=1, prompt %zu (T=%zu): max relative L2 %.3g over %d rows+steps before "
                  "the first routing margin < %.0e; top-1 %d/%zu rows+steps (%d ties); greedy %d/%d "
                  "identical (%d ties)\n", tp, expert_parallel ? " (EP)" : "", i, ids.size(), worst,
                  compared, kMarginTol, top1, ids.size() + steps, ties, greedy_same, steps, greedy_ties);
      EXPECT_LE(worst, kTpTol) << "prompt " << i;
      compared_total += compared;
    }
    // The margin rule must leave a real comparison.
    EXPECT_GE(compared_total, 20);
  }
};

std::vector<std::vector<int>> golden_prompts() {
  SafetensorsFile expected(kGolden + "/expected.safetensors");
  std::ifstream f(kGolden + "/cases.json");
  const int cases = int(nlohmann::json::parse(f)["cases"].size());
  std::vector<std::vector<int>> prompts;
  for (int n = 0; n < cases; ++n) {
    const TensorInfo& t = expected.tensors().at(str("case", n, ".input_ids"));
    std::vector<int> ids(t.numel());
    std::memcpy(ids.data(), t.data, ids.size() * 4);
    // The prefix before the first route margin < 3e-3: past it two bf16 runs may legitimately
    // route differently (the golden CUDA test's GPU-vs-GPU criterion).
    const std::vector<float> margin = tensor_to_f32(expected.tensors().at(str("case", n, ".route_margin")));
    int limit = 0;
    while (limit < int(ids.size()) && margin[limit] >= 3e-3f) ++limit;
    if (limit > 0) prompts.push_back(std::vector<int>(ids.begin(), ids.begin() + limit));
  }
  return prompts;
}

TEST_F(TensorParallelGpu, GoldenModelTp2EqualsTp1) {
  if (!fs::exists(kGolden + "/config.json")) GTEST_SKIP() << "no golden data at " << kGolden;
  const auto prompts = golden_prompts();
  ASSERT_GE(prompts.size(), 3u);
  compare(kGolden, 2, prompts, 8);
}

// Expert parallelism: each GPU runs 8 of model-a's 16 routed experts whole.
TEST_F(TensorParallelGpu, GoldenModelTp2ExpertParallelEqualsTp1) {
  if (!fs::exists(kGolden + "/config.json")) GTEST_SKIP() << "no golden data at " << kGolden;
  const auto prompts = golden_prompts();
  ASSERT_GE(prompts.size(), 3u);
  compare(kGolden, 2, prompts, 8, true);
}

// Prompts of 1, 7, 65 and 200 tokens for the tiny model. Its random weights leave many routing
// near-ties; these leave 32 rows before the first margin < kMarginTol (H200, session 4), which the
// comparisons need (another token pattern left 5).
std::vector<std::vector<int>> tiny_prompts() {
  std::vector<std::vector<int>> prompts;
  for (int len : {1, 7, 65, 200}) {
    std::vector<int> ids(len);
    for (int i = 0; i < len; ++i) ids[i] = (i * 37 + len * 11) % 1000;
    prompts.push_back(ids);
  }
  return prompts;
}

TEST_F(TensorParallelGpu, TinyModelTp2AndTp4EqualTp1) {
  const std::string dir = tiny_model_dir();
  const auto prompts = tiny_prompts();
  compare(dir, 2, prompts, 16);
  if (visible_gpus() >= 4) compare(dir, 4, prompts, 16);
  else std::printf("TP=4 not run: %d GPUs visible\n", visible_gpus());
}

// Expert parallelism on the tiny model: 4 (TP = 2) or 2 (TP = 4) of its 8 experts per GPU.
TEST_F(TensorParallelGpu, TinyModelExpertParallelEqualsTp1) {
  const std::string dir = tiny_model_dir();
  const auto prompts = tiny_prompts();
  compare(dir, 2, prompts, 16, true);
  if (visible_gpus() >= 4) compare(dir, 4, prompts, 16, true);
  else std::printf("TP=4 EP not run: %d GPUs visible\n", visible_gpus());
}

// Sampling at TP = 2 (forward_sampled): the ranks' vocabulary slices meet on GPU 0, which draws
// there: a greedy row draws the argmax of the logits forward() returns for the same step, and a
// row drawn on the host gets those logits back.
TEST_F(TensorParallelGpu, SamplesTheGatheredLogitsOnGpuZero) {
  auto m = load(tiny_model_dir(), 2);
  const int V = m->config().vocab_size;
  std::vector<int> prompt(45);
  for (int i = 0; i < 45; ++i) prompt[i] = (i * 29 + 7) % 1000;
  auto step = [&] {
    Batch b;
    for (int s = 0; s < 2; ++s) {
      m->reset_slot(s);
      b.add(prompt, int(prompt.size()), s, {8 * s});
    }
    return b;
  };
  std::vector<float> logits;
  m->forward(step(), logits);
  ASSERT_EQ(logits.size(), size_t(2) * V);
  DrawBatch d;
  d.rows.resize(2);
  d.rows[0].temperature = 0.f;
  d.rows[0].logprobs = 3;  // of the token drawn, computed on GPU 0 too
  d.rows[1].host = true;
  std::vector<int> tokens;
  std::vector<float> host_logits;
  std::vector<RowLogprobs> lps;
  if (!m->forward_sampled(step(), d, tokens, host_logits, lps))
    GTEST_SKIP() << "no peer access between the GPUs: the host samples";
  ASSERT_EQ(tokens.size(), 2u);
  EXPECT_EQ(tokens[0], int(std::max_element(logits.begin(), logits.begin() + V) - logits.begin()));
  ASSERT_EQ(lps.size(), 1u);
  const RowLogprobs want = row_logprobs({logits.data(), size_t(V)}, tokens[0], 3);
  EXPECT_EQ(lps[0].token, tokens[0]);
  EXPECT_EQ(lps[0].rank, 1);  // the argmax
  ASSERT_EQ(lps[0].num_top, 3);
  EXPECT_EQ(lps[0].top_id[0], tokens[0]);
  EXPECT_NEAR(lps[0].logprob, want.logprob, 1e-4f * (1 + std::abs(want.logprob)));
  for (int j = 0; j < 3; ++j)
    EXPECT_NEAR(lps[0].top_logprob[j], want.top_logprob[j],
                1e-4f * (1 + std::abs(want.top_logprob[j])));
  ASSERT_EQ(host_logits.size(), size_t(V));
  for (int i = 0; i < V; ++i)  // the same step again: the same kernels on the same inputs
    ASSERT_NEAR(host_logits[size_t(i)], logits[size_t(V + i)], 1e-5f * std::abs(logits[size_t(V + i)]) + 1e-6f)
        << "token " << i;
}

// kimi-serve's path at TP = 2: the engine on TpModel with caches sized from both GPUs' memory
// serves concurrent greedy, seeded-sampled and n = 2 requests (forks copy KDA slots and cache
// blocks on every rank) to their full length; the greedy one equals TP = 1's tokens up to a tie.
TEST_F(TensorParallelGpu, EngineServesAtTp2) {
  const std::string dir = tiny_model_dir();
  auto make = [&](int tp) {
    EngineOptions eo;
    eo.model_dir = dir;
    eo.backend = "cuda";
    eo.max_num_seqs = 8;
    eo.tensor_parallel_size = tp;
    return Engine::create(eo);
  };
  auto eng = make(2);
  EXPECT_GT(eng->max_model_len(), 1000);
  std::vector<Request> reqs(3);
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 30 + 40 * i; ++j) reqs[i].prompt_ids.push_back((j * 13 + i) % 1000);
    reqs[i].max_tokens = 20;
    reqs[i].ignore_eos = true;
  }
  reqs[0].sampling.temperature = 0;
  reqs[1].sampling.temperature = 0.8f, reqs[1].sampling.top_p = 0.9f, reqs[1].seed_given = true;
  reqs[1].sampling.seed = 5;
  reqs[2].sampling.temperature = 1.f, reqs[2].n = 2;
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (auto& r : reqs) hs.push_back(eng->submit(r));
  std::vector<std::vector<int>> greedy(1);
  for (size_t i = 0; i < hs.size(); ++i) {
    std::map<int, int> tokens;
    std::map<int, FinishReason> finish;
    while (auto ev = hs[i]->next(std::chrono::seconds(120))) {
      tokens[ev->index] += int(ev->token_ids.size());
      if (i == 0) greedy[0].insert(greedy[0].end(), ev->token_ids.begin(), ev->token_ids.end());
      if (ev->finish != FinishReason::kNone) finish[ev->index] = ev->finish;
    }
    ASSERT_EQ(int(tokens.size()), reqs[i].n) << "request " << i;
    for (auto& [idx, n] : tokens) {
      EXPECT_EQ(n, 20) << "request " << i << " sample " << idx;
      EXPECT_EQ(finish[idx], FinishReason::kLength) << "request " << i << " sample " << idx;
    }
  }
  eng.reset();
  auto one = make(1);
  std::vector<int> ref;
  auto h = one->submit(reqs[0]);
  while (auto ev = h->next(std::chrono::seconds(120)))
    ref.insert(ref.end(), ev->token_ids.begin(), ev->token_ids.end());
  int same = 0;
  while (same < int(ref.size()) && ref[same] == greedy[0][same]) ++same;
  std::printf("engine TP=2 vs TP=1 greedy: %d/%zu tokens equal before any difference\n", same,
              ref.size());
  // A difference can only start at a near tie (TinyModelTp2AndTp4EqualTp1 checks ties exactly).
  EXPECT_GE(same, 10);
}

}  // namespace
}  // namespace kimi
