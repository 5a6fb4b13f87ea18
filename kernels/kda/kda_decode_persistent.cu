// Launcher of the persistent KDA decode kernel (kda_decode_persistent.cuh).
#include <cstdlib>

#include "common.h"
#include "kda/kda_decode_persistent.cuh"
#include "kda/kda_decode_persistent2.cuh"  // EXPERIMENT
#include "launch.h"

namespace kimi::cuda::kda {

template <typename Kernel>
static void launch_grid(Kernel kernel, size_t smem, const KdaDecodeParams& p,
                        cudaStream_t stream) {
  CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  int dev = 0, sms = 0, per_sm = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kPersistThreads, smem));
  KIMI_CHECK(per_sm > 0, "persistent KDA decode kernel does not fit a multiprocessor");
  // As many CTAs as fit at once, then fewer so that every CTA gets the same number of items (±1
  // only when the item count has no such divisor): the slowest CTA sets the kernel's time.
  const int items = p.batch * p.num_heads, max_ctas = sms * per_sm;
  const int per_cta = (items + max_ctas - 1) / max_ctas;
  const int ctas = (items + per_cta - 1) / per_cta;
  launch_kernel(kernel, ctas, kPersistThreads, LaunchOptions{smem, true}, stream, p);
}

// EXPERIMENT: KIMI_KDA_DECODE_EXP 0 = main's kernel, 3 = the two-ring kernel refilling at the
// top of an item, 4 = refilling after the item's store (default).
template <bool kFold>
static void launch(const KdaDecodeParams& p, cudaStream_t stream) {
  const char* e = std::getenv("KIMI_KDA_DECODE_EXP");
  const int mode = e ? std::atoi(e) : 4;
  if (mode == 0)
    launch_grid(kda_decode_persistent_kernel<kFold>, kKdaPersistSmem, p, stream);
  else if (mode == 3)
    launch_grid(kda_decode_persistent2_kernel<kFold, false>, kKdaPersist2Smem, p, stream);
  else
    launch_grid(kda_decode_persistent2_kernel<kFold, true>, kKdaPersist2Smem, p, stream);
}

void launch_kda_decode_persistent(const KdaDecodeParams& p, cudaStream_t stream) {
  if (p.fg_low)
    launch<true>(p, stream);
  else
    launch<false>(p, stream);
}

}  // namespace kimi::cuda::kda
