// Safetensors reading (mmap, one file or sharded through model.safetensors.index.json) and
// writing. Every malformed input is an Error naming the file and, where known, the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace kimi {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the file's mapping
  size_t nbytes = 0;
  std::string file;  // path of the file holding it, for error messages

  int64_t numel() const;
  std::string shape_str() const;  // "[4096, 2304]"
};

// One mapped .safetensors file. Validates the header completely on open: header length within
// the file, valid JSON, known dtypes, shape × dtype size == byte count, offsets in range and
// not overlapping.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  // Parses bytes the caller keeps alive (no mapping; `name` stands for the path in errors).
  SafetensorsFile(const void* bytes, size_t size, const std::string& name);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  void parse();  // validates the mapped header, fills tensors_ and metadata_

  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;  // map_ is our mmap (else borrowed bytes)
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: model.safetensors, or the shards named by model.safetensors.index.json
// (every shard must exist and hold exactly the tensors the index maps to it).
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& dir);

  // nullptr when absent.
  const TensorInfo* find(const std::string& name) const;
  // Error naming the tensor when absent.
  const TensorInfo& get(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::string& dir() const { return dir_; }
  // The files it opened, in a fixed order (for tools that report per-file totals).
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  void load_index(const std::string& index_path);

  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> index_;
};

// Copies a tensor to fp32 (BF16, F16, F32, F8_E4M3).
std::vector<float> tensor_to_f32(const TensorInfo& t);

struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // numel × dtype_size bytes
};
// Writes one safetensors file (tensors laid out in the given order, 8-byte aligned header).
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace kimi
