// CPU replay of mla_attn_tc_kernel (kernels/mla/mla_tc.cuh) for checking its indexing without a
// GPU: the kernel's phases are transcribed thread by thread and warp by warp, with ldmatrix
// (.trans) and mma.sync m16n8k16 emulated from their PTX definitions, the kernel's own constants
// and ldmatrix address formulas (tc_off_*), and the real host plan (make_mla_attn_plan). Shared
// memory starts as NaN, ldmatrix rows are bounds-checked against the tiles' logical widths, and
// cp.async copies run either at issue or only at the next wait (both must give the same result).
// The outputs (u, or partials merged as run_mla_combine does) are compared with an fp64
// reference over the same bf16 inputs; poisoned u rows outside the prefill items must stay so.
// Build and run (no GPU needed):
//   nvcc -std=c++17 -O2 -Ikernels -Isrc -Iinclude -arch=sm_90a scripts/mla_tc_emulate.cu \
//     -o /tmp/mla_tc_emulate && /tmp/mla_tc_emulate
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "mla/mla.cu"

using namespace kimi;
using namespace kimi::cuda;
using namespace kimi::cuda::mla;

namespace {

int g_failures = 0;
#define EXPECT(cond)                                                \
  do {                                                              \
    if (!(cond)) {                                                  \
      std::printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      if (++g_failures > 20) std::exit(1);                          \
    }                                                               \
  } while (0)

float b2f(uint16_t h) {
  return bf16_to_f32(h);
}
uint16_t f2b(float f) {
  return f32_to_bf16(f);
}

// A tile region of shared memory: rows × width logical elements, row stride ld.
struct Region {
  const uint16_t* base;
  int rows, ld, width;
};

// ldmatrix.sync.aligned.m8n8.x4[.trans].b16: lanes 8i .. 8i + 7 give the rows of matrix i.
// Plain: lane gets M_i[lane / 4][2 (lane % 4) .. +1]; trans: M_i[2 (lane % 4) .. +1][lane / 4].
void ldsm(const Region& R, const int (&off)[32], bool trans, uint32_t (&r)[32][4]) {
  for (int l = 0; l < 32; ++l) {
    const int row = off[l] / R.ld, col = off[l] % R.ld;
    EXPECT(off[l] >= 0 && off[l] % 8 == 0 && row < R.rows && col + 8 <= R.width);
  }
  for (int i = 0; i < 4; ++i)
    for (int l = 0; l < 32; ++l) {
      const int g = l >> 2, t = l & 3;
      uint16_t lo, hi;
      if (!trans) {
        lo = R.base[off[8 * i + g] + 2 * t];
        hi = R.base[off[8 * i + g] + 2 * t + 1];
      } else {
        lo = R.base[off[8 * i + 2 * t] + g];
        hi = R.base[off[8 * i + 2 * t + 1] + g];
      }
      r[l][i] = uint32_t(lo) | uint32_t(hi) << 16;
    }
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, fragments as in the PTX ISA.
void mma(float (&c)[32][4], const uint32_t (&a)[32][4], const uint32_t (&b)[32][2]) {
  float A[16][16], B[16][8], D[16][8];
  auto lo = [](uint32_t x) { return b2f(uint16_t(x & 0xffff)); };
  auto hi = [](uint32_t x) { return b2f(uint16_t(x >> 16)); };
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = 2 * (l & 3);
    A[g][t] = lo(a[l][0]), A[g][t + 1] = hi(a[l][0]);
    A[g + 8][t] = lo(a[l][1]), A[g + 8][t + 1] = hi(a[l][1]);
    A[g][t + 8] = lo(a[l][2]), A[g][t + 9] = hi(a[l][2]);
    A[g + 8][t + 8] = lo(a[l][3]), A[g + 8][t + 9] = hi(a[l][3]);
    B[t][g] = lo(b[l][0]), B[t + 1][g] = hi(b[l][0]);
    B[t + 8][g] = lo(b[l][1]), B[t + 9][g] = hi(b[l][1]);
    D[g][t] = c[l][0], D[g][t + 1] = c[l][1], D[g + 8][t] = c[l][2], D[g + 8][t + 1] = c[l][3];
  }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      float acc = D[m][n];
      for (int k = 0; k < 16; ++k) acc += A[m][k] * B[k][n];
      D[m][n] = acc;
    }
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = 2 * (l & 3);
    c[l][0] = D[g][t], c[l][1] = D[g][t + 1], c[l][2] = D[g + 8][t], c[l][3] = D[g + 8][t + 1];
  }
}

struct Problem {
  int T = 0, H = 0, mb = 0;
  float scale = 1.f / std::sqrt(192.f);
  std::vector<uint16_t> q_abs, q, cache;  // [T, H, 512], [T, H, 192], [blocks, 64, 576]
  std::vector<int> tables, split_base;
  std::vector<float> partials;  // [slots, H, 514]
  std::vector<uint16_t> u;      // [T, H, 512]
  bool deferred = false;        // cp.async lands at the next wait only
};

// One CTA (item it, head group by) of mla_attn_tc_kernel, transcribed.
void run_cta(Problem& P, const MlaWorkItem& it, int by) {
  std::vector<uint8_t> smv(kTcSmem, 0xff);  // 0xffff bf16 and 0xffffffff fp32 are NaN
  uint8_t* sm = smv.data();
  uint16_t* q_s = reinterpret_cast<uint16_t*>(sm);
  uint16_t* k_s = reinterpret_cast<uint16_t*>(sm + kTcOffK);
  float* s_s = reinterpret_cast<float*>(sm + kTcOffS);
  uint16_t* p_s = reinterpret_cast<uint16_t*>(sm + kTcOffP);
  float* alpha_s = reinterpret_cast<float*>(sm + kTcOffA);
  float* m_s = reinterpret_cast<float*>(sm + kTcOffM);
  float* l_s = reinterpret_cast<float*>(sm + kTcOffL);
  auto in_smem = [&](const void* p, size_t bytes, size_t lo, size_t hi) {
    const size_t o = static_cast<const uint8_t*>(p) - sm;
    EXPECT(o >= lo && o + bytes <= hi);
  };

  const int H = P.H, h0 = by * kMlaTcHeadsPerCta;
  const int* table = P.tables.data() + int64_t(it.seq) * P.mb;
  const int kv_hi = std::min(it.kv_end, it.q_pos0 + it.nq);
  const int ntiles = kv_hi > it.kv_begin ? (kv_hi - it.kv_begin + kTcTile - 1) / kTcTile : 0;
  std::vector<std::function<void()>> pending;
  auto cp16 = [&](uint16_t* dst, const std::vector<uint16_t>& src, int64_t off) {
    EXPECT(off >= 0 && off % 8 == 0 && size_t(off) + 8 <= src.size());
    auto copy = [dst, &src, off] { std::copy_n(src.data() + off, 8, dst); };
    if (P.deferred)
      pending.push_back(copy);
    else
      copy();
  };
  auto wait_all = [&] {
    for (auto& f : pending) f();
    pending.clear();
  };

  for (int tid = 0; tid < kTcThreads; ++tid)
    for (int idx = tid; idx < kTcRows * kTcChunks; idx += kTcThreads) {
      const int r = idx / kTcChunks, c = idx % kTcChunks;
      const int i = r / kMlaTcHeadsPerCta, h = h0 + r % kMlaTcHeadsPerCta;
      uint16_t* dst = q_s + r * kTcLd + c * 8;
      in_smem(dst, 16, 0, kTcOffK);
      if (i < it.nq && h < H) {
        const int64_t th = int64_t(it.q_begin + i) * H + h;
        if (c < kMlaLat / 8)
          cp16(dst, P.q_abs, th * kMlaLat + c * 8);
        else
          cp16(dst, P.q, th * kMlaQk + 128 + (c - kMlaLat / 8) * 8);
      } else {
        std::fill_n(dst, 8, 0);
      }
    }
  auto load_tile = [&](int n) {
    uint16_t* buf = k_s + (n & 1) * kTcTile * kTcLd;
    const int j0 = it.kv_begin + n * kTcTile;
    for (int tid = 0; tid < kTcThreads; ++tid)
      for (int idx = tid; idx < kTcTile * kTcChunks; idx += kTcThreads) {
        const int r = idx / kTcChunks, c = idx % kTcChunks, pos = j0 + r;
        uint16_t* dst = buf + r * kTcLd + c * 8;
        in_smem(dst, 16, kTcOffK, kTcOffS);
        if (pos < kv_hi) {
          EXPECT(pos >= 0 && pos / kMlaBlock < P.mb);
          const int blk = table[pos / kMlaBlock];
          cp16(dst, P.cache, (int64_t(blk) * kMlaBlock + pos % kMlaBlock) * kMlaRow + c * 8);
        } else {
          std::fill_n(dst, 8, 0);
        }
      }
  };
  if (ntiles > 0) load_tile(0);

  float m_run[kTcThreads], l_run[kTcThreads];
  std::fill_n(m_run, kTcThreads, -INFINITY);
  std::fill_n(l_run, kTcThreads, 0.f);
  std::vector<float> o_all(size_t(8) * 32 * 4 * 8 * 4, 0.f);  // [warp][lane][mt][nt][e]
  auto O = [&](int w, int l, int mt, int nt, int e) -> float& {
    return o_all[((((size_t(w) * 32 + l) * 4 + mt) * 8 + nt) * 4) + e];
  };
  const Region q_reg{q_s, kTcRows, kTcLd, kMlaRow};
  const Region p_reg{p_s, kTcRows, kTcLdP, kTcTile};

  for (int n = 0; n < ntiles; ++n) {
    wait_all();
    if (n + 1 < ntiles) load_tile(n + 1);
    const uint16_t* kb = k_s + (n & 1) * kTcTile * kTcLd;
    const Region k_reg{kb, kTcTile, kTcLd, kMlaRow};
    for (int warp = 0; warp < 8; ++warp) {  // S = Q·Kᵀ
      const int rb = 16 * (warp & 3), kh = warp >> 2;
      float sacc[4][32][4] = {};
      for (int k0 = kh * kTcKHalf; k0 < (kh + 1) * kTcKHalf; k0 += 16) {
        for (int half = 0; half < 2; ++half) {
          int offa[32], offb[32];
          for (int l = 0; l < 32; ++l) {
            offa[l] = tc_off_a(kTcLd, rb, k0, l);
            offb[l] = tc_off_b_nk(kTcLd, 16 * half, k0, l);
          }
          uint32_t a[32][4], b[32][4], b01[32][2], b23[32][2];
          ldsm(q_reg, offa, false, a);
          ldsm(k_reg, offb, false, b);
          for (int l = 0; l < 32; ++l) {
            b01[l][0] = b[l][0], b01[l][1] = b[l][1];
            b23[l][0] = b[l][2], b23[l][1] = b[l][3];
          }
          mma(sacc[2 * half], a, b01);
          mma(sacc[2 * half + 1], a, b23);
        }
      }
      for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t2 = (l & 3) * 2;
        for (int nt = 0; nt < 4; ++nt) {
          float* s0 = s_s + (kh * kTcRows + rb + g) * kTcLdS + nt * 8 + t2;
          in_smem(s0, 8, kTcOffS, kTcOffP);
          in_smem(s0 + 8 * kTcLdS, 8, kTcOffS, kTcOffP);
          EXPECT(nt * 8 + t2 + 2 <= kTcTile);
          s0[0] = sacc[nt][l][0] * P.scale, s0[1] = sacc[nt][l][1] * P.scale;
          s0[8 * kTcLdS] = sacc[nt][l][2] * P.scale, s0[8 * kTcLdS + 1] = sacc[nt][l][3] * P.scale;
        }
      }
    }
    for (int warp = 0; warp < 8; ++warp) {  // online softmax, 4 threads per row
      float s[32][8], mx[32], sum[32], alpha[32], m_new[32];
      uint16_t pb[32][8];
      for (int l = 0; l < 32; ++l) {
        const int tid = warp * 32 + l, srow = tid >> 2, spart = tid & 3;
        const int si = srow / kMlaTcHeadsPerCta;
        const int last = si < it.nq ? std::min(kv_hi - 1, it.q_pos0 + si) : -1;
        const float* sr = s_s + srow * kTcLdS + spart * 8;
        const float* sr2 = sr + kTcRows * kTcLdS;
        in_smem(sr, 32, kTcOffS, kTcOffP);
        in_smem(sr2, 32, kTcOffS, kTcOffP);
        const int j0 = it.kv_begin + n * kTcTile + spart * 8;
        mx[l] = -INFINITY;
        for (int c = 0; c < 8; ++c) {
          s[l][c] = j0 + c > last ? -INFINITY : sr[c] + sr2[c];
          mx[l] = std::max(mx[l], s[l][c]);
        }
      }
      for (int x : {1, 2}) {
        float y[32];
        for (int l = 0; l < 32; ++l) y[l] = std::max(mx[l], mx[l ^ x]);
        std::copy_n(y, 32, mx);
      }
      for (int l = 0; l < 32; ++l) {
        const int tid = warp * 32 + l;
        m_new[l] = std::max(m_run[tid], mx[l]);
        alpha[l] = 1.f, sum[l] = 0.f;
        if (m_new[l] == -INFINITY) {
          std::fill_n(pb[l], 8, 0);
        } else {
          alpha[l] = std::exp(m_run[tid] - m_new[l]);
          for (int c = 0; c < 8; ++c) {
            pb[l][c] = f2b(std::exp(s[l][c] - m_new[l]));
            sum[l] += b2f(pb[l][c]);
          }
        }
      }
      for (int x : {1, 2}) {
        float y[32];
        for (int l = 0; l < 32; ++l) y[l] = sum[l] + sum[l ^ x];
        std::copy_n(y, 32, sum);
      }
      for (int l = 0; l < 32; ++l) {
        const int tid = warp * 32 + l, srow = tid >> 2, spart = tid & 3;
        l_run[tid] = l_run[tid] * alpha[l] + sum[l];
        m_run[tid] = m_new[l];
        uint16_t* pd = p_s + srow * kTcLdP + spart * 8;
        in_smem(pd, 16, kTcOffP, kTcOffA);
        std::copy_n(pb[l], 8, pd);
        if (spart == 0) alpha_s[srow] = alpha[l];
      }
    }
    for (int warp = 0; warp < 8; ++warp) {  // O = α·O + P·V
      const int cw = 64 * warp;
      for (int l = 0; l < 32; ++l) {
        const int g = l >> 2;
        for (int mt = 0; mt < 4; ++mt) {
          const float a0 = alpha_s[mt * 16 + g], a1 = alpha_s[mt * 16 + g + 8];
          for (int nt = 0; nt < 8; ++nt) {
            O(warp, l, mt, nt, 0) *= a0, O(warp, l, mt, nt, 1) *= a0;
            O(warp, l, mt, nt, 2) *= a1, O(warp, l, mt, nt, 3) *= a1;
          }
        }
      }
      const Region v_reg{kb, kTcTile, kTcLd, kMlaLat};
      for (int k0 = 0; k0 < kTcTile; k0 += 16) {
        uint32_t a[4][32][4];
        for (int mt = 0; mt < 4; ++mt) {
          int off[32];
          for (int l = 0; l < 32; ++l) off[l] = tc_off_a(kTcLdP, mt * 16, k0, l);
          ldsm(p_reg, off, false, a[mt]);
        }
        for (int np = 0; np < 4; ++np) {
          int off[32];
          for (int l = 0; l < 32; ++l) off[l] = tc_off_b_kn(kTcLd, k0, cw + np * 16, l);
          uint32_t b[32][4], b01[32][2], b23[32][2];
          ldsm(v_reg, off, true, b);
          for (int l = 0; l < 32; ++l) {
            b01[l][0] = b[l][0], b01[l][1] = b[l][1];
            b23[l][0] = b[l][2], b23[l][1] = b[l][3];
          }
          for (int mt = 0; mt < 4; ++mt)
            for (int half = 0; half < 2; ++half) {
              float c[32][4];
              for (int l = 0; l < 32; ++l)
                for (int e = 0; e < 4; ++e) c[l][e] = O(warp, l, mt, 2 * np + half, e);
              mma(c, a[mt], half ? b23 : b01);
              for (int l = 0; l < 32; ++l)
                for (int e = 0; e < 4; ++e) O(warp, l, mt, 2 * np + half, e) = c[l][e];
            }
        }
      }
    }
  }
  wait_all();
  for (int tid = 0; tid < kTcThreads; ++tid)
    if ((tid & 3) == 0) m_s[tid >> 2] = m_run[tid], l_s[tid >> 2] = l_run[tid];
  for (int warp = 0; warp < 8; ++warp)
    for (int l = 0; l < 32; ++l) {
      const int g = l >> 2, t2 = (l & 3) * 2, cw = 64 * warp;
      for (int mt = 0; mt < 4; ++mt) {
        if (mt >= it.nq) break;
        const int t = it.q_begin + mt;
        for (int hf = 0; hf < 2; ++hf) {
          const int r = mt * 16 + g + 8 * hf, h = h0 + g + 8 * hf;
          if (h >= H) continue;
          if (it.split < 0) {
            const float lv = l_s[r], inv = lv > 0.f ? 1.f / lv : 0.f;
            const int64_t base = (int64_t(t) * H + h) * kMlaLat + cw + t2;
            for (int nt = 0; nt < 8; ++nt) {
              EXPECT(base + nt * 8 + 2 <= int64_t(P.u.size()));
              P.u[base + nt * 8] = f2b(O(warp, l, mt, nt, 2 * hf) * inv);
              P.u[base + nt * 8 + 1] = f2b(O(warp, l, mt, nt, 2 * hf + 1) * inv);
            }
          } else {
            const int slot = P.split_base[t] + it.split;
            const int64_t base = (int64_t(slot) * H + h) * kMlaPartialStride;
            EXPECT(P.split_base[t] >= 0 && base + kMlaPartialStride <= int64_t(P.partials.size()));
            for (int nt = 0; nt < 8; ++nt) {
              P.partials[base + cw + nt * 8 + t2] = O(warp, l, mt, nt, 2 * hf);
              P.partials[base + cw + nt * 8 + t2 + 1] = O(warp, l, mt, nt, 2 * hf + 1);
            }
            if (warp == 0 && t2 == 0) {
              P.partials[base + kMlaLat] = m_s[r];
              P.partials[base + kMlaLat + 1] = l_s[r];
            }
          }
        }
      }
    }
}

struct Seq {
  int n_new, ctx;
};

// Re-splits every unsplit prefill item into up to 3 pieces at boundaries that are not multiples
// of the tile (the kernel must not depend on the plan's alignment), with their partial slots.
void odd_splits(MlaAttnPlan& plan) {
  std::vector<MlaWorkItem> out;
  for (const MlaWorkItem& it : plan.items4) {
    const int len = it.kv_end - it.kv_begin;
    if (it.split >= 0 || len < 3) {
      out.push_back(it);
      continue;
    }
    const int b1 = it.kv_begin + len / 3 + 1, b2 = it.kv_begin + 2 * len / 3 + 3;
    const int cut[4] = {it.kv_begin, b1, std::min(b2, it.kv_end), it.kv_end};
    const int ns = cut[2] < it.kv_end ? 3 : 2;
    for (int i = 0; i < it.nq; ++i) {
      plan.split_base[it.q_begin + i] = plan.num_partials + i * ns;
      plan.num_splits[it.q_begin + i] = ns;
    }
    plan.num_partials += it.nq * ns;
    for (int k = 0; k < ns; ++k) {
      MlaWorkItem piece = it;
      piece.kv_begin = cut[k];
      piece.kv_end = k == ns - 1 ? it.kv_end : cut[k + 1];
      piece.split = k;
      out.push_back(piece);
    }
  }
  plan.items4 = std::move(out);
}

void run_case(const std::vector<Seq>& seqs, int H, uint32_t seed, bool deferred, bool odd = false) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  const int S = int(seqs.size());
  std::vector<int> cu{0}, ctx;
  int mb = 0, num_blocks = 3;
  for (auto s : seqs) {
    mb = std::max(mb, (s.ctx + 63) / 64);
    num_blocks += (s.ctx + 63) / 64;
  }
  std::vector<int> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  Problem P;
  int next = 0;
  for (auto s : seqs) {
    cu.push_back(cu.back() + s.n_new);
    ctx.push_back(s.ctx);
    for (int j = 0; j < mb; ++j) P.tables.push_back(j < (s.ctx + 63) / 64 ? ids[next++] : 0);
  }
  const int T = cu.back();
  P.T = T, P.H = H, P.mb = mb, P.deferred = deferred;
  auto rnd = [&](size_t n, float amp) {
    std::vector<uint16_t> v(n);
    for (auto& x : v) x = f2b(amp * U(rng));
    return v;
  };
  P.cache = rnd(size_t(num_blocks) * 64 * 576, 1.f);
  P.q = rnd(size_t(T) * H * 192, 1.f);
  P.q_abs = rnd(size_t(T) * H * 512, 2.f);  // scores of a few units: a peaked softmax
  const int num_sms = 132, max_partials = 8 * num_sms;
  MlaAttnPlan plan = make_mla_attn_plan(S, cu.data(), ctx.data(), H, num_sms, max_partials, true);
  if (odd) odd_splits(plan);
  P.split_base = plan.split_base;
  P.partials.assign(std::max(1, plan.num_partials) * size_t(H) * kMlaPartialStride, NAN);
  P.u.assign(size_t(T) * H * 512, 0xffff);
  for (const auto& it : plan.items4)
    for (int by = 0; by < (H + kMlaTcHeadsPerCta - 1) / kMlaTcHeadsPerCta; ++by) run_cta(P, it, by);
  // Tokens of prefill items; merge split partials as mla_combine_kernel does.
  std::vector<char> in4(T, 0);
  for (const auto& it : plan.items4)
    for (int i = 0; i < it.nq; ++i) in4[it.q_begin + i] = 1;
  for (int t = 0; t < T; ++t) {
    if (!in4[t] || plan.num_splits[t] == 0) continue;
    for (int h = 0; h < H; ++h) {
      const int ns = plan.num_splits[t];
      auto part = [&](int k) {
        return &P.partials[(size_t(plan.split_base[t] + k) * H + h) * kMlaPartialStride];
      };
      float M = -INFINITY;
      for (int k = 0; k < ns; ++k) M = std::max(M, part(k)[kMlaLat]);
      double den = 0;
      std::vector<double> acc(512, 0.0);
      for (int k = 0; k < ns; ++k) {
        const float mk = part(k)[kMlaLat], w = mk == -INFINITY ? 0.f : std::exp(mk - M);
        den += w * part(k)[kMlaLat + 1];
        for (int c = 0; c < 512; ++c) acc[c] += w * part(k)[c];
      }
      EXPECT(P.u[(size_t(t) * H + h) * 512] == 0xffff);  // split tokens: the kernel leaves u alone
      for (int c = 0; c < 512; ++c)
        P.u[(size_t(t) * H + h) * 512 + c] = f2b(den > 0 ? acc[c] / den : 0.f);
    }
  }
  // fp64 reference over the same bf16 values.
  double num = 0, dsq = 0, max_abs = 0;
  size_t nan_count = 0, compared = 0;
  for (int s = 0; s < S; ++s) {
    const int n = cu[s + 1] - cu[s];
    for (int i = 0; i < n; ++i) {
      const int t = cu[s] + i, pos = ctx[s] - n + i;
      for (int h = 0; h < H; ++h) {
        const uint16_t* got = &P.u[(size_t(t) * H + h) * 512];
        if (!in4[t]) {  // decode tokens are not this kernel's: u must still be poison
          EXPECT(std::all_of(got, got + 512, [](uint16_t x) { return x == 0xffff; }));
          continue;
        }
        const uint16_t* qa = &P.q_abs[(size_t(t) * H + h) * 512];
        const uint16_t* qp = &P.q[(size_t(t) * H + h) * 192 + 128];
        std::vector<double> sc(pos + 1);
        double mx = -1e300;
        for (int j = 0; j <= pos; ++j) {
          const uint16_t* row =
              &P.cache[(size_t(P.tables[size_t(s) * mb + j / 64]) * 64 + j % 64) * 576];
          double d = 0;
          for (int c = 0; c < 512; ++c) d += double(b2f(qa[c])) * b2f(row[c]);
          for (int c = 0; c < 64; ++c) d += double(b2f(qp[c])) * b2f(row[512 + c]);
          sc[j] = d * P.scale;
          mx = std::max(mx, sc[j]);
        }
        double den = 0;
        for (auto& x : sc) den += (x = std::exp(x - mx));
        std::vector<double> ref(512, 0.0);
        for (int j = 0; j <= pos; ++j) {
          const uint16_t* row =
              &P.cache[(size_t(P.tables[size_t(s) * mb + j / 64]) * 64 + j % 64) * 576];
          for (int c = 0; c < 512; ++c) ref[c] += sc[j] / den * b2f(row[c]);
        }
        for (int c = 0; c < 512; ++c) {
          const double gv = b2f(got[c]);
          if (std::isnan(gv)) {
            ++nan_count;
            continue;
          }
          num += (gv - ref[c]) * (gv - ref[c]);
          dsq += ref[c] * ref[c];
          max_abs = std::max(max_abs, std::fabs(gv - ref[c]));
          ++compared;
        }
      }
    }
  }
  const double rel = std::sqrt(num / std::max(dsq, 1e-300));
  std::printf(
      "H %2d T %4d seqs %d items4 %zu items1 %zu partials %4d %s: rel RMS %.2e max abs %.2e "
      "(%zu values, %zu NaN)\n",
      H, T, S, plan.items4.size(), plan.items1.size(), plan.num_partials,
      deferred ? (odd ? "deferred, odd splits" : "deferred")
               : (odd ? "at-issue, odd splits" : "at-issue"),
      rel, max_abs, compared, nan_count);
  EXPECT(nan_count == 0);
  EXPECT(rel < 5e-3);
  EXPECT(max_abs < 2e-2);
}

}  // namespace

int main() {
  struct Case {
    std::vector<Seq> seqs;
    int H;
  };
  const std::vector<Case> cases = {
      {{{2, 2}}, 1},
      {{{7, 7}}, 2},
      {{{63, 63}}, 16},
      {{{64, 64}}, 32},
      {{{65, 65}}, 32},
      {{{769, 769}}, 8},          // splits in two where a key range passes 256
      {{{65, 1000}, {1, 1}}, 4},  // chunked prefill over history, split; a decode token
      {{{7, 70}, {1, 64}, {65, 65}, {1, 129}, {64, 300}}, 10},
      {{{2, 700}}, 2},  // a 2-token item split 3 ways
      {{{1, 5}, {3, 33}, {5, 97}}, 1},
      {{{200, 1100}}, 32},
  };
  uint32_t seed = 1;
  for (const Case& c : cases)
    for (bool deferred : {false, true}) run_case(c.seqs, c.H, seed++, deferred);
  // Partial head groups (H = 17, 33) and KV pieces at unaligned boundaries.
  run_case({{5, 40}, {9, 9}}, 17, seed++, false);
  run_case({{9, 9}, {4, 100}}, 33, seed++, true);
  run_case({{70, 70}, {3, 130}}, 16, seed++, false, true);
  run_case({{37, 300}}, 3, seed++, true, true);
  std::printf(g_failures ? "%d FAILURES\n" : "all passed\n", g_failures);
  return g_failures ? 1 : 0;
}
