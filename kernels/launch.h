// Kernel launches through cudaLaunchKernelEx, optionally as programmatic dependent launches
// (PDL, Hopper): a PDL kernel may be scheduled while the previous kernel of the stream drains,
// so a decode step's ~300 small dependent kernels stop paying a full launch gap each. Such a
// kernel must execute pdl_wait() (pdl.cuh) in every CTA before it reads or writes anything an
// earlier kernel touches, and before it exits (so its completion still implies its
// predecessors'); what it does before (index math, loading constant weights) overlaps. The KDA
// decode kernels also read their state pools before the wait, under a contract of their own
// (kda_decode.cuh).
#pragma once

#include <cuda_runtime.h>

#include "common.h"

namespace kimi::cuda {

// Process-wide switch (default on; KIMI_CUDA_PDL=0 turns it off for comparison). Takes effect
// for launches made after the call: set it before capturing CUDA graphs.
void set_pdl_enabled(bool on);
bool pdl_enabled();

struct LaunchOptions {
  size_t smem = 0;
  bool pdl = false;    // the kernel calls pdl_wait() first (see above); ignored on stream 0
  dim3 cluster{1, 1, 1};  // thread-block cluster shape (1 x 1 x 1: no clusters)
};

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, const LaunchOptions& o,
                   cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = o.smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (o.pdl && stream != nullptr && pdl_enabled()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (o.cluster.x * o.cluster.y * o.cluster.z > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = o.cluster.x;
    attr[n].val.clusterDim.y = o.cluster.y;
    attr[n++].val.clusterDim.z = o.cluster.z;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

}  // namespace kimi::cuda
