// Instantiation of the fused KDA decode step: 32 value columns per CTA, state in regs
// (kda_decode.cuh).
#include "common.h"
#include "kda/kda_decode.cuh"
#include "launch.h"

namespace kimi::cuda::kda {

template <int kCols, bool kSmemState, bool kEarly>
void launch_kda_decode(const KdaDecodeParams& p, cudaStream_t stream);
template <bool kEarly>
static void launch(const KdaDecodeParams& p, cudaStream_t stream) {
  constexpr int kSplit = kKdaD / 32;
  LaunchOptions o;
  o.pdl = true;
  o.cluster = dim3(kSplit, 1, 1);
  launch_kernel(kda_decode_kernel<32, false, kEarly>, dim3(kSplit, p.num_heads, p.batch), 128, o, stream, p);
}
template <>
void launch_kda_decode<32, false, true>(const KdaDecodeParams& p, cudaStream_t stream) {
  launch<true>(p, stream);
}
template <>
void launch_kda_decode<32, false, false>(const KdaDecodeParams& p, cudaStream_t stream) {
  launch<false>(p, stream);
}

}  // namespace kimi::cuda::kda
