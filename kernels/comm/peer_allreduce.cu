// Peer-memory all-reduce (contracts in peer_allreduce.h).
#include "comm/peer_allreduce.h"

#include <algorithm>

#include "common.h"
#include "launch.h"
#include "pdl.cuh"
#include "warp.cuh"

namespace kimi::cuda {

namespace {

constexpr int kThreads = 512;
constexpr uint64_t kTimeoutNs = 20ull * 1000 * 1000 * 1000;

__device__ __forceinline__ void store_release_sys(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t load_acquire_sys(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void __launch_bounds__(kThreads) peer_allreduce_kernel(PeerAllReduceView v, float4* x,
                                                                  int64_t n4) {
  const int b = blockIdx.x, nb = gridDim.x;
  const int64_t per = (n4 + nb - 1) / nb, lo = b * per, hi = min(n4, lo + per);
  __shared__ uint32_t epoch;
  if (threadIdx.x == 0) epoch = v.counters[b] + 1;
  __syncthreads();
  const uint32_t e = epoch;
  const int64_t off = int64_t(e & 1) * (v.capacity / 4);
  // 1. The slice into this rank's staging buffer; fenced before the flag is published.
  float4* mine = reinterpret_cast<float4*>(v.stage[v.rank]) + off;
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) mine[i] = x[i];
  __threadfence_system();
  __syncthreads();
  // 2-3. Publish, then wait for every rank's same call of this CTA.
  if (threadIdx.x < v.world) {
    store_release_sys(v.flags[threadIdx.x] + b * v.world + v.rank, e);
    const uint32_t* f = v.flags[v.rank] + b * v.world + threadIdx.x;
    const uint64_t t0 = global_ns();
    while (load_acquire_sys(f) < e) {
      if (global_ns() - t0 > kTimeoutNs) __trap();  // a rank never came: fail loudly
    }
  }
  __syncthreads();
  // 4. Sum in rank order; the loads bypass L1 (peers wrote the data).
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) {
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int r = 0; r < v.world; ++r) {
      const float4 y = __ldcv(reinterpret_cast<const float4*>(v.stage[r]) + off + i);
      acc.x += y.x;
      acc.y += y.y;
      acc.z += y.z;
      acc.w += y.w;
    }
    x[i] = acc;
  }
  if (threadIdx.x == 0) v.counters[b] = e;
}

constexpr int kPushMaxThreads = 1024;

__device__ __forceinline__ void st_volatile16(float* p, uint4 v) {
  asm volatile("st.volatile.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w)
               : "memory");
}
// A word as sent: the sign flipped, −0 sent as +0, so that no value is sent as 0 (idle).
__device__ __forceinline__ uint32_t to_wire(float f) {
  const uint32_t w = __float_as_uint(f) ^ 0x80000000u;
  return w ? w : 0x80000000u;
}
__device__ __forceinline__ float from_wire(uint32_t w) { return __uint_as_float(w ^ 0x80000000u); }
__device__ __forceinline__ uint4 ld_volatile16(const float* p) {
  uint4 v;
  asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p)
               : "memory");
  return v;
}
__device__ __forceinline__ bool landed(const uint4& v) { return v.x && v.y && v.z && v.w; }

// One CTA per row, one float4 per thread per pass (rows wider than 4·blockDim take more passes).
__global__ void __launch_bounds__(kPushMaxThreads) peer_push_kernel(PeerAllReduceView v, PeerPushParams p) {
  pdl_wait();
  pdl_launch_dependents();
  const int row = blockIdx.x, tid = threadIdx.x, n4 = p.dim / 4, W = v.world;
  __shared__ uint32_t buf_s;
  __shared__ float red[kPushMaxThreads / 32];
  if (tid == 0) buf_s = v.push_state[0];
  __syncthreads();
  const uint32_t buf = buf_s;
  const int64_t row0 = int64_t(row) * p.dim;
  float4* x = reinterpret_cast<float4*>(p.x + row0);
  // 1. Push (a sent word is never 0).
  for (int i = tid; i < n4; i += blockDim.x) {
    const float4 a = x[i];
    const uint4 s = make_uint4(to_wire(a.x), to_wire(a.y), to_wire(a.z), to_wire(a.w));
    for (int q = 0; q < W; ++q)
      st_volatile16(v.recv[q] + (buf * W + v.rank) * v.capacity + row0 + 4 * int64_t(i), s);
  }
  // 2-3. Wait for every rank's words, sum in rank order, zero the slots.
  float* mine = v.recv[v.rank] + buf * W * v.capacity + row0;
  float ss = 0.f;
  for (int i = tid; i < n4; i += blockDim.x) {
    uint4 got[kPeerMaxRanks];
    uint64_t t0 = 0;
    for (;;) {
      bool all = true;
#pragma unroll
      for (int q = 0; q < kPeerMaxRanks; ++q)
        if (q < W) {
          got[q] = ld_volatile16(mine + q * v.capacity + 4 * int64_t(i));
          all = all && landed(got[q]);
        }
      if (all) break;
      const uint64_t t = global_ns();
      if (t0 == 0) t0 = t;
      else if (t - t0 > kTimeoutNs) __trap();  // a rank never came: fail loudly
    }
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int q = 0; q < kPeerMaxRanks; ++q)
      if (q < W) {
        acc.x += from_wire(got[q].x);
        acc.y += from_wire(got[q].y);
        acc.z += from_wire(got[q].z);
        acc.w += from_wire(got[q].w);
        *reinterpret_cast<uint4*>(mine + q * v.capacity + 4 * int64_t(i)) = make_uint4(0, 0, 0, 0);
      }
    x[i] = acc;
    ss += acc.x * acc.x + acc.y * acc.y + acc.z * acc.z + acc.w * acc.w;
  }
  // 4. The norm of the summed row (every rank the same sums in the same order).
  if (p.norm_weight) {
    ss = warp_sum(ss);
    if (tid % 32 == 0) red[tid / 32] = ss;
    __syncthreads();
    float t = 0.f;
    for (int w = 0; w < int(blockDim.x / 32); ++w) t += red[w];
    const float inv = rsqrtf(t / float(p.dim) + p.eps);
    const float4* w4 = reinterpret_cast<const float4*>(p.norm_weight);
    __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(p.normed + row0);
    for (int i = tid; i < n4; i += blockDim.x) {
      const float4 a = x[i], w = w4[i];
      out[2 * i] = __floats2bfloat162_rn(a.x * inv * w.x, a.y * inv * w.y);
      out[2 * i + 1] = __floats2bfloat162_rn(a.z * inv * w.z, a.w * inv * w.w);
    }
  }
  // The last CTA done advances the buffer (every CTA has read it by then).
  __syncthreads();
  if (tid == 0) {
    __threadfence();
    if (atomicAdd(v.push_state + 1, 1u) == gridDim.x - 1) {
      v.push_state[1] = 0;
      v.push_state[0] = (buf + 1) % kPeerPushBuffers;
    }
  }
}

}  // namespace

size_t peer_allreduce_bytes(int64_t capacity, int world) {
  return size_t(2 * capacity) * sizeof(float) + size_t(kPeerMaxBlocks) * kPeerMaxRanks * 4 +
         size_t(kPeerMaxBlocks) * 4 + 16 + size_t(kPeerPushBuffers) * world * capacity * sizeof(float);
}

// One rank's part: stage [2][capacity] | flags | counters | push_state (16 bytes) | recv.
void peer_allreduce_carve(void* base, int64_t capacity, int owner, PeerAllReduceView& view) {
  KIMI_CHECK(owner >= 0 && owner < view.world && view.world <= kPeerMaxRanks && capacity % 4 == 0,
             "peer all-reduce carve: rank ", owner, " of ", view.world, ", capacity ", capacity);
  float* stage = static_cast<float*>(base);
  uint32_t* flags = reinterpret_cast<uint32_t*>(stage + 2 * capacity);
  uint32_t* counters = flags + kPeerMaxBlocks * kPeerMaxRanks;
  uint32_t* push_state = counters + kPeerMaxBlocks;
  view.stage[owner] = stage;
  view.flags[owner] = flags;
  view.recv[owner] = reinterpret_cast<float*>(push_state + 4);  // 16-byte aligned
  if (owner == view.rank) {
    view.counters = counters;
    view.push_state = push_state;
  }
}

void run_peer_allreduce(const PeerAllReduceView& v, float* x, int64_t n, cudaStream_t stream) {
  KIMI_CHECK(v.world >= 1 && v.world <= kPeerMaxRanks && v.rank >= 0 && v.rank < v.world,
             "peer all-reduce rank ", v.rank, " of ", v.world);
  KIMI_CHECK(n >= 0 && n % 4 == 0 && n <= v.capacity && v.capacity % 4 == 0,
             "peer all-reduce of ", n, " floats (capacity ", v.capacity, ", multiples of 4)");
  KIMI_CHECK(reinterpret_cast<uintptr_t>(x) % 16 == 0, "peer all-reduce: x not 16-byte aligned");
  if (n == 0) return;
  // One CTA per 16 KB, up to kPeerMaxBlocks: small calls stay one CTA (one flag round trip).
  const int64_t n4 = n / 4;
  const int nb = int(std::min<int64_t>(kPeerMaxBlocks, (n4 + 1023) / 1024));
  peer_allreduce_kernel<<<nb, kThreads, 0, stream>>>(v, reinterpret_cast<float4*>(x), n4);
  KIMI_CHECK_LAUNCH();
}

void run_peer_allreduce_push(const PeerAllReduceView& v, const PeerPushParams& p, cudaStream_t stream) {
  KIMI_CHECK(v.world >= 1 && v.world <= kPeerMaxRanks && v.rank >= 0 && v.rank < v.world,
             "peer all-reduce rank ", v.rank, " of ", v.world);
  KIMI_CHECK(p.rows >= 0 && p.dim > 0 && p.dim % 4 == 0 && int64_t(p.rows) * p.dim <= v.capacity &&
                 v.capacity % 4 == 0,
             "peer all-reduce push of ", p.rows, " rows of ", p.dim, " floats (capacity ", v.capacity,
             ", dim a multiple of 4)");
  KIMI_CHECK(reinterpret_cast<uintptr_t>(p.x) % 16 == 0, "peer all-reduce push: x not 16-byte aligned");
  KIMI_CHECK(!p.norm_weight == !p.normed, "peer all-reduce push: norm_weight and normed go together");
  KIMI_CHECK(!p.norm_weight || (reinterpret_cast<uintptr_t>(p.norm_weight) % 16 == 0 &&
                                reinterpret_cast<uintptr_t>(p.normed) % 8 == 0),
             "peer all-reduce push: norm weight not 16-byte or normed not 8-byte aligned");
  for (int q = 0; q < v.world; ++q)
    KIMI_CHECK(v.recv[q] != nullptr, "peer all-reduce push: no receive buffer of rank ", q);
  KIMI_CHECK(v.push_state != nullptr, "peer all-reduce push: no call count");
  if (p.rows == 0) return;
  const int n4 = p.dim / 4;
  const int threads = std::min(kPushMaxThreads, (n4 + 31) / 32 * 32);
  launch_kernel(peer_push_kernel, p.rows, threads, LaunchOptions{0, true}, stream, v, p);
}

}  // namespace kimi::cuda
