// Scheduler and pool unit tests: pure functions of queue state, no model.
#include <gtest/gtest.h>

#include "core/check.h"
#include "runtime/pools.h"
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

}  // namespace
}  // namespace kimi
