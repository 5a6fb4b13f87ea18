// KDA CPU references: the recurrence against a hand-written double-precision formula, the
// chunked algorithm against the recurrence (the ladder of style.md), state carry across calls,
// varlen batches on scattered slots, the short conv and the small per-token ops.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "core/check.h"
#include "model/config.h"
#include "op_test_util.h"
#include "ops/cpu/basic.h"
#include "ops/cpu/kda.h"
#include "ops/cpu/vec_math.h"

namespace kimi::cpu {
namespace {

using test::compare;
using test::ErrStats;
constexpr int D = kKdaHeadDim;
constexpr int64_t kStateSize = int64_t(D) * D;

// Tolerances, relative L2 against the reference (and max-abs for the outputs, whose entries are
// O(1)). Chunked vs recurrent differ only by fp32 summation order and exp factorisation.
constexpr double kScanRelTol = 1e-5;
constexpr double kOutAbsTol = 2e-6;    // outputs are O(0.1): q is scaled by 128^-1/2
constexpr double kStateAbsTol = 1e-4;  // state entries are O(1)

// Realistic scan inputs for T tokens and H heads: q, k through kda_l2norm, v ~ N(0, 1), g and beta
// through kda_gate with A_log ~ U(-1, 1); about 5% of the gate logits are pushed up by 10..25 so
// that some channels decay by e^-10 .. e^-70 in one token.
struct ScanInputs {
  int64_t T = 0;
  int H = 0;
  std::vector<float> q, k, v, g, beta;
};

ScanInputs make_scan_inputs(int64_t T, int H, uint32_t seed) {
  ScanInputs in;
  in.T = T;
  in.H = H;
  const size_t n = size_t(T) * H * D;
  in.q = test::randn(n, seed + 1);
  in.k = test::randn(n, seed + 2);
  in.v = test::randn(n, seed + 3);
  in.g = test::randn(n, seed + 4, 1.5f);
  in.beta = test::randn(size_t(T) * H, seed + 5, 1.5f);
  const auto spikes = test::uniform(n, seed + 6, 0.f, 1.f);
  const auto spike_size = test::uniform(n, seed + 7, 10.f, 25.f);
  for (size_t i = 0; i < n; ++i)
    if (spikes[i] < 0.05f) in.g[i] += spike_size[i];
  const auto a_log = test::uniform(H, seed + 8, -1.f, 1.f);
  const auto dt_bias = test::uniform(size_t(H) * D, seed + 9, -2.f, 1.f);
  kda_l2norm(in.q.data(), T, H, 1e-6f, 1.f / std::sqrt(float(D)));
  kda_l2norm(in.k.data(), T, H, 1e-6f, 1.f);
  kda_gate(in.g.data(), in.beta.data(), a_log.data(), dt_bias.data(), T, H);
  return in;
}

// One call of `op` over a varlen batch. tokens are rows of `in`; state is the whole pool.
template <typename Op>
std::vector<float> run_scan(Op op, const ScanInputs& in, const std::vector<int>& cu,
                            const std::vector<int>& slots, int num_slots, std::vector<float>& state,
                            int64_t row0 = 0) {
  const int64_t T = cu.back();
  const int64_t off = row0 * in.H * D;
  std::vector<float> out(size_t(T) * in.H * D, NAN);
  KdaScanParams p;
  p.num_seqs = int(slots.size());
  p.cu_seqlens = cu.data();
  p.slots = slots.data();
  p.num_slots = num_slots;
  p.num_heads = in.H;
  p.q = in.q.data() + off;
  p.k = in.k.data() + off;
  p.v = in.v.data() + off;
  p.g = in.g.data() + off;
  p.beta = in.beta.data() + row0 * in.H;
  p.state = state.data();
  p.out = out.data();
  op(p);
  return out;
}

void expect_close(const ErrStats& e, double rel_tol, double abs_tol, const char* what) {
  std::printf("  %-44s rel_l2 %.2e  max_abs %.2e\n", what, e.rel_l2, e.max_abs);
  EXPECT_TRUE(e.finite) << what;
  EXPECT_LE(e.rel_l2, rel_tol) << what;
  EXPECT_LE(e.max_abs, abs_tol) << what;
  EXPECT_GT(e.ref_norm, 0.0) << what << ": the reference is all zeros";
}

// T = 2, H = 1 with a non-zero initial state, against the closed form
// S_t = (I − β_t k_t k_tᵀ) Diag(exp g_t) S_{t−1} + β_t k_t v_tᵀ, o_t = S_tᵀ q_t, in double.
TEST(Kda, RecurrenceMatchesClosedFormT2) {
  const int T = 2;
  ScanInputs in = make_scan_inputs(T, 1, 11);
  std::vector<float> state0 = test::randn(kStateSize, 12, 0.3f);
  std::vector<double> S(state0.begin(), state0.end()), o_ref(T * D);
  for (int t = 0; t < T; ++t) {
    const float* k = &in.k[t * D];
    const double b = in.beta[t];
    std::vector<double> DS(kStateSize), next(kStateSize);
    for (int i = 0; i < D; ++i)
      for (int j = 0; j < D; ++j) DS[i * D + j] = std::exp(double(in.g[t * D + i])) * S[i * D + j];
    // (I − β k kᵀ) DS = DS − β k (kᵀ DS)
    std::vector<double> kDS(D, 0.0);
    for (int i = 0; i < D; ++i)
      for (int j = 0; j < D; ++j) kDS[j] += double(k[i]) * DS[i * D + j];
    for (int i = 0; i < D; ++i)
      for (int j = 0; j < D; ++j)
        next[i * D + j] =
            DS[i * D + j] - b * k[i] * kDS[j] + b * double(k[i]) * double(in.v[t * D + j]);
    S = next;
    for (int j = 0; j < D; ++j) {
      double acc = 0;
      for (int i = 0; i < D; ++i) acc += S[i * D + j] * double(in.q[t * D + i]);
      o_ref[t * D + j] = acc;
    }
  }
  for (auto op : {kda_recurrent, kda_chunked}) {
    std::vector<float> state = state0;
    const auto out = run_scan(op, in, {0, T}, {0}, 1, state);
    const char* name = op == kda_recurrent ? "recurrent" : "chunked";
    std::printf("  [%s]\n", name);
    expect_close(compare(out, o_ref), 1e-6, 1e-6, "T=2 output vs double closed form");
    expect_close(compare(state, S), 1e-6, 1e-6, "T=2 state vs double closed form");
  }
}

class KdaLadder : public ::testing::TestWithParam<int> {};

// Chunked vs recurrent on one sequence with a non-zero initial state in a non-zero slot.
TEST_P(KdaLadder, ChunkedMatchesRecurrent) {
  const int T = GetParam();
  const int H = 2, slots = 3;
  ScanInputs in = make_scan_inputs(T, H, 100 + T);
  std::vector<float> state_r = test::randn(slots * H * kStateSize, 7, 0.3f);
  std::vector<float> state_c = state_r;
  const auto out_r = run_scan(kda_recurrent, in, {0, T}, {2}, slots, state_r);
  const auto out_c = run_scan(kda_chunked, in, {0, T}, {2}, slots, state_c);
  std::printf("  T=%d\n", T);
  expect_close(compare(out_c, out_r), kScanRelTol, kOutAbsTol, "chunked vs recurrent: output");
  expect_close(compare(state_c, state_r), kScanRelTol, kStateAbsTol, "chunked vs recurrent: state");
}

// Prefill A with the chunked path, then decode B token by token with the recurrent path, against
// the recurrence over A+B in one call.
TEST_P(KdaLadder, PrefillThenDecodeMatchesRecurrence) {
  const int A = GetParam(), B = 17, T = A + B, H = 3;
  ScanInputs in = make_scan_inputs(T, H, 200 + A);
  std::vector<float> state_ref = test::randn(H * kStateSize, 8, 0.3f);
  std::vector<float> state = state_ref;
  const auto out_ref = run_scan(kda_recurrent, in, {0, T}, {0}, 1, state_ref);
  std::vector<float> out = run_scan(kda_chunked, in, {0, A}, {0}, 1, state);
  for (int t = A; t < T; ++t) {
    const auto o = run_scan(kda_recurrent, in, {0, 1}, {0}, 1, state, t);
    out.insert(out.end(), o.begin(), o.end());
  }
  std::printf("  A=%d B=%d\n", A, B);
  expect_close(compare(out, out_ref), kScanRelTol, kOutAbsTol, "prefill+decode vs recurrence");
  expect_close(compare(state, state_ref), kScanRelTol, kStateAbsTol, "final state");
}

INSTANTIATE_TEST_SUITE_P(Lengths, KdaLadder, ::testing::Values(1, 63, 64, 65, 129));

// A varlen batch of the ladder lengths on scattered slots: chunked vs recurrent, and each
// sequence of the batch bit-identical to the same sequence run alone.
TEST(Kda, VarlenBatchOnScatteredSlots) {
  const std::vector<int> lens = {65, 1, 129, 64, 63, 0, 7};
  const std::vector<int> slots = {3, 0, 5, 1, 7, 2, 6};
  const int H = 2, num_slots = 8;
  std::vector<int> cu = {0};
  for (int n : lens) cu.push_back(cu.back() + n);
  ScanInputs in = make_scan_inputs(cu.back(), H, 300);
  const auto state0 = test::randn(num_slots * H * kStateSize, 9, 0.3f);
  std::vector<float> state_r = state0, state_c = state0;
  const auto out_r = run_scan(kda_recurrent, in, cu, slots, num_slots, state_r);
  const auto out_c = run_scan(kda_chunked, in, cu, slots, num_slots, state_c);
  expect_close(compare(out_c, out_r), kScanRelTol, kOutAbsTol, "batch chunked vs recurrent: out");
  expect_close(compare(state_c, state_r), kScanRelTol, kStateAbsTol, "batch: states");
  for (auto op : {kda_recurrent, kda_chunked}) {
    const auto& out_batch = op == kda_recurrent ? out_r : out_c;
    const auto& state_batch = op == kda_recurrent ? state_r : state_c;
    for (size_t s = 0; s < lens.size(); ++s) {
      std::vector<float> st(state0.begin() + slots[s] * H * kStateSize,
                            state0.begin() + (slots[s] + 1) * H * kStateSize);
      const auto o = run_scan(op, in, {0, lens[s]}, {0}, 1, st, cu[s]);
      for (size_t i = 0; i < o.size(); ++i)
        ASSERT_EQ(o[i], out_batch[size_t(cu[s]) * H * D + i]) << "seq " << s << " elem " << i;
      for (int64_t i = 0; i < H * kStateSize; ++i)
        ASSERT_EQ(st[i], state_batch[slots[s] * H * kStateSize + i]) << "seq " << s;
    }
  }
  // Slots the batch does not name are untouched.
  for (int64_t i = 0; i < H * kStateSize; ++i)
    ASSERT_EQ(state_c[4 * H * kStateSize + i], state0[4 * H * kStateSize + i]);
}

// One chunked call over 300 tokens equals calls split at 37, 101, 130 and 250 (none a multiple
// of 64), carrying the state.
TEST(Kda, ChunkedSplitAtArbitraryBoundaries) {
  const int T = 300, H = 2;
  ScanInputs in = make_scan_inputs(T, H, 400);
  const auto state0 = test::randn(H * kStateSize, 10, 0.3f);
  std::vector<float> state_one = state0, state_split = state0;
  const auto out_one = run_scan(kda_chunked, in, {0, T}, {0}, 1, state_one);
  std::vector<float> out_split;
  const std::vector<int> cuts = {0, 37, 101, 130, 250, T};
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    const auto o =
        run_scan(kda_chunked, in, {0, cuts[i + 1] - cuts[i]}, {0}, 1, state_split, cuts[i]);
    out_split.insert(out_split.end(), o.begin(), o.end());
  }
  expect_close(compare(out_split, out_one), kScanRelTol, kOutAbsTol, "split vs one call: out");
  expect_close(compare(state_split, state_one), kScanRelTol, kStateAbsTol, "split: state");
}

// Whole chunks of very strong decay (every gate −20..−5) must stay finite and exact.
TEST(Kda, ChunkedStrongDecayStaysFinite) {
  const int T = 130, H = 1;
  ScanInputs in = make_scan_inputs(T, H, 500);
  const auto strong = test::uniform(in.g.size(), 501, -20.f, -5.f);
  for (int64_t t = 20; t < 100; ++t)
    for (int d = 0; d < D; ++d) in.g[t * D + d] = strong[t * D + d];
  std::vector<float> state_r = test::randn(kStateSize, 11, 0.3f), state_c = state_r;
  const auto out_r = run_scan(kda_recurrent, in, {0, T}, {0}, 1, state_r);
  const auto out_c = run_scan(kda_chunked, in, {0, T}, {0}, 1, state_c);
  expect_close(compare(out_c, out_r), kScanRelTol, kOutAbsTol, "strong decay: out");
  expect_close(compare(state_c, state_r), kScanRelTol, kStateAbsTol, "strong decay: state");
}

// A NaN in v of one token and channel: both paths put NaN at exactly the same outputs (that
// value column, from that token on) and agree elsewhere; nothing leaks to earlier tokens.
TEST(Kda, NanPositionsMatchAndStayCausal) {
  const int T = 130, H = 2, t_nan = 42, j_nan = 7;  // t_nan inside a 4-row tile
  ScanInputs in = make_scan_inputs(T, H, 550);
  in.v[(size_t(t_nan) * H + 0) * D + j_nan] = NAN;
  std::vector<float> state_r(H * kStateSize, 0.f), state_c = state_r;
  const auto out_r = run_scan(kda_recurrent, in, {0, T}, {0}, 1, state_r);
  const auto out_c = run_scan(kda_chunked, in, {0, T}, {0}, 1, state_c);
  std::vector<double> fin_r, fin_c;
  int nan_count = 0;
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < H; ++h)
      for (int j = 0; j < D; ++j) {
        const size_t i = (size_t(t) * H + h) * D + j;
        const bool expect_nan = h == 0 && j == j_nan && t >= t_nan;
        ASSERT_EQ(std::isnan(out_r[i]), expect_nan) << "recurrent t=" << t << " h=" << h;
        ASSERT_EQ(std::isnan(out_c[i]), expect_nan) << "chunked t=" << t << " h=" << h;
        nan_count += expect_nan;
        if (!expect_nan) fin_r.push_back(out_r[i]), fin_c.push_back(out_c[i]);
      }
  EXPECT_EQ(nan_count, T - t_nan);
  expect_close(compare(fin_c, fin_r), kScanRelTol, kOutAbsTol, "NaN case: finite outputs");
}

TEST(Kda, ScanRejectsSharedOrOutOfRangeSlots) {
  ScanInputs in = make_scan_inputs(4, 1, 600);
  std::vector<float> state(2 * kStateSize, 0.f);
  EXPECT_THROW(run_scan(kda_chunked, in, {0, 2, 4}, {1, 1}, 2, state), Error);
  EXPECT_THROW(run_scan(kda_recurrent, in, {0, 4}, {2}, 2, state), Error);
  EXPECT_THROW(run_scan(kda_recurrent, in, {0, 4}, {0}, 0, state), Error);
}

// ---- short conv ----

struct ConvRun {
  std::vector<float> out, state;
};

ConvRun run_conv(const std::vector<float>& x, const std::vector<float>& w, int C,
                 const std::vector<int>& cu, const std::vector<int>& slots, int num_slots,
                 std::vector<float> state, int64_t row0 = 0) {
  ConvRun r;
  r.out.assign(size_t(cu.back()) * C, NAN);
  KdaConvParams p;
  p.num_seqs = int(slots.size());
  p.cu_seqlens = cu.data();
  p.slots = slots.data();
  p.num_slots = num_slots;
  p.channels = C;
  p.x = x.data() + row0 * C;
  p.weight = w.data();
  p.state = state.data();
  p.out = r.out.data();
  kda_conv(p);
  r.state = std::move(state);
  return r;
}

// C = 2, T = 2 from a non-zero state, against the formula written out term by term in double.
TEST(KdaConv, TinyCaseByHand) {
  const int C = 2;
  const std::vector<float> w = {0.5f, -1.f, 0.25f, 2.f, 1.5f, 0.75f, -0.5f, 1.f};  // [C, 4]
  const std::vector<float> st = {0.1f, -0.2f, 0.3f, 1.f, 2.f, -3.f};               // [C, 3]
  const std::vector<float> x = {0.7f, -0.4f, -1.1f, 0.9f};                         // [T, C]
  auto silu_d = [](double a) { return a / (1.0 + std::exp(-a)); };
  // channel 0: window [0.1, -0.2, 0.3, 0.7] then [-0.2, 0.3, 0.7, -1.1]
  // channel 1: window [1, 2, -3, -0.4] then [2, -3, -0.4, 0.9]
  const double y00 = silu_d(0.5 * 0.1 - 1.0 * -0.2 + 0.25 * 0.3 + 2.0 * 0.7);
  const double y01 = silu_d(1.5 * 1.0 + 0.75 * 2.0 - 0.5 * -3.0 + 1.0 * -0.4);
  const double y10 = silu_d(0.5 * -0.2 - 1.0 * 0.3 + 0.25 * 0.7 + 2.0 * -1.1);
  const double y11 = silu_d(1.5 * 2.0 + 0.75 * -3.0 - 0.5 * -0.4 + 1.0 * 0.9);
  const ConvRun r = run_conv(x, w, C, {0, 2}, {1}, 2, [&] {
    std::vector<float> pool(2 * C * 3, 9.f);  // slot 0 must stay 9s
    std::copy(st.begin(), st.end(), pool.begin() + C * 3);
    return pool;
  }());
  const std::vector<double> y_ref = {y00, y01, y10, y11};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(r.out[i], y_ref[i], 1e-6) << i;
  const std::vector<float> st_ref = {9, 9, 9, 9, 9, 9, 0.3f, 0.7f, -1.1f, -3.f, -0.4f, 0.9f};
  for (int i = 0; i < 12; ++i) EXPECT_EQ(r.state[i], st_ref[i]) << i;
}

// One call over a sequence equals the sequence fed in pieces of 1, 2, 5, 3, 100, 1 tokens
// (pieces shorter than the 3-token state included); a batch with scattered slots equals each
// sequence alone.
TEST(KdaConv, PiecesCarryTheState) {
  const int C = 3 * 2 * D + 5;  // not a multiple of the 64-channel block
  const int T = 112;
  const auto x = test::randn(size_t(T) * C, 700);
  const auto w = test::randn(size_t(C) * 4, 701, 0.5f);
  const auto st0 = test::randn(size_t(C) * 3, 702);
  const ConvRun whole = run_conv(x, w, C, {0, T}, {0}, 1, st0);
  std::vector<float> state = st0, out;
  int t = 0;
  for (int n : {1, 2, 5, 3, 100, 1}) {
    ConvRun piece = run_conv(x, w, C, {0, n}, {0}, 1, state, t);
    out.insert(out.end(), piece.out.begin(), piece.out.end());
    state = piece.state;
    t += n;
  }
  ASSERT_EQ(t, T);
  EXPECT_EQ(out, whole.out);
  EXPECT_EQ(state, whole.state);

  // Batch: lengths 2, 60, 50 on slots 2, 0, 1 equal the three runs alone.
  const std::vector<int> cu = {0, 2, 62, 112}, slots = {2, 0, 1};
  auto pool = test::randn(size_t(3) * C * 3, 703);
  const ConvRun batch = run_conv(x, w, C, cu, slots, 3, pool);
  for (int s = 0; s < 3; ++s) {
    std::vector<float> st(pool.begin() + slots[s] * C * 3, pool.begin() + (slots[s] + 1) * C * 3);
    const ConvRun alone = run_conv(x, w, C, {0, cu[s + 1] - cu[s]}, {0}, 1, st, cu[s]);
    for (size_t i = 0; i < alone.out.size(); ++i)
      ASSERT_EQ(alone.out[i], batch.out[size_t(cu[s]) * C + i]) << "seq " << s;
    for (size_t i = 0; i < alone.state.size(); ++i)
      ASSERT_EQ(alone.state[i], batch.state[slots[s] * C * 3 + i]) << "seq " << s;
  }
}

// ---- per-token ops against their formulas in double ----

TEST(KdaSmallOps, GateL2normGatedRmsnorm) {
  const int T = 5, H = 3;
  const size_t n = size_t(T) * H * D;
  auto f = test::randn(n, 800, 3.f);
  f[7] = 30.f;  // softplus threshold branch
  auto b = test::randn(size_t(T) * H, 801, 2.f);
  const auto f0 = f, b0 = b;
  const auto a_log = test::uniform(H, 802, -1.f, 1.f);
  const auto dt = test::uniform(size_t(H) * D, 803, -2.f, 2.f);
  kda_gate(f.data(), b.data(), a_log.data(), dt.data(), T, H);
  double max_rel = 0;
  for (size_t i = 0; i < n; ++i) {
    const int h = int(i / D % H);
    const double z = double(f0[i]) + dt[h * D + i % D];
    const double sp = z > 20 ? z : std::log1p(std::exp(z));
    const double g = -std::exp(double(a_log[h])) * sp;
    max_rel = std::max(max_rel, std::abs(f[i] - g) / std::abs(g));
    ASSERT_LT(f[i], 0.f);
  }
  EXPECT_LE(max_rel, 1e-5);
  for (size_t i = 0; i < b.size(); ++i) EXPECT_NEAR(b[i], 1.0 / (1.0 + std::exp(-b0[i])), 1e-6);

  auto x = test::randn(n, 804);
  const auto x0 = x;
  kda_l2norm(x.data(), T, H, 1e-6f, 0.125f);
  auto z = test::randn(n, 805);
  const auto wo = test::randn(D, 806);
  std::vector<float> y(n);
  kda_gated_rmsnorm(x0.data(), z.data(), wo.data(), y.data(), T, H, 1e-5f);
  for (int64_t r = 0; r < T * H; ++r) {
    double ss = 0;
    for (int d = 0; d < D; ++d) ss += double(x0[r * D + d]) * x0[r * D + d];
    for (int d = 0; d < D; ++d) {
      const double xv = x0[r * D + d];
      EXPECT_NEAR(x[r * D + d], xv / std::sqrt(ss + 1e-6) * 0.125, 1e-7);
      const double yv =
          xv / std::sqrt(ss / D + 1e-5) * wo[d] / (1.0 + std::exp(-double(z[r * D + d])));
      EXPECT_NEAR(y[r * D + d], yv, 1e-5 * (1 + std::abs(yv)));
    }
  }
}

// The vectorised exp of the chunked path against double exp: at most 2 ulp over [−87, 88].
TEST(KdaSmallOps, ExpFastWithinTwoUlp) {
  double worst = 0;
  float worst_x = 0;
  for (int i = 0; i <= 1750000; ++i) {
    const float x = -87.f + float(i) * 1e-4f;
    const double ref = std::exp(double(x));
    const float y = detail::exp_fast(x);
    const double ulp = double(std::nextafter(float(ref), INFINITY) - float(ref));
    const double err = std::abs(double(y) - ref) / ulp;
    if (err > worst) worst = err, worst_x = x;
  }
  std::printf("  exp_fast max error %.2f ulp at x = %g\n", worst, worst_x);
  EXPECT_LE(worst, 2.0);
  EXPECT_EQ(detail::exp_fast(0.f), 1.f);
  EXPECT_EQ(detail::exp_fast(-100.f), 0.f);
  EXPECT_EQ(detail::exp_fast(-INFINITY), 0.f);
  EXPECT_TRUE(std::isnan(detail::exp_fast(NAN)));
}

}  // namespace
}  // namespace kimi::cpu
