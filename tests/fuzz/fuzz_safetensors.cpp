// Any bytes as a .safetensors file: either a clean kimi::Error or a valid parse whose tensors
// all lie inside the file.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/check.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/kimi-fuzz-" + std::to_string(getpid()) + ".safetensors";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size) std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    kimi::SafetensorsFile file(path);
    size_t total = 0;
    for (auto& [name, t] : file.tensors()) {
      if (t.nbytes > size) std::abort();  // a tensor larger than the file was accepted
      total += t.nbytes;
      // Reading every byte of an accepted tensor must stay inside the mapping (else SIGSEGV).
      if (t.dtype == kimi::DType::kBF16 || t.dtype == kimi::DType::kF32 || t.dtype == kimi::DType::kF16)
        (void)kimi::tensor_to_f32(t);
    }
    if (total > size) std::abort();  // overlapping tensors were accepted
  } catch (const kimi::Error&) {
  }
  return 0;
}
