// The fp8 MLA cache records (kernels/mla/mla.h: e4m3 codes | k_pe bf16 | 4 fp32 scales, 656
// bytes per token) built on the host from a bf16 cache's values with the CPU quantiser, and the
// fp32 values they decode to (what the CPU reference attends over).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "ops/cpu/mla.h"

namespace kimi::test {

constexpr int kFp8Record = 656;  // cuda::kMlaFp8Row, without the CUDA header

struct Fp8Cache {
  std::vector<uint8_t> bytes;  // [rows, 656]
  std::vector<float> values;   // [rows, 576]: code · scale | k_pe
};

// cache: [rows, 576] bf16 bits. Group g of row r is scaled by 4^−((r + g) % 4) first, so the
// groups' scales span 1 .. 1/64 of each other (downwards: larger values would sharpen the
// softmax and test its conditioning instead of the cache; first run: up to 16x gave errors of
// up to 1.5e-2 relative, 1.5 absolute, on every reader alike). A row holding a NaN (never written)
// becomes all 0xff bytes (NaN codes, NaN scales, NaN k_pe) and NaN values.
inline Fp8Cache make_fp8_cache(const std::vector<uint16_t>& cache) {
  const size_t rows = cache.size() / 576;
  Fp8Cache f;
  f.bytes.assign(rows * kFp8Record, 0);
  f.values.assign(rows * 576, 0.f);
  for (size_t r = 0; r < rows; ++r) {
    uint8_t* rec = f.bytes.data() + r * kFp8Record;
    float* val = f.values.data() + r * 576;
    float lat[512];
    bool nan = false;
    for (int i = 0; i < 576; ++i) nan |= std::isnan(bf16_to_f32(cache[r * 576 + i]));
    if (nan) {
      std::memset(rec, 0xff, kFp8Record);
      for (int i = 0; i < 576; ++i) val[i] = NAN;
      continue;
    }
    for (int i = 0; i < 512; ++i)
      lat[i] = std::ldexp(bf16_to_f32(cache[r * 576 + i]), -2 * int((r + i / 128) % 4));
    float scales[4];
    cpu::mla_fp8_quantize(lat, rec, scales);
    std::memcpy(rec + 640, scales, sizeof(scales));
    std::memcpy(rec + 512, &cache[r * 576 + 512], 128);
    for (int i = 0; i < 512; ++i) val[i] = cpu::e4m3_to_float(rec[i]) * scales[i / 128];
    for (int i = 0; i < 64; ++i) val[512 + i] = bf16_to_f32(cache[r * 576 + 512 + i]);
  }
  return f;
}

}  // namespace kimi::test
