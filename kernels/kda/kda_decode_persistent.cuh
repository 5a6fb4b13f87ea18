// KDA decode step, persistent variant (same math as kda_decode.cuh), chosen for mid-size batches
// (kda_launch.cu).
//
// One CTA of 512 threads owns a whole (sequence, head) item, so the q/k/v conv, gate and both
// norms are done once per item (the cluster kernel repeats the q/k prep in each of a head's CTAs).
// The grid is persistent, one CTA per multiprocessor; each CTA walks a contiguous range of items
// in head-major order (consecutive items share the head's weights: L1 hits) through a ring of
// kPersistStages shared-memory stages filled and drained by the TMA copy engine: while item i is
// computed, the states and inputs (conv states, x, f, z: contiguous pieces of the head) of items
// i+1 and i+2 are in flight, and item i-1's S' is on its way out. One thread issues every copy: the
// SM's load/store units carry no state traffic (a cp.async version of this kernel, whose
// outstanding requests per SM are limited, measured 8 points of copy rate slower at B = 64:
// docs/perf-log.md).
//
// State layout over the threads: warp w covers value columns [32·(w&3), +32), 8 lanes per
// 32-column row slice (128 contiguous bytes, conflict-free in shared memory), rows
// 16·i + 4·(w>>2) + lane/8 for pass i = 0..7. Each thread keeps its 8 float4 of S in registers
// from the column sums to the update, and writes S' back over them in the stage.
//
// Folded up-projections (kFold, f = W_fb·f_low and z = W_gb·g_low formed here): warp w holds the
// 16 rows 16·(w&7).. of W_fb (w < 8) or W_gb of the item's head in registers (32 per thread,
// reloaded when the head changes; the first before the PDL wait) and applies them to the item's
// f_low | g_low row, which takes the place of the f and z rows in the stage, by mma
// (kda_common.cuh). The gate is formed by the lane that holds the row's f, so the column sums
// take α from its own array (α·S is formed there, and the update adds k·βr to it).
//
// Launch: grid min(items, SMs), balanced so that every CTA gets the same number of items ±1, 512
// threads, kKdaPersistSmem bytes of dynamic shared memory. PDL: the first items' states and conv
// states (and folded weights) are loaded before pdl_wait(), under kda_decode.cuh's contract.
#pragma once

#include "kda/kda_common.cuh"
#include "pdl.cuh"

namespace kimi::cuda::kda {

constexpr int kPersistThreads = 512;
constexpr int kPersistPasses = kKdaD * kKdaD / 4 / kPersistThreads;  // float4 of S per thread
constexpr int kPersistStages = 3;  // 2 measured 13 points slower at B = 64
// The thread that issues the TMA copies (lane 0 of the last warp, which has no prep or norm work):
// bulk store groups are per thread, so one thread commits and waits for all of them.
constexpr int kTmaThread = kPersistThreads - 32;

// One item's inputs, as they lie in global memory (each piece a multiple of 16 bytes).
struct __align__(16) KdaDecodeItemIn {
  bf16 conv[3][kKdaD * 3];  // conv states of the head's q, k, v channels, [channel][3]
  bf16 x[3][kKdaD];         // the token's q, k, v projections
  bf16 fz[2][kKdaD];        // the token's f and z rows; folded: its f_low | g_low row
};
static_assert(sizeof(KdaDecodeItemIn) % 16 == 0);

// One pipeline stage: an item's state, laid out as in global memory, and its inputs.
struct KdaDecodeStage {
  float s[kKdaD * kKdaD];
  KdaDecodeItemIn in;
};
constexpr size_t kKdaPersistSmem = kPersistStages * sizeof(KdaDecodeStage);

template <bool kFold>
__global__ void __launch_bounds__(kPersistThreads, 1)
    kda_decode_persistent_kernel(const KdaDecodeParams p) {
  pdl_launch_dependents();  // PDL (launch.h); the wait comes after the first states' loads
  constexpr int D = kKdaD, kStages = kPersistStages;
  extern __shared__ __align__(16) unsigned char sm_raw[];
  KdaDecodeStage* stages = reinterpret_cast<KdaDecodeStage*>(sm_raw);
  __shared__ uint64_t sm_full[kStages];  // one mbarrier per stage: its loads have landed
  __shared__ __align__(16) float sm_q[D], sm_k[D], sm_a[D], sm_v[D], sm_br[D];
  __shared__ float sm_z[kFold ? D : 1];
  __shared__ __align__(16) float sm_red[4][2][D];
  __shared__ float sm_red3[4][3], sm_o2[4];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int B = p.batch, H = p.num_heads, HD = H * D, C = 3 * HD;
  const int col = (warp & 3) * 32 + (lane & 7) * 4, row0 = (warp >> 2) * 4 + (lane >> 3);

  // Items it = h·B + bi; this CTA's range, balanced to ±1 item.
  const int n = B * H, G = gridDim.x;
  const int beg = int(int64_t(n) * blockIdx.x / G), end = int(int64_t(n) * (blockIdx.x + 1) / G);

  const uint64_t policy = policy_evict_first();  // everything is read or written once
  // Issues item it's state and input loads into stage st (thread kTmaThread): nothing past the end
  // (it >= end); for a padding row (slot -1) only the arrival that completes the stage's phase.
  // kParts: 1 = the state and conv states (the stage's whole transaction count is expected), 2 =
  // the token's inputs, 3 = both.
  auto prefetch = [&](int it, int slot, int st, int kParts) {
    if (it >= end) return;
    const int h = it / B, bi = it % B;
    KdaDecodeStage& sg = stages[st];
    if (tid != kTmaThread) return;
    if (kParts & 1) {
      fence_proxy_async();  // the stage was last read by generic loads, before a barrier
      bulk_wait_read<0>();  // item it - 1's store has read the stage
      mbar_arrive_expect_tx(&sm_full[st], slot < 0 ? 0u : unsigned(sizeof(KdaDecodeStage)));
    }
    if (slot < 0) return;
    if (kParts & 1) {
      bulk_g2s(sg.s, p.state + (size_t(slot) * H + h) * D * D, D * D * 4, &sm_full[st], policy);
      for (int part = 0; part < 3; ++part)
        bulk_g2s(sg.in.conv[part], p.conv_state + (size_t(slot) * C + part * HD + h * D) * 3,
                 D * 3 * 2, &sm_full[st], policy);
    }
    if (kParts & 2) {
      for (int part = 0; part < 3; ++part)
        bulk_g2s(sg.in.x[part], p.qkv + size_t(bi) * C + part * HD + h * D, D * 2, &sm_full[st],
                 policy);
      if constexpr (kFold) {
        bulk_g2s(sg.in.fz, p.fg_low + size_t(bi) * 2 * D, 2 * D * 2, &sm_full[st], policy);
      } else {
        bulk_g2s(sg.in.fz[0], p.f + size_t(bi) * HD + h * D, D * 2, &sm_full[st], policy);
        bulk_g2s(sg.in.fz[1], p.z + size_t(bi) * HD + h * D, D * 2, &sm_full[st], policy);
      }
    }
  };
  auto slot_of = [&](int it) { return it < end ? __ldg(p.slots + it % B) : -1; };
  // Folded: warp w's rows 16·(w&7) + lane/4 (+ 8) of W_fb (um = 0) or W_gb, for head up_h.
  const int um = warp >> 3, ur = 16 * (warp & 7) + (lane >> 2);
  uint4 up_w[kFold ? 8 : 1];
  float dtb_up0 = 0.f, dtb_up1 = 0.f;
  int up_h = -1;
  auto load_up = [&](int h) {
    if constexpr (kFold) {
      load_up_rows(up_w, p.fg_b + (size_t(um) * HD + h * D + 16 * (warp & 7)) * D, lane);
      dtb_up0 = __ldg(p.w.dt_bias + h * D + ur);
      dtb_up1 = __ldg(p.w.dt_bias + h * D + ur + 8);
      up_h = h;
    }
  };

  if (tid == 0) {
    for (int i = 0; i < kStages; ++i) mbar_init(&sm_full[i], 1);
    fence_mbar_init();
  }
  __syncthreads();
  // Prologue: items beg .. beg + kStages - 2 in flight. Their states and conv states are read
  // before the PDL wait (no kernel that may still run writes them: kda_decode.cuh), their inputs
  // after it.
#pragma unroll
  for (int j = 0; j < kStages - 1; ++j) prefetch(beg + j, slot_of(beg + j), j, 1);
  if (beg < end) load_up(beg / B);
  pdl_wait();
#pragma unroll
  for (int j = 0; j < kStages - 1; ++j) prefetch(beg + j, slot_of(beg + j), j, 2);
  int slot_ahead = slot_of(beg + kStages - 1);  // the slot the next issue needs, loaded early

  for (int it = beg, st = 0; it < end; ++it, st = st + 1 == kStages ? 0 : st + 1) {
    const int h = it / B, bi = it % B;
    // Scalars of item it, loaded before the wait so that their latency overlaps it.
    const int slot = __ldg(p.slots + bi);
    const float a_log = __ldg(p.w.A_log + h);
    const float beta = sigmoid(to_f(p.b[size_t(bi) * H + h]));
    if (kFold && h != up_h) load_up(h);  // uniform over the CTA
    mbar_wait(&sm_full[st], unsigned((it - beg) / kStages) & 1u);  // this stage's use of item it
    // Item it's inputs visible to all; everyone is done with item it - 1 and its stage.
    __syncthreads();
    // Item it + kStages - 1 into the stage item it - 1 used, issued after the column sums: item
    // it - 1's bulk store has read the stage by then, so the wait for it costs nothing.
    auto issue_ahead = [&] {
      prefetch(it + kStages - 1, slot_ahead, st == 0 ? kStages - 1 : st - 1, 3);
    };

    if (slot < 0) {  // padding row: uniform over the CTA
      if (tid < D) p.y[size_t(bi) * HD + h * D + tid] = __float2bfloat16(0.f);
      issue_ahead();
    } else {
      const KdaDecodeItemIn& in = stages[st].in;
      if constexpr (kFold) {  // gates (warps 0..7) or z of rows ur, ur + 8
        const uint4* src = reinterpret_cast<const uint4*>(in.fz[um]) + (lane & 3) * 4;
        up_rows_store(up_w, src, um, ur, lane, a_log, dtb_up0, dtb_up1, sm_a, sm_z);
      }
      float q = 0.f, k = 0.f;
      if (tid < D) {  // q/k channel d: conv (unfolded: gate); unnormalised (norms come later)
        const int d = tid;
        const bf16* cq = in.conv[0] + d * 3;
        const bf16* ck = in.conv[1] + d * 3;
        const float4 wq = __ldg(reinterpret_cast<const float4*>(p.w.conv_weight) + h * D + d);
        const float4 wk = __ldg(reinterpret_cast<const float4*>(p.w.conv_weight) + HD + h * D + d);
        q = silu(wq.x * to_f(cq[0]) + wq.y * to_f(cq[1]) + wq.z * to_f(cq[2]) +
                 wq.w * to_f(in.x[0][d]));
        k = silu(wk.x * to_f(ck[0]) + wk.y * to_f(ck[1]) + wk.z * to_f(ck[2]) +
                 wk.w * to_f(in.x[1][d]));
        if constexpr (!kFold)
          sm_a[d] = gate_decay(a_log, to_f(in.fz[0][d]) + __ldg(p.w.dt_bias + h * D + d));
        sm_q[d] = q;
        sm_k[d] = k;
      } else if (tid < 2 * D) {  // v channel j
        const int j = tid - D;
        const bf16* cv = in.conv[2] + j * 3;
        const float4 wv =
            __ldg(reinterpret_cast<const float4*>(p.w.conv_weight) + 2 * HD + h * D + j);
        sm_v[j] = silu(wv.x * to_f(cv[0]) + wv.y * to_f(cv[1]) + wv.z * to_f(cv[2]) +
                       wv.w * to_f(in.x[2][j]));
      } else if (tid < 2 * D + 144) {  // new conv state, 16 bytes each: [tap1, tap2, x] per channel
        const int m = tid - 2 * D, part = m / 48, e0 = (m % 48) * 8;
        __align__(16) bf16 v8[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const int ch = (e0 + e) / 3, tap = (e0 + e) % 3;
          v8[e] = tap < 2 ? in.conv[part][ch * 3 + tap + 1] : in.x[part][ch];
        }
        *reinterpret_cast<uint4*>(p.conv_state + (size_t(slot) * C + part * HD + h * D) * 3 + e0) =
            *reinterpret_cast<const uint4*>(v8);
      }
      if (warp < 4) {
        const float sq = warp_sum(q * q), sk = warp_sum(k * k), sqk = warp_sum(q * k);
        if (lane == 0) {
          sm_red3[warp][0] = sq;
          sm_red3[warp][1] = sk;
          sm_red3[warp][2] = sqk;
        }
      }
      __syncthreads();

      // Column sums A_j = Σ k (α S), C_j = Σ q (α S) over this thread's rows, then its warp's;
      // s keeps α S for the update.
      float4 s[kPersistPasses];
#pragma unroll
      for (int i = 0; i < kPersistPasses; ++i)
        s[i] = *reinterpret_cast<const float4*>(&stages[st].s[(i * 16 + row0) * D + col]);
      float4 a = make_float4(0.f, 0.f, 0.f, 0.f), c = a;
#pragma unroll
      for (int i = 0; i < kPersistPasses; ++i) {
        const int row = i * 16 + row0;
        const float al = sm_a[row];
        s[i] = make_float4(al * s[i].x, al * s[i].y, al * s[i].z, al * s[i].w);
        a = fma4(sm_k[row], s[i], a);
        c = fma4(sm_q[row], s[i], c);
      }
      warp_sum_lanes<8>(a);
      warp_sum_lanes<8>(c);
      if (lane < 8) {
        reinterpret_cast<float4*>(sm_red[warp >> 2][0])[col / 4] = a;
        reinterpret_cast<float4*>(sm_red[warp >> 2][1])[col / 4] = c;
      }
      __syncthreads();
      issue_ahead();

      float o = 0.f;
      if (tid < D) {  // value column j
        const int j = tid;
        const float sq = sm_red3[0][0] + sm_red3[1][0] + sm_red3[2][0] + sm_red3[3][0];
        const float sk = sm_red3[0][1] + sm_red3[1][1] + sm_red3[2][1] + sm_red3[3][1];
        const float sqk = sm_red3[0][2] + sm_red3[1][2] + sm_red3[2][2] + sm_red3[3][2];
        const float kScale = 0.08838834764831845f;  // 128^-1/2
        const float rq = 1.f / sqrtf(sq + kKdaL2Eps) * kScale, rk = 1.f / sqrtf(sk + kKdaL2Eps);
        const float aj =
            (sm_red[0][0][j] + sm_red[1][0][j] + sm_red[2][0][j] + sm_red[3][0][j]) * rk;
        const float cj =
            (sm_red[0][1][j] + sm_red[1][1][j] + sm_red[2][1][j] + sm_red[3][1][j]) * rq;
        const float br = beta * (sm_v[j] - aj);
        sm_br[j] = br * rk;  // the update needs k·rk·br, and sm_k holds the unnormalised k
        o = cj + br * (sqk * rq * rk);
        const float o2 = warp_sum(o * o);
        if (lane == 0) sm_o2[warp] = o2;
      }
      __syncthreads();

      // S' = α S + k (β r)ᵀ over S in the stage, then one bulk store.
      float* S = p.state + (size_t(slot) * H + h) * D * D;
      const float4 br4 = reinterpret_cast<const float4*>(sm_br)[col / 4];
#pragma unroll
      for (int i = 0; i < kPersistPasses; ++i) {
        const int row = i * 16 + row0;
        const float kk = sm_k[row];
        float4 nv;
        nv.x = fmaf(kk, br4.x, s[i].x);
        nv.y = fmaf(kk, br4.y, s[i].y);
        nv.z = fmaf(kk, br4.z, s[i].z);
        nv.w = fmaf(kk, br4.w, s[i].w);
        *reinterpret_cast<float4*>(&stages[st].s[row * D + col]) = nv;
      }
      if (tid < D) {
        const float total = sm_o2[0] + sm_o2[1] + sm_o2[2] + sm_o2[3];
        const float zj = kFold ? sm_z[tid] : to_f(in.fz[1][tid]);
        p.y[size_t(bi) * HD + h * D + tid] = __float2bfloat16(
            o / sqrtf(total / D + kKdaNormEps) * __ldg(p.w.o_norm + tid) * sigmoid(zj));
      }
      fence_proxy_async();  // each thread's stage writes, before the bulk store reads them
      __syncthreads();
      if (tid == kTmaThread) {
        bulk_s2g(S, stages[st].s, D * D * 4, policy);
        bulk_commit();
      }
    }
    slot_ahead = slot_of(it + kStages);
  }
  if (tid == kTmaThread) bulk_wait<0>();  // the stores are done before the stages go away
}

}  // namespace kimi::cuda::kda
