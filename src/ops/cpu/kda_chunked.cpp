// CPU chunked KDA prefill (model.md §3.5): the WY/UT form with chunk C = kKdaChunk = 64, fp32.
//
// Per (sequence, head), chunks of up to 64 tokens in order, state S [K=128, V=128] in the pool:
//   Γ_i      = Σ_{s≤i} g_s                        cumulative log decay inside the chunk (≤ 0)
//   L[i,j]   = β_i Σ_d k_i k_j exp(Γ_i − Γ_j)      j < i   (strictly lower)
//   M[i,j]   =     Σ_d q_i k_j exp(Γ_i − Γ_j)      j ≤ i   (diagonal included)
//   [W | U]  = (I + L)⁻¹ Diag(β) [K ⊙ exp Γ | V]   forward substitution, row by row
//   V'       = U − W S
//   O        = (Q ⊙ exp Γ) S + M V'
//   S        ← Diag(exp Γ_last) S + (K ⊙ exp(Γ_last − Γ))ᵀ V'
// Every exponent is a difference Γ_a − Γ_b with b ≤ a, so every exp is ≤ 1; exp(−Γ) is never
// formed. Pairs with j > i are excluded by the loop bounds, never computed and masked.
// L and M are built per 16-token sub-chunk: diagonal 16×16 blocks exponentiate the differences
// directly; an off-diagonal block (rows in sub-chunk I, columns before it) goes through the
// reference r = Γ at the end of sub-chunk I−1: exp(Γ_i − Γ_j) = exp(Γ_i − r) · exp(r − Γ_j),
// both factors ≤ 1, which turns the block into a GEMM.
// Dense products use small_gemm.h on thread-private, L2-resident buffers; q/k/v/out are read and
// written in place with row stride H·128.
#include <algorithm>
#include <cmath>
#include <memory>

#include "core/check.h"
#include "model/config.h"
#include "ops/cpu/kda.h"
#include "ops/cpu/kda_internal.h"
#include "ops/cpu/small_gemm.h"
#include "ops/cpu/vec_math.h"

namespace kimi::cpu {

namespace {

using detail::exp_fast;
constexpr int D = kKdaHeadDim;
constexpr int C = kKdaChunk;
constexpr int kSub = 16;  // sub-chunk of the secondary chunking
static_assert(C % kSub == 0 && kSub % detail::kGemmNr == 0);

// One thread's scratch for one (sequence, head) pass; ~290 KB, allocated once per thread.
struct alignas(64) ChunkWork {
  float gam[C][D];          // Γ
  float qg[C][D];           // q_i ⊙ exp(Γ_i)
  float kl[C][D];           // k_i ⊙ exp(Γ_last − Γ_i)
  float wu[C][2 * D];       // [W | U], then [W | V']
  float lm[C][C];           // L (strictly lower part used)
  float mm[C][C];           // M (lower part incl. diagonal used)
  float asub[kSub][2 * D];  // [k_i ⊙ exp(Γ_i − r) | q_i ⊙ exp(Γ_i − r)], rows of sub-chunk I
  float bt[D][C];           // bt[d][j] = k_j[d] · exp(r[d] − Γ_j[d]), j before sub-chunk I
  float e[D];               // one row of exp factors
};

ChunkWork& thread_work() {
  thread_local std::unique_ptr<ChunkWork> work;
  if (!work) work = std::make_unique<ChunkWork>();
  return *work;
}

inline float dot(const float* a, const float* b) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int d = 0; d < D; ++d) acc += a[d] * b[d];
  return acc;
}

// L and M for the n tokens of one chunk; q, k have row stride ld.
void build_lm(ChunkWork& w, int n, const float* q, const float* k, const float* beta, int64_t ld,
              int64_t beta_ld) {
  for (int i0 = 0; i0 < n; i0 += kSub) {
    const int i1 = std::min(n, i0 + kSub);
    // Diagonal block: exp of the masked differences, j ≤ i only.
    for (int i = i0; i < i1; ++i) {
      const float* ki = k + i * ld;
      const float* qi = q + i * ld;
      const float bi = beta[i * beta_ld];
      for (int j = i0; j <= i; ++j) {
        const float* kj = k + j * ld;
        const float* gi = w.gam[i];
        const float* gj = w.gam[j];
#pragma omp simd
        for (int d = 0; d < D; ++d) w.e[d] = kj[d] * exp_fast(gi[d] - gj[d]);
        w.mm[i][j] = dot(qi, w.e);
        if (j < i) w.lm[i][j] = bi * dot(ki, w.e);
      }
    }
    if (i0 == 0) continue;
    // Off-diagonal block [i0, i1) × [0, i0) through the reference r = Γ_{i0−1}.
    const float* r = w.gam[i0 - 1];
    for (int i = i0; i < i1; ++i) {
      const float* ki = k + i * ld;
      const float* qi = q + i * ld;
      float* a = w.asub[i - i0];
      const float* gi = w.gam[i];
#pragma omp simd
      for (int d = 0; d < D; ++d) {
        const float e = exp_fast(gi[d] - r[d]);
        a[d] = ki[d] * e;
        a[D + d] = qi[d] * e;
      }
    }
    for (int j = 0; j < i0; ++j) {
      const float* kj = k + j * ld;
      const float* gj = w.gam[j];
#pragma omp simd
      for (int d = 0; d < D; ++d) w.e[d] = kj[d] * exp_fast(r[d] - gj[d]);
      for (int d = 0; d < D; ++d) w.bt[d][j] = w.e[d];
    }
    const int m = i1 - i0;
    detail::gemm(m, i0, D, 1.f, &w.asub[0][0], 2 * D, 1, &w.bt[0][0], C, &w.lm[i0][0], C, true);
    detail::gemm(m, i0, D, 1.f, &w.asub[0][D], 2 * D, 1, &w.bt[0][0], C, &w.mm[i0][0], C, true);
    for (int i = i0; i < i1; ++i) {
      const float bi = beta[i * beta_ld];
      for (int j = 0; j < i0; ++j) w.lm[i][j] *= bi;
    }
  }
}

// One chunk of n ≤ 64 tokens for one head: updates S [D, D] and writes out (row stride ld).
void chunk_step(ChunkWork& w, int n, const float* q, const float* k, const float* v, const float* g,
                const float* beta, int64_t ld, int64_t beta_ld, float* S, float* out) {
  for (int d = 0; d < D; ++d) w.gam[0][d] = g[d];
  for (int i = 1; i < n; ++i)
    for (int d = 0; d < D; ++d) w.gam[i][d] = w.gam[i - 1][d] + g[i * ld + d];

  build_lm(w, n, q, k, beta, ld, beta_ld);

  // Right-hand sides Diag(β)[K ⊙ exp Γ | V], and Q ⊙ exp Γ. Here exp Γ_i is the difference form
  // exp(Γ_i − Γ_start) with Γ_start = 0, so it is ≤ 1 as well.
  for (int i = 0; i < n; ++i) {
    const float* qi = q + i * ld;
    const float* ki = k + i * ld;
    const float* vi = v + i * ld;
    const float bi = beta[i * beta_ld];
    const float* gi = w.gam[i];
#pragma omp simd
    for (int d = 0; d < D; ++d) {
      const float e = exp_fast(gi[d]);
      w.wu[i][d] = bi * ki[d] * e;
      w.wu[i][D + d] = bi * vi[d];
      w.qg[i][d] = qi[d] * e;
    }
  }
  // (I + L) [W | U] = rhs by forward substitution, four rows at a time: the rows already solved
  // enter through one GEMM, then the 4×4 unit-lower diagonal block is solved row by row.
  for (int i0 = 0; i0 < n; i0 += detail::kGemmMr) {
    const int m = std::min(detail::kGemmMr, n - i0);
    if (i0 > 0)
      detail::gemm(m, 2 * D, i0, -1.f, &w.lm[i0][0], C, 1, &w.wu[0][0], 2 * D, &w.wu[i0][0], 2 * D,
                   false);
    for (int i = i0 + 1; i < i0 + m; ++i) {
      float* xi = w.wu[i];
      for (int j = i0; j < i; ++j) {
        const float l = w.lm[i][j];
        const float* xj = w.wu[j];
#pragma omp simd
        for (int c = 0; c < 2 * D; ++c) xi[c] -= l * xj[c];
      }
    }
  }
  float* vp = &w.wu[0][D];  // U, becomes V' [n, D] with row stride 2D
  detail::gemm(n, D, D, -1.f, &w.wu[0][0], 2 * D, 1, S, D, vp, 2 * D, false);
  detail::gemm(n, D, D, 1.f, &w.qg[0][0], D, 1, S, D, out, ld, true);
  detail::gemm(n, D, n, 1.f, &w.mm[0][0], C, 1, vp, 2 * D, out, ld, false, /*lower=*/true);

  const float* last = w.gam[n - 1];
  for (int i = 0; i < n; ++i) {
    const float* ki = k + i * ld;
    const float* gi = w.gam[i];
#pragma omp simd
    for (int d = 0; d < D; ++d) w.kl[i][d] = ki[d] * exp_fast(last[d] - gi[d]);
  }
#pragma omp simd
  for (int d = 0; d < D; ++d) w.e[d] = exp_fast(last[d]);
  for (int d = 0; d < D; ++d) {
    const float a = w.e[d];
    float* Sr = S + d * D;
    for (int j = 0; j < D; ++j) Sr[j] *= a;
  }
  detail::gemm(D, D, n, 1.f, &w.kl[0][0], 1, D, vp, 2 * D, S, D, false);
}

}  // namespace

void kda_chunked(const KdaScanParams& p) {
  detail::check_scan(p, "kda_chunked");
  const int H = p.num_heads;
  const int64_t ld = int64_t(H) * D;
  const int64_t tasks = int64_t(p.num_seqs) * H;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int s = int(task / H);
    const int h = int(task % H);
    float* S = p.state + (int64_t(p.slots[s]) * H + h) * D * D;
    ChunkWork& w = thread_work();
    for (int64_t t0 = p.cu_seqlens[s]; t0 < p.cu_seqlens[s + 1]; t0 += C) {
      const int n = int(std::min<int64_t>(C, p.cu_seqlens[s + 1] - t0));
      const int64_t row = t0 * ld + int64_t(h) * D;
      chunk_step(w, n, p.q + row, p.k + row, p.v + row, p.g + row, p.beta + t0 * H + h, ld, H, S,
                 p.out + row);
    }
  }
}

}  // namespace kimi::cpu
