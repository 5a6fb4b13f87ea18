#include "runtime/scheduler.h"

#include <algorithm>

namespace kimi {

int blocks_for_tokens(int tokens, int block_size) { return (tokens + block_size - 1) / block_size; }

namespace {
// The tokens s takes this step within `budget`: the rest of what it knows, up to its stop point.
int tokens_this_step(const SchedSeq& s, int budget) {
  int n = std::min(s.num_tokens - s.num_computed, budget);
  if (s.stop_at > s.num_computed) n = std::min(n, s.stop_at - s.num_computed);
  return n;
}
}  // namespace

SchedulerOutput schedule(const SchedulerInput& in, const SchedulerLimits& lim) {
  SchedulerOutput out;
  int budget = lim.token_budget;
  int free_blocks = in.free_blocks, free_slots = in.free_slots;
  std::vector<SchedSeq> live = in.running;

  for (size_t i = 0; i < live.size() && budget > 0;) {
    const SchedSeq& s = live[i];
    int n = tokens_this_step(s, budget);
    if (n <= 0) {
      ++i;
      continue;
    }
    int need = blocks_for_tokens(s.num_computed + n, lim.block_size) - s.num_blocks;
    bool self_preempted = false;
    while (need > free_blocks) {
      // Preempt the newest running sequence; it may be this one.
      SchedSeq victim = live.back();
      live.pop_back();
      out.preempted.push_back(victim.id);
      free_blocks += victim.num_blocks - victim.shared_blocks;
      ++free_slots;
      if (live.size() == i) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;
    free_blocks -= std::max(need, 0);
    budget -= n;
    out.scheduled.push_back({s.id, n, std::max(need, 0), false});
    ++i;
  }

  // Admission: none in a step that had to preempt (it would only thrash).
  if (out.preempted.empty()) {
    int running = int(live.size());
    for (const SchedSeq& w : in.waiting) {
      if (running >= lim.max_num_seqs || budget <= 0 || free_slots <= 0) break;
      int n = tokens_this_step(w, budget);
      int need = blocks_for_tokens(w.num_computed + n, lim.block_size) - w.num_blocks;
      if (need > free_blocks) break;
      free_blocks -= need;
      --free_slots;
      budget -= n;
      ++running;
      out.scheduled.push_back({w.id, n, need, true});
    }
  }
  return out;
}

}  // namespace kimi
