// CPU reference for the per-token KDA ops (model.md §3.1–3.4), fp32, OpenMP.
//
// kda_conv       y_t[c] = SiLU(Σ_{i<4} w[c,i] · u_{t-3+i}[c]), u = [state(3) ; x] per sequence;
//                the state keeps the last 3 inputs. Tasks: (sequence, block of 64 channels), so
//                each token row is read contiguously.
// kda_gate       g = -exp(A_log[h]) · softplus(f + dt_bias), beta = sigmoid(b).
// kda_l2norm     x ← x / sqrt(Σx² + eps) · scale per (token, head) row of 128.
// kda_recurrent  the definition (§3.3), per token: S ← Diag(exp g) S; r = v − Sᵀk;
//                S ← S + β k rᵀ; o = Sᵀq. State [H, K, V] in fp32; tasks: (sequence, head).
//                Two sweeps over S per token: a read-only one for (Diag(α) S)ᵀ k, then one that
//                writes Diag(α) S + k (βr)ᵀ and accumulates o from the updated values.
// kda_gated_rmsnorm  y = o / sqrt(mean(o²) + eps) · w · sigmoid(z) per (token, head).
#include "ops/cpu/kda.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "model/config.h"
#include "ops/cpu/basic.h"
#include "ops/cpu/kda_internal.h"

namespace kimi::cpu {

namespace detail {

int64_t check_varlen(int num_seqs, const int* cu_seqlens, const int* slots, int num_slots,
                     const char* op) {
  KIMI_CHECK(num_seqs >= 0, "num_seqs = ", num_seqs, " (", op, ")");
  if (num_seqs == 0) return 0;
  KIMI_CHECK(cu_seqlens && slots, "cu_seqlens and slots are required (", op, ")");
  KIMI_CHECK(num_slots > 0, "num_slots must be set, got ", num_slots, " (", op, ")");
  KIMI_CHECK(cu_seqlens[0] == 0, "cu_seqlens[0] = ", cu_seqlens[0], " (", op, ")");
  for (int s = 0; s < num_seqs; ++s) {
    KIMI_CHECK(cu_seqlens[s + 1] >= cu_seqlens[s], "cu_seqlens decreases at ", s, " (", op, ")");
    KIMI_CHECK(slots[s] >= 0 && slots[s] < num_slots, "slot ", slots[s], " of sequence ", s,
               " is outside [0, ", num_slots, ") (", op, ")");
  }
  // Two sequences on one slot would race on the same state; batches are small, so O(n²) is fine.
  for (int s = 0; s < num_seqs; ++s)
    for (int r = s + 1; r < num_seqs; ++r)
      KIMI_CHECK(slots[s] != slots[r], "sequences ", s, " and ", r, " share slot ", slots[s], " (",
                 op, ")");
  return cu_seqlens[num_seqs];
}

void check_scan(const KdaScanParams& p, const char* op) {
  KIMI_CHECK(p.num_heads > 0, "num_heads = ", p.num_heads, " (", op, ")");
  const int64_t T = check_varlen(p.num_seqs, p.cu_seqlens, p.slots, p.num_slots, op);
  if (p.num_seqs == 0) return;
  KIMI_CHECK(p.state, "state is required (", op, ")");
  if (T > 0)
    KIMI_CHECK(p.q && p.k && p.v && p.g && p.beta && p.out,
               "q, k, v, g, beta and out are required (", op, ")");
}

}  // namespace detail

void kda_conv(const KdaConvParams& p) {
  constexpr int kTaps = kKdaConvSize;
  constexpr int kHist = kKdaConvSize - 1;
  constexpr int kBlock = 64;  // channels per task
  static_assert(kTaps == 4, "the rolling window below is written for a 4-tap kernel");
  const int64_t T =
      detail::check_varlen(p.num_seqs, p.cu_seqlens, p.slots, p.num_slots, "kda_conv");
  if (p.num_seqs == 0) return;
  const int64_t C = p.channels;
  KIMI_CHECK(C > 0, "kda_conv: channels = ", C);
  KIMI_CHECK(p.weight && p.state, "kda_conv: weight and state are required");
  if (T > 0) {
    KIMI_CHECK(p.x && p.out, "kda_conv: x and out are required");
    KIMI_CHECK(p.x != p.out, "kda_conv: out may not alias x");
  }
  const int64_t blocks = (C + kBlock - 1) / kBlock;
  const int64_t tasks = int64_t(p.num_seqs) * blocks;
#pragma omp parallel for schedule(dynamic, 1) if (T * C > (1 << 14))
  for (int64_t task = 0; task < tasks; ++task) {
    const int s = int(task / blocks);
    const int64_t c0 = (task % blocks) * kBlock;
    const int nc = int(std::min<int64_t>(kBlock, C - c0));
    float* st = p.state + (int64_t(p.slots[s]) * C + c0) * kHist;  // [nc, 3]
    const float* w = p.weight + c0 * kTaps;                        // [nc, 4]
    float h0[kBlock], h1[kBlock], h2[kBlock];                      // u_{t-3}, u_{t-2}, u_{t-1}
    float w0[kBlock], w1[kBlock], w2[kBlock], w3[kBlock];
    for (int c = 0; c < nc; ++c) {
      h0[c] = st[c * kHist + 0];
      h1[c] = st[c * kHist + 1];
      h2[c] = st[c * kHist + 2];
      w0[c] = w[c * kTaps + 0];
      w1[c] = w[c * kTaps + 1];
      w2[c] = w[c * kTaps + 2];
      w3[c] = w[c * kTaps + 3];
    }
    for (int64_t t = p.cu_seqlens[s]; t < p.cu_seqlens[s + 1]; ++t) {
      const float* x = p.x + t * C + c0;
      float* y = p.out + t * C + c0;
      for (int c = 0; c < nc; ++c) {
        const float u = x[c];
        const float acc = w0[c] * h0[c] + w1[c] * h1[c] + w2[c] * h2[c] + w3[c] * u;
        y[c] = silu(acc);
        h0[c] = h1[c];
        h1[c] = h2[c];
        h2[c] = u;
      }
    }
    for (int c = 0; c < nc; ++c) {
      st[c * kHist + 0] = h0[c];
      st[c * kHist + 1] = h1[c];
      st[c * kHist + 2] = h2[c];
    }
  }
}

void kda_gate(float* f, float* b, const float* A_log, const float* dt_bias, int64_t T, int H) {
  constexpr int D = kKdaHeadDim;
  KIMI_CHECK(T >= 0 && H > 0, "kda_gate: T = ", T, ", H = ", H);
  if (T == 0) return;
  KIMI_CHECK(f && b && A_log && dt_bias, "kda_gate: null argument");
#pragma omp parallel for schedule(static) if (T * H > 256)
  for (int64_t t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      const float a = -std::exp(A_log[h]);
      float* fr = f + (t * H + h) * D;
      const float* bias = dt_bias + int64_t(h) * D;
      for (int d = 0; d < D; ++d) fr[d] = a * softplus(fr[d] + bias[d]);
      b[t * H + h] = sigmoid(b[t * H + h]);
    }
  }
}

void kda_l2norm(float* x, int64_t T, int H, float eps, float scale) {
  constexpr int D = kKdaHeadDim;
  KIMI_CHECK(T >= 0 && H > 0, "kda_l2norm: T = ", T, ", H = ", H);
  if (T == 0) return;
  KIMI_CHECK(x, "kda_l2norm: null argument");
  const int64_t rows = T * H;
#pragma omp parallel for schedule(static) if (rows > 256)
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * D;
    double ss = 0;
    for (int d = 0; d < D; ++d) ss += double(xr[d]) * xr[d];
    const float mul = float(double(scale) / std::sqrt(ss + double(eps)));
    for (int d = 0; d < D; ++d) xr[d] *= mul;
  }
}

void kda_gated_rmsnorm(const float* o, const float* z, const float* w, float* y, int64_t T, int H,
                       float eps) {
  constexpr int D = kKdaHeadDim;
  KIMI_CHECK(T >= 0 && H > 0, "kda_gated_rmsnorm: T = ", T, ", H = ", H);
  if (T == 0) return;
  KIMI_CHECK(o && z && w && y, "kda_gated_rmsnorm: null argument");
  const int64_t rows = T * H;
#pragma omp parallel for schedule(static) if (rows > 256)
  for (int64_t r = 0; r < rows; ++r) {
    const float* orow = o + r * D;
    const float* zrow = z + r * D;
    float* yrow = y + r * D;
    double ss = 0;
    for (int d = 0; d < D; ++d) ss += double(orow[d]) * orow[d];
    const float inv = float(1.0 / std::sqrt(ss / D + double(eps)));
    for (int d = 0; d < D; ++d) yrow[d] = orow[d] * inv * w[d] * sigmoid(zrow[d]);
  }
}

void kda_recurrent(const KdaScanParams& p) {
  constexpr int D = kKdaHeadDim;
  constexpr int kCols = 16;  // state columns per sweep: 64 B of each row, accumulators in registers
  detail::check_scan(p, "kda_recurrent");
  const int H = p.num_heads;
  const int64_t tasks = int64_t(p.num_seqs) * H;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int s = int(task / H);
    const int h = int(task % H);
    float* S = p.state + (int64_t(p.slots[s]) * H + h) * D * D;  // [K, V]
    alignas(64) float alpha[D], ak[D], ks[D], r[D];
    for (int64_t t = p.cu_seqlens[s]; t < p.cu_seqlens[s + 1]; ++t) {
      const int64_t row = (t * H + h) * D;
      const float* q = p.q + row;
      const float* k = p.k + row;
      const float* v = p.v + row;
      const float* g = p.g + row;
      const float beta = p.beta[t * H + h];
      float* o = p.out + row;
      for (int d = 0; d < D; ++d) alpha[d] = std::exp(g[d]);
      for (int d = 0; d < D; ++d) ak[d] = alpha[d] * k[d];
      // Two sweeps over S in column blocks of kCols, accumulators in registers.
      // Sweep 1 (read only): ks = (Diag(α) S)ᵀ k, then r = β (v − ks).
      for (int j0 = 0; j0 < D; j0 += kCols) {
        float acc[kCols] = {};
        for (int d = 0; d < D; ++d) {
          const float* Sr = S + d * D + j0;
          const float a = ak[d];
#pragma omp simd
          for (int j = 0; j < kCols; ++j) acc[j] += a * Sr[j];
        }
        for (int j = 0; j < kCols; ++j) ks[j0 + j] = acc[j];
      }
      for (int j = 0; j < D; ++j) r[j] = beta * (v[j] - ks[j]);
      // Sweep 2: S ← Diag(α) S + k rᵀ, and o = Sᵀ q from the updated rows.
      for (int j0 = 0; j0 < D; j0 += kCols) {
        float acc[kCols] = {};
        for (int d = 0; d < D; ++d) {
          float* Sr = S + d * D + j0;
          const float a = alpha[d], kd = k[d], qd = q[d];
#pragma omp simd
          for (int j = 0; j < kCols; ++j) {
            const float sn = a * Sr[j] + kd * r[j0 + j];
            Sr[j] = sn;
            acc[j] += qd * sn;
          }
        }
        for (int j = 0; j < kCols; ++j) o[j0 + j] = acc[j];
      }
    }
  }
}

}  // namespace kimi::cpu
