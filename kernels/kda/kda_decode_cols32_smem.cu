// Instantiation of the fused KDA decode step: 32 value columns per CTA, state in smem
// (kda_decode.cuh).
#include "common.h"
#include "kda/kda_decode.cuh"
#include "launch.h"

namespace kimi::cuda::kda {

template <>
void launch_kda_decode<32, true, false>(const KdaDecodeParams& p, cudaStream_t stream) {
  constexpr int kSplit = kKdaD / 32;
  LaunchOptions o;
  o.pdl = true;
  o.cluster = dim3(kSplit, 1, 1);
  launch_kernel(kda_decode_kernel<32, true, false>, dim3(kSplit, p.num_heads, p.batch), 128, o,
                stream, p);
}

}  // namespace kimi::cuda::kda
