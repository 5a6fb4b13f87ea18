// All-reduce (sum) of small fp32 buffers over the N GPUs of one process, through peer memory
// (NVLink): the decode steps' residual all-reduces, where NCCL's fixed cost (~12 us per call on
// H200 NVLink for 9 KB) dominates. Larger buffers stay with NCCL. Two kernels:
//
// Push (run_peer_allreduce_push, the default): one-shot, no flags. Each rank owns receive
// buffers recv[3][N][capacity] in its own memory, zero when idle. For call e (this rank's call
// count, identical on every rank) each CTA owns one row of x [rows, dim] and
//   1. stores its row, each word's sign bit flipped (−0 sent as +0, so no sent word is 0), into
//      slot [e % 3][rank] of every rank's receive buffer (remote stores over NVLink);
//   2. polls its own slots [e % 3][0..N) until every word of the row is nonzero (the data is its
//      own flag: each 4-byte word lands whole), and sums them, sign bits restored, in rank order
//      0..N−1: every rank computes the same fp32 values;
//   3. zeroes what it read (the slots are its own: nobody else reads them);
//   4. optionally writes normed = bf16(RMSNorm(x_row) · norm_weight) (the next sub-layer's
//      input: its norm launch saved), the same on every rank.
// Three buffers: a rank can be at most one call ahead of another (it cannot finish call e + 1
// before every rank has pushed call e + 1, i.e. finished call e), so calls e and e + 1 write
// different buffers, and buffer e % 3 is written again (call e + 3) two kernel boundaries after
// its reader zeroed it. A PDL launch (launch.h): it is scheduled while the previous kernel
// drains. The call count lives on the device (the last CTA of a call advances it), so the call
// replays inside CUDA graphs.
//
// Pull (run_peer_allreduce, KIMI_TP_ALLREDUCE=pull; the previous default, kept for comparison and
// for calls larger than rows of one CTA): per CTA b of the grid (each owning a slice of x):
//   1. copy its slice of x into the rank's staging buffer e % 2 (e = this CTA's call count + 1);
//   2. publish e into flag [b][rank] of every rank's flag array (system-scope release);
//   3. wait until flag [b][r] of its own array reaches e for every r (acquire);
//   4. x[slice] = Σ_r staging_r[e % 2][slice], summed in rank order 0..N−1.
// Two staging buffers suffice: a rank can only reach call e + 2 after every rank has started
// call e + 1, i.e. finished reading call e's buffer.
//
// Both: a rank that never arrives makes the others trap after kTimeoutNs (a CUDA error, not a
// hang).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kimi::cuda {

constexpr int kPeerMaxRanks = 8;
constexpr int kPeerMaxBlocks = 32;
constexpr int kPeerPushBuffers = 3;

// One rank's view of the group: every rank's staging buffers, flag arrays and receive buffers.
struct PeerAllReduceView {
  int rank = 0;
  int world = 1;
  int64_t capacity = 0;                        // floats per staging buffer / receive slot
  float* stage[kPeerMaxRanks] = {};            // [2][capacity] per rank (pull)
  uint32_t* flags[kPeerMaxRanks] = {};         // [kPeerMaxBlocks][world] per rank (pull)
  uint32_t* counters = nullptr;                // [kPeerMaxBlocks], this rank's calls per CTA (pull)
  float* recv[kPeerMaxRanks] = {};             // [kPeerPushBuffers][world][capacity] per rank (push)
  uint32_t* push_state = nullptr;              // [2]: this rank's next buffer (e % 3), CTAs done
};

// Device memory of one rank's part (staging + flags + counters + receive buffers), zeroed by the
// caller.
size_t peer_allreduce_bytes(int64_t capacity, int world);
// Points view's entries for rank `owner` (stage, flags, recv; counters and push_state too when
// owner == view.rank) into `base`, owner's part (peer_allreduce_bytes long, zeroed). view.world
// must be set.
void peer_allreduce_carve(void* base, int64_t capacity, int owner, PeerAllReduceView& view);

// Pull: x[0..n) += the other ranks' x, in place, on every rank (each rank launches it on its
// stream). n % 4 == 0, x 16-byte aligned, n <= capacity.
void run_peer_allreduce(const PeerAllReduceView& v, float* x, int64_t n, cudaStream_t stream);

struct PeerPushParams {
  int rows = 0;                        // one CTA per row
  int dim = 0;                         // multiple of 4; rows·dim <= capacity
  float* x = nullptr;                  // [rows, dim], 16-byte aligned, summed in place
  const float* norm_weight = nullptr;  // [dim] or null: no normed output
  float eps = 1e-5f;
  __nv_bfloat16* normed = nullptr;     // [rows, dim] bf16(RMSNorm(x)·norm_weight)
};
// Push: the same sum (bitwise the pull kernel's), one row per CTA, optionally with the norm.
void run_peer_allreduce_push(const PeerAllReduceView& v, const PeerPushParams& p, cudaStream_t stream);

}  // namespace kimi::cuda
