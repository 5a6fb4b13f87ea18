// MLA prefill in the expanded form (contract in mla.h): the cache gather of a round and the
// flash-attention kernel on mma.sync over per-head K = [k_nope | k_pe] (192) and V (128), kept
// beside the wgmma kernel (mla_prefill_wgmma.cuh) for comparison.
//
// Attention: one CTA per (item, head), 8 warps; an item is up to 128 query tokens of one sequence
// against one segment of its context (workspace rows ws_row ..). Warp w owns query rows 16w ..
// +16: its Q fragments (16 × 192) stay in registers for the whole item. K/Vᵀ tiles of 64 keys are
// cp.async double-buffered from the workspace (k_nope, k_pe: lat columns 512..575, Vᵀ).
// Per tile and warp, all on mma.sync m16n8k16 bf16 → fp32:
//   S = Q·Kᵀ (16 × 64, k = 192), causal mask where the tile crosses the warp's first position,
//   online softmax in fp32 in base 2 (scale·log2 e folded into one FMA before exp2),
//   P (bf16, taken straight from the S accumulators as A fragments) · V into O (16 × 128).
// A warp whose rows all precede the tile skips it (the causal diagonal). State across rounds:
// (o, m, l) fp32 per (token, head) in `state`, read unless kMlaFirst, written unless kMlaLast.
// Shared memory: Q [128][200] + 2 × (K [64][200] + Vᵀ [128][72]) bf16 (rows padded by 16 bytes:
// ldmatrix rows land in distinct banks): 137 KB, one CTA per SM.
#pragma once

#include "mla/mla.h"
#include "mla/mla_mma.cuh"

namespace kimi::cuda::mla {

constexpr int kPfRows = kMlaPrefillRows;  // query rows per CTA
constexpr int kPfKeys = 64;               // keys per tile
constexpr int kPfThreads = 256;           // 8 warps × 16 rows
constexpr int kPfStages = 2;
constexpr int kPfLdK = kMlaQk + 8;       // bf16 row stride of Q and K tiles
constexpr int kPfLdV = kPfKeys + 8;      // bf16 row stride of Vᵀ tiles (128 rows)
constexpr int kPfQkChunks = kMlaQk / 8;  // 16-byte chunks of a Q/K row (24)
constexpr size_t kPfOffK = size_t(kPfRows) * kPfLdK * 2;
constexpr size_t kPfStageBytes = (size_t(kPfKeys) * kPfLdK + size_t(128) * kPfLdV) * 2;
constexpr size_t kPfSmem = kPfOffK + kPfStages * kPfStageBytes;
static_assert(kPfRows == 16 * (kPfThreads / 32), "one 16-row MMA tile per warp");
static_assert(kPfOffK % 16 == 0 && kPfStageBytes % 16 == 0);

struct PfArgs {
  MlaPrefillParams p;
  const MlaPrefillItem* items;  // this round's
  const bf16* lat;              // [piece, 576]
  const bf16* knope;            // [piece, H, 128]
  const bf16* vt;               // [H, 128, piece]
};

// cp.async of the first `bytes` (0..16) of 16, the rest zero-filled.
__device__ __forceinline__ void pf_cp_async_n(void* dst, const void* src, int bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(bytes));
}
// Bytes of the 8 keys from `key0` that lie before kv_hi.
__device__ __forceinline__ int pf_valid_bytes(int key0, int kv_hi) {
  return min(16, max(0, (kv_hi - key0) * 2));
}

__device__ __forceinline__ float pf_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ uint32_t pf_pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__global__ void __launch_bounds__(kPfThreads, 1) mla_prefill_kernel(PfArgs a) {
  extern __shared__ uint4 smem_raw[];
  char* sm = reinterpret_cast<char*>(smem_raw);
  bf16* q_s = reinterpret_cast<bf16*>(sm);  // [128][kPfLdK]
  const MlaPrefillParams& p = a.p;
  const MlaPrefillItem it = a.items[blockIdx.x];
  const int H = p.num_heads, h = blockIdx.y;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int kv_hi = it.kv_end;  // the plan clipped it to the item's last visible position + 1
  const int ntiles = kv_hi > it.kv_begin ? (kv_hi - it.kv_begin + kPfKeys - 1) / kPfKeys : 0;

  for (int idx = tid; idx < kPfRows * kPfQkChunks; idx += kPfThreads) {
    const int r = idx / kPfQkChunks, c = idx % kPfQkChunks;
    const bool ok = r < it.nq;
    const bf16* src = p.q + ((int64_t(it.q_begin) + (ok ? r : 0)) * H + h) * kMlaQk + c * 8;
    cp_async16(q_s + r * kPfLdK + c * 8, src, ok);
  }
  // Tile n into stage n % kPfStages; keys at or past kv_hi are zero-filled (P is 0 there, and
  // V must be finite).
  auto load_tile = [&](int n) {
    if (n < ntiles) {
      bf16* ks = reinterpret_cast<bf16*>(sm + kPfOffK + (n % kPfStages) * kPfStageBytes);
      bf16* vs = ks + kPfKeys * kPfLdK;
      const int j0 = n * kPfKeys;
      for (int idx = tid; idx < kPfKeys * kPfQkChunks; idx += kPfThreads) {
        const int r = idx / kPfQkChunks, c = idx % kPfQkChunks;
        const bool ok = it.kv_begin + j0 + r < kv_hi;
        const int64_t row = it.ws_row + j0 + (ok ? r : 0);
        const bf16* src = c < 16 ? a.knope + (row * H + h) * 128 + c * 8
                                 : a.lat + row * kMlaRow + kMlaLat + (c - 16) * 8;
        cp_async16(ks + r * kPfLdK + c * 8, src, ok);
      }
      // Vᵀ rows (one per value dimension) of 8 keys per 16-byte piece; a piece may straddle kv_hi.
      for (int idx = tid; idx < 128 * (kPfKeys / 8); idx += kPfThreads) {
        const int d = idx / (kPfKeys / 8), c = idx % (kPfKeys / 8);
        const int bytes = pf_valid_bytes(it.kv_begin + j0 + 8 * c, kv_hi);
        const bf16* src =
            a.vt + (int64_t(h) * 128 + d) * p.piece_rows + it.ws_row + (bytes ? j0 + 8 * c : 0);
        pf_cp_async_n(vs + d * kPfLdV + 8 * c, src, bytes);
      }
    }
    cp_async_commit();
  };
  for (int s = 0; s < kPfStages - 1; ++s) load_tile(s);

  const int r0 = 16 * warp;  // this warp's first row
  const int qpos_lo = it.q_pos0 + r0;
  const int qp[2] = {qpos_lo + g, qpos_lo + g + 8};
  const bool valid[2] = {r0 + g < it.nq, r0 + g + 8 < it.nq};
  const float sl2 = p.scale * 1.4426950408889634f;
  float o[16][4];
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
  for (int nt = 0; nt < 16; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[nt][e] = 0.f;
  if (!(it.flags & kMlaFirst)) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      if (!valid[hf]) continue;
      const float* st =
          p.state + ((int64_t(it.q_begin) + r0 + g + 8 * hf) * H + h) * kMlaStateStride;
#pragma unroll
      for (int nt = 0; nt < 16; ++nt) {
        const float2 v = *reinterpret_cast<const float2*>(st + nt * 8 + 2 * t4);
        o[nt][2 * hf] = v.x;
        o[nt][2 * hf + 1] = v.y;
      }
      const float2 ml = *reinterpret_cast<const float2*>(st + 128);
      m[hf] = ml.x;
      l[hf] = t4 == 0 ? ml.y : 0.f;  // l is kept as per-lane partial sums of the quad
    }
  }

  uint32_t qf[kMlaQk / 16][4];
  for (int n = 0; n < ntiles; ++n) {
    cp_async_wait<kPfStages - 2>();
    // Tile n (and Q) landed for every thread; everyone is done with the stage refilled next.
    __syncthreads();
    if (n == 0) {
#pragma unroll
      for (int kk = 0; kk < kMlaQk / 16; ++kk) tc_ldsm_a(qf[kk], q_s, kPfLdK, r0, 16 * kk, lane);
    }
    load_tile(n + kPfStages - 1);
    const int j0 = it.kv_begin + n * kPfKeys;  // position of the tile's first key
    // Every row of this warp precedes the tile, or the warp has no query rows.
    if (j0 > qpos_lo + 15 || r0 >= it.nq) continue;
    const bf16* ks = reinterpret_cast<const bf16*>(sm + kPfOffK + (n % kPfStages) * kPfStageBytes);
    const bf16* vs = ks + kPfKeys * kPfLdK;
    float s[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kMlaQk / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t b[4];
        tc_ldsm_b_nk(b, ks, kPfLdK, 16 * np, 16 * kk, lane);
        tc_mma(s[2 * np], qf[kk], b[0], b[1]);
        tc_mma(s[2 * np + 1], qf[kk], b[2], b[3]);
      }
    }
    // Mask only tiles that cross this warp's first position or the end of the keys.
    if (j0 + kPfKeys - 1 > qpos_lo || j0 + kPfKeys > kv_hi) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = j0 + nt * 8 + 2 * t4 + (e & 1);
          if (key > qp[e >> 1] || key >= kv_hi) s[nt][e] = -INFINITY;
        }
    }
    uint32_t pa[4][4];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * hf], s[nt][2 * hf + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[hf], mx * sl2);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet: P = 0
      const float alpha = pf_exp2(m[hf] - m_use);
      m[hf] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const float p0 = pf_exp2(fmaf(s[nt][2 * hf], sl2, -m_use));
        const float p1 = pf_exp2(fmaf(s[nt][2 * hf + 1], sl2, -m_use));
        sum += p0 + p1;
        s[nt][2 * hf] = p0;
        s[nt][2 * hf + 1] = p1;
      }
      l[hf] = l[hf] * alpha + sum;
#pragma unroll
      for (int nt = 0; nt < 16; ++nt) {
        o[nt][2 * hf] *= alpha;
        o[nt][2 * hf + 1] *= alpha;
      }
    }
    // The S accumulators of n-tiles 2kk, 2kk + 1 are the A fragment of P for keys 16kk .. +16.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      pa[kk][0] = pf_pack(s[2 * kk][0], s[2 * kk][1]);
      pa[kk][1] = pf_pack(s[2 * kk][2], s[2 * kk][3]);
      pa[kk][2] = pf_pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[kk][3] = pf_pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
      for (int np = 0; np < 8; ++np) {
        uint32_t b[4];
        tc_ldsm_b_nk(b, vs, kPfLdV, 16 * np, 16 * kk, lane);
        tc_mma(o[2 * np], pa[kk], b[0], b[1]);
        tc_mma(o[2 * np + 1], pa[kk], b[2], b[3]);
      }
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
      for (int nt = 0; nt < 16; ++nt)
        *reinterpret_cast<__nv_bfloat162*>(dst + nt * 8) =
            __floats2bfloat162_rn(o[nt][2 * hf] * inv, o[nt][2 * hf + 1] * inv);
    } else {
      float* st = p.state + th * kMlaStateStride;
#pragma unroll
      for (int nt = 0; nt < 16; ++nt)
        *reinterpret_cast<float2*>(st + nt * 8 + 2 * t4) =
            make_float2(o[nt][2 * hf], o[nt][2 * hf + 1]);
      if (t4 == 0) *reinterpret_cast<float2*>(st + 128) = make_float2(m[hf], l[hf]);
    }
  }
}

// Cache rows of a round's segments into lat [rows, 576]: 32 workspace rows per CTA. The rows
// between segments (8-row alignment) are zeroed: their Vᵀ columns are read, with P = 0, by the
// tiles that end a segment (mla_prefill_ws.cuh), and must be finite.
constexpr int kGatherRows = 32;
__global__ void __launch_bounds__(256)
    mla_gather_kernel(const bf16* cache, const int* tables, int mb, const MlaPrefillSeg* segs,
                      int num_segs, int rows, bf16* lat) {
  __shared__ const bf16* src_s[kGatherRows];
  const int row0 = blockIdx.x * kGatherRows;
  if (threadIdx.x < kGatherRows) {
    const int r = row0 + threadIdx.x;
    const bf16* src = nullptr;
    if (r < rows) {
      for (int k = 0; k < num_segs; ++k) {
        const MlaPrefillSeg sg = segs[k];
        if (r >= sg.ws_row && r < sg.ws_row + (sg.pos_end - sg.pos_begin)) {
          const int pos = sg.pos_begin + r - sg.ws_row;
          const int blk = tables[int64_t(sg.seq) * mb + pos / kMlaBlock];
          src = cache + (int64_t(blk) * kMlaBlock + pos % kMlaBlock) * kMlaRow;
          break;
        }
      }
    }
    src_s[threadIdx.x] = src;
  }
  __syncthreads();
  constexpr int kChunks = kMlaRow / 8;
  for (int idx = threadIdx.x; idx < kGatherRows * kChunks; idx += blockDim.x) {
    const int r = idx / kChunks, c = idx % kChunks;
    if (row0 + r >= rows) break;
    const bf16* src = src_s[r];
    *reinterpret_cast<uint4*>(lat + (int64_t(row0) + r) * kMlaRow + c * 8) =
        src ? *reinterpret_cast<const uint4*>(src + c * 8) : make_uint4(0, 0, 0, 0);
  }
}

}  // namespace kimi::cuda::mla
