// The fp8 latent cache's decode (record layout in mla.h): e4m3 codes times their group's fp32
// scale, rounded to the bf16 the attention kernels read. cvt e4m3x2 -> f16x2 is exact (every
// e4m3 value is an f16 normal), the product is fp32, so the one rounding is the final bf16 one.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace kimi::cuda::mla {

// Codes of 4 consecutive channels (lowest channel in the low byte) -> 4 bf16 in 2 registers.
__device__ __forceinline__ uint2 fp8x4_to_bf16(uint32_t codes, float scale) {
  uint32_t out[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(
        __nv_fp8x2_storage_t((codes >> (16 * i)) & 0xffffu), __NV_E4M3);
    const float2 f = __half22float2(__half2(h));
    const __nv_bfloat162 b = __floats2bfloat162_rn(f.x * scale, f.y * scale);
    out[i] = *reinterpret_cast<const uint32_t*>(&b);
  }
  return make_uint2(out[0], out[1]);
}

// 8 codes (a uint2) -> 8 bf16 (one 16-byte piece).
__device__ __forceinline__ uint4 fp8x8_to_bf16(uint2 codes, float scale) {
  const uint2 lo = fp8x4_to_bf16(codes.x, scale), hi = fp8x4_to_bf16(codes.y, scale);
  return make_uint4(lo.x, lo.y, hi.x, hi.y);
}

// One e4m3 code of x (round to nearest even, saturated to ±448), as cpu::e4m3_from_float.
__device__ __forceinline__ uint8_t fp8_code(float x) {
  return uint8_t(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
}

}  // namespace kimi::cuda::mla
