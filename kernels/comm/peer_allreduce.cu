// Peer-memory all-reduce (contracts in peer_allreduce.h).
#include "comm/peer_allreduce.h"

#include <algorithm>

#include "common.h"

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

}  // namespace

size_t peer_allreduce_bytes(int64_t capacity) {
  return size_t(2 * capacity) * sizeof(float) + size_t(kPeerMaxBlocks) * kPeerMaxRanks * 4 +
         size_t(kPeerMaxBlocks) * 4;
}

void peer_allreduce_carve(void* base, int64_t capacity, float** stage, uint32_t** flags,
                          uint32_t** counters) {
  *stage = static_cast<float*>(base);
  *flags = reinterpret_cast<uint32_t*>(*stage + 2 * capacity);
  *counters = *flags + kPeerMaxBlocks * kPeerMaxRanks;
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

}  // namespace kimi::cuda
