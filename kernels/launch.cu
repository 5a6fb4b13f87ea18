// The process-wide PDL switch of launch.h.
#include <atomic>

#include "launch.h"

namespace kimi::cuda {

namespace {
std::atomic<bool> g_pdl{true};
}

void set_pdl_enabled(bool on) { g_pdl.store(on, std::memory_order_relaxed); }
bool pdl_enabled() { return g_pdl.load(std::memory_order_relaxed); }

}  // namespace kimi::cuda
