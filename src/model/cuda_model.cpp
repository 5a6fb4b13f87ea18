// CudaModel: start-up (device and memory checks, one allocation each for weights, caches and
// activations) and the forward, a straight-line mirror of CpuModel::forward (cpu_model.cpp):
//   x = embed(tokens)                                     fp32 residual stream [T, hidden]
//   per layer: a = RMSNorm(x); x += Mixer(a)  (KDA or MLA; o_proj accumulates into x)
//              a = RMSNorm(x); x += FFN(a)    (dense MLP or MoE + shared expert)
//   logits = lm_head · RMSNorm(x[rows])                   fp32, in chunks of logit_rows
#if KIMI_HAVE_CUDA

#include "model/cuda_model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include <spdlog/spdlog.h>

#include "core/check.h"
#include "kda/kda.h"
#include "launch.h"
#include "mla/mla.h"
#include "mla/mla_layer.h"
#include "model/cuda_model_impl.h"
#include "moe/moe.h"
#include "norm/norm.h"

namespace kimi {

namespace {

constexpr size_t kGemmWorkspace = size_t(32) << 20;
constexpr size_t kReserve = size_t(512) << 20;  // CUDA context, cuBLAS, metadata, fragmentation
// Context positions expanded per round of the MLA prefill: 16k rows of latents and per-head K/V
// (H = 32: 287 MB) keep the expansion GEMM and each attention launch large, whatever the context.
constexpr int kMlaPrefillPiece = 16384;

double gib(size_t b) { return double(b) / double(size_t(1) << 30); }
std::string gib_str(size_t b) {
  char s[32];
  std::snprintf(s, sizeof s, "%.2f GiB", gib(b));
  return s;
}

void check_device(cudaDeviceProp* prop, int device) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0)
    fail("the cuda backend needs an NVIDIA GPU: ",
         e != cudaSuccess ? str("cudaGetDeviceCount failed: ", cudaGetErrorString(e))
                          : std::string("no CUDA device is visible"));
  if (device >= n)
    fail("GPU ", device, " is needed but only ", n, " CUDA device", n == 1 ? " is" : "s are",
         " visible (tensor parallelism takes GPUs 0..N-1; check CUDA_VISIBLE_DEVICES)");
  CUDA_CHECK(cudaGetDeviceProperties(prop, device));
  if (prop->major != 9 || prop->minor != 0)
    fail("GPU ", device, " is ", prop->name, " (sm_", prop->major, prop->minor,
         "); this build's kernels cover sm_90a only (Hopper: H100/H200; KIMI_CUDA_ARCHITECTURES=90a)");
}

void check_config(const ModelConfig& c) {
  KIMI_CHECK(c.hidden_size % 8 == 0, "cuda backend: hidden_size ", c.hidden_size,
             " must be a multiple of 8");
  if (c.num_experts > 0) {
    if (c.num_experts > 1024) fail("cuda backend: num_experts ", c.num_experts, " exceeds 1024");
    if (c.num_experts_per_token > 32)
      fail("cuda backend: num_experts_per_token ", c.num_experts_per_token, " exceeds 32");
    if (c.moe_intermediate_size % 8 != 0)
      fail("cuda backend: moe_intermediate_size ", c.moe_intermediate_size,
           " must be a multiple of 8");
  }
}

// One step's KDA activations: T tokens of H heads (f and z adjacent: one batched GEMM writes both).
template <typename E>
void carve_kda(Carver& c, KdaActs<E>& a, size_t T, size_t H) {
  const size_t HD = H * kKdaHeadDim;
  a.qkv = c.take<E>(T * 3 * HD);
  a.low = c.take<E>(T * 2 * kKdaHeadDim);
  a.bb = c.take<E>(T * H);
  a.f = c.take<E>(2 * T * HD);
  a.z = a.f ? a.f + T * HD : nullptr;
  for (E** p : {&a.q, &a.k, &a.v, &a.o, &a.y}) *p = c.take<E>(T * HD);
}

}  // namespace

void CudaModel::Impl::drop_graphs() {
  for (auto& [key, exec] : graphs) cudaGraphExecDestroy(exec);
  graphs.clear();
}

CudaModel::Impl::~Impl() {
  drop_graphs();
  for (auto e : prof_ev) cudaEventDestroy(e);
  for (auto e : prof_ar_ev) cudaEventDestroy(e);
  if (meta_host) cudaFreeHost(meta_host);
  if (draw_host) cudaFreeHost(draw_host);
  gemm.reset();
  if (stream) cudaStreamDestroy(stream);
}

size_t CudaModel::Impl::layout_arena(Carver& c) {
  const int T = Tm, hd = cfg.hidden_size;
  act.x = c.take<float>(size_t(T) * hd);
  if (!high) act.a = c.take<bf16>(size_t(T) * hd);
  // High precision: every block input stays fp32 (hf) and each split GEMM input passes through
  // the hi/lo planes, sized for the widest (hidden, H·D, 2·D, the dense intermediate).
  size_t max_k = size_t(hd);
  if (cfg.num_kda_layers() > 0) {
    const size_t HD = size_t(cfg.kda_num_heads) * kKdaHeadDim;
    max_k = std::max(max_k, HD);
    if (high) carve_kda(c, act.kda32, T, cfg.kda_num_heads);
    else carve_kda(c, act.kda, T, cfg.kda_num_heads);
    // High precision runs the recurrent scan only: no chunked workspace.
    act.kda_ws_bytes = high ? 0 : cuda::kda_chunked_workspace_bytes(kda_chunk_cap, cfg.kda_num_heads);
    act.kda_ws = c.take<uint8_t>(act.kda_ws_bytes);
  }
  if (cfg.num_mla_layers() > 0) {
    const size_t Hm = cfg.num_attention_heads;
    act.mq = c.take<bf16>(T * Hm * kMlaQkDim);
    // q in fp32: high precision's rounding input, else the fused small-decode chain's
    // (mla_layer.h; steps of at most kMlaLayerMaxTokens tokens).
    act.mq32 = c.take<float>((high ? T : std::min<size_t>(T, cuda::kMlaLayerMaxTokens)) * Hm *
                             kMlaQkDim);
    act.latent = c.take<float>(size_t(T) * kMlaCacheDim);
    act.q_abs = c.take<bf16>(T * Hm * kMlaLatentDim);
    act.u = c.take<bf16>(T * Hm * kMlaLatentDim);
    act.attn = c.take<bf16>(T * Hm * kMlaVDim);
    act.partials = c.take<float>(size_t(max_partials) * Hm * cuda::kMlaPartialStride);
    act.mla_ws = c.take<uint8_t>(cuda::mla_prefill_workspace_bytes(mla_piece, int(Hm)));
    // The expanded prefill runs after the absorbed path's last read of u (the W_UV GEMM).
    static_assert(cuda::kMlaStateStride * sizeof(float) <= kMlaLatentDim * sizeof(bf16),
                  "the expanded prefill's state fits in u");
    act.mla_state = reinterpret_cast<float*>(act.u);
  }
  int inter = 0;
  for (int l = 0; l < cfg.num_hidden_layers; ++l)
    inter = std::max(inter, cfg.is_moe(l) ? shared_expert_inter(full_cfg, tp.world)
                                          : cfg.intermediate_size);
  act.gu = c.take<float>(size_t(T) * 2 * inter);
  if (high) act.act32 = c.take<float>(size_t(T) * inter);
  else act.act = c.take<bf16>(size_t(T) * inter);
  max_k = std::max(max_k, size_t(inter));
  if (cfg.num_experts > 0 || high) act.hf = c.take<float>(size_t(T) * hd);
  if (high) act.planes = c.take<bf16>(2 * size_t(T) * max_k);
  if (cfg.num_experts > 0) {
    // Room for the shared expert as one more expert of each token (decode steps).
    const int E = cfg.num_experts + 1, K = cfg.num_experts_per_token + 1;
    act.router_logits = c.take<float>(size_t(T) * E);
    act.route_ticket = c.take<int>(1);
    act.moe_fused_scratch = c.take<float>(
        cuda::moe_decode_fused_scratch_floats(cfg.num_experts_per_token, int(hd), cfg.moe_intermediate_size));
    act.moe_fused_barrier = c.take<unsigned>(2);
    act.route_w = c.take<float>(size_t(T) * K);
    act.route_ids = c.take<int>(size_t(T) * K);
    act.perm_ws = c.take<int>(cuda::moe_permute_workspace_ints(E, int64_t(T) * K));
    act.moe_act = c.take<bf16>(size_t(T) * K * cfg.moe_intermediate_size);
    if (high) act.moe_act_lo = c.take<bf16>(size_t(T) * K * cfg.moe_intermediate_size);
    act.moe_y = c.take<float>(size_t(T) * K * hd);
  }
  act.final_x = c.take<bf16>(size_t(logit_rows) * hd);
  act.logits = c.take<float>(size_t(logit_rows) * cfg.vocab_size);
  return c.used;
}

CudaModel::Impl::Sizes CudaModel::Impl::plan_sizes() {
  Sizes sz;
  Carver wc;
  sz.weights = layout_weights(wc);
  const size_t C = size_t(3) * cfg.kda_num_heads * kKdaHeadDim;
  conv_per_slot = C * (kKdaConvSize - 1);
  state_per_slot = size_t(cfg.kda_num_heads) * kKdaHeadDim * kKdaHeadDim;
  fp8_cache = opts.kv_cache_dtype == KvCacheDtype::kFp8;
  mla_block_bytes = size_t(kBlockSize) * cuda::mla_cache_row_bytes(fp8_cache);
  high = opts.precision == Precision::kHigh;
  conv_elem = high ? 4 : 2;  // the conv state holds the projections' precision
  sz.slot = size_t(cfg.num_kda_layers()) * (conv_per_slot * conv_elem + state_per_slot * 4);
  sz.block = size_t(cfg.num_mla_layers()) * mla_block_bytes;
  // kimi-bench counts by cache_entry_bytes: it must describe this layout.
  static_assert(kMlaFp8RowBytes == cuda::kMlaFp8Row);
  const CacheEntryBytes e = cache_entry_bytes(cfg, opts);
  KIMI_CHECK(size_t(e.slot) == sz.slot && size_t(e.mla_token) * kBlockSize == sz.block,
             "cache_entry_bytes does not describe the CUDA cache layout");
  Tm = opts.max_batch_tokens;
  logit_rows = int(std::clamp<int64_t>((int64_t(256) << 20) / (int64_t(cfg.vocab_size) * 4), 1, Tm));
  max_partials = 8 * prop.multiProcessorCount;
  mla_piece = kMlaPrefillPiece;
  // Chunks of one step: full chunks of all tokens plus one partial chunk per sequence (capped:
  // steps with more sequences than that fall back to the recurrent scan).
  kda_chunk_cap = (Tm + kKdaChunk - 1) / kKdaChunk + std::min({Tm, cache.num_slots, 64});
  Carver ac;
  sz.arena = layout_arena(ac);
  sz.fixed = kGemmWorkspace + kReserve;
  return sz;
}

CudaMemoryPlan CudaModel::plan_memory(const ModelConfig& full_config, const ModelOptions& opts,
                                      int rank) {
  Impl m;
  const int world = std::max(opts.tensor_parallel, 1);
  m.full_cfg = full_config;
  m.cfg = world > 1 ? rank_config(full_config, world, opts.expert_parallel) : full_config;
  m.tp = TpRank{rank, world, nullptr, world > 1 && opts.expert_parallel};
  m.opts = opts;
  m.cache = opts.cache;
  check_config(m.cfg);
  check_device(&m.prop, rank);
  const Impl::Sizes sz = m.plan_sizes();
  CudaMemoryPlan p;
  p.weight_bytes = sz.weights;
  p.arena_bytes = sz.arena;
  p.fixed_bytes = sz.fixed;
  p.slot_bytes = sz.slot;
  p.block_bytes = sz.block;
  int prev = 0;
  CUDA_CHECK(cudaGetDevice(&prev));
  CUDA_CHECK(cudaSetDevice(rank));
  CUDA_CHECK(cudaMemGetInfo(&p.free_bytes, &p.total_bytes));
  CUDA_CHECK(cudaSetDevice(prev));
  return p;
}

CudaModel::CudaModel(const ModelConfig& full_config, const Checkpoint* ckpt,
                     const ModelOptions& opts, TpRank tp)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  KIMI_CHECK(tp.world >= 1 && tp.rank >= 0 && tp.rank < tp.world && (tp.world == 1 || tp.comm));
  m.full_cfg = full_config;
  m.cfg = tp.world > 1 ? rank_config(full_config, tp.world, tp.expert_parallel) : full_config;
  m.tp = tp;
  m.device = tp.rank;
  const ModelConfig& config = m.cfg;  // this rank's share from here on
  m.opts = opts;
  m.cache = opts.cache;
  KIMI_CHECK(m.cache.num_slots >= 1 && m.cache.num_blocks >= 1, "cache sizes ", m.cache.num_slots,
             " slots, ", m.cache.num_blocks, " blocks");
  if (opts.max_batch_tokens < 1) fail("max_batch_tokens must be positive, got ", opts.max_batch_tokens);
  KIMI_CHECK(ckpt || opts.random_weights, "CudaModel needs a checkpoint or random_weights");
  check_config(config);
  check_device(&m.prop, m.device);
  CUDA_CHECK(cudaSetDevice(m.device));

  // Sizes first (nothing allocated yet), then the fit check.
  const Impl::Sizes sz = m.plan_sizes();
  const size_t wbytes = sz.weights, abytes = sz.arena, slot_bytes = sz.slot, block_bytes = sz.block;
  const size_t cbytes = slot_bytes * m.cache.num_slots + block_bytes * m.cache.num_blocks + 3 * 256;
  const int Lk = config.num_kda_layers(), Lm = config.num_mla_layers();
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  const size_t fixed = kGemmWorkspace + kReserve;
  const size_t need = wbytes + cbytes + abytes + fixed;
  if (need > free_b) {
    std::string msg = str("the model does not fit on GPU ", m.device, " (", m.prop.name, "",
                          tp.world > 1 ? str(", rank ", tp.rank, " of ", tp.world) : std::string(),
                          "): it needs ",
                          gib_str(need), " (weights ", gib_str(wbytes), ", KDA state ",
                          gib_str(slot_bytes * m.cache.num_slots), " for ", m.cache.num_slots,
                          " slots, MLA cache ", gib_str(block_bytes * m.cache.num_blocks), " for ",
                          m.cache.num_blocks, " blocks = ", int64_t(m.cache.num_blocks) * kBlockSize,
                          " tokens, activations ", gib_str(abytes), " for ", m.Tm,
                          " tokens per step, workspace and reserve ", gib_str(fixed), ") but ",
                          gib_str(free_b), " of ", gib_str(total_b), " are free. ");
    if (wbytes + abytes + fixed > free_b) {
      const size_t per_layer = config.num_hidden_layers > 1
                                   ? (wbytes - 2 * size_t(config.vocab_size) * config.hidden_size * 2) /
                                         config.num_hidden_layers
                                   : wbytes;
      const size_t avail = free_b > abytes + fixed + 2 * size_t(config.vocab_size) * config.hidden_size * 2
                               ? free_b - abytes - fixed - 2 * size_t(config.vocab_size) * config.hidden_size * 2
                               : 0;
      msg += str("The weights alone take ", gib_str(wbytes),
                 ": use a GPU with more memory or more GPUs (--tensor-parallel-size ",
                 tp.world * 2, "); with --random-weights, --layers ",
                 std::max<size_t>(1, std::min<size_t>(avail / std::max<size_t>(per_layer, 1),
                                                       size_t(config.num_hidden_layers))),
                 " (of ", config.num_hidden_layers, ") would fit.");
    } else {
      const size_t room = free_b - wbytes - abytes - fixed;
      const size_t slots_fit =
          slot_bytes ? (room > block_bytes * m.cache.num_blocks
                            ? (room - block_bytes * m.cache.num_blocks) / slot_bytes : 0)
                     : 0;
      const size_t blocks_fit =
          block_bytes ? (room > slot_bytes * m.cache.num_slots
                             ? (room - slot_bytes * m.cache.num_slots) / block_bytes : 0)
                      : 0;
      msg += str(gib_str(room), " remain for the caches after weights and activations: ", slots_fit,
                 " KDA slots fit with ", m.cache.num_blocks, " blocks, or ", blocks_fit, " blocks (",
                 blocks_fit * kBlockSize, " tokens) with ", m.cache.num_slots,
                 " slots; or lower max_batch_tokens (", m.Tm, ").");
    }
    fail(msg);
  }

  if (const char* e = std::getenv("KIMI_CUDA_KDA")) {
    const std::string v = e;
    if (v == "recurrent") m.kda_path = 1;
    else if (v == "chunked") m.kda_path = 2;
    else if (v != "auto") fail("KIMI_CUDA_KDA must be auto, recurrent or chunked, got '", v, "'");
  }
  if (m.high) {  // fp32 KDA runs the recurrent scan; the fused decode and chunked kernels are bf16
    if (m.kda_path == 2) fail("KIMI_CUDA_KDA=chunked has no high-precision kernel (--precision high)");
    m.kda_path = 1;
  }
  if (const char* e = std::getenv("KIMI_CUDA_MLA")) {  // attention kernels (comparison)
    const std::string v = e;
    if (v == "cuda_cores") m.mla_tensor_cores = false;
    else if (v != "tensor_cores")
      fail("KIMI_CUDA_MLA must be tensor_cores or cuda_cores, got '", v, "'");
    if (!m.mla_tensor_cores && m.fp8_cache)
      fail("KIMI_CUDA_MLA=cuda_cores has no fp8 cache kernel (--kv-cache-dtype fp8)");
  }
  if (const char* e = std::getenv("KIMI_CUDA_MLA_LAYER")) {  // small decode steps' chain (comparison)
    const std::string v = e;
    if (v == "gemm") m.mla_fused_chain = false;
    else if (v != "fused") fail("KIMI_CUDA_MLA_LAYER must be fused or gemm, got '", v, "'");
  }
  if (const char* e = std::getenv("KIMI_CUDA_MLA_PREFILL")) {  // long prefills expanded or not
    const std::string v = e;
    if (v == "absorbed") m.mla_expanded = false;
    else if (v != "auto") fail("KIMI_CUDA_MLA_PREFILL must be auto or absorbed, got '", v, "'");
  }
  if (const char* e = std::getenv("KIMI_CUDA_MOE")) {  // prefill expert GEMM kernel (comparison)
    const std::string v = e;
    if (v == "tiled") m.moe_wgmma = false;
    else if (v != "wgmma") fail("KIMI_CUDA_MOE must be wgmma or tiled, got '", v, "'");
    if (m.high && !m.moe_wgmma)
      fail("KIMI_CUDA_MOE=tiled has no hi/lo split input (--precision high)");
  }
  // Tuning of the expert GEMM kernel choice by rows per expert (comparison; moe.h kAuto).
  auto rows_per_expert = [&](const char* name, int& v) {
    const char* e = std::getenv(name);
    if (!e) return;
    char* end = nullptr;
    const long n = std::strtol(e, &end, 10);
    if (end == e || *end != '\0' || n < 1 || n > 4096)
      fail(name, " must be a whole number of rows per expert in 1..4096, got '", e, "'");
    v = int(n);
  };
  rows_per_expert("KIMI_CUDA_MOE_GEMV_ROWS", m.moe_gemv_rows);
  rows_per_expert("KIMI_CUDA_MOE_WGMMA_ROWS", m.moe_wgmma_rows);
  if (const char* e = std::getenv("KIMI_CUDA_PDL")) {  // programmatic dependent launches
    const std::string v = e;
    if (v != "0" && v != "1") fail("KIMI_CUDA_PDL must be 0 or 1, got '", v, "'");
    cuda::set_pdl_enabled(v == "1");
  }
  if (const char* e = std::getenv("KIMI_CUDA_FUSE_NORM")) {  // fused decode norms (comparison)
    const std::string v = e;
    if (v == "0") m.fuse_norms = false;
    else if (v != "1") fail("KIMI_CUDA_FUSE_NORM must be 0 or 1, got '", v, "'");
  }
  if (const char* e = std::getenv("KIMI_CUDA_MOE_FUSED")) {  // one-launch MoE decode (comparison)
    const std::string v = e;
    if (v == "0") m.moe_fused = false;
    else if (v != "1") fail("KIMI_CUDA_MOE_FUSED must be 0 or 1, got '", v, "'");
  }
  if (m.moe_fused && !cuda::moe_decode_fused_supported()) m.moe_fused = false;
  if (m.high) {
    m.fuse_norms = false;  // the fused norms write bf16 block inputs only
    spdlog::info("cuda: precision high: split hi/lo GEMM inputs, fp32 KDA through the recurrent "
                 "scan at every step, separate RMSNorm launches (docs/precision.md)");
  }
  if (const char* e = std::getenv("KIMI_CUDA_GRAPHS")) {  // decode steps eagerly (comparison)
    const std::string v = e;
    if (v != "0" && v != "1") fail("KIMI_CUDA_GRAPHS must be 0 or 1, got '", v, "'");
    m.use_graphs = v == "1";
  }
  CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  m.gemm = std::make_unique<cuda::Gemm>(kGemmWorkspace);
  if (const char* e = std::getenv("KIMI_CUDA_GEMM")) {  // small-M kernels or not (comparison)
    const std::string v = e;
    if (v == "cublaslt") m.gemm->set_path(cuda::GemmPath::kCublasLt);
    else if (v != "auto") fail("KIMI_CUDA_GEMM must be auto or cublaslt, got '", v, "'");
  }
  m.weight_buf = cuda::DeviceBuffer<uint8_t>(wbytes);
  Carver wc2{m.weight_buf.data()};
  m.layout_weights(wc2);
  m.cache_buf = cuda::DeviceBuffer<uint8_t>(cbytes);
  Carver cc{m.cache_buf.data()};
  m.conv_state = cc.take<uint8_t>(size_t(Lk) * m.cache.num_slots * m.conv_per_slot * m.conv_elem);
  m.kda_state = cc.take<float>(size_t(Lk) * m.cache.num_slots * m.state_per_slot);
  m.mla_cache = cc.take<uint8_t>(size_t(Lm) * m.cache.num_blocks * m.mla_block_bytes);
  m.cache_buf.fill_bytes(0);
  m.arena_buf = cuda::DeviceBuffer<uint8_t>(abytes);
  Carver ac2{m.arena_buf.data()};
  m.layout_arena(ac2);
  if (m.act.route_ticket) CUDA_CHECK(cudaMemset(m.act.route_ticket, 0, sizeof(int)));
  if (m.act.moe_fused_barrier) CUDA_CHECK(cudaMemset(m.act.moe_fused_barrier, 0, 2 * sizeof(unsigned)));
  cuda::mla_prepare();
  cuda::mla_prefill_prepare();
  if (ckpt) m.load_weights(*ckpt);
  else m.draw_weights(opts.seed);
  CUDA_CHECK(cudaDeviceSynchronize());
}

CudaModel::~CudaModel() = default;

const ModelConfig& CudaModel::config() const { return impl_->full_cfg; }
CacheSizes CudaModel::cache_sizes() const { return impl_->cache; }
size_t CudaModel::weight_bytes() const { return impl_->weight_buf.bytes(); }
size_t CudaModel::cache_bytes() const { return impl_->cache_buf.bytes(); }
size_t CudaModel::arena_bytes() const { return impl_->arena_buf.bytes(); }
std::string CudaModel::device_name() const { return impl_->prop.name; }
void CudaModel::set_use_graphs(bool on) {
  impl_->use_graphs = on;
  if (!on) impl_->drop_graphs();
}
size_t CudaModel::num_graphs() const { return impl_->graphs.size(); }

void CudaModel::set_peer_allreduce(const cuda::PeerAllReduceView* view, bool push) {
  Impl& m = *impl_;
  m.drop_graphs();  // captured steps hold the old all-reduce
  m.peer_ar = view != nullptr;
  m.peer_push = push;
  if (view) m.peer = *view;
}

void CudaModel::set_profile(bool on) {
  Impl& m = *impl_;
  m.profile = on;
  m.prof_ms.clear();
  m.prof_steps.clear();
  if (on && m.prof_ev.empty()) {
    m.prof_ev.resize(2 * m.cfg.num_hidden_layers + 2);
    for (auto& e : m.prof_ev) CUDA_CHECK(cudaEventCreate(&e));
    if (m.tp.world > 1) {
      m.prof_ar_ev.resize(4 * m.cfg.num_hidden_layers);
      for (auto& e : m.prof_ar_ev) CUDA_CHECK(cudaEventCreate(&e));
    }
  }
}

std::string CudaModel::profile_report() const {
  const Impl& m = *impl_;
  std::string out;
  for (const char* phase : {"prefill", "decode"}) {
    auto it = m.prof_steps.find(phase);
    if (it == m.prof_steps.end() || it->second == 0) continue;
    double total = 0;
    std::string parts;
    for (const auto& [k, ms] : m.prof_ms)
      if (k.rfind(std::string(phase) + ".", 0) == 0) {
        const double per = ms / it->second;
        total += per;
        char buf[96];
        std::snprintf(buf, sizeof buf, "  %s %.3f ms", k.c_str() + std::strlen(phase) + 1, per);
        parts += buf;
      }
    char head[96];
    std::snprintf(head, sizeof head, "%s step (%d steps): %.3f ms =", phase, it->second, total);
    out += head + parts + "\n";
  }
  return out;
}

void CudaModel::reset_slot(int slot) {
  Impl& m = *impl_;
  KIMI_CHECK(slot >= 0 && slot < m.cache.num_slots, "slot ", slot);
  for (int l = 0; l < m.cfg.num_kda_layers(); ++l) {
    const size_t base = size_t(l) * m.cache.num_slots + slot;
    CUDA_CHECK(cudaMemsetAsync(static_cast<uint8_t*>(m.conv_state) + base * m.conv_per_slot * m.conv_elem, 0,
                               m.conv_per_slot * m.conv_elem, m.stream));
    CUDA_CHECK(cudaMemsetAsync(m.kda_state + base * m.state_per_slot, 0, m.state_per_slot * 4, m.stream));
  }
}

void CudaModel::copy_slot(int src, int dst) {
  Impl& m = *impl_;
  KIMI_CHECK(src >= 0 && src < m.cache.num_slots && dst >= 0 && dst < m.cache.num_slots);
  for (int l = 0; l < m.cfg.num_kda_layers(); ++l) {
    const size_t s = size_t(l) * m.cache.num_slots + src, d = size_t(l) * m.cache.num_slots + dst;
    uint8_t* conv = static_cast<uint8_t*>(m.conv_state);
    const size_t cb = m.conv_per_slot * m.conv_elem;
    CUDA_CHECK(cudaMemcpyAsync(conv + d * cb, conv + s * cb, cb, cudaMemcpyDeviceToDevice, m.stream));
    CUDA_CHECK(cudaMemcpyAsync(m.kda_state + d * m.state_per_slot, m.kda_state + s * m.state_per_slot,
                               m.state_per_slot * 4, cudaMemcpyDeviceToDevice, m.stream));
  }
}

void CudaModel::copy_block(int src, int dst) {
  Impl& m = *impl_;
  KIMI_CHECK(src >= 0 && src < m.cache.num_blocks && dst >= 0 && dst < m.cache.num_blocks);
  for (int l = 0; l < m.cfg.num_mla_layers(); ++l) {
    const size_t s = size_t(l) * m.cache.num_blocks + src, d = size_t(l) * m.cache.num_blocks + dst;
    CUDA_CHECK(cudaMemcpyAsync(m.mla_cache + d * m.mla_block_bytes,
                               m.mla_cache + s * m.mla_block_bytes, m.mla_block_bytes,
                               cudaMemcpyDeviceToDevice, m.stream));
  }
}

}  // namespace kimi

#endif
