#include "bench/device.h"

#include "core/check.h"

#ifdef KIMI_HAVE_CUDA
#include <cuda_runtime.h>

#include <cstdio>

#include "model/cuda_model.h"
#include "model/tp_model.h"
#endif

namespace kimi::bench {

#ifdef KIMI_HAVE_CUDA
namespace {

bool cuda_ok(cudaError_t e, std::string* why, const char* what) {
  if (e == cudaSuccess) return true;
  if (why) *why = str(what, ": ", cudaGetErrorString(e));
  return false;
}

}  // namespace
#endif

std::optional<double> copy_bandwidth_gbps(const std::string& backend, std::string* why) {
  if (backend == "cpu") {
    if (why) *why = "n/a on CPU";
    return std::nullopt;
  }
#ifdef KIMI_HAVE_CUDA
  // 1 GiB device-to-device copies, timed with events after one warm-up copy; a copy reads and
  // writes every byte, so bandwidth = 2 · size / time.
  const size_t size = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  std::optional<double> result;
  if (cuda_ok(cudaMalloc(&a, size), why, "cudaMalloc") &&
      cuda_ok(cudaMalloc(&b, size), why, "cudaMalloc") &&
      cuda_ok(cudaEventCreate(&e0), why, "cudaEventCreate") &&
      cuda_ok(cudaEventCreate(&e1), why, "cudaEventCreate") &&
      cuda_ok(cudaMemcpy(b, a, size, cudaMemcpyDeviceToDevice), why, "cudaMemcpy")) {
    const int reps = 10;
    cudaEventRecord(e0);
    for (int i = 0; i < reps; ++i) cudaMemcpyAsync(b, a, size, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    float ms = 0;
    if (cuda_ok(cudaEventSynchronize(e1), why, "cudaEventSynchronize") &&
        cuda_ok(cudaEventElapsedTime(&ms, e0, e1), why, "cudaEventElapsedTime") && ms > 0)
      result = 2.0 * double(size) * reps / (double(ms) * 1e-3) / 1e9;
  }
  if (e0) cudaEventDestroy(e0);
  if (e1) cudaEventDestroy(e1);
  if (a) cudaFree(a);
  if (b) cudaFree(b);
  return result;
#else
  if (why)
    *why = str("backend '", backend, "' needs a CUDA build (this one has only the CPU backend)");
  return std::nullopt;
#endif
}

std::string device_memory_used(const std::string& backend) {
  if (backend == "cpu") return "n/a on CPU";
#ifdef KIMI_HAVE_CUDA
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return "unknown (cudaMemGetInfo failed)";
  char buf[96];
  std::snprintf(buf, sizeof buf, "%.2f GiB of %.2f GiB", double(total_b - free_b) / (1 << 30),
                double(total_b) / (1 << 30));
  return buf;
#else
  return "n/a (CPU build)";
#endif
}

std::unique_ptr<Model> random_weights_model(const ModelConfig& c, const ModelOptions& opts) {
  // The hook for full-size measurement without a checkpoint: a backend that can initialise its
  // weight buffers in place plugs in here. The CUDA backend draws them on the GPU.
#ifdef KIMI_HAVE_CUDA
  if (opts.backend == "cuda") {
    ModelOptions o = opts;
    o.random_weights = true;
    if (o.tensor_parallel > 1) return std::make_unique<TpModel>(c, nullptr, o);
    return std::make_unique<CudaModel>(c, nullptr, o);
  }
#else
  (void)c;
#endif
  if (opts.backend == "cpu")
    fail(
        "--random-weights: the CPU backend builds its weights only from a checkpoint "
        "(load_model reads safetensors; there is no in-place random initialisation). "
        "Write a random checkpoint with kimi-make-tiny and pass --model DIR instead.");
  fail("--random-weights: backend '", opts.backend,
       "' has no random-weight initialisation in this build yet (load_model only reads "
       "checkpoints)");
}

}  // namespace kimi::bench
