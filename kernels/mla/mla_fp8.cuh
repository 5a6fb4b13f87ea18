// The fp8 latent cache's decode (record layout in mla.h): e4m3 codes times their group's scale,
// as bf16. The scales are powers of two and the codes normal or zero (cpu::mla_fp8_quantize), so
// code · scale is exact in bf16 and needs no conversion instruction (those issue at a quarter of
// the integer rate; the first decoder, cvt e4m3x2 -> f16x2 -> f32, times the scale, cvt to
// bf16x2, cost ~1.4 us per 64-row tile of the decode kernel, more than the tile's bytes take):
// a code's magnitude bits shifted left by 4 under its sign bit are the bf16 of code · 2^-120
// (e4m3's exponent bias is 7, bf16's 127), and two bf16x2 multiplies by 2^120 and the scale
// (both exact) finish it: 2 integer operations per value and 1 bf16x2 multiply per pair.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace kimi::cuda::mla {

// The bf16x2 multiplier of a group's scale (a power of two, or 0): exact.
__device__ __forceinline__ __nv_bfloat162 fp8_scale2(float scale) {
  return __float2bfloat162_rn(scale);
}

// 4 codes (lowest channel in the low byte) -> 4 bf16 in 2 registers (lowest channel low).
__device__ __forceinline__ uint2 fp8x4_to_bf16(uint32_t codes, __nv_bfloat162 scale2) {
  const uint32_t m = codes & 0x7f7f7f7fu, s = codes & 0x80808080u;
  // Per pair: magnitudes into the low bytes of the 16-bit lanes, signs into their high bytes.
  const uint32_t lo = __byte_perm(m, 0, 0x4140) * 16u + __byte_perm(s, 0, 0x1404);
  const uint32_t hi = __byte_perm(m, 0, 0x4342) * 16u + __byte_perm(s, 0, 0x3424);
  const __nv_bfloat162 k120 =
      __halves2bfloat162(__ushort_as_bfloat16(0x7b80), __ushort_as_bfloat16(0x7b80));
  __nv_bfloat162 a = *reinterpret_cast<const __nv_bfloat162*>(&lo);
  __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162*>(&hi);
  a = __hmul2(__hmul2(a, k120), scale2);
  b = __hmul2(__hmul2(b, k120), scale2);
  return make_uint2(*reinterpret_cast<const uint32_t*>(&a), *reinterpret_cast<const uint32_t*>(&b));
}

// 8 codes (a uint2) -> 8 bf16 (one 16-byte piece).
__device__ __forceinline__ uint4 fp8x8_to_bf16(uint2 codes, __nv_bfloat162 scale2) {
  const uint2 lo = fp8x4_to_bf16(codes.x, scale2), hi = fp8x4_to_bf16(codes.y, scale2);
  return make_uint4(lo.x, lo.y, hi.x, hi.y);
}

// One e4m3 code of x (round to nearest even, saturated to ±448), subnormal codes flushed to ±0,
// as cpu::mla_fp8_code.
__device__ __forceinline__ uint8_t fp8_code(float x) {
  const uint8_t c = uint8_t(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
  return (c & 0x78) == 0 ? c & 0x80 : c;
}

}  // namespace kimi::cuda::mla
