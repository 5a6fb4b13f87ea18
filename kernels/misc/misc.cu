// Launchers of the element-wise kernels: argument checks and grid sizes.
#include <algorithm>

#include "common.h"
#include "launch.h"
#include "misc/misc.cuh"

namespace kimi::cuda {

namespace {
int grid_for(int64_t n) { return int(std::min<int64_t>((n + 255) / 256, 132 * 16)); }
const LaunchOptions kPdl{0, true};  // the decode path's kernels are programmatic dependent launches
}  // namespace

void run_embedding(const EmbeddingParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.num_tokens >= 0 && p.dim > 0 && p.vocab > 0, "embedding T ", p.num_tokens, " dim ",
             p.dim, " vocab ", p.vocab);
  if (p.num_tokens == 0) return;
  KIMI_CHECK(p.ids && p.table && p.x, "embedding: null pointer");
  launch_kernel(misc::embedding_kernel, grid_for(int64_t(p.num_tokens) * p.dim), 256, kPdl, stream, p);
}

namespace {
template <typename OUT>
void silu_mul(const SiluMulParams<OUT>& p, cudaStream_t stream) {
  KIMI_CHECK(p.rows >= 0 && p.dim > 0, "silu_mul rows ", p.rows, " dim ", p.dim);
  if (p.rows == 0) return;
  KIMI_CHECK(p.gate_up && p.out, "silu_mul: null pointer");
  launch_kernel(misc::silu_mul_kernel<OUT>, grid_for(p.rows * p.dim), 256, kPdl, stream, p);
}
}  // namespace

void run_silu_mul(const SiluMulParams<bf16>& p, cudaStream_t stream) { silu_mul(p, stream); }
void run_silu_mul(const SiluMulParams<float>& p, cudaStream_t stream) { silu_mul(p, stream); }

void run_split_bf16(const SplitParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.n >= 0, "split n ", p.n);
  if (p.n == 0) return;
  KIMI_CHECK(p.x && p.hi, "split: null pointer");
  launch_kernel(misc::split_bf16_kernel, grid_for(p.n), 256, kPdl, stream, p);
}

void run_random_fill(const RandomFillParams& p, cudaStream_t stream) {
  KIMI_CHECK(p.n >= 0, "random fill n ", p.n);
  if (p.n == 0) return;
  KIMI_CHECK(p.out, "random fill: null pointer");
  misc::random_fill_kernel<<<grid_for(p.n), 256, 0, stream>>>(p);
  KIMI_CHECK_LAUNCH();
}

}  // namespace kimi::cuda
