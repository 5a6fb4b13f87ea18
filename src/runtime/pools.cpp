#include "runtime/pools.h"

#include "core/check.h"

namespace kimi {

BlockPool::BlockPool(int num_blocks) : ref_(num_blocks, 0) {
  KIMI_CHECK(num_blocks >= 1);
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

bool BlockPool::allocate(int n, std::vector<int>& out) {
  if (n > num_free()) return false;
  for (int i = 0; i < n; ++i) {
    int b = free_.back();
    free_.pop_back();
    ref_[b] = 1;
    out.push_back(b);
  }
  return true;
}

void BlockPool::retain(int block) {
  KIMI_CHECK(block >= 0 && block < num_blocks() && ref_[block] > 0, "retain of free block ", block);
  ++ref_[block];
}

void BlockPool::release(int block) {
  KIMI_CHECK(block >= 0 && block < num_blocks() && ref_[block] > 0, "release of free block ", block);
  if (--ref_[block] == 0) free_.push_back(block);
}

SlotPool::SlotPool(int num_slots) : used_(num_slots, 0) {
  KIMI_CHECK(num_slots >= 1);
  for (int s = num_slots - 1; s >= 0; --s) free_.push_back(s);
}

int SlotPool::allocate() {
  if (free_.empty()) return -1;
  int s = free_.back();
  free_.pop_back();
  used_[s] = 1;
  return s;
}

void SlotPool::release(int slot) {
  KIMI_CHECK(slot >= 0 && slot < num_slots() && used_[slot], "release of free slot ", slot);
  used_[slot] = 0;
  free_.push_back(slot);
}

}  // namespace kimi
