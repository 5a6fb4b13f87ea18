// The scheduler: a short, pure function of queue state (no model, no threads), so it is unit
// tested in milliseconds. Running sequences first (in admission order), each taking the tokens
// it still needs (1 for decode, a chunk of the prompt for prefill, ending at its stop_at if that
// is ahead) within a per-step token budget; when the MLA block pool runs out, a running sequence
// is preempted (its blocks and KDA slot are freed and it is recomputed later): under FCFS the
// last admitted, under the priority policy the one that queues last (highest priority value,
// then latest arrival), even if it was already given tokens this step (they are taken back);
// then, in a step that preempted nothing, waiting sequences are admitted in queue order while a
// slot, blocks, budget and the running cap allow, with no skipping ahead. As vLLM's V1 scheduler
// does under its --scheduling-policy fcfs|priority.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kimi {

// fcfs: by arrival; priority: by the request's priority (lower first), then arrival (vLLM's).
enum class SchedulingPolicy { kFcfs, kPriority };
SchedulingPolicy parse_scheduling_policy(const std::string& name);  // "fcfs" or "priority"

struct SchedSeq {
  int id = 0;            // caller's handle
  int num_tokens = 0;    // tokens known: prompt + generated
  int num_computed = 0;  // tokens whose state is in the cache
  int num_blocks = 0;    // MLA blocks held
  int shared_blocks = 0; // of those, blocks others hold too (n > 1 siblings, the prefix cache):
                         // preempting the sequence does not free them
  int stop_at = 0;       // > num_computed: this step's chunk ends there at most (a prefix-cache
                         // point: the state is saved there)
  int64_t priority = 0;  // the request's (priority policy: lower goes first)
  uint64_t arrival = 0;  // arrival order (a preempted sequence keeps its own)
};

// Whether a goes before b in the waiting queue under the policy. The priority policy preempts
// the running sequence that would go last.
bool queues_before(const SchedSeq& a, const SchedSeq& b, SchedulingPolicy policy);

struct SchedulerLimits {
  int max_num_seqs = 64;
  int token_budget = 2048;
  int block_size = 64;
  SchedulingPolicy policy = SchedulingPolicy::kFcfs;
};

struct SchedulerInput {
  std::vector<SchedSeq> running;  // in admission order
  std::vector<SchedSeq> waiting;  // in queue order (queues_before; preempted ones keep their place)
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
