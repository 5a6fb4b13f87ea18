// KDA token-by-token scan over a varlen batch (the definition, model.md §3.3), for short
// sequences and as the GPU-side check of the chunked kernel.
//
// Per token, per head (q, k L2-normed, q scaled; α = exp(g)):
//   a_j = Σ_d α_d k_d S_dj,  c_j = Σ_d α_d q_d S_dj,  β r_j = β (v_j − a_j)
//   S'_dj = α_d S_dj + k_d β r_j,   o_j = c_j + β r_j (q·k)
// Columns of S are independent, so each (sequence, head) is split over kSplit CTAs of kCols value
// columns; a CTA keeps its 128 × kCols slice of S in registers (kPasses float4 per thread) for the
// whole sequence and reads/writes the state pool once. The next token's inputs are loaded while
// the current one is processed.
// Layouts: q, k, v [T, H, D]; f [T, H·D], b [T, H] (g = −exp(A_log)·softplus(f + dt_bias),
// β = sigmoid(b), formed per token); all bf16, or fp32 for T = float (high precision); state
// [slots, H, D, D]; o [T, H, D]. Launch: grid (kSplit, H, num_seqs), 128 threads.
#pragma once

#include "kda/kda_common.cuh"

namespace kimi::cuda::kda {

template <int kCols, typename T>
__global__ void __launch_bounds__(128) kda_scan_recurrent_kernel(const KdaScanParamsT<T> p) {
  constexpr int D = kKdaD;
  constexpr int kTpr = kCols / 4;
  constexpr int kRowsPerPass = 128 / kTpr;
  constexpr int kPasses = D / kRowsPerPass;
  __shared__ __align__(16) float sm_ak[D], sm_aq[D], sm_k[D], sm_a[D];
  __shared__ __align__(16) float sm_v[kCols], sm_br[kCols];
  __shared__ float sm_red[4][2][kCols];
  __shared__ float sm_qk[4];

  const int rank = blockIdx.x, h = blockIdx.y, sq = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int H = p.num_heads, HD = H * D;
  const int c0 = rank * kCols;
  const int start = p.cu_seqlens[sq], end = p.cu_seqlens[sq + 1];
  if (start >= end) return;
  float* S = p.state + (size_t(p.slots[sq]) * H + h) * D * D + c0;
  const int col4 = tid % kTpr, row0 = tid / kTpr;
  float4 s[kPasses];
#pragma unroll
  for (int i = 0; i < kPasses; ++i)
    s[i] = reinterpret_cast<const float4*>(S + size_t(i * kRowsPerPass + row0) * D)[col4];

  const int d = tid;
  const float neg_a = -expf(p.w.A_log[h]), db = p.w.dt_bias[h * D + d];
  // Raw inputs of token t; the gate and β are formed after the loads (see the loop).
  auto load = [&](int t, float& qv, float& kv, float& gv, float& vv, float& bv) {
    const size_t o = size_t(t) * HD + h * D;
    qv = to_f(p.q[o + d]);
    kv = to_f(p.k[o + d]);
    gv = to_f(p.f[o + d]);
    vv = tid < kCols ? to_f(p.v[o + c0 + tid]) : 0.f;
    bv = to_f(p.b[size_t(t) * H + h]);
  };
  float qv, kv, gv, vv, bv;
  load(start, qv, kv, gv, vv, bv);
  for (int t = start; t < end; ++t) {
    const float alpha = expf(neg_a * softplus(gv + db)), beta = sigmoid(bv);
    sm_ak[d] = alpha * kv;
    sm_aq[d] = alpha * qv;
    sm_k[d] = kv;
    sm_a[d] = alpha;
    if (tid < kCols) sm_v[tid] = vv;
    const float qk = warp_sum(qv * kv);
    if (lane == 0) sm_qk[warp] = qk;
    if (t + 1 < end) load(t + 1, qv, kv, gv, vv, bv);
    __syncthreads();

    float4 a = make_float4(0.f, 0.f, 0.f, 0.f), c = a;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int row = i * kRowsPerPass + row0;
      a = fma4(sm_ak[row], s[i], a);
      c = fma4(sm_aq[row], s[i], c);
    }
    warp_sum_lanes<kTpr>(a);
    warp_sum_lanes<kTpr>(c);
    if (lane < kTpr) {
      float* ra = &sm_red[warp][0][lane * 4];
      float* rc = &sm_red[warp][1][lane * 4];
      ra[0] = a.x;
      ra[1] = a.y;
      ra[2] = a.z;
      ra[3] = a.w;
      rc[0] = c.x;
      rc[1] = c.y;
      rc[2] = c.z;
      rc[3] = c.w;
    }
    __syncthreads();
    if (tid < kCols) {
      const float aj =
          sm_red[0][0][tid] + sm_red[1][0][tid] + sm_red[2][0][tid] + sm_red[3][0][tid];
      const float cj =
          sm_red[0][1][tid] + sm_red[1][1][tid] + sm_red[2][1][tid] + sm_red[3][1][tid];
      const float kq = sm_qk[0] + sm_qk[1] + sm_qk[2] + sm_qk[3];
      const float br = beta * (sm_v[tid] - aj);
      sm_br[tid] = br;
      store_f(p.o + size_t(t) * HD + h * D + c0 + tid, cj + br * kq);
    }
    __syncthreads();
    const float4 br4 = reinterpret_cast<const float4*>(sm_br)[col4];
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int row = i * kRowsPerPass + row0;
      const float al = sm_a[row], kk = sm_k[row];
      s[i].x = fmaf(al, s[i].x, kk * br4.x);
      s[i].y = fmaf(al, s[i].y, kk * br4.y);
      s[i].z = fmaf(al, s[i].z, kk * br4.z);
      s[i].w = fmaf(al, s[i].w, kk * br4.w);
    }
  }
#pragma unroll
  for (int i = 0; i < kPasses; ++i)
    reinterpret_cast<float4*>(S + size_t(i * kRowsPerPass + row0) * D)[col4] = s[i];
}

}  // namespace kimi::cuda::kda
