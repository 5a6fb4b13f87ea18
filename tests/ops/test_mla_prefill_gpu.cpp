// The expanded MLA prefill (kernels/mla/mla_prefill.cuh: cache gather, kv_b expansion GEMMs,
// warp-specialised flash attention on wgmma + TMA) against the CPU reference of the expanded
// attention (cpu::mla_attention_expanded) on random paged caches: odd new-token counts (1, 7, 63,
// 64, 65, 769) with and without history, several sequences per step, workspaces smaller than a
// context (state carried across rounds, pieces not a multiple of the 128-key tile), and tokens of
// sequences left to the absorbed path that must stay untouched. The workspace is poisoned (NaN)
// before every run: the kernel reads keys past an item's end with P = 0, so those must be finite
// (GEMM outputs, zeroed gaps between segments) or lie outside the round's tensor maps; several
// sequences per round put segments (and the Vᵀ boxes) at workspace rows other than 0.
// Tolerance: q, the expanded K/V (bf16 GEMM output), P and the output are bf16: ~3e-3 relative
// RMS expected; we allow 1e-2 relative RMS and 0.1 max-abs (outputs are O(1)).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/check.h"  // before gpu_test_util.h, which uses str() but does not include it
#include "gpu_test_util.h"
#include "mla_fp8_test_util.h"
#include "ops/cpu/mla.h"

#if KIMI_HAVE_CUDA
#include "gemm/gemm.h"
#include "mla/mla.h"
#endif

namespace kimi::test {
namespace {

#if KIMI_HAVE_CUDA
using cuda::bf16;

struct Seq {
  int n_new, ctx;
};

// Runs the expanded prefill on `seqs` (sequences with expand[s] = 0 are left alone) with a
// workspace of `piece` positions and checks it against the CPU. fp8: the cache as fp8 records
// (mla_fp8_test_util.h), the CPU on their decoded values.
void run_prefill(const std::vector<Seq>& seqs, int H, int piece, uint32_t seed,
                 std::vector<uint8_t> expand = {}, bool fp8 = false) {
  std::mt19937 rng(seed);
  const int S = int(seqs.size());
  if (expand.empty()) expand.assign(S, 1);
  std::vector<int> cu{0}, ctx, tables;
  int mb = 0, nblocks = 3;  // 3 unused blocks
  for (auto s : seqs) mb = std::max(mb, (s.ctx + 63) / 64), nblocks += (s.ctx + 63) / 64;
  std::vector<int> ids(nblocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  int next = 0;
  for (auto s : seqs) {
    cu.push_back(cu.back() + s.n_new);
    ctx.push_back(s.ctx);
    for (int j = 0; j < mb; ++j) tables.push_back(j < (s.ctx + 63) / 64 ? ids[next++] : 0);
  }
  const int T = cu.back();
  const size_t cache_n = size_t(nblocks) * 64 * 576;
  auto cache = random_bf16(rng, cache_n, -1.f, 1.f);
  auto q = random_bf16(rng, size_t(T) * H * 192, -1.f, 1.f);
  auto kv_b = random_bf16(rng, size_t(H) * 256 * 512, -0.25f, 0.25f);
  auto cache_f = bf16_to_float(cache), q_f = bf16_to_float(q), kvb_f = bf16_to_float(kv_b);
  Fp8Cache f8;
  if (fp8) {
    f8 = make_fp8_cache(cache);
    cache_f = f8.values;
  }
  std::vector<float> ref(size_t(T) * H * 128);
  cpu::MlaAttnParams cp;
  cp.num_seqs = S, cp.cu_seqlens = cu.data(), cp.context_lens = ctx.data();
  cp.block_tables = tables.data(), cp.max_blocks_per_seq = mb, cp.num_blocks = nblocks;
  cp.cache = cache_f.data(), cp.num_heads = H, cp.q = q_f.data(), cp.kv_b = kvb_f.data();
  cp.scale = 1.f / std::sqrt(192.f), cp.out = ref.data();
  cpu::mla_attention_expanded(cp);

  const cuda::MlaPrefillPlan plan =
      cuda::make_mla_prefill_plan(S, cu.data(), ctx.data(), expand.data(), piece);
  GuardedBuffer<uint16_t> dcache(cache_n), dq(q.size()), dkvb(kv_b.size()), dout(ref.size());
  GuardedBuffer<int> dtab(tables.size());
  GuardedBuffer<uint8_t> dcache8(std::max<size_t>(1, f8.bytes.size()));
  if (fp8) dcache8.upload(f8.bytes);
  GuardedBuffer<int> dsegs(std::max<size_t>(1, 4 * plan.segs.size()));
  GuardedBuffer<int> ditems(std::max<size_t>(1, 7 * plan.items.size()));
  GuardedBuffer<uint8_t> dws(cuda::mla_prefill_workspace_bytes(piece, H));
  GuardedBuffer<float> dstate(size_t(T) * H * cuda::kMlaStateStride);
  dcache.upload(cache);
  dq.upload(q);
  dkvb.upload(kv_b);
  dtab.upload(tables);
  static_assert(sizeof(cuda::MlaPrefillSeg) == 4 * sizeof(int));
  static_assert(sizeof(cuda::MlaPrefillItem) == 7 * sizeof(int));
  if (!plan.segs.empty()) {
    std::vector<int> v(4 * plan.segs.size()), w(7 * plan.items.size());
    std::memcpy(v.data(), plan.segs.data(), v.size() * 4);
    std::memcpy(w.data(), plan.items.data(), w.size() * 4);
    dsegs.upload(v);
    ditems.upload(w);
  }
  cuda::Gemm gemm;
  cuda::MlaPrefillParams p;
  p.num_heads = H;
  p.q = dev<bf16>(dq);
  p.cache = fp8 ? nullptr : dev<bf16>(dcache);
  p.cache8 = fp8 ? dcache8.data() : nullptr;
  p.block_tables = dtab.data();
  p.max_blocks_per_seq = mb;
  p.kv_b = dev<bf16>(dkvb);
  p.scale = 1.f / std::sqrt(192.f);
  p.segs = reinterpret_cast<const cuda::MlaPrefillSeg*>(dsegs.data());
  p.items = reinterpret_cast<const cuda::MlaPrefillItem*>(ditems.data());
  p.workspace = dws.data();
  p.piece_rows = piece;
  p.state = dstate.data();
  p.out = dev<bf16>(dout);
  dout.poison();
  dstate.poison();
  dws.poison();
  cuda::run_mla_prefill(p, plan, gemm, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const auto out_bits = dout.to_host();
  const auto got = bf16_to_float(out_bits);
  // Expanded tokens against the CPU; the others must still hold the poison.
  std::vector<float> g, r;
  size_t touched = 0;
  for (int s = 0; s < S; ++s)
    for (size_t i = size_t(cu[s]) * H * 128; i < size_t(cu[s + 1]) * H * 128; ++i) {
      if (expand[s]) {
        g.push_back(got[i]);
        r.push_back(ref[i]);
      } else if (out_bits[i] != 0xffff) {
        ++touched;
      }
    }
  std::string desc = str(fp8 ? "fp8 " : "", "H", H, " piece ", piece, " rounds ",
                         plan.rounds.size(), " items ", plan.items.size(), " seqs");
  for (int s = 0; s < S; ++s)
    desc += str(" ", seqs[s].n_new, "/", seqs[s].ctx, expand[s] ? "" : "(absorbed)");
  expect_close(desc, g.data(), r.data(), g.size(), 1e-2, 0.1);
  EXPECT_EQ(touched, 0u) << desc << ": outputs of non-expanded sequences written";
  EXPECT_TRUE(dout.guards_intact() && dstate.guards_intact() && dws.guards_intact() &&
              dsegs.guards_intact() && ditems.guards_intact())
      << desc;
  EXPECT_EQ(dcache.to_host(), cache);  // read-only
  if (fp8) {
    EXPECT_EQ(dcache8.to_host(), f8.bytes);
  }
}
#endif

TEST(MlaPrefillGpu, OddSizesNoHistory) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  uint32_t seed = 1;
  for (int n : kRows) run_prefill({{n, n}}, 8, 16384, seed++);
  run_prefill({{1, 1}, {7, 7}, {63, 63}, {64, 64}, {65, 65}}, 32, 16384, seed++);
#endif
}

TEST(MlaPrefillGpu, WithHistoryAndSeveralSequences) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  uint32_t seed = 100;
  for (int H : {32, 16, 2, 1}) {
    run_prefill({{65, 1000}, {7, 300}, {64, 129}, {1, 77}}, H, 16384, seed++);
    run_prefill({{769, 1100}, {63, 63}}, H, 16384, seed++);
  }
#endif
}

// Contexts longer than the workspace: the (o, m, l) state crosses rounds; pieces of 200 and 256
// positions cut tiles and blocks at odd places, and a round holds the tail of one sequence and
// the head of the next.
TEST(MlaPrefillGpu, ContextLongerThanWorkspace) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  uint32_t seed = 200;
  for (int piece : {200, 256, 1000}) {
    run_prefill({{769, 1800}}, 4, piece, seed++);
    run_prefill({{65, 1000}, {7, 300}, {129, 129}, {1, 500}}, 8, piece, seed++);
    run_prefill({{300, 300}, {64, 2000}}, 32, piece, seed++);
  }
#endif
}

// The fp8 cache: the gather decodes the records into the bf16 latents the expansion reads, over
// odd sizes, history, several rounds and mixed steps.
TEST(MlaPrefillGpu, Fp8Cache) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  uint32_t seed = 400;
  run_prefill({{1, 1}, {7, 7}, {63, 63}, {64, 64}, {65, 65}}, 32, 16384, seed++, {}, true);
  run_prefill({{65, 1000}, {7, 300}, {64, 129}, {1, 77}}, 16, 16384, seed++, {}, true);
  run_prefill({{769, 1800}}, 4, 256, seed++, {}, true);
  run_prefill({{1, 700}, {200, 900}, {7, 7}, {150, 150}}, 8, 200, seed++, {0, 1, 0, 1}, true);
#endif
}

// Mixed steps: decode sequences and a short prefill stay on the absorbed path (expand = 0).
TEST(MlaPrefillGpu, OnlyMarkedSequences) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  run_prefill({{1, 700}, {200, 900}, {7, 7}, {1, 1}, {150, 150}}, 16, 512, 300, {0, 1, 0, 0, 1});
#endif
}

#if KIMI_HAVE_CUDA
// The plan (host only): every (query token, visible key) pair of the expanded sequences is in
// exactly one item; each query tile starts with kMlaFirst and ends with kMlaLast, in round
// order; rounds fit the workspace; items read workspace rows of their own round's segments.
TEST(MlaPrefillPlan, CoversEveryCausalPairOnce) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 60; ++trial) {
    const int S = 1 + int(rng() % 5);
    std::vector<int> cu{0}, ctx;
    std::vector<uint8_t> expand(S);
    for (int s = 0; s < S; ++s) {
      const int n = 1 + int(rng() % 400), L = n + int(rng() % 3000);
      cu.push_back(cu.back() + n);
      ctx.push_back(L);
      expand[s] = rng() % 4 != 0;
    }
    const int piece = trial % 3 == 0 ? 100000 : 8 * (8 + int(rng() % 250));
    const cuda::MlaPrefillPlan plan =
        cuda::make_mla_prefill_plan(S, cu.data(), ctx.data(), expand.data(), piece);
    std::vector<std::vector<int>> seen(cu.back());
    for (int s = 0; s < S; ++s)
      for (int t = cu[s]; t < cu[s + 1]; ++t) seen[t].assign(ctx[s] - (cu[s + 1] - t) + 1, 0);
    std::vector<int> first_round(cu.back(), -1), last_round(cu.back(), -1);
    std::vector<int> min_round(cu.back(), 1 << 30), max_round(cu.back(), -1);
    bool state = false;
    for (size_t ri = 0; ri < plan.rounds.size(); ++ri) {
      const auto& r = plan.rounds[ri];
      ASSERT_GE(r.rows, 1);
      ASSERT_LE(r.rows, piece);
      for (int j = r.seg_begin; j < r.seg_end; ++j) {
        // The attention's TMA boxes of Vᵀ start on 16-byte boundaries.
        EXPECT_EQ(plan.segs[j].ws_row % 8, 0);
        EXPECT_LE(plan.segs[j].ws_row + plan.segs[j].pos_end - plan.segs[j].pos_begin, r.rows);
      }
      for (int k = r.item_begin; k < r.item_end; ++k) {
        const auto& it = plan.items[k];
        ASSERT_GE(it.nq, 1);
        ASSERT_LE(it.nq, cuda::kMlaPrefillRows);
        ASSERT_LT(it.kv_begin, it.kv_end);
        bool in_seg = false;
        for (int j = r.seg_begin; j < r.seg_end; ++j) {
          const auto& sg = plan.segs[j];
          if (it.ws_row - sg.ws_row == it.kv_begin - sg.pos_begin && it.kv_begin >= sg.pos_begin &&
              it.kv_end <= sg.pos_end && it.q_begin >= cu[sg.seq] && it.q_begin < cu[sg.seq + 1])
            in_seg = true;
        }
        ASSERT_TRUE(in_seg) << "trial " << trial << " item " << k;
        ASSERT_LE(it.ws_row + it.kv_end - it.kv_begin, r.rows);
        for (int i = 0; i < it.nq; ++i) {
          const int t = it.q_begin + i;
          min_round[t] = std::min(min_round[t], int(ri));
          max_round[t] = std::max(max_round[t], int(ri));
          if (it.flags & cuda::kMlaFirst) {
            EXPECT_EQ(first_round[t], -1);
            first_round[t] = int(ri);
          }
          if (it.flags & cuda::kMlaLast) {
            EXPECT_EQ(last_round[t], -1);
            last_round[t] = int(ri);
          } else {
            state = true;
          }
          for (int j = it.kv_begin; j < it.kv_end; ++j)
            if (j <= it.q_pos0 + i) ++seen[t].at(j);
        }
      }
    }
    EXPECT_EQ(plan.uses_state, state);
    for (int s = 0; s < S; ++s)
      for (int t = cu[s]; t < cu[s + 1]; ++t) {
        for (size_t j = 0; j < seen[t].size(); ++j)
          ASSERT_EQ(seen[t][j], expand[s] ? 1 : 0)
              << "trial " << trial << " token " << t << " key " << j;
        if (expand[s]) {
          EXPECT_EQ(first_round[t], min_round[t]) << "trial " << trial << " token " << t;
          EXPECT_EQ(last_round[t], max_round[t]) << "trial " << trial << " token " << t;
        }
      }
  }
}
#endif

}  // namespace
}  // namespace kimi::test
