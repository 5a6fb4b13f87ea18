// MLA CPU references: the absorbed path (the product path) against the expanded one on prefill,
// decode and mixed batches over scattered paged caches; cache_write placement; a tiny case against
// naive softmax attention computed here in double precision.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "core/check.h"
#include "model/config.h"
#include "op_test_util.h"
#include "ops/cpu/mla.h"

namespace kimi::cpu {
namespace {

using test::compare;
constexpr int kRow = kMlaCacheDim;
constexpr int kBlk = kMlaBlockSize;
const float kScale = 1.f / std::sqrt(float(kMlaQkDim));

// Absorbed vs expanded differ by fp32 summation order only (q_abs · ĉ vs q_nope · W_UK ĉ).
constexpr double kRelTol = 3e-6;
constexpr double kAbsTol = 1e-5;  // outputs reach |v| ~ 5 where one position dominates

// A step of a paged batch: per sequence its context length after the step and its new tokens.
struct Batch {
  std::vector<int> cu = {0}, ctx, tables;
  int max_blocks = 0, num_blocks = 0, H = 0;
  std::vector<float> cache, latent, q, kv_b;
};

// Blocks are handed out from a shuffled pool with spare blocks, so tables are scattered and
// non-contiguous; unused table entries are −1. The cached prefix is random; the new tokens are
// written with mla_cache_write.
Batch make_batch(const std::vector<std::pair<int, int>>& ctx_new, int H, uint32_t seed) {
  Batch b;
  b.H = H;
  for (auto [ctx, n] : ctx_new) {
    b.ctx.push_back(ctx);
    b.cu.push_back(b.cu.back() + n);
    b.max_blocks = std::max(b.max_blocks, (ctx + kBlk - 1) / kBlk);
  }
  b.num_blocks = 0;
  for (int c : b.ctx) b.num_blocks += (c + kBlk - 1) / kBlk;
  b.num_blocks += 3;
  std::vector<int> pool(b.num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937(seed));
  b.tables.assign(ctx_new.size() * b.max_blocks, -1);
  size_t next = 0;
  for (size_t s = 0; s < ctx_new.size(); ++s)
    for (int i = 0; i < (b.ctx[s] + kBlk - 1) / kBlk; ++i)
      b.tables[s * b.max_blocks + i] = pool[next++];
  b.cache = test::randn(size_t(b.num_blocks) * kBlk * kRow, seed + 1);
  const int T = b.cu.back();
  b.latent = test::randn(size_t(T) * kRow, seed + 2);
  b.q = test::randn(size_t(T) * H * kMlaQkDim, seed + 3, 1.5f);
  b.kv_b = test::randn(size_t(H) * 256 * kMlaLatentDim, seed + 4, 1.f / std::sqrt(512.f));
  MlaCacheWriteParams w;
  w.num_seqs = int(b.ctx.size());
  w.cu_seqlens = b.cu.data();
  w.context_lens = b.ctx.data();
  w.block_tables = b.tables.data();
  w.max_blocks_per_seq = b.max_blocks;
  w.num_blocks = b.num_blocks;
  w.latent = b.latent.data();
  w.cache = b.cache.data();
  mla_cache_write(w);
  return b;
}

std::vector<float> run_attn(void (*op)(const MlaAttnParams&), const Batch& b) {
  std::vector<float> out(size_t(b.cu.back()) * b.H * kMlaVDim, NAN);
  MlaAttnParams p;
  p.num_seqs = int(b.ctx.size());
  p.cu_seqlens = b.cu.data();
  p.context_lens = b.ctx.data();
  p.block_tables = b.tables.data();
  p.max_blocks_per_seq = b.max_blocks;
  p.num_blocks = b.num_blocks;
  p.cache = b.cache.data();
  p.num_heads = b.H;
  p.q = b.q.data();
  p.kv_b = b.kv_b.data();
  p.scale = kScale;
  p.out = out.data();
  op(p);
  return out;
}

void expect_absorbed_matches_expanded(const Batch& b, const char* what) {
  const auto ref = run_attn(mla_attention_expanded, b);
  const auto out = run_attn(mla_attention_absorbed, b);
  const auto e = compare(out, ref);
  std::printf("  %-36s rel_l2 %.2e  max_abs %.2e\n", what, e.rel_l2, e.max_abs);
  EXPECT_TRUE(e.finite) << what;
  EXPECT_LE(e.rel_l2, kRelTol) << what;
  EXPECT_LE(e.max_abs, kAbsTol) << what;
  EXPECT_GT(e.ref_norm, 0.0) << what;
}

class MlaLadder : public ::testing::TestWithParam<int> {};

TEST_P(MlaLadder, PrefillAbsorbedMatchesExpanded) {
  const int T = GetParam();
  const Batch b = make_batch({{T, T}}, 3, 10 + T);
  expect_absorbed_matches_expanded(b, ("prefill T=" + std::to_string(T)).c_str());
}

TEST_P(MlaLadder, DecodeAbsorbedMatchesExpanded) {
  const int ctx = GetParam() + 200;
  const Batch b = make_batch({{ctx, 1}}, 3, 20 + ctx);
  expect_absorbed_matches_expanded(b, ("decode context=" + std::to_string(ctx)).c_str());
}

INSTANTIATE_TEST_SUITE_P(Lengths, MlaLadder, ::testing::Values(1, 63, 64, 65, 129));

// Mixed batch: prefill, decode, continued prefill (new tokens after a cached prefix), 12 heads
// (one full group of 8 plus a partial one in the absorbed path).
TEST(Mla, MixedBatchScatteredBlocks) {
  const Batch b = make_batch({{130, 130}, {300, 1}, {65, 1}, {200, 20}, {64, 64}, {1, 1}}, 12, 30);
  expect_absorbed_matches_expanded(b, "mixed batch, H=12");
}

// Tiny case against naive attention in double: keys/values decompressed from the cache rows,
// causal softmax, H = 2, context 70 (two blocks) with 3 new tokens.
TEST(Mla, TinyCaseAgainstDoubleNaive) {
  const int H = 2, ctx = 70, n_new = 3;
  const Batch b = make_batch({{ctx, n_new}}, H, 40);
  const int L = kMlaLatentDim, N = kMlaNopeDim;
  std::vector<double> ref(size_t(n_new) * H * kMlaVDim);
  auto row = [&](int pos) {
    return &b.cache[(size_t(b.tables[pos / kBlk]) * kBlk + pos % kBlk) * kRow];
  };
  for (int i = 0; i < n_new; ++i) {
    for (int h = 0; h < H; ++h) {
      const float* q = &b.q[(size_t(i) * H + h) * kMlaQkDim];
      const float* wuk = &b.kv_b[size_t(h) * 256 * L];
      const float* wuv = wuk + size_t(N) * L;
      const int len = ctx - n_new + i + 1;
      std::vector<double> s(len), o(kMlaVDim, 0.0);
      for (int j = 0; j < len; ++j) {
        const float* c = row(j);
        double acc = 0;
        for (int r = 0; r < N; ++r) {
          double k = 0;
          for (int x = 0; x < L; ++x) k += double(wuk[r * L + x]) * c[x];
          acc += double(q[r]) * k;
        }
        for (int r = 0; r < kMlaRopeDim; ++r) acc += double(q[N + r]) * c[L + r];
        s[j] = acc / std::sqrt(192.0);
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& v : s) sum += (v = std::exp(v - mx));
      for (int j = 0; j < len; ++j) {
        const float* c = row(j);
        for (int r = 0; r < kMlaVDim; ++r) {
          double v = 0;
          for (int x = 0; x < L; ++x) v += double(wuv[r * L + x]) * c[x];
          o[r] += s[j] / sum * v;
        }
      }
      std::copy(o.begin(), o.end(), ref.begin() + (size_t(i) * H + h) * kMlaVDim);
    }
  }
  for (auto op : {mla_attention_absorbed, mla_attention_expanded}) {
    const auto e = compare(run_attn(op, b), ref);
    const char* name = op == mla_attention_absorbed ? "absorbed" : "expanded";
    std::printf("  %-10s vs double naive       rel_l2 %.2e  max_abs %.2e\n", name, e.rel_l2,
                e.max_abs);
    EXPECT_LE(e.rel_l2, 2e-6) << name;
    EXPECT_LE(e.max_abs, 2e-6) << name;
    EXPECT_GT(e.ref_norm, 0.0);
  }
}

// Rows land where the block table says; every other row keeps its sentinel. Two steps: a prefill
// of 70 tokens and a second sequence's decode at position 129, then both append one token.
TEST(Mla, CacheWritePlacesRowsByBlockTable) {
  const int num_blocks = 10, max_blocks = 3;
  std::vector<float> cache(size_t(num_blocks) * kBlk * kRow, -7.f);
  const std::vector<int> tables = {7, 2, -1, 5, 0, 9};
  const auto latent = test::randn(size_t(73) * kRow, 50);
  std::vector<int> written(num_blocks * kBlk, -1);  // cache row -> latent row
  auto step = [&](std::vector<int> cu, std::vector<int> ctx, int latent0) {
    MlaCacheWriteParams p;
    p.num_seqs = 2;
    p.cu_seqlens = cu.data();
    p.context_lens = ctx.data();
    p.block_tables = tables.data();
    p.max_blocks_per_seq = max_blocks;
    p.num_blocks = num_blocks;
    p.latent = latent.data() + size_t(latent0) * kRow;
    p.cache = cache.data();
    mla_cache_write(p);
    for (int s = 0; s < 2; ++s)
      for (int t = cu[s]; t < cu[s + 1]; ++t) {
        const int pos = ctx[s] - (cu[s + 1] - cu[s]) + (t - cu[s]);
        written[tables[s * max_blocks + pos / kBlk] * kBlk + pos % kBlk] = latent0 + t;
      }
  };
  step({0, 70, 71}, {70, 130}, 0);
  step({0, 1, 2}, {71, 131}, 71);
  // The mapping by hand: seq 0 position 0 -> block 7 row 0, position 65 -> block 2 row 1,
  // position 70 (step 2, latent 71) -> block 2 row 6; seq 1 position 129 (latent 70) -> block 9
  // row 1, position 130 (latent 72) -> block 9 row 2.
  EXPECT_EQ(written[7 * kBlk + 0], 0);
  EXPECT_EQ(written[2 * kBlk + 1], 65);
  EXPECT_EQ(written[2 * kBlk + 6], 71);
  EXPECT_EQ(written[9 * kBlk + 1], 70);
  EXPECT_EQ(written[9 * kBlk + 2], 72);
  EXPECT_EQ(std::count_if(written.begin(), written.end(), [](int w) { return w >= 0; }), 73);
  for (int r = 0; r < num_blocks * kBlk; ++r)
    for (int c = 0; c < kRow; ++c) {
      const float want = written[r] < 0 ? -7.f : latent[size_t(written[r]) * kRow + c];
      ASSERT_EQ(cache[size_t(r) * kRow + c], want) << "cache row " << r << " col " << c;
    }
}

TEST(Mla, RejectsBadTables) {
  Batch b = make_batch({{70, 2}}, 2, 60);
  b.tables[1] = b.num_blocks;  // out of range
  EXPECT_THROW(run_attn(mla_attention_absorbed, b), Error);
  b.tables[1] = 0;
  b.ctx[0] = 1;  // fewer cached tokens than new ones
  EXPECT_THROW(run_attn(mla_attention_absorbed, b), Error);
  b.ctx[0] = 200;  // needs more blocks than the table holds
  EXPECT_THROW(run_attn(mla_attention_expanded, b), Error);
}

// e4m3 (the fp8 cache's codes): every finite code round-trips; the grid's values by hand; ties
// round to the even code; overflow saturates to ±448; NaN stays NaN.
TEST(MlaFp8, E4m3CodesAndRounding) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(e4m3_to_float(uint8_t(c))));
      continue;
    }
    EXPECT_EQ(e4m3_from_float(e4m3_to_float(uint8_t(c))), c) << "code " << c;
  }
  EXPECT_EQ(e4m3_to_float(0x7e), 448.f);
  EXPECT_EQ(e4m3_to_float(0x08), 1.f / 64);   // smallest normal 2^-6
  EXPECT_EQ(e4m3_to_float(0x01), 1.f / 512);  // smallest subnormal 2^-9
  EXPECT_EQ(e4m3_to_float(0x38), 1.f);
  EXPECT_EQ(e4m3_to_float(0xb9), -1.125f);
  EXPECT_EQ(e4m3_from_float(1.0625f), 0x38);  // halfway 1 .. 1.125: to the even code (1)
  EXPECT_EQ(e4m3_from_float(1.1875f), 0x3a);  // halfway 1.125 .. 1.25: to 1.25
  EXPECT_EQ(e4m3_from_float(1.07f), 0x39);
  EXPECT_EQ(e4m3_from_float(15.5f), 0x58);       // 15.5 is halfway 15 .. 16: to 16 (carry)
  EXPECT_EQ(e4m3_from_float(3.f / 1024), 0x02);  // 1.5 subnormal steps: to even (2)
  EXPECT_EQ(e4m3_from_float(1e-4f), 0x00);
  EXPECT_EQ(e4m3_from_float(-1e-4f), 0x80);
  EXPECT_EQ(e4m3_from_float(460.f), 0x7e);
  EXPECT_EQ(e4m3_from_float(-1e30f), 0xfe);
  EXPECT_EQ(e4m3_from_float(INFINITY), 0x7e);
  EXPECT_EQ(e4m3_from_float(NAN) & 0x7f, 0x7f);
}

// One scale per 128 values, the smallest power of two that brings the group's largest magnitude
// to <= 448 (so it lands in (224, 448]); the decoded values are within half a step of e4m3
// (relative 2^-4) of the input, or below its normal range (2^-6 · scale, flushed to 0); the
// relative RMS error of a Gaussian row is what 3 mantissa bits give (~2.6% for values spread
// evenly over their binades; 2.8% measured for this row; bound 3.5%). A zero group gets scale 0 and
// decodes to zeros.
TEST(MlaFp8, QuantizeGroupsOf128) {
  auto x = test::randn(kMlaLatentDim, 9);
  for (int i = 128; i < 256; ++i) x[i] *= 1000.f;  // groups of very different magnitudes
  for (int i = 256; i < 384; ++i) x[i] = 0.f;
  for (int i = 384; i < 512; ++i) x[i] *= 1e-3f;
  uint8_t codes[kMlaLatentDim];
  float scales[4];
  mla_fp8_quantize(x.data(), codes, scales);
  EXPECT_EQ(scales[2], 0.f);
  double num = 0, den = 0;
  for (int g : {0, 1, 3}) {
    float amax = 0;
    for (int i = 0; i < 128; ++i) amax = std::max(amax, std::fabs(x[g * 128 + i]));
    int e = 0;
    EXPECT_EQ(std::frexp(scales[g], &e), 0.5f) << "group " << g << ": scale " << scales[g];
    EXPECT_LE(amax, 448.f * scales[g]);
    EXPECT_GT(amax, 224.f * scales[g]);
    bool hit = false;
    for (int i = 0; i < 128; ++i) {
      const float v = x[g * 128 + i], d = e4m3_to_float(codes[g * 128 + i]) * scales[g];
      hit |= std::fabs(v) == amax && std::fabs(d) >= 224.f * scales[g];
      const uint8_t c = codes[g * 128 + i];
      EXPECT_TRUE((c & 0x78) != 0 || (c & 0x7f) == 0) << "subnormal code for " << v;
      // Half a step: 2^-4 of the value in normal binades; below them the value is flushed.
      EXPECT_LE(std::fabs(d - v), std::max(std::fabs(v) / 16, scales[g] / 64) * 1.0001f)
          << "group " << g << " value " << i;
      num += double(d - v) * (d - v) / (double(scales[g]) * scales[g]);
      den += double(v) * v / (double(scales[g]) * scales[g]);
    }
    EXPECT_TRUE(hit) << "group " << g << ": its amax must land in (224, 448] · scale";
  }
  for (int i = 256; i < 384; ++i) EXPECT_EQ(codes[i], 0);
  const double rel = std::sqrt(num / den);
  std::printf("fp8 quantisation relative RMS error (Gaussian, 3 groups): %.4f\n", rel);
  EXPECT_LE(rel, 3.5e-2);
}

// The fp8 cache write stores each value's fp8 round trip (k_pe untouched) at the place the fp32
// write would.
TEST(MlaFp8, CacheWriteStoresRoundTrip) {
  const int num_blocks = 3;
  std::vector<float> plain(size_t(num_blocks) * kBlk * kRow, -7.f), fp8 = plain;
  const std::vector<int> tables = {2, 0}, cu = {0, 70}, ctx = {70};
  const auto latent = test::randn(size_t(70) * kRow, 51);
  MlaCacheWriteParams p;
  p.num_seqs = 1, p.cu_seqlens = cu.data(), p.context_lens = ctx.data();
  p.block_tables = tables.data(), p.max_blocks_per_seq = 2, p.num_blocks = num_blocks;
  p.latent = latent.data(), p.cache = plain.data();
  mla_cache_write(p);
  p.cache = fp8.data(), p.fp8 = true;
  mla_cache_write(p);
  for (int t = 0; t < 70; ++t) {
    const size_t row = size_t(tables[t / kBlk]) * kBlk + t % kBlk;
    uint8_t codes[kMlaLatentDim];
    float scales[4];
    mla_fp8_quantize(&plain[row * kRow], codes, scales);
    for (int c = 0; c < kRow; ++c) {
      const float want =
          c < kMlaLatentDim ? e4m3_to_float(codes[c]) * scales[c / 128] : plain[row * kRow + c];
      ASSERT_EQ(fp8[row * kRow + c], want) << "token " << t << " col " << c;
    }
  }
  EXPECT_EQ(fp8[size_t(1) * kBlk * kRow], -7.f);  // block 1 untouched
}

}  // namespace
}  // namespace kimi::cpu
