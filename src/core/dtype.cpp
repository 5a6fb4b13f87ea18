#include "core/dtype.h"

#include <cmath>

#include "core/check.h"

namespace kimi {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kBF16: case DType::kF16: return 2;
    case DType::kF32: case DType::kI32: return 4;
    case DType::kI64: return 8;
    case DType::kF8E4M3: case DType::kU8: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kBF16: return "BF16";
    case DType::kF16: return "F16";
    case DType::kF32: return "F32";
    case DType::kF8E4M3: return "F8_E4M3";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
    case DType::kU8: return "U8";
  }
  return "?";
}

bool dtype_from_name(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> kNames[] = {
      {"BF16", DType::kBF16}, {"F16", DType::kF16},       {"F32", DType::kF32},
      {"F8_E4M3", DType::kF8E4M3}, {"I32", DType::kI32}, {"I64", DType::kI64},
      {"U8", DType::kU8}};
  for (auto& [name, t] : kNames)
    if (s == name) { *out = t; return true; }
  return false;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float v;
  if (exp == 0) v = std::ldexp(float(mant), -24);
  else if (exp == 31) v = mant ? NAN : INFINITY;
  else v = std::ldexp(float(mant | 0x400), int(exp) - 25);
  return sign ? -v : v;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000;
  float a = std::fabs(f);
  if (std::isnan(f)) return uint16_t(sign | 0x7e00);
  if (a >= 65520.f) return uint16_t(sign | 0x7c00);
  if (a < 6.103515625e-05f) {  // subnormal: round to a multiple of 2^-24
    return uint16_t(sign | uint32_t(std::nearbyint(a * 16777216.f)));
  }
  int e;
  float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  uint32_t mant = uint32_t(std::nearbyint((m * 2.f - 1.f) * 1024.f));
  uint32_t exp = uint32_t(e - 1 + 15);
  if (mant == 1024) { mant = 0; ++exp; }
  return uint16_t(sign | (exp << 10) | mant);
}

float f8e4m3_to_f32(uint8_t v) {
  uint32_t sign = v >> 7, exp = (v >> 3) & 0xf, mant = v & 7;
  float r;
  if (exp == 15 && mant == 7) r = NAN;
  else if (exp == 0) r = std::ldexp(float(mant), -9);
  else r = std::ldexp(float(mant | 8), int(exp) - 10);
  return sign ? -r : r;
}

void convert_to_f32(DType t, const void* src, float* dst, size_t n) {
  switch (t) {
    case DType::kF32: std::memcpy(dst, src, n * 4); return;
    case DType::kBF16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::kF16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::kF8E4M3: {
      auto* s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f8e4m3_to_f32(s[i]);
      return;
    }
    default: fail("cannot convert dtype ", dtype_name(t), " to F32");
  }
}

}  // namespace kimi
