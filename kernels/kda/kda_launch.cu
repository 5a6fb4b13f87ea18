// Host launchers of the KDA family: argument checks and the choice of template instantiation.
#include <cstdlib>

#include "common.h"
#include "kda/kda.h"
#include "kda/kda_common.cuh"

namespace kimi::cuda {

namespace kda {
template <int kCols, bool kSmemState, bool kEarly>
void launch_kda_decode(const KdaDecodeParams& p, cudaStream_t stream);
void launch_kda_decode_persistent(const KdaDecodeParams& p, cudaStream_t stream, int mode);
}  // namespace kda

// Measured on an H200 (docs/perf-log.md), % of the copy rate, graph replay. The persistent kernel
// wins at B·H = 256 .. 2048 (B = 8: 59 vs 54, 32: 77 vs 72, 64: 80 vs 76) and loses at 8192
// (B = 256: 76 vs 79 for the cluster kernel with S staged in shared memory, which pays from 8192 on
// and loses below: B = 64, 72 vs 76). Between 2048 and 8192 nothing was measured: the boundary
// is put halfway.
constexpr int kKdaDecodePersistentFromRows = 256;
constexpr int kKdaDecodePersistentToRows = 4096;
constexpr int kKdaDecodeSmemFromRows = 8192;

// Experiment (A/B in one build): KIMI_KDA_DECODE_EXP=0 state loads after the PDL wait (the old
// kernels), 1 before it, 2 before it and the persistent kernel's producer-warp variant.
static int decode_exp() {
  static const int v = [] {
    const char* e = std::getenv("KIMI_KDA_DECODE_EXP");
    return e ? std::atoi(e) : 1;
  }();
  return v;
}

static bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

void run_kda_decode(const KdaDecodeParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.batch >= 0 && p.num_heads > 0 && p.num_heads <= 65535, "batch ", p.batch, ", heads ",
             p.num_heads);
  if (p.batch == 0) return;
  KIMI_CHECK(p.batch <= 65535, "decode batch ", p.batch, " exceeds the grid's z limit");
  KIMI_CHECK(p.slots && p.qkv && p.f && p.b && p.z && p.conv_state && p.state && p.y,
             "null tensor pointer");
  KIMI_CHECK(p.w.conv_weight && p.w.A_log && p.w.dt_bias && p.w.o_norm, "null weight pointer");
  KIMI_CHECK(aligned16(p.state) && aligned16(p.w.conv_weight),
             "state/conv weight not 16-byte aligned");
  // The persistent kernel copies each head's rows by TMA bulk copies: they must be 16-byte
  // aligned (the row strides are multiples of 16 bytes).
  const bool persist_ok =
      aligned16(p.qkv) && aligned16(p.f) && aligned16(p.z) && aligned16(p.conv_state);
  KIMI_CHECK(p.persistent >= -1 && p.persistent <= 1, "persistent must be -1, 0 or 1, got ",
             p.persistent);
  KIMI_CHECK(p.persistent <= 0 || persist_ok,
             "persistent decode needs 16-byte aligned qkv, f, z and conv state");
  const int rows = p.batch * p.num_heads;
  if (p.persistent > 0 ||
      (p.persistent < 0 && persist_ok && p.cols_per_cta == 0 && p.smem_state < 0 &&
       rows >= kKdaDecodePersistentFromRows && rows < kKdaDecodePersistentToRows)) {
    kda::launch_kda_decode_persistent(p, stream, decode_exp());
    KIMI_CHECK_LAUNCH();
    return;
  }
  // Small batches: 8 CTAs per head keep more multiprocessors busy; large: 4, less redundant prep.
  KIMI_CHECK(p.cols_per_cta == 0 || p.cols_per_cta == 16 || p.cols_per_cta == 32,
             "cols_per_cta must be 0, 16 or 32, got ", p.cols_per_cta);
  const int cols = p.cols_per_cta ? p.cols_per_cta : (rows < 256 && decode_exp() == 0 ? 16 : 32);
  const bool smem =
      p.smem_state < 0 ? cols == 32 && rows >= kKdaDecodeSmemFromRows : p.smem_state != 0;
  KIMI_CHECK(!smem || cols == 32, "the shared-memory state variant has 32 columns per CTA");
  const bool early = decode_exp() != 0;
  if (cols == 16)
    early ? kda::launch_kda_decode<16, false, true>(p, stream)
          : kda::launch_kda_decode<16, false, false>(p, stream);
  else if (smem)
    early ? kda::launch_kda_decode<32, true, true>(p, stream)
          : kda::launch_kda_decode<32, true, false>(p, stream);
  else
    early ? kda::launch_kda_decode<32, false, true>(p, stream)
          : kda::launch_kda_decode<32, false, false>(p, stream);
  KIMI_CHECK_LAUNCH();
}

}  // namespace kimi::cuda
