// Instantiation of the fused KDA decode step: 32 value columns per CTA, state in smem
// (kda_decode.cuh).
#include "common.h"
#include "kda/kda_decode.cuh"

namespace kimi::cuda::kda {

template <>
void launch_kda_decode<32, true>(const KdaDecodeParams& p, cudaStream_t stream) {
  constexpr int kSplit = kKdaD / 32;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(kSplit, p.num_heads, p.batch);
  cfg.blockDim = dim3(128);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = kSplit;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kda_decode_kernel<32, true>, p));
}

}  // namespace kimi::cuda::kda
