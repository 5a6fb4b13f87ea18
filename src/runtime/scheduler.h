// The scheduler: a short, pure function of queue state (no model, no threads), so it is unit
// tested in milliseconds. Policy: FCFS; running sequences first (oldest first), each taking the
// tokens it still needs (1 for decode, a chunk of the prompt for prefill, ending at its stop_at
// if that is ahead) within a per-step token budget; when the MLA block pool runs out, the newest
// running sequence is preempted (its blocks and KDA slot are freed and it is recomputed later);
// then waiting sequences are admitted in order while a slot, blocks, budget and the running cap
// allow, with no skipping ahead.
#pragma once

#include <cstdint>
#include <vector>

namespace kimi {

struct SchedSeq {
  int id = 0;            // caller's handle
  int num_tokens = 0;    // tokens known: prompt + generated
  int num_computed = 0;  // tokens whose state is in the cache
  int num_blocks = 0;    // MLA blocks held
  int shared_blocks = 0; // of those, blocks others hold too (n > 1 siblings, the prefix cache):
                         // preempting the sequence does not free them
  int stop_at = 0;       // > num_computed: this step's chunk ends there at most (a prefix-cache
                         // point: the state is saved there)
};

struct SchedulerLimits {
  int max_num_seqs = 64;
  int token_budget = 2048;
  int block_size = 64;
};

struct SchedulerInput {
  std::vector<SchedSeq> running;  // oldest first
  std::vector<SchedSeq> waiting;  // FCFS order (preempted sequences keep their place)
  int free_blocks = 0;
  int free_slots = 0;
};

struct ScheduledSeq {
  int id = 0;
  int num_new_tokens = 0;  // tokens to compute this step
  int new_blocks = 0;      // blocks to allocate first
  bool admitted = false;   // came from the waiting queue: needs a slot
};

struct SchedulerOutput {
  std::vector<ScheduledSeq> scheduled;  // in batch order
  std::vector<int> preempted;           // ids to free and move back to waiting
};

int blocks_for_tokens(int tokens, int block_size);
SchedulerOutput schedule(const SchedulerInput& in, const SchedulerLimits& lim);

}  // namespace kimi
