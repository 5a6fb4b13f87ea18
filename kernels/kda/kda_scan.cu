// Launcher of the token-by-token KDA scan (kda_scan.cuh), 32 value columns per CTA.
#include "common.h"
#include "kda/kda_scan.cuh"

namespace kimi::cuda {

namespace {

template <typename T>
void scan_recurrent(const KdaScanParamsT<T>& p, cudaStream_t stream) {
  KIMI_CHECK(p.num_seqs >= 0 && p.num_heads > 0 && p.num_heads <= 65535, "seqs ", p.num_seqs,
             ", heads ", p.num_heads);
  if (p.num_seqs == 0) return;
  KIMI_CHECK(p.num_seqs <= 65535, "too many sequences for the grid: ", p.num_seqs);
  KIMI_CHECK(p.cu_seqlens && p.slots && p.q && p.k && p.v && p.f && p.b && p.w.A_log &&
                 p.w.dt_bias && p.state && p.o,
             "null pointer");
  constexpr int kCols = 32;
  kda::kda_scan_recurrent_kernel<kCols, T>
      <<<dim3(kKdaD / kCols, p.num_heads, p.num_seqs), 128, 0, stream>>>(p);
  KIMI_CHECK_LAUNCH();
}

}  // namespace

void run_kda_scan_recurrent(const KdaScanParamsT<bf16>& p, cudaStream_t stream) {
  scan_recurrent(p, stream);
}
void run_kda_scan_recurrent(const KdaScanParamsT<float>& p, cudaStream_t stream) {
  scan_recurrent(p, stream);
}

}  // namespace kimi::cuda
