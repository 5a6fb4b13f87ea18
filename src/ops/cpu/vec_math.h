// Internal to the CPU ops: an exp that the compiler vectorises inside `#pragma omp simd` loops
// (libm's expf is a scalar call, and it dominated the chunked KDA prefill). Used by kda_chunked
// only; the recurrent definition keeps std::exp.
//
// exp(x) = 2^n · e^r with n = round(x / ln 2) and r = x − n ln 2 ∈ [−ln2/2, ln2/2] (Cody–Waite
// split of ln 2), e^r by its degree-7 Taylor polynomial (truncation < 6e-9 relative).
// Domain x ≤ 88 (the chunked KDA only passes x ≤ 0). Within 2 ulp over [−87, 88]
// (tests/unit/test_kda.cpp checks it against double exp), exactly 1 at x = 0, 0 below −87
// (libm returns values < 2e-38 there) including −inf, NaN for NaN.
//
// Branch-free on purpose: with GCC's default -ftrapping-math, a float select or clamp whose
// result feeds float arithmetic gets threaded into a branch and the loop is not vectorised, so
// the underflow is applied as an integer mask on the result's bits.
#pragma once

#include <bit>
#include <cstdint>

namespace kimi::cpu::detail {

inline float exp_fast(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;     // 8 significant bits: n · kLn2Hi is exact
  constexpr float kLn2Lo = -2.12194440e-4f;  // ln 2 − kLn2Hi
  constexpr float kMagic = 12582912.f;       // 1.5 · 2^23: y + kMagic rounds y to an integer
  const float t = x * kLog2e + kMagic;
  const float n = t - kMagic;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  // n sits in the low mantissa bits of t; 2^n is built directly in the exponent field (valid for
  // n ≥ −126, i.e. x ≥ −87; below that the mask zeroes whatever was computed).
  const uint32_t nb = std::bit_cast<uint32_t>(t) - std::bit_cast<uint32_t>(kMagic);
  const float scale = std::bit_cast<float>((nb + 127u) << 23);
  const uint32_t keep = -uint32_t(!(x < -87.f));  // all ones unless x < −87 (NaN kept)
  return std::bit_cast<float>(std::bit_cast<uint32_t>(p * scale) & keep);
}

}  // namespace kimi::cpu::detail
