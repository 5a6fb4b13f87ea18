// DeviceBuffer<T>: an owning, move-only cudaMalloc allocation of n elements of T.
// For start-up allocations (the arena, weights, state pools), tests and benchmarks; never on the
// hot path. Every call is checked; the destructor never throws (a failed free is ignored there
// because a sticky fault has already been reported by the call that caused it).
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include "common.h"

namespace kimi::cuda {

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n_ > 0) CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), n_ * sizeof(T)));
  }
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }

  void reset() noexcept {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    n_ = 0;
  }

  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }

  // Copies host[0, n) into elements [offset, offset + n).
  void upload(const T* host, size_t n, size_t offset = 0) {
    KIMI_CHECK(offset + n <= n_, "upload of ", n, " elements at ", offset, " into ", n_);
    CUDA_CHECK(cudaMemcpy(ptr_ + offset, host, n * sizeof(T), cudaMemcpyHostToDevice));
  }
  void upload(const std::vector<T>& host, size_t offset = 0) {
    upload(host.data(), host.size(), offset);
  }
  void download(T* host, size_t n, size_t offset = 0) const {
    KIMI_CHECK(offset + n <= n_, "download of ", n, " elements at ", offset, " from ", n_);
    CUDA_CHECK(cudaMemcpy(host, ptr_ + offset, n * sizeof(T), cudaMemcpyDeviceToHost));
  }
  std::vector<T> to_host() const {
    std::vector<T> h(n_);
    if (n_) download(h.data(), n_);
    return h;
  }
  // Sets every byte to `value` (0xff poisons floats with NaN, bf16 too).
  void fill_bytes(int value) {
    if (n_) CUDA_CHECK(cudaMemset(ptr_, value, bytes()));
  }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

}  // namespace kimi::cuda
