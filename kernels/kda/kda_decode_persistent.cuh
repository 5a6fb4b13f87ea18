// KDA decode step, persistent variant (same math as kda_decode.cuh), chosen for mid-size batches
// (kda_launch.cu).
//
// One CTA of 512 threads owns a whole (sequence, head) item, so the q/k/v conv, gate and both
// norms are done once per item (the cluster kernel repeats the q/k prep in each of a head's CTAs).
// The grid is persistent, one CTA per multiprocessor; each CTA walks a contiguous range of items
// in head-major order (consecutive items share the head's weights: L1 hits). Two rings of
// shared-memory stages are filled by the TMA copy engine: kPersistStages states (64 KB each) and
// kPersistInStages items' inputs (conv states, x, f, z: contiguous pieces of the head), each stage
// with its own mbarrier. One thread issues every copy: the SM's load/store units carry no state
// traffic (a cp.async version of this kernel measured 8 points of copy rate slower at B = 64, S'
// stored from registers instead of by bulk store 10 points: docs/perf-log.md).
//
// The per-item chain is kept short, since a stage does no copying from the moment its state has
// landed until its S' store is issued: the prep of item i + 1 (conv, gates, the norms' sums: all
// that does not need the state; its inputs were loaded items ahead) runs right after item i's
// store is issued, i.e. while the CTA would wait for item i + 1's state anyway. From the state's
// arrival to its store there are two CTA barriers: the column sums' partials, then S' in the
// stage (every thread forms β r for its own 4 columns from the partials instead of one warp
// forming them behind a third barrier). The state of item i + 2 goes into the stage of item i − 1
// at the top of item i, once that stage's store has read it (issued an item earlier). The scalar
// work every thread repeats per item is kept small (a first version with run-time divisions for
// each item's head and row and IEEE sqrt, division and exp lost ~1.3 us at B = 8): item positions
// and ring phases are carried from item to item, the norms and gates use rsqrtf and __expf.
//
// State layout over the threads: warp w covers value columns [32·(w&3), +32), 8 lanes per
// 32-column row slice (128 contiguous bytes, conflict-free in shared memory), rows
// 16·i + 4·(w>>2) + lane/8 for pass i = 0..7. Each thread keeps its 8 float4 of S in registers
// from the column sums to the update, and writes S' back over them in the stage. Lanes 0-7 of
// warps 0-3 form the output of their 4 columns (the gated RMSNorm).
//
// Folded up-projections (kFold, f = W_fb·f_low and z = W_gb·g_low formed here): warp w holds the
// 16 rows 16·(w&7).. of W_fb (w < 8) or W_gb of the item's head in registers (32 per thread,
// reloaded when the head changes; the first before the PDL wait) and applies them to the item's
// f_low | g_low row, which takes the place of the f and z rows in the input stage, by mma
// (kda_common.cuh). z is double-buffered: item i's output reads it while item i + 1's prep runs.
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
constexpr int kPersistStages = 3;    // states in flight; 2 measured 13 points slower at B = 64
constexpr int kPersistInStages = 4;  // inputs: item i + 3's land while item i runs
// The thread that issues the TMA copies (lane 0 of the last warp, which has no output work):
// bulk store groups are per thread, so one thread commits and waits for all of them.
constexpr int kTmaThread = kPersistThreads - 32;

// One item's inputs, as they lie in global memory (each piece a multiple of 16 bytes).
struct __align__(16) KdaDecodeItemIn {
  bf16 conv[3][kKdaD * 3];  // conv states of the head's q, k, v channels, [channel][3]
  bf16 x[3][kKdaD];         // the token's q, k, v projections
  bf16 fz[2][kKdaD];        // the token's f and z rows; folded: its f_low | g_low row
};
static_assert(sizeof(KdaDecodeItemIn) % 16 == 0);

// The dynamic shared memory: the state ring, laid out as in global memory, and the input ring.
struct KdaDecodeRing {
  float s[kPersistStages][kKdaD * kKdaD];
  KdaDecodeItemIn in[kPersistInStages];
};
constexpr size_t kKdaPersistSmem = sizeof(KdaDecodeRing);

__device__ __forceinline__ float fast_sigmoid(float x) {
  return __fdividef(1.f, 1.f + __expf(-x));
}

// An item's head and batch row, advanced without a division.
struct KdaItemPos {
  int h, bi;
};
__device__ __forceinline__ KdaItemPos next_pos(KdaItemPos q, int B) {
  return q.bi + 1 == B ? KdaItemPos{q.h + 1, 0} : KdaItemPos{q.h, q.bi + 1};
}

template <bool kFold>
__global__ void __launch_bounds__(kPersistThreads, 1)
    kda_decode_persistent_kernel(const KdaDecodeParams p) {
  pdl_launch_dependents();  // PDL (launch.h); the wait comes after the first states' loads
  constexpr int D = kKdaD, kStages = kPersistStages, kIn = kPersistInStages;
  static_assert(kIn == 4 && kStages == 3, "ring indices below assume 3 state and 4 input stages");
  extern __shared__ __align__(16) unsigned char sm_raw[];
  KdaDecodeRing& ring = *reinterpret_cast<KdaDecodeRing*>(sm_raw);
  __shared__ uint64_t sm_full[kStages];  // one mbarrier per state stage: its load has landed
  __shared__ uint64_t sm_in_full[kIn];   // one per input stage
  __shared__ __align__(16) float sm_q[D], sm_k[D], sm_a[D], sm_v[D];
  __shared__ __align__(16) float sm_z[kFold ? 2 : 1][kFold ? D : 4];
  __shared__ __align__(16) float sm_red[4][2][D];
  __shared__ float sm_red3[4][3], sm_o2[4];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int B = p.batch, H = p.num_heads, HD = H * D, C = 3 * HD;
  const int col = (warp & 3) * 32 + (lane & 7) * 4, row0 = (warp >> 2) * 4 + (lane >> 3);
  const bool out_thread = warp < 4 && lane < 8;  // forms y of columns col .. col + 3

  // Items: head-major it = h·B + bi; this CTA's range, balanced to ±1 item.
  const int n = B * H, G = gridDim.x;
  const int beg = int(int64_t(n) * blockIdx.x / G), end = int(int64_t(n) * (blockIdx.x + 1) / G);
  if (beg >= end) {
    pdl_wait();
    return;
  }

  const uint64_t policy = policy_evict_first();  // everything is read or written once
  auto issue_state = [&](KdaItemPos q, int slot, int st) {
    fence_proxy_async();
    mbar_arrive_expect_tx(&sm_full[st], slot < 0 ? 0u : unsigned(D * D * 4));
    if (slot >= 0)
      bulk_g2s(ring.s[st], p.state + (size_t(slot) * H + q.h) * D * D, D * D * 4, &sm_full[st],
               policy);
  };
  // kParts: 1 = the conv states (the stage's whole transaction count is expected), 2 = the
  // token's inputs, 3 = both.
  auto issue_in = [&](KdaItemPos q, int slot, int j, int kParts) {
    KdaDecodeItemIn& in = ring.in[j];
    if (kParts & 1) {
      fence_proxy_async();
      mbar_arrive_expect_tx(&sm_in_full[j], slot < 0 ? 0u : unsigned(sizeof(KdaDecodeItemIn)));
    }
    if (slot < 0) return;
    if (kParts & 1)
      for (int part = 0; part < 3; ++part)
        bulk_g2s(in.conv[part], p.conv_state + (size_t(slot) * C + part * HD + q.h * D) * 3,
                 D * 3 * 2, &sm_in_full[j], policy);
    if (kParts & 2) {
      for (int part = 0; part < 3; ++part)
        bulk_g2s(in.x[part], p.qkv + size_t(q.bi) * C + part * HD + q.h * D, D * 2,
                 &sm_in_full[j], policy);
      if constexpr (kFold) {
        bulk_g2s(in.fz, p.fg_low + size_t(q.bi) * 2 * D, 2 * D * 2, &sm_in_full[j], policy);
      } else {
        bulk_g2s(in.fz[0], p.f + size_t(q.bi) * HD + q.h * D, D * 2, &sm_in_full[j], policy);
        bulk_g2s(in.fz[1], p.z + size_t(q.bi) * HD + q.h * D, D * 2, &sm_in_full[j], policy);
      }
    }
  };
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

  // Prep of the item at q (local index t), everything that does not need the state: q, k, v, the
  // decays α (folded: and z), the norms' partial sums into shared memory, published by the
  // caller's barrier; the new conv state to global memory.
  auto prep = [&](KdaItemPos q, int t, int slot, float a_log) {
    const int h = q.h, j = t & (kIn - 1);
    if (kFold && slot >= 0 && h != up_h) load_up(h);  // uniform over the CTA
    mbar_wait(&sm_in_full[j], unsigned(t >> 2) & 1u);
    if (slot < 0) return;  // padding row: uniform over the CTA
    const KdaDecodeItemIn& in = ring.in[j];
    if constexpr (kFold) {  // gates (warps 0..7) or z of rows ur, ur + 8
      const uint4* src = reinterpret_cast<const uint4*>(in.fz[um]) + (lane & 3) * 4;
      up_rows_store(up_w, src, um, ur, lane, a_log, dtb_up0, dtb_up1, sm_a, sm_z[t & 1]);
    }
    float qv = 0.f, kv = 0.f;
    if (tid < D) {  // q/k channel d: conv (unfolded: gate); unnormalised (norms come later)
      const int d = tid;
      const bf16* cq = in.conv[0] + d * 3;
      const bf16* ck = in.conv[1] + d * 3;
      const float4 wq = __ldg(reinterpret_cast<const float4*>(p.w.conv_weight) + h * D + d);
      const float4 wk = __ldg(reinterpret_cast<const float4*>(p.w.conv_weight) + HD + h * D + d);
      qv = silu(wq.x * to_f(cq[0]) + wq.y * to_f(cq[1]) + wq.z * to_f(cq[2]) +
                wq.w * to_f(in.x[0][d]));
      kv = silu(wk.x * to_f(ck[0]) + wk.y * to_f(ck[1]) + wk.z * to_f(ck[2]) +
                wk.w * to_f(in.x[1][d]));
      if constexpr (!kFold)
        sm_a[d] = gate_decay(a_log, to_f(in.fz[0][d]) + __ldg(p.w.dt_bias + h * D + d));
      sm_q[d] = qv;
      sm_k[d] = kv;
    } else if (tid < 2 * D) {  // v channel jv
      const int jv = tid - D;
      const bf16* cv = in.conv[2] + jv * 3;
      const float4 wv =
          __ldg(reinterpret_cast<const float4*>(p.w.conv_weight) + 2 * HD + h * D + jv);
      sm_v[jv] = silu(wv.x * to_f(cv[0]) + wv.y * to_f(cv[1]) + wv.z * to_f(cv[2]) +
                      wv.w * to_f(in.x[2][jv]));
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
      const float sq = warp_sum(qv * qv), sk = warp_sum(kv * kv), sqk = warp_sum(qv * kv);
      if (lane == 0) {
        sm_red3[warp][0] = sq;
        sm_red3[warp][1] = sk;
        sm_red3[warp][2] = sqk;
      }
    }
  };

  if (tid == 0) {
    for (int i = 0; i < kStages; ++i) mbar_init(&sm_full[i], 1);
    for (int i = 0; i < kIn; ++i) mbar_init(&sm_in_full[i], 1);
    fence_mbar_init();
  }
  __syncthreads();
  // Prologue: the states of items beg .. beg + 2 and the inputs of beg .. beg + 2 in flight. The
  // states and conv states are read before the PDL wait (no kernel that may still run writes
  // them: kda_decode.cuh), the token's inputs after it.
  const KdaItemPos pos_beg{beg / B, beg % B};
  // Thread kTmaThread: the item of its next input issue (it + 3) and next state issue (it + 2),
  // with their slots loaded early.
  KdaItemPos pin = pos_beg, pst = pos_beg;
  int sl_in = -1, sl_st = -1;
  if (tid == kTmaThread) {
    KdaItemPos q[3];
    int sl[3];
    q[0] = pos_beg;
    q[1] = next_pos(q[0], B);
    q[2] = next_pos(q[1], B);
#pragma unroll
    for (int j = 0; j < 3; ++j) sl[j] = beg + j < end ? __ldg(p.slots + q[j].bi) : -1;
#pragma unroll
    for (int j = 0; j < 3; ++j)
      if (beg + j < end) issue_state(q[j], sl[j], j);
#pragma unroll
    for (int j = 0; j < 3; ++j)
      if (beg + j < end) issue_in(q[j], sl[j], j, 1);
    if (kFold) load_up(pos_beg.h);
    pdl_wait();
#pragma unroll
    for (int j = 0; j < 3; ++j)
      if (beg + j < end) issue_in(q[j], sl[j], j, 2);
    pin = next_pos(q[2], B);
    sl_in = beg + 3 < end ? __ldg(p.slots + pin.bi) : -1;
  } else {
    if (kFold) load_up(pos_beg.h);
    pdl_wait();
  }
  const float4 wn4 = out_thread ? __ldg(reinterpret_cast<const float4*>(p.w.o_norm) + col / 4)
                                : make_float4(0.f, 0.f, 0.f, 0.f);
  int slot = __ldg(p.slots + pos_beg.bi);
  bf16 b_raw = p.b[size_t(pos_beg.bi) * H + pos_beg.h];
  prep(pos_beg, 0, slot, __ldg(p.w.A_log + pos_beg.h));
  __syncthreads();

  KdaItemPos cur = pos_beg;
  unsigned ph = 0;  // the state ring's phase parity for stage st
  for (int it = beg, t = 0, st = 0; it < end; ++it, ++t) {
    // The next item's scalars, loaded now so that their latency overlaps this item.
    const bool has_next = it + 1 < end;
    const KdaItemPos nxt = next_pos(cur, B);
    const int slot_next = has_next ? __ldg(p.slots + nxt.bi) : -1;
    const float a_log_next = has_next ? __ldg(p.w.A_log + nxt.h) : 0.f;
    const bf16 b_next = has_next ? p.b[size_t(nxt.bi) * H + nxt.h] : b_raw;
    const int st_prev = st == 0 ? kStages - 1 : st - 1;  // item it - 1's stage (= it + 2's)
    // Copies: item it + 3's inputs into the input stage item it - 1 used (its prep and output are
    // done), item it + 2's state into the state stage item it - 1 used, once that stage's store
    // (issued at the end of the last item) has read it. Item beg + 2's state came with the
    // prologue.
    if (tid == kTmaThread) {
      if (it + 3 < end) issue_in(pin, sl_in, (t + 3) & (kIn - 1), 3);
      if (t >= 1 && it + 2 < end) {
        bulk_wait_read<0>();
        issue_state(pst, sl_st, st_prev);
      }
      pst = pin;
      sl_st = sl_in;
      pin = next_pos(pin, B);
      sl_in = it + 4 < end ? __ldg(p.slots + pin.bi) : -1;
    }
    // The norms of item it (its prep's partial sums).
    const float sq = sm_red3[0][0] + sm_red3[1][0] + sm_red3[2][0] + sm_red3[3][0];
    const float sk = sm_red3[0][1] + sm_red3[1][1] + sm_red3[2][1] + sm_red3[3][1];
    const float sqk = sm_red3[0][2] + sm_red3[1][2] + sm_red3[2][2] + sm_red3[3][2];
    const float kScale = 0.08838834764831845f;  // 128^-1/2
    const float rq = rsqrtf(sq + kKdaL2Eps) * kScale, rk = rsqrtf(sk + kKdaL2Eps);
    const float kq = sqk * rq * rk, beta = fast_sigmoid(to_f(b_raw));
    mbar_wait(&sm_full[st], ph);  // item it's state has landed

    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
    if (slot >= 0) {  // uniform over the CTA
      // Column sums A_j = Σ k (α S), C_j = Σ q (α S) over this thread's rows, then its warp's;
      // s keeps α S for the update.
      float4 s[kPersistPasses];
#pragma unroll
      for (int i = 0; i < kPersistPasses; ++i)
        s[i] = *reinterpret_cast<const float4*>(&ring.s[st][(i * 16 + row0) * D + col]);
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

      // β r of this thread's 4 columns from the four row groups' partials; S' = α S + k (β r)ᵀ
      // over S in the stage.
      const float4* red_a = reinterpret_cast<const float4*>(sm_red[0][0]) + col / 4;
      constexpr int kGroupStride = 2 * D / 4;  // float4 from one row group's partials to the next
      float4 aj = red_a[0];
#pragma unroll
      for (int g = 1; g < 4; ++g) {
        const float4 x = red_a[g * kGroupStride];
        aj = make_float4(aj.x + x.x, aj.y + x.y, aj.z + x.z, aj.w + x.w);
      }
      const float4 v4 = reinterpret_cast<const float4*>(sm_v)[col / 4];
      const float4 br = make_float4(beta * (v4.x - aj.x * rk), beta * (v4.y - aj.y * rk),
                                    beta * (v4.z - aj.z * rk), beta * (v4.w - aj.w * rk));
      // the update needs k·rk·br, and sm_k holds the unnormalised k
      const float4 brk = make_float4(br.x * rk, br.y * rk, br.z * rk, br.w * rk);
#pragma unroll
      for (int i = 0; i < kPersistPasses; ++i) {
        const int row = i * 16 + row0;
        const float kk = sm_k[row];
        float4 nv;
        nv.x = fmaf(kk, brk.x, s[i].x);
        nv.y = fmaf(kk, brk.y, s[i].y);
        nv.z = fmaf(kk, brk.z, s[i].z);
        nv.w = fmaf(kk, brk.w, s[i].w);
        *reinterpret_cast<float4*>(&ring.s[st][row * D + col]) = nv;
      }
      if (warp < 4) {  // o of the 4 columns (every 8-lane group of the warp alike), Σ o² per warp
        const float4* red_c = reinterpret_cast<const float4*>(sm_red[0][1]) + col / 4;
        float4 cj = red_c[0];
#pragma unroll
        for (int g = 1; g < 4; ++g) {
          const float4 x = red_c[g * kGroupStride];
          cj = make_float4(cj.x + x.x, cj.y + x.y, cj.z + x.z, cj.w + x.w);
        }
        o = make_float4(cj.x * rq + br.x * kq, cj.y * rq + br.y * kq, cj.z * rq + br.z * kq,
                        cj.w * rq + br.w * kq);
        float o2 = o.x * o.x + o.y * o.y + o.z * o.z + o.w * o.w;
        o2 += __shfl_xor_sync(0xffffffffu, o2, 1);
        o2 += __shfl_xor_sync(0xffffffffu, o2, 2);
        o2 += __shfl_xor_sync(0xffffffffu, o2, 4);
        if (lane == 0) sm_o2[warp] = o2;
      }
      fence_proxy_async();  // each thread's stage writes, before the bulk store reads them
      __syncthreads();
    }
    if (tid == kTmaThread) {
      if (slot >= 0)
        bulk_s2g(p.state + (size_t(slot) * H + cur.h) * D * D, ring.s[st], D * D * 4, policy);
      bulk_commit();  // an empty group for a padding row: the waits count groups
    }
    if (out_thread) {
      bf16* yp = p.y + size_t(cur.bi) * HD + cur.h * D + col;
      __align__(8) bf16 y4[4];
      if (slot >= 0) {
        const float total = sm_o2[0] + sm_o2[1] + sm_o2[2] + sm_o2[3];
        const float scale = rsqrtf(total * (1.f / D) + kKdaNormEps);
        float4 z4;
        if constexpr (kFold) {
          z4 = reinterpret_cast<const float4*>(sm_z[t & 1])[col / 4];
        } else {
          const bf16* zp = ring.in[t & (kIn - 1)].fz[1] + col;
          z4 = make_float4(to_f(zp[0]), to_f(zp[1]), to_f(zp[2]), to_f(zp[3]));
        }
        y4[0] = __float2bfloat16(o.x * scale * wn4.x * fast_sigmoid(z4.x));
        y4[1] = __float2bfloat16(o.y * scale * wn4.y * fast_sigmoid(z4.y));
        y4[2] = __float2bfloat16(o.z * scale * wn4.z * fast_sigmoid(z4.z));
        y4[3] = __float2bfloat16(o.w * scale * wn4.w * fast_sigmoid(z4.w));
      } else {
        y4[0] = y4[1] = y4[2] = y4[3] = __float2bfloat16(0.f);
      }
      *reinterpret_cast<uint2*>(yp) = *reinterpret_cast<const uint2*>(y4);
    }
    if (has_next) {  // item it + 1's prep, while its state lands
      prep(nxt, t + 1, slot_next, a_log_next);
      slot = slot_next;
      b_raw = b_next;
      __syncthreads();
    }
    cur = nxt;
    if (++st == kStages) {
      st = 0;
      ph ^= 1u;
    }
  }
  if (tid == kTmaThread) bulk_wait<0>();  // the stores are done before the stages go away
}

}  // namespace kimi::cuda::kda
