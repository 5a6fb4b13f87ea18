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
std::map<std::tuple<int, int, int, int>, bool> fits_cache;  // (device, B, H, hidden)
std::map<int, unsigned*> barrier_cache;                     // device -> g_oproj_barrier

// Filled by kda_decode_oproj_fits (which every launch passes first), so that a launch inside a
// graph capture makes no symbol or occupancy queries.
unsigned* barrier_ptr(int dev) {
  std::lock_guard<std::mutex> lock(mu);
  const auto it = barrier_cache.find(dev);
  KIMI_CHECK(it != barrier_cache.end(), "KDA decode with o_proj launched before its fits check");
  return it->second;
}

void set_smem_limit(size_t bytes) {
  if (bytes > (size_t(48) << 10))
    CUDA_CHECK(cudaFuncSetAttribute(kda_decode_oproj_kernel<32>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

}  // namespace

void launch_kda_decode_oproj(const KdaDecodeParams& p, cudaStream_t stream) {
  const KdaOprojLayout l = kda_oproj_layout(p.batch, p.num_heads, p.hidden);
  set_smem_limit(l.bytes);
  LaunchOptions o;
  o.smem = l.bytes;
  o.pdl = true;
  o.cluster = dim3(kOprojSplit, 1, 1);
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  launch_kernel(kda_decode_oproj_kernel<32>, dim3(kOprojSplit, p.num_heads, p.batch), 128, o, stream,
                p, barrier_ptr(dev));
}

// All G = 4·H·B CTAs must be resident at once (the grid barrier): at most as many clusters as the
// occupancy API allows on an idle device, with this shape's shared memory.
bool kda_decode_oproj_fits(int batch, int num_heads, int hidden) {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  const auto key = std::make_tuple(dev, batch, num_heads, hidden);
  std::lock_guard<std::mutex> lock(mu);
  if (const auto it = fits_cache.find(key); it != fits_cache.end()) return it->second;
  if (!barrier_cache.count(dev)) {
    void* ptr = nullptr;
    CUDA_CHECK(cudaGetSymbolAddress(&ptr, g_oproj_barrier));
    barrier_cache.emplace(dev, static_cast<unsigned*>(ptr));
  }
  const KdaOprojLayout l = kda_oproj_layout(batch, num_heads, hidden);
  int optin = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  cudaFuncAttributes fa{};
  CUDA_CHECK(cudaFuncGetAttributes(&fa, kda_decode_oproj_kernel<32>));
  bool fits = l.bytes + fa.sharedSizeBytes <= size_t(optin);
  if (fits) {
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
    fits = int64_t(clusters) >= int64_t(num_heads) * batch;
  }
  fits_cache.emplace(key, fits);
  return fits;
}

}  // namespace kimi::cuda::kda
