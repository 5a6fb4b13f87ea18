// Launcher of the persistent KDA decode kernel (kda_decode_persistent.cuh).
#include "common.h"
#include "kda/kda_decode_persistent.cuh"
#include "launch.h"

namespace kimi::cuda::kda {

template <typename Kernel>
static void launch_persistent(Kernel kernel, int threads, const KdaDecodeParams& p,
                              cudaStream_t stream) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(kKdaPersistSmem)));
  int dev = 0, sms = 0, per_sm = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, kKdaPersistSmem));
  KIMI_CHECK(per_sm > 0, "persistent KDA decode kernel does not fit a multiprocessor");
  // As many CTAs as fit at once, then fewer so that every CTA gets the same number of items (±1
  // only when the item count has no such divisor): the slowest CTA sets the kernel's time.
  const int items = p.batch * p.num_heads, max_ctas = sms * per_sm;
  const int per_cta = (items + max_ctas - 1) / max_ctas;
  const int ctas = (items + per_cta - 1) / per_cta;
  launch_kernel(kernel, ctas, threads, LaunchOptions{kKdaPersistSmem, true}, stream, p);
}

// mode (experiment): 0 = state loads after the PDL wait, 1 = before, 2 = producer warp, 3 = the
// copy-only probe.
void launch_kda_decode_persistent(const KdaDecodeParams& p, cudaStream_t stream, int mode) {
  if (mode == 0)
    launch_persistent(kda_decode_persistent_kernel<false>, kPersistThreads, p, stream);
  else if (mode == 1)
    launch_persistent(kda_decode_persistent_kernel<true>, kPersistThreads, p, stream);
  else if (mode == 3)
    launch_persistent(kda_decode_persistent_kernel<true, true>, kPersistThreads, p, stream);
  else
    launch_persistent(kda_decode_persistent_ws_kernel, kWsThreads, p, stream);
}

}  // namespace kimi::cuda::kda
