// Scalar storage types and conversions. bf16/f16 are stored as uint16_t on the host.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace kimi {

enum class DType { kBF16, kF16, kF32, kF8E4M3, kI32, kI64, kU8 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);             // safetensors spelling: "BF16", "F32", ...
bool dtype_from_name(const std::string& s, DType* out);

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float f8e4m3_to_f32(uint8_t v);

// Converts n elements of type t at src to fp32.
void convert_to_f32(DType t, const void* src, float* dst, size_t n);

}  // namespace kimi
