// Runtime tests on the embedded default tiny model: continuous batching equals one-at-a-time,
// cancellation frees resources, pool exhaustion preempts and still completes correctly,
// n > 1, seeds, stop strings, request validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "core/check.h"
#include "kimi/engine.h"
#include "model/model.h"
#include "runtime/json_matcher.h"
#include "runtime/json_schema.h"
#include "runtime/tool_call_matcher.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tool_calls.h"

namespace kimi {
namespace {

const std::string kModel = std::string(KIMI_BINARY_DIR) + "/default-model";

std::vector<int> random_prompt(std::mt19937& rng, int len, int vocab) {
  std::vector<int> p(len);
  for (auto& t : p) t = int(rng() % uint32_t(vocab - 256));  // base tokens only
  return p;
}

double rel_l2(const float* a, const float* b, int n) {
  double num = 0, den = 0;
  for (int i = 0; i < n; ++i) {
    num += double(a[i] - b[i]) * (a[i] - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Model level: one batch of 16 sequences (mixed prefill lengths, then mixed decode) gives the
// logits of the same sequences run alone.
TEST(Batching, MixedBatchLogitsEqualSingleSequence) {
  ModelOptions mo;
  mo.cache.num_slots = 17;
  mo.cache.num_blocks = 17 * 6;
  auto model = load_model(kModel, mo);
  const int V = model->config().vocab_size, S = 16;
  std::mt19937 rng(5);
  std::vector<std::vector<int>> prompts;
  for (int s = 0; s < S; ++s) prompts.push_back(random_prompt(rng, 1 + int(rng() % 300), V));
  auto blocks = [](int s) {
    std::vector<int> b(6);
    for (int i = 0; i < 6; ++i) b[i] = s * 6 + i;
    return b;
  };
  // Batched: every prefill at once, then 3 decode steps with everyone.
  Batch pre;
  for (int s = 0; s < S; ++s) {
    model->reset_slot(s);
    pre.add(prompts[s], int(prompts[s].size()), s, blocks(s));
  }
  std::vector<float> batched;
  model->forward(pre, batched);
  std::vector<std::vector<float>> batched_steps = {batched};
  for (int step = 0; step < 3; ++step) {
    Batch d;
    for (int s = 0; s < S; ++s) d.add({(s * 7 + step) % 200}, int(prompts[s].size()) + step + 1, s, blocks(s));
    model->forward(d, batched);
    batched_steps.push_back(batched);
  }
  // Alone, in slot 16 / blocks of sequence 16.
  double worst = 0;
  for (int s = 0; s < S; ++s) {
    model->reset_slot(16);
    Batch b;
    b.add(prompts[s], int(prompts[s].size()), 16, blocks(16));
    std::vector<float> alone;
    model->forward(b, alone);
    worst = std::max(worst, rel_l2(alone.data(), batched_steps[0].data() + size_t(s) * V, V));
    for (int step = 0; step < 3; ++step) {
      Batch d;
      d.add({(s * 7 + step) % 200}, int(prompts[s].size()) + step + 1, 16, blocks(16));
      model->forward(d, alone);
      worst = std::max(worst, rel_l2(alone.data(), batched_steps[step + 1].data() + size_t(s) * V, V));
    }
  }
  EXPECT_LE(worst, 1e-4);
  std::printf("max relative L2, batched vs alone: %.3g\n", worst);
}

// Per-sequence logits rows (prompt logprobs): a flagged sequence gets a row for each of its
// tokens, the others their last; the rows equal an all_logits step's.
TEST(Batching, PerSequenceAllLogitsRows) {
  ModelOptions mo;
  mo.cache.num_slots = 6;
  mo.cache.num_blocks = 6 * 3;
  auto model = load_model(kModel, mo);
  const int V = model->config().vocab_size;
  std::mt19937 rng(9);
  const int lens[] = {5, 70, 1};
  std::vector<std::vector<int>> prompts;
  for (int L : lens) prompts.push_back(random_prompt(rng, L, V));
  auto blocks = [](int s) { return std::vector<int>{3 * s, 3 * s + 1, 3 * s + 2}; };
  auto step = [&](int slot0, bool all, std::vector<uint8_t> flags, std::vector<float>& out) {
    Batch b;
    for (int s = 0; s < 3; ++s) {
      model->reset_slot(slot0 + s);
      b.add(prompts[size_t(s)], lens[s], slot0 + s, blocks(slot0 + s));
    }
    b.all_logits = all;
    b.seq_all_logits = std::move(flags);
    model->forward(b, out);
    return b;
  };
  std::vector<float> all, mixed;
  step(0, true, {}, all);
  const Batch b = step(3, false, {1, 0, 1}, mixed);
  EXPECT_EQ(b.num_logit_rows(), 5 + 1 + 1);
  const std::vector<int> rows = b.logit_token_rows();
  EXPECT_EQ(rows, (std::vector<int>{0, 1, 2, 3, 4, 74, 75}));
  ASSERT_EQ(mixed.size(), rows.size() * size_t(V));
  for (size_t r = 0; r < rows.size(); ++r)
    EXPECT_LE(rel_l2(mixed.data() + r * V, all.data() + size_t(rows[r]) * V, V), 1e-5)
        << "row " << r;
  Batch bad = b;
  bad.seq_all_logits = {1};
  EXPECT_THROW(bad.num_logit_rows(), Error);
}

struct Output {
  std::vector<int> ids;
  std::string text;
  FinishReason finish = FinishReason::kNone;
  std::string stop_reason;
  int stop_token = -1;
};

std::map<int, Output> collect(RequestHandle& h) {
  std::map<int, Output> out;
  while (auto ev = h.next(std::chrono::seconds(60))) {
    Output& o = out[ev->index];
    o.ids.insert(o.ids.end(), ev->token_ids.begin(), ev->token_ids.end());
    o.text += ev->text;
    if (ev->finish != FinishReason::kNone) {
      o.finish = ev->finish;
      o.stop_reason = ev->stop_reason;
      o.stop_token = ev->stop_token;
    }
  }
  return out;
}

EngineOptions engine_opts(int max_seqs, int num_blocks = 0, int budget = 256) {
  EngineOptions o;
  o.model_dir = kModel;
  o.max_num_seqs = max_seqs;
  o.num_blocks = num_blocks;
  o.max_num_batched_tokens = budget;
  o.max_model_len = num_blocks ? 0 : 4096;
  return o;
}

// The reference for the prefix-cache tests: the same engine computing every prompt in full.
std::unique_ptr<Engine> engine_without_prefix_cache(int max_seqs) {
  EngineOptions o = engine_opts(max_seqs);
  o.enable_prefix_caching = false;
  return Engine::create(o);
}

Request greedy(std::vector<int> prompt, int max_tokens) {
  Request r;
  r.prompt_ids = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  r.ignore_eos = true;
  return r;
}

// --kv-cache-dtype: auto and bf16 are the unquantised cache, fp8 the e4m3 one; anything else is
// refused with a message naming the accepted values, before any model loads. The CPU backend
// serves fp8 (its fp32 cache holds the fp8 round trip, ops/cpu/mla.h), with different logits.
TEST(Engine, KvCacheDtypeOption) {
  EXPECT_EQ(parse_kv_cache_dtype("auto"), KvCacheDtype::kBf16);
  EXPECT_EQ(parse_kv_cache_dtype("bf16"), KvCacheDtype::kBf16);
  EXPECT_EQ(parse_kv_cache_dtype("fp8"), KvCacheDtype::kFp8);
  for (const char* bad : {"fp16", "FP8", "", "fp8_e5m2"}) {
    EngineOptions o = engine_opts(2);
    o.kv_cache_dtype = bad;
    try {
      Engine::create(o);
      ADD_FAILURE() << "kv_cache_dtype '" << bad << "' accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("kv cache dtype must be auto, bf16 or fp8"),
                std::string::npos)
          << e.what();
    }
  }
  std::mt19937 rng(5);
  EngineOptions o = engine_opts(2);
  auto plain = Engine::create(o);
  const Request r = greedy(random_prompt(rng, 150, plain->config().vocab_size), 12);
  const auto want = collect(*plain->submit(r))[0];
  o.kv_cache_dtype = "fp8";
  auto fp8 = Engine::create(o);
  const auto got = collect(*fp8->submit(r))[0];
  EXPECT_EQ(got.finish, FinishReason::kLength);
  EXPECT_EQ(got.ids.size(), 12u);
  int same = 0;
  for (size_t i = 0; i < got.ids.size(); ++i) same += got.ids[i] == want.ids[i];
  std::printf("fp8 cache: %d of 12 greedy tokens as the fp32 cache's\n", same);
}

// 16 concurrent requests with a small token budget (chunked prefill mixed with decodes) give the
// same greedy tokens as each request run alone.
TEST(Engine, ConcurrentEqualsOneAtATime) {
  std::mt19937 rng(11);
  std::vector<Request> reqs;
  auto eng = Engine::create(engine_opts(16));
  const int V = eng->config().vocab_size;
  for (int i = 0; i < 16; ++i) reqs.push_back(greedy(random_prompt(rng, 1 + int(rng() % 300), V), 1 + int(rng() % 24)));
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (auto& r : reqs) hs.push_back(eng->submit(r));
  std::vector<std::vector<int>> together;
  for (auto& h : hs) together.push_back(collect(*h)[0].ids);
  auto solo = Engine::create(engine_opts(1));
  for (size_t i = 0; i < reqs.size(); ++i) {
    auto o = collect(*solo->submit(reqs[i]))[0];
    EXPECT_EQ(o.ids, together[i]) << "request " << i;
    EXPECT_EQ(int(o.ids.size()), reqs[i].max_tokens);
    EXPECT_EQ(o.finish, FinishReason::kLength);
  }
  EngineMetrics m = eng->metrics();
  EXPECT_EQ(m.free_blocks, m.total_blocks);
  EXPECT_EQ(m.free_slots, m.total_slots);
}

TEST(Engine, CancellationFreesBlocksAndSlotByNextStep) {
  auto eng = Engine::create(engine_opts(4));
  std::mt19937 rng(3);
  auto h = eng->submit(greedy(random_prompt(rng, 200, eng->config().vocab_size), 100000 / 100));
  auto first = h->next(std::chrono::seconds(30));
  ASSERT_TRUE(first.has_value());
  EngineMetrics busy = eng->metrics();
  EXPECT_LT(busy.free_blocks, busy.total_blocks);
  eng->cancel(h->id());
  FinishReason fin = FinishReason::kNone;
  while (auto ev = h->next(std::chrono::seconds(30)))
    if (ev->finish != FinishReason::kNone) fin = ev->finish;
  EXPECT_EQ(fin, FinishReason::kCancelled);
  EngineMetrics m = eng->metrics();
  EXPECT_EQ(m.free_blocks, m.total_blocks);
  EXPECT_EQ(m.free_slots, m.total_slots);
  EXPECT_EQ(m.num_running, 0);
}

// A pool of 12 blocks (768 tokens) for 8 requests of up to 330 tokens: the engine must queue
// and preempt, and every request still completes with the tokens it gets alone.
TEST(Engine, PoolExhaustionPreemptsAndCompletesCorrectly) {
  std::mt19937 rng(21);
  auto eng = Engine::create(engine_opts(8, 12, 128));
  const int V = eng->config().vocab_size;
  std::vector<Request> reqs;
  for (int i = 0; i < 8; ++i) reqs.push_back(greedy(random_prompt(rng, 100 + int(rng() % 200), V), 30));
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (auto& r : reqs) hs.push_back(eng->submit(r));
  std::vector<std::vector<int>> got;
  for (auto& h : hs) got.push_back(collect(*h)[0].ids);
  EngineMetrics m = eng->metrics();
  EXPECT_GT(m.preemptions_total, 0u);
  EXPECT_EQ(m.free_blocks, m.total_blocks);
  // vLLM's phase times, one per request, preempted ones too (from their first scheduling).
  EXPECT_EQ(m.prefill.count, 8u);
  EXPECT_EQ(m.decode.count, 8u);
  EXPECT_EQ(m.inference.count, 8u);
  EXPECT_NEAR(m.inference.sum, m.prefill.sum + m.decode.sum, 1e-6 * (1 + m.inference.sum));
  auto solo = Engine::create(engine_opts(1));
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(collect(*solo->submit(reqs[i]))[0].ids, got[i]) << i;
}

// The order in which requests queued behind a running one are admitted, with one sequence at a
// time: each runs until it is cancelled, so the next to produce a token is the next admitted.
std::vector<int> admission_order(const std::string& policy,
                                 const std::vector<int64_t>& priorities) {
  EngineOptions o = engine_opts(1);
  o.scheduling_policy = policy;
  auto eng = Engine::create(o);
  auto first = eng->submit(greedy({1, 2, 3}, 3000));
  EXPECT_TRUE(first->next(std::chrono::seconds(30)).has_value());  // it runs: the rest queue
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (int64_t p : priorities) {
    Request r = greedy({4, 5, 6}, 3000);
    r.priority = p;
    hs.push_back(eng->submit(r));
  }
  std::vector<int> order;
  std::shared_ptr<RequestHandle> running = first;
  while (order.size() < hs.size()) {
    eng->cancel(running->id());
    collect(*running);
    // The next one to produce an event; the others produce none while it runs.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    int next = -1;
    while (next < 0 && std::chrono::steady_clock::now() < deadline)
      for (size_t i = 0; i < hs.size() && next < 0; ++i)
        if (std::find(order.begin(), order.end(), int(i)) == order.end() &&
            hs[i]->next(std::chrono::milliseconds(1)).has_value())
          next = int(i);
    if (next < 0) {
      ADD_FAILURE() << "no queued request started";
      break;
    }
    order.push_back(next);
    running = hs[size_t(next)];
  }
  eng->cancel(running->id());
  collect(*running);
  return order;
}

// --scheduling-policy priority admits by (priority, arrival), lower first; fcfs by arrival and
// ignores the priorities (as vLLM).
TEST(Engine, PriorityPolicyOrdersTheQueue) {
  const std::vector<int64_t> prio = {2, 1, 1, -1, 2};
  EXPECT_EQ(admission_order("priority", prio), (std::vector<int>{3, 1, 2, 0, 4}));
  EXPECT_EQ(admission_order("fcfs", prio), (std::vector<int>{0, 1, 2, 3, 4}));
  EngineOptions o = engine_opts(1);
  o.scheduling_policy = "lifo";
  EXPECT_THROW(Engine::create(o), Error);
}

// The pool-exhaustion run under the priority policy: low-priority requests start first, then
// high-priority ones arrive and run behind them in the batch, so victims are taken from ahead of
// the sequence that needs blocks (given tokens earlier in the same step). Every request still
// completes with the tokens it gets alone.
TEST(Engine, PriorityPreemptionCompletesCorrectly) {
  std::mt19937 rng(22);
  EngineOptions o = engine_opts(8, 12, 128);
  o.scheduling_policy = "priority";
  auto eng = Engine::create(o);
  const int V = eng->config().vocab_size;
  std::vector<Request> reqs;
  std::vector<std::shared_ptr<RequestHandle>> hs;
  std::vector<std::vector<int>> got(8);
  for (int i = 0; i < 8; ++i) {
    reqs.push_back(greedy(random_prompt(rng, 100 + int(rng() % 200), V), 30));
    reqs.back().priority = i < 4 ? 1 : 0;
    hs.push_back(eng->submit(reqs.back()));
    if (i == 3) {  // the low-priority ones are running
      auto ev = hs[0]->next(std::chrono::seconds(30));
      ASSERT_TRUE(ev.has_value());
      got[0] = ev->token_ids;
    }
  }
  for (size_t i = 0; i < hs.size(); ++i) {
    std::vector<int> rest = collect(*hs[i])[0].ids;
    got[i].insert(got[i].end(), rest.begin(), rest.end());
  }
  EngineMetrics m = eng->metrics();
  EXPECT_GT(m.preemptions_total, 0u);
  EXPECT_EQ(m.free_blocks, m.total_blocks);
  // vLLM's phase times, one per request, preempted ones too (from their first scheduling).
  EXPECT_EQ(m.prefill.count, 8u);
  EXPECT_EQ(m.decode.count, 8u);
  EXPECT_EQ(m.inference.count, 8u);
  EXPECT_NEAR(m.inference.sum, m.prefill.sum + m.decode.sum, 1e-6 * (1 + m.inference.sum));
  EXPECT_EQ(m.free_slots, m.total_slots);
  auto solo = Engine::create(engine_opts(1));
  for (size_t i = 0; i < reqs.size(); ++i)
    EXPECT_EQ(collect(*solo->submit(reqs[i]))[0].ids, got[i]) << i;
}

TEST(Engine, SeedReproducibleAndNSamplesShareThePrefill) {
  auto eng = Engine::create(engine_opts(8));
  std::mt19937 rng(9);
  Request r;
  r.prompt_ids = random_prompt(rng, 70, eng->config().vocab_size);
  r.max_tokens = 12;
  r.ignore_eos = true;
  r.sampling.temperature = 1.0f;
  r.sampling.seed = 1234;
  r.seed_given = true;
  auto a = collect(*eng->submit(r));
  auto b = collect(*eng->submit(r));
  EXPECT_EQ(a[0].ids, b[0].ids);
  r.n = 3;
  auto h = eng->submit(r);
  auto c = collect(*h);
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(c[0].ids, a[0].ids);  // sample 0 of n equals the n = 1 request with the same seed
  EXPECT_NE(c[1].ids, c[0].ids);
  for (auto& [i, o] : c) EXPECT_EQ(o.ids.size(), 12u);
  Usage u = h->usage();
  EXPECT_EQ(u.prompt_tokens, 70);
  EXPECT_EQ(u.completion_tokens, 36);
  EngineMetrics m = eng->metrics();
  EXPECT_EQ(m.free_blocks, m.total_blocks);
}

// vLLM's per-request phases and tokens per step: an n = 2 request of a 100-token prompt (one
// prefill step, the budget is 256) and 8 tokens a sample: the prompt once, then 7 steps of 2
// decode inputs (the sibling forks from the leader's prefill row). Each sample's inference time
// is its prefill plus its decode time.
TEST(Engine, PhaseTimesAndStepTokensFollowVllm) {
  auto eng = Engine::create(engine_opts(4));
  std::mt19937 rng(29);
  Request r = greedy(random_prompt(rng, 100, eng->config().vocab_size), 8);
  r.n = 2;
  auto c = collect(*eng->submit(r));
  ASSERT_EQ(c.size(), 2u);
  EngineMetrics m = eng->metrics();
  EXPECT_EQ(m.iteration_tokens.count, 8u);
  EXPECT_EQ(m.iteration_tokens.sum, 100.0 + 2 * 7);
  EXPECT_EQ(m.iteration_tokens.counts[5], 1u);  // the prefill step: (64, 128]
  EXPECT_EQ(m.iteration_tokens.counts[1], 7u);  // the decode steps: (1, 8]
  EXPECT_EQ(m.prefill.count, 2u);
  EXPECT_EQ(m.decode.count, 2u);
  EXPECT_EQ(m.inference.count, 2u);
  EXPECT_GT(m.decode.sum, 0.0);
  EXPECT_NEAR(m.inference.sum, m.prefill.sum + m.decode.sum, 1e-6 * (1 + m.inference.sum));
  EXPECT_EQ(m.block_size, kBlockSize);
  EXPECT_EQ(m.cache_dtype, "auto");
  EXPECT_TRUE(m.prefix_caching);
}

TEST(Engine, StopStringEndsTheTextBeforeIt) {
  auto eng = Engine::create(engine_opts(2));
  ASSERT_NE(eng->tokenizer(), nullptr);
  std::mt19937 rng(17);
  Request r = greedy(random_prompt(rng, 20, eng->config().vocab_size), 40);
  auto full = collect(*eng->submit(r))[0];
  ASSERT_GE(full.text.size(), 12u);
  // A stop string from the middle of the greedy text (ASCII-safe cut).
  size_t at = full.text.size() / 2;
  while (at < full.text.size() && (static_cast<unsigned char>(full.text[at]) & 0xC0) == 0x80) ++at;
  std::string stop = full.text.substr(at, 2);
  while ((static_cast<unsigned char>(stop.back()) & 0x80) != 0 && stop.size() < 6 && at + stop.size() < full.text.size())
    stop = full.text.substr(at, stop.size() + 1);
  size_t first = full.text.find(stop);
  r.stop = {stop};
  auto cut = collect(*eng->submit(r))[0];
  EXPECT_EQ(cut.finish, FinishReason::kStop);
  EXPECT_EQ(cut.stop_reason, stop);
  EXPECT_EQ(cut.text, full.text.substr(0, first));
  r.include_stop_str_in_output = true;
  EXPECT_EQ(collect(*eng->submit(r))[0].text, full.text.substr(0, first) + stop);
}

// min_tokens (vLLM): EOS and stop ids cannot be drawn, and stop strings do not match, before
// that many tokens. EOS is made the greedy choice with a +100 bias, so it comes right after.
TEST(Engine, MinTokensHoldsBackEosAndStops) {
  auto eng = Engine::create(engine_opts(2));
  ASSERT_FALSE(eng->config().eos_token_ids.empty());
  const int eos = eng->config().eos_token_ids[0];
  std::mt19937 rng(23);
  Request r = greedy(random_prompt(rng, 12, eng->config().vocab_size), 20);
  r.ignore_eos = false;
  r.sampling.logit_bias = {{eos, 100.f}};
  auto quick = collect(*eng->submit(r))[0];
  ASSERT_EQ(quick.ids, std::vector<int>{eos});
  EXPECT_EQ(quick.finish, FinishReason::kStop);
  r.min_tokens = 5;
  auto held = collect(*eng->submit(r))[0];
  ASSERT_EQ(held.ids.size(), 6u);
  for (int i = 0; i < 5; ++i) EXPECT_NE(held.ids[size_t(i)], eos) << "token " << i;
  EXPECT_EQ(held.ids[5], eos);
  EXPECT_EQ(held.finish, FinishReason::kStop);
  // A stop token id, likewise.
  const int stop_id = 77;
  r = greedy(random_prompt(rng, 12, eng->config().vocab_size), 20);
  r.sampling.logit_bias = {{stop_id, 100.f}};
  r.stop_token_ids = {stop_id};
  r.min_tokens = 3;
  auto stop_held = collect(*eng->submit(r))[0];
  ASSERT_EQ(stop_held.ids.size(), 4u);
  EXPECT_EQ(stop_held.ids[3], stop_id);
  EXPECT_EQ(stop_held.finish, FinishReason::kStop);
  // A stop string from the first tokens' text matches only from min_tokens on.
  r = greedy(random_prompt(rng, 20, eng->config().vocab_size), 30);
  auto full = collect(*eng->submit(r))[0];
  ASSERT_EQ(full.ids.size(), 30u);
  size_t c = 0;  // the first ASCII character of the text
  while (c < full.text.size() && (static_cast<unsigned char>(full.text[c]) & 0x80) != 0) ++c;
  ASSERT_LT(c, full.text.size()) << "no ASCII in the greedy text";
  r.stop = {full.text.substr(c, 1)};
  auto early = collect(*eng->submit(r))[0];
  ASSERT_LT(early.ids.size(), 15u) << "the stop string should end the plain request early";
  EXPECT_EQ(early.finish, FinishReason::kStop);
  r.min_tokens = 15;
  auto late = collect(*eng->submit(r))[0];
  ASSERT_GE(late.ids.size(), 15u);
  EXPECT_TRUE(std::equal(late.ids.begin(), late.ids.end(), full.ids.begin()));
  // Refused: negative, or more than max_tokens.
  r.min_tokens = 31;
  r.max_tokens = 30;
  EXPECT_THROW(eng->submit(r), Error);
  r.min_tokens = -1;
  EXPECT_THROW(eng->submit(r), Error);
}

// JSON mode (response_format json_object): every token keeps the text a prefix of a JSON object,
// sampled or greedy, and the object ends with EOS. The tiny model writes noise, so the last case
// steers it with logit biases toward "{" and "}": the only completion is then "{}" and EOS.
TEST(Engine, JsonModeKeepsTheTextAJsonObject) {
  auto eng = Engine::create(engine_opts(4));
  const Tokenizer* tok = eng->tokenizer();
  ASSERT_NE(tok, nullptr);
  const int eos = eng->config().eos_token_ids.at(0);
  std::mt19937 rng(31);
  Request r = greedy(random_prompt(rng, 16, eng->config().vocab_size), 60);
  r.ignore_eos = false;
  r.response_format = ResponseFormat::kJsonObject;
  auto check = [&](const Output& o) {
    JsonMatcher m;
    for (size_t i = 0; i < o.ids.size(); ++i) {
      const int id = o.ids[i];
      if (m.complete()) {
        EXPECT_EQ(id, eos) << "after the object";
        EXPECT_EQ(i + 1, o.ids.size());
        break;
      }
      ASSERT_FALSE(tok->is_special(id)) << "token " << i;
      ASSERT_TRUE(m.step(tok->token_bytes(id))) << "token " << i << " breaks the JSON: " << o.text;
    }
    if (o.finish == FinishReason::kStop) {
      EXPECT_TRUE(m.complete());
      EXPECT_TRUE(nlohmann::json::parse(o.text).is_object()) << o.text;
    } else {
      EXPECT_EQ(o.finish, FinishReason::kLength);
      EXPECT_EQ(o.ids.size(), 60u);
    }
  };
  check(collect(*eng->submit(r))[0]);
  r.sampling.temperature = 1.f;
  r.sampling.seed = 5;
  r.seed_given = true;
  r.n = 3;
  for (auto& [i, o] : collect(*eng->submit(r))) check(o);
  // Steered to "{}": EOS is the only token allowed after it.
  const std::vector<int> open = tok->encode("{", false), close = tok->encode("}", false);
  ASSERT_EQ(open.size(), 1u);
  ASSERT_EQ(close.size(), 1u);
  r = greedy(random_prompt(rng, 16, eng->config().vocab_size), 20);
  r.ignore_eos = false;
  r.response_format = ResponseFormat::kJsonObject;
  r.sampling.logit_bias = {{open[0], 100.f}, {close[0], 100.f}};
  auto braces = collect(*eng->submit(r))[0];
  EXPECT_EQ(braces.ids, (std::vector<int>{open[0], close[0], eos}));
  EXPECT_EQ(braces.text, "{}");
  EXPECT_EQ(braces.finish, FinishReason::kStop);
  check(braces);
  // The object ends with EOS: requests that ignore or hold back EOS are refused.
  r.ignore_eos = true;
  EXPECT_THROW(eng->submit(r), Error);
  r.ignore_eos = false;
  r.min_tokens = 2;
  EXPECT_THROW(eng->submit(r), Error);
}

// The token behind a stop, as vLLM's stop_reason: the config's eos (Kimi's <|im_end|>, a
// generation-config eos in vLLM) and a stop_token_ids entry give their id, the tokenizer's
// eos_token ([EOS]) none; a stop string gives the string.
TEST(Engine, StopTokenNamedAsVllmStopReason) {
  auto eng = Engine::create(engine_opts(2));
  const Tokenizer* tok = eng->tokenizer();
  ASSERT_NE(tok, nullptr);
  ASSERT_FALSE(eng->config().eos_token_ids.empty());
  const int config_eos = eng->config().eos_token_ids[0], tokenizer_eos = tok->eos_id();
  ASSERT_GE(tokenizer_eos, 0);
  ASSERT_NE(config_eos, tokenizer_eos) << "the test model mirrors Kimi: <|im_end|> and [EOS]";
  std::mt19937 rng(29);
  Request r = greedy(random_prompt(rng, 12, eng->config().vocab_size), 20);
  r.ignore_eos = false;
  auto ending_on = [&](int id, std::vector<int> stop_ids) {
    r.sampling.logit_bias = {{id, 100.f}};
    r.stop_token_ids = std::move(stop_ids);
    Output o = collect(*eng->submit(r))[0];
    EXPECT_EQ(o.ids, std::vector<int>{id});
    EXPECT_EQ(o.finish, FinishReason::kStop);
    EXPECT_TRUE(o.stop_reason.empty());
    return o.stop_token;
  };
  EXPECT_EQ(ending_on(config_eos, {}), config_eos);
  EXPECT_EQ(ending_on(tokenizer_eos, {}), -1);
  EXPECT_EQ(ending_on(tokenizer_eos, {tokenizer_eos}), tokenizer_eos);
  EXPECT_EQ(ending_on(77, {77}), 77);
}

// Structured outputs (response_format json_schema): a schema whose documents are bounded in
// length (no free strings; whitespace runs and integers are capped by the matcher) so that every
// generation, greedy or sampled, must end with a whole document and EOS within max_tokens; the
// text parses and has the schema's keys, in its order, with values of its types.
TEST(Engine, JsonSchemaOutputParsesAndValidates) {
  auto eng = Engine::create(engine_opts(4));
  const Tokenizer* tok = eng->tokenizer();
  ASSERT_NE(tok, nullptr);
  std::vector<int> eos = eng->config().eos_token_ids;  // and the tokenizer's stop ids
  for (int id : tok->stop_ids()) eos.push_back(id);
  SchemaError err;
  auto schema = compile_json_schema(nlohmann::ordered_json::parse(R"({
      "type": "object",
      "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]},
                     "n": {"type": "integer"}, "note": {"type": "null"},
                     "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}},
      "required": ["ok", "color", "n", "flags"], "additionalProperties": false})"), &err);
  ASSERT_NE(schema, nullptr) << err.message;
  std::mt19937 rng(37);
  Request r = greedy(random_prompt(rng, 16, eng->config().vocab_size), 1500);
  r.ignore_eos = false;
  r.response_format = ResponseFormat::kJsonSchema;
  r.json_schema = schema;
  auto check = [&](const Output& o) {
    ASSERT_EQ(o.finish, FinishReason::kStop) << o.text;
    ASSERT_NE(std::find(eos.begin(), eos.end(), o.ids.back()), eos.end()) << "ends with EOS";
    JsonMatcher m(schema);
    for (size_t i = 0; i + 1 < o.ids.size(); ++i)
      ASSERT_TRUE(m.step(tok->token_bytes(o.ids[i]))) << "token " << i << " breaks the schema: " << o.text;
    EXPECT_TRUE(m.complete());
    const auto v = nlohmann::ordered_json::parse(o.text);
    std::vector<std::string> keys;
    for (auto it = v.begin(); it != v.end(); ++it) keys.push_back(it.key());
    const std::vector<std::string> all = {"ok", "color", "n", "note", "flags"};
    std::vector<std::string> want = all;
    if (!v.contains("note")) want.erase(want.begin() + 3);
    EXPECT_EQ(keys, want) << o.text;
    EXPECT_TRUE(v["ok"].is_boolean());
    EXPECT_TRUE(v["color"] == "red" || v["color"] == "green" || v["color"] == "blue") << o.text;
    EXPECT_TRUE(v["n"].is_number_integer()) << o.text;
    if (v.contains("note")) {
      EXPECT_TRUE(v["note"].is_null());
    }
    ASSERT_TRUE(v["flags"].is_array());
    EXPECT_LE(v["flags"].size(), 3u);
    for (const auto& f : v["flags"]) EXPECT_TRUE(f.is_boolean());
  };
  check(collect(*eng->submit(r))[0]);
  r.sampling.temperature = 1.f;
  r.sampling.seed = 9;
  r.seed_given = true;
  r.n = 3;
  for (auto& [i, o] : collect(*eng->submit(r))) check(o);
  // A json_schema request needs its schema, and a schema needs the json_schema format.
  r.json_schema = nullptr;
  EXPECT_THROW(eng->submit(r), Error);
  r.json_schema = schema;
  r.response_format = ResponseFormat::kJsonObject;
  EXPECT_THROW(eng->submit(r), Error);
  r.response_format = ResponseFormat::kJsonSchema;
  r.ignore_eos = true;
  EXPECT_THROW(eng->submit(r), Error);
}

// tool_choice required / named (Request::tool_calls): whatever the model prefers, the answer is
// whole Kimi tool calls of the declared functions, numbered on from the grammar's first index,
// with arguments valid for their schemas, then EOS, and Kimi's parser reads them. The schemas'
// documents are bounded, so greedy and sampled generations must end within max_tokens. With
// parallel calls a bias toward <|tool_call_begin|> makes the model call again and again.
TEST(Engine, ForcedToolCallsParseIntoValidArguments) {
  auto eng = Engine::create(engine_opts(4));
  const Tokenizer* tok = eng->tokenizer();
  ASSERT_NE(tok, nullptr);
  const std::optional<ToolCallMarkers> markers = ToolCallMarkers::of(*tok);
  ASSERT_TRUE(markers.has_value());
  std::vector<int> eos = eng->config().eos_token_ids;
  for (int id : tok->stop_ids()) eos.push_back(id);
  auto compile = [](const char* text) {
    SchemaError err;
    auto s = compile_json_schema(nlohmann::ordered_json::parse(text), &err);
    EXPECT_NE(s, nullptr) << err.message;
    return s;
  };
  const std::vector<ToolCallGrammar::Function> fns = {
      {"set_unit", compile(R"({"type": "object", "properties": {"unit": {"enum": ["c", "f"]},
                              "ok": {"type": "boolean"}}, "required": ["unit", "ok"],
                              "additionalProperties": false})")},
      {"count", compile(R"({"type": "object", "properties": {"n": {"type": "integer"},
                           "tags": {"type": "array", "items": {"enum": [1, 2, 3]},
                           "maxItems": 2}}, "required": ["n"], "additionalProperties": false})")}};
  auto valid = [](const ToolCall& c) {
    const auto v = nlohmann::json::parse(c.arguments);
    if (c.name == "set_unit")
      return v.size() == 2 && (v["unit"] == "c" || v["unit"] == "f") && v["ok"].is_boolean();
    if (v.contains("tags")) {
      if (!v["tags"].is_array() || v["tags"].size() > 2) return false;
      for (const auto& t : v["tags"])
        if (t != 1 && t != 2 && t != 3) return false;
    }
    return c.name == "count" && v["n"].is_number_integer() && v.size() <= 2;
  };
  const std::string section = str(kToolCallsSectionBegin, kToolCallBegin, "functions.");
  std::mt19937 rng(43);
  // Runs r (its prompt ending with the forced start) and returns the calls of each sample, every
  // token checked against a fresh matcher.
  auto run = [&](Request r, const std::shared_ptr<const ToolCallGrammar>& g,
                 const std::string& forced) {
    r.prompt_ids = random_prompt(rng, 16, eng->config().vocab_size);
    for (int id : tok->encode(forced, /*allow_special=*/true)) r.prompt_ids.push_back(id);
    r.ignore_eos = false;
    r.skip_special_tokens = false;  // the parser reads the markers
    r.tool_calls = g;
    std::vector<std::pair<Output, std::vector<ToolCall>>> got;
    for (auto& [i, o] : collect(*eng->submit(r))) {
      ToolCallMatcher m(g, *markers);
      const bool stopped = o.finish == FinishReason::kStop;
      for (size_t k = 0; k + (stopped ? 1 : 0) < o.ids.size(); ++k) {
        const int id = o.ids[k];
        EXPECT_TRUE(tok->is_special(id) ? m.step_marker(id) : m.step(tok->token_bytes(id)))
            << "token " << k << " breaks the call: " << o.text;
      }
      if (stopped) {
        EXPECT_EQ(m.phase(), ToolCallMatcher::Phase::kEnd) << o.text;
        EXPECT_NE(std::find(eos.begin(), eos.end(), o.ids.back()), eos.end()) << "ends with EOS";
      }
      // A generation cut by max_tokens: its completed calls.
      std::string text = forced + o.text;
      if (!stopped)
        text = text.substr(0, text.rfind(kToolCallEnd)) + str(kToolCallEnd, kToolCallsSectionEnd);
      ParsedOutput parsed = parse_tool_calls(text);
      EXPECT_EQ(parsed.content, "") << o.text;
      for (const ToolCall& c : parsed.tool_calls)
        EXPECT_TRUE(valid(c)) << c.name << " " << c.arguments;
      got.emplace_back(o, std::move(parsed.tool_calls));
    }
    return got;
  };
  Request greedy_r = greedy({}, 400);
  Request sampled_r = greedy_r;
  sampled_r.sampling.temperature = 1.f;
  sampled_r.sampling.seed = 13;
  sampled_r.seed_given = true;
  sampled_r.n = 3;

  // Named: one call of that function; the prompt holds its id.
  auto named = std::make_shared<const ToolCallGrammar>(
      std::vector<ToolCallGrammar::Function>{fns[1]}, false, true, 2);
  const std::string named_start = str(section, "count:2", kToolCallArgumentBegin);
  for (const Request& r : {greedy_r, sampled_r})
    for (auto& [o, calls] : run(r, named, named_start)) {
      EXPECT_EQ(o.finish, FinishReason::kStop) << o.text;
      ASSERT_EQ(calls.size(), 1u) << o.text;
      EXPECT_EQ(calls[0].id, "functions.count:2");
    }
  // Required, one call: a declared function of the model's choice.
  auto one = std::make_shared<const ToolCallGrammar>(fns, true, false, 0);
  for (const Request& r : {greedy_r, sampled_r})
    for (auto& [o, calls] : run(r, one, section)) {
      EXPECT_EQ(o.finish, FinishReason::kStop) << o.text;
      ASSERT_EQ(calls.size(), 1u) << o.text;
      EXPECT_EQ(calls[0].id, "functions." + calls[0].name + ":0");
    }
  // Required, parallel, steered to call again after every call: ids numbered one on.
  auto many = std::make_shared<const ToolCallGrammar>(fns, true, true, 5);
  Request again = greedy({}, 1500);
  again.sampling.logit_bias = {{markers->call_begin, 100.f}};
  for (auto& [o, calls] : run(again, many, section)) {
    EXPECT_EQ(o.finish, FinishReason::kLength);
    ASSERT_GE(calls.size(), 3u) << o.text;
    for (size_t k = 0; k < calls.size(); ++k)
      EXPECT_EQ(calls[k].id, str("functions.", calls[k].name, ":", 5 + k));
  }

  // The calls end with EOS and are the whole answer: these are refused.
  Request r = greedy(random_prompt(rng, 8, eng->config().vocab_size), 10);
  r.tool_calls = one;
  r.ignore_eos = true;
  EXPECT_THROW(eng->submit(r), Error);
  r.ignore_eos = false;
  r.min_tokens = 2;
  EXPECT_THROW(eng->submit(r), Error);
  r.min_tokens = 0;
  r.response_format = ResponseFormat::kJsonObject;
  EXPECT_THROW(eng->submit(r), Error);
}

// Prefix caching: each turn of a conversation extends the previous prompt and answer; it starts
// from the state and blocks the previous request left when it finished (every computed token:
// the prompt and the answer but its last token, which was drawn and never fed), reports them as
// cached tokens, and draws what an engine without the cache draws. Turn lengths leave partial
// last blocks (copied, not shared).
TEST(Engine, PrefixCacheServesMultiTurnPrompts) {
  auto cached = Engine::create(engine_opts(4));
  auto plain = engine_without_prefix_cache(4);
  std::mt19937 rng(41);
  const int V = cached->config().vocab_size;
  std::vector<int> prompt = random_prompt(rng, 100, V);
  uint64_t queried = 0, hit = 0;
  int expect_cached = 0;  // the previous turn's prompt and answer but its last token
  int last_prompt = 0, last_cached = 0;  // the last turn's
  for (int turn = 0; turn < 4; ++turn) {
    Request r = greedy(prompt, 12);
    auto h = cached->submit(r);
    auto got = collect(*h)[0];
    auto want = collect(*plain->submit(r))[0];
    EXPECT_EQ(got.ids, want.ids) << "turn " << turn;
    ASSERT_FALSE(got.ids.empty());
    EXPECT_EQ(h->usage().cached_tokens, expect_cached) << "turn " << turn;
    queried += prompt.size();
    hit += uint64_t(expect_cached);
    last_prompt = int(prompt.size());
    last_cached = expect_cached;
    prompt.insert(prompt.end(), got.ids.begin(), got.ids.end());  // the answer, then a new message
    expect_cached = int(prompt.size()) - 1;
    const std::vector<int> more = random_prompt(rng, 37 + 20 * turn, V);
    prompt.insert(prompt.end(), more.begin(), more.end());
  }
  EngineMetrics m = cached->metrics();
  EXPECT_EQ(m.prefix_cache_queries_total, queried);
  EXPECT_EQ(m.prefix_cache_hits_total, hit);
  EXPECT_EQ(m.free_blocks, m.total_blocks);  // cached sequences' blocks count as free
  EXPECT_EQ(plain->metrics().prefix_cache_hits_total, 0u);
  // The last turn's prompt again: its own entry cannot serve it (its last token's logits are
  // needed), the turn before's finished request can; the last request's prompt plus a different
  // answer starts from that prompt's entry (a regenerated answer); a prompt sharing only part
  // of the first turn's is no hit (entries are whole sequences), but it leaves an entry at the
  // block-aligned head it shares with the prompts before it, which serves the next such prompt.
  std::vector<int> last(prompt.begin(), prompt.begin() + last_prompt);
  auto again = cached->submit(greedy(last, 4));
  collect(*again);
  EXPECT_EQ(again->usage().cached_tokens, last_cached);
  std::vector<int> regen = last;
  regen.push_back(prompt[size_t(last_prompt)] + 1);  // not the answer's first token
  regen.push_back(7);
  auto other_answer = cached->submit(greedy(regen, 4));
  collect(*other_answer);
  EXPECT_EQ(other_answer->usage().cached_tokens, last_prompt);
  std::vector<int> partial(prompt.begin(), prompt.begin() + 80);
  partial.push_back(5);
  auto other = cached->submit(greedy(partial, 4));
  collect(*other);
  EXPECT_EQ(other->usage().cached_tokens, 0);
  partial.back() = 6;
  partial.push_back(9);
  auto next = cached->submit(greedy(partial, 4));
  EXPECT_EQ(collect(*next)[0].ids, collect(*plain->submit(greedy(partial, 4)))[0].ids);
  EXPECT_EQ(next->usage().cached_tokens, 64);
}

// Prompt logprobs (vLLM's prompt_logprobs, the completions echo with logprobs): one event before
// the first token with the logprob, rank and top k of every prompt token from the second, as the
// model's log-softmax over a whole-prompt step gives them; a prompt longer than one chunk of them
// (256) included. Such a prompt is computed whole, so it takes nothing from the prefix cache and
// gives the same values again; its tokens are the ones a request without them draws.
TEST(Engine, PromptLogprobsPrecedeTheFirstToken) {
  auto eng = Engine::create(engine_opts(2, 0, 512));
  const int V = eng->config().vocab_size;
  std::mt19937 rng(53);
  const std::vector<int> prompt = random_prompt(rng, 300, V);
  // The reference: one step over the whole prompt with every row's logits.
  ModelOptions mo;
  mo.cache.num_slots = 1;
  mo.cache.num_blocks = 5;
  auto model = load_model(kModel, mo);
  model->reset_slot(0);
  Batch b;
  b.add(prompt, int(prompt.size()), 0, {0, 1, 2, 3, 4});
  b.all_logits = true;
  std::vector<float> logits;
  model->forward(b, logits);
  Request r = greedy(prompt, 3);
  r.prompt_logprobs = 2;
  std::vector<TokenLogprob> first;
  for (int round = 0; round < 2; ++round) {
    auto h = eng->submit(r);
    std::optional<std::vector<TokenLogprob>> lps;
    std::vector<int> ids;
    while (auto ev = h->next(std::chrono::seconds(60))) {
      if (ev->prompt_logprobs) {
        EXPECT_FALSE(lps.has_value()) << "sent twice";
        EXPECT_TRUE(ids.empty()) << "after a token";
        EXPECT_EQ(ev->index, 0);
        EXPECT_TRUE(ev->token_ids.empty());
        lps = std::move(ev->prompt_logprobs);
      }
      ids.insert(ids.end(), ev->token_ids.begin(), ev->token_ids.end());
    }
    ASSERT_TRUE(lps.has_value());
    ASSERT_EQ(lps->size(), prompt.size() - 1);
    EXPECT_EQ(h->usage().cached_tokens, 0) << "round " << round;
    double worst = 0;
    for (size_t p = 1; p < prompt.size(); ++p) {
      const TokenLogprob& t = (*lps)[p - 1];
      const float* row = logits.data() + (p - 1) * size_t(V);
      const float mx = *std::max_element(row, row + V);
      double sum = 0;
      for (int i = 0; i < V; ++i) sum += std::exp(double(row[i] - mx));
      const double lse = mx + std::log(sum);
      EXPECT_EQ(t.id, prompt[p]);
      worst = std::max(worst, std::abs(double(t.logprob) - (row[prompt[p]] - lse)));
      int rank = 1;
      for (int i = 0; i < V; ++i) rank += row[i] > row[prompt[p]];
      EXPECT_EQ(t.rank, rank) << "position " << p;
      ASSERT_EQ(t.top.size(), 2u);
      EXPECT_GE(t.top[0].second, t.top[1].second);
      EXPECT_GE(t.top[0].second, t.logprob);
      if (t.rank == 1) {
        EXPECT_EQ(t.top[0].first, t.id);
      }
    }
    EXPECT_LE(worst, 1e-3) << "round " << round;
    if (round == 0) {
      first = *lps;
    } else {
      for (size_t i = 0; i < first.size(); ++i) EXPECT_EQ(first[i].logprob, (*lps)[i].logprob);
    }
    EXPECT_EQ(ids, collect(*eng->submit(greedy(prompt, 3)))[0].ids);
  }
  Request too_many = r;
  too_many.prompt_logprobs = 21;
  EXPECT_THROW(eng->submit(too_many), Error);
}

// Raw prompts that share only a head (a few-shot preamble): the first is no hit, the second
// shares a block-aligned head with it, so its prefill stops there once and leaves an entry; from
// the third on they start from it and draw what an engine without the cache draws. The same
// prompt sent again gets its longest block-aligned head from the second time on.
TEST(Engine, PrefixCacheSharesHeadsOfRawPrompts) {
  auto cached = Engine::create(engine_opts(4));
  auto plain = engine_without_prefix_cache(4);
  std::mt19937 rng(47);
  const int V = cached->config().vocab_size;
  const std::vector<int> head = random_prompt(rng, 150, V);
  const int expect[] = {0, 0, 128, 128};
  for (int i = 0; i < 4; ++i) {
    Request r = greedy(head, 6);
    const std::vector<int> tail = random_prompt(rng, 20 + 7 * i, V);
    r.prompt_ids.insert(r.prompt_ids.end(), tail.begin(), tail.end());
    auto h = cached->submit(r);
    EXPECT_EQ(collect(*h)[0].ids, collect(*plain->submit(r))[0].ids) << "request " << i;
    EXPECT_EQ(h->usage().cached_tokens, expect[i]) << "request " << i;
  }
  const std::vector<int> same = random_prompt(rng, 140, V);
  const int expect_same[] = {0, 0, 128};
  for (int i = 0; i < 3; ++i) {
    auto h = cached->submit(greedy(same, 4));
    EXPECT_EQ(collect(*h)[0].ids, collect(*plain->submit(greedy(same, 4)))[0].ids) << "again " << i;
    EXPECT_EQ(h->usage().cached_tokens, expect_same[i]) << "again " << i;
  }
}

// A cache point (a chat's system prompt): the first request's prefill stops there once and
// leaves an entry, so a second request sharing only that prefix starts from it and draws what an
// engine without the cache draws. A point shorter than a block makes no entry; a point past the
// prompt is refused.
TEST(Engine, PrefixCacheSharesACachePoint) {
  auto cached = Engine::create(engine_opts(4));
  auto plain = engine_without_prefix_cache(4);
  std::mt19937 rng(43);
  const int V = cached->config().vocab_size;
  const std::vector<int> system = random_prompt(rng, 100, V);
  auto with_system = [&](int user_len, int point) {
    Request r = greedy(system, 8);
    const std::vector<int> user = random_prompt(rng, user_len, V);
    r.prompt_ids.insert(r.prompt_ids.end(), user.begin(), user.end());
    r.cache_point = point;
    return r;
  };
  const int expect[] = {0, 100, 100};
  for (int i = 0; i < 3; ++i) {
    Request r = with_system(30 + 15 * i, 100);
    auto h = cached->submit(r);
    auto got = collect(*h)[0];
    EXPECT_EQ(got.ids, collect(*plain->submit(r))[0].ids) << "request " << i;
    EXPECT_EQ(h->usage().cached_tokens, expect[i]) << "request " << i;
  }
  EXPECT_EQ(cached->metrics().prefix_cache_hits_total, 200u);
  // A point shorter than a block: no entry, so the next such request is no hit either.
  const std::vector<int> short_system(system.begin(), system.begin() + 40);
  for (int i = 0; i < 2; ++i) {
    Request r = greedy(short_system, 4);
    const std::vector<int> user = random_prompt(rng, 50, V);
    r.prompt_ids.insert(r.prompt_ids.end(), user.begin(), user.end());
    r.prompt_ids[0] = (r.prompt_ids[0] + 1) % (V - 256);  // not the 100-token entry's start
    r.cache_point = 40;
    auto h = cached->submit(r);
    collect(*h);
    EXPECT_EQ(h->usage().cached_tokens, 0) << "short point, request " << i;
  }
  Request bad = with_system(10, 110);
  try {
    cached->submit(bad);
    FAIL() << "a cache point at the prompt's end was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cache_point"), std::string::npos) << e.what();
  }
}

TEST(Engine, RejectsBadRequestsWithAMessage) {
  auto eng = Engine::create(engine_opts(2));
  Request r = greedy(std::vector<int>(5000, 1), 10);
  try {
    eng->submit(r);
    FAIL() << "over-long prompt accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("maximum context length"), std::string::npos) << e.what();
  }
  r = greedy({1, 2}, 10);
  r.sampling.top_p = 2;
  EXPECT_THROW(eng->submit(r), Error);
  r = greedy({1, 99999}, 10);
  EXPECT_THROW(eng->submit(r), Error);
  r = greedy({}, 10);
  EXPECT_THROW(eng->submit(r), Error);
  r = greedy({1}, 10);
  r.n = 1000;
  EXPECT_THROW(eng->submit(r), Error);
}

}  // namespace
}  // namespace kimi
