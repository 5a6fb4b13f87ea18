// One-shot all-reduce (sum) of small fp32 buffers over the N GPUs of one process, through peer
// memory (NVLink): the decode steps' residual all-reduces, where NCCL's fixed cost (~12 us per
// call on H200 NVLink for 9 KB) dominates. Larger buffers stay with NCCL.
//
// Each rank owns two staging buffers and a flag array in its own memory, readable and writable by
// every peer (cudaDeviceEnablePeerAccess; one process, so device pointers are shared directly).
// One call, per CTA b of the grid (each CTA owns one slice of x):
//   1. copy its slice of x into the rank's staging buffer e % 2 (e = this CTA's call count + 1);
//   2. publish e into flag [b][rank] of every rank's flag array (system-scope release);
//   3. wait until flag [b][r] of its own array reaches e for every r (acquire);
//   4. x[slice] = Σ_r staging_r[e % 2][slice], summed in rank order 0..N−1: every rank computes
//      the same fp32 values.
// Two staging buffers suffice: a rank can only reach call e + 2 after every rank has started
// call e + 1, i.e. finished reading call e's buffer. The counters live on the device, so the call
// replays inside CUDA graphs. A rank that never arrives makes the others trap after kTimeoutNs
// (a CUDA error, not a hang).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kimi::cuda {

constexpr int kPeerMaxRanks = 8;
constexpr int kPeerMaxBlocks = 32;

// One rank's view of the group: every rank's staging buffers and flag arrays.
struct PeerAllReduceView {
  int rank = 0;
  int world = 1;
  int64_t capacity = 0;                        // floats per staging buffer
  float* stage[kPeerMaxRanks] = {};            // [2][capacity] per rank
  uint32_t* flags[kPeerMaxRanks] = {};         // [kPeerMaxBlocks][world] per rank
  uint32_t* counters = nullptr;                // [kPeerMaxBlocks], this rank's calls per CTA
};

// Device memory of one rank's part (staging + flags + counters), zeroed by the caller.
size_t peer_allreduce_bytes(int64_t capacity);
// Carves one rank's part out of `base` (peer_allreduce_bytes long, zeroed).
void peer_allreduce_carve(void* base, int64_t capacity, float** stage, uint32_t** flags,
                          uint32_t** counters);

// x[0..n) += the other ranks' x, in place, on every rank (each rank launches it on its stream).
// n % 4 == 0, x 16-byte aligned, n <= capacity.
void run_peer_allreduce(const PeerAllReduceView& v, float* x, int64_t n, cudaStream_t stream);

}  // namespace kimi::cuda
