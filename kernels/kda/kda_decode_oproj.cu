// Instantiation and launcher of the fused KDA decode step with o_proj folded in (kda_decode.cuh:
// the cluster kernel, folded up-projections, S in registers), and its residency check.
#include <map>
#include <mutex>
#include <tuple>

#include "common.h"
#include "kda/kda_decode.cuh"
#include "launch.h"

namespace kimi::cuda::kda {

namespace {

// The grid barrier's counters (grid_barrier.cuh): zero at module load, and the last CTA of each
// launch zeroes them again. One pair per device is enough: the launches of a device run one after
// another (consecutive ones are separated by PDL waits: a launch's barrier work all follows its
// wait, which follows the previous launch's completion).
__device__ unsigned g_oproj_barrier[2];

std::mutex mu;  // guards the caches below
// (device, B, H, hidden, cap) -> rows of a share in shared memory, or -1: does not fit.
std::map<std::tuple<int, int, int, int, int>, int> rows_cache;
std::map<int, unsigned*> barrier_cache;  // device -> g_oproj_barrier

void set_smem_limit(size_t bytes) {
  if (bytes > (size_t(48) << 10))
    CUDA_CHECK(cudaFuncSetAttribute(kda_decode_oproj_kernel<32>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

// The most rows of a share in shared memory (at most cap, and at most kOprojRegRows fewer than
// the share, the rest in registers) with which all G = 4·H·B CTAs are resident at once: as many
// clusters as the occupancy API allows on an idle device, with that shared memory. -1: none.
int choose_rows(int dev, int batch, int num_heads, int hidden, int cap) {
  const KdaOprojLayout full = kda_oproj_layout(batch, num_heads, hidden, -1);
  int optin = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  cudaFuncAttributes fa{};
  CUDA_CHECK(cudaFuncGetAttributes(&fa, kda_decode_oproj_kernel<32>));
  const int top = cap < 0 ? full.rows_max : std::min(cap, full.rows_max);
  for (int r = top; r >= 0 && full.rows_max - r <= kOprojRegRows; --r) {
    if (r < full.rows_max && num_heads * kKdaD > 128 * 8 * kOprojRegPieces) break;
    const KdaOprojLayout l = kda_oproj_layout(batch, num_heads, hidden, r);
    if (l.bytes + fa.sharedSizeBytes > size_t(optin)) continue;
    set_smem_limit(l.bytes);
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(kOprojSplit, num_heads, batch);
    cfg.blockDim = dim3(128);
    cfg.dynamicSmemBytes = l.bytes;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = kOprojSplit;
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    int clusters = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kda_decode_oproj_kernel<32>, &cfg));
    if (int64_t(clusters) >= int64_t(num_heads) * batch) return r;
  }
  return -1;
}

// Filled by kda_decode_oproj_fits (which every launch passes first), so that a launch inside a
// graph capture makes no symbol or occupancy queries.
int cached_rows(int batch, int num_heads, int hidden, int cap, unsigned** barrier) {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  const auto key = std::make_tuple(dev, batch, num_heads, hidden, cap);
  std::lock_guard<std::mutex> lock(mu);
  auto it = rows_cache.find(key);
  if (it == rows_cache.end()) {
    if (!barrier_cache.count(dev)) {
      void* ptr = nullptr;
      CUDA_CHECK(cudaGetSymbolAddress(&ptr, g_oproj_barrier));
      barrier_cache.emplace(dev, static_cast<unsigned*>(ptr));
    }
    it = rows_cache.emplace(key, choose_rows(dev, batch, num_heads, hidden, cap)).first;
  }
  if (barrier) *barrier = barrier_cache.at(dev);
  return it->second;
}

}  // namespace

void launch_kda_decode_oproj(const KdaDecodeParams& p, cudaStream_t stream) {
  unsigned* barrier = nullptr;
  const int rows = cached_rows(p.batch, p.num_heads, p.hidden, p.oproj_smem_rows, &barrier);
  KIMI_CHECK(rows >= 0, "decode with o_proj does not fit");
  const KdaOprojLayout l = kda_oproj_layout(p.batch, p.num_heads, p.hidden, rows);
  set_smem_limit(l.bytes);
  LaunchOptions o;
  o.smem = l.bytes;
  o.pdl = true;
  o.cluster = dim3(kOprojSplit, 1, 1);
  launch_kernel(kda_decode_oproj_kernel<32>, dim3(kOprojSplit, p.num_heads, p.batch), 128, o, stream,
                p, barrier, rows);
}

bool kda_decode_oproj_fits(int batch, int num_heads, int hidden, int smem_rows_cap) {
  return cached_rows(batch, num_heads, hidden, smem_rows_cap, nullptr) >= 0;
}

}  // namespace kimi::cuda::kda
