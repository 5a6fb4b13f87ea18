// KDA prefill prep and output norm, elementwise-per-head kernels (model.md §3.1, §3.2, §3.4).
//
// kda_prep_kernel — per token t of sequence s (position p = t − cu[s]) and head h:
//   window of channel c: concat = [conv_state[slot[s]][c][0..2], x[cu[s]..t][c]];
//   taps concat[p..p+3]
//   q, k, v = SiLU(Σ_i w[c,i]·tap_i)
//   q ← q/sqrt(Σq² + 1e-6)·D^-1/2,  k ← k/sqrt(Σk² + 1e-6)
//   g = −exp(A_log[h])·softplus(f + dt_bias),  β = sigmoid(b)
//   In: x [T, C] (q|k|v), f [T, H·D], b [T, H]. Out: q, k, v [T, H, D] bf16, g [T, H, D] fp32,
//   beta [T, H] fp32. T = float (high precision): x, f, b, the conv state and q, k, v in fp32. Launch: grid (ceil(T/32), H), 256 threads; a warp takes 4 tokens of the
//   CTA's head one after another, 4 channels per lane (8- and 16-byte accesses), sums by
//   shuffles; the 3 earlier tokens are re-read (L1/L2 hits); conv weights in shared memory.
// kda_conv_state_kernel — after the prep (which reads the old state): per sequence and channel,
//   new state[i] = concat[len + i], i = 0..2. Launch: grid (ceil(C/256), num_seqs), 256 threads.
// kda_gated_rmsnorm_kernel — y = o/sqrt(mean(o²)+1e-5)·w·sigmoid(z) over D, one warp per
//   (token, head), 4 values per lane. Launch: ceil(T·H/4) blocks of 128 threads.
#pragma once

#include "kda/kda_common.cuh"

namespace kimi::cuda::kda {

// One warp per (token, head): lane l owns channels 4l..4l+3 of q, k and v; sums by shuffles only,
// so there is no block barrier and many independent warps keep loads in flight.
__device__ __forceinline__ void load4(const bf16* p, float (&x)[4]) {
  const uint2 v = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v.y));
  x[0] = a.x;
  x[1] = a.y;
  x[2] = b.x;
  x[3] = b.y;
}
__device__ __forceinline__ void store4(bf16* p, const float (&x)[4]) {
  uint2 v;
  *reinterpret_cast<__nv_bfloat162*>(&v.x) = __floats2bfloat162_rn(x[0], x[1]);
  *reinterpret_cast<__nv_bfloat162*>(&v.y) = __floats2bfloat162_rn(x[2], x[3]);
  *reinterpret_cast<uint2*>(p) = v;
}
__device__ __forceinline__ void load4(const float* p, float (&x)[4]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  x[0] = v.x;
  x[1] = v.y;
  x[2] = v.z;
  x[3] = v.w;
}
__device__ __forceinline__ void store4(float* p, const float (&x)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(x[0], x[1], x[2], x[3]);
}

constexpr int kPrepTokens = 32;  // tokens per CTA (8 warps × 4): the head's conv weights are
                                 // staged once in shared memory and reused by all of them

template <typename T>
__global__ void __launch_bounds__(256) kda_prep_kernel(const KdaPrepParamsT<T> p) {
  constexpr int D = kKdaD;
  __shared__ __align__(16) float sw[3 * D * 4];  // this head's conv weights [part][d][tap]
  const int H = p.num_heads, HD = H * D, C = 3 * HD;
  const int h = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, d0 = 4 * lane;
  for (int i = threadIdx.x; i < 3 * D; i += 256)
    reinterpret_cast<float4*>(sw)[i] = *reinterpret_cast<const float4*>(
        p.w.conv_weight + size_t((i >> 7) * HD + h * D + (i & 127)) * 4);
  __syncthreads();
  for (int tt = 0; tt < 4; ++tt) {
    const int t = blockIdx.x * kPrepTokens + warp * 4 + tt;
    if (t >= p.num_tokens) return;
    const int s = find_seq(p.cu_seqlens, p.num_seqs, t);
    const int start = p.cu_seqlens[s], pos = t - start;
    float u[3][4];
#pragma unroll
    for (int part = 0; part < 3; ++part) {
      const int ch0 = part * HD + h * D + d0;
      float x[4][4];  // [tap][channel]
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int idx = pos + i;  // index into concat(conv state, inputs)
        if (idx >= 3) {
          load4(p.qkv + size_t(start + idx - 3) * C + ch0, x[i]);
        } else {
          const T* st = p.conv_state + (size_t(p.slots[s]) * C + ch0) * 3 + idx;
#pragma unroll
          for (int e = 0; e < 4; ++e) x[i][e] = to_f(st[e * 3]);
        }
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float4 w = reinterpret_cast<const float4*>(sw)[part * D + d0 + e];
        u[part][e] = silu(w.x * x[0][e] + w.y * x[1][e] + w.z * x[2][e] + w.w * x[3][e]);
      }
    }
    float sq = 0.f, sk = 0.f;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      sq += u[0][e] * u[0][e];
      sk += u[1][e] * u[1][e];
    }
    sq = warp_sum(sq);
    sk = warp_sum(sk);
    const float rq = 1.f / sqrtf(sq + kKdaL2Eps) * 0.08838834764831845f,
                rk = 1.f / sqrtf(sk + kKdaL2Eps);
    const size_t o = size_t(t) * HD + h * D + d0;
    float qn[4], kn[4], f[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      qn[e] = u[0][e] * rq;
      kn[e] = u[1][e] * rk;
    }
    store4(p.q + o, qn);
    store4(p.k + o, kn);
    store4(p.v + o, u[2]);
    load4(p.f + o, f);
    const float neg_a = -expf(p.w.A_log[h]);
    const float4 db = *reinterpret_cast<const float4*>(p.w.dt_bias + h * D + d0);
    *reinterpret_cast<float4*>(p.g + o) =
        make_float4(neg_a * softplus(f[0] + db.x), neg_a * softplus(f[1] + db.y),
                    neg_a * softplus(f[2] + db.z), neg_a * softplus(f[3] + db.w));
    if (lane == 0) p.beta[size_t(t) * H + h] = sigmoid(to_f(p.b[size_t(t) * H + h]));
  }
}

template <typename T>
__global__ void __launch_bounds__(256) kda_conv_state_kernel(const KdaPrepParamsT<T> p) {
  const int s = blockIdx.y, ch = blockIdx.x * blockDim.x + threadIdx.x;
  const int C = 3 * p.num_heads * kKdaD;
  if (ch >= C) return;
  const int start = p.cu_seqlens[s], len = p.cu_seqlens[s + 1] - start;
  T* st = p.conv_state + (size_t(p.slots[s]) * C + ch) * 3;
  T nv[3];
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    const int idx = len + i;
    nv[i] = idx < 3 ? st[idx] : p.qkv[size_t(start + idx - 3) * C + ch];
  }
#pragma unroll
  for (int i = 0; i < 3; ++i) st[i] = nv[i];
}

template <typename T>
__global__ void __launch_bounds__(128) kda_gated_rmsnorm_kernel(const KdaGatedNormParamsT<T> p) {
  const int row = blockIdx.x * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= p.num_tokens * p.num_heads) return;
  const size_t base = size_t(row) * kKdaD + lane * 4;
  float x[4], z[4], ss = 0.f;
  load4(p.o + base, x);
  load4(p.z + base, z);
#pragma unroll
  for (int i = 0; i < 4; ++i) ss += x[i] * x[i];
  ss = warp_sum(ss);
  const float r = 1.f / sqrtf(ss / kKdaD + kKdaNormEps);
  const float4 w = *reinterpret_cast<const float4*>(p.weight + lane * 4);
  const float wv[4] = {w.x, w.y, w.z, w.w};
  float y[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) y[i] = x[i] * r * wv[i] * sigmoid(z[i]);
  store4(p.y + base, y);
}

}  // namespace kimi::cuda::kda
