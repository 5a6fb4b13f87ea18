// Safetensors reader/writer: round trips, every malformed-header class, sharded checkpoints,
// the golden model-a checkpoint, and the scalar conversions in core/dtype.h.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>

#include "../error_of.h"
#include "core/check.h"
#include "core/dtype.h"
#include "model/safetensors.h"

namespace kimi {
namespace {

using test::error_of;

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            str("kimi_st_", info->test_suite_name(), "_", info->name(), "_", ::getpid());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string str_path() const { return path_.string(); }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = char(uint8_t(v >> (8 * i)));
  return s;
}

// A file with the given header text (length prefix computed) followed by `data_bytes` zero bytes.
std::string crafted(const std::string& header, size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\0');
}

// The message of the kimi::Error `f` throws; fails the test when it throws nothing.
void expect_contains(const std::string& msg, std::initializer_list<std::string> parts) {
  for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
}

// Opens a crafted file and checks the error names the file and every part.
void expect_open_error(const TempDir& dir, const std::string& bytes,
                       std::initializer_list<std::string> parts) {
  std::string path = dir.file("bad.safetensors");
  write_bytes(path, bytes);
  std::string msg = error_of([&] { SafetensorsFile f(path); });
  expect_contains(msg, {path});
  expect_contains(msg, parts);
}

// ------------------------------------------------------------------------------- round trips

TEST(Safetensors, RoundTripAllDtypes) {
  TempDir dir;
  std::vector<uint16_t> bf16 = {f32_to_bf16(1.f), f32_to_bf16(-2.5f), f32_to_bf16(0.125f),
                                f32_to_bf16(3e38f), f32_to_bf16(-0.f), f32_to_bf16(7.f)};
  std::vector<uint16_t> f16 = {f32_to_f16(1.5f), f32_to_f16(-65504.f), f32_to_f16(0.000061035156f)};
  std::vector<float> f32 = {1.f, -2.f, 3.25f, 1e-30f};
  std::vector<uint8_t> f8 = {0x38, 0xb8, 0x7e, 0x01};  // 1, -1, 448, 2^-9
  std::vector<int32_t> i32 = {0, -1, INT32_MAX, INT32_MIN, 42};
  std::vector<int64_t> i64 = {INT64_MIN, INT64_MAX, 7};
  std::vector<uint8_t> u8 = {0, 255, 17};  // 3 bytes: the next tensor starts unaligned
  std::vector<float> after_u8 = {9.f, -9.f};
  float scalar = 6.5f;
  std::vector<TensorToWrite> ts = {
      {"a.bf16", DType::kBF16, {2, 3}, bf16.data()},
      {"b.f16", DType::kF16, {3}, f16.data()},
      {"c.f32", DType::kF32, {2, 1, 2}, f32.data()},
      {"d.f8", DType::kF8E4M3, {4}, f8.data()},
      {"e.i32", DType::kI32, {5}, i32.data()},
      {"f.i64", DType::kI64, {3}, i64.data()},
      {"g.u8", DType::kU8, {3}, u8.data()},
      {"h.unaligned_f32", DType::kF32, {2}, after_u8.data()},
      {"i.empty", DType::kBF16, {0, 4}, nullptr},
      {"j.scalar", DType::kF32, {}, &scalar},
  };
  std::string path = dir.file("rt.safetensors");
  write_safetensors(path, ts, {{"format", "pt"}, {"note", "round trip"}});
  EXPECT_FALSE(fs::exists(path + ".tmp." + std::to_string(::getpid())));

  // Header length is a multiple of 8 so the data section is 8-byte aligned.
  std::ifstream raw(path, std::ios::binary);
  char len[8];
  raw.read(len, 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(len[i]);
  EXPECT_EQ(n % 8, 0u);

  SafetensorsFile f(path);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "round trip");
  ASSERT_EQ(f.tensors().size(), ts.size());
  for (const auto& w : ts) {
    SCOPED_TRACE(w.name);
    const TensorInfo& t = f.tensors().at(w.name);
    EXPECT_EQ(t.dtype, w.dtype);
    EXPECT_EQ(t.shape, w.shape);
    EXPECT_EQ(t.file, path);
    ASSERT_EQ(t.nbytes, size_t(t.numel()) * dtype_size(t.dtype));
    if (t.nbytes) {
      EXPECT_EQ(std::memcmp(t.data, w.data, t.nbytes), 0);
    }
  }
  EXPECT_EQ(f.tensors().at("j.scalar").numel(), 1);
  EXPECT_EQ(f.tensors().at("j.scalar").shape_str(), "[]");
  EXPECT_EQ(f.tensors().at("i.empty").numel(), 0);
  EXPECT_EQ(f.tensors().at("c.f32").shape_str(), "[2, 1, 2]");

  EXPECT_EQ(tensor_to_f32(f.tensors().at("a.bf16")),
            (std::vector<float>{1.f, -2.5f, 0.125f, bf16_to_f32(f32_to_bf16(3e38f)), -0.f, 7.f}));
  EXPECT_EQ(tensor_to_f32(f.tensors().at("b.f16")),
            (std::vector<float>{1.5f, -65504.f, 0.000061035156f}));
  EXPECT_EQ(tensor_to_f32(f.tensors().at("c.f32")), f32);
  EXPECT_EQ(tensor_to_f32(f.tensors().at("d.f8")),
            (std::vector<float>{1.f, -1.f, 448.f, std::ldexp(1.f, -9)}));
  EXPECT_EQ(tensor_to_f32(f.tensors().at("h.unaligned_f32")), after_u8);
  EXPECT_EQ(tensor_to_f32(f.tensors().at("j.scalar")), std::vector<float>{6.5f});
  EXPECT_TRUE(tensor_to_f32(f.tensors().at("i.empty")).empty());
  expect_contains(error_of([&] { tensor_to_f32(f.tensors().at("e.i32")); }),
                  {"e.i32", path, "I32"});
}

TEST(Safetensors, OddOffsetsConvert) {
  // Offsets need not be aligned to the element size: BF16/F16 data at odd byte offsets.
  TempDir dir;
  uint8_t pad = 1;
  std::vector<uint16_t> bf = {f32_to_bf16(1.5f), f32_to_bf16(-3.f), f32_to_bf16(0.25f)};
  std::vector<uint16_t> hf = {f32_to_f16(2.5f), f32_to_f16(-0.5f)};
  std::string path = dir.file("odd.safetensors");
  write_safetensors(path, {{"pad", DType::kU8, {1}, &pad},
                           {"bf", DType::kBF16, {3}, bf.data()},
                           {"pad2", DType::kU8, {1}, &pad},
                           {"hf", DType::kF16, {2}, hf.data()}});
  SafetensorsFile f(path);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f.tensors().at("bf").data) % 2, 1u);
  EXPECT_EQ(tensor_to_f32(f.tensors().at("bf")), (std::vector<float>{1.5f, -3.f, 0.25f}));
  EXPECT_EQ(tensor_to_f32(f.tensors().at("hf")), (std::vector<float>{2.5f, -0.5f}));
}

TEST(Safetensors, RewriteReplacesFileAtomically) {
  TempDir dir;
  std::string path = dir.file("x.safetensors");
  float a = 1.f, b[2] = {2.f, 3.f};
  write_safetensors(path, {{"t", DType::kF32, {}, &a}});
  write_safetensors(path, {{"u", DType::kF32, {2}, b}});
  SafetensorsFile f(path);
  EXPECT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(tensor_to_f32(f.tensors().at("u")), (std::vector<float>{2.f, 3.f}));
  EXPECT_TRUE(f.metadata().empty());
}

TEST(Safetensors, WriterRefusesBadInput) {
  TempDir dir;
  std::string path = dir.file("w.safetensors");
  float v = 0;
  expect_contains(error_of([&] {
                    write_safetensors(path, {{"t", DType::kF32, {}, &v}, {"t", DType::kF32, {}, &v}});
                  }),
                  {path, "'t'", "twice"});
  expect_contains(error_of([&] { write_safetensors(path, {{"t", DType::kF32, {-1}, &v}}); }),
                  {"'t'", "negative"});
  expect_contains(error_of([&] { write_safetensors(path, {{"t", DType::kF32, {2}, nullptr}}); }),
                  {"'t'", "no data"});
  expect_contains(error_of([&] { write_safetensors(path, {{"__metadata__", DType::kF32, {}, &v}}); }),
                  {"__metadata__"});
  EXPECT_FALSE(fs::exists(path));
}

// ------------------------------------------------------------------------- malformed files

TEST(SafetensorsMalformed, MissingFile) {
  TempDir dir;
  std::string path = dir.file("nope.safetensors");
  expect_contains(error_of([&] { SafetensorsFile f(path); }), {path, "cannot open"});
}

TEST(SafetensorsMalformed, ShorterThan8Bytes) {
  TempDir dir;
  expect_open_error(dir, "", {"0 bytes", "shorter than the 8-byte header length"});
  expect_open_error(dir, std::string(7, '\0'), {"7 bytes", "shorter than the 8-byte"});
}

TEST(SafetensorsMalformed, HeaderLengthPastEnd) {
  TempDir dir;
  std::string h = R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  // Header claims 100 bytes more than the file holds (a truncated header).
  expect_open_error(dir, le64(h.size() + 100) + h, {"header length", "runs past the end"});
}

TEST(SafetensorsMalformed, HeaderLengthAbsurd) {
  TempDir dir;
  expect_open_error(dir, le64(200ull << 20) + "{}", {"header length 209715200", "absurd"});
  expect_open_error(dir, le64(~0ull) + "{}", {"absurd"});
}

TEST(SafetensorsMalformed, InvalidJson) {
  TempDir dir;
  expect_open_error(dir, crafted(R"({"t":{"dtype":"F32",)", 0), {"invalid JSON header"});
  expect_open_error(dir, crafted("", 0), {"invalid JSON header"});
  expect_open_error(dir, crafted(R"({"t":1} trailing)", 0), {"invalid JSON header"});
}

TEST(SafetensorsMalformed, HeaderNotObject) {
  TempDir dir;
  expect_open_error(dir, crafted("[1,2,3]", 0), {"header must be a JSON object", "array"});
}

TEST(SafetensorsMalformed, EntryNotObject) {
  TempDir dir;
  expect_open_error(dir, crafted(R"({"w":[1,2]})", 0), {"tensor 'w'", "must be an object"});
  expect_open_error(dir, crafted(R"({"w":"F32"})", 0), {"tensor 'w'", "must be an object"});
}

TEST(SafetensorsMalformed, MissingField) {
  TempDir dir;
  expect_open_error(dir, crafted(R"({"w":{"dtype":"F32","shape":[1]}})", 4),
                    {"tensor 'w'", "missing 'data_offsets'"});
  expect_open_error(dir, crafted(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 4),
                    {"tensor 'w'", "missing 'dtype'"});
}

TEST(SafetensorsMalformed, UnknownDtype) {
  TempDir dir;
  expect_open_error(dir, crafted(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", 8),
                    {"tensor 'w'", "unknown dtype 'F64'"});
  expect_open_error(dir, crafted(R"({"w":{"dtype":3,"shape":[1],"data_offsets":[0,8]}})", 8),
                    {"tensor 'w'", "dtype must be a string"});
}

TEST(SafetensorsMalformed, BadShape) {
  TempDir dir;
  for (const char* shape : {"[2,-1]", "[1.5]", "\"2x2\"", "[[2]]", "[true]", "{\"a\":1}",
                            "[18446744073709551615]"}) {
    SCOPED_TRACE(shape);
    std::string h = str(R"({"w":{"dtype":"U8","shape":)", shape, R"(,"data_offsets":[0,2]}})");
    expect_open_error(dir, crafted(h, 2), {"tensor 'w'", "shape must be a list of non-negative integers"});
  }
  // A shape whose byte count overflows 64 bits.
  expect_open_error(
      dir, crafted(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0),
      {"tensor 'w'", "too large"});
  // A zero dimension makes the tensor empty however large the others are.
  std::string path = dir.file("zero.safetensors");
  write_bytes(path, crafted(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})", 0));
  SafetensorsFile f(path);
  EXPECT_EQ(f.tensors().at("w").nbytes, 0u);
}

TEST(SafetensorsMalformed, BadDataOffsets) {
  TempDir dir;
  for (const char* off : {"[0]", "[0,4,8]", "[-4,0]", "[0,4.0]", "\"0-4\"", "[\"0\",\"4\"]", "null"}) {
    SCOPED_TRACE(off);
    std::string h = str(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":)", off, "}}");
    expect_open_error(dir, crafted(h, 8), {"tensor 'w'", "data_offsets must be [begin, end]"});
  }
  expect_open_error(dir, crafted(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", 8),
                    {"tensor 'w'", "end before begin"});
}

TEST(SafetensorsMalformed, ByteCountMismatch) {
  TempDir dir;
  // BF16 [2, 3] needs 12 bytes, the offsets hold 24 (what F32 would need).
  expect_open_error(dir, crafted(R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,24]}})", 24),
                    {"tensor 'w'", "BF16", "[2, 3]", "need 12 bytes", "hold 24"});
  expect_open_error(dir, crafted(R"({"w":{"dtype":"I64","shape":[],"data_offsets":[0,4]}})", 8),
                    {"tensor 'w'", "need 8 bytes", "hold 4"});
}

TEST(SafetensorsMalformed, OffsetsOutOfRange) {
  TempDir dir;
  // 8 bytes of data present, the tensor claims bytes [4, 12): a truncated data section.
  expect_open_error(dir, crafted(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 8),
                    {"tensor 'w'", "[4, 12]", "outside the data section (8 bytes"});
}

TEST(SafetensorsMalformed, OverlappingTensors) {
  TempDir dir;
  std::string h = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  expect_open_error(dir, crafted(h, 12), {"'a'", "'b'", "overlap"});
  // Same begin, different order in the header.
  std::string h2 = R"({"z":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                   R"("y":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  expect_open_error(dir, crafted(h2, 4), {"'z'", "'y'", "overlap"});
  // Touching ranges and an empty tensor inside another's bytes are fine.
  std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                   R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},)"
                   R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})";
  std::string path = dir.file("ok.safetensors");
  write_bytes(path, crafted(ok, 12));
  SafetensorsFile f(path);
  EXPECT_EQ(f.tensors().size(), 3u);
}

TEST(SafetensorsMalformed, DuplicateNames) {
  TempDir dir;
  std::string h = R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                  R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})";
  expect_open_error(dir, crafted(h, 2), {"tensor 'w'", "twice"});
  std::string h2 = R"({"w":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}})";
  expect_open_error(dir, crafted(h2, 2), {"'dtype'", "twice"});
}

TEST(SafetensorsMalformed, BadMetadata) {
  TempDir dir;
  expect_open_error(dir, crafted(R"({"__metadata__":{"format":"pt","n":3}})", 0),
                    {"__metadata__", "'n'", "must be a string"});
  expect_open_error(dir, crafted(R"({"__metadata__":["pt"]})", 0),
                    {"__metadata__ must be an object of strings"});
  // A valid metadata map with no tensors opens.
  std::string path = dir.file("meta.safetensors");
  write_bytes(path, crafted(R"({"__metadata__":{"format":"pt"}})", 0));
  SafetensorsFile f(path);
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(f.metadata().at("format"), "pt");
}

TEST(SafetensorsMalformed, DirectoryIsNotAFile) {
  TempDir dir;
  expect_contains(error_of([&] { SafetensorsFile f(dir.str_path()); }), {"not a regular file"});
}

// ----------------------------------------------------------------------------- checkpoints

// Writes shards and an index mapping each tensor to its shard; returns the directory.
struct ShardedFixture {
  TempDir dir;
  std::vector<float> a = {1, 2, 3, 4}, b = {5, 6}, c = {7};
  nlohmann::json weight_map = {{"a", "model-00001-of-00002.safetensors"},
                               {"b", "model-00001-of-00002.safetensors"},
                               {"c", "model-00002-of-00002.safetensors"}};
  void write_shards() {
    write_safetensors(dir.file("model-00001-of-00002.safetensors"),
                      {{"a", DType::kF32, {2, 2}, a.data()}, {"b", DType::kF32, {2}, b.data()}});
    write_safetensors(dir.file("model-00002-of-00002.safetensors"), {{"c", DType::kF32, {1}, c.data()}});
  }
  void write_index() {
    nlohmann::json idx = {{"metadata", {{"total_size", 28}}}, {"weight_map", weight_map}};
    write_bytes(dir.file("model.safetensors.index.json"), idx.dump(2));
  }
};

TEST(Checkpoint, ShardedRoundTrip) {
  ShardedFixture fx;
  fx.write_shards();
  fx.write_index();
  Checkpoint ck(fx.dir.str_path());
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(ck.files().size(), 2u);
  EXPECT_EQ(tensor_to_f32(ck.get("a")), fx.a);
  EXPECT_EQ(ck.get("a").shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(tensor_to_f32(ck.get("c")), fx.c);
  EXPECT_EQ(ck.get("c").file, fx.dir.file("model-00002-of-00002.safetensors"));
  EXPECT_EQ(ck.find("zzz"), nullptr);
  expect_contains(error_of([&] { ck.get("zzz"); }), {"'zzz'", fx.dir.str_path()});
}

TEST(Checkpoint, SingleFile) {
  TempDir dir;
  float v[3] = {1, 2, 3};
  write_safetensors(dir.file("model.safetensors"), {{"x", DType::kF32, {3}, v}});
  Checkpoint ck(dir.str_path());
  EXPECT_EQ(ck.names(), std::vector<std::string>{"x"});
  EXPECT_EQ(tensor_to_f32(ck.get("x")), (std::vector<float>{1, 2, 3}));
}

TEST(Checkpoint, EmptyDirectory) {
  TempDir dir;
  expect_contains(error_of([&] { Checkpoint ck(dir.str_path()); }),
                  {"no model.safetensors or model.safetensors.index.json in " + dir.str_path()});
}

TEST(Checkpoint, IndexNamesMissingShard) {
  ShardedFixture fx;
  fx.write_shards();
  fx.weight_map["d"] = "model-00003-of-00003.safetensors";
  fx.write_index();
  expect_contains(error_of([&] { Checkpoint ck(fx.dir.str_path()); }),
                  {"model-00003-of-00003.safetensors", "tensor 'd'", "missing"});
}

TEST(Checkpoint, ShardMissingIndexedTensor) {
  ShardedFixture fx;
  fx.write_shards();
  fx.weight_map["b2"] = "model-00001-of-00002.safetensors";
  fx.write_index();
  expect_contains(error_of([&] { Checkpoint ck(fx.dir.str_path()); }),
                  {"model-00001-of-00002.safetensors", "tensor 'b2'", "not in it"});
}

TEST(Checkpoint, ShardHoldsTensorNotInIndex) {
  ShardedFixture fx;
  fx.write_shards();
  fx.weight_map.erase("b");
  fx.write_index();
  expect_contains(error_of([&] { Checkpoint ck(fx.dir.str_path()); }),
                  {"model-00001-of-00002.safetensors", "tensor 'b'", "not in"});
}

TEST(Checkpoint, ShardHoldsTensorIndexPutsElsewhere) {
  ShardedFixture fx;
  fx.write_shards();
  // Shard 2 also holds a copy of "b", which the index maps to shard 1.
  write_safetensors(fx.dir.file("model-00002-of-00002.safetensors"),
                    {{"b", DType::kF32, {2}, fx.b.data()}, {"c", DType::kF32, {1}, fx.c.data()}});
  fx.write_index();
  expect_contains(error_of([&] { Checkpoint ck(fx.dir.str_path()); }),
                  {"model-00002-of-00002.safetensors", "tensor 'b'",
                   "maps it to 'model-00001-of-00002.safetensors'"});
}

TEST(Checkpoint, BadIndex) {
  ShardedFixture fx;
  fx.write_shards();
  std::string idx = fx.dir.file("model.safetensors.index.json");
  write_bytes(idx, "{\"weight_map\": ");
  expect_contains(error_of([&] { Checkpoint ck(fx.dir.str_path()); }), {idx, "invalid JSON"});
  write_bytes(idx, R"({"metadata": {}})");
  expect_contains(error_of([&] { Checkpoint ck(fx.dir.str_path()); }), {idx, "'weight_map' is missing"});
  write_bytes(idx, R"({"weight_map": {"a": 3}})");
  expect_contains(error_of([&] { Checkpoint ck(fx.dir.str_path()); }), {idx, "'a'", "file name"});
  write_bytes(idx, R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})");
  expect_contains(error_of([&] { Checkpoint ck(fx.dir.str_path()); }), {idx, "'a'", "plain file name"});
}

TEST(Checkpoint, CorruptShardNamesShard) {
  ShardedFixture fx;
  fx.write_shards();
  fx.write_index();
  std::string shard = fx.dir.file("model-00002-of-00002.safetensors");
  write_bytes(shard, "abc");
  expect_contains(error_of([&] { Checkpoint ck(fx.dir.str_path()); }), {shard, "shorter"});
}

TEST(Checkpoint, GoldenModelA) {
  std::string dir = std::string(KIMI_GOLDEN_DIR) + "/model-a";
  if (!fs::exists(dir + "/model.safetensors.index.json"))
    GTEST_SKIP() << "golden data not found at " << dir << " (set KIMI_GOLDEN_DIR)";
  Checkpoint ck(dir);
  EXPECT_EQ(ck.files().size(), 2u);

  const TensorInfo& emb = ck.get("model.embed_tokens.weight");
  EXPECT_EQ(emb.dtype, DType::kBF16);
  EXPECT_EQ(emb.shape, (std::vector<int64_t>{256, 128}));
  EXPECT_EQ(ck.get("lm_head.weight").shape, (std::vector<int64_t>{256, 128}));
  // Layer 3 (0-based) is MLA with the real per-head sizes, 2 heads.
  EXPECT_EQ(ck.get("model.layers.3.self_attn.kv_a_proj_with_mqa.weight").shape,
            (std::vector<int64_t>{576, 128}));
  EXPECT_EQ(ck.get("model.layers.3.self_attn.kv_b_proj.weight").shape,
            (std::vector<int64_t>{512, 512}));
  // Layer 0 is KDA: A_log is F32 [1, 1, heads, 1], the conv weight [C, 1, 4].
  const TensorInfo& a_log = ck.get("model.layers.0.self_attn.A_log");
  EXPECT_EQ(a_log.dtype, DType::kF32);
  EXPECT_EQ(a_log.shape, (std::vector<int64_t>{1, 1, 2, 1}));
  EXPECT_EQ(ck.get("model.layers.0.self_attn.q_conv1d.weight").shape,
            (std::vector<int64_t>{256, 1, 4}));
  EXPECT_EQ(ck.get("model.layers.1.block_sparse_moe.experts.15.w2.weight").shape,
            (std::vector<int64_t>{128, 32}));
  EXPECT_EQ(ck.find("model.layers.1.block_sparse_moe.experts.16.w2.weight"), nullptr);
  EXPECT_EQ(ck.get("model.layers.1.block_sparse_moe.gate.e_score_correction_bias").dtype, DType::kF32);

  // Every tensor the index lists is reachable, and its values are finite.
  std::ifstream in(dir + "/model.safetensors.index.json");
  nlohmann::json idx = nlohmann::json::parse(in);
  EXPECT_EQ(ck.names().size(), idx["weight_map"].size());
  size_t bytes = 0;
  for (const auto& name : ck.names()) {
    const TensorInfo& t = ck.get(name);
    bytes += t.nbytes;
    if (t.dtype == DType::kBF16 || t.dtype == DType::kF32) {
      for (float v : tensor_to_f32(t)) ASSERT_TRUE(std::isfinite(v)) << name;
    }
  }
  EXPECT_EQ(bytes, idx["metadata"]["total_size"].get<size_t>());

  // expected.safetensors holds F32 and I32 tensors.
  SafetensorsFile exp(dir + "/expected.safetensors");
  const TensorInfo& ids = exp.tensors().at("case0.input_ids");
  EXPECT_EQ(ids.dtype, DType::kI32);
  EXPECT_EQ(ids.shape, std::vector<int64_t>{1});
  EXPECT_EQ(exp.tensors().at("case0.logits").dtype, DType::kF32);
  EXPECT_EQ(exp.tensors().at("case0.logits").shape, (std::vector<int64_t>{1, 256}));
}

// --------------------------------------------------------------------------- conversions

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(DTypeConvert, Bf16RoundToNearestEven) {
  // 1 + 2^-8 is exactly halfway between bf16 1.0 (even mantissa) and 1 + 2^-7: rounds down.
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808000)), 0x3f80);
  // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up.
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f818000)), 0x3f82);
  // Just above / below the halfway point.
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808001)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f807fff)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-1.f), 0xbf80);
  EXPECT_EQ(f32_to_bf16(0.f), 0x0000);
  EXPECT_EQ(f32_to_bf16(-0.f), 0x8000);
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-INFINITY), 0xff80);
  // The largest finite float rounds up to infinity; the largest bf16 stays.
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x7f7f0000)), 0x7f7f);
  // Subnormals round too.
  EXPECT_EQ(f32_to_bf16(from_bits(0x00018000)), 0x0002);
  for (uint32_t h : {0x0000u, 0x3f80u, 0x4049u, 0xc2f7u, 0x0001u, 0x7f7fu})
    EXPECT_EQ(f32_to_bf16(bf16_to_f32(uint16_t(h))), h);
  EXPECT_EQ(bf16_to_f32(0x4049), from_bits(0x40490000));
}

TEST(DTypeConvert, Bf16NaN) {
  // A NaN whose payload sits only in the low 16 bits must not become infinity.
  uint16_t h = f32_to_bf16(from_bits(0x7f800001));
  EXPECT_TRUE(std::isnan(bf16_to_f32(h))) << std::hex << h;
  h = f32_to_bf16(from_bits(0xff800001));
  EXPECT_TRUE(std::isnan(bf16_to_f32(h)));
  EXPECT_EQ(h & 0x8000, 0x8000);
  // A NaN with all mantissa bits set must not carry into the sign/exponent.
  h = f32_to_bf16(from_bits(0x7fffffff));
  EXPECT_TRUE(std::isnan(bf16_to_f32(h)));
  EXPECT_EQ(h & 0x8000, 0);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DTypeConvert, F16) {
  EXPECT_EQ(f32_to_f16(1.f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.f), 0xc000);
  EXPECT_EQ(f32_to_f16(65504.f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65519.f), 0x7bff);  // below the halfway point to 65536
  EXPECT_EQ(f32_to_f16(65520.f), 0x7c00);  // halfway: ties to even, which is infinity
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-INFINITY), 0xfc00);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.f, -25)), 0x0000);  // halfway to 0x0001: ties to even
  EXPECT_EQ(f32_to_f16(std::ldexp(3.f, -25)), 0x0002);  // halfway 1|2: to even 2
  EXPECT_EQ(f32_to_f16(-0.f), 0x8000);
  // 1 + 2^-11 is halfway between 1.0 and 1 + 2^-10: to even (1.0); 1 + 3·2^-11 rounds up.
  EXPECT_EQ(f32_to_f16(1.f + std::ldexp(1.f, -11)), 0x3c00);
  EXPECT_EQ(f32_to_f16(1.f + 3 * std::ldexp(1.f, -11)), 0x3c02);
  // Rounding up the mantissa carries into the exponent.
  EXPECT_EQ(f32_to_f16(2.f - std::ldexp(1.f, -12)), 0x4000);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
  EXPECT_EQ(f16_to_f32(0x7c00), INFINITY);
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7c01)));
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.f, -24));
  EXPECT_EQ(f16_to_f32(0x3555), from_bits(0x3eaaa000));  // 0.333251953125
  // Every finite f16 survives f16 -> f32 -> f16.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00) continue;
    ASSERT_EQ(f32_to_f16(f16_to_f32(uint16_t(h))), h) << std::hex << h;
  }
}

TEST(DTypeConvert, F8E4M3) {
  EXPECT_EQ(f8e4m3_to_f32(0x00), 0.f);
  EXPECT_TRUE(std::signbit(f8e4m3_to_f32(0x80)));
  EXPECT_EQ(f8e4m3_to_f32(0x38), 1.f);    // exp 7 = bias
  EXPECT_EQ(f8e4m3_to_f32(0x3c), 1.5f);
  EXPECT_EQ(f8e4m3_to_f32(0xc0), -2.f);
  EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.f);  // largest finite: there is no infinity
  EXPECT_EQ(f8e4m3_to_f32(0x78), 256.f);
  EXPECT_EQ(f8e4m3_to_f32(0x01), std::ldexp(1.f, -9));  // smallest subnormal
  EXPECT_EQ(f8e4m3_to_f32(0x07), 7 * std::ldexp(1.f, -9));
  EXPECT_EQ(f8e4m3_to_f32(0x08), std::ldexp(1.f, -6));  // smallest normal
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0x7f)));
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0xff)));
  int nans = 0;
  for (int v = 0; v < 256; ++v) nans += std::isnan(f8e4m3_to_f32(uint8_t(v)));
  EXPECT_EQ(nans, 2);
  // Strictly increasing over the positive codes.
  for (int v = 1; v < 0x7f; ++v) EXPECT_LT(f8e4m3_to_f32(uint8_t(v - 1)), f8e4m3_to_f32(uint8_t(v)));
}

TEST(DTypeConvert, Names) {
  for (DType t : {DType::kBF16, DType::kF16, DType::kF32, DType::kF8E4M3, DType::kI32, DType::kI64,
                  DType::kU8}) {
    DType back;
    ASSERT_TRUE(dtype_from_name(dtype_name(t), &back)) << dtype_name(t);
    EXPECT_EQ(back, t);
  }
  DType t;
  EXPECT_FALSE(dtype_from_name("F64", &t));
  EXPECT_FALSE(dtype_from_name("bf16", &t));
  EXPECT_EQ(dtype_size(DType::kF8E4M3), 1u);
  EXPECT_EQ(dtype_size(DType::kI64), 8u);
}

}  // namespace
}  // namespace kimi

namespace kimi {
namespace {

// Parsing from memory applies the same validation as a mapped file.
TEST(Safetensors, ParsesFromMemoryLikeAFile) {
  TempDir dir;
  std::string path = dir.str_path() + "/m.safetensors";
  float v[3] = {1.f, -2.f, 3.5f};
  write_safetensors(path, {{"x", DType::kF32, {3}, v}});
  std::ifstream f(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  SafetensorsFile mem(bytes.data(), bytes.size(), "memory");
  ASSERT_EQ(mem.tensors().count("x"), 1u);
  EXPECT_EQ(tensor_to_f32(mem.tensors().at("x")), std::vector<float>(v, v + 3));
  std::string cut = bytes.substr(0, bytes.size() - 1);
  try {
    SafetensorsFile bad(cut.data(), cut.size(), "memory");
    FAIL() << "truncated bytes accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("memory"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kimi
