// Any bytes as a .safetensors file: either a clean kimi::Error or a valid parse whose tensors
// all lie inside the file. Parses from memory (the same validation as a mapped file) so a long
// run reaches millions of executions; ASan sees every out-of-bounds read of the copy.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "core/check.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // An exact-size heap copy, so reading one byte past the end is an ASan report.
  std::unique_ptr<uint8_t[]> copy(new uint8_t[size ? size : 1]);
  if (size) std::memcpy(copy.get(), data, size);
  try {
    kimi::SafetensorsFile file(copy.get(), size, "fuzz.safetensors");
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
