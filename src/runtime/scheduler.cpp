#include "runtime/scheduler.h"

#include <algorithm>

#include "core/check.h"

namespace kimi {

int blocks_for_tokens(int tokens, int block_size) { return (tokens + block_size - 1) / block_size; }

SchedulingPolicy parse_scheduling_policy(const std::string& name) {
  if (name == "fcfs") return SchedulingPolicy::kFcfs;
  if (name == "priority") return SchedulingPolicy::kPriority;
  fail("scheduling policy must be fcfs or priority, got '", name, "'");
}

bool queues_before(const SchedSeq& a, const SchedSeq& b, SchedulingPolicy policy) {
  if (policy == SchedulingPolicy::kPriority && a.priority != b.priority)
    return a.priority < b.priority;
  return a.arrival < b.arrival;
}

namespace {
// The tokens s takes this step within `budget`: the rest of what it knows, up to its stop point.
int tokens_this_step(const SchedSeq& s, int budget) {
  int n = std::min(s.num_tokens - s.num_computed, budget);
  if (s.stop_at > s.num_computed) n = std::min(n, s.stop_at - s.num_computed);
  return n;
}

// The running sequence to preempt: FCFS the last admitted, priority the last in queue order.
size_t victim(const std::vector<SchedSeq>& live, SchedulingPolicy policy) {
  if (policy == SchedulingPolicy::kFcfs) return live.size() - 1;
  auto last = std::max_element(live.begin(), live.end(), [&](const SchedSeq& a, const SchedSeq& b) {
    return queues_before(a, b, policy);
  });
  return size_t(last - live.begin());
}
}  // namespace

SchedulerOutput schedule(const SchedulerInput& in, const SchedulerLimits& lim) {
  SchedulerOutput out;
  int budget = lim.token_budget;
  int free_blocks = in.free_blocks, free_slots = in.free_slots;
  std::vector<SchedSeq> live = in.running;

  for (size_t i = 0; i < live.size() && budget > 0;) {
    const SchedSeq s = live[i];
    int n = tokens_this_step(s, budget);
    if (n <= 0) {
      ++i;
      continue;
    }
    int need = blocks_for_tokens(s.num_computed + n, lim.block_size) - s.num_blocks;
    bool self_preempted = false;
    while (need > free_blocks) {
      const size_t v = victim(live, lim.policy);  // may be this one
      const SchedSeq gone = live[v];
      live.erase(live.begin() + std::ptrdiff_t(v));
      out.preempted.push_back(gone.id);
      free_blocks += gone.num_blocks - gone.shared_blocks;
      ++free_slots;
      if (v == i) {
        self_preempted = true;
        break;
      }
      if (v < i) {
        // Priority only: it was scheduled earlier in this step; its tokens and blocks come back.
        --i;
        auto it = std::find_if(out.scheduled.begin(), out.scheduled.end(),
                               [&](const ScheduledSeq& x) { return x.id == gone.id; });
        if (it != out.scheduled.end()) {
          budget += it->num_new_tokens;
          free_blocks += it->new_blocks;
          out.scheduled.erase(it);
        }
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
