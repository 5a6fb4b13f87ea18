// Launcher of the sampling kernel (contract in sampling.h): argument checks, cluster shape.
#include "common.h"
#include "sampling/sampling.cuh"

namespace kimi::cuda {

SampleShape sample_shape(int vocab) {
  using namespace sampling;
  // The fewest CTAs that hold the row in shared memory, more while each keeps >= kMinSlice ids:
  // a small batch then reads its rows with more multiprocessors.
  SampleShape s;
  auto per = [&](int c) { return (vocab + c - 1) / c; };
  while (s.cluster < kMaxCluster && per(s.cluster) > kMinSlice) s.cluster *= 2;
  s.slice = (per(s.cluster) + 3) / 4 * 4;  // whole float4s, so every CTA's part stays aligned
  return s;
}

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
  const SampleShape s = sample_shape(p.vocab);
  KIMI_CHECK(s.slice <= kMaxSlice, "sample: vocab ", p.vocab, " above ", kMaxCluster * kMaxSlice,
             " (", kMaxCluster, " CTAs of ", kMaxSlice, " logits)");
  const size_t smem = dynamic_smem_bytes(s.cluster, s.slice);
  CUDA_CHECK(
      cudaFuncSetAttribute(sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(s.cluster, p.rows);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = s.cluster;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, sample_kernel, p, s.slice));
}

}  // namespace kimi::cuda
