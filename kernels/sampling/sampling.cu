// Launcher of the sampling kernel (contract in sampling.h): argument checks, cluster shape.
#include "common.h"
#include "sampling/sampling.cuh"

#include <mutex>

namespace kimi::cuda {

namespace {

constexpr int kWideRows = 4;  // batches up to this size may use clusters of 16

cudaLaunchConfig_t launch_config(const SampleParams& p, SampleShape s, cudaStream_t stream,
                                 cudaLaunchAttribute* attr) {
  using namespace sampling;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(s.cluster, p.rows);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = dynamic_smem_bytes(s.cluster, s.slice);
  cfg.stream = stream;
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = s.cluster;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}

// Sets the kernel's attributes once per device: the dynamic shared memory of the largest slice
// (a launch's own size decides its occupancy) and, where the device allows, non-portable cluster
// sizes. Returns whether clusters of 16 are allowed.
bool set_attributes(int dev) {
  using namespace sampling;
  constexpr int kDevices = 64;
  static std::mutex mu;
  static signed char state[kDevices] = {};  // 0: not yet, 1: wide allowed, -1: not
  KIMI_CHECK(dev >= 0 && dev < kDevices, "sample: device ", dev);
  std::lock_guard<std::mutex> lock(mu);
  if (state[dev] == 0) {
    CUDA_CHECK(cudaFuncSetAttribute(sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    int(dynamic_smem_bytes(1, kMaxSlice))));
    const bool wide = cudaFuncSetAttribute(sample_kernel,
                                           cudaFuncAttributeNonPortableClusterSizeAllowed,
                                           1) == cudaSuccess;
    if (!wide) cudaGetLastError();
    state[dev] = wide ? 1 : -1;
  }
  return state[dev] > 0;
}

// Whether the current device runs a cluster of 16 CTAs with `slice` logits each.
bool wide_cluster_fits(int slice) {
  using namespace sampling;
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (!set_attributes(dev)) return false;
  constexpr int kDevices = 64;
  static std::mutex mu;
  static int known_slice[kDevices] = {};
  static bool known_ok[kDevices] = {};
  std::lock_guard<std::mutex> lock(mu);
  if (known_slice[dev] != slice) {
    SampleParams p;
    p.rows = 1;
    cudaLaunchAttribute attr[1];
    const cudaLaunchConfig_t cfg = launch_config(p, SampleShape{kMaxCluster, slice}, nullptr, attr);
    int clusters = 0;
    const bool ok = cudaOccupancyMaxActiveClusters(&clusters, sample_kernel, &cfg) == cudaSuccess &&
                    clusters >= 1;
    if (!ok) cudaGetLastError();  // a refusal: the launch then uses 8 CTAs
    known_slice[dev] = slice;
    known_ok[dev] = ok;
  }
  return known_ok[dev];
}

// The shape run_sample uses for `rows` rows (sample_shape: any batch above kWideRows).
SampleShape launch_shape(int vocab, int rows) {
  using namespace sampling;
  // The fewest CTAs that hold the row in shared memory, more while each keeps >= kMinSlice ids:
  // a small batch then reads its rows with more multiprocessors.
  auto per = [&](int c) { return (vocab + c - 1) / c; };
  auto shape = [&](int max_c) {
    SampleShape s;
    while (s.cluster < max_c && per(s.cluster) > kMinSlice) s.cluster *= 2;
    s.slice = (per(s.cluster) + 3) / 4 * 4;  // whole float4s, so every CTA's part stays aligned
    return s;
  };
  const SampleShape s = shape(kPortableCluster);
  if (rows > 0 && rows <= kWideRows && per(kPortableCluster) > kMinSlice) {
    const SampleShape w = shape(kMaxCluster);
    if (w.cluster > kPortableCluster && wide_cluster_fits(w.slice)) return w;
  }
  return s;
}

}  // namespace

SampleShape sample_shape(int vocab) { return launch_shape(vocab, 0); }

void run_sample(const SampleParams& p0, cudaStream_t stream) {
  using namespace sampling;
  SampleParams p = p0;
  KIMI_CHECK(p.rows >= 0 && p.vocab > 0, "sample rows ", p.rows, " vocab ", p.vocab);
  if (p.rows == 0) return;
  KIMI_CHECK(p.rows <= 65535, "sample: ", p.rows, " rows, at most 65535");
  KIMI_CHECK(p.logits && p.row_params && p.token, "sample: null pointer");
  KIMI_CHECK(!p.adjust_offsets || p.adjust, "sample: adjust_offsets without adjust");
  if (p.stride == 0) p.stride = p.vocab;
  KIMI_CHECK(p.stride >= p.vocab, "sample stride ", p.stride, " below vocab ", p.vocab);
  const SampleShape s = launch_shape(p.vocab, p.rows);
  KIMI_CHECK(s.slice <= kMaxSlice, "sample: vocab ", p.vocab, " above ",
             kPortableCluster * kMaxSlice, " (", kPortableCluster, " CTAs of ", kMaxSlice,
             " logits)");
  const size_t smem = dynamic_smem_bytes(s.cluster, s.slice);
  KIMI_CHECK(smem <= dynamic_smem_bytes(1, kMaxSlice), "sample: shared memory");
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  const bool wide_ok = set_attributes(dev);
  KIMI_CHECK(wide_ok || s.cluster <= kPortableCluster, "sample: no cluster of ", s.cluster);
  cudaLaunchAttribute attr[1];
  const cudaLaunchConfig_t cfg = launch_config(p, s, stream, attr);
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, sample_kernel, p, s.slice));
}

}  // namespace kimi::cuda
