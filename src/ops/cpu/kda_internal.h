// Internal to the CPU KDA ops: argument checks shared by kda.cpp and kda_chunked.cpp.
#pragma once

#include <cstdint>

#include "ops/cpu/kda.h"

namespace kimi::cpu::detail {

// Checks cu_seqlens (starts at 0, non-decreasing), slots (in range, pairwise distinct, since the
// sequences update their states in parallel) and returns the total token count.
int64_t check_varlen(int num_seqs, const int* cu_seqlens, const int* slots, int num_slots,
                     const char* op);
void check_scan(const KdaScanParams& p, const char* op);

}  // namespace kimi::cpu::detail
