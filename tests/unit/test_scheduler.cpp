// Scheduler and pool unit tests: pure functions of queue state, no model.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/check.h"
#include "runtime/pools.h"
#include "runtime/prefix_cache.h"
#include "runtime/scheduler.h"

namespace kimi {
namespace {

SchedulerLimits limits(int seqs, int budget) { return {seqs, budget, 64}; }

TEST(Scheduler, DecodesThenAdmitsFcfsWithinBudget) {
  SchedulerInput in;
  in.running = {{0, 100, 99, 2}, {1, 10, 9, 1}};
  in.waiting = {{2, 50, 0, 0}, {3, 500, 0, 0}, {4, 5, 0, 0}};
  in.free_blocks = 100;
  in.free_slots = 10;
  SchedulerOutput out = schedule(in, limits(8, 100));
  ASSERT_EQ(out.scheduled.size(), 4u);
  EXPECT_EQ(out.scheduled[0].id, 0);
  EXPECT_EQ(out.scheduled[0].num_new_tokens, 1);
  EXPECT_EQ(out.scheduled[1].num_new_tokens, 1);
  EXPECT_EQ(out.scheduled[2].id, 2);
  EXPECT_EQ(out.scheduled[2].num_new_tokens, 50);
  EXPECT_TRUE(out.scheduled[2].admitted);
  // Chunked prefill: the long prompt gets the rest of the budget, not its whole length.
  EXPECT_EQ(out.scheduled[3].id, 3);
  EXPECT_EQ(out.scheduled[3].num_new_tokens, 48);
  EXPECT_EQ(out.scheduled[3].new_blocks, 1);
  EXPECT_TRUE(out.preempted.empty());
}

TEST(Scheduler, RespectsRunningCapAndSlots) {
  SchedulerInput in;
  in.running = {{0, 10, 9, 1}};
  in.waiting = {{1, 5, 0, 0}, {2, 5, 0, 0}, {3, 5, 0, 0}};
  in.free_blocks = 100;
  in.free_slots = 100;
  SchedulerOutput out = schedule(in, limits(3, 1000));
  EXPECT_EQ(out.scheduled.size(), 3u);  // 1 running + 2 admitted = cap 3
  in.free_slots = 1;
  out = schedule(in, limits(8, 1000));
  EXPECT_EQ(out.scheduled.size(), 2u);
}

TEST(Scheduler, NoSkippingAheadWhenBlocksRunOut) {
  SchedulerInput in;
  in.waiting = {{0, 640, 0, 0}, {1, 10, 0, 0}};
  in.free_blocks = 5;
  in.free_slots = 4;
  SchedulerOutput out = schedule(in, limits(8, 4096));
  EXPECT_TRUE(out.scheduled.empty());  // the first needs 10 blocks; the second must wait
}

TEST(Scheduler, PreemptsNewestWhenBlocksRunOut) {
  SchedulerInput in;
  // Both sit at a block boundary: each needs one more block to decode.
  in.running = {{0, 129, 128, 2}, {1, 65, 64, 1}, {2, 65, 64, 1}};
  in.waiting = {{3, 5, 0, 0}};
  in.free_blocks = 1;
  in.free_slots = 0;
  SchedulerOutput out = schedule(in, limits(8, 100));
  // Seq 0 takes the free block; seq 1 needs one: seq 2 (newest) is preempted, freeing one.
  ASSERT_EQ(out.preempted.size(), 1u);
  EXPECT_EQ(out.preempted[0], 2);
  ASSERT_EQ(out.scheduled.size(), 2u);
  EXPECT_EQ(out.scheduled[0].id, 0);
  EXPECT_EQ(out.scheduled[1].id, 1);
  EXPECT_EQ(out.scheduled[1].new_blocks, 1);
}

TEST(Scheduler, PreemptsItselfWhenNothingElseCanGo) {
  SchedulerInput in;
  in.running = {{0, 129, 128, 2}};
  in.free_blocks = 0;
  in.free_slots = 0;
  SchedulerOutput out = schedule(in, limits(8, 100));
  ASSERT_EQ(out.preempted, std::vector<int>{0});
  EXPECT_TRUE(out.scheduled.empty());
}

// A victim's shared blocks (held by its siblings or the prefix cache too) free nothing: the
// scheduler preempts until the blocks it counts on are really freed.
TEST(Scheduler, SharedBlocksAreNotCountedAsFreedByPreemption) {
  SchedulerInput in;
  in.running = {{0, 129, 128, 2}, {1, 65, 64, 1, 1}, {2, 65, 64, 1}};
  in.free_blocks = 0;
  in.free_slots = 0;
  SchedulerOutput out = schedule(in, limits(8, 100));
  // Seq 0 needs a block: seq 2 frees one. Seq 1 needs one: preempting itself frees nothing.
  ASSERT_EQ(out.preempted, (std::vector<int>{2, 1}));
  ASSERT_EQ(out.scheduled.size(), 1u);
  EXPECT_EQ(out.scheduled[0].id, 0);
}

TEST(Scheduler, BudgetSplitsALongPromptAcrossSteps) {
  SchedulerInput in;
  in.running = {{0, 1000, 256, 4}};
  in.free_blocks = 100;
  in.free_slots = 1;
  SchedulerOutput out = schedule(in, limits(8, 256));
  ASSERT_EQ(out.scheduled.size(), 1u);
  EXPECT_EQ(out.scheduled[0].num_new_tokens, 256);
  EXPECT_EQ(out.scheduled[0].new_blocks, 4);
}

// A prefix-cache point ahead ends the chunk there (the state is saved at it); the rest of the
// budget goes to the others; a point already passed or reached changes nothing.
TEST(Scheduler, ChunkEndsAtTheStopPoint) {
  SchedulerInput in;
  in.running = {{0, 1000, 64, 1, 0, 300}, {1, 500, 100, 2, 0, 100}};
  in.waiting = {{2, 400, 0, 0, 0, 130}};
  in.free_blocks = 100;
  in.free_slots = 1;
  SchedulerOutput out = schedule(in, limits(8, 1024));
  ASSERT_EQ(out.scheduled.size(), 3u);
  EXPECT_EQ(out.scheduled[0].num_new_tokens, 236);  // 64 -> 300
  EXPECT_EQ(out.scheduled[0].new_blocks, 4);        // 5 blocks for 300 tokens, 1 held
  EXPECT_EQ(out.scheduled[1].num_new_tokens, 400);  // its point is reached: the rest
  EXPECT_EQ(out.scheduled[2].num_new_tokens, 130);  // admitted, up to its point
  EXPECT_EQ(out.scheduled[2].new_blocks, 3);
}

// Priority policy (vLLM's --scheduling-policy priority): the queue orders by (priority, arrival),
// lower first; fcfs by arrival alone.
SchedulerLimits priority_limits(int seqs, int budget) {
  SchedulerLimits l = limits(seqs, budget);
  l.policy = SchedulingPolicy::kPriority;
  return l;
}

SchedSeq keyed(int id, int64_t priority, uint64_t arrival) {
  SchedSeq s{id, 10, 0, 0};
  s.priority = priority;
  s.arrival = arrival;
  return s;
}

TEST(Scheduler, QueueOrderByPolicy) {
  std::vector<SchedSeq> q = {keyed(0, 5, 0), keyed(1, 0, 1), keyed(2, 5, 2), keyed(3, -3, 3),
                             keyed(4, 0, 4)};
  auto order = [&](SchedulingPolicy p) {
    std::vector<SchedSeq> v = q;
    std::reverse(v.begin(), v.end());  // the input order must not matter
    std::sort(v.begin(), v.end(),
              [&](const SchedSeq& a, const SchedSeq& b) { return queues_before(a, b, p); });
    std::vector<int> ids;
    for (const SchedSeq& s : v) ids.push_back(s.id);
    return ids;
  };
  // Lower priority values first; equal priorities by arrival.
  EXPECT_EQ(order(SchedulingPolicy::kPriority), (std::vector<int>{3, 1, 4, 0, 2}));
  EXPECT_EQ(order(SchedulingPolicy::kFcfs), (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(parse_scheduling_policy("fcfs"), SchedulingPolicy::kFcfs);
  EXPECT_EQ(parse_scheduling_policy("priority"), SchedulingPolicy::kPriority);
  EXPECT_THROW(parse_scheduling_policy("sjf"), Error);
}

// Four running sequences at a block boundary (each needs a block), one free block. fcfs
// preempts the last admitted; priority the highest value, the latest among equals.
TEST(Scheduler, PriorityPreemptsTheLastInQueueOrder) {
  SchedulerInput in;
  in.running = {{0, 65, 64, 1}, {1, 65, 64, 1}, {2, 65, 64, 1}, {3, 65, 64, 1}};
  const int64_t prio[] = {0, 5, 5, 1};
  const uint64_t arrival[] = {0, 1, 2, 3};
  for (int i = 0; i < 4; ++i) {
    in.running[size_t(i)].priority = prio[i];
    in.running[size_t(i)].arrival = arrival[i];
  }
  in.free_blocks = 1;
  SchedulerOutput fcfs = schedule(in, limits(8, 100));
  EXPECT_EQ(fcfs.preempted, (std::vector<int>{3, 2}));
  SchedulerOutput prio_out = schedule(in, priority_limits(8, 100));
  // Seq 0 takes the free block; seq 1 needs one: seq 2 (priority 5, later than seq 1) goes; seq 3
  // (priority 1) needs one: seq 1 (priority 5) goes, though it was scheduled already.
  EXPECT_EQ(prio_out.preempted, (std::vector<int>{2, 1}));
  ASSERT_EQ(prio_out.scheduled.size(), 2u);
  EXPECT_EQ(prio_out.scheduled[0].id, 0);
  EXPECT_EQ(prio_out.scheduled[1].id, 3);
  EXPECT_EQ(prio_out.scheduled[1].new_blocks, 1);
}

// A victim scheduled earlier in the step gives back its tokens and its new blocks, which the
// sequences after it then get.
TEST(Scheduler, PriorityVictimScheduledThisStepGivesBackBudgetAndBlocks) {
  SchedulerInput in;
  // 0: the rest of a prompt; 1: a decode at a block boundary; 2: a decode within its block.
  in.running = {{0, 150, 64, 1}, {1, 65, 64, 1}, {2, 10, 9, 1}};
  const int64_t prio[] = {9, 0, 0};
  for (int i = 0; i < 3; ++i) {
    in.running[size_t(i)].priority = prio[i];
    in.running[size_t(i)].arrival = uint64_t(i);
  }
  in.free_blocks = 2;
  SchedulerOutput out = schedule(in, priority_limits(8, 87));
  // Seq 0 takes 86 tokens and both free blocks; seq 1 needs a block: seq 0 is preempted, which
  // frees its own block and the two new ones and returns its 86 tokens, so seq 2 still fits.
  EXPECT_EQ(out.preempted, std::vector<int>{0});
  ASSERT_EQ(out.scheduled.size(), 2u);
  EXPECT_EQ(out.scheduled[0].id, 1);
  EXPECT_EQ(out.scheduled[0].new_blocks, 1);
  EXPECT_EQ(out.scheduled[1].id, 2);
  EXPECT_EQ(out.scheduled[1].num_new_tokens, 1);
  // fcfs: seq 2, the last admitted, goes instead, and the budget ends with seq 1.
  SchedulerOutput fcfs = schedule(in, limits(8, 87));
  EXPECT_EQ(fcfs.preempted, std::vector<int>{2});
  ASSERT_EQ(fcfs.scheduled.size(), 2u);
  EXPECT_EQ(fcfs.scheduled[0].id, 0);
  EXPECT_EQ(fcfs.scheduled[1].id, 1);
}

// The sequence that needs a block is itself the lowest priority: it preempts itself, the running
// pass stops there, and nothing is admitted in that step.
TEST(Scheduler, PriorityPreemptsItselfAndAdmitsNothing) {
  SchedulerInput in;
  in.running = {{0, 65, 64, 1}, {1, 10, 9, 1}};
  in.running[0].priority = 4;
  in.running[1].arrival = 1;
  in.waiting = {keyed(2, -1, 2)};
  in.free_blocks = 0;
  in.free_slots = 4;
  SchedulerOutput out = schedule(in, priority_limits(8, 100));
  EXPECT_EQ(out.preempted, std::vector<int>{0});
  EXPECT_TRUE(out.scheduled.empty());
}

TEST(Pools, BlockRefCountsAndFreeList) {
  BlockPool p(4);
  std::vector<int> got;
  ASSERT_TRUE(p.allocate(3, got));
  EXPECT_EQ(p.num_free(), 1);
  EXPECT_FALSE(p.allocate(2, got));  // all or nothing
  EXPECT_EQ(got.size(), 3u);
  p.retain(got[0]);
  p.release(got[0]);
  EXPECT_EQ(p.num_free(), 1);  // still held once
  p.release(got[0]);
  EXPECT_EQ(p.num_free(), 2);
  EXPECT_THROW(p.release(got[0]), Error);  // double free is caught
  EXPECT_THROW(p.retain(got[0]), Error);
}

TEST(Pools, Slots) {
  SlotPool p(2);
  int a = p.allocate(), b = p.allocate();
  EXPECT_NE(a, b);
  EXPECT_EQ(p.allocate(), -1);
  p.release(a);
  EXPECT_EQ(p.num_free(), 1);
  EXPECT_THROW(p.release(a), Error);
  EXPECT_EQ(p.allocate(), a);
}

// Prefix cache bookkeeping: the longest proper-prefix match, LRU eviction that skips pinned
// entries, block references taken and returned, reclaimable counts.
TEST(PrefixCache, MatchesTheLongestProperPrefixAndEvictsLeastRecentlyUsed) {
  BlockPool pool(16);
  std::vector<int> a_blocks, b_blocks, c_blocks;
  ASSERT_TRUE(pool.allocate(2, a_blocks));  // a sequence's blocks (100 tokens)
  ASSERT_TRUE(pool.allocate(3, b_blocks));
  ASSERT_TRUE(pool.allocate(1, c_blocks));
  PrefixCache cache({10, 11}, pool);
  std::vector<int> a(100), b(150), c(40);
  for (int i = 0; i < 100; ++i) a[size_t(i)] = i;
  for (int i = 0; i < 150; ++i) b[size_t(i)] = i < 100 ? i : 1000 + i;  // extends a
  for (int i = 0; i < 40; ++i) c[size_t(i)] = 7;
  EXPECT_EQ(cache.insert(a, a_blocks, 64), std::optional<int>(10));
  EXPECT_EQ(pool.ref_count(a_blocks[0]), 2);
  EXPECT_EQ(cache.insert(a, a_blocks, 64), std::nullopt);  // cached already
  EXPECT_EQ(cache.insert(b, b_blocks, 64), std::optional<int>(11));
  // b's prompt + more: b is the longest proper prefix; a's prompt itself matches nothing.
  std::vector<int> b_more = b;
  b_more.push_back(5);
  ASSERT_TRUE(cache.match(b_more).has_value());
  EXPECT_EQ(cache.entry(*cache.match(b_more)).slot, 11);
  EXPECT_FALSE(cache.match(a).has_value());
  std::vector<int> a_more = a;
  a_more.push_back(1);
  EXPECT_EQ(cache.entry(*cache.match(a_more)).slot, 10);  // a now used more recently than b
  std::vector<int> other = a_more;
  other[3] = -1;
  EXPECT_FALSE(cache.match(other).has_value());
  // Held by the sequences too: nothing to reclaim yet.
  EXPECT_EQ(cache.reclaimable_blocks(), 0);
  for (int x : b_blocks) pool.release(x);  // b's sequence finished
  EXPECT_EQ(cache.reclaimable_blocks(), 3);
  // Full: a new entry evicts the least recently used unpinned one (b), whose blocks return.
  const int free_before = pool.num_free();
  EXPECT_EQ(cache.insert(c, c_blocks, 64), std::optional<int>(11));
  EXPECT_EQ(pool.num_free(), free_before + 3);
  EXPECT_EQ(cache.entry(*cache.match(b_more)).tokens.size(), 100u);  // only a is left of it
  // Pinned entries stay; with both pinned nothing is evicted or inserted.
  const int ia = *cache.match(a_more);
  cache.pin(ia);
  cache.pin(*cache.match(std::vector<int>(41, 7)));
  EXPECT_FALSE(cache.evict_one());
  std::vector<int> d_blocks;
  ASSERT_TRUE(pool.allocate(3, d_blocks));
  EXPECT_EQ(cache.insert(b, d_blocks, 64), std::nullopt);
  EXPECT_EQ(pool.ref_count(d_blocks[0]), 1);
  cache.unpin(ia);
  EXPECT_THROW(cache.unpin(ia), Error);
  EXPECT_TRUE(cache.evict_one());  // a
  EXPECT_EQ(cache.num_entries(), 1);
  EXPECT_EQ(pool.ref_count(a_blocks[0]), 1);  // back to the sequence's own reference
}

// Heads shared between prompts: the longest block-aligned head (shorter than the prompt) that an
// earlier prompt also started with; a prompt never matches itself; old heads are forgotten.
TEST(PrefixCache, SharedHeadIsTheLongestBlockAlignedHeadSeenBefore) {
  BlockPool pool(4);
  PrefixCache cache({0}, pool);
  std::vector<int> a(300), b(300), c(200);
  for (int i = 0; i < 300; ++i) a[size_t(i)] = i;
  b = a;
  b[150] = -1;  // shares 150 tokens with a: heads 64 and 128
  for (int i = 0; i < 200; ++i) c[size_t(i)] = 5000 + i;
  EXPECT_EQ(cache.shared_head(a, 64), 0);
  EXPECT_EQ(cache.shared_head(b, 64), 128);
  EXPECT_EQ(cache.shared_head(c, 64), 0);
  // The same prompt again: its longest head shorter than itself (256 of 300; 128 of 129; none of
  // 64, which must leave a token to compute).
  EXPECT_EQ(cache.shared_head(a, 64), 256);
  const std::vector<int> a129(a.begin(), a.begin() + 129), a64(a.begin(), a.begin() + 64);
  EXPECT_EQ(cache.shared_head(a129, 64), 128);
  EXPECT_EQ(cache.shared_head(a64, 64), 0);
  EXPECT_EQ(cache.shared_head(std::vector<int>(), 64), 0);
  // Other block sizes, and a difference inside the first block: no head.
  std::vector<int> d = a;
  d[3] = -7;
  EXPECT_EQ(cache.shared_head(d, 64), 0);
  EXPECT_EQ(cache.shared_head(b, 100), 0);  // no 100-token head was remembered before
  EXPECT_EQ(cache.shared_head(a, 100), 100);
  // Past kSeenHeads heads the oldest are forgotten: a's heads go, a recent prompt's stay.
  std::vector<int> filler(PrefixCache::kSeenHeads + 2);
  for (size_t i = 0; i < filler.size(); ++i) filler[i] = int(100000 + i);
  EXPECT_EQ(cache.shared_head(filler, 1), 0);
  std::vector<int> e(filler.begin(), filler.begin() + 10);
  e.push_back(-3);
  EXPECT_EQ(cache.shared_head(e, 1), 10);
  EXPECT_EQ(cache.shared_head(a, 64), 0);
}

}  // namespace
}  // namespace kimi
