// KDA decode step, fused: one launch per layer for B single-token sequences (model.md §3).
//
// Math, per sequence and head h (D = 128, channel c = h·D + d):
//   conv:   u = SiLU(Σ_i w[c,i]·win[i]),  win = [conv_state[c][0..2], x[c]]   (q, k and v)
//   gate:   g = -exp(A_log[h])·softplus(f + dt_bias),  α = exp(g),  β = sigmoid(b)
//   norm:   q ← q/sqrt(Σq² + 1e-6)·D^-1/2,  k ← k/sqrt(Σk² + 1e-6)
//   step:   a_j = Σ_d α_d k_d S_dj,  c_j = Σ_d α_d q_d S_dj,  r_j = v_j − a_j
//           S'_dj = α_d S_dj + k_d·β r_j,   o_j = Σ_d q_d S'_dj = c_j + β r_j (q·k)
//   out:    y_j = o_j / sqrt(mean_j o² + 1e-5) · w_o[j] · sigmoid(z_j)
// Column j of S depends only on column j (and on all of q, k), so each head is split over the
// value columns: a cluster of kSplit = 128/kCols CTAs per (sequence, head), CTA rank r owning
// columns [r·kCols, (r+1)·kCols). Every CTA recomputes the q/k prep for the whole head (cheap in
// time, but it is what keeps the L2 busy at large B: docs/perf-log.md); the RMSNorm's sum of
// squares is combined across the cluster through distributed shared memory.
//
// Launch: grid (kSplit, H, B), cluster (kSplit, 1, 1), 128 threads; instantiated with kCols = 32
// (16 columns, 8 CTAs a head, was the small-batch choice until the state reads moved before the
// PDL wait: since then 32 is faster at every batch, docs/perf-log.md session 8). Thread d preps
// channel d; for the state, kCols/4 threads cover one row slice with float4s, and each thread
// keeps kPasses float4 of S in registers between the read and the write, so S crosses DRAM exactly
// once each way (streaming loads/stores: it is touched once per step).
// Conv-state writes wait for the first cluster barrier: the other CTAs read the same q/k channels.
// PDL (launch.h): the slot ids, both state pools and the weights are read before pdl_wait(): within
// a decode step nothing but this launch writes a layer's pools, and whatever wrote them before
// (the previous step's launch of the layer, a slot reset, a prefill) is separated from it by the
// step's metadata upload, a copy that waits for all earlier work. So the state's DRAM latency
// overlaps the previous kernel's tail; only the token's inputs (qkv, f, b, z) wait. A caller that
// launches the decode twice on the same pools with only PDL kernels between must put a copy or a
// plain launch between them (test DecodePdlChain does).
// Folded up-projections (kFold): f = W_fb·f_low and z = W_gb·g_low are formed here (fp32
// accumulation) instead of read. CTA rank r forms the gates of key channels [r·kCols, +kCols) and
// the z of its value columns: warp w the 16 rows 16·(w&1).. of W_fb (w < 2) or W_gb, by mma
// (kda_common.cuh: 32 registers of weights per thread, read before the PDL wait like the other
// weights). The head's 128 gates meet through distributed shared memory, across a split cluster
// barrier around the conv and norm sums; so each weight byte is read once per (sequence, head).
#pragma once

#include <cooperative_groups.h>

#include "kda/kda_common.cuh"
#include "pdl.cuh"

namespace kimi::cuda::kda {

// kSmemState: S goes to shared memory by cp.async instead of registers (32 fewer registers, so
// more CTAs and more bytes in flight per multiprocessor).
// Occupancy: the folded kernels hold 32 more registers (the weights) across the PDL wait.
constexpr int kda_decode_min_ctas(bool smem_state, bool fold) {
  return smem_state ? (fold ? 5 : 12) : (fold ? 4 : 8);
}

template <int kCols, bool kSmemState, bool kFold>
__global__ void __launch_bounds__(128, kda_decode_min_ctas(kSmemState, kFold))
    kda_decode_kernel(const KdaDecodeParams p) {
  static_assert(!kFold || kCols == 32, "the folded up-projections map 4 warps to 2 × 32 rows");
  pdl_launch_dependents();  // PDL (launch.h); the wait comes after the state reads (note above)
  constexpr int D = kKdaD;
  constexpr int kTpr = kCols / 4;  // threads per row slice
  constexpr int kRowsPerPass = 128 / kTpr;
  constexpr int kPasses = D / kRowsPerPass;
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();

  __shared__ __align__(16) float sm_ak[D], sm_aq[D], sm_k[D], sm_a[D];
  __shared__ __align__(16) float sm_v[kCols], sm_br[kCols];
  __shared__ float sm_red[4][2][kCols];
  __shared__ float sm_red3[4][3];
  __shared__ float sm_part;
  __shared__ bf16 sm_conv[3][kCols][3];  // new conv state of this CTA's q, k, v channels
  __shared__ float sm_gate[kFold ? kCols : 1], sm_z[kFold ? kCols : 1];  // kFold: α, z of its rows
  __shared__ __align__(16) float4 sm_s[kSmemState ? kPasses * 128 : 1];

  const int rank = blockIdx.x, h = blockIdx.y, bi = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int H = p.num_heads, HD = H * D, C = 3 * HD;
  const int c0 = rank * kCols;
  const int slot = p.slots[bi];
  if (slot < 0) {  // padding row: uniform over the cluster, so no CTA waits at a barrier
    pdl_wait();
    if (tid < kCols) p.y[size_t(bi) * HD + h * D + c0 + tid] = __float2bfloat16(0.f);
    return;
  }

  // 1. Issue the state loads first; the prep below runs while they are in flight.
  float* S = p.state + (size_t(slot) * H + h) * D * D + c0;
  const int col4 = tid % kTpr, row0 = tid / kTpr;
  float4 s_reg[kSmemState ? 1 : kPasses];
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const float4* src =
        reinterpret_cast<const float4*>(S + size_t(i * kRowsPerPass + row0) * D) + col4;
    if constexpr (kSmemState)
      cp_async16(&sm_s[i * 128 + tid], src);
    else
      s_reg[i] = __ldcs(src);
  }
  if constexpr (kSmemState) cp_async_commit();
  auto s = [&](int i) -> float4 {
    if constexpr (kSmemState)
      return sm_s[i * 128 + tid];
    else
      return s_reg[i];
  };

  // 2. Before the wait (see the note above): the conv states and the weights.
  const int d = tid;
  const int chq = h * D + d, chk = HD + h * D + d;
  const bf16* csq = p.conv_state + (size_t(slot) * C + chq) * 3;
  const bf16* csk = p.conv_state + (size_t(slot) * C + chk) * 3;
  const bf16 cq0 = csq[0], cq1 = csq[1], cq2 = csq[2], ck0 = csk[0], ck1 = csk[1], ck2 = csk[2];
  const float4 wq = *reinterpret_cast<const float4*>(p.w.conv_weight + size_t(chq) * 4);
  const float4 wk = *reinterpret_cast<const float4*>(p.w.conv_weight + size_t(chk) * 4);
  const float dtb = p.w.dt_bias[h * D + d], a_log = p.w.A_log[h];
  const int chv = 2 * HD + h * D + c0 + (tid < kCols ? tid : 0);
  const bf16* csv = p.conv_state + (size_t(slot) * C + chv) * 3;
  bf16 cv0 = {}, cv1 = {}, cv2 = {};
  float4 wv = make_float4(0.f, 0.f, 0.f, 0.f);
  if (tid < kCols) {
    cv0 = csv[0];
    cv1 = csv[1];
    cv2 = csv[2];
    wv = *reinterpret_cast<const float4*>(p.w.conv_weight + size_t(chv) * 4);
  }
  // Folded: warp w's rows ur, ur + 8 of this CTA's 32, of W_fb (um = 0) or W_gb (um = 1).
  const int um = warp >> 1, ur = 16 * (warp & 1) + (lane >> 2);
  uint4 up_w[kFold ? 8 : 1];
  float dtb_up0 = 0.f, dtb_up1 = 0.f;
  if constexpr (kFold) {
    load_up_rows(up_w, p.fg_b + (size_t(um) * HD + h * D + c0 + 16 * (warp & 1)) * D, lane);
    dtb_up0 = p.w.dt_bias[h * D + c0 + ur];
    dtb_up1 = p.w.dt_bias[h * D + c0 + ur + 8];
  }
  pdl_wait();  // the token's inputs come from the previous kernels

  // 3. Prep: thread d owns q/k channel d of head h. The token's inputs are loaded first.
  const bf16* x = p.qkv + size_t(bi) * C;
  const bf16 xq = x[chq], xk = x[chk];
  const float gpre = kFold ? 0.f : to_f(p.f[size_t(bi) * HD + h * D + d]) + dtb;
  float zj = 0.f, wn = 0.f;  // output gate and norm weight of this CTA's columns
  bf16 vx = {};
  if (tid < kCols) {
    if constexpr (!kFold) zj = to_f(p.z[size_t(bi) * HD + h * D + c0 + tid]);
    wn = p.w.o_norm[c0 + tid];
    vx = x[chv];
  }
  const float beta = sigmoid(to_f(p.b[size_t(bi) * H + h]));
  if constexpr (kFold) {  // gates (warps 0, 1) or z (2, 3) of rows ur, ur + 8, shared below
    const uint4* src =
        reinterpret_cast<const uint4*>(p.fg_low + size_t(bi) * 2 * D + um * D) + (lane & 3) * 4;
    up_rows_store(up_w, src, um, ur, lane, a_log, dtb_up0, dtb_up1, sm_gate, sm_z);
    cluster_arrive_release();  // waited for before the gates are read
  }
  const float q = silu(wq.x * to_f(cq0) + wq.y * to_f(cq1) + wq.z * to_f(cq2) + wq.w * to_f(xq));
  const float k = silu(wk.x * to_f(ck0) + wk.y * to_f(ck1) + wk.z * to_f(ck2) + wk.w * to_f(xk));
  float alpha = kFold ? 0.f : gate_decay(a_log, gpre);  // folded: from the cluster, below

  if (d >= c0 && d < c0 + kCols) {  // the new conv state of the q/k channels this CTA owns
    sm_conv[0][d - c0][0] = cq1;
    sm_conv[0][d - c0][1] = cq2;
    sm_conv[0][d - c0][2] = xq;
    sm_conv[1][d - c0][0] = ck1;
    sm_conv[1][d - c0][1] = ck2;
    sm_conv[1][d - c0][2] = xk;
  }
  if (tid < kCols) {
    sm_v[tid] = silu(wv.x * to_f(cv0) + wv.y * to_f(cv1) + wv.z * to_f(cv2) + wv.w * to_f(vx));
    sm_conv[2][tid][0] = cv1;
    sm_conv[2][tid][1] = cv2;
    sm_conv[2][tid][2] = vx;
  }

  float sq = warp_sum(q * q), sk = warp_sum(k * k), sqk = warp_sum(q * k);
  if (lane == 0) {
    sm_red3[warp][0] = sq;
    sm_red3[warp][1] = sk;
    sm_red3[warp][2] = sqk;
  }
  __syncthreads();
  sq = sm_red3[0][0] + sm_red3[1][0] + sm_red3[2][0] + sm_red3[3][0];
  sk = sm_red3[0][1] + sm_red3[1][1] + sm_red3[2][1] + sm_red3[3][1];
  sqk = sm_red3[0][2] + sm_red3[1][2] + sm_red3[2][2] + sm_red3[3][2];
  const float kScale = 0.08838834764831845f;  // 128^-1/2
  const float rq = 1.f / sqrtf(sq + kKdaL2Eps) * kScale, rk = 1.f / sqrtf(sk + kKdaL2Eps);
  const float qn = q * rq, kn = k * rk, kq = sqk * rq * rk;
  if constexpr (kFold) {
    cluster_wait_acquire();  // every CTA's gates are in its shared memory
    alpha = *cluster.map_shared_rank(&sm_gate[d % kCols], d / kCols);
    if (tid < kCols) zj = sm_z[tid];
  }
  sm_ak[d] = alpha * kn;
  sm_aq[d] = alpha * qn;
  sm_k[d] = kn;
  sm_a[d] = alpha;
  __syncthreads();

  // 4. Column sums a_j, c_j over this thread's rows, then over the lanes and warps of one column.
  if constexpr (kSmemState) cp_async_wait<0>();  // each thread reads back only its own copies
  float4 a = make_float4(0.f, 0.f, 0.f, 0.f), c = a;
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int row = i * kRowsPerPass + row0;
    const float4 si = s(i);
    a = fma4(sm_ak[row], si, a);
    c = fma4(sm_aq[row], si, c);
  }
  warp_sum_lanes<kTpr>(a);
  warp_sum_lanes<kTpr>(c);
  if (lane < kTpr) {
    sm_red[warp][0][lane * 4 + 0] = a.x;
    sm_red[warp][0][lane * 4 + 1] = a.y;
    sm_red[warp][0][lane * 4 + 2] = a.z;
    sm_red[warp][0][lane * 4 + 3] = a.w;
    sm_red[warp][1][lane * 4 + 0] = c.x;
    sm_red[warp][1][lane * 4 + 1] = c.y;
    sm_red[warp][1][lane * 4 + 2] = c.z;
    sm_red[warp][1][lane * 4 + 3] = c.w;
  }
  __syncthreads();
  float o = 0.f;
  if (tid < kCols) {
    const float aj = sm_red[0][0][tid] + sm_red[1][0][tid] + sm_red[2][0][tid] + sm_red[3][0][tid];
    const float cj = sm_red[0][1][tid] + sm_red[1][1][tid] + sm_red[2][1][tid] + sm_red[3][1][tid];
    const float br = beta * (sm_v[tid] - aj);
    sm_br[tid] = br;
    o = cj + br * kq;
  }
  __syncthreads();

  // 5. Gated RMSNorm's sum of squares across the cluster. The barrier comes before the state
  //    stores so that its release does not wait for them.
  if (warp == 0) {
    const float o2 = warp_sum(tid < kCols ? o * o : 0.f);
    if (lane == 0) sm_part = o2;
  }
  cluster.sync();  // also: every CTA has consumed the old conv state of all q/k channels

  // 6. S' = α S + k (β r)ᵀ, written straight back.
  const float4 br4 = reinterpret_cast<const float4*>(sm_br)[col4];
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int row = i * kRowsPerPass + row0;
    const float al = sm_a[row], kk = sm_k[row];
    const float4 si = s(i);
    float4 n;
    n.x = fmaf(al, si.x, kk * br4.x);
    n.y = fmaf(al, si.y, kk * br4.y);
    n.z = fmaf(al, si.z, kk * br4.z);
    n.w = fmaf(al, si.w, kk * br4.w);
    __stcs(reinterpret_cast<float4*>(S + size_t(row) * D) + col4, n);
  }
  if (tid < kCols) {
#pragma unroll
    for (int part = 0; part < 3; ++part) {
      bf16* cs = p.conv_state + (size_t(slot) * C + part * HD + h * D + c0 + tid) * 3;
      cs[0] = sm_conv[part][tid][0];
      cs[1] = sm_conv[part][tid][1];
      cs[2] = sm_conv[part][tid][2];
    }
    float total = 0.f;
#pragma unroll
    for (int r = 0; r < kKdaD / kCols; ++r) total += *cluster.map_shared_rank(&sm_part, r);
    const float yj = o / sqrtf(total / D + kKdaNormEps) * wn * sigmoid(zj);
    p.y[size_t(bi) * HD + h * D + c0 + tid] = __float2bfloat16(yj);
  }
  // Keep this CTA's shared memory alive until the others have read sm_part; the reads are
  // consumed above, so a relaxed arrive (no wait for this CTA's stores) suffices.
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
  asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
}

template <int kCols, bool kSmemState, bool kFold>
void launch_kda_decode(const KdaDecodeParams& p, cudaStream_t stream);

}  // namespace kimi::cuda::kda
