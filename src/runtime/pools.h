// Cache pools, sized once at start-up:
//   BlockPool: MLA latent-cache blocks of kBlockSize tokens, reference counted so that sequences
//     can share full blocks (n > 1 samples of one prompt; the prefix cache's prompts);
//   SlotPool: KDA state slots (recurrent + conv state), one per running sequence (the prefix
//     cache's state copies live in slots of their own, runtime/prefix_cache.h).
#pragma once

#include <vector>

namespace kimi {

class BlockPool {
 public:
  explicit BlockPool(int num_blocks);
  int num_blocks() const { return int(ref_.size()); }
  int num_free() const { return int(free_.size()); }
  // Takes n blocks, or none (returns false) if fewer are free.
  bool allocate(int n, std::vector<int>& out);
  void retain(int block);   // one more holder
  void release(int block);  // one holder fewer; back to the free list at zero
  int ref_count(int block) const { return ref_[block]; }

 private:
  std::vector<int> ref_;
  std::vector<int> free_;  // LIFO: recently freed blocks are reused first (warm in cache)
};

class SlotPool {
 public:
  explicit SlotPool(int num_slots);
  int num_slots() const { return int(used_.size()); }
  int num_free() const { return int(free_.size()); }
  int allocate();  // -1 when none is free
  void release(int slot);

 private:
  std::vector<char> used_;
  std::vector<int> free_;
};

}  // namespace kimi
