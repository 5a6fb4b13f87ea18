// MLA GPU kernels against the CPU reference (src/ops/cpu/mla.h): the latent cache write (RMSNorm
// of ĉ + paged bf16 store) and the absorbed attention chain (q_abs GEMM → paged attention with
// split-KV → combine → W_UV GEMM) on mixed prefill/decode batches with scattered block tables and
// on decode batches through the CUDA-graph decode plan; both kernel families (tensor cores: the
// decode and prefill kernels; CUDA cores) run, the tensor-core chain is checked against the CPU
// and the two families' u against each other.
// Tolerance: bf16 cache/q/q_abs/u roundings give ~2.5e-3 relative (measured, H200; the
// tensor-core kernels also round P to bf16, ~1e-3 more); we allow 1e-2 relative RMS and 0.1
// max-abs.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "../error_of.h"
#include "core/check.h"  // before gpu_test_util.h, which uses str() but does not include it
#include "gpu_test_util.h"
#include "mla_fp8_test_util.h"
#include "model/config.h"
#include "ops/cpu/basic.h"
#include "ops/cpu/mla.h"

#if KIMI_HAVE_CUDA
#include "gemm/gemm.h"
#include "mla/mla.h"
#include "mla/mla_layer.h"
#endif

namespace kimi::test {
namespace {

#if KIMI_HAVE_CUDA
struct Seq {
  int n_new, ctx;
};

struct PagedBatch {
  std::vector<int> cu{0}, ctx, tables;
  int mb = 0, num_blocks = 0;
};

PagedBatch make_batch(std::mt19937& rng, const std::vector<Seq>& seqs) {
  PagedBatch b;
  for (auto s : seqs) b.mb = std::max(b.mb, (s.ctx + 63) / 64);
  for (auto s : seqs) b.num_blocks += (s.ctx + 63) / 64;
  b.num_blocks += 3;  // unused blocks that must stay untouched
  std::vector<int> ids(b.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  int next = 0;
  for (auto s : seqs) {
    b.cu.push_back(b.cu.back() + s.n_new);
    b.ctx.push_back(s.ctx);
    for (int j = 0; j < b.mb; ++j) b.tables.push_back(j < (s.ctx + 63) / 64 ? ids[next++] : 0);
  }
  return b;
}

using cuda::bf16;

// kEager: make_mla_attn_plan (mixed prefill/decode steps); kDecode: make_mla_decode_plan (the
// fixed-shape plan of CUDA-graph decode steps; every sequence has one new token).
enum class PlanKind { kEager, kDecode };

// fp8: the cache as fp8 records (mla_fp8_test_util.h); the CPU attends over their decoded values
// and only the tensor-core kernels run (the CUDA-core ones have no fp8 path).
// ramp: the scores rise along each sequence by up to 200 / sqrt(192) (14.4; 20.8 in base 2:
// channel 0 of q_pe is 1, that of k_pe at position pos 200 · pos / context), so the running
// maximum keeps moving inside a KV range (the decode kernel's lazy rescaling must follow it).
// fused: also the fused small-decode chain (mla_layer.h: run_mla_q_prep from q in fp32, the
// tensor-core attention, run_mla_uv) on the tensor-core plan, against the CPU and against the GEMM
// chain's output; its cache write goes to a scratch cache (checked by LayerQPrepMatchesCpu).
// zero_nope: q_nope all zero (so q_abs is) and q_pe in [−8, 8]: the scores come from k_pe alone
// (the fp8 register-operand kernel scales Q by its largest exponent, which k_pe sets then).
void run_chain(const std::vector<Seq>& seqs, int H, uint32_t seed, PlanKind kind = PlanKind::kEager,
               bool fp8 = false, bool ramp = false, bool fused = false, bool zero_nope = false) {
  std::mt19937 rng(seed);
  PagedBatch b = make_batch(rng, seqs);
  const int S = int(seqs.size()), T = b.cu.back();
  const size_t cache_n = size_t(b.num_blocks) * 64 * 576;
  auto cache = random_bf16(rng, cache_n, -1.f, 1.f);
  if (ramp)
    for (int s = 0; s < S; ++s)
      for (int pos = 0; pos < b.ctx[s]; ++pos)
        cache[(size_t(b.tables[size_t(s) * b.mb + pos / 64]) * 64 + pos % 64) * 576 + 512] =
            f32_to_bf16(200.f * pos / b.ctx[s]);
  // Rows past a sequence's context in its last block were never written: NaN here, so a kernel
  // that lets them into P·V (P = 0, but 0 · NaN) fails.
  for (int s = 0; s < int(seqs.size()); ++s)
    for (int pos = b.ctx[s]; pos % 64 != 0; ++pos)
      std::fill_n(cache.begin() + (size_t(b.tables[size_t(s) * b.mb + pos / 64]) * 64 + pos % 64) * 576,
                  576, uint16_t(0x7fc0));
  auto q = random_bf16(rng, size_t(T) * H * 192, -1.f, 1.f);
  if (ramp)
    for (size_t i = 0; i < size_t(T) * H; ++i) q[i * 192 + 128] = f32_to_bf16(1.f);
  if (zero_nope)
    for (size_t i = 0; i < size_t(T) * H; ++i)
      for (int k = 0; k < 192; ++k)
        q[i * 192 + k] = k < 128 ? uint16_t(0) : f32_to_bf16(8.f * bf16_to_f32(q[i * 192 + k]));
  auto kv_b = random_bf16(rng, size_t(H) * 256 * 512, -0.25f, 0.25f);
  auto cache_f = bf16_to_float(cache), q_f = bf16_to_float(q), kvb_f = bf16_to_float(kv_b);
  Fp8Cache f8;
  if (fp8) {
    f8 = make_fp8_cache(cache);
    cache_f = f8.values;
  }
  std::vector<float> ref(size_t(T) * H * 128);
  cpu::MlaAttnParams cp;
  cp.num_seqs = S, cp.cu_seqlens = b.cu.data(), cp.context_lens = b.ctx.data();
  cp.block_tables = b.tables.data(), cp.max_blocks_per_seq = b.mb, cp.num_blocks = b.num_blocks;
  cp.cache = cache_f.data(), cp.num_heads = H, cp.q = q_f.data(), cp.kv_b = kvb_f.data();
  cp.scale = 1.f / std::sqrt(192.f), cp.out = ref.data();
  cpu::mla_attention_absorbed(cp);

  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const int max_partials = 8 * prop.multiProcessorCount;
  if (kind == PlanKind::kDecode) KIMI_CHECK(T == S, "decode plans take one new token per sequence");
  // Each kernel family gets the plan made for it (the split counts differ).
  auto make_plan = [&](bool tc) {
    return kind == PlanKind::kDecode
               ? cuda::make_mla_decode_plan(S, b.ctx.data(), H, prop.multiProcessorCount,
                                            max_partials, tc)
               : cuda::make_mla_attn_plan(S, b.cu.data(), b.ctx.data(), H,
                                          prop.multiProcessorCount, max_partials, tc);
  };
  GuardedBuffer<uint16_t> dcache(cache_n), dq(q.size()), dkvb(kv_b.size());
  GuardedBuffer<uint8_t> dcache8(std::max<size_t>(1, f8.bytes.size()));
  if (fp8) dcache8.upload(f8.bytes);
  GuardedBuffer<uint16_t> dqabs(size_t(T) * H * 512), du(size_t(T) * H * 512), dout(ref.size());
  GuardedBuffer<int> dtab(b.tables.size()), dsb(T), dns(T);
  GuardedBuffer<float> dpart(std::max<size_t>(1, size_t(max_partials) * H * cuda::kMlaPartialStride));
  dcache.upload(cache);
  dq.upload(q);
  dkvb.upload(kv_b);
  dtab.upload(b.tables);
  auto as_ints = [](const std::vector<cuda::MlaWorkItem>& v) {
    std::vector<int> o(7 * v.size());
    std::memcpy(o.data(), v.data(), o.size() * 4);
    return o;
  };
  dqabs.poison();
  du.poison();
  dout.poison();

  cuda::Gemm gemm;
  cuda::GemmArgs g;
  g.M = T, g.N = 512, g.K = 128, g.A = reinterpret_cast<bf16*>(dq.data()), g.lda = H * 192;
  g.stride_a = 192, g.B = reinterpret_cast<bf16*>(dkvb.data()), g.ldb = 512;
  g.stride_b = 256 * 512, g.b_kn = true, g.C = dqabs.data(), g.ldc = H * 512, g.stride_c = 512;
  g.batch = H;
  gemm.run(g, nullptr);
  cuda::MlaAttnParams ap;
  ap.num_tokens = T, ap.num_heads = H, ap.q_abs = reinterpret_cast<bf16*>(dqabs.data());
  ap.q = reinterpret_cast<bf16*>(dq.data());
  ap.cache = fp8 ? nullptr : reinterpret_cast<bf16*>(dcache.data());
  ap.cache8 = fp8 ? dcache8.data() : nullptr;
  ap.num_blocks = b.num_blocks;
  ap.block_tables = dtab.data(), ap.max_blocks_per_seq = b.mb, ap.scale = 1.f / std::sqrt(192.f);
  ap.split_base = dsb.data(), ap.num_splits = dns.data(), ap.partials = dpart.data();
  ap.u = reinterpret_cast<bf16*>(du.data());
  // Both kernel families, each from poisoned u and partials: CUDA cores (the old path, kept for
  // comparison) first, then tensor cores; the tensor-core u feeds the W_UV GEMM and is checked
  // against the CPU.
  constexpr int num_paths = 2;
  std::vector<uint16_t> u_path[num_paths];
  std::string plan_desc;
  const char* path_name[num_paths] = {"CUDA cores", "tensor cores"};
  cuda::GemmArgs g2;
  g2.M = T, g2.N = 128, g2.K = 512, g2.A = reinterpret_cast<bf16*>(du.data()), g2.lda = H * 512;
  g2.stride_a = 512, g2.B = reinterpret_cast<bf16*>(dkvb.data()) + 128 * 512, g2.ldb = 512;
  g2.stride_b = 256 * 512, g2.C = dout.data(), g2.ldc = H * 128, g2.stride_c = 128, g2.batch = H;
  for (int path = fp8 ? 1 : 0; path < num_paths; ++path) {
    const bool tc = path > 0;
    const cuda::MlaAttnPlan plan = make_plan(tc);
    EXPECT_LE(plan.num_partials, max_partials);
    GuardedBuffer<int> di1(std::max<size_t>(1, 7 * plan.items1.size())),
        di4(std::max<size_t>(1, 7 * plan.items4.size()));
    if (!plan.items1.empty()) di1.upload(as_ints(plan.items1));
    if (!plan.items4.empty()) di4.upload(as_ints(plan.items4));
    dsb.upload(plan.split_base);
    dns.upload(plan.num_splits);
    du.poison();
    dpart.poison();
    ap.tensor_cores = tc;
    ap.items = reinterpret_cast<const cuda::MlaWorkItem*>(di1.data());
    ap.num_items = int(plan.items1.size());
    cuda::run_mla_attention(ap, 1, nullptr);
    ap.items = reinterpret_cast<const cuda::MlaWorkItem*>(di4.data());
    ap.num_items = int(plan.items4.size());
    cuda::run_mla_attention(ap, 4, nullptr);
    if (plan.num_partials > 0) cuda::run_mla_combine(ap, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    u_path[path] = du.to_host();
    {
      int max_splits = 0;
      for (int ns : plan.num_splits) max_splits = std::max(max_splits, ns);
      plan_desc += str(tc ? " tc" : " cc", " items ", plan.items1.size(), "+", plan.items4.size(),
                       " partials ", plan.num_partials, " max splits ", max_splits);
    }
    EXPECT_TRUE(di1.guards_intact() && di4.guards_intact());
    if (!tc) continue;
    dout.poison();
    gemm.run(g2, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    auto got = bf16_to_float(dout.to_host());
    const std::string desc =
        str("mla ", fp8 ? "fp8 " : "", kind == PlanKind::kDecode ? "decode plan" : "eager plan",
            " H", H, " S", S, " T", T, plan_desc);
    expect_close(desc + " " + path_name[path] + " vs CPU", got.data(), ref.data(), ref.size(),
                 1e-2, 0.1);
    if (fused) {
      GuardedBuffer<float> dq32(q.size()), dlat(size_t(T) * 576), dw(512);
      GuardedBuffer<uint16_t> dqf(q.size()), dqabs2(size_t(T) * H * 512), dout2(ref.size());
      GuardedBuffer<uint16_t> dscratch(fp8 ? 1 : cache_n);
      GuardedBuffer<uint8_t> dscratch8(fp8 ? f8.bytes.size() : 1);
      GuardedBuffer<int> dcu(S + 1), dctx(S);
      dq32.upload(q_f);  // bf16 values: q32 rounds back to q exactly
      dlat.upload(random_f32(rng, size_t(T) * 576, -2.f, 2.f));
      dw.upload(random_f32(rng, 512, 0.5f, 1.5f));
      dcu.upload(b.cu);
      dctx.upload(b.ctx);
      dqf.poison();
      dqabs2.poison();
      dout2.poison();
      du.poison();
      dpart.poison();
      cuda::MlaQPrepParams qp;
      qp.num_tokens = T, qp.num_heads = H, qp.q32 = dq32.data();
      qp.kv_b = reinterpret_cast<bf16*>(dkvb.data()), qp.q = dev<bf16>(dqf), qp.q_abs = dev<bf16>(dqabs2);
      cuda::MlaCacheWriteParams& wp = qp.cache;
      wp.num_seqs = S, wp.num_tokens = T, wp.cu_seqlens = dcu.data(), wp.context_lens = dctx.data();
      wp.block_tables = dtab.data(), wp.max_blocks_per_seq = b.mb, wp.latent = dlat.data();
      wp.norm_weight = dw.data();
      wp.cache = fp8 ? nullptr : dev<bf16>(dscratch);
      wp.cache8 = fp8 ? dscratch8.data() : nullptr;
      cuda::run_mla_q_prep(qp, nullptr);
      cuda::MlaAttnParams fp = ap;
      fp.q_abs = dev<bf16>(dqabs2), fp.q = dev<bf16>(dqf);
      fp.items = reinterpret_cast<const cuda::MlaWorkItem*>(di1.data());
      fp.num_items = int(plan.items1.size());
      cuda::run_mla_attention(fp, 1, nullptr);
      fp.items = reinterpret_cast<const cuda::MlaWorkItem*>(di4.data());
      fp.num_items = int(plan.items4.size());
      cuda::run_mla_attention(fp, 4, nullptr);
      cuda::MlaUvParams up;
      up.num_tokens = T, up.num_heads = H, up.split_base = dsb.data(), up.num_splits = dns.data();
      up.partials = dpart.data(), up.u = dev<bf16>(du), up.kv_b = qp.kv_b, up.out = dev<bf16>(dout2);
      cuda::run_mla_uv(up, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_EQ(dqf.to_host(), q) << desc << ": fused q rounding";
      auto got2 = bf16_to_float(dout2.to_host());
      expect_close(desc + " fused chain vs CPU", got2.data(), ref.data(), ref.size(), 1e-2, 0.1);
      expect_close(desc + " fused vs GEMM chain", got2.data(), got.data(), ref.size(), 1e-2, 0.05);
      EXPECT_TRUE(dqf.guards_intact() && dqabs2.guards_intact() && dout2.guards_intact() &&
                  dscratch.guards_intact() && dscratch8.guards_intact());
    }
    if (fp8) continue;
    // u of the two kernel families: each is within bf16 rounding (~2e-3 relative) of the exact u.
    auto u_tc = bf16_to_float(u_path[path]), u_cc = bf16_to_float(u_path[0]);
    expect_close(desc + " u " + path_name[path] + " vs CUDA cores", u_tc.data(), u_cc.data(),
                 u_tc.size(), 1e-2, 0.05);
  }
  EXPECT_TRUE(dout.guards_intact() && du.guards_intact() && dqabs.guards_intact() &&
              dpart.guards_intact() && dsb.guards_intact() && dns.guards_intact());
  // The cache is read-only here.
  EXPECT_EQ(dcache.to_host(), cache);
  if (fp8) {
    EXPECT_EQ(dcache8.to_host(), f8.bytes);
  }
}
#endif

TEST(MlaGpu, AttentionMixedPrefillDecode) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  const std::vector<Seq> mixed = {{1, 1}, {7, 7}, {1, 130}, {65, 200}, {63, 63}, {64, 128}, {1, 64}};
  for (int H : {2, 10, 32}) run_chain(mixed, H, 100 + H);
#endif
}

TEST(MlaGpu, AttentionLongPrefill) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  run_chain({{769, 769}}, 8, 3);
  run_chain({{65, 1000}, {1, 1}}, 4, 4);
#endif
}

// The tensor-core prefill path (4 tokens × 16 heads per CTA) at the odd sizes of style.md, with
// history before the new tokens (chunked prefill), several sequences per step, KV splits, and the
// head counts of tensor parallelism (32 / 16 / 2 / 1 heads per GPU).
TEST(MlaGpu, PrefillTensorCoresOddShapes) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  uint32_t seed = 20;
  for (int H : {32, 16, 2, 1}) {
    run_chain({{1, 1}, {7, 7}, {63, 63}, {64, 64}, {65, 65}}, H, seed++);
    run_chain({{769, 769}}, H, seed++);
    run_chain({{65, 1000}, {7, 300}, {64, 129}, {1, 77}}, H, seed++);  // history before new tokens
    run_chain({{2, 2049}, {3, 515}}, H, seed++);                       // few items: KV splits
  }
#endif
}

TEST(MlaGpu, DecodeSplitKv) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  run_chain({{1, 5000}}, 32, 5);               // batch 1: split over the KV length
  run_chain({{1, 3000}, {1, 77}, {1, 1025}}, 32, 6);
  run_chain({{1, 2049}, {2, 700}}, 2, 7);      // splits in a 2-query item too
#endif
}

// The tensor-core decode kernel (all heads of the rank in one CTA) through the fixed-shape decode
// plan of CUDA-graph steps: batches 1, 3 and 64, contexts at the tile and block edges, the head
// counts of tensor parallelism (32 / 16 / 8 per GPU) and the smallest (1: 31 zero columns of the
// N = 32 MMA), unwritten (NaN) rows after every context's end.
TEST(MlaGpu, DecodeTensorCores) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  const std::vector<int> ctxs = {1, 63, 64, 65, 769, 4097};
  uint32_t seed = 200;
  for (int H : {32, 16, 8, 1}) {
    for (int L : ctxs) run_chain({{1, L}}, H, seed++, PlanKind::kDecode);
    for (size_t i = 0; i < ctxs.size(); i += 3)
      run_chain({{1, ctxs[i]}, {1, ctxs[i + 1]}, {1, ctxs[i + 2]}}, H, seed++, PlanKind::kDecode);
    std::vector<Seq> b64;
    for (int s = 0; s < 64; ++s) b64.push_back({1, ctxs[s % ctxs.size()] + (s / 6) % 3});
    run_chain(b64, H, seed++, PlanKind::kDecode);
  }
  // Batch 1 on 132 SMs with every split slot busy (129 splits of 128 positions, the last 116), 105 of
  // 129 busy (splits of 192), and an eager plan with 219 splits of one token.
  run_chain({{1, 16500}}, 32, seed++, PlanKind::kDecode);
  run_chain({{1, 20000}}, 32, seed++, PlanKind::kDecode);
  run_chain({{1, 70000}}, 4, seed++, PlanKind::kEager);
  // More heads than one CTA takes (two CTAs of 32 heads per item).
  run_chain({{1, 3000}, {1, 5}}, 40, seed++, PlanKind::kDecode);
  // The running maximum moving inside KV ranges (run_chain's ramp): batch 64 (few splits per
  // sequence), a split batch 1, the tensor-parallel head counts.
  for (int H : {32, 16, 4}) {
    std::vector<Seq> b64;
    for (int s = 0; s < 64; ++s) b64.push_back({1, 700 + 37 * s});
    run_chain(b64, H, seed++, PlanKind::kDecode, false, true);
    run_chain({{1, 9000}}, H, seed++, PlanKind::kDecode, false, true);
  }
#endif
}

TEST(MlaGpu, CacheWriteNormsAndPlaces) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(11);
  for (auto seqs : {std::vector<Seq>{{1, 1}}, std::vector<Seq>{{7, 70}, {1, 64}, {65, 65}, {1, 129}},
                    std::vector<Seq>{{769, 800}}}) {
    PagedBatch b = make_batch(rng, seqs);
    const int S = int(seqs.size()), T = b.cu.back();
    const size_t cache_n = size_t(b.num_blocks) * 64 * 576;
    auto cache = random_bf16(rng, cache_n, -1.f, 1.f);
    auto latent = random_f32(rng, size_t(T) * 576, -3.f, 3.f);
    auto w = random_f32(rng, 512, 0.5f, 1.5f);
    std::vector<float> normed = latent, cache_ref = bf16_to_float(cache);
    for (int t = 0; t < T; ++t) cpu::rmsnorm(&normed[size_t(t) * 576], w.data(), &normed[size_t(t) * 576], 1, 512, 1e-5f);
    cpu::MlaCacheWriteParams cp;
    cp.num_seqs = S, cp.cu_seqlens = b.cu.data(), cp.context_lens = b.ctx.data();
    cp.block_tables = b.tables.data(), cp.max_blocks_per_seq = b.mb, cp.num_blocks = b.num_blocks;
    cp.latent = normed.data(), cp.cache = cache_ref.data();
    cpu::mla_cache_write(cp);
    GuardedBuffer<uint16_t> dcache(cache_n);
    GuardedBuffer<float> dlat(latent.size()), dw(512);
    GuardedBuffer<int> dcu(S + 1), dctx(S), dtab(b.tables.size());
    dcache.upload(cache);
    dlat.upload(latent);
    dw.upload(w);
    dcu.upload(b.cu);
    dctx.upload(b.ctx);
    dtab.upload(b.tables);
    cuda::MlaCacheWriteParams p;
    p.num_seqs = S, p.num_tokens = T, p.cu_seqlens = dcu.data(), p.context_lens = dctx.data();
    p.block_tables = dtab.data(), p.max_blocks_per_seq = b.mb, p.latent = dlat.data();
    p.norm_weight = dw.data(), p.cache = reinterpret_cast<cuda::bf16*>(dcache.data());
    cuda::run_mla_cache_write(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    auto got = bf16_to_float(dcache.to_host());
    expect_close(str("cache write T", T), got.data(), cache_ref.data(), got.size(), 4e-3, 0.05);
    EXPECT_TRUE(dcache.guards_intact());
  }
#endif
}

// fp8 cache write: codes and scales against cpu::mla_fp8_quantize of the CPU's normed latent.
// The two RMSNorms differ in the last bits, so a value next to a rounding boundary of e4m3 may
// take the neighbouring code (measured: see the printed count); any other difference, a scale
// off by more than float rounding, k_pe not its bf16, or a byte of another record touched fails.
TEST(MlaGpu, Fp8CacheWriteQuantises) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(12);
  for (auto seqs :
       {std::vector<Seq>{{1, 1}}, std::vector<Seq>{{7, 70}, {1, 64}, {65, 65}, {1, 129}},
        std::vector<Seq>{{769, 800}}}) {
    PagedBatch b = make_batch(rng, seqs);
    const int S = int(seqs.size()), T = b.cu.back();
    const size_t rows = size_t(b.num_blocks) * 64;
    std::vector<uint8_t> cache(rows * kFp8Record);
    for (auto& x : cache) x = uint8_t(rng());
    auto latent = random_f32(rng, size_t(T) * 576, -3.f, 3.f);
    for (int t = 0; t < T; ++t)  // groups of different magnitudes: scales 1/16 .. 16 apart
      for (int i = 0; i < 512; ++i)
        latent[size_t(t) * 576 + i] *= std::ldexp(1.f, 2 * ((t + i / 128) % 5 - 2));
    auto w = random_f32(rng, 512, 0.5f, 1.5f);
    GuardedBuffer<uint8_t> dcache(cache.size());
    GuardedBuffer<float> dlat(latent.size()), dw(512);
    GuardedBuffer<int> dcu(S + 1), dctx(S), dtab(b.tables.size());
    dcache.upload(cache);
    dlat.upload(latent);
    dw.upload(w);
    dcu.upload(b.cu);
    dctx.upload(b.ctx);
    dtab.upload(b.tables);
    cuda::MlaCacheWriteParams p;
    p.num_seqs = S, p.num_tokens = T, p.cu_seqlens = dcu.data(), p.context_lens = dctx.data();
    p.block_tables = dtab.data(), p.max_blocks_per_seq = b.mb, p.latent = dlat.data();
    p.norm_weight = dw.data(), p.cache8 = dcache.data();
    cuda::run_mla_cache_write(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<uint8_t> got = dcache.to_host();
    std::vector<uint8_t> want = cache;  // untouched records keep their bytes
    size_t neighbours = 0, others = 0;
    double worst_scale = 0;
    for (int s = 0; s < S; ++s)
      for (int i = 0; i < b.cu[s + 1] - b.cu[s]; ++i) {
        const int t = b.cu[s] + i, pos = b.ctx[s] - (b.cu[s + 1] - b.cu[s]) + i;
        const size_t row = size_t(b.tables[size_t(s) * b.mb + pos / 64]) * 64 + pos % 64;
        float normed[576];
        cpu::rmsnorm(&latent[size_t(t) * 576], w.data(), normed, 1, 512, 1e-5f);
        uint8_t* rec = want.data() + row * kFp8Record;
        float scales[4];
        cpu::mla_fp8_quantize(normed, rec, scales);
        std::memcpy(rec + 640, scales, 16);
        for (int c = 0; c < 64; ++c) {
          const uint16_t pe = f32_to_bf16(latent[size_t(t) * 576 + 512 + c]);
          std::memcpy(rec + 512 + 2 * c, &pe, 2);
        }
        uint8_t* g = got.data() + row * kFp8Record;  // neighbouring codes set to want's below
        float gs[4];
        std::memcpy(gs, g + 640, 16);
        for (int k = 0; k < 4; ++k)
          worst_scale = std::max(worst_scale, std::fabs(double(gs[k]) - scales[k]) / scales[k]);
        for (int c = 0; c < 512; ++c) {
          if (g[c] == rec[c]) continue;
          // Neighbouring codes: same sign, magnitudes one step apart (e4m3 codes are ordered).
          const bool next =
              (g[c] & 0x80) == (rec[c] & 0x80) && std::abs((g[c] & 0x7f) - (rec[c] & 0x7f)) == 1;
          ++(next ? neighbours : others);
          g[c] = rec[c];  // then the rest compares bytewise
        }
        std::memcpy(g + 640, scales, 16);  // checked above
      }
    std::printf("    fp8 cache write T%d: %zu of %d codes one step off, worst scale error %.2g\n",
                T, neighbours, T * 512, worst_scale);
    EXPECT_EQ(others, 0u);
    EXPECT_LE(neighbours, size_t(T) * 512 / 100 + 1);
    EXPECT_LE(worst_scale, 2e-6);
    EXPECT_TRUE(got == want) << "k_pe or an untouched record differs";
    EXPECT_TRUE(dcache.guards_intact());
  }
#endif
}

// The fp8 cache through every tensor-core attention kernel against the CPU on the same decoded
// values: the decode kernels through the CUDA-graph decode plan at batch 1, 3 and 64, odd
// contexts, every split slot busy, unwritten records (NaN codes and scales) past each context
// (batch 1 and 3: the converter kernel; the batch-64 cases, table widths 48-65 blocks over 128
// items, average >= kDec8MinTiles tiles: the register-operand kernel, mla_decode_fp8.cuh), also
// with the scores from k_pe alone; and the prefill items (4 tokens per CTA, eager plans) with history and splits.
TEST(MlaGpu, Fp8DecodeTensorCores) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  const std::vector<int> ctxs = {1, 63, 64, 65, 769, 4097};
  uint32_t seed = 500;
  for (int H : {32, 8, 1}) {
    for (int L : ctxs) run_chain({{1, L}}, H, seed++, PlanKind::kDecode, true);
    run_chain({{1, 63}, {1, 769}, {1, 65}}, H, seed++, PlanKind::kDecode, true);
    std::vector<Seq> b64;
    for (int s = 0; s < 64; ++s) b64.push_back({1, ctxs[s % ctxs.size()] + (s / 6) % 3});
    run_chain(b64, H, seed++, PlanKind::kDecode, true);
  }
  run_chain({{1, 16500}}, 32, seed++, PlanKind::kDecode, true);
  run_chain({{1, 20000}}, 32, seed++, PlanKind::kDecode, true);
  run_chain({{1, 3000}, {1, 5}}, 40, seed++, PlanKind::kDecode, true);
  // Tensor-parallel head counts; the running maximum moving inside KV ranges (run_chain's ramp).
  for (int H : {16, 4}) run_chain({{1, 65}, {1, 4097}, {1, 1}}, H, seed++, PlanKind::kDecode, true);
  for (int H : {32, 16, 4}) {
    std::vector<Seq> b64;
    for (int s = 0; s < 64; ++s) b64.push_back({1, 700 + 37 * s});
    run_chain(b64, H, seed++, PlanKind::kDecode, true, true);
    run_chain({{1, 9000}}, H, seed++, PlanKind::kDecode, true, true);
  }
  // Scores from k_pe alone (q_abs zero) through both fp8 decode kernels.
  std::vector<Seq> b64;
  for (int s = 0; s < 64; ++s) b64.push_back({1, 1500 + 41 * s});
  run_chain(b64, 32, seed++, PlanKind::kDecode, true, false, false, true);
  run_chain({{1, 3000}}, 32, seed++, PlanKind::kDecode, true, false, false, true);
#endif
}

// The fused small-decode chain (mla_layer.h) inside the whole chain: decode plans at batch 1, 3
// and 4 (split and unsplit tokens, every split slot busy), an eager plan with a 3-token item
// (items4) beside a split decode token, both caches, the tensor-parallel head counts and odd ones.
TEST(MlaGpu, LayerFusedChain) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  uint32_t seed = 700;
  for (bool fp8 : {false, true})
    for (int H : {32, 16, 7, 1}) {
      for (int L : {1, 65, 4097}) run_chain({{1, L}}, H, seed++, PlanKind::kDecode, fp8, false, true);
      run_chain({{1, 63}, {1, 769}, {1, 130}}, H, seed++, PlanKind::kDecode, fp8, false, true);
      run_chain({{1, 5}, {1, 3000}, {1, 64}, {1, 257}}, H, seed++, PlanKind::kDecode, fp8, false,
                true);
      run_chain({{3, 70}, {1, 5000}}, H, seed++, PlanKind::kEager, fp8, false, true);
    }
  run_chain({{1, 16500}}, 32, seed++, PlanKind::kDecode, false, false, true);  // 129 busy splits
  run_chain({{1, 9000}}, 32, seed++, PlanKind::kDecode, false, true, true);    // moving maximum
#endif
}

#if KIMI_HAVE_CUDA
// CPU reference of run_mla_q_prep's q and q_abs, from the same params with host pointers (the
// cache write is run_mla_cache_write's, compared below): q = bf16(q32), q_abs = the exact sum over
// bf16 q_nope and W_UK (exact, before the GPU's rounding to bf16; abs: Σ |terms|, for the bound).
void ref_q_prep(const cuda::MlaQPrepParams& p, std::vector<uint16_t>& q, std::vector<double>& q_abs,
                std::vector<double>& abs_sum) {
  const int T = p.num_tokens, H = p.num_heads;
  const uint16_t* kvb = reinterpret_cast<const uint16_t*>(p.kv_b);
  q.resize(size_t(T) * H * 192);
  q_abs.assign(size_t(T) * H * 512, 0.0);
  abs_sum.assign(q_abs.size(), 0.0);
  for (size_t i = 0; i < q.size(); ++i) q[i] = f32_to_bf16(p.q32[i]);
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < H; ++h)
      for (int n = 0; n < 512; ++n) {
        double s = 0, a = 0;
        for (int k = 0; k < 128; ++k) {
          const double x = double(bf16_to_f32(q[(size_t(t) * H + h) * 192 + k])) *
                           bf16_to_f32(kvb[(size_t(h) * 256 + k) * 512 + n]);
          s += x;
          a += std::fabs(x);
        }
        q_abs[(size_t(t) * H + h) * 512 + n] = s;
        abs_sum[(size_t(t) * H + h) * 512 + n] = a;
      }
}

// CPU reference of run_mla_uv from the same params (host pointers): per (token, head) the split
// partials merged exactly (u = Σ e^{m_k − M} u_k / Σ e^{m_k − M} l_k, empty splits m = −inf
// weigh 0) and rounded to bf16, or the given u; out = W_UV(h) u, exact, rounded to bf16.
std::vector<uint16_t> ref_uv(const cuda::MlaUvParams& p) {
  const int T = p.num_tokens, H = p.num_heads;
  const uint16_t* kvb = reinterpret_cast<const uint16_t*>(p.kv_b);
  const uint16_t* u_in = reinterpret_cast<const uint16_t*>(p.u);
  std::vector<uint16_t> out(size_t(T) * H * 128);
  std::vector<double> u(512);
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < H; ++h) {
      const int ns = p.num_splits[t];
      if (ns > 0) {
        auto part = [&](int k) {
          return p.partials + (size_t(p.split_base[t] + k) * H + h) * cuda::kMlaPartialStride;
        };
        double M = -INFINITY, den = 0;
        for (int k = 0; k < ns; ++k) M = std::max(M, double(part(k)[512]));
        std::fill(u.begin(), u.end(), 0.0);
        for (int k = 0; k < ns; ++k) {
          const double w = std::isinf(part(k)[512]) ? 0.0 : std::exp(double(part(k)[512]) - M);
          den += w * part(k)[513];
          for (int c = 0; c < 512; ++c) u[c] += w * part(k)[c];
        }
        for (int c = 0; c < 512; ++c) u[c] = bf16_to_f32(f32_to_bf16(float(den > 0 ? u[c] / den : 0.0)));
      } else {
        for (int c = 0; c < 512; ++c) u[c] = bf16_to_f32(u_in[(size_t(t) * H + h) * 512 + c]);
      }
      for (int n = 0; n < 128; ++n) {
        double s = 0;
        for (int c = 0; c < 512; ++c) s += u[c] * bf16_to_f32(kvb[(size_t(h) * 256 + 128 + n) * 512 + c]);
        out[(size_t(t) * H + h) * 128 + n] = f32_to_bf16(float(s));
      }
    }
  return out;
}

#endif

// run_mla_q_prep against its CPU reference on random inputs: q bit for bit, q_abs within one bf16
// step of the exactly rounded sum (fp32 summation order), at odd head counts (H < T too: the
// cache-write CTAs past the heads), T = 1..4 with a 3-token sequence; its cache rows equal
// run_mla_cache_write's bit for bit (bf16 and fp8) and the bf16 rows match the CPU cache write.
TEST(MlaGpu, LayerQPrepMatchesCpu) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(31);
  const std::vector<std::vector<Seq>> batches = {
      {{1, 1}}, {{1, 70}, {1, 64}, {1, 129}}, {{3, 70}, {1, 5000}}, {{1, 4097}, {1, 2}}};
  for (int H : {32, 7, 1})
    for (const auto& seqs : batches)
      for (bool fp8 : {false, true}) {
        PagedBatch b = make_batch(rng, seqs);
        const int S = int(seqs.size()), T = b.cu.back();
        const size_t rows = size_t(b.num_blocks) * 64, row_bytes = fp8 ? kFp8Record : 1152;
        std::vector<uint8_t> cache(rows * row_bytes);
        for (auto& x : cache) x = uint8_t(rng());
        auto q32 = random_f32(rng, size_t(T) * H * 192, -1.5f, 1.5f);
        auto kv_b = random_bf16(rng, size_t(H) * 256 * 512, -0.25f, 0.25f);
        auto latent = random_f32(rng, size_t(T) * 576, -3.f, 3.f);
        auto w = random_f32(rng, 512, 0.5f, 1.5f);
        GuardedBuffer<uint8_t> dcache(cache.size()), dcache_ref(cache.size());
        GuardedBuffer<float> dq32(q32.size()), dlat(latent.size()), dw(512);
        GuardedBuffer<uint16_t> dkvb(kv_b.size()), dq(q32.size()), dqabs(size_t(T) * H * 512);
        GuardedBuffer<int> dcu(S + 1), dctx(S), dtab(b.tables.size());
        dcache.upload(cache);
        dcache_ref.upload(cache);
        dq32.upload(q32);
        dlat.upload(latent);
        dw.upload(w);
        dkvb.upload(kv_b);
        dcu.upload(b.cu);
        dctx.upload(b.ctx);
        dtab.upload(b.tables);
        dq.poison();
        dqabs.poison();
        cuda::MlaQPrepParams p;
        p.num_tokens = T, p.num_heads = H, p.q32 = dq32.data(), p.kv_b = dev<bf16>(dkvb);
        p.q = dev<bf16>(dq), p.q_abs = dev<bf16>(dqabs);
        cuda::MlaCacheWriteParams& c = p.cache;
        c.num_seqs = S, c.num_tokens = T, c.cu_seqlens = dcu.data(), c.context_lens = dctx.data();
        c.block_tables = dtab.data(), c.max_blocks_per_seq = b.mb, c.latent = dlat.data();
        c.norm_weight = dw.data();
        c.cache = fp8 ? nullptr : reinterpret_cast<bf16*>(dcache.data());
        c.cache8 = fp8 ? dcache.data() : nullptr;
        cuda::run_mla_q_prep(p, nullptr);
        cuda::MlaCacheWriteParams cr = c;
        cr.cache = fp8 ? nullptr : reinterpret_cast<bf16*>(dcache_ref.data());
        cr.cache8 = fp8 ? dcache_ref.data() : nullptr;
        cuda::run_mla_cache_write(cr, nullptr);
        CUDA_CHECK(cudaDeviceSynchronize());

        cuda::MlaQPrepParams hp = p;  // the same params on the host
        hp.q32 = q32.data(), hp.kv_b = reinterpret_cast<const bf16*>(kv_b.data());
        std::vector<uint16_t> q_ref;
        std::vector<double> qabs_ref, qabs_abs;
        ref_q_prep(hp, q_ref, qabs_ref, qabs_abs);
        const std::string what = str("q prep H", H, " T", T, fp8 ? " fp8" : " bf16");
        EXPECT_EQ(dq.to_host(), q_ref) << what << ": q";
        // Each q_abs within its bf16 rounding (2^-9 relative, a little more for the fp32 sums)
        // of the exact sum, plus fp32 summation error (128 terms: well under 1e-5 of Σ|terms|).
        const auto qabs = dqabs.to_host();
        size_t bad = 0, first = 0, rounded_off = 0;
        for (size_t i = 0; i < qabs.size(); ++i) {
          const double got = bf16_to_f32(qabs[i]), want = qabs_ref[i];
          if (std::fabs(got - want) > std::ldexp(std::fabs(want), -8) + 1e-5 * qabs_abs[i])
            if (bad++ == 0) first = i;
          rounded_off += qabs[i] != f32_to_bf16(float(want));
        }
        std::printf("    %s: q_abs %zu of %zu not the exact sum's bf16 rounding, %zu out of bounds\n",
                    what.c_str(), rounded_off, qabs.size(), bad);
        EXPECT_EQ(bad, 0u) << what << ": first at " << first;
        EXPECT_LE(rounded_off, qabs.size() / 100) << what;
        // Batch invariance: token 0 alone gives the same bits.
        if (T > 1) {
          GuardedBuffer<uint16_t> dq1(size_t(H) * 192), dqabs1(size_t(H) * 512);
          cuda::MlaQPrepParams p1 = p;
          p1.num_tokens = 1, p1.cache.num_tokens = 1, p1.q = dev<bf16>(dq1), p1.q_abs = dev<bf16>(dqabs1);
          cuda::run_mla_q_prep(p1, nullptr);
          CUDA_CHECK(cudaDeviceSynchronize());
          const auto q1 = dq1.to_host(), qabs1 = dqabs1.to_host();
          EXPECT_TRUE(std::equal(qabs1.begin(), qabs1.end(), qabs.begin())) << what << ": T = 1 differs";
          EXPECT_TRUE(std::equal(q1.begin(), q1.end(), q_ref.begin())) << what << ": T = 1 q";
        }
        const auto got_cache = dcache.to_host();
        EXPECT_TRUE(got_cache == dcache_ref.to_host()) << what << ": cache rows differ from run_mla_cache_write";
        EXPECT_TRUE(got_cache != cache) << what << ": no cache row written";
        if (!fp8) {  // the rows against the CPU cache write (normed on the CPU)
          std::vector<float> normed = latent, cache_ref(rows * 576), got_f(rows * 576);
          for (int t = 0; t < T; ++t)
            cpu::rmsnorm(&normed[size_t(t) * 576], w.data(), &normed[size_t(t) * 576], 1, 512, 1e-5f);
          for (size_t i = 0; i < rows * 576; ++i) {
            uint16_t x, y;
            std::memcpy(&x, &cache[2 * i], 2);
            std::memcpy(&y, &got_cache[2 * i], 2);
            cache_ref[i] = bf16_to_f32(x);
            got_f[i] = bf16_to_f32(y);
          }
          cpu::MlaCacheWriteParams cp;
          cp.num_seqs = S, cp.cu_seqlens = b.cu.data(), cp.context_lens = b.ctx.data();
          cp.block_tables = b.tables.data(), cp.max_blocks_per_seq = b.mb, cp.num_blocks = b.num_blocks;
          cp.latent = normed.data(), cp.cache = cache_ref.data();
          cpu::mla_cache_write(cp);
          std::vector<float> got_rows, ref_rows;  // the new tokens' rows (the rest: bitwise above)
          for (int q = 0; q < S; ++q)
            for (int pos = b.ctx[q] - (b.cu[q + 1] - b.cu[q]); pos < b.ctx[q]; ++pos) {
              const size_t row = size_t(b.tables[size_t(q) * b.mb + pos / 64]) * 64 + pos % 64;
              got_rows.insert(got_rows.end(), &got_f[row * 576], &got_f[row * 576] + 576);
              ref_rows.insert(ref_rows.end(), &cache_ref[row * 576], &cache_ref[row * 576] + 576);
            }
          ASSERT_EQ(got_rows.size(), size_t(T) * 576);
          expect_close(what + " cache rows vs CPU", got_rows.data(), ref_rows.data(), got_rows.size(),
                       4e-3, 0.05);
        }
        EXPECT_TRUE(dq.guards_intact() && dqabs.guards_intact() && dcache.guards_intact());
      }
#endif
}

// run_mla_uv against its CPU reference on random partials: tokens with no split (u as given),
// 1, 2, 32, 129 and 300 splits, some empty (m = −inf, l = 0), scattered slot bases, odd head
// counts, T = 1..4.
TEST(MlaGpu, LayerUvMatchesCpu) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  std::mt19937 rng(41);
  const std::vector<std::vector<int>> split_sets = {{0}, {129}, {1, 300}, {32, 0, 2}, {5, 129, 0, 33}};
  for (int H : {32, 5, 1})
    for (const auto& splits : split_sets) {
      const int T = int(splits.size());
      std::vector<int> base(T), ns = splits;
      int slots = 3;  // unused slots first: bases are not zero
      for (int t = 0; t < T; ++t) {
        base[t] = ns[t] > 0 ? slots : -1;
        slots += ns[t] + 1;
      }
      std::vector<float> parts(size_t(slots) * H * cuda::kMlaPartialStride);
      std::uniform_real_distribution<float> um(-6.f, 6.f), ul(0.5f, 40.f), uu(-30.f, 30.f);
      for (int k = 0; k < slots; ++k)
        for (int h = 0; h < H; ++h) {
          float* P = &parts[(size_t(k) * H + h) * cuda::kMlaPartialStride];
          const bool empty = (k + h) % 7 == 3;
          for (int c = 0; c < 512; ++c) P[c] = empty ? 0.f : uu(rng);
          P[512] = empty ? -INFINITY : um(rng);
          P[513] = empty ? 0.f : ul(rng);
          P[514] = P[515] = 0.f;
        }
      auto u = random_bf16(rng, size_t(T) * H * 512, -1.f, 1.f);
      auto kv_b = random_bf16(rng, size_t(H) * 256 * 512, -0.25f, 0.25f);
      GuardedBuffer<float> dparts(parts.size());
      GuardedBuffer<uint16_t> du(u.size()), dkvb(kv_b.size()), dout(size_t(T) * H * 128);
      GuardedBuffer<int> dbase(T), dns(T);
      dparts.upload(parts);
      du.upload(u);
      dkvb.upload(kv_b);
      dbase.upload(base);
      dns.upload(ns);
      dout.poison();
      cuda::MlaUvParams p;
      p.num_tokens = T, p.num_heads = H, p.split_base = dbase.data(), p.num_splits = dns.data();
      p.partials = dparts.data(), p.u = dev<bf16>(du), p.kv_b = dev<bf16>(dkvb), p.out = dev<bf16>(dout);
      cuda::run_mla_uv(p, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      cuda::MlaUvParams hp = p;  // the same params on the host
      hp.split_base = base.data(), hp.num_splits = ns.data(), hp.partials = parts.data();
      hp.u = reinterpret_cast<const bf16*>(u.data()), hp.kv_b = reinterpret_cast<const bf16*>(kv_b.data());
      const auto want = bf16_to_float(ref_uv(hp)), got = bf16_to_float(dout.to_host());
      std::string what = str("uv H", H, " splits");
      for (int x : ns) what += str(" ", x);
      // u within a bf16 step of the exact merge: out ~2e-3 relative at worst.
      expect_close(what, got.data(), want.data(), got.size(), 3e-3, 0.05);
      EXPECT_TRUE(dout.guards_intact() && dparts.guards_intact());
      // Batch invariance: the last token alone gives the same bits.
      GuardedBuffer<uint16_t> dout1(size_t(H) * 128);
      cuda::MlaUvParams p1 = p;
      p1.num_tokens = 1, p1.split_base = dbase.data() + T - 1, p1.num_splits = dns.data() + T - 1;
      p1.u = dev<bf16>(du) + size_t(T - 1) * H * 512, p1.out = dev<bf16>(dout1);
      cuda::run_mla_uv(p1, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      const auto all = dout.to_host(), one = dout1.to_host();
      EXPECT_TRUE(std::equal(one.begin(), one.end(), all.begin() + size_t(T - 1) * H * 128))
          << what << ": the last token alone differs";
      EXPECT_EQ(dparts.to_host(), parts) << what << ": partials are read-only";
    }
#endif
}

// The fused chain's launchers refuse what they cannot run, before touching the device (host
// checks: this runs without a GPU).
TEST(MlaGpu, LayerLaunchersRefuseBadArguments) {
#if KIMI_HAVE_CUDA
  int i = 0;
  float f = 0.f;
  bf16 b{};
  cuda::MlaQPrepParams q;
  q.num_tokens = 1, q.num_heads = 32, q.q32 = &f, q.kv_b = &b, q.q = &b, q.q_abs = &b;
  q.cache.num_seqs = 1, q.cache.num_tokens = 1, q.cache.cu_seqlens = &i, q.cache.context_lens = &i;
  q.cache.block_tables = &i, q.cache.max_blocks_per_seq = 1, q.cache.latent = &f;
  q.cache.norm_weight = &f, q.cache.cache = &b;
  const auto run_q = [](const cuda::MlaQPrepParams& bad) { cuda::run_mla_q_prep(bad, nullptr); };
  EXPECT_TRUE(
      contains(error_with(q, run_q, [](auto& p) { p.num_tokens = cuda::kMlaLayerMaxTokens + 1; }),
               "at most"));
  EXPECT_TRUE(contains(error_with(q, run_q, [](auto& p) { p.num_heads = 0; }), "H 0"));
  EXPECT_TRUE(contains(error_with(q, run_q, [](auto& p) { p.q32 = nullptr; }), "null pointer"));
  EXPECT_TRUE(contains(error_with(q, run_q, [](auto& p) { p.cache.num_tokens = 2; }),
                       "cache write of 2 tokens"));
  EXPECT_TRUE(contains(
      error_with(q, run_q, [&](auto& p) { p.cache.cache8 = reinterpret_cast<uint8_t*>(&i); }),
      "both cache and cache8"));
  EXPECT_TRUE(
      contains(error_with(q, run_q, [](auto& p) { p.cache.cache = nullptr; }), "null pointer"));
  EXPECT_EQ(error_with(q, run_q, [](auto& p) { p.num_tokens = 0; }),
            "");  // nothing to do: no launch

  cuda::MlaUvParams u;
  u.num_tokens = 1, u.num_heads = 32, u.split_base = &i, u.num_splits = &i, u.partials = &f;
  u.u = &b, u.kv_b = &b, u.out = &b;
  const auto run_u = [](const cuda::MlaUvParams& bad) { cuda::run_mla_uv(bad, nullptr); };
  EXPECT_TRUE(contains(error_with(u, run_u, [](auto& p) { p.num_tokens = -1; }), "mla uv: T -1"));
  EXPECT_TRUE(
      contains(error_with(u, run_u, [](auto& p) { p.num_tokens = cuda::kMlaLayerMaxTokens + 1; }),
               "at most"));
  EXPECT_TRUE(
      contains(error_with(u, run_u, [](auto& p) { p.partials = nullptr; }), "null pointer"));
  EXPECT_EQ(error_with(u, run_u, [](auto& p) { p.num_tokens = 0; }), "");
#endif
}

// The cache write and the split merge refuse bad arguments on the host as well.
TEST(MlaGpu, CacheWriteAndCombineRefuseBadArguments) {
#if KIMI_HAVE_CUDA
  int i = 0;
  float f = 0.f;
  bf16 b{};
  cuda::MlaCacheWriteParams w;
  w.num_seqs = 1, w.num_tokens = 1, w.cu_seqlens = &i, w.context_lens = &i, w.block_tables = &i;
  w.max_blocks_per_seq = 1, w.latent = &f, w.norm_weight = &f, w.cache = &b;
  const auto run_w = [](const cuda::MlaCacheWriteParams& bad) {
    cuda::run_mla_cache_write(bad, nullptr);
  };
  EXPECT_TRUE(contains(error_with(w, run_w, [](auto& p) { p.num_seqs = -1; }), "cache write S -1"));
  EXPECT_TRUE(contains(error_with(w, run_w, [](auto& p) { p.max_blocks_per_seq = 0; }),
                       "no sequences/blocks"));
  EXPECT_TRUE(contains(error_with(w, run_w, [](auto& p) { p.latent = nullptr; }), "null pointer"));
  EXPECT_TRUE(
      contains(error_with(w, run_w, [&](auto& p) { p.cache8 = reinterpret_cast<uint8_t*>(&i); }),
               "both cache and cache8"));
  EXPECT_EQ(error_with(w, run_w, [](auto& p) { p.num_tokens = 0; }), "");
  cuda::MlaAttnParams a;
  a.num_tokens = 1, a.num_heads = 32, a.num_splits = &i, a.split_base = &i, a.u = &b;
  EXPECT_TRUE(
      contains(error_of([&] { cuda::run_mla_combine(a, nullptr); }), "mla combine: null pointer"));
#endif
}

TEST(MlaGpu, Fp8PrefillTensorCores) {
  KIMI_REQUIRE_GPU();
#if KIMI_HAVE_CUDA
  uint32_t seed = 600;
  for (int H : {32, 2}) {
    run_chain({{1, 1}, {7, 7}, {63, 63}, {64, 64}, {65, 65}}, H, seed++, PlanKind::kEager, true);
    run_chain({{65, 1000}, {7, 300}, {64, 129}, {1, 77}}, H, seed++, PlanKind::kEager, true);
    run_chain({{2, 2049}, {3, 515}}, H, seed++, PlanKind::kEager, true);
  }
#endif
}

}  // namespace
}  // namespace kimi::test

namespace kimi::test {
namespace {

#if KIMI_HAVE_CUDA
// The host plan covers every (query token, key position <= its position) exactly once, and
// splits only where the GPU would otherwise idle.
TEST(MlaPlan, CoversEveryCausalPairOnce) {
  std::mt19937 rng(12);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<int> cu{0}, ctx;
    const int S = 1 + int(rng() % 5);
    for (int s = 0; s < S; ++s) {
      const int n = rng() % 3 ? 1 : 1 + int(rng() % 70);
      const int L = n + int(rng() % 3000);
      cu.push_back(cu.back() + n);
      ctx.push_back(L);
    }
    const int T = cu.back();
    const int H = 1 + int(rng() % 32);
    cuda::MlaAttnPlan plan =
        cuda::make_mla_attn_plan(S, cu.data(), ctx.data(), H, 132, 1056, trial % 2 == 0);
    std::vector<std::vector<int>> seen(T);
    for (int s = 0; s < S; ++s)
      for (int t = cu[s]; t < cu[s + 1]; ++t) seen[t].assign(ctx[s] - (cu[s + 1] - t) + 1, 0);
    EXPECT_LE(plan.num_partials, 1056);
    for (auto* list : {&plan.items1, &plan.items4})
      for (const auto& it : *list) {
        ASSERT_GE(it.nq, 1);
        ASSERT_LE(it.nq, list == &plan.items1 ? 1 : 4);
        for (int i = 0; i < it.nq; ++i) {
          const int t = it.q_begin + i;
          EXPECT_EQ(it.split >= 0, plan.num_splits[t] > 0);
          if (it.split >= 0) {
            EXPECT_LT(it.split, plan.num_splits[t]);
          }
          for (int j = it.kv_begin; j < it.kv_end; ++j)
            if (j <= it.q_pos0 + i) ++seen[t].at(j);
        }
      }
    for (int t = 0; t < T; ++t)
      for (size_t j = 0; j < seen[t].size(); ++j)
        ASSERT_EQ(seen[t][j], 1) << "trial " << trial << " token " << t << " key " << j;
  }
}

// The fixed-shape decode plan (CUDA-graph replay): every sequence gets the same number of item
// slots and partial slots whatever its context, the busy slots cover [0, context) exactly once,
// idle slots (tensor cores only) have no range, and the partial slots fit.
TEST(MlaPlan, DecodePlanFixedShapeCoversContext) {
  std::mt19937 rng(13);
  for (bool tc : {false, true})
    for (int S : {1, 2, 3, 7, 64, 300})
      for (int H : {2, 32, 40}) {
        std::vector<int> ctx(S);
        for (int& c : ctx) c = 1 + int(rng() % (S <= 3 && rng() % 2 ? 300000 : 5000));
        if (S == 1) ctx[0] = rng() % 2 ? 1 : 1 << 20;
        const int ns = cuda::mla_decode_splits(S, H, 132, 1056, tc);
        cuda::MlaAttnPlan plan = cuda::make_mla_decode_plan(S, ctx.data(), H, 132, 1056, tc);
        const std::string what = str("tc ", tc, " S ", S, " H ", H);
        ASSERT_EQ(plan.items1.size(), size_t(S) * ns) << what;
        EXPECT_TRUE(plan.items4.empty());
        EXPECT_EQ(plan.num_partials, ns > 1 ? S * ns : 0) << what;
        EXPECT_LE(plan.num_partials, 1056);
        std::vector<std::vector<int>> seen(S);
        for (int s = 0; s < S; ++s) seen[s].assign(ctx[s], 0);
        for (size_t i = 0; i < plan.items1.size(); ++i) {
          const auto& it = plan.items1[i];
          ASSERT_EQ(it.seq, int(i) / ns) << what;  // fixed slots: ns per sequence, in order
          ASSERT_EQ(it.q_begin, it.seq);
          EXPECT_EQ(it.q_pos0, ctx[it.seq] - 1);
          const int nsplit = plan.num_splits[it.seq];
          if (it.nq == 0) {  // idle slot
            EXPECT_TRUE(tc) << what;
            EXPECT_EQ(it.kv_begin, it.kv_end);
            EXPECT_EQ(it.split, -1);
            continue;
          }
          ASSERT_EQ(it.nq, 1);
          EXPECT_EQ(it.split >= 0, nsplit > 0) << what;
          if (it.split >= 0) {
            EXPECT_LT(it.split, nsplit);
            EXPECT_LT(plan.split_base[it.seq] + it.split, plan.num_partials);
          }
          if (tc && nsplit > 0) {
            EXPECT_GE(it.kv_end - it.kv_begin, 1);
          }
          for (int j = it.kv_begin; j < it.kv_end; ++j) ++seen[it.seq].at(j);
        }
        for (int s = 0; s < S; ++s) {
          if (!tc) {
            EXPECT_EQ(plan.num_splits[s], ns > 1 ? ns : 0);
          }
          if (tc && plan.num_splits[s] > 0) {
            // Splits of at least kMlaDecodeMinSplit positions (but the last).
            EXPECT_LE(plan.num_splits[s], (ctx[s] + cuda::kMlaDecodeMinSplit - 1) / cuda::kMlaDecodeMinSplit);
          }
          for (int j = 0; j < ctx[s]; ++j) ASSERT_EQ(seen[s][j], 1) << what << " seq " << s << " key " << j;
        }
      }
}

// The tensor-core decode kernel runs one CTA per (sequence, split) for up to 32 heads: the split
// count fills 132 SMs at batch 1 and at batch 64 without splitting more than needed.
TEST(MlaPlan, DecodeSplitCounts) {
  EXPECT_GE(cuda::mla_decode_splits(1, 32, 132, 1056, true), 128);
  EXPECT_LE(cuda::mla_decode_splits(1, 32, 132, 1056, true), 132);
  EXPECT_EQ(cuda::mla_decode_splits(64, 32, 132, 1056, true), 2);
  EXPECT_EQ(cuda::mla_decode_splits(64, 64, 132, 1056, true), 1);  // two CTAs per item already
  EXPECT_EQ(cuda::mla_decode_splits(132, 32, 132, 1056, true), 1);
  EXPECT_GE(cuda::mla_decode_splits(3, 8, 132, 1056, true), 42);
  EXPECT_LE(cuda::mla_decode_splits(1000, 32, 132, 1056, true), 1);
  // At 1M tokens, batch 1: splits of about 1M / ns positions rounded up to whole cache blocks
  // (the kernel's tiles), so all but at most one slot busy.
  const int ns = cuda::mla_decode_splits(1, 32, 132, 1056, true);
  const int L = 1 << 20;
  cuda::MlaAttnPlan plan = cuda::make_mla_decode_plan(1, &L, 32, 132, 1056, true);
  EXPECT_GE(plan.num_splits[0], ns - 1);
  for (const auto& it : plan.items1) {
    EXPECT_LE(it.kv_end - it.kv_begin, (L + ns - 1) / ns + cuda::kMlaBlock);
    EXPECT_EQ(it.kv_begin % cuda::kMlaBlock, 0);
  }
  // At 4k, batch 1: splits of kMlaDecodeMinSplit positions, the rest of the slots idle.
  const int L4 = 4096;
  plan = cuda::make_mla_decode_plan(1, &L4, 32, 132, 1056, true);
  EXPECT_EQ(plan.num_splits[0], 4096 / cuda::kMlaDecodeMinSplit);
}
#endif

}  // namespace
}  // namespace kimi::test
