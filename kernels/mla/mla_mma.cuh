// Tensor-core building blocks of the MLA prefill-item kernel (mla_tc.cuh): mma.sync m16n8k16
// bf16 -> fp32, ldmatrix fragment loads with their address formulas.
// Fragment layouts (PTX m16n8k16; g = lane / 4, t = lane % 4; (row, column) of 2 elements):
//   A a0 (g, 2t), a1 (g + 8, 2t), a2 (g, 2t + 8), a3 (g + 8, 2t + 8);
//   B b0 (k 2t, n g), b1 (k 2t + 8, n g);  C c0 c1 (g, 2t), c2 c3 (g + 8, 2t).
#pragma once

#include <cstdint>

#include "async_copy.cuh"
#include "mla/mla.h"

namespace kimi::cuda::mla {

__device__ __forceinline__ void tc_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                       uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void tc_ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void tc_ldsm_x4_trans(uint32_t (&r)[4], const bf16* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
// Row addresses that lane gives ldmatrix (lanes 8i .. 8i + 7: the rows of 8×8 matrix i), as
// element offsets; host-callable so the emulator uses the very same formulas.
// A fragment (16×16 at r0, k0) of a row-major [m][k] tile: matrices (r0, k0), (r0 + 8, k0),
// (r0, k0 + 8), (r0 + 8, k0 + 8) → a0 .. a3.
__host__ __device__ constexpr int tc_off_a(int ld, int r0, int k0, int lane) {
  return (r0 + (lane & 7) + 8 * ((lane >> 3) & 1)) * ld + k0 + 8 * (lane >> 4);
}
// B fragments of n-tiles n0 and n0 + 8 (k0 .. k0 + 15) of a tile stored [n][k] (K rows for S):
// matrices (n0, k0), (n0, k0 + 8), (n0 + 8, k0), (n0 + 8, k0 + 8) → b0, b1 of n-tile n0, b0, b1
// of n-tile n0 + 8.
__host__ __device__ constexpr int tc_off_b_nk(int ld, int n0, int k0, int lane) {
  return (n0 + (lane & 7) + 8 * (lane >> 4)) * ld + k0 + 8 * ((lane >> 3) & 1);
}
// The same two n-tiles of a tile stored [k][n] (V = cache rows for P·V), loaded transposed:
// matrices (k0, n0), (k0 + 8, n0), (k0, n0 + 8), (k0 + 8, n0 + 8).
__host__ __device__ constexpr int tc_off_b_kn(int ld, int k0, int n0, int lane) {
  return (k0 + (lane & 7) + 8 * ((lane >> 3) & 1)) * ld + n0 + 8 * (lane >> 4);
}
__device__ __forceinline__ void tc_ldsm_a(uint32_t (&a)[4], const bf16* base, int ld, int r0,
                                          int k0, int lane) {
  tc_ldsm_x4(a, base + tc_off_a(ld, r0, k0, lane));
}
__device__ __forceinline__ void tc_ldsm_b_nk(uint32_t (&b)[4], const bf16* base, int ld, int n0,
                                             int k0, int lane) {
  tc_ldsm_x4(b, base + tc_off_b_nk(ld, n0, k0, lane));
}
__device__ __forceinline__ void tc_ldsm_b_kn(uint32_t (&b)[4], const bf16* base, int ld, int k0,
                                             int n0, int lane) {
  tc_ldsm_x4_trans(b, base + tc_off_b_kn(ld, k0, n0, lane));
}
// The end of an attention item for one accumulator row (token t, head h; the lane's 8 n tiles of
// column pairs from col, values 2·hf and 2·hf + 1 of each): O/l to u (bf16) for an unsplit item,
// else (O, m, l) to the token's partial slot of the split (m and l by one lane per row).
__device__ __forceinline__ void store_attention_row(const MlaAttnParams& p, int split, int t, int h,
                                                    const float (&o)[8][4], int hf, float m,
                                                    float l, int col, bool write_ml) {
  const int H = p.num_heads;
  if (split < 0) {
    const float inv = l > 0.f ? 1.f / l : 0.f;
    bf16* dst = p.u + (int64_t(t) * H + h) * kMlaLat + col;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
      *reinterpret_cast<__nv_bfloat162*>(dst + nt * 8) =
          __floats2bfloat162_rn(o[nt][2 * hf] * inv, o[nt][2 * hf + 1] * inv);
  } else {
    float* P = p.partials + (int64_t(p.split_base[t] + split) * H + h) * kMlaPartialStride;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
      *reinterpret_cast<float2*>(P + col + nt * 8) = make_float2(o[nt][2 * hf], o[nt][2 * hf + 1]);
    if (write_ml) {
      P[kMlaLat] = m;
      P[kMlaLat + 1] = l;
    }
  }
}

}  // namespace kimi::cuda::mla
