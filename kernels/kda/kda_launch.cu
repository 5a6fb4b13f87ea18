// Host launchers of the KDA family: argument checks and the choice of template instantiation.
#include "common.h"
#include "kda/kda.h"
#include "kda/kda_common.cuh"

namespace kimi::cuda {

namespace kda {
template <int kCols, bool kSmemState, bool kFold>
void launch_kda_decode(const KdaDecodeParams& p, cudaStream_t stream);
void launch_kda_decode_persistent(const KdaDecodeParams& p, cudaStream_t stream);
}  // namespace kda

// Measured on an H200 at H = 32 (docs/perf-log.md sessions 4 and 8), % of the copy rate, graph
// replay. The persistent kernel wins at B·H = 256 .. 2048 (B = 8: 66 vs 59, 32: 77 vs 76, 64: 80
// vs 79) and loses at 8192 (B = 256: 75 vs 82 for the cluster kernel with S staged in shared
// memory, which pays from 8192 on and loses below: B = 64, 78 vs 79). Between 2048 and 8192
// nothing was measured: the boundary is put halfway. At B·H = 128 (B = 4) the persistent kernel
// was 3% faster (7.26 vs 7.45 us), at 32 (B = 1) 49% slower; nothing between: it stays at 256.
// Session 14's two-ring persistent kernel: B = 8 65%, 32 80%, 64 81%, 256 79% (cluster kernel, S
// in shared memory: 56, 74, 78, 82%): the boundaries stay.
constexpr int kKdaDecodePersistentFromRows = 256;
constexpr int kKdaDecodePersistentToRows = 4096;
constexpr int kKdaDecodeSmemFromRows = 8192;
// Folded up-projections (session 9, H200, H = 32, graph replay, us per layer of the separate
// GEMM + decode pair against the folded decode): B = 1 7.30 -> 5.01 and B = 2 8.31 -> 6.96
// (cluster kernel, S in registers); B = 4 10.22 -> 12.09 there (its 126 registers allow 4 CTAs per
// SM: the grid no longer fits at once) but 10.17 -> 9.62 with S in shared memory, hence that
// instantiation above kKdaDecodeFoldRegsMaxRows; persistent kernel B = 8 14.48 -> 14.95 (loses),
// B = 16 25.20 -> 24.81, 32 46.8 -> 45.5, 64 84.6 -> 84.5 (wins, within noise at 64); the cluster
// kernels at B·H >= 512 lose 4-120 us (their CTAs re-read a head's weights per sequence). So
// folded where B·H < 256 and 512 <= B·H < 4096. Session 14's two-ring persistent kernel: B = 8
// 14.3 -> 15.8 (loses), 32 47.0 -> 44.0, 64 87.6 -> 81.9 (win).
constexpr int kKdaDecodeFoldRegsMaxRows = 64;
constexpr int kKdaDecodeFoldPairFromRows = 256;
constexpr int kKdaDecodeFoldFromRows = 512;

static bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

void run_kda_decode(const KdaDecodeParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.batch >= 0 && p.num_heads > 0 && p.num_heads <= 65535, "batch ", p.batch, ", heads ",
             p.num_heads);
  if (p.batch == 0) return;
  KIMI_CHECK(p.batch <= 65535, "decode batch ", p.batch, " exceeds the grid's z limit");
  KIMI_CHECK(p.slots && p.qkv && p.b && p.conv_state && p.state && p.y, "null tensor pointer");
  const bool fold = p.fg_low != nullptr;
  KIMI_CHECK(fold ? p.fg_b && !p.f && !p.z : p.f && p.z && !p.fg_b,
             "decode needs either f and z or (folded) fg_low and fg_b");
  KIMI_CHECK(!fold || (aligned16(p.fg_low) && aligned16(p.fg_b)),
             "folded decode needs 16-byte aligned fg_low and fg_b");
  KIMI_CHECK(p.w.conv_weight && p.w.A_log && p.w.dt_bias && p.w.o_norm, "null weight pointer");
  KIMI_CHECK(aligned16(p.state) && aligned16(p.w.conv_weight),
             "state/conv weight not 16-byte aligned");
  // The persistent kernel copies each head's rows by TMA bulk copies: they must be 16-byte
  // aligned (the row strides are multiples of 16 bytes).
  const bool persist_ok = aligned16(p.qkv) && aligned16(p.conv_state) &&
                          (fold || (aligned16(p.f) && aligned16(p.z)));
  KIMI_CHECK(p.persistent >= -1 && p.persistent <= 1, "persistent must be -1, 0 or 1, got ",
             p.persistent);
  KIMI_CHECK(p.persistent <= 0 || persist_ok,
             "persistent decode needs 16-byte aligned qkv, f, z (or fg_low) and conv state");
  const int rows = p.batch * p.num_heads;
  if (p.persistent > 0 ||
      (p.persistent < 0 && persist_ok && p.smem_state < 0 && rows >= kKdaDecodePersistentFromRows &&
       rows < kKdaDecodePersistentToRows)) {
    kda::launch_kda_decode_persistent(p, stream);
    KIMI_CHECK_LAUNCH();
    return;
  }
  const bool smem = p.smem_state >= 0 ? p.smem_state != 0
                    : fold              ? rows > kKdaDecodeFoldRegsMaxRows
                                        : rows >= kKdaDecodeSmemFromRows;
  if (smem && fold)
    kda::launch_kda_decode<32, true, true>(p, stream);
  else if (smem)
    kda::launch_kda_decode<32, true, false>(p, stream);
  else if (fold)
    kda::launch_kda_decode<32, false, true>(p, stream);
  else
    kda::launch_kda_decode<32, false, false>(p, stream);
  KIMI_CHECK_LAUNCH();
}

bool kda_decode_folds_up(int batch, int num_heads) {
  const int64_t rows = int64_t(batch) * num_heads;
  return rows < kKdaDecodeFoldPairFromRows ||
         (rows >= kKdaDecodeFoldFromRows && rows < kKdaDecodePersistentToRows);
}

}  // namespace kimi::cuda
