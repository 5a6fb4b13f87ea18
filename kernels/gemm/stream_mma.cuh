// Device helpers of the bandwidth-bound small-M kernels (moe/moe_gemv.cuh, gemm/gemv.cuh): weights
// stream once from DRAM in 16-byte non-allocating loads, many in flight, and feed mma.sync
// m16n8k16 as the A operand (16 weight rows = 16 output columns) against ≤ 8 input rows as B.
//
// Work split shared by both kernels: a CTA of kGvWarps warps owns 32 weight rows (two row groups
// of 16); warp w takes the k chunks c = w, w + 8, w + 16, ... (kGvChunk = 32 k each), so the 8
// warps read 512 contiguous bytes of each row per step.
// k permutation: lane (g = lane/4, t = lane%4) loads weight rows g and g + 8 of a row group at
// k 8t..8t+7 of the chunk; mma step s ∈ {0, 1} uses its words 2s, 2s+1 as the A fragment's
// logical k {2t, 2t+1, 2t+8, 2t+9}. The input rows must be loaded with the same permutation
// (row g, k 8t..8t+7, words 2s, 2s+1) so every physical k meets its own input value once.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace kimi::cuda {

constexpr int kGvWarps = 8, kGvThreads = 32 * kGvWarps;
constexpr int kGvChunk = 32;  // k per warp step: 4 lanes × 8 bf16

// 16 bytes of streamed weights; zeros when !pred (nothing is read). A warp's load covers 64
// bytes of each of 8 rows; the L2 prefetch hint turns the misses into 256-byte DRAM reads, which
// the neighbouring warps (the next k chunks of the same rows) then hit.
__device__ __forceinline__ uint4 ldg_stream16(const __nv_bfloat16* ptr, bool pred) {
  uint4 r;
  asm("{\n"
      "  .reg .pred p;\n"
      "  setp.ne.b32 p, %5, 0;\n"
      "  mov.b32 %0, 0;\n"
      "  mov.b32 %1, 0;\n"
      "  mov.b32 %2, 0;\n"
      "  mov.b32 %3, 0;\n"
      "  @p ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      "}\n"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(ptr), "r"(int(pred)));
  return r;
}

__device__ __forceinline__ void gv_mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                       uint32_t a3, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <int I>
__device__ __forceinline__ uint32_t word(const uint4& v) {
  static_assert(I >= 0 && I < 4);
  if constexpr (I == 0) {
    return v.x;
  } else if constexpr (I == 1) {
    return v.y;
  } else if constexpr (I == 2) {
    return v.z;
  } else {
    return v.w;
  }
}

// Weight pieces of chunk c for the lane's 4 rows: [row group][g or g + 8].
// k_end: the end of the k range (a multiple of 8: a piece is wholly inside or outside).
__device__ __forceinline__ void gv_load_weight_chunk(uint4 (&wv)[2][2],
                                                     const __nv_bfloat16* const (&wrow)[2][2],
                                                     const bool (&wok)[2][2], int c, int k_end,
                                                     int t) {
  const int k = c * kGvChunk + 8 * t;
  const bool kok = k < k_end;
#pragma unroll
  for (int rg = 0; rg < 2; ++rg)
#pragma unroll
    for (int h = 0; h < 2; ++h) wv[rg][h] = ldg_stream16(wrow[rg][h] + k, kok && wok[rg][h]);
}

// Weight pieces of U chunks (c0, c0 + 8, ...): [u][row group][g or g + 8].
template <int U>
__device__ __forceinline__ void gv_load_weights(uint4 (&wv)[U][2][2],
                                                const __nv_bfloat16* const (&wrow)[2][2],
                                                const bool (&wok)[2][2], int c0, int k_end, int t) {
#pragma unroll
  for (int u = 0; u < U; ++u) gv_load_weight_chunk(wv[u], wrow, wok, c0 + kGvWarps * u, k_end, t);
}

// One mma step s of a chunk: A = the lane's weight words 2s, 2s + 1 of rows g and g + 8;
// b[nt] = the lane's input piece of n tile nt (input row 8·nt + g).
template <int S, int NT>
__device__ __forceinline__ void gv_mma_step(float (&acc)[2][NT][4], const uint4 (&w)[2][2],
                                            const uint4 (&b)[NT], bool second_tile) {
#pragma unroll
  for (int rg = 0; rg < 2; ++rg)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      if (nt > 0 && !second_tile) continue;
      gv_mma(acc[rg][nt], word<2 * S>(w[rg][0]), word<2 * S>(w[rg][1]), word<2 * S + 1>(w[rg][0]),
             word<2 * S + 1>(w[rg][1]), word<2 * S>(b[nt]), word<2 * S + 1>(b[nt]));
    }
}

}  // namespace kimi::cuda
