// Safetensors format: [u64 little-endian header length N][N bytes of JSON header][data section].
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} with offsets
// relative to the start of the data section, plus an optional "__metadata__" string map.
#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/check.h"

namespace kimi {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // real headers are a few MB at most
constexpr const char* kMetadataKey = "__metadata__";

// numel × element size, or false on overflow past int64.
bool checked_nbytes(const std::vector<int64_t>& shape, size_t elem, uint64_t* out) {
  unsigned __int128 n = elem;
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) n = 0;
  for (int64_t d : shape) {
    n *= uint64_t(d);
    if (n > uint64_t(INT64_MAX)) return false;
  }
  *out = uint64_t(n);
  return true;
}

// Parses JSON and reports the first key that repeats inside one object (nlohmann silently keeps
// one of the two values, which would hide a duplicated tensor).
json parse_json_no_duplicates(const char* begin, const char* end, std::string* duplicate,
                              int* duplicate_depth) {
  std::vector<std::set<std::string>> keys;
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) keys.emplace_back();
    else if (ev == json::parse_event_t::object_end) keys.pop_back();
    else if (ev == json::parse_event_t::key && !keys.empty() && duplicate->empty()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second) {
        *duplicate = k;
        *duplicate_depth = depth;
      }
    }
    return true;
  };
  return json::parse(begin, end, cb);
}

std::string describe(const json& v) {
  std::string s = v.dump();
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

}  // namespace

int64_t TensorInfo::numel() const {
  // Validated shapes fit in int64 unless a zero dimension makes the rest irrelevant.
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorInfo::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail(path, ": cannot stat: ", std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, ": not a regular file");
  }
  size_t size = size_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail(path, ": file is ", size, " bytes, shorter than the 8-byte header length (truncated?)");
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) fail(path, ": mmap of ", size, " bytes failed: ", std::strerror(map_errno));
  map_ = map;
  size_ = size;
  mapped_ = true;
  try {
    parse();
  } catch (...) {
    ::munmap(map_, size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::SafetensorsFile(const void* bytes, size_t size, const std::string& name)
    : path_(name), map_(const_cast<void*>(bytes)), size_(size) {
  if (size < 8) fail(name, ": ", size, " bytes, shorter than the 8-byte header length (truncated?)");
  parse();
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ && mapped_) ::munmap(map_, size_);
}

void SafetensorsFile::parse() {
  const auto* bytes = static_cast<const uint8_t*>(map_);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxHeaderBytes)
    fail(path_, ": header length ", header_len, " is absurd (more than ", kMaxHeaderBytes,
         " bytes); not a safetensors file?");
  if (8 + header_len > size_)
    fail(path_, ": header length ", header_len, " runs past the end of the file (", size_,
         " bytes; truncated?)");
  const char* hbegin = reinterpret_cast<const char*>(bytes + 8);
  const uint8_t* data = bytes + 8 + header_len;
  const uint64_t data_size = size_ - 8 - header_len;

  json header;
  std::string dup;
  int dup_depth = 0;
  try {
    header = parse_json_no_duplicates(hbegin, hbegin + header_len, &dup, &dup_depth);
  } catch (const json::exception& e) {
    fail(path_, ": invalid JSON header: ", e.what());
  }
  if (!dup.empty()) {
    if (dup_depth <= 1) fail(path_, ": tensor '", dup, "' appears twice in the header");
    fail(path_, ": header has the key '", dup, "' twice inside one entry");
  }
  if (!header.is_object()) fail(path_, ": header must be a JSON object, got ", header.type_name());

  struct Span {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == kMetadataKey) {
      if (!v.is_object()) fail(path_, ": __metadata__ must be an object of strings, got ", v.type_name());
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail(path_, ": __metadata__ entry '", m.key(), "' must be a string, got ", describe(m.value()));
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](auto&&... why) { fail(path_, ": tensor '", name, "': ", why...); };
    if (!v.is_object()) bad("entry must be an object, got ", v.type_name());
    for (const char* key : {"dtype", "shape", "data_offsets"})
      if (!v.contains(key)) bad("missing '", key, "'");

    TensorInfo t;
    t.name = name;
    t.file = path_;
    const json& jd = v.at("dtype");
    if (!jd.is_string()) bad("dtype must be a string, got ", describe(jd));
    if (!dtype_from_name(jd.get<std::string>(), &t.dtype))
      bad("unknown dtype '", jd.get<std::string>(),
          "' (supported: BF16, F16, F32, F8_E4M3, I32, I64, U8)");

    const json& js = v.at("shape");
    if (!js.is_array()) bad("shape must be a list of non-negative integers, got ", describe(js));
    for (const json& d : js) {
      if (!d.is_number_integer() || (d.is_number_unsigned() && d.get<uint64_t>() > uint64_t(INT64_MAX)) ||
          d.get<int64_t>() < 0)
        bad("shape must be a list of non-negative integers, got ", describe(js));
      t.shape.push_back(d.get<int64_t>());
    }

    const json& jo = v.at("data_offsets");
    auto offset_ok = [](const json& x) { return x.is_number_unsigned(); };
    if (!jo.is_array() || jo.size() != 2 || !offset_ok(jo[0]) || !offset_ok(jo[1]))
      bad("data_offsets must be [begin, end] with non-negative integers, got ", describe(jo));
    uint64_t begin = jo[0].get<uint64_t>(), end = jo[1].get<uint64_t>();
    if (end < begin) bad("data_offsets [", begin, ", ", end, "] end before begin");

    uint64_t want = 0;
    if (!checked_nbytes(t.shape, dtype_size(t.dtype), &want))
      bad("shape ", t.shape_str(), " is too large");
    if (end - begin != want)
      bad("dtype ", dtype_name(t.dtype), " and shape ", t.shape_str(), " need ", want,
          " bytes but data_offsets [", begin, ", ", end, "] hold ", end - begin);
    if (end > data_size)
      bad("data_offsets [", begin, ", ", end, "] lie outside the data section (", data_size,
          " bytes; truncated file?)");
    t.data = data + begin;
    t.nbytes = size_t(want);
    auto [pos, inserted] = tensors_.emplace(name, std::move(t));
    if (want > 0) spans.push_back({begin, end, &pos->first});
  }

  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].begin < spans[i - 1].end)
      fail(path_, ": tensors '", *spans[i - 1].name, "' [", spans[i - 1].begin, ", ",
           spans[i - 1].end, ") and '", *spans[i].name, "' [", spans[i].begin, ", ", spans[i].end,
           ") overlap");
}

// ---------------------------------------------------------------------------------------------

Checkpoint::Checkpoint(const std::string& dir) : dir_(dir) {
  const fs::path d(dir);
  const fs::path index_path = d / "model.safetensors.index.json";
  const fs::path single_path = d / "model.safetensors";
  std::error_code ec;
  if (fs::exists(index_path, ec)) {
    load_index(index_path.string());
  } else if (fs::exists(single_path, ec)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single_path.string()));
    for (auto& [name, t] : files_.back()->tensors()) index_[name] = &t;
  } else {
    fail("no model.safetensors or model.safetensors.index.json in ", dir);
  }
}

void Checkpoint::load_index(const std::string& index_path) {
  std::ifstream in(index_path, std::ios::binary);
  if (!in) fail(index_path, ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::exception& e) {
    fail(index_path, ": invalid JSON: ", e.what());
  }
  if (!j.is_object()) fail(index_path, ": expected a JSON object");
  if (!j.contains("weight_map")) fail(index_path, ": 'weight_map' is missing");
  const json& wm = j.at("weight_map");
  if (!wm.is_object()) fail(index_path, ": 'weight_map' must be an object of tensor -> shard file");

  // shard file -> tensors the index maps to it (both ordered, so errors are deterministic).
  std::map<std::string, std::vector<std::string>> by_shard;
  for (auto it = wm.begin(); it != wm.end(); ++it) {
    if (!it.value().is_string())
      fail(index_path, ": weight_map entry for tensor '", it.key(), "' must be a file name");
    std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..")
      fail(index_path, ": tensor '", it.key(), "' maps to '", shard,
           "', which is not a plain file name in the checkpoint directory");
    by_shard[shard].push_back(it.key());
  }
  if (by_shard.empty()) fail(index_path, ": weight_map is empty");

  for (auto& [shard, names] : by_shard) {
    fs::path p = fs::path(dir_) / shard;
    std::error_code ec;
    if (!fs::exists(p, ec))
      fail(index_path, ": shard '", shard, "' (holding tensor '", names.front(), "') is missing: ",
           p.string());
    files_.push_back(std::make_unique<SafetensorsFile>(p.string()));
    const SafetensorsFile& f = *files_.back();
    for (const std::string& name : names) {
      auto t = f.tensors().find(name);
      if (t == f.tensors().end())
        fail(f.path(), ": tensor '", name, "' is mapped to this shard by ", index_path,
             " but is not in it");
      index_[name] = &t->second;
    }
    if (f.tensors().size() != names.size()) {
      for (auto& [name, t] : f.tensors()) {
        auto m = wm.find(name);
        if (m == wm.end())
          fail(f.path(), ": tensor '", name, "' is in the shard but not in ", index_path);
        if (m->get<std::string>() != shard)
          fail(f.path(), ": tensor '", name, "' is in this shard but ", index_path, " maps it to '",
               m->get<std::string>(), "'");
      }
    }
  }
}

const TensorInfo* Checkpoint::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

const TensorInfo& Checkpoint::get(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) fail(dir_, ": checkpoint has no tensor '", name, "'");
  return *t;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (auto& [name, t] : index_) out.push_back(name);
  return out;
}

// ---------------------------------------------------------------------------------------------

std::vector<float> tensor_to_f32(const TensorInfo& t) {
  switch (t.dtype) {
    case DType::kBF16: case DType::kF16: case DType::kF32: case DType::kF8E4M3: break;
    default:
      fail(t.file, ": tensor '", t.name, "': cannot convert dtype ", dtype_name(t.dtype), " to F32");
  }
  size_t n = size_t(t.numel());
  KIMI_CHECK(n * dtype_size(t.dtype) == t.nbytes, "tensor '", t.name, "' byte count");
  std::vector<float> out(n);
  if (n == 0) return out;
  // Offsets in a file need not be aligned to the element size; the converters read typed values.
  if (reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype) != 0) {
    std::vector<uint64_t> aligned((t.nbytes + 7) / 8);
    std::memcpy(aligned.data(), t.data, t.nbytes);
    convert_to_f32(t.dtype, aligned.data(), out.data(), n);
  } else {
    convert_to_f32(t.dtype, t.data, out.data(), n);
  }
  return out;
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& m = header[kMetadataKey] = nlohmann::ordered_json::object();
    for (auto& [k, v] : metadata) m[k] = v;
  }
  std::set<std::string> seen;
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    if (t.name.empty() || t.name == kMetadataKey)
      fail(path, ": cannot write a tensor named '", t.name, "'");
    if (!seen.insert(t.name).second) fail(path, ": tensor '", t.name, "' given twice");
    for (int64_t d : t.shape)
      if (d < 0) fail(path, ": tensor '", t.name, "' has a negative dimension");
    uint64_t nbytes = 0;
    if (!checked_nbytes(t.shape, dtype_size(t.dtype), &nbytes))
      fail(path, ": tensor '", t.name, "' is too large");
    if (nbytes > 0 && !t.data) fail(path, ": tensor '", t.name, "' has no data");
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + nbytes}}};
    sizes.push_back(nbytes);
    offset += nbytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // data section starts 8-byte aligned

  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(tmp, ": cannot create: ", std::strerror(errno));
  auto write_all = [&](const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      ssize_t w = ::write(fd, c, std::min<size_t>(n, size_t(1) << 30));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        int e = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        fail(tmp, ": write failed: ", std::strerror(e));
      }
      c += w;
      n -= size_t(w);
    }
  };
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(h.size()) >> (8 * i));
  write_all(len, 8);
  write_all(h.data(), h.size());
  for (size_t i = 0; i < tensors.size(); ++i) write_all(tensors[i].data, sizes[i]);
  int sync_rc = ::fsync(fd), sync_errno = errno;
  int close_rc = ::close(fd), close_errno = errno;
  if (sync_rc != 0 || close_rc != 0) {
    int e = sync_rc != 0 ? sync_errno : close_errno;
    ::unlink(tmp.c_str());
    fail(tmp, ": cannot flush: ", std::strerror(e));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    fail(path, ": cannot rename ", tmp, " into place: ", std::strerror(e));
  }
}

}  // namespace kimi
