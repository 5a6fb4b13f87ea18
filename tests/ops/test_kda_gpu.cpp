// KDA GPU kernels against the CPU reference (kimi::cpu, src/ops/cpu/kda.h) on random inputs with
// realistic ranges: gates g in about [-14, 0), beta in (0, 1), scattered slot ids, odd lengths.
// Outputs are poisoned before each run (unwritten entries show up as NaN mismatches) and sit
// inside guard regions that must stay untouched.
#include <algorithm>
#include <cstdio>
#include <numeric>

#include "../error_of.h"
#include "gpu_test_util.h"
#include "ops/cpu/basic.h"
#include "ops/cpu/kda.h"

#if KIMI_HAVE_CUDA
#include "kda/kda.h"
#endif

namespace kimi::test {
namespace {

#if KIMI_HAVE_CUDA
constexpr int D = 128;

// One layer's weights and a batch's raw (bf16) projections, with fp32 host copies for the CPU.
struct KdaCase {
  int H = 0;
  std::vector<float> conv_w, A_log, dt_bias, o_norm;  // [C,4], [H], [H·D], [D]
  std::vector<uint16_t> qkv, f, b, z;                 // [T,C], [T,HD], [T,H], [T,HD]
  // The folded decode's inputs (add_low_rank): f_low | g_low [T, 2D], W_fb | W_gb [2, HD, D].
  std::vector<uint16_t> low, up;
  int C() const { return 3 * H * D; }
  int HD() const { return H * D; }
};

KdaCase make_case(std::mt19937& rng, int H, int T) {
  KdaCase c;
  c.H = H;
  c.conv_w = random_f32(rng, size_t(c.C()) * 4, -0.6f, 0.6f);
  c.A_log = random_f32(rng, H, -1.f, 1.5f);
  c.dt_bias = random_f32(rng, size_t(c.HD()), -2.f, 1.f);
  c.o_norm = random_f32(rng, D, 0.5f, 1.5f);
  c.qkv = random_bf16(rng, size_t(T) * c.C(), -2.f, 2.f);
  c.f = random_bf16(rng, size_t(T) * c.HD(), -4.f, 2.f);
  c.b = random_bf16(rng, size_t(T) * H, -4.f, 4.f);
  c.z = random_bf16(rng, size_t(T) * c.HD(), -3.f, 3.f);
  return c;
}

// Low-rank halves and up-projection weights for the folded decode: f = W_fb·f_low stays in about
// [-4, 4] (rms 1.5) and z likewise, the ranges of the given f and z above.
void add_low_rank(KdaCase& c, std::mt19937& rng, int T) {
  c.low = random_bf16(rng, size_t(T) * 2 * D, -1.f, 1.f);
  c.up = random_bf16(rng, size_t(2) * c.HD() * D, -0.4f, 0.4f);
}
// The CPU's f (which = 0) or z (1) of rows [t0, t0 + T) given their low-rank rows low [·, 2D]
// (fp32, from row 0): W·x in fp32 (kimi::cpu::matmul), the model's CPU reference.
std::vector<float> up_proj(const KdaCase& c, const std::vector<float>& low, int T, int which) {
  const int HD = c.HD();
  const std::vector<float> w =
      bf16_to_float(std::vector<uint16_t>(c.up.begin() + size_t(which) * HD * D,
                                          c.up.begin() + size_t(which + 1) * HD * D));
  std::vector<float> x(size_t(T) * D), y(size_t(T) * HD);
  for (int t = 0; t < T; ++t)
    std::copy_n(low.begin() + size_t(t) * 2 * D + which * D, D, x.begin() + size_t(t) * D);
  cpu::matmul(x.data(), w.data(), y.data(), T, HD, D);
  return y;
}

// The CPU chain of model.md §3 for tokens [t0, t0 + T) of the case's inputs:
// kda_conv -> kda_gate -> kda_l2norm (q scaled by D^-1/2) -> kda_recurrent -> kda_gated_rmsnorm.
struct CpuOut {
  std::vector<float> q, k, v, g, beta, o, y;
};
// x, f, b, z: the step's raw projections in fp32 ([T, C], [T, HD], [T, H], [T, HD]).
CpuOut cpu_chain_f32(const KdaCase& c, const std::vector<float>& x, const std::vector<float>& f,
                     const std::vector<float>& b, const std::vector<float>& z,
                     const std::vector<int>& cu, const std::vector<int>& slots,
                     std::vector<float>& conv_state, std::vector<float>& state) {
  const int T = cu.back(), H = c.H, HD = c.HD(), C = c.C();
  const int num_slots = int(state.size() / (size_t(H) * D * D));
  std::vector<float> conv_out(size_t(T) * C);
  cpu::KdaConvParams cp;
  cp.num_seqs = int(slots.size());
  cp.cu_seqlens = cu.data();
  cp.slots = slots.data();
  cp.num_slots = num_slots;
  cp.channels = C;
  cp.x = x.data();
  cp.weight = c.conv_w.data();
  cp.state = conv_state.data();
  cp.out = conv_out.data();
  cpu::kda_conv(cp);
  CpuOut r;
  r.q.resize(size_t(T) * HD);
  r.k.resize(size_t(T) * HD);
  r.v.resize(size_t(T) * HD);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < HD; ++i) {
      r.q[size_t(t) * HD + i] = conv_out[size_t(t) * C + i];
      r.k[size_t(t) * HD + i] = conv_out[size_t(t) * C + HD + i];
      r.v[size_t(t) * HD + i] = conv_out[size_t(t) * C + 2 * HD + i];
    }
  r.g = f;
  r.beta = b;
  cpu::kda_gate(r.g.data(), r.beta.data(), c.A_log.data(), c.dt_bias.data(), T, H);
  cpu::kda_l2norm(r.q.data(), T, H, 1e-6f, 1.f / std::sqrt(float(D)));
  cpu::kda_l2norm(r.k.data(), T, H, 1e-6f, 1.f);
  r.o.resize(size_t(T) * HD);
  cpu::KdaScanParams sp;
  sp.num_seqs = int(slots.size());
  sp.cu_seqlens = cu.data();
  sp.slots = slots.data();
  sp.num_slots = num_slots;
  sp.num_heads = H;
  sp.q = r.q.data();
  sp.k = r.k.data();
  sp.v = r.v.data();
  sp.g = r.g.data();
  sp.beta = r.beta.data();
  sp.state = state.data();
  sp.out = r.o.data();
  cpu::kda_recurrent(sp);
  r.y.resize(r.o.size());
  cpu::kda_gated_rmsnorm(r.o.data(), z.data(), c.o_norm.data(), r.y.data(), T, H, 1e-5f);
  return r;
}

// The chain on the case's bf16 projections of tokens [t0, t0 + T).
CpuOut cpu_chain(const KdaCase& c, int t0, const std::vector<int>& cu,
                 const std::vector<int>& slots, std::vector<float>& conv_state,
                 std::vector<float>& state) {
  const int T = cu.back();
  auto rows = [&](const std::vector<uint16_t>& v, int width) {
    return bf16_to_float(std::vector<uint16_t>(v.begin() + size_t(t0) * width,
                                               v.begin() + size_t(t0 + T) * width));
  };
  return cpu_chain_f32(c, rows(c.qkv, c.C()), rows(c.f, c.HD()), rows(c.b, c.H), rows(c.z, c.HD()),
                       cu, slots, conv_state, state);
}

std::vector<int> scattered_slots(std::mt19937& rng, int n, int num_slots) {
  std::vector<int> all(num_slots);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  return std::vector<int>(all.begin(), all.begin() + n);
}

using cuda::bf16;
template <typename T>
using DBuf = cuda::DeviceBuffer<T>;

template <typename T>
DBuf<T> to_device(const std::vector<T>& h) {
  DBuf<T> d(h.size());
  d.upload(h);
  return d;
}
DBuf<bf16> to_device_bf16(const std::vector<uint16_t>& h) {
  DBuf<bf16> d(h.size());
  if (!h.empty()) d.upload(reinterpret_cast<const bf16*>(h.data()), h.size());
  return d;
}
std::vector<uint16_t> bits(const std::vector<bf16>& v) {
  std::vector<uint16_t> out(v.size());
  std::memcpy(out.data(), v.data(), v.size() * 2);
  return out;
}
std::vector<float> bf16_vec_to_float(const std::vector<bf16>& v) {
  return bf16_to_float(bits(v));
}
std::vector<uint16_t> float_to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = f32_to_bf16(v[i]);
  return out;
}

struct DeviceWeights {
  DBuf<float> conv_w, A_log, dt_bias, o_norm;
  explicit DeviceWeights(const KdaCase& c)
      : conv_w(to_device(c.conv_w)),
        A_log(to_device(c.A_log)),
        dt_bias(to_device(c.dt_bias)),
        o_norm(to_device(c.o_norm)) {}
  cuda::KdaWeights view() { return {conv_w.data(), A_log.data(), dt_bias.data(), o_norm.data()}; }
};

// ---------------------------------------------------------------------------------------------
// Decode: several consecutive steps of B sequences on scattered slots; one padding row (slot -1)
// when B > 1. Compares y, the recurrent-state pool (untouched slots must stay bit-identical) and
// the conv-state pool (bit-exact: bf16 holds the bf16 inputs exactly). fold: the kernel forms f
// and z from the low-rank halves (the CPU does the up-projections in fp32).
void run_decode_case(int B, int H, int steps, uint32_t seed, int smem_state = -1,
                     int persistent = -1, bool fold = false) {
  std::mt19937 rng(seed);
  const int num_slots = B + 5;
  KdaCase c = make_case(rng, H, B * steps);
  if (fold) add_low_rank(c, rng, B * steps);
  const int HD = c.HD(), C = c.C();
  std::vector<int> slots = scattered_slots(rng, B, num_slots);
  if (B > 1) slots[B / 2] = -1;  // padding row
  std::vector<int> live_slots, live_rows;
  for (int i = 0; i < B; ++i)
    if (slots[i] >= 0) {
      live_slots.push_back(slots[i]);
      live_rows.push_back(i);
    }
  const int L = int(live_rows.size());
  std::vector<int> cu(L + 1);
  std::iota(cu.begin(), cu.end(), 0);

  std::vector<uint16_t> conv_bits = random_bf16(rng, size_t(num_slots) * C * 3, -2.f, 2.f);
  std::vector<float> conv_ref = bf16_to_float(conv_bits);
  std::vector<float> state_ref = random_f32(rng, size_t(num_slots) * H * D * D, -0.5f, 0.5f);

  DeviceWeights w(c);
  DBuf<int> d_slots = to_device(slots);
  auto d_conv = to_device_bf16(conv_bits);
  GuardedBuffer<float> d_state(state_ref.size());
  d_state.upload(state_ref);
  GuardedBuffer<bf16> d_y(size_t(B) * HD);
  DBuf<bf16> d_up = to_device_bf16(c.up);

  for (int step = 0; step < steps; ++step) {
    // This step's inputs: rows [step·B, step·B + B) of the case.
    const size_t r0 = size_t(step) * B;
    auto slice = [&](const std::vector<uint16_t>& v, size_t width) {
      return std::vector<uint16_t>(v.begin() + r0 * width, v.begin() + (r0 + B) * width);
    };
    auto d_qkv = to_device_bf16(slice(c.qkv, C));
    auto d_f = to_device_bf16(slice(c.f, HD));
    auto d_b = to_device_bf16(slice(c.b, H));
    auto d_z = to_device_bf16(slice(c.z, HD));
    auto d_low = to_device_bf16(fold ? slice(c.low, 2 * D) : std::vector<uint16_t>());
    d_y.poison();
    cuda::KdaDecodeParams p;
    p.batch = B;
    p.num_heads = H;
    p.slots = d_slots.data();
    p.qkv = d_qkv.data();
    p.b = d_b.data();
    if (fold) {
      p.fg_low = d_low.data();
      p.fg_b = d_up.data();
    } else {
      p.f = d_f.data();
      p.z = d_z.data();
    }
    p.w = w.view();
    p.conv_state = d_conv.data();
    p.state = d_state.data();
    p.y = d_y.data();
    p.smem_state = smem_state;
    p.persistent = persistent;
    cuda::run_kda_decode(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());

    // CPU: the live rows only, as a batch of L one-token sequences.
    std::vector<uint16_t> qkv, f, b, z, low;
    auto take = [&](std::vector<uint16_t>& dst, const std::vector<uint16_t>& src, size_t row,
                    size_t width) {
      dst.insert(dst.end(), src.begin() + row * width, src.begin() + (row + 1) * width);
    };
    for (int r : live_rows) {
      const size_t row = r0 + r;
      take(qkv, c.qkv, row, C);
      take(b, c.b, row, H);
      if (fold) {
        take(low, c.low, row, 2 * D);
      } else {
        take(f, c.f, row, HD);
        take(z, c.z, row, HD);
      }
    }
    const std::vector<float> low32 = bf16_to_float(low);
    const CpuOut ref =
        cpu_chain_f32(c, bf16_to_float(qkv), fold ? up_proj(c, low32, L, 0) : bf16_to_float(f),
                      bf16_to_float(b), fold ? up_proj(c, low32, L, 1) : bf16_to_float(z), cu,
                      live_slots, conv_ref, state_ref);

    const std::vector<float> y = bf16_vec_to_float(d_y.to_host());
    std::vector<float> y_live, y_ref_full(size_t(B) * HD, 0.f);
    for (int i = 0; i < L; ++i)
      std::copy(ref.y.begin() + size_t(i) * HD, ref.y.begin() + size_t(i + 1) * HD,
                y_ref_full.begin() + size_t(live_rows[i]) * HD);
    const std::string tag = str("decode B=", B, fold ? " folded" : "", " step ", step, ": ");
    // y is bf16 (relative rounding <= 2^-9) after fp32 math: rel RMS well under 4e-3.
    expect_close(tag + "y", y.data(), y_ref_full.data(), y.size(), 4e-3, 3e-2);
    EXPECT_TRUE(d_y.guards_intact()) << tag << "y guard overwritten";
  }
  const std::vector<float> state = d_state.to_host();
  // fp32 recurrence vs fp32 CPU: differences are summation order only.
  expect_close(str("decode B=", B, fold ? " folded" : "", " state"), state.data(), state_ref.data(),
               state.size(), 2e-5, 1e-3);
  EXPECT_TRUE(d_state.guards_intact()) << "state guard overwritten";
  for (int s = 0; s < num_slots; ++s)
    if (std::find(live_slots.begin(), live_slots.end(), s) == live_slots.end()) {
      std::vector<float> st = state;  // untouched slots keep their bits
      EXPECT_EQ(0, std::memcmp(state.data() + size_t(s) * H * D * D,
                               state_ref.data() + size_t(s) * H * D * D, size_t(H) * D * D * 4))
          << "slot " << s << " not in the batch was modified";
    }
  const std::vector<float> conv = bf16_vec_to_float(d_conv.to_host());
  const ErrorStats ce = compare(conv.data(), conv_ref.data(), conv.size());
  EXPECT_EQ(ce.max_abs, 0.0) << "conv state: " << describe(ce);
}

TEST(KdaGpu, DecodeB1) {
  KIMI_REQUIRE_GPU();
  run_decode_case(1, 32, 4, 11);
}
TEST(KdaGpu, DecodeB7WithPadding) {
  KIMI_REQUIRE_GPU();
  run_decode_case(7, 32, 3, 12);
}
TEST(KdaGpu, DecodeB64) {
  KIMI_REQUIRE_GPU();
  run_decode_case(64, 32, 3, 13);
}
// Every instantiation, whatever the automatic choice picks.
TEST(KdaGpu, DecodeVariants) {
  KIMI_REQUIRE_GPU();
  run_decode_case(7, 32, 2, 15, 0);
  run_decode_case(9, 32, 2, 16, 1);
  // The cluster kernel where the persistent one is chosen, and the persistent one at 1 item/CTA.
  run_decode_case(64, 32, 2, 17, -1, 0);
  run_decode_case(7, 32, 2, 18, -1, 1);
}
// Persistent kernel with several items per CTA (more than its 3 stages: the ring wraps), ranges
// of unequal length, odd head counts and a padding row inside a CTA's range.
TEST(KdaGpu, DecodePersistentOddHeads) {
  KIMI_REQUIRE_GPU();
  run_decode_case(65, 5, 3, 21, -1, 1);
  run_decode_case(200, 5, 2, 24, -1, 1);
  run_decode_case(131, 3, 2, 27, -1, 1);
}
// The f/z up-projections folded into the decode: each kernel and instantiation at odd batches
// (padding rows included), odd head counts, and the persistent kernel with several items per CTA
// whose ranges cross heads (the up weights reloaded) and wrap the stage ring.
TEST(KdaGpu, DecodeFoldedUpProjections) {
  KIMI_REQUIRE_GPU();
  run_decode_case(1, 32, 3, 41, -1, -1, true);  // cluster kernel, S in registers
  run_decode_case(7, 32, 2, 42, 0, 0, true);    // the same, with a padding row
  run_decode_case(5, 7, 2, 43, 0, 0, true);     // the same, odd heads
  run_decode_case(9, 32, 2, 44, 1, 0, true);    // cluster kernel, S in shared memory
  run_decode_case(3, 32, 2, 49, -1, -1, true);  // the same, as chosen automatically
  run_decode_case(13, 32, 2, 45, -1, 1, true);  // persistent: 4 items per CTA, 13 per head
  run_decode_case(65, 5, 3, 46, -1, 1, true);   // persistent: 3 items per CTA
  run_decode_case(200, 5, 2, 47, -1, 1, true);  // persistent: 8 items per CTA
  run_decode_case(131, 3, 2, 48, -1, 1, true);
}

// Decode as the model launches it: programmatic dependent launches on a created stream, two
// layers per step with their own pools, and layer 1's output gate z taken from layer 0's y (an
// input the kernel right before writes: it must be read after the PDL wait). Each step's inputs
// arrive by copies on the stream, as the model's step metadata does; that copy is what separates
// a layer's launches of consecutive steps, which the kernels' early state reads rely on
// (kda_decode.cuh). No host synchronisation until the end. Against the CPU chain per layer.
// fold: f and z formed in the kernel; then layer 1's f_low | g_low row is layer 0's y where the
// widths match (H = 2), else copied in like the other inputs.
void run_decode_pdl_chain(int B, int H, int steps, uint32_t seed, int persistent,
                          bool fold = false) {
  std::mt19937 rng(seed);
  const int num_slots = B + 3;
  KdaCase c0 = make_case(rng, H, B * steps), c1 = make_case(rng, H, B * steps);
  if (fold) {
    add_low_rank(c0, rng, B * steps);
    add_low_rank(c1, rng, B * steps);
  }
  const bool low_from_y0 = fold && H == 2;
  const int HD = c0.HD(), C = c0.C();
  const std::vector<int> slots = scattered_slots(rng, B, num_slots);
  std::vector<int> cu(B + 1);
  std::iota(cu.begin(), cu.end(), 0);
  const KdaCase* cases[2] = {&c0, &c1};
  std::vector<float> conv_ref[2], state_ref[2];
  std::vector<DBuf<bf16>> d_conv;
  std::vector<DBuf<float>> d_state;
  std::vector<DeviceWeights> w;
  for (int l = 0; l < 2; ++l) {
    const std::vector<uint16_t> cb = random_bf16(rng, size_t(num_slots) * C * 3, -2.f, 2.f);
    conv_ref[l] = bf16_to_float(cb);
    state_ref[l] = random_f32(rng, size_t(num_slots) * H * D * D, -0.5f, 0.5f);
    d_conv.push_back(to_device_bf16(cb));
    d_state.push_back(to_device(state_ref[l]));
    w.emplace_back(*cases[l]);
  }
  DBuf<int> d_slots = to_device(slots);
  // All steps' inputs, and the working buffers each step's copies fill (layer 1's z is y0).
  DBuf<bf16> all_qkv[2] = {to_device_bf16(c0.qkv), to_device_bf16(c1.qkv)};
  DBuf<bf16> all_f[2] = {to_device_bf16(c0.f), to_device_bf16(c1.f)};
  DBuf<bf16> all_b[2] = {to_device_bf16(c0.b), to_device_bf16(c1.b)};
  DBuf<bf16> all_z0 = to_device_bf16(c0.z);
  DBuf<bf16> all_low[2] = {to_device_bf16(c0.low), to_device_bf16(c1.low)};
  DBuf<bf16> up[2] = {to_device_bf16(c0.up), to_device_bf16(c1.up)};
  DBuf<bf16> low[2] = {DBuf<bf16>(size_t(B) * 2 * D), DBuf<bf16>(size_t(B) * 2 * D)};
  DBuf<bf16> qkv[2] = {DBuf<bf16>(size_t(B) * C), DBuf<bf16>(size_t(B) * C)};
  DBuf<bf16> f[2] = {DBuf<bf16>(size_t(B) * HD), DBuf<bf16>(size_t(B) * HD)};
  DBuf<bf16> b[2] = {DBuf<bf16>(size_t(B) * H), DBuf<bf16>(size_t(B) * H)};
  DBuf<bf16> z0(size_t(B) * HD);
  GuardedBuffer<bf16> y[2] = {GuardedBuffer<bf16>(size_t(steps) * B * HD),
                              GuardedBuffer<bf16>(size_t(steps) * B * HD)};
  y[0].poison();
  y[1].poison();
  cudaStream_t st;
  CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  auto copy_rows = [&](DBuf<bf16>& dst, const DBuf<bf16>& src, int step, size_t width) {
    CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data() + size_t(step) * B * width,
                               size_t(B) * width * 2, cudaMemcpyDeviceToDevice, st));
  };
  for (int step = 0; step < steps; ++step) {
    for (int l = 0; l < 2; ++l) {
      copy_rows(qkv[l], all_qkv[l], step, C);
      copy_rows(b[l], all_b[l], step, H);
      if (!fold) copy_rows(f[l], all_f[l], step, HD);
      else if (l == 0 || !low_from_y0) copy_rows(low[l], all_low[l], step, 2 * D);
    }
    if (!fold) copy_rows(z0, all_z0, step, HD);
    for (int l = 0; l < 2; ++l) {
      cuda::KdaDecodeParams p;
      p.batch = B;
      p.num_heads = H;
      p.slots = d_slots.data();
      p.qkv = qkv[l].data();
      p.b = b[l].data();
      bf16* y0_step = y[0].data() + size_t(step) * B * HD;
      if (fold) {
        p.fg_low = l == 1 && low_from_y0 ? y0_step : low[l].data();
        p.fg_b = up[l].data();
      } else {
        p.f = f[l].data();
        p.z = l == 0 ? z0.data() : y0_step;
      }
      p.w = w[l].view();
      p.conv_state = d_conv[l].data();
      p.state = d_state[l].data();
      p.y = y[l].data() + size_t(step) * B * HD;
      p.persistent = persistent;
      cuda::run_kda_decode(p, st);
    }
  }
  CUDA_CHECK(cudaStreamSynchronize(st));
  CUDA_CHECK(cudaStreamDestroy(st));

  const std::vector<float> y0 = bf16_vec_to_float(y[0].to_host()),
                           y1 = bf16_vec_to_float(y[1].to_host());
  for (int step = 0; step < steps; ++step) {
    const std::string tag =
        str("decode pdl chain B=", B, " H=", H, fold ? " folded" : "", " step ", step, ": ");
    const size_t off = size_t(step) * B * HD;
    auto rows = [&](const std::vector<uint16_t>& v, size_t width) {
      return bf16_to_float(std::vector<uint16_t>(v.begin() + size_t(step) * B * width,
                                                 v.begin() + size_t(step + 1) * B * width));
    };
    // The GPU's own layer-0 output, an input of layer 1 (bf16 values, exact in fp32).
    const std::vector<float> y0_step(y0.begin() + off, y0.begin() + off + size_t(B) * HD);
    CpuOut r0, r1;
    if (fold) {
      const std::vector<float> low0 = rows(c0.low, 2 * D),
                               low1 = low_from_y0 ? y0_step : rows(c1.low, 2 * D);
      r0 = cpu_chain_f32(c0, rows(c0.qkv, C), up_proj(c0, low0, B, 0), rows(c0.b, H),
                         up_proj(c0, low0, B, 1), cu, slots, conv_ref[0], state_ref[0]);
      r1 = cpu_chain_f32(c1, rows(c1.qkv, C), up_proj(c1, low1, B, 0), rows(c1.b, H),
                         up_proj(c1, low1, B, 1), cu, slots, conv_ref[1], state_ref[1]);
    } else {
      r0 = cpu_chain(c0, step * B, cu, slots, conv_ref[0], state_ref[0]);
      r1 = cpu_chain_f32(c1, rows(c1.qkv, C), rows(c1.f, HD), rows(c1.b, H), y0_step, cu, slots,
                         conv_ref[1], state_ref[1]);
    }
    expect_close(tag + "y layer 0", y0.data() + off, r0.y.data(), r0.y.size(), 4e-3, 3e-2);
    expect_close(tag + "y layer 1", y1.data() + off, r1.y.data(), r1.y.size(), 4e-3, 3e-2);
  }
  for (int l = 0; l < 2; ++l) {
    EXPECT_TRUE(y[l].guards_intact()) << "y guard overwritten, layer " << l;
    const std::vector<float> state = d_state[l].to_host();
    expect_close(str("decode pdl chain B=", B, " state layer ", l), state.data(),
                 state_ref[l].data(), state.size(), 2e-5, 1e-3);
    const std::vector<float> conv = bf16_vec_to_float(d_conv[l].to_host());
    const ErrorStats ce = compare(conv.data(), conv_ref[l].data(), conv.size());
    EXPECT_EQ(ce.max_abs, 0.0) << "conv state layer " << l << ": " << describe(ce);
  }
}

TEST(KdaGpu, DecodePdlChain) {
  KIMI_REQUIRE_GPU();
  run_decode_pdl_chain(1, 32, 3, 31, -1);  // cluster kernel
  run_decode_pdl_chain(5, 7, 3, 32, 0);    // cluster kernel, odd heads
  run_decode_pdl_chain(9, 32, 3, 33, -1);  // persistent kernel (B·H = 288)
  run_decode_pdl_chain(13, 5, 4, 34, 1);   // persistent, several items per CTA, odd heads
  // Folded up-projections; H = 2: layer 1's low-rank row is layer 0's y.
  run_decode_pdl_chain(1, 2, 3, 35, -1, true);    // cluster kernel
  run_decode_pdl_chain(1, 32, 3, 36, -1, true);   // cluster kernel, the model's heads
  run_decode_pdl_chain(5, 7, 3, 37, 0, true);     // cluster kernel, odd heads
  run_decode_pdl_chain(3, 32, 3, 40, -1, true);   // cluster kernel, S in shared memory
  run_decode_pdl_chain(9, 32, 3, 38, -1, true);   // persistent kernel
  run_decode_pdl_chain(131, 2, 3, 39, 1, true);   // persistent, 2 items per CTA
}

// ---------------------------------------------------------------------------------------------
// Prefill: prep -> scan (recurrent or chunked) -> gated norm for a varlen batch on scattered slots
// with random initial conv and recurrent states.
enum class Scan { kRecurrent, kChunked };

// prep_tile: the prep kernel (KdaPrepParams::tile, forced: these steps are shorter than where the
// model takes the tile kernel).
// The intra-chunk kernel's choice per (chunk, head, 16-row block) from the CPU's gate g [T, H·D]
// (ln units): the block's diagonal tiles go through a reference when Γ₂ falls by at most
// cuda::kKdaDiagRefSpread over each tile's 4 rows in every channel. Returns {reference, direct}
// block counts.
std::pair<int, int> count_diag_ref_blocks(const std::vector<float>& g, const std::vector<int>& cu,
                                          int H) {
  constexpr float kLog2e = 1.4426950408889634f;
  std::pair<int, int> n{0, 0};
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int t0 = cu[s]; t0 < cu[s + 1]; t0 += 64)
      for (int h = 0; h < H; ++h)
        for (int a = 0; a < 4; ++a) {
          float worst = 0.f;
          for (int q = 0; q < 4; ++q)
            for (int d = 0; d < D; ++d) {
              float spread = 0.f;  // Γ₂[j0] − Γ₂[j0 + 3]: rows j0 + 1..j0 + 3 of the chunk
              for (int r = 16 * a + 4 * q + 1; r <= 16 * a + 4 * q + 3; ++r)
                if (t0 + r < cu[s + 1]) spread -= g[(size_t(t0 + r) * H + h) * D + d] * kLog2e;
              worst = std::max(worst, spread);
            }
          ++(worst <= cuda::kKdaDiagRefSpread ? n.first : n.second);
        }
  return n;
}

// a_log_shift is added to every head's A_log: stronger gates (larger exp(A_log) · softplus).
void run_prefill_case(const std::vector<int>& lens, int H, Scan scan, uint32_t seed,
                      int prep_tile, float a_log_shift = 0.f,
                      std::pair<int, int>* diag_ref_blocks = nullptr) {
  std::mt19937 rng(seed);
  const int S = int(lens.size());
  std::vector<int> cu(S + 1, 0);
  for (int i = 0; i < S; ++i) cu[i + 1] = cu[i] + lens[i];
  const int T = cu.back();
  const int num_slots = S + 3;
  KdaCase c = make_case(rng, H, T);
  for (float& a : c.A_log) a += a_log_shift;
  const int HD = c.HD(), C = c.C();
  const std::vector<int> slots = scattered_slots(rng, S, num_slots);
  std::vector<uint16_t> conv_bits = random_bf16(rng, size_t(num_slots) * C * 3, -2.f, 2.f);
  std::vector<float> conv_ref = bf16_to_float(conv_bits);
  std::vector<float> state0 = random_f32(rng, size_t(num_slots) * H * D * D, -0.5f, 0.5f);
  std::vector<float> state_ref = state0;

  DeviceWeights w(c);
  DBuf<int> d_cu = to_device(cu), d_slots = to_device(slots);
  auto d_conv = to_device_bf16(conv_bits);
  auto d_qkv = to_device_bf16(c.qkv), d_f = to_device_bf16(c.f), d_b = to_device_bf16(c.b),
       d_z = to_device_bf16(c.z);
  GuardedBuffer<bf16> d_q(size_t(T) * HD), d_k(size_t(T) * HD), d_v(size_t(T) * HD),
      d_o(size_t(T) * HD), d_y(size_t(T) * HD);
  GuardedBuffer<float> d_state(state0.size());
  for (auto* g : {&d_q, &d_k, &d_v, &d_o, &d_y}) g->poison();
  d_state.upload(state0);

  cuda::KdaPrepParams pp;
  pp.num_seqs = S;
  pp.num_tokens = T;
  pp.num_heads = H;
  pp.cu_seqlens = d_cu.data();
  pp.slots = d_slots.data();
  pp.qkv = d_qkv.data();
  pp.f = d_f.data();
  pp.b = d_b.data();
  pp.w = w.view();
  pp.conv_state = d_conv.data();
  pp.q = d_q.data();
  pp.k = d_k.data();
  pp.v = d_v.data();
  pp.tile = prep_tile;
  cuda::run_kda_prep(pp, nullptr);

  const cuda::KdaScanParams sp = cuda::kda_scan_after_prep(pp, d_state.data(), d_o.data());
  std::unique_ptr<DBuf<int>> d_cs, d_cst, d_sf;
  std::unique_ptr<DBuf<unsigned char>> d_ws;
  if (scan == Scan::kRecurrent) {
    cuda::run_kda_scan_recurrent(sp, nullptr);
  } else {
    const cuda::KdaChunkPlan plan = cuda::make_kda_chunk_plan(cu.data(), S);
    d_cs = std::make_unique<DBuf<int>>(to_device(plan.chunk_seq));
    d_cst = std::make_unique<DBuf<int>>(to_device(plan.chunk_start));
    d_sf = std::make_unique<DBuf<int>>(to_device(plan.seq_first_chunk));
    const size_t ws = cuda::kda_chunked_workspace_bytes(plan.num_chunks, H);
    d_ws = std::make_unique<DBuf<unsigned char>>(std::max<size_t>(ws, 1));
    cuda::KdaChunkedArgs a;
    a.num_chunks = plan.num_chunks;
    a.chunk_seq = d_cs->data();
    a.chunk_start = d_cst->data();
    a.seq_first_chunk = d_sf->data();
    a.workspace = d_ws->data();
    a.workspace_bytes = ws;
    cuda::run_kda_chunked(sp, a, nullptr);
  }
  cuda::KdaGatedNormParams np;
  np.num_tokens = T;
  np.num_heads = H;
  np.o = d_o.data();
  np.z = d_z.data();
  np.weight = w.o_norm.data();
  np.y = d_y.data();
  cuda::run_kda_gated_rmsnorm(np, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());

  const CpuOut ref = cpu_chain(c, 0, cu, slots, conv_ref, state_ref);
  if (diag_ref_blocks) *diag_ref_blocks = count_diag_ref_blocks(ref.g, cu, H);
  const std::string tag =
      str(scan == Scan::kRecurrent ? "recurrent" : "chunked", " T=", T, " S=", S, ": ");
  // Prep: bf16 outputs of fp32 math (q, k, v).
  const auto q = bf16_vec_to_float(d_q.to_host()), k = bf16_vec_to_float(d_k.to_host()),
             v = bf16_vec_to_float(d_v.to_host());
  expect_close(tag + "prep q", q.data(), ref.q.data(), q.size(), 4e-3, 2e-3);
  expect_close(tag + "prep k", k.data(), ref.k.data(), k.size(), 4e-3, 2e-2);
  expect_close(tag + "prep v", v.data(), ref.v.data(), v.size(), 4e-3, 2e-2);
  const auto conv = bf16_vec_to_float(d_conv.to_host());
  const ErrorStats ce = compare(conv.data(), conv_ref.data(), conv.size());
  EXPECT_EQ(ce.max_abs, 0.0) << tag << "conv state: " << describe(ce);

  // Scan alone, on the GPU's own prep outputs and the CPU's gate and beta (the scans form them
  // from f and b in fp32; a wrong gate shows in the recurrent scan's fp32 state bound): isolates
  // the scan's error from the bf16 rounding of q, k, v.
  std::vector<float> state_scan = state0, o_scan(size_t(T) * HD);
  cpu::KdaScanParams rp;
  rp.num_seqs = S;
  rp.cu_seqlens = cu.data();
  rp.slots = slots.data();
  rp.num_slots = num_slots;
  rp.num_heads = H;
  rp.q = q.data();
  rp.k = k.data();
  rp.v = v.data();
  rp.g = ref.g.data();
  rp.beta = ref.beta.data();
  rp.state = state_scan.data();
  rp.out = o_scan.data();
  cpu::kda_recurrent(rp);
  const auto o = bf16_vec_to_float(d_o.to_host());
  const auto state = d_state.to_host();
  const bool rec = scan == Scan::kRecurrent;
  // Recurrent: fp32 like the CPU, o rounded to bf16. Chunked: bf16 tensor-core operands
  // (relative 2^-9 each) with fp32 accumulation and fp32 state.
  // Measured worst (H200, 2026-11-27): recurrent o 1.7e-3 / state 3e-8; chunked o 3.1e-3 /
  // state 4.7e-4 (rel RMS). Tolerances are about 2-3x those.
  expect_close(tag + "scan o", o.data(), o_scan.data(), o.size(), rec ? 4e-3 : 6e-3,
               rec ? 2e-3 : 3e-3);
  expect_close(tag + "scan state", state.data(), state_scan.data(), state.size(),
               rec ? 2e-5 : 1.5e-3, rec ? 1e-3 : 2e-2);
  // End to end against the CPU chain on the raw inputs.
  const auto y = bf16_vec_to_float(d_y.to_host());
  // Adds the bf16 rounding of q, k, v (the CPU chain keeps them in fp32): measured worst o 3.8e-3,
  // y 3.9e-3, state 6.3e-4.
  expect_close(tag + "chain o", o.data(), ref.o.data(), o.size(), 8e-3, 4e-3);
  expect_close(tag + "chain y", y.data(), ref.y.data(), y.size(), 8e-3, 8e-2);
  expect_close(tag + "chain state", state.data(), state_ref.data(), state.size(), 2e-3, 3e-2);
  for (auto* gb : {&d_q, &d_k, &d_v, &d_o, &d_y}) EXPECT_TRUE(gb->guards_intact()) << tag;
  EXPECT_TRUE(d_state.guards_intact()) << tag;
}

// High precision: fp32 projections (not bf16-representable), fp32 conv states, prep -> recurrent
// scan -> gated norm all in fp32 (the *ParamsT<float> overloads). A varlen prefill step on
// scattered slots, then single-token steps of every sequence through the same three launches (the
// high-precision decode path), against the CPU chain over all tokens at once. fp32 throughout:
// only summation order and the exp functions differ, so the bound is 1e-4 relative, 10x below one
// bf16 rounding of any input (which the bf16 path's 4e-3 tolerances allow).
void run_f32_case(const std::vector<int>& lens, int H, int decode_steps, uint32_t seed) {
  std::mt19937 rng(seed);
  const int S = int(lens.size()), HD = H * D, C = 3 * HD;
  const int num_slots = S + 2;
  const std::vector<int> slots = scattered_slots(rng, S, num_slots);
  KdaCase c = make_case(rng, H, 1);  // the weights
  // Token order of the CPU reference: sequence by sequence, prefill tokens then decode tokens.
  std::vector<int> total(S), cu_all(S + 1, 0);
  for (int s = 0; s < S; ++s) total[s] = lens[s] + decode_steps, cu_all[s + 1] = cu_all[s] + total[s];
  const int N = cu_all.back();
  auto x = random_f32(rng, size_t(N) * C, -2.f, 2.f), f = random_f32(rng, size_t(N) * HD, -4.f, 2.f),
       b = random_f32(rng, size_t(N) * H, -4.f, 4.f), z = random_f32(rng, size_t(N) * HD, -3.f, 3.f);
  std::vector<float> conv0 = random_f32(rng, size_t(num_slots) * C * 3, -2.f, 2.f);
  std::vector<float> state0 = random_f32(rng, size_t(num_slots) * H * D * D, -0.5f, 0.5f);
  std::vector<float> conv_ref = conv0, state_ref = state0;
  const CpuOut ref = cpu_chain_f32(c, x, f, b, z, cu_all, slots, conv_ref, state_ref);

  DeviceWeights w(c);
  DBuf<int> d_slots = to_device(slots);
  DBuf<float> d_conv = to_device(conv0);
  GuardedBuffer<float> d_state(state0.size());
  d_state.upload(state0);
  std::vector<float> y_gpu(size_t(N) * HD, 0.f), o_gpu(y_gpu.size(), 0.f);
  // Step 0: every sequence's prefill tokens; steps 1..: one token of each sequence.
  for (int step = 0; step <= decode_steps; ++step) {
    std::vector<int> cu(S + 1, 0), src;  // src: the step's tokens' rows in the reference order
    for (int s = 0; s < S; ++s) {
      const int n = step == 0 ? lens[s] : 1, first = cu_all[s] + (step == 0 ? 0 : lens[s] + step - 1);
      cu[s + 1] = cu[s] + n;
      for (int i = 0; i < n; ++i) src.push_back(first + i);
    }
    const int T = cu.back();
    auto gather = [&](const std::vector<float>& v, int width) {
      std::vector<float> out(size_t(T) * width);
      for (int t = 0; t < T; ++t)
        std::copy_n(v.begin() + size_t(src[t]) * width, width, out.begin() + size_t(t) * width);
      return to_device(out);
    };
    DBuf<float> d_x = gather(x, C), d_f = gather(f, HD), d_b = gather(b, H), d_z = gather(z, HD);
    DBuf<int> d_cu = to_device(cu);
    GuardedBuffer<float> d_q(size_t(T) * HD), d_k(size_t(T) * HD), d_v(size_t(T) * HD),
        d_o(size_t(T) * HD), d_y(size_t(T) * HD);
    for (auto* g : {&d_q, &d_k, &d_v, &d_o, &d_y}) g->poison();
    cuda::KdaPrepParamsT<float> pp;
    pp.num_seqs = S, pp.num_tokens = T, pp.num_heads = H;
    pp.cu_seqlens = d_cu.data(), pp.slots = d_slots.data();
    pp.qkv = d_x.data(), pp.f = d_f.data(), pp.b = d_b.data(), pp.w = w.view();
    pp.conv_state = d_conv.data();
    pp.q = d_q.data(), pp.k = d_k.data(), pp.v = d_v.data();
    cuda::run_kda_prep(pp, nullptr);
    cuda::KdaScanParamsT<float> sp;
    sp.num_seqs = S, sp.num_tokens = T, sp.num_heads = H;
    sp.cu_seqlens = d_cu.data(), sp.slots = d_slots.data();
    sp.q = d_q.data(), sp.k = d_k.data(), sp.v = d_v.data();
    sp.f = d_f.data(), sp.b = d_b.data(), sp.w = w.view();
    sp.state = d_state.data(), sp.o = d_o.data();
    cuda::run_kda_scan_recurrent(sp, nullptr);
    cuda::KdaGatedNormParamsT<float> np;
    np.num_tokens = T, np.num_heads = H, np.o = d_o.data(), np.z = d_z.data();
    np.weight = w.o_norm.data(), np.y = d_y.data();
    cuda::run_kda_gated_rmsnorm(np, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto o = d_o.to_host(), y = d_y.to_host();
    for (int t = 0; t < T; ++t) {
      std::copy_n(o.begin() + size_t(t) * HD, HD, o_gpu.begin() + size_t(src[t]) * HD);
      std::copy_n(y.begin() + size_t(t) * HD, HD, y_gpu.begin() + size_t(src[t]) * HD);
    }
    if (step == 0) {  // the prep's own outputs on the prefill tokens
      const auto q = d_q.to_host(), k = d_k.to_host(), v = d_v.to_host();
      std::vector<float> rq, rk, rv;
      for (int t = 0; t < T; ++t)
        for (int i = 0; i < HD; ++i) {
          rq.push_back(ref.q[size_t(src[t]) * HD + i]);
          rk.push_back(ref.k[size_t(src[t]) * HD + i]);
          rv.push_back(ref.v[size_t(src[t]) * HD + i]);
        }
      expect_close("f32 prep q", q.data(), rq.data(), q.size(), 1e-5, 1e-5);
      expect_close("f32 prep k", k.data(), rk.data(), k.size(), 1e-5, 1e-4);
      expect_close("f32 prep v", v.data(), rv.data(), v.size(), 1e-5, 1e-4);
    }
    for (auto* g : {&d_q, &d_k, &d_v, &d_o, &d_y}) EXPECT_TRUE(g->guards_intact());
  }
  const std::string tag = str("f32 S=", S, " decode ", decode_steps, ": ");
  expect_close(tag + "o", o_gpu.data(), ref.o.data(), o_gpu.size(), 1e-4, 1e-3);
  expect_close(tag + "y", y_gpu.data(), ref.y.data(), y_gpu.size(), 1e-4, 1e-3);
  const auto state = d_state.to_host(), conv = d_conv.to_host();
  expect_close(tag + "state", state.data(), state_ref.data(), state.size(), 1e-4, 1e-3);
  const ErrorStats ce = compare(conv.data(), conv_ref.data(), conv.size());
  EXPECT_EQ(ce.max_abs, 0.0) << tag << "conv state (fp32 copies): " << describe(ce);
  EXPECT_TRUE(d_state.guards_intact());
}

TEST(KdaGpu, Fp32PrefillThenDecodeMatchesCpu) {
  KIMI_REQUIRE_GPU();
  run_f32_case({1, 7, 63, 65, 130}, 3, 3, 77);
  run_f32_case({769}, 2, 2, 78);
  // Sequences shorter than the prep's runs (empty ones too): taps from the conv state inside a run.
  run_f32_case({2, 0, 3, 1, 17, 0, 5, 1}, 2, 2, 79);
}

class KdaPrefillGpu : public ::testing::TestWithParam<std::tuple<int, Scan>> {};
TEST_P(KdaPrefillGpu, SingleSequence) {
  KIMI_REQUIRE_GPU();
  const auto [len, scan] = GetParam();
  run_prefill_case({len}, 8, scan, 100 + len, scan == Scan::kChunked);  // both prep kernels
}
INSTANTIATE_TEST_SUITE_P(Lengths, KdaPrefillGpu,
                         ::testing::Combine(::testing::Values(1, 7, 63, 64, 65, 769),
                                            ::testing::Values(Scan::kRecurrent, Scan::kChunked)));

TEST(KdaGpu, PrefillMixedVarlenRecurrent) {
  KIMI_REQUIRE_GPU();
  run_prefill_case({5, 64, 1, 130, 769, 33, 128}, 32, Scan::kRecurrent, 7, 0);
}
TEST(KdaGpu, PrefillMixedVarlenChunked) {
  KIMI_REQUIRE_GPU();
  run_prefill_case({5, 64, 1, 130, 769, 33, 128}, 32, Scan::kChunked, 8, 1);
}
// Many sequences shorter than the prep's 16-token runs and the conv window (empty ones too): runs
// that cross several sequence starts, taps from the conv state inside a run.
TEST(KdaGpu, PrefillManyShortSequences) {
  KIMI_REQUIRE_GPU();
  const std::vector<int> lens = {1, 2, 0, 3, 1, 5, 0, 0, 2, 17, 1, 4, 2, 33, 1, 1, 70, 3};
  run_prefill_case(lens, 4, Scan::kRecurrent, 31, 0);
  run_prefill_case(lens, 4, Scan::kChunked, 32, 1);
}
// Lengths at and around the intra-chunk kernel's 4- and 16-row blocks (its diagonal tiles and the
// off-diagonal references at rows 15, 31, 47) and the chunk boundary, so that the last chunk of a
// sequence ends inside, at and just past each block.
TEST(KdaGpu, PrefillChunkBlockBoundaries) {
  KIMI_REQUIRE_GPU();
  const std::vector<int> lens = {3, 4, 5, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 127, 128, 129, 191};
  run_prefill_case(lens, 4, Scan::kChunked, 41, 1);
}
// Strong gates (A_log + 1: exp(A_log) in [1, 12], so g down to about −37 per token): some 16-row
// blocks' diagonal tiles fall by more than the reference path's spread over 4 rows and take one
// exp per pair, others take the reference; both must occur (counted from the CPU's gate) and
// both must match the recurrence. Odd lengths, block and chunk boundaries, a long sequence.
TEST(KdaGpu, PrefillChunkedStrongGates) {
  KIMI_REQUIRE_GPU();
  std::pair<int, int> blocks{0, 0};
  run_prefill_case({1, 4, 5, 17, 64, 65, 130, 3, 600}, 8, Scan::kChunked, 53, 1, 1.f, &blocks);
  std::printf("strong gates: %d blocks by reference, %d direct\n", blocks.first, blocks.second);
  EXPECT_GT(blocks.first, 0);
  EXPECT_GT(blocks.second, 0);
}
TEST(KdaGpu, PrefillMixedVarlenChunkedH16) {
  KIMI_REQUIRE_GPU();
  run_prefill_case({200, 0, 3, 64, 97}, 16, Scan::kChunked, 9, 0);
}

// prefill(A) as the model runs it (run_kda_prep, conv states updated, then run_kda_chunked),
// then decode(B) steps with the fused decode kernel, must equal the CPU recurrence over A + B
// tokens (outputs of the decode steps and the final states).
TEST(KdaGpu, PrefillThenDecodeMatchesRecurrence) {
  KIMI_REQUIRE_GPU();
  std::mt19937 rng(99);
  const int H = 8, A = 150, B = 3, num_slots = 4, slot = 2;
  KdaCase c = make_case(rng, H, A + B);
  const int HD = c.HD(), C = c.C();
  std::vector<uint16_t> conv_bits = random_bf16(rng, size_t(num_slots) * C * 3, -2.f, 2.f);
  std::vector<float> conv_ref = bf16_to_float(conv_bits);
  std::vector<float> state_ref = random_f32(rng, size_t(num_slots) * H * D * D, -0.5f, 0.5f);
  DeviceWeights w(c);
  auto d_conv = to_device_bf16(conv_bits);
  DBuf<float> d_state = to_device(state_ref);
  const std::vector<int> cu = {0, A}, slots = {slot};
  DBuf<int> d_cu = to_device(cu), d_slots = to_device(slots);
  auto head = [&](const std::vector<uint16_t>& v, size_t width) {
    return std::vector<uint16_t>(v.begin(), v.begin() + size_t(A) * width);
  };
  auto d_qkv = to_device_bf16(head(c.qkv, C)), d_f = to_device_bf16(head(c.f, HD)),
       d_b = to_device_bf16(head(c.b, H));
  DBuf<bf16> d_o(size_t(A) * HD), d_q(size_t(A) * HD), d_k(size_t(A) * HD), d_v(size_t(A) * HD);
  cuda::KdaPrepParams pp;
  pp.num_seqs = 1;
  pp.num_tokens = A;
  pp.num_heads = H;
  pp.cu_seqlens = d_cu.data();
  pp.slots = d_slots.data();
  pp.qkv = d_qkv.data();
  pp.f = d_f.data();
  pp.b = d_b.data();
  pp.w = w.view();
  pp.conv_state = d_conv.data();
  pp.q = d_q.data();
  pp.k = d_k.data();
  pp.v = d_v.data();
  cuda::run_kda_prep(pp, nullptr);
  const cuda::KdaScanParams sp = cuda::kda_scan_after_prep(pp, d_state.data(), d_o.data());
  const cuda::KdaChunkPlan plan = cuda::make_kda_chunk_plan(cu.data(), 1);
  DBuf<int> d_cs = to_device(plan.chunk_seq), d_cst = to_device(plan.chunk_start),
            d_sf = to_device(plan.seq_first_chunk);
  const size_t wsb = cuda::kda_chunked_workspace_bytes(plan.num_chunks, H);
  DBuf<unsigned char> d_ws(wsb);
  cuda::run_kda_chunked(
      sp, {plan.num_chunks, d_cs.data(), d_cst.data(), d_sf.data(), d_ws.data(), wsb}, nullptr);
  std::vector<float> y_gpu;
  for (int t = A; t < A + B; ++t) {
    auto row = [&](const std::vector<uint16_t>& v, size_t width) {
      return std::vector<uint16_t>(v.begin() + size_t(t) * width,
                                   v.begin() + size_t(t + 1) * width);
    };
    auto r_qkv = to_device_bf16(row(c.qkv, C)), r_f = to_device_bf16(row(c.f, HD)),
         r_b = to_device_bf16(row(c.b, H)), r_z = to_device_bf16(row(c.z, HD));
    DBuf<bf16> r_y(HD);
    cuda::KdaDecodeParams p;
    p.batch = 1;
    p.num_heads = H;
    p.slots = d_slots.data();
    p.qkv = r_qkv.data();
    p.f = r_f.data();
    p.b = r_b.data();
    p.z = r_z.data();
    p.w = w.view();
    p.conv_state = d_conv.data();
    p.state = d_state.data();
    p.y = r_y.data();
    cuda::run_kda_decode(p, nullptr);
    const auto y = bf16_vec_to_float(r_y.to_host());
    y_gpu.insert(y_gpu.end(), y.begin(), y.end());
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  const CpuOut ref = cpu_chain(c, 0, {0, A + B}, slots, conv_ref, state_ref);
  const std::vector<float> y_ref(ref.y.begin() + size_t(A) * HD, ref.y.end());
  expect_close("prefill+decode y", y_gpu.data(), y_ref.data(), y_ref.size(), 8e-3, 5e-2);
  const auto state = d_state.to_host();
  expect_close("prefill+decode state", state.data(), state_ref.data(), state.size(), 2e-3, 3e-2);
  const auto conv = bf16_vec_to_float(d_conv.to_host());
  const ErrorStats ce = compare(conv.data(), conv_ref.data(), conv.size());
  EXPECT_EQ(ce.max_abs, 0.0) << "conv state: " << describe(ce);
}

// The decode launcher refuses what it cannot run, before touching the device (host checks:
// this runs without a GPU).
TEST(KdaGpu, DecodeRefusesBadArguments) {
  alignas(16) static float buf[64];
  const auto* b16 = reinterpret_cast<const bf16*>(buf);
  auto* w16 = reinterpret_cast<bf16*>(buf);
  cuda::KdaDecodeParams p;
  p.batch = 1, p.num_heads = 32, p.slots = reinterpret_cast<const int*>(buf), p.qkv = b16,
  p.b = b16;
  p.f = b16, p.z = b16, p.conv_state = w16, p.state = buf, p.y = w16;
  p.w.conv_weight = buf, p.w.A_log = buf, p.w.dt_bias = buf, p.w.o_norm = buf;
  const auto run_p = [](const cuda::KdaDecodeParams& bad) { cuda::run_kda_decode(bad, nullptr); };
  EXPECT_TRUE(contains(error_with(p, run_p, [](auto& q) { q.batch = -1; }), "batch -1"));
  EXPECT_TRUE(contains(error_with(p, run_p, [](auto& q) { q.num_heads = 0; }), "heads 0"));
  EXPECT_TRUE(contains(error_with(p, run_p, [](auto& q) { q.batch = 65536; }), "grid's z limit"));
  EXPECT_TRUE(
      contains(error_with(p, run_p, [](auto& q) { q.y = nullptr; }), "null tensor pointer"));
  EXPECT_TRUE(contains(error_with(p, run_p, [&](auto& q) { q.fg_low = b16; }),
                       "either f and z or (folded)"));
  EXPECT_TRUE(contains(
      error_with(p, run_p, [&](auto& q) { q.f = q.z = nullptr, q.fg_low = b16 + 1, q.fg_b = b16; }),
      "16-byte aligned fg_low"));
  EXPECT_TRUE(
      contains(error_with(p, run_p, [](auto& q) { q.w.o_norm = nullptr; }), "null weight pointer"));
  EXPECT_TRUE(
      contains(error_with(p, run_p, [](auto& q) { q.state = buf + 1; }), "not 16-byte aligned"));
  EXPECT_TRUE(
      contains(error_with(p, run_p, [](auto& q) { q.persistent = 2; }), "persistent must be"));
  EXPECT_TRUE(contains(error_with(p, run_p, [&](auto& q) { q.persistent = 1, q.qkv = b16 + 1; }),
                       "persistent decode needs 16-byte aligned"));
  EXPECT_EQ(error_with(p, run_p, [](auto& q) { q.batch = 0; }), "");  // nothing to do: no launch
}

// The prep launcher refuses a kernel choice it cannot run, before touching the device.
TEST(KdaGpu, PrepRefusesBadArguments) {
  alignas(16) static float buf[64];
  static const int cu[2] = {0, 1}, slots[1] = {0};
  auto* w16 = reinterpret_cast<bf16*>(buf);
  cuda::KdaPrepParams p;
  p.num_seqs = 1, p.num_tokens = 1, p.num_heads = 1, p.cu_seqlens = cu, p.slots = slots;
  p.qkv = w16, p.conv_state = w16, p.q = w16, p.k = w16, p.v = w16, p.w.conv_weight = buf;
  const auto run_p = [](const cuda::KdaPrepParams& bad) { cuda::run_kda_prep(bad, nullptr); };
  EXPECT_TRUE(contains(error_with(p, run_p, [](auto& q) { q.tile = 2; }), "tile must be"));
  EXPECT_TRUE(contains(error_with(p, run_p, [&](auto& q) { q.tile = 1, q.qkv = w16 + 4; }),
                       "tile kernel needs 16-byte aligned qkv"));
  cuda::KdaPrepParamsT<float> p32;
  p32.num_seqs = 1, p32.num_tokens = 1, p32.num_heads = 1, p32.cu_seqlens = cu, p32.slots = slots;
  p32.qkv = p32.conv_state = p32.q = p32.k = p32.v = buf, p32.w.conv_weight = buf, p32.tile = 1;
  std::string msg;
  try {
    cuda::run_kda_prep(p32, nullptr);
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_TRUE(contains(msg, "no fp32 form")) << msg;
}

#else
TEST(KdaGpu, Skipped) {
  KIMI_REQUIRE_GPU();
}
#endif

}  // namespace
}  // namespace kimi::test
