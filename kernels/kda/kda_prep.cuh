// KDA prefill prep and output norm, elementwise-per-head kernels (model.md §3.1, §3.2, §3.4).
//
// kda_prep_kernel — per token t of sequence s (position p = t − cu[s]) and head h:
//   window of channel c: concat = [conv_state[slot[s]][c][0..2], x[cu[s]..t][c]];
//   taps concat[p..p+3]
//   q, k, v = SiLU(Σ_i w[c,i]·tap_i)
//   q ← q/sqrt(Σq² + 1e-6)·D^-1/2,  k ← k/sqrt(Σk² + 1e-6)
//   In: x [T, C] (q|k|v). Out: q, k, v [T, H, D] bf16. (The gate and β are computed by the scans
//   from f and b.) Launch: grid (ceil(T/32), H), 384 threads (below).
//   Act = float (high precision): x, the conv state and q, k, v in fp32.
// kda_prep_tile_kernel — the same for bf16 with the CTA's input rows staged in shared memory by
//   bulk copies. Launch: ceil(T/64)·H blocks (heads fastest) of 192 threads, kPrepTileSmem bytes.
// kda_conv_state_kernel — after the prep (which reads the old state): per sequence and channel,
//   new state[i] = concat[len + i], i = 0..2. Launch: grid (ceil(C/256), num_seqs), 256 threads.
// kda_gated_rmsnorm_kernel — y = o/sqrt(mean(o²)+1e-5)·w·sigmoid(z) over D, one warp per
//   (token, head), 4 values per lane. Launch: ceil(T·H/4) blocks of 128 threads.
#pragma once

#include "kda/kda_common.cuh"

namespace kimi::cuda::kda {

// 4 consecutive activations as one vector access: 8 bytes of bf16, 16 of fp32.
template <typename Act>
struct Vec4;
template <>
struct Vec4<bf16> {
  using type = uint2;
};
template <>
struct Vec4<float> {
  using type = float4;
};
__device__ __forceinline__ void unpack4(const uint2& v, float (&x)[4]) {
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v.y));
  x[0] = lo.x;
  x[1] = lo.y;
  x[2] = hi.x;
  x[3] = hi.y;
}
__device__ __forceinline__ void unpack4(const float4& v, float (&x)[4]) {
  x[0] = v.x;
  x[1] = v.y;
  x[2] = v.z;
  x[3] = v.w;
}
template <typename Act>
__device__ __forceinline__ void load4(const Act* p, float (&x)[4]) {
  const typename Vec4<Act>::type v = *reinterpret_cast<const typename Vec4<Act>::type*>(p);
  unpack4(v, x);  // from the register copy: one vector load
}
__device__ __forceinline__ void store4(bf16* p, const float (&x)[4]) {
  uint2 v;
  *reinterpret_cast<__nv_bfloat162*>(&v.x) = __floats2bfloat162_rn(x[0], x[1]);
  *reinterpret_cast<__nv_bfloat162*>(&v.y) = __floats2bfloat162_rn(x[2], x[3]);
  *reinterpret_cast<uint2*>(p) = v;
}
__device__ __forceinline__ void store4(float* p, const float (&x)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(x[0], x[1], x[2], x[3]);
}

// Tokens per CTA: 4 runs of 8 consecutive tokens; a warp reads its run's 8 rows plus the 3 before
// (the conv window): those 3 are re-reads of the previous run's rows (L1/L2 hits). 8 channels per
// lane and 16-token runs took 134-168 registers (the converted taps of all rows stay live).
constexpr int kPrepRun = 8, kPrepRuns = 4, kPrepTokens = kPrepRun * kPrepRuns;
constexpr int kPrepThreads = 3 * 32 * kPrepRuns;  // a warp per (part, run)

// One warp's run of kPrepRun tokens from tb on, lane l owning channels d0 = 4l..4l+3 of its part
// (q, k or v) of head h: x holds the lane's 4 channels of rows tb − 3 .. tb + kPrepRun − 1 (rows
// outside [0, T) are never read). The conv weights of its 4 channels stay in registers; the L2
// norm's sum is a warp butterfly.
template <typename Act>
__device__ __forceinline__ void prep_run(const KdaPrepParamsT<Act>& p, int h, int part, int d0,
                                         int tb,
                                         const typename Vec4<Act>::type (&x)[kPrepRun + 3]) {
  constexpr int D = kKdaD;
  const int H = p.num_heads, HD = H * D, C = 3 * HD, T = p.num_tokens;
  const int ch0 = part * HD + h * D + d0;
  float4 w[4];
#pragma unroll
  for (int e = 0; e < 4; ++e)
    w[e] = *reinterpret_cast<const float4*>(p.w.conv_weight + size_t(ch0 + e) * 4);
  // Row j as floats (converted at each use: keeping all 44 converted values live costs 36 more
  // registers than the raw rows).
  auto row = [&](int j, float(&f)[4]) { unpack4(x[j], f); };
  Act* out = (part == 0 ? p.q : part == 1 ? p.k : p.v) + h * D + d0;
  // SiLU(conv) of token t = tb + i from its 4 taps, the L2 norm (q, k: the part is warp-uniform)
  // and the store.
  auto finish = [&](int t, const float(&tap)[4][4]) {
    float u[4], ss = 0.f;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      u[e] =
          silu(w[e].x * tap[0][e] + w[e].y * tap[1][e] + w[e].z * tap[2][e] + w[e].w * tap[3][e]);
      ss += u[e] * u[e];
    }
    float r = 1.f;
    if (part != 2) {
      ss = warp_sum(ss);
      r = 1.f / sqrtf(ss + kKdaL2Eps) * (part == 0 ? 0.08838834764831845f : 1.f);  // q: D^-1/2
    }
    const float y[4] = {u[0] * r, u[1] * r, u[2] * r, u[3] * r};
    store4(out + size_t(t) * HD, y);
  };
  int s = find_seq(p.cu_seqlens, p.num_seqs, tb);
  int start = __ldg(p.cu_seqlens + s), next = __ldg(p.cu_seqlens + s + 1);
  if (tb - 3 >= start && tb + kPrepRun <= next) {  // the common case: every tap in the rows
#pragma unroll
    for (int i = 0; i < kPrepRun; ++i) {
      float tap[4][4];
#pragma unroll
      for (int k = 0; k < 4; ++k) row(i + k, tap[k]);
      finish(tb + i, tap);
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < kPrepRun; ++i) {
    const int t = tb + i;
    if (t >= T) break;   // uniform over the warp
    while (t >= next) {  // the run crosses into the next sequence (empty ones skipped)
      ++s;
      start = next;
      next = __ldg(p.cu_seqlens + s + 1);
    }
    float tap[4][4];  // [tap][channel]
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (t - 3 + k >= start) {
        row(i + k, tap[k]);
      } else {  // before the sequence: the conv state holds its last 3 inputs
        const Act* st =
            p.conv_state + (size_t(__ldg(p.slots + s)) * C + ch0) * 3 + (t - start + k);
#pragma unroll
        for (int e = 0; e < 4; ++e) tap[k][e] = to_f(st[e * 3]);
      }
    }
    finish(t, tap);
  }
}

// A warp per (part, run) of the CTA's head: every row is one 8-byte load per lane (256
// contiguous bytes per warp; 16 and 512 in fp32), all of them issued before any use (11 in flight
// per thread).
template <typename Act>
__global__ void __launch_bounds__(kPrepThreads) kda_prep_kernel(const KdaPrepParamsT<Act> p) {
  using Vec = typename Vec4<Act>::type;
  constexpr int D = kKdaD;
  const int H = p.num_heads, HD = H * D, C = 3 * HD, T = p.num_tokens;
  const int h = blockIdx.y, warp = threadIdx.x >> 5, d0 = (threadIdx.x & 31) * 4;
  const int part = warp % 3, run = warp / 3;
  const int tb = blockIdx.x * kPrepTokens + run * kPrepRun;  // first token of the run
  if (tb >= T) return;                                       // whole warps leave
  const int ch0 = part * HD + h * D + d0;
  Vec x[kPrepRun + 3];  // rows tb − 3 .. tb + kPrepRun − 1 of this lane's 4 channels
#pragma unroll
  for (int j = 0; j < kPrepRun + 3; ++j) {
    const int r = tb - 3 + j;
    x[j] = r >= 0 && r < T ? *reinterpret_cast<const Vec*>(p.qkv + size_t(r) * C + ch0) : Vec{};
  }
  prep_run(p, h, part, d0, tb, x);
}

// The same work with the CTA's rows staged in shared memory by bulk copies (bf16 only): a tile of
// kPrepTileTokens tokens of one head, its rows tb0 − 3 .. tb0 + kPrepTileTokens − 1 as 3 copies of
// 256 bytes each (q, k, v parts), so that the loads in flight cost no registers. 6 warps, a warp
// per (part, half of the tile), 4 runs each.
constexpr int kPrepTileTokens = 64, kPrepTileRows = kPrepTileTokens + 3;
constexpr int kPrepTileThreads = 3 * 32 * 2;
constexpr size_t kPrepTileSmem = size_t(kPrepTileRows) * 3 * kKdaD * 2 + 16;
__global__ void __launch_bounds__(kPrepTileThreads) kda_prep_tile_kernel(const KdaPrepParams p) {
  using Vec = uint2;
  constexpr int D = kKdaD;
  extern __shared__ __align__(16) unsigned char prep_smem_raw[];
  uint64_t* bar = reinterpret_cast<uint64_t*>(prep_smem_raw);
  bf16* rows = reinterpret_cast<bf16*>(prep_smem_raw + 16);  // [row][part][D]
  const int H = p.num_heads, HD = H * D, C = 3 * HD, T = p.num_tokens;
  const int h = blockIdx.x % H, tb0 = int(blockIdx.x / H) * kPrepTileTokens;
  const int r_lo = max(tb0 - 3, 0), r_hi = min(tb0 + kPrepTileTokens, T);  // rows read
  if (threadIdx.x == 0) {
    mbar_init(bar, 1);
    fence_mbar_init();
    mbar_arrive_expect_tx(bar, unsigned(r_hi - r_lo) * 3 * D * 2);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < (r_hi - r_lo) * 3; i += kPrepTileThreads) {
    const int r = r_lo + i / 3, part = i % 3;
    bulk_g2s(rows + ((r - (tb0 - 3)) * 3 + part) * D, p.qkv + size_t(r) * C + part * HD + h * D,
             D * 2, bar);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, d0 = lane * 4;
  const int part = warp % 3, half = warp / 3;
  mbar_wait(bar, 0);
#pragma unroll 1
  for (int q = 0; q < 4; ++q) {
    const int rb = (4 * half + q) * kPrepRun;  // the run's first token in the tile
    const int tb = tb0 + rb;
    if (tb >= T) return;  // whole warps leave
    Vec x[kPrepRun + 3];
#pragma unroll
    for (int j = 0; j < kPrepRun + 3; ++j)
      x[j] = *reinterpret_cast<const Vec*>(rows + ((rb + j) * 3 + part) * D + d0);
    prep_run(p, h, part, d0, tb, x);
  }
}

template <typename Act>
__global__ void __launch_bounds__(256) kda_conv_state_kernel(const KdaPrepParamsT<Act> p) {
  const int s = blockIdx.y, ch = blockIdx.x * blockDim.x + threadIdx.x;
  const int C = 3 * p.num_heads * kKdaD;
  if (ch >= C) return;
  const int start = p.cu_seqlens[s], len = p.cu_seqlens[s + 1] - start;
  Act* st = p.conv_state + (size_t(p.slots[s]) * C + ch) * 3;
  Act nv[3];
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    const int idx = len + i;
    nv[i] = idx < 3 ? st[idx] : p.qkv[size_t(start + idx - 3) * C + ch];
  }
#pragma unroll
  for (int i = 0; i < 3; ++i) st[i] = nv[i];
}

template <typename Act>
__global__ void __launch_bounds__(128) kda_gated_rmsnorm_kernel(const KdaGatedNormParamsT<Act> p) {
  const int row = blockIdx.x * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= p.num_tokens * p.num_heads) return;
  const size_t base = size_t(row) * kKdaD + lane * 4;
  using Vec = typename Vec4<Act>::type;
  const Vec zv = *reinterpret_cast<const Vec*>(p.z + base);  // converted after the sum
  float x[4], ss = 0.f;
  load4(p.o + base, x);
#pragma unroll
  for (int i = 0; i < 4; ++i) ss += x[i] * x[i];
  ss = warp_sum(ss);
  const float r = 1.f / sqrtf(ss / kKdaD + kKdaNormEps);
  const float4 w = *reinterpret_cast<const float4*>(p.weight + lane * 4);
  const float wv[4] = {w.x, w.y, w.z, w.w};
  float z[4], y[4];
  unpack4(zv, z);
#pragma unroll
  for (int i = 0; i < 4; ++i) y[i] = x[i] * r * wv[i] * sigmoid(z[i]);
  store4(p.y + base, y);
}

}  // namespace kimi::cuda::kda
