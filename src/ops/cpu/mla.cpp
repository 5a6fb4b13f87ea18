// CPU reference for MLA over the paged latent cache (model.md §4), fp32, OpenMP.
//
// Cache: [num_blocks, 64, 576], row = ĉ (512, normed) | k_pe (64); token position p of sequence s
// is row p % 64 of block block_tables[s][p / 64]. Query token i of a sequence with n new tokens
// and context length L sits at position L − n + i and sees positions 0..L − n + i.
//
// Absorbed (the product path): per head h, q_abs = W_UK(h)ᵀ q_nope (512), q̃ = [q_abs | q_pe];
//   s_j = scale · q̃ · cache_j (576), p = softmax(s) (fp32, max subtracted), u = Σ_j p_j ĉ_j,
//   out = W_UV(h) u. Tasks: (query token, group of 16 heads); per 64-row cache block the scores
//   are one GEMM [rows × 576]·[576 × heads] and Σ p ĉ another, so each cache row is read twice
//   per group (once per pass) and used by all its heads. Groups of ≤ 8 heads run 8 wide.
// Expanded (the plain reference): k_nope_j = W_UK(h) ĉ_j, v_j = W_UV(h) ĉ_j for every cached
//   position, then s_j = scale · (q_nope · k_nope_j + q_pe · k_pe_j), out = Σ_j p_j v_j.
//   It allocates its expanded K/V per sequence; it is for tests, not for serving.
// kv_b: [H·256, 512]; rows h·256 .. +127 are W_UK(h), the next 128 are W_UV(h).
#include "ops/cpu/mla.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "model/config.h"
#include "ops/cpu/small_gemm.h"

namespace kimi::cpu {

namespace {

constexpr int kLat = kMlaLatentDim;    // 512
constexpr int kPe = kMlaRopeDim;       // 64
constexpr int kRow = kMlaCacheDim;     // 576
constexpr int kNope = kMlaNopeDim;     // 128
constexpr int kV = kMlaVDim;           // 128
constexpr int kQ = kMlaQkDim;          // 192
constexpr int kHeadRows = kNope + kV;  // 256 rows of kv_b per head
constexpr int kGroup = 16;             // heads per absorbed-attention task
constexpr int kScoreSplit = 64;        // partial-sum length of the 576-long score dot products
static_assert(kRow % kScoreSplit == 0);
static_assert(kMlaBlockSize == 64);

// Checks the paged-batch description; returns the number of new tokens.
int64_t check_paged(int num_seqs, const int* cu_seqlens, const int* context_lens,
                    const int* block_tables, int max_blocks_per_seq, int num_blocks,
                    const char* op) {
  KIMI_CHECK(num_seqs >= 0, "num_seqs = ", num_seqs, " (", op, ")");
  if (num_seqs == 0) return 0;
  KIMI_CHECK(cu_seqlens && context_lens && block_tables,
             "cu_seqlens, context_lens and block_tables are required (", op, ")");
  KIMI_CHECK(num_blocks > 0 && max_blocks_per_seq > 0, "num_blocks = ", num_blocks,
             ", max_blocks_per_seq = ", max_blocks_per_seq, " (", op, ")");
  KIMI_CHECK(cu_seqlens[0] == 0, "cu_seqlens[0] = ", cu_seqlens[0], " (", op, ")");
  for (int s = 0; s < num_seqs; ++s) {
    const int n_new = cu_seqlens[s + 1] - cu_seqlens[s];
    const int len = context_lens[s];
    KIMI_CHECK(n_new >= 0, "cu_seqlens decreases at ", s, " (", op, ")");
    KIMI_CHECK(len >= n_new, "sequence ", s, " has ", n_new, " new tokens but context ", len, " (",
               op, ")");
    const int used = (len + kMlaBlockSize - 1) / kMlaBlockSize;
    KIMI_CHECK(used <= max_blocks_per_seq, "sequence ", s, " needs ", used,
               " blocks, the table holds ", max_blocks_per_seq, " (", op, ")");
    for (int b = 0; b < used; ++b) {
      const int id = block_tables[int64_t(s) * max_blocks_per_seq + b];
      KIMI_CHECK(id >= 0 && id < num_blocks, "sequence ", s, " block ", b, " = ", id,
                 " is outside [0, ", num_blocks, ") (", op, ")");
    }
  }
  return cu_seqlens[num_seqs];
}

template <typename F>  // float or const float
inline F* cache_row(F* cache, const int* table, int pos) {
  return cache + (int64_t(table[pos / kMlaBlockSize]) * kMlaBlockSize + pos % kMlaBlockSize) * kRow;
}

template <int N>
inline float dot(const float* a, const float* b) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int i = 0; i < N; ++i) acc += a[i] * b[i];
  return acc;
}

// The sequence that token t belongs to (cu_seqlens is non-decreasing).
inline int seq_of(const int* cu_seqlens, int num_seqs, int64_t t) {
  return int(std::upper_bound(cu_seqlens + 1, cu_seqlens + num_seqs + 1, t) - (cu_seqlens + 1));
}

// Per-thread scratch of the absorbed path, grown on first use and then reused.
struct AbsorbWork {
  std::vector<float> qt =
      std::vector<float>(kRow * kGroup);  // [576, Gp] q̃ of the group, transposed
  std::vector<float> u = std::vector<float>(kGroup * kLat);  // [Gp, 512] Σ p ĉ
  std::vector<float> sc;                                     // [len, Gp] scores, then p
};

AbsorbWork& absorb_work() {
  thread_local AbsorbWork work;
  return work;
}

void check_attn(const MlaAttnParams& p, const char* op, int64_t* T) {
  *T = check_paged(p.num_seqs, p.cu_seqlens, p.context_lens, p.block_tables, p.max_blocks_per_seq,
                   p.num_blocks, op);
  KIMI_CHECK(p.num_heads > 0, "num_heads = ", p.num_heads, " (", op, ")");
  KIMI_CHECK(p.scale > 0.f, "scale = ", p.scale, " (", op, ")");
  if (*T > 0)
    KIMI_CHECK(p.cache && p.q && p.kv_b && p.out, "cache, q, kv_b and out are required (", op, ")");
}

// q̃[:, g] = [W_UK(h)ᵀ q_nope | q_pe] for heads h0 .. h0 + nh − 1 of token t, stored transposed
// as qt [576, gp]; columns nh .. gp − 1 are zero.
void absorbed_query(const MlaAttnParams& p, int64_t t, int h0, int nh, int gp, float* qt) {
  std::fill(qt, qt + kRow * gp, 0.f);
  for (int g = 0; g < nh; ++g) {
    const int h = h0 + g;
    const float* q = p.q + (t * p.num_heads + h) * kQ;
    const float* wuk = p.kv_b + int64_t(h) * kHeadRows * kLat;
    alignas(64) float qa[kLat] = {};
    for (int r = 0; r < kNope; ++r) {
      const float qr = q[r];
      const float* wr = wuk + r * kLat;
#pragma omp simd
      for (int c = 0; c < kLat; ++c) qa[c] += qr * wr[c];
    }
    for (int c = 0; c < kLat; ++c) qt[c * gp + g] = qa[c];
    for (int c = 0; c < kPe; ++c) qt[(kLat + c) * gp + g] = q[kNope + c];
  }
}

// In-place softmax of x[0], x[stride], ..., x[(n − 1)·stride] in fp32, max subtracted.
void softmax_strided(float* x, int n, int stride) {
  float mx = x[0];
  for (int j = 1; j < n; ++j) mx = std::max(mx, x[j * stride]);
  float sum = 0.f;
  for (int j = 0; j < n; ++j) {
    const float e = std::exp(x[j * stride] - mx);
    x[j * stride] = e;
    sum += e;
  }
  const float inv = 1.f / sum;
  for (int j = 0; j < n; ++j) x[j * stride] *= inv;
}

}  // namespace

uint8_t e4m3_from_float(float x) {
  if (std::isnan(x)) return 0x7f;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  const float a = std::fabs(x);
  if (a >= kE4m3Max) return sign | 0x7e;
  // The quantum of a's binade (3 mantissa bits), 2^-9 below the smallest normal 2^-6.
  int e = 0;
  std::frexp(a, &e);  // a in [2^(e-1), 2^e)
  const int binade = std::max(e - 1, -6);
  const float m = std::nearbyint(std::ldexp(a, 3 - binade));  // exact scaling, ties to even
  if (m == 0.f) return sign;
  if (binade == -6 && m < 8.f) return sign | uint8_t(m);  // subnormal
  const int mi = int(m), carry = mi == 16;                // rounded up into the next binade
  const int exp_field = binade + 7 + carry, mant = carry ? 0 : mi - 8;
  return sign | uint8_t(exp_field << 3) | uint8_t(mant);
}

float e4m3_to_float(uint8_t code) {
  const int exp_field = (code >> 3) & 15, mant = code & 7;
  const float v = (code & 0x7f) == 0x7f ? NAN
                  : exp_field == 0      ? std::ldexp(float(mant), -9)  // subnormal
                                        : std::ldexp(float(8 + mant), exp_field - 10);
  return code & 0x80 ? -v : v;
}

int mla_fp8_scale_exponent(float amax) {
  int e = 0;
  const float f = std::frexp(amax, &e);  // amax = f · 2^e, f in [0.5, 1); 448 = 0.875 · 2^9
  return e - 9 + (f > 0.875f);
}

uint8_t mla_fp8_code(float x, float inv_scale) {
  const uint8_t c = e4m3_from_float(x * inv_scale);
  return (c & 0x78) == 0 ? c & 0x80 : c;  // subnormal codes flushed to ±0
}

void mla_fp8_quantize(const float* latent, uint8_t* codes, float* scales) {
  for (int g = 0; g < kLat / kMlaFp8Group; ++g) {
    const float* x = latent + g * kMlaFp8Group;
    float amax = 0.f;
    for (int i = 0; i < kMlaFp8Group; ++i) amax = std::max(amax, std::fabs(x[i]));
    // Powers of two: x · 2^-k is exact, so the CUDA write kernel (the same steps) gets the same
    // codes from the same x.
    // Groups whose amax is below the normal floats or whose 2^±k would not be one: scale 0.
    const int k = mla_fp8_scale_exponent(amax);
    const bool on = amax >= FLT_MIN && k > -127 && k < 127;
    scales[g] = on ? std::ldexp(1.f, k) : 0.f;
    const float inv = on ? std::ldexp(1.f, -k) : 0.f;
    for (int i = 0; i < kMlaFp8Group; ++i) codes[g * kMlaFp8Group + i] = mla_fp8_code(x[i], inv);
  }
}

void mla_cache_write(const MlaCacheWriteParams& p) {
  const int64_t T = check_paged(p.num_seqs, p.cu_seqlens, p.context_lens, p.block_tables,
                                p.max_blocks_per_seq, p.num_blocks, "mla_cache_write");
  if (T == 0) return;
  KIMI_CHECK(p.latent && p.cache, "mla_cache_write: latent and cache are required");
#pragma omp parallel for schedule(static) if (T > 64)
  for (int64_t t = 0; t < T; ++t) {
    const int s = seq_of(p.cu_seqlens, p.num_seqs, t);
    const int n_new = p.cu_seqlens[s + 1] - p.cu_seqlens[s];
    const int pos = p.context_lens[s] - n_new + int(t - p.cu_seqlens[s]);
    const int* table = p.block_tables + int64_t(s) * p.max_blocks_per_seq;
    float* dst = cache_row(p.cache, table, pos);
    std::memcpy(dst, p.latent + t * kRow, sizeof(float) * kRow);
    if (p.fp8) {
      uint8_t codes[kLat];
      float scales[kLat / kMlaFp8Group];
      mla_fp8_quantize(dst, codes, scales);
      for (int i = 0; i < kLat; ++i) dst[i] = e4m3_to_float(codes[i]) * scales[i / kMlaFp8Group];
    }
  }
}

void mla_attention_absorbed(const MlaAttnParams& p) {
  int64_t T = 0;
  check_attn(p, "mla_attention_absorbed", &T);
  const int H = p.num_heads;
  const int groups = (H + kGroup - 1) / kGroup;
  const int64_t tasks = T * groups;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    AbsorbWork& w = absorb_work();
    const int64_t t = task / groups;
    const int h0 = int(task % groups) * kGroup;
    const int nh = std::min(kGroup, H - h0);
    const int gp = nh <= kGroup / 2 ? kGroup / 2 : kGroup;  // GEMM width; extra heads are zero
    const int s = seq_of(p.cu_seqlens, p.num_seqs, t);
    const int n_new = p.cu_seqlens[s + 1] - p.cu_seqlens[s];
    const int len = p.context_lens[s] - n_new + int(t - p.cu_seqlens[s]) + 1;
    const int* table = p.block_tables + int64_t(s) * p.max_blocks_per_seq;
    if (w.sc.size() < size_t(len) * gp) w.sc.resize(size_t(len) * gp);
    float* qt = w.qt.data();
    float* sc = w.sc.data();
    float* u = w.u.data();

    absorbed_query(p, t, h0, nh, gp, qt);
    // Scores block by block: sc[j, :] = cache_j · q̃ (a cache block holds 64 contiguous rows).
    // The 576-long sums run as 9 partial GEMMs of 64: shorter sequential sums, smaller rounding.
    for (int j0 = 0; j0 < len; j0 += kMlaBlockSize) {
      const int rows = std::min(kMlaBlockSize, len - j0);
      const float* blk = cache_row(p.cache, table, j0);
      for (int c0 = 0; c0 < kRow; c0 += kScoreSplit) {
        if (gp == kGroup)
          detail::gemm<kGroup>(rows, gp, kScoreSplit, p.scale, blk + c0, kRow, 1, qt + c0 * gp, gp,
                               sc + j0 * gp, gp, c0 == 0);
        else
          detail::gemm<kGroup / 2>(rows, gp, kScoreSplit, p.scale, blk + c0, kRow, 1, qt + c0 * gp,
                                   gp, sc + j0 * gp, gp, c0 == 0);
      }
    }
    for (int g = 0; g < nh; ++g) softmax_strided(sc + g, len, gp);
    // u[g, :] = Σ_j p[j, g] ĉ_j, block by block.
    for (int j0 = 0; j0 < len; j0 += kMlaBlockSize) {
      const int rows = std::min(kMlaBlockSize, len - j0);
      const float* blk = cache_row(p.cache, table, j0);
      detail::gemm<16>(nh, kLat, rows, 1.f, sc + j0 * gp, 1, gp, blk, kRow, u, kLat, j0 == 0);
    }
    // out[h] = W_UV(h) u[g]
    for (int g = 0; g < nh; ++g) {
      const int h = h0 + g;
      const float* wuv = p.kv_b + (int64_t(h) * kHeadRows + kNope) * kLat;
      float* o = p.out + (t * H + h) * kV;
      for (int r = 0; r < kV; ++r) o[r] = dot<kLat>(wuv + r * kLat, u + g * kLat);
    }
  }
}

void mla_attention_expanded(const MlaAttnParams& p) {
  int64_t T = 0;
  check_attn(p, "mla_attention_expanded", &T);
  const int H = p.num_heads;
  for (int s = 0; s < p.num_seqs; ++s) {
    const int n_new = p.cu_seqlens[s + 1] - p.cu_seqlens[s];
    if (n_new == 0) continue;
    const int ctx = p.context_lens[s];
    const int* table = p.block_tables + int64_t(s) * p.max_blocks_per_seq;
    // Expanded keys and values of every cached position: [ctx, H, 128] each.
    std::vector<float> kn(size_t(ctx) * H * kNope), vv(size_t(ctx) * H * kV);
#pragma omp parallel for schedule(static)
    for (int j = 0; j < ctx; ++j) {
      const float* c = cache_row(p.cache, table, j);
      for (int h = 0; h < H; ++h) {
        const float* w = p.kv_b + int64_t(h) * kHeadRows * kLat;
        for (int r = 0; r < kNope; ++r)
          kn[(size_t(j) * H + h) * kNope + r] = dot<kLat>(w + r * kLat, c);
        for (int r = 0; r < kV; ++r)
          vv[(size_t(j) * H + h) * kV + r] = dot<kLat>(w + (kNope + r) * kLat, c);
      }
    }
#pragma omp parallel
    {
      std::vector<float> sc(ctx);
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < int64_t(n_new) * H; ++task) {
        const int i = int(task / H), h = int(task % H);
        const int64_t t = p.cu_seqlens[s] + i;
        const int len = ctx - n_new + i + 1;
        const float* q = p.q + (t * H + h) * kQ;
        for (int j = 0; j < len; ++j) {
          const float* kpe = cache_row(p.cache, table, j) + kLat;
          sc[j] = p.scale * (dot<kNope>(q, kn.data() + (size_t(j) * H + h) * kNope) +
                             dot<kPe>(q + kNope, kpe));
        }
        softmax_strided(sc.data(), len, 1);
        float* o = p.out + (t * H + h) * kV;
        std::fill(o, o + kV, 0.f);
        for (int j = 0; j < len; ++j) {
          const float pj = sc[j];
          const float* v = vv.data() + (size_t(j) * H + h) * kV;
          for (int r = 0; r < kV; ++r) o[r] += pj * v[r];
        }
      }
    }
  }
}

}  // namespace kimi::cpu
