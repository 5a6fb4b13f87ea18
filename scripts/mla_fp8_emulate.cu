// CPU replay of mla_decode_fp8_kernel's register operands (kernels/mla/mla_decode_fp8.cuh) for
// checking its indexing without a GPU: one tile's Sᵀ and Oᵀ fragments are built lane by lane as
// the kernel builds them (the same record offsets; Sᵀ's codes as cvt e4m3x2 -> f16x2 gives them,
// per scale group, folded with the key's scale; Oᵀ's prmt selectors and decoding, prmt emulated
// from its PTX definition, cvt to f16 exact, f16 multiplies by the per-key multipliers rounded as
// the kernel rounds them), multiplied with Q staged by dec8_qcol (scaled and rounded as the
// kernel stages it) and with P, and compared with an fp64 reference of code · scale over random
// records; the 16-byte loads' bank groups are checked per 8-lane phase, and the keys past the
// context (NaN codes and scales: zeroed, multiplier 0) in Oᵀ.
// Build and run (no GPU needed):
//   nvcc -std=c++17 -O2 -Ikernels -Isrc -Iinclude -gencode arch=compute_90a,code=sm_90a \
//     scripts/mla_fp8_emulate.cu -o /tmp/mla_fp8_emulate && /tmp/mla_fp8_emulate
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "mla/mla_decode_fp8.cuh"

using namespace kimi::cuda;
using namespace kimi::cuda::mla;

namespace {

int g_fail = 0;
#define EXPECT(c)                                                          \
  do {                                                                     \
    if (!(c)) {                                                            \
      if (++g_fail < 20) std::printf("FAIL %s:%d %s\n", __FILE__, __LINE__, #c); \
    }                                                                      \
  } while (0)

uint32_t prmt_h(uint32_t a, uint32_t b, uint32_t sel) {
  const uint64_t x = uint64_t(b) << 32 | a;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t c = (sel >> (4 * i)) & 15;
    uint32_t byte = (x >> (8 * (c & 7))) & 0xff;
    if (c & 8) byte = (byte & 0x80) ? 0xff : 0;
    r |= byte << (8 * i);
  }
  return r;
}
float bf(uint32_t h) {
  const uint32_t u = h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t fbits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
double e4m3(uint8_t c) {
  const int e = (c >> 3) & 15, m = c & 7;
  const double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1 + m / 8.0, e - 7);
  return (c & 0x80) ? -v : v;
}
uint32_t ld32(const std::vector<uint8_t>& t, int off) {
  uint32_t v;
  std::memcpy(&v, &t[off], 4);
  return v;
}
// Bank groups (16-byte units mod 8) of one 8-lane phase must be distinct.
void check_phase(const int (&off)[32]) {
  for (int q = 0; q < 4; ++q) {
    int seen = 0;
    for (int l = 8 * q; l < 8 * q + 8; ++l) {
      EXPECT(off[l] % 16 == 0);
      seen |= 1 << ((off[l] / 16) % 8);
    }
    EXPECT(seen == 0xff);
  }
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  constexpr int R = kMlaFp8Row, NK = 64, NH = 32;
  std::vector<uint8_t> tile(NK * R);
  std::vector<double> K(NK * 576);  // decoded reference (code · scale; k_pe)
  for (int k = 0; k < NK; ++k) {
    for (int gr = 0; gr < 4; ++gr) {
      const float sc = std::ldexp(1.f, int(rng() % 15) - 10);
      std::memcpy(&tile[k * R + kMlaFp8ScaleOff + 4 * gr], &sc, 4);
      for (int i = 0; i < 128; ++i) {
        uint8_t c = uint8_t(rng());
        if ((c & 0x7f) == 0x7f) c &= 0xfe;   // no NaN codes
        if ((c & 0x78) == 0) c &= 0x80;      // subnormals flushed
        tile[k * R + 128 * gr + i] = c;
        K[k * 576 + 128 * gr + i] = e4m3(c) * sc;
      }
    }
    for (int i = 0; i < 64; ++i) {
      const uint16_t h = uint16_t(fbits(float(int(rng() % 2001) - 1000) / 256.f) >> 16);
      std::memcpy(&tile[k * R + kMlaFp8PeOff + 2 * i], &h, 2);
      K[k * 576 + 512 + i] = bf(h);
    }
  }
  // Q, staged as the kernel does: in dec8_qcol's order, times 2^(141 − E) (E the largest bf16
  // exponent field of Q, at least 15), ĉ rounded to f16, k_pe kept in bf16.
  std::vector<double> Q(NH * 576), Qs(NH * 576, NAN);
  std::vector<int> hit(576, 0);
  for (int ch = 0; ch < 576; ++ch) hit[dec8_qcol(ch)]++;
  for (int k = 0; k < 576; ++k) EXPECT(hit[k] == 1);
  uint32_t em = 0;
  for (int h = 0; h < NH; ++h)
    for (int ch = 0; ch < 576; ++ch) {
      const uint32_t hb = fbits(float(int(rng() % 2001) - 1000) / 512.f) >> 16;
      Q[h * 576 + ch] = bf(hb);
      em = std::max(em, hb & 0x7f80u);
    }
  const int qe = std::max(int(em >> 7), 15);
  const double qf = std::ldexp(1.0, 141 - qe);
  for (int h = 0; h < NH; ++h)
    for (int ch = 0; ch < 576; ++ch) {
      const float x = float(Q[h * 576 + ch] * qf);
      Qs[h * 576 + dec8_qcol(ch)] = ch < 512 ? double(__half2float(__float2half_rn(x))) : x;
    }
  // ---- Sᵀ as the kernel builds it: group 0 k_pe (bf16 words as they lie, into s); groups
  // 1 + 2G, 2 + 2G scale group G's codes (cvt e4m3x2 -> f16x2: exact) into acc, then
  // s += scale(key, G) · acc.
  std::vector<double> S(NK * NH, 0.0);
  for (int w = 0; w < 4; ++w) {
    for (int jg = 0; jg < 9; ++jg) {
      int offs[2][32], offs2[32];
      std::vector<double> acc(NK * NH, 0.0);
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4, s_key = 16 * w + g;
        const int rec0t = s_key * R + 32 * t, rec1t = rec0t + 8 * R;
        const int off = jg == 0 ? kMlaFp8PeOff : 128 * ((jg - 1) / 2) + 16 * ((jg - 1) % 2);
        offs[0][lane] = rec0t + off;
        offs[1][lane] = rec1t + off;
        offs2[lane] = rec0t + off + 16;
        for (int u = 0; u < 4; ++u) {
          double a[4][2];  // register i: (lo, hi)
          if (jg == 0) {
            const int po = off + 16 * (u / 2) + 4 * 2 * (u % 2);
            for (int i = 0; i < 4; ++i) {
              const uint32_t v = ld32(tile, ((i & 1) ? rec1t : rec0t) + po + 4 * (i >> 1));
              a[i][0] = bf(v & 0xffff);
              a[i][1] = bf(v >> 16);
            }
          } else {
            for (int r = 0; r < 2; ++r) {  // dec8_cvt: bytes 0, 1 -> register r, 2, 3 -> r + 2
              const uint32_t v = ld32(tile, (r ? rec1t : rec0t) + off + 4 * u);
              for (int e = 0; e < 4; ++e) a[r + 2 * (e / 2)][e % 2] = e4m3(uint8_t(v >> (8 * e)));
            }
          }
          const int ks = jg == 0 ? 32 + u : 4 * (jg - 1) + u;
          std::vector<double>& d = jg == 0 ? S : acc;
          for (int i = 0; i < 4; ++i)
            for (int e = 0; e < 2; ++e) {
              const int row = 16 * w + g + 8 * (i & 1), col = 2 * t + e + 8 * (i >> 1);
              for (int h = 0; h < NH; ++h) d[row * NH + h] += a[i][e] * Qs[h * 576 + 16 * ks + col];
            }
        }
      }
      if (jg > 0)  // the fold: this half of scale group G times the key's scale
        for (int row = 16 * w; row < 16 * w + 16; ++row) {
          float sc;
          std::memcpy(&sc, &tile[row * R + kMlaFp8ScaleOff + 4 * ((jg - 1) / 2)], 4);
          for (int h = 0; h < NH; ++h) S[row * NH + h] += double(sc) * acc[row * NH + h];
        }
      check_phase(offs[0]);
      check_phase(offs[1]);
      if (jg == 0) check_phase(offs2);
    }
  }
  for (auto& x : S) x /= qf;  // the softmax's 2^(E − 141)
  double err = 0, ref2 = 0;
  for (int k = 0; k < NK; ++k)
    for (int h = 0; h < NH; ++h) {
      double r = 0;
      for (int ch = 0; ch < 576; ++ch) r += K[k * 576 + ch] * Q[h * 576 + ch];
      err = std::max(err, std::fabs(r - S[k * NH + h]));
      ref2 = std::max(ref2, std::fabs(r));
    }
  std::printf("S: max |err| %.3g (max |S| %.3g)\n", err, ref2);
  EXPECT(err <= 1e-9 * ref2);

  // ---- Oᵀ as the kernel builds it: the softmax's per-key exponent e_k (of the key's largest
  // scale, clamped to [−30, 126]) and multipliers scale(key, G) · 2^(7 − e_k) in f16 (0 for keys
  // at or past lim), the codes of one channel of two keys gathered by prmt, cvt to f16 (exact),
  // times the multipliers in f16 (rounded as __hmul2 rounds); B = P · 2^e_k in f16 (exact here:
  // the replay draws B as i / 1024 and takes P = B · 2^-e_k), O · 2^-7 against code · scale.
  // Rows at or past lim hold NaN codes and scales, as rows past the context may.
  for (int lim : {64, 37}) {
    std::vector<uint8_t> vt = tile;
    for (int k = lim; k < NK; ++k) {
      for (int i = 0; i < 512; ++i) vt[k * R + i] = 0x7f;
      for (int i = 0; i < 16; ++i) vt[k * R + kMlaFp8ScaleOff + i] = 0xff;
    }
    std::vector<double> P(NH * NK), B(NH * NK), O(NH * 512, 0.0);
    std::vector<__half> mtab(4 * NK);
    std::vector<int> ek(NK);
    for (int k = 0; k < NK; ++k) {
      uint32_t mx = 0;
      for (int gr = 0; gr < 4; ++gr) mx = std::max(mx, ld32(vt, k * R + kMlaFp8ScaleOff + 4 * gr));
      const int E = std::min(std::max(int(mx >> 23), 97), 253);
      ek[k] = E - 127;
      for (int gr = 0; gr < 4; ++gr) {
        float sc, f2;
        const uint32_t sb = ld32(vt, k * R + kMlaFp8ScaleOff + 4 * gr);
        const uint32_t fb = uint32_t(261 - E) << 23;
        std::memcpy(&sc, &sb, 4);
        std::memcpy(&f2, &fb, 4);
        mtab[gr * NK + k] = __float2half_rn(k < lim ? sc * f2 : 0.f);
      }
      for (int h = 0; h < NH; ++h) {
        B[h * NK + k] = double(rng() % 1025) / 1024.0;
        P[h * NK + k] = std::ldexp(B[h * NK + k], -ek[k]);
      }
    }
    for (int w = 0; w < 4; ++w)
      for (int kk = 0; kk < 4; ++kk) {
        int offs[4][32];
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane / 4, t = lane % 4;
          uint32_t y[4][4];
          for (int q = 0; q < 4; ++q) {
            const int key = 16 * kk + 2 * t + (q & 1) + 8 * (q >> 1);
            offs[q][lane] = key * R + 16 * (8 * w + g);
            for (int i = 0; i < 4; ++i) y[q][i] = key < lim ? ld32(vt, offs[q][lane] + 4 * i) : 0u;
          }
          for (int c = 0; c < 8; ++c) {
            const int wd = c / 2, b0 = 2 * (c % 2);
            const uint32_t sel = b0 | (4 + b0) << 4 | (b0 + 1) << 8 | (5 + b0) << 12;
            double a[4][2];
            for (int hq = 0; hq < 2; ++hq) {
              const uint32_t x = prmt_h(y[2 * hq][wd], y[2 * hq + 1][wd], sel);
              for (int r = 0; r < 2; ++r)      // cvt: bytes 0, 1 -> register 2hq, 2, 3 -> 2hq + 1
                for (int e = 0; e < 2; ++e) {  // e: the key (lo, hi)
                  const int key = 16 * kk + 2 * t + e + 8 * hq;
                  const float m = __half2float(mtab[w * NK + key]);
                  a[2 * hq + r][e] = __half2float(__float2half_rn(
                      float(e4m3(uint8_t(x >> (8 * (2 * r + e))))) * m));
                }
            }
            for (int i = 0; i < 4; ++i)
              for (int e = 0; e < 2; ++e) {
                const int ch = dec8_vch(c, w, g, i & 1);
                const int key = 16 * kk + 2 * t + e + 8 * (i >> 1);
                for (int h = 0; h < NH; ++h) O[h * 512 + ch] += a[i][e] * B[h * NK + key];
              }
          }
        }
        for (int q = 0; q < 4; ++q) check_phase(offs[q]);
      }
    double oerr = 0, oref = 0;
    for (int h = 0; h < NH; ++h)
      for (int ch = 0; ch < 512; ++ch) {
        double r = 0;
        for (int k = 0; k < lim; ++k) r += P[h * NK + k] * K[k * 576 + ch];
        const double o = O[h * 512 + ch] / 128.0;
        oerr = std::max(oerr, std::isnan(o) ? INFINITY : std::fabs(r - o));
        oref = std::max(oref, std::fabs(r));
      }
    std::printf("O (lim %d): max |err| %.3g (max |O| %.3g)\n", lim, oerr, oref);
    EXPECT(oerr <= 1e-9 * oref);
  }
  std::printf(g_fail ? "FAILED (%d)\n" : "ok\n", g_fail);
  return g_fail ? 1 : 0;
}
