// MLA expanded prefill attention on wgmma (sm_90a); same items, workspace, state and output as
// mla_prefill_kernel (mla_prefill.cuh, contract in mla.h).
//
// One CTA per (item, head): 2 warpgroups, warpgroup g owns query rows 64g .. +64 of the item's
// up to 128. Shared memory holds Q (3 k-blocks of 64 channels: q_nope 0..63, 64..127, q_pe) and a
// 3-stage ring of K tiles (64 keys, the same 3 k-blocks: k_nope from the workspace, k_pe from
// the gathered latents) and Vᵀ tiles (128 value rows × 64 keys), every row 128 bytes in the
// 128-byte swizzle wgmma reads (16-byte piece c of row r at piece c ^ (r % 8)), all K-major.
// All 256 threads fill the ring with cp.async, STAGES − 1 tiles ahead. Per tile and warpgroup:
//   S = Q·Kᵀ: 12 wgmma m64n64k16 (A and B from shared memory), fp32 in registers;
//   causal mask where the tile crosses the warp's first position; online softmax in base 2
//   (scale·log2 e folded into one FMA before ex2), O rescaled in registers;
//   O += P·V: 4 wgmma m64n128k16 with P as the A operand in registers (the m64nN accumulator
//   layout of S is the A-fragment layout of P, as with mma.sync) and Vᵀ as B from shared memory.
// A warpgroup whose rows all precede the tile (the causal diagonal) or lie past the item skips it.
// STAGGER (comparison): warpgroup 1 runs one tile behind in its phases. In the loop step of tile
// n, warpgroup 0 does S(n), softmax(n), P·V(n) while warpgroup 1 does softmax(n − 1), P·V(n − 1),
// S(n) (its S registers live across the step), meant to overlap one warpgroup's softmax with the
// other's MMAs; the ring needs a 4th stage (tile n − 1 stays readable while n + 2 lands).
// Measured on H200: the same speed within ±3% (the CTA barrier of every step realigns the two;
// a real ping-pong needs per-warpgroup barriers, FA3-style).
// Shared memory: Q 48 KB + STAGES × (24 + 16) KB + 1 KB alignment slack: 169 KB (3 stages) or
// 209 KB (4, STAGGER), one CTA per SM.
#pragma once

#include "mla/mla_prefill.cuh"
#include "wgmma_common.cuh"

namespace kimi::cuda::mla {

constexpr int kPwThreads = 256;  // 2 warpgroups × 64 query rows
constexpr int kPwAhead = 2;      // tiles in flight beyond the one being read
constexpr int kPwKeys = 64;
constexpr uint32_t kPwQBytes = 3 * kMlaPrefillRows * 128;  // 3 k-blocks of [128 rows][64]
constexpr uint32_t kPwKBytes = 3 * kPwKeys * 128;          // 3 k-blocks of [64 keys][64]
constexpr uint32_t kPwVBytes = 128 * kPwKeys * 2;          // Vᵀ [128][64 keys]
constexpr uint32_t kPwStageBytes = kPwKBytes + kPwVBytes;
template <bool STAGGER>
constexpr int kPwStages = STAGGER ? 4 : 3;
template <bool STAGGER>
constexpr size_t kPwSmem = kPwQBytes + size_t(kPwStages<STAGGER>) * kPwStageBytes + 1024;
static_assert(kMlaPrefillRows == 128, "two warpgroups of 64 rows");

// d[64 × 64] (+)= A[64 × 16] · B[64 × 16]ᵀ, both bf16 K-major in shared memory.
__device__ __forceinline__ void pw_mma_ss_n64(float (&d)[32], uint64_t da, uint64_t db,
                                              int accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      " %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(da), "l"(db), "r"(accumulate));
}

template <bool STAGGER>
__global__ void __launch_bounds__(kPwThreads, 1) mla_prefill_wgmma_kernel(PfArgs a) {
  constexpr int kStages = kPwStages<STAGGER>;
  extern __shared__ unsigned char pw_smem_raw[];
  const uint32_t raw_addr = static_cast<uint32_t>(__cvta_generic_to_shared(pw_smem_raw));
  const uint32_t smem_addr = (raw_addr + 1023) & ~1023u;  // the swizzle pattern needs 1024
  unsigned char* smem = pw_smem_raw + (smem_addr - raw_addr);

  const MlaPrefillParams& p = a.p;
  const MlaPrefillItem it = a.items[blockIdx.x];
  const int H = p.num_heads, h = blockIdx.y;
  const int tid = threadIdx.x;
  const int kv_hi = it.kv_end;  // clipped by the plan to the item's last visible position + 1
  const int ntiles = kv_hi > it.kv_begin ? (kv_hi - it.kv_begin + kPwKeys - 1) / kPwKeys : 0;

  // Copy roles: 16-byte piece tid % 8 of rows tid / 8 + 32 i (one row's 128 bytes per 8 lanes).
  const int piece = tid % 8, row0 = tid / 8;
  const uint32_t dst_in_row = uint32_t((piece ^ (row0 % 8)) * 16);  // row0 + 32 i ≡ row0 mod 8
#pragma unroll
  for (int kb = 0; kb < 3; ++kb)
#pragma unroll
    for (int i = 0; i < kMlaPrefillRows / 32; ++i) {
      const int r = row0 + 32 * i;
      const bool ok = r < it.nq;
      const bf16* src =
          p.q + ((int64_t(it.q_begin) + (ok ? r : 0)) * H + h) * kMlaQk + kb * 64 + piece * 8;
      cp_async16(smem + kb * (kMlaPrefillRows * 128) + r * 128 + dst_in_row, src, ok);
    }
  auto load_tile = [&](int n) {
    if (n < ntiles) {
      unsigned char* st = smem + kPwQBytes + (n % kStages) * kPwStageBytes;
      const int j0 = n * kPwKeys;
#pragma unroll
      for (int i = 0; i < kPwKeys / 32; ++i) {
        const int j = row0 + 32 * i;
        const bool ok = it.kv_begin + j0 + j < kv_hi;
        const int64_t row = it.ws_row + j0 + (ok ? j : 0);
        const bf16* kn = a.knope + (row * H + h) * 128 + piece * 8;
        cp_async16(st + 0 * (kPwKeys * 128) + j * 128 + dst_in_row, kn, ok);
        cp_async16(st + 1 * (kPwKeys * 128) + j * 128 + dst_in_row, kn + 64, ok);
        cp_async16(st + 2 * (kPwKeys * 128) + j * 128 + dst_in_row,
                   a.lat + row * kMlaRow + kMlaLat + piece * 8, ok);
      }
      const int bytes = pf_valid_bytes(it.kv_begin + j0 + 8 * piece, kv_hi);
#pragma unroll
      for (int i = 0; i < 128 / 32; ++i) {
        const int d = row0 + 32 * i;
        const bf16* src =
            a.vt + (int64_t(h) * 128 + d) * p.piece_rows + it.ws_row + (bytes ? j0 + 8 * piece : 0);
        pf_cp_async_n(st + kPwKBytes + d * 128 + dst_in_row, src, bytes);
      }
    }
    cp_async_commit();
  };
  for (int s = 0; s < kPwAhead; ++s) load_tile(s);

  // Broadcast from lane 0 so the compiler sees warp-uniform values around wgmma (ptxas C7518).
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  const int warp = (tid % 128) / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int r0 = 64 * wg + 16 * warp;  // this warp's first row of the item
  const int qpos_lo = it.q_pos0 + r0;
  const int qp[2] = {qpos_lo + g, qpos_lo + g + 8};
  const bool valid[2] = {r0 + g < it.nq, r0 + g + 8 < it.nq};
  const int wg_pos_hi = it.q_pos0 + 64 * wg + 63;  // last position of this warpgroup's rows
  const bool wg_rows = 64 * wg < it.nq;
  const float sl2 = p.scale * 1.4426950408889634f;
  // o[4j + 2hf + c]: row g + 8hf of the warp's 16, value column 8j + 2 t4 + c.
  float o[64];
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.f;
  if (!(it.flags & kMlaFirst)) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      if (!valid[hf]) continue;
      const float* st =
          p.state + ((int64_t(it.q_begin) + r0 + g + 8 * hf) * H + h) * kMlaStateStride;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const float2 v = *reinterpret_cast<const float2*>(st + j * 8 + 2 * t4);
        o[4 * j + 2 * hf] = v.x;
        o[4 * j + 2 * hf + 1] = v.y;
      }
      const float2 ml = *reinterpret_cast<const float2*>(st + 128);
      m[hf] = ml.x;
      l[hf] = t4 == 0 ? ml.y : 0.f;  // l is kept as per-lane partial sums of the quad
    }
  }

  const uint32_t q_base = smem_addr + uint32_t(wg * 64 * 128);
  auto stage = [&](int n) {
    return smem_addr + kPwQBytes + uint32_t((n % kStages) * kPwStageBytes);
  };
  // Whether this warpgroup has rows that see tile n (warp-uniform for the compiler: C7518).
  auto busy = [&](int n) {
    return __shfl_sync(0xffffffffu, int(wg_rows && it.kv_begin + n * kPwKeys <= wg_pos_hi), 0) != 0;
  };
  float s[32];            // S of the tile in flight in this warpgroup
  auto qk = [&](int n) {  // S = Q·Kᵀ of tile n
    const uint32_t st = stage(n);
    wgmma_fence();
#pragma unroll
    for (int kb = 0; kb < 3; ++kb)
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        pw_mma_ss_n64(s, wgmma_desc(q_base + kb * (kMlaPrefillRows * 128) + kk * 32),
                      wgmma_desc(st + kb * (kPwKeys * 128) + kk * 32), kb + kk > 0);
    wgmma_commit();
    wgmma_wait<0>();
    fence_acc(s);
  };
  auto softmax_pv = [&](int n) {               // online softmax of S(n), then O += P·V(n)
    const int j0 = it.kv_begin + n * kPwKeys;  // position of the tile's first key
    // Mask only tiles that cross this warp's first position or the end of the keys.
    if (j0 + kPwKeys - 1 > qpos_lo || j0 + kPwKeys > kv_hi) {
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = j0 + 8 * j + 2 * t4 + (e & 1);
          if (key > qp[e >> 1] || key >= kv_hi) s[4 * j + e] = -INFINITY;
        }
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 8; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * hf], s[4 * j + 2 * hf + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[hf], mx * sl2);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet: P = 0
      const float alpha = pf_exp2(m[hf] - m_use);
      m[hf] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float p0 = pf_exp2(fmaf(s[4 * j + 2 * hf], sl2, -m_use));
        const float p1 = pf_exp2(fmaf(s[4 * j + 2 * hf + 1], sl2, -m_use));
        sum += p0 + p1;
        s[4 * j + 2 * hf] = p0;
        s[4 * j + 2 * hf + 1] = p1;
      }
      l[hf] = l[hf] * alpha + sum;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        o[4 * j + 2 * hf] *= alpha;
        o[4 * j + 2 * hf + 1] *= alpha;
      }
    }
    // Column groups 2kk, 2kk + 1 of S are the A fragment of P for keys 16kk .. +16.
    uint32_t pa[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      pa[kk][0] = pf_pack(s[8 * kk + 0], s[8 * kk + 1]);
      pa[kk][1] = pf_pack(s[8 * kk + 2], s[8 * kk + 3]);
      pa[kk][2] = pf_pack(s[8 * kk + 4], s[8 * kk + 5]);
      pa[kk][3] = pf_pack(s[8 * kk + 6], s[8 * kk + 7]);
    }
    const uint32_t st = stage(n);
    wgmma_fence();  // o and pa were written by ordinary instructions
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wgmma_rs_m64n128(o, pa[kk], wgmma_desc(st + kPwKBytes + kk * 32));
    wgmma_commit();
    wgmma_wait<0>();
    fence_acc(o);
  };

  // Loop step n: tile n landed; the stage refilled (tile n + 2) last held tile n + 2 − STAGES,
  // which both warpgroups are done with (n − 1 under STAGGER is still read by warpgroup 1).
  const int steps = STAGGER ? ntiles + 1 : ntiles;
  for (int n = 0; n < steps; ++n) {
    cp_async_wait<kPwAhead - 1>();  // this thread's pieces of tile n (and Q) landed
    // The tensor cores read through the async proxy: order the copies' writes before them.
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    load_tile(n + kPwAhead);
    if (!STAGGER || wg == 0) {
      if (n < ntiles && busy(n)) {
        qk(n);
        softmax_pv(n);
      }
    } else {
      if (n >= 1 && busy(n - 1)) softmax_pv(n - 1);
      if (n < ntiles && busy(n)) qk(n);
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    l[hf] += __shfl_xor_sync(0xffffffffu, l[hf], 1);
    l[hf] += __shfl_xor_sync(0xffffffffu, l[hf], 2);
    if (!valid[hf]) continue;
    const int64_t th = (int64_t(it.q_begin) + r0 + g + 8 * hf) * H + h;
    if (it.flags & kMlaLast) {
      const float inv = l[hf] > 0.f ? 1.f / l[hf] : 0.f;
      bf16* dst = p.out + th * 128 + 2 * t4;
#pragma unroll
      for (int j = 0; j < 16; ++j)
        *reinterpret_cast<__nv_bfloat162*>(dst + j * 8) =
            __floats2bfloat162_rn(o[4 * j + 2 * hf] * inv, o[4 * j + 2 * hf + 1] * inv);
    } else {
      float* st = p.state + th * kMlaStateStride;
#pragma unroll
      for (int j = 0; j < 16; ++j)
        *reinterpret_cast<float2*>(st + j * 8 + 2 * t4) =
            make_float2(o[4 * j + 2 * hf], o[4 * j + 2 * hf + 1]);
      if (t4 == 0) *reinterpret_cast<float2*>(st + 128) = make_float2(m[hf], l[hf]);
    }
  }
}

}  // namespace kimi::cuda::mla
