// Launcher of the persistent KDA decode kernel (kda_decode_persistent.cuh).
#include "common.h"
#include "kda/kda_decode_persistent.cuh"
#include "launch.h"

namespace kimi::cuda::kda {

template <bool kFold>
static void launch(const KdaDecodeParams& p, cudaStream_t stream) {
  CUDA_CHECK(cudaFuncSetAttribute(kda_decode_persistent_kernel<kFold>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(kKdaPersistSmem)));
  int dev = 0, sms = 0, per_sm = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, kda_decode_persistent_kernel<kFold>, kPersistThreads, kKdaPersistSmem));
  KIMI_CHECK(per_sm > 0, "persistent KDA decode kernel does not fit a multiprocessor");
  // As many CTAs as fit at once, then fewer so that every CTA gets the same number of items (±1
  // only when the item count has no such divisor): the slowest CTA sets the kernel's time.
  const int items = p.batch * p.num_heads, max_ctas = sms * per_sm;
  const int per_cta = (items + max_ctas - 1) / max_ctas;
  const int ctas = (items + per_cta - 1) / per_cta;
  launch_kernel(kda_decode_persistent_kernel<kFold>, ctas, kPersistThreads,
                LaunchOptions{kKdaPersistSmem, true}, stream, p);
}

void launch_kda_decode_persistent(const KdaDecodeParams& p, cudaStream_t stream) {
  if (p.fg_low)
    launch<true>(p, stream);
  else
    launch<false>(p, stream);
}

}  // namespace kimi::cuda::kda
