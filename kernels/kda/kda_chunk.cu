// Plan and launcher of the chunked KDA prefill (kda_chunk.cuh).
#include "common.h"
#include "kda/kda_chunk.cuh"

namespace kimi::cuda {

KdaChunkPlan make_kda_chunk_plan(const int* cu, int num_seqs) {
  KIMI_CHECK(num_seqs >= 0 && (num_seqs == 0 || cu), "bad cu_seqlens");
  KdaChunkPlan plan;
  plan.seq_first_chunk.assign(num_seqs + 1, 0);
  if (num_seqs > 0) KIMI_CHECK(cu[0] == 0, "cu_seqlens[0] must be 0, got ", cu[0]);
  for (int s = 0; s < num_seqs; ++s) {
    KIMI_CHECK(cu[s + 1] >= cu[s], "cu_seqlens not non-decreasing at ", s);
    plan.seq_first_chunk[s] = plan.num_chunks;
    for (int t = cu[s]; t < cu[s + 1]; t += kda::kChunk) {
      plan.chunk_seq.push_back(s);
      plan.chunk_start.push_back(t);
      ++plan.num_chunks;
    }
  }
  plan.seq_first_chunk[num_seqs] = plan.num_chunks;
  return plan;
}

size_t kda_chunked_workspace_bytes(int num_chunks, int num_heads) {
  return size_t(num_chunks) * num_heads * kda::ChunkRec::kBytes;
}

void run_kda_chunked(const KdaScanParams& p, const KdaChunkedArgs& a, cudaStream_t stream) {
  KIMI_CHECK(p.num_seqs >= 0 && p.num_heads > 0 && p.num_heads <= 65535, "seqs ", p.num_seqs,
             ", heads ", p.num_heads);
  if (p.num_seqs == 0) return;
  KIMI_CHECK(p.cu_seqlens && p.slots && p.q && p.k && p.v && p.f && p.b && p.w.A_log &&
                 p.w.dt_bias && p.state && p.o,
             "null pointer");
  KIMI_CHECK(p.num_seqs <= 65535, "too many sequences for the grid: ", p.num_seqs);
  KIMI_CHECK(a.num_chunks >= 0 && a.chunk_seq && a.chunk_start && a.seq_first_chunk,
             "chunk plan not uploaded");
  const size_t need = kda_chunked_workspace_bytes(a.num_chunks, p.num_heads);
  KIMI_CHECK(a.workspace && a.workspace_bytes >= need, "workspace of ", a.workspace_bytes,
             " bytes, need ", need);
  KIMI_CHECK((reinterpret_cast<uintptr_t>(a.workspace) & 15) == 0, "workspace not 16-byte aligned");
  auto* ws = static_cast<unsigned char*>(a.workspace);
  if (a.num_chunks > 0 && (a.stages & 1)) {
    CUDA_CHECK(cudaFuncSetAttribute(kda::kda_chunk_intra_kernel,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    int(kda::kIntraSmem)));
    kda::kda_chunk_intra_kernel<<<dim3(a.num_chunks, p.num_heads), kda::kIntraThreads,
                                  kda::kIntraSmem, stream>>>(p, a.chunk_seq, a.chunk_start, ws);
    KIMI_CHECK_LAUNCH();
  }
  if (!(a.stages & 2)) return;
  CUDA_CHECK(cudaFuncSetAttribute(kda::kda_chunk_inter_kernel,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(kda::kInterSmem)));
  kda::kda_chunk_inter_kernel<<<dim3(kKdaD / kda::kInterCols, p.num_heads, p.num_seqs),
                                kda::kInterThreads, kda::kInterSmem, stream>>>(p, a.seq_first_chunk,
                                                                               a.chunk_start, ws);
  KIMI_CHECK_LAUNCH();
}

}  // namespace kimi::cuda
