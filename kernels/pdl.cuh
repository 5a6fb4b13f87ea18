// Device side of programmatic dependent launch (launch.h). Both are no-ops in a kernel launched
// without the PDL attribute.
#pragma once

namespace kimi::cuda {

// Blocks until every earlier kernel of the stream has completed and its memory is visible.
__device__ __forceinline__ void pdl_wait() {
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
}
// Lets the next PDL kernel of the stream be scheduled once every CTA of this grid has called it
// (or exited); it still waits in its pdl_wait() for this grid to complete.
__device__ __forceinline__ void pdl_launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

}  // namespace kimi::cuda
