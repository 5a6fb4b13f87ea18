// Expanded MLA prefill: host plan and launchers (contract in mla.h, kernels in mla_prefill.cuh).
#include <algorithm>
#include <atomic>

#include "common.h"
#include "gemm/gemm.h"
#include "mla/mla_prefill.cuh"
#include "tensor_map.h"

namespace kimi::cuda {

namespace {
size_t align256(size_t b) {
  return (b + 255) & ~size_t(255);
}
}  // namespace

MlaPrefillPlan make_mla_prefill_plan(int num_seqs, const int* cu, const int* ctx,
                                     const uint8_t* expanded, int piece_rows) {
  KIMI_CHECK(num_seqs >= 0 && piece_rows >= 8 && piece_rows % 8 == 0, "mla prefill plan S ",
             num_seqs, " piece ", piece_rows);
  MlaPrefillPlan plan;
  MlaPrefillRound cur;
  auto close_round = [&]() {
    if (cur.rows > 0) {
      cur.seg_end = int(plan.segs.size());
      cur.item_end = int(plan.items.size());
      // Longest items first: the short ones fill the tail of the launch.
      std::stable_sort(plan.items.begin() + cur.item_begin, plan.items.end(),
                       [](const MlaPrefillItem& x, const MlaPrefillItem& y) {
                         return x.kv_end - x.kv_begin > y.kv_end - y.kv_begin;
                       });
      plan.rounds.push_back(cur);
    }
    cur = MlaPrefillRound{};
    cur.seg_begin = cur.seg_end = int(plan.segs.size());
    cur.item_begin = cur.item_end = int(plan.items.size());
  };
  close_round();
  for (int s = 0; s < num_seqs; ++s) {
    if (expanded && !expanded[s]) continue;
    const int n = cu[s + 1] - cu[s], L = ctx[s], q_pos0 = L - n;
    KIMI_CHECK(n >= 0 && L >= n, "mla prefill plan: sequence ", s, " has ", n,
               " new tokens, context ", L);
    if (n == 0) continue;
    for (int pos = 0; pos < L;) {
      int ws = (cur.rows + 7) & ~7;  // the Vᵀ tiles' TMA boxes start on 16-byte boundaries
      if (ws >= piece_rows) {
        close_round();
        ws = 0;
      }
      const int len = std::min(L - pos, piece_rows - ws);
      plan.segs.push_back({s, pos, pos + len, ws});
      for (int i0 = 0; i0 < n; i0 += kMlaPrefillRows) {
        const int nq = std::min(kMlaPrefillRows, n - i0), p0 = q_pos0 + i0;
        const int last_visible = p0 + nq - 1;
        if (pos > last_visible) continue;  // its last segment was an earlier one
        const int hi = std::min(pos + len, last_visible + 1);
        const int flags = (pos == 0 ? kMlaFirst : 0) | (pos + len > last_visible ? kMlaLast : 0);
        plan.items.push_back({cu[s] + i0, nq, p0, pos, hi, ws, flags});
        if (!(flags & kMlaLast)) plan.uses_state = true;
      }
      cur.rows = ws + len;
      pos += len;
    }
  }
  close_round();
  return plan;
}

namespace {
// Workspace carve: lat [piece, 576] | k_nope [piece, H, 128] | Vᵀ [H, 128, piece].
struct PfWorkspace {
  bf16 *lat, *knope, *vt;
  size_t bytes;
};
PfWorkspace carve(void* base, int piece_rows, int num_heads) {
  char* b = static_cast<char*>(base);
  const size_t lat = align256(size_t(piece_rows) * kMlaRow * sizeof(bf16));
  const size_t kn = align256(size_t(piece_rows) * num_heads * 128 * sizeof(bf16));
  const size_t vt = size_t(num_heads) * 128 * piece_rows * sizeof(bf16);
  return {reinterpret_cast<bf16*>(b), reinterpret_cast<bf16*>(b + lat),
          reinterpret_cast<bf16*>(b + lat + kn), lat + kn + vt};
}

}  // namespace

size_t mla_prefill_workspace_bytes(int piece_rows, int num_heads) {
  return carve(nullptr, piece_rows, num_heads).bytes;
}

void mla_prefill_prepare() {
  static std::atomic<uint64_t> done{0};  // per device, as mla_prepare
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = uint64_t(1) << (dev & 63);
  if (done.load() & bit) return;
  CUDA_CHECK(cudaFuncSetAttribute(mla::mla_prefill_kernel,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, int(mla::kPfSmem)));
  done.fetch_or(bit);
}

void run_mla_prefill(const MlaPrefillParams& p, const MlaPrefillPlan& plan, Gemm& gemm,
                     cudaStream_t stream) {
  if (plan.rounds.empty()) return;
  mla_prefill_prepare();
  KIMI_CHECK(p.num_heads > 0 && p.piece_rows >= 8 && p.piece_rows % 8 == 0, "mla prefill H ",
             p.num_heads, " piece ", p.piece_rows);
  KIMI_CHECK(p.q && (p.cache != nullptr) != (p.cache8 != nullptr) && p.block_tables && p.kv_b &&
                 p.segs && p.items && p.workspace && p.out && (p.state || !plan.uses_state),
             "mla prefill: null pointer");
  KIMI_CHECK(p.scale > 0.f, "mla prefill scale ", p.scale);
  const PfWorkspace w = carve(p.workspace, p.piece_rows, p.num_heads);
  const int H = p.num_heads;
  int q_rows = 0;  // rows of q the items read (the Q tensor map's extent)
  for (const MlaPrefillItem& it : plan.items) {
    q_rows = std::max(q_rows, it.q_begin + it.nq);
    // A Vᵀ box at an odd key offset would fault (TMA's innermost coordinate: 16-byte steps).
    KIMI_CHECK(it.ws_row % 8 == 0, "mla prefill item at workspace row ", it.ws_row);
  }
  mla::PfArgs a;
  a.p = p;
  a.q = tensor_map_2d(p.q, uint64_t(H) * kMlaQk, std::max(q_rows, 1), uint64_t(H) * kMlaQk * 2,
                      128);
  for (const MlaPrefillRound& r : plan.rounds) {
    KIMI_CHECK(r.rows >= 1 && r.rows <= p.piece_rows, "mla prefill round of ", r.rows,
               " rows, workspace ", p.piece_rows);
    mla::mla_gather_kernel<<<ceil_div(r.rows, mla::kGatherRows), 256, 0, stream>>>(
        p.cache, p.cache8, p.block_tables, p.max_blocks_per_seq, p.segs + r.seg_begin,
        r.seg_end - r.seg_begin, r.rows, w.lat);
    KIMI_CHECK_LAUNCH();
    {  // k_nope[j, h] = W_UK(h) ĉ_j: per head [rows, 512] · [128, 512]ᵀ, the latents shared
      GemmArgs ga;
      ga.M = r.rows;
      ga.N = 128;
      ga.K = kMlaLat;
      ga.A = w.lat;
      ga.lda = kMlaRow;
      ga.stride_a = 0;
      ga.B = p.kv_b;
      ga.ldb = kMlaLat;
      ga.stride_b = int64_t(2 * 128) * kMlaLat;
      ga.C = w.knope;
      ga.ldc = H * 128;
      ga.stride_c = 128;
      ga.batch = H;
      gemm.run(ga, stream);
    }
    {  // Vᵀ[h, :, j] = W_UV(h) ĉ_j: per head [128, 512] · [rows, 512]ᵀ
      GemmArgs ga;
      ga.M = 128;
      ga.N = r.rows;
      ga.K = kMlaLat;
      ga.A = p.kv_b + size_t(128) * kMlaLat;
      ga.lda = kMlaLat;
      ga.stride_a = int64_t(2 * 128) * kMlaLat;
      ga.B = w.lat;
      ga.ldb = kMlaRow;
      ga.stride_b = 0;
      ga.C = w.vt;
      ga.ldc = p.piece_rows;
      ga.stride_c = int64_t(128) * p.piece_rows;
      ga.batch = H;
      gemm.run(ga, stream);
    }
    if (r.item_end == r.item_begin) continue;
    // Extents of the round: keys past its rows read as zeros (Vᵀ must be finite there).
    a.knope = tensor_map_2d(w.knope, uint64_t(H) * 128, r.rows, uint64_t(H) * 128 * 2, 128);
    a.kpe = tensor_map_2d(w.lat, kMlaRow, r.rows, kMlaRow * 2, 128);
    a.vt = tensor_map_2d(w.vt, r.rows, uint64_t(H) * 128, uint64_t(p.piece_rows) * 2, 128);
    a.items = p.items + r.item_begin;
    const dim3 grid(r.item_end - r.item_begin, H);
    mla::mla_prefill_kernel<<<grid, mla::kPfThreads, mla::kPfSmem, stream>>>(a);
    KIMI_CHECK_LAUNCH();
  }
}

}  // namespace kimi::cuda
