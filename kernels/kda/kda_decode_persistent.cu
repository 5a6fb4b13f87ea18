// Launchers of the persistent KDA decode kernel (kda_decode_persistent.cuh): 2 or 3 stages,
// loaded by cp.async or TMA bulk copies, written from registers or by a TMA bulk store.
#include "common.h"
#include "kda/kda_decode_persistent.cuh"

namespace kimi::cuda::kda {

template <int kStages, int kTma>
static void launch(const KdaDecodeParams& p, cudaStream_t stream) {
  auto kernel = kda_decode_persistent_kernel<kStages, kTma>;
  constexpr size_t smem = kda_persist_smem<kStages>();
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  int dev = 0, sms = 0, per_sm = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kPersistThreads, smem));
  KIMI_CHECK(per_sm > 0, "persistent KDA decode kernel does not fit a multiprocessor");
  // As many CTAs as fit at once, then fewer so that every CTA gets the same number of items (±1
  // only when the item count has no such divisor): the slowest CTA sets the kernel's time.
  const int items = p.batch * p.num_heads, max_ctas = sms * per_sm;
  const int per_cta = (items + max_ctas - 1) / max_ctas;
  const int ctas = (items + per_cta - 1) / per_cta;
  kernel<<<ctas, kPersistThreads, smem, stream>>>(p);
}

void launch_kda_decode_persistent(const KdaDecodeParams& p, int stages, int tma,
                                  cudaStream_t stream) {
  KIMI_CHECK(tma >= 0 && tma <= 2 && (stages == 2 || stages == 3), "persistent KDA decode: tma ",
             tma, ", stages ", stages);
  if (tma == 0)
    stages == 2 ? launch<2, 0>(p, stream) : launch<3, 0>(p, stream);
  else if (tma == 1)
    stages == 2 ? launch<2, 1>(p, stream) : launch<3, 1>(p, stream);
  else
    stages == 2 ? launch<2, 2>(p, stream) : launch<3, 2>(p, stream);
}

}  // namespace kimi::cuda::kda
