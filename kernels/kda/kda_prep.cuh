// KDA prefill prep and output norm, elementwise-per-head kernels (model.md §3.1, §3.2, §3.4).
//
// kda_prep_kernel — per token t of sequence s (position p = t − cu[s]) and head h, thread d:
//   window of channel c: concat = [conv_state[slot[s]][c][0..2], x[cu[s]..t][c]], taps concat[p..p+3]
//   q, k, v = SiLU(Σ_i w[c,i]·tap_i);  q ← q/sqrt(Σq²+1e-6)·D^-1/2;  k ← k/sqrt(Σk²+1e-6)
//   g = −exp(A_log[h])·softplus(f + dt_bias);  β = sigmoid(b)
//   Layouts: x [T, C] (q|k|v), f [T, H·D], b [T, H] in; q, k, v [T, H, D] bf16, g [T, H, D] fp32,
//   beta [T, H] fp32 out. Launch: grid (T, H), 128 threads (one per d).
// kda_conv_state_kernel — after the prep (which reads the old state): per sequence and channel,
//   new state[i] = concat[len + i], i = 0..2. Launch: grid (ceil(C/256), num_seqs), 256 threads.
// kda_gated_rmsnorm_kernel — y = o/sqrt(mean(o²)+1e-5)·w·sigmoid(z) over D, one warp per
//   (token, head), 4 values per lane. Launch: ceil(T·H/4) blocks of 128 threads.
#pragma once

#include "kda/kda_common.cuh"

namespace kimi::cuda::kda {

__global__ void __launch_bounds__(128) kda_prep_kernel(const KdaPrepParams p) {
  constexpr int D = kKdaD;
  __shared__ float sm_red[4][2];
  const int t = blockIdx.x, h = blockIdx.y, d = threadIdx.x, lane = d & 31, warp = d >> 5;
  const int H = p.num_heads, HD = H * D, C = 3 * HD;
  const int s = find_seq(p.cu_seqlens, p.num_seqs, t);
  const int start = p.cu_seqlens[s], pos = t - start;
  const bf16* state = p.conv_state + size_t(p.slots[s]) * C * 3;

  float u[3];
#pragma unroll
  for (int part = 0; part < 3; ++part) {
    const int ch = part * HD + h * D + d;
    const float4 w = *reinterpret_cast<const float4*>(p.w.conv_weight + size_t(ch) * 4);
    const float wt[4] = {w.x, w.y, w.z, w.w};
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int idx = pos + i;  // index into concat
      const float xv = idx < 3 ? to_f(state[size_t(ch) * 3 + idx])
                               : to_f(p.qkv[size_t(start + idx - 3) * C + ch]);
      acc = fmaf(wt[i], xv, acc);
    }
    u[part] = silu(acc);
  }
  float sq = warp_sum(u[0] * u[0]), sk = warp_sum(u[1] * u[1]);
  if (lane == 0) {
    sm_red[warp][0] = sq;
    sm_red[warp][1] = sk;
  }
  __syncthreads();
  sq = sm_red[0][0] + sm_red[1][0] + sm_red[2][0] + sm_red[3][0];
  sk = sm_red[0][1] + sm_red[1][1] + sm_red[2][1] + sm_red[3][1];
  const size_t o = size_t(t) * HD + h * D + d;
  p.q[o] = __float2bfloat16(u[0] / sqrtf(sq + kKdaL2Eps) * 0.08838834764831845f);
  p.k[o] = __float2bfloat16(u[1] / sqrtf(sk + kKdaL2Eps));
  p.v[o] = __float2bfloat16(u[2]);
  const float gpre = to_f(p.f[o]) + p.w.dt_bias[h * D + d];
  p.g[o] = -expf(p.w.A_log[h]) * softplus(gpre);
  if (d == 0) p.beta[size_t(t) * H + h] = sigmoid(to_f(p.b[size_t(t) * H + h]));
}

__global__ void __launch_bounds__(256) kda_conv_state_kernel(const KdaPrepParams p) {
  const int s = blockIdx.y, ch = blockIdx.x * blockDim.x + threadIdx.x;
  const int C = 3 * p.num_heads * kKdaD;
  if (ch >= C) return;
  const int start = p.cu_seqlens[s], len = p.cu_seqlens[s + 1] - start;
  bf16* st = p.conv_state + (size_t(p.slots[s]) * C + ch) * 3;
  bf16 nv[3];
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    const int idx = len + i;
    nv[i] = idx < 3 ? st[idx] : p.qkv[size_t(start + idx - 3) * C + ch];
  }
#pragma unroll
  for (int i = 0; i < 3; ++i) st[i] = nv[i];
}

__global__ void __launch_bounds__(128) kda_gated_rmsnorm_kernel(const KdaGatedNormParams p) {
  const int row = blockIdx.x * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= p.num_tokens * p.num_heads) return;
  const size_t base = size_t(row) * kKdaD + lane * 4;
  const uint2 ov = *reinterpret_cast<const uint2*>(p.o + base);
  const uint2 zv = *reinterpret_cast<const uint2*>(p.z + base);
  const bf16* ob = reinterpret_cast<const bf16*>(&ov);
  const bf16* zb = reinterpret_cast<const bf16*>(&zv);
  float x[4], ss = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    x[i] = to_f(ob[i]);
    ss += x[i] * x[i];
  }
  ss = warp_sum(ss);
  const float r = 1.f / sqrtf(ss / kKdaD + kKdaNormEps);
  const float4 w = *reinterpret_cast<const float4*>(p.weight + lane * 4);
  const float wv[4] = {w.x, w.y, w.z, w.w};
  uint2 yv;
  bf16* yb = reinterpret_cast<bf16*>(&yv);
#pragma unroll
  for (int i = 0; i < 4; ++i) yb[i] = __float2bfloat16(x[i] * r * wv[i] * sigmoid(to_f(zb[i])));
  *reinterpret_cast<uint2*>(p.y + base) = yv;
}

}  // namespace kimi::cuda::kda
