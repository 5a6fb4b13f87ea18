// wgmma (sm_90a) building blocks shared by the kernel families that use them (MoE grouped GEMM,
// MLA expanded prefill and decode, KDA chunked scan): the shared-memory descriptors of a
// 128-byte-swizzled tile, the register-A products, the fence / commit / wait instructions, the
// SFU exponentials and bf16 fragment packing around them, and the warp-specialisation tools
// (setmaxnreg, named barriers).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace kimi::cuda {

// Shared-memory matrix descriptor: K-major tile with 128-byte swizzle, 8-row groups 1024 bytes
// apart (stride byte offset); the leading byte offset is unused for this layout.
__device__ __forceinline__ uint64_t wgmma_desc(uint32_t smem_addr) {
  return uint64_t((smem_addr & 0x3ffff) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) |
         (uint64_t(1) << 62);
}

// The same tile read MN-major (transposed: the M or N index contiguous, 128 bytes = 64 of them
// per row, rows = k): with one 64-wide atom along M or N (m64 / n64 at most) only the 1024-byte
// stride between 8-row k groups matters; both offsets carry it, which covers either reading of
// which offset the MN-major layout takes for that stride.
__device__ __forceinline__ uint64_t wgmma_desc_mn(uint32_t smem_addr) {
  return uint64_t((smem_addr & 0x3ffff) >> 4) | (uint64_t(1024 >> 4) << 16) |
         (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// The accumulator operands of the wrappers below: "+f" of d[i .. i + 3], of d[i .. i + 15], and
// the asm placeholders %0 .. %63 of up to 64 of them (one list, so the wrappers cannot drift).
#define KIMI_WG_ACC4(d, i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define KIMI_WG_ACC16(d, i) \
  KIMI_WG_ACC4(d, i), KIMI_WG_ACC4(d, i + 4), KIMI_WG_ACC4(d, i + 8), KIMI_WG_ACC4(d, i + 12)
#define KIMI_WG_ACC32(d) KIMI_WG_ACC16(d, 0), KIMI_WG_ACC16(d, 16)
#define KIMI_WG_ACC64(d) KIMI_WG_ACC32(d), KIMI_WG_ACC16(d, 32), KIMI_WG_ACC16(d, 48)
#define KIMI_WG_D16 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define KIMI_WG_D32 \
  KIMI_WG_D16 ", %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define KIMI_WG_D64                                                                              \
  KIMI_WG_D32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47" \
              ", %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"

#define KIMI_WG_D64HI \
  "%64, %65, %66, %67, %68, %69, %70, %71, " \
  "%72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, " \
  "%88, %89, %90, %91, %92, %93, %94, %95, " \
  "%96, %97, %98, %99, %100, %101, %102, %103, " \
  "%104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, " \
  "%120, %121, %122, %123, %124, %125, %126, %127"

// d[64 × 128] (+)= A[64 × 16] · B[128 × 16]ᵀ, both bf16 K-major in shared memory; accumulate = 0
// overwrites d.
__device__ __forceinline__ void wgmma_ss_m64n128(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                                 int accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{" KIMI_WG_D64 "}, %64, %65, p, 1, 1, 0, 0;\n"
      "}\n"
      : KIMI_WG_ACC64(d)
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// d[64 × 256] (+)= A[64 × 16] · B[256 × 16]ᵀ, both bf16 K-major in shared memory, d0 the
// columns 0..127 and d1 128..255 (the m64n128 layout of each half); accumulate = 0 overwrites d.
// One instruction reads A once where two m64n128 read it twice.
__device__ __forceinline__ void wgmma_ss_m64n256(float (&d0)[64], float (&d1)[64], uint64_t desc_a,
                                                 uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{" KIMI_WG_D64 ", " KIMI_WG_D64HI "}, %128, %129, p, 1, 1, 0, 0;\n"
      "}\n"
      : KIMI_WG_ACC64(d0), KIMI_WG_ACC64(d1)
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// d[64 × 32] (+)= A[64 × 16] · B[32 × 16]ᵀ, both bf16 in shared memory, B K-major; A K-major
// (kTransA = 0, wgmma_desc) or MN-major (kTransA = 1, wgmma_desc_mn: A stored [16 k][64 m]).
template <int kTransA>
__device__ __forceinline__ void wgmma_ss_m64n32(float (&d)[16], uint64_t desc_a, uint64_t desc_b,
                                                int accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{" KIMI_WG_D16 "}, %16, %17, p, 1, 1, %19, 0;\n"
      "}\n"
      : KIMI_WG_ACC16(d, 0)
      : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(kTransA));
}

// d[64 × 64] (+)= A[64 × 16] · B[64 × 16]ᵀ: A bf16 in registers (a0..a3 per warp: the mma.sync
// A-fragment layout of the warp's 16 rows, which is also the m64nN accumulator layout of 16
// columns), B bf16 K-major in shared memory; accumulate = 0 overwrites d.
__device__ __forceinline__ void wgmma_rs_m64n64(float (&d)[32], const uint32_t (&a)[4], uint64_t db,
                                                int accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{" KIMI_WG_D32 "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n"
      "}\n"
      : KIMI_WG_ACC32(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}

// d[64 × 128] += A[64 × 16] · B[128 × 16]ᵀ, A in registers and B in shared memory as above.
__device__ __forceinline__ void wgmma_rs_m64n128(float (&d)[64], const uint32_t (&a)[4],
                                                 uint64_t db) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{" KIMI_WG_D64 "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n"
      "}\n"
      : KIMI_WG_ACC64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

#undef KIMI_WG_ACC4
#undef KIMI_WG_ACC16
#undef KIMI_WG_ACC32
#undef KIMI_WG_ACC64
#undef KIMI_WG_D16
#undef KIMI_WG_D32
#undef KIMI_WG_D64
#undef KIMI_WG_D64HI

// 2^x and log2 x on the special function unit (relative error ~2^-22; flush-to-zero), for the
// softmax and decay exponents of the tensor-core kernels.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float lg2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
// Two fp32 values rounded to bf16 in one 32-bit fragment register (lo in the low half).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Keeps the compiler from moving accumulator reads or writes across the asynchronous MMAs.
template <int N>
__device__ __forceinline__ void fence_acc(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Warp specialisation: a warpgroup hands registers back (producers) or takes them (consumers);
// the kernel needs a register cap at entry (__launch_bounds__(threads, 1)).
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
// Named barriers (id 1..15; 0 is __syncthreads): `threads` arrivals complete one; bar_sync waits
// for it, bar_arrive does not.
__device__ __forceinline__ void bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// bar_sync that also returns whether any of the `threads` arrivals passed pred = true.
__device__ __forceinline__ bool bar_sync_or(int id, int threads, bool pred) {
  uint32_t r;
  asm volatile(
      "{\n"
      ".reg .pred p, q;\n"
      "setp.ne.u32 p, %1, 0;\n"
      "bar.red.or.pred q, %2, %3, p;\n"
      "selp.u32 %0, 1, 0, q;\n"
      "}\n"
      : "=r"(r)
      : "r"(uint32_t(pred)), "r"(id), "r"(threads)
      : "memory");
  return r != 0;
}

}  // namespace kimi::cuda
