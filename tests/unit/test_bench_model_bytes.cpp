// kimi-bench's byte counts follow what the backend stores under the run's options: the cache
// entry sizes of the full-size config by hand, per backend, precision and --kv-cache-dtype, and
// the decode step's state traffic built from them.
#include <gtest/gtest.h>

#include "bench/model_bytes.h"
#include "model/config.h"
#include "model/model.h"

namespace kimi::bench {
namespace {

ModelConfig full_size() {
  return ModelConfig::from_file(std::string(KIMI_SOURCE_DIR) +
                                "/benchmarks/configs/kimi-linear-48b-a3b/config.json");
}

ModelOptions options(const char* backend, KvCacheDtype dtype,
                     Precision precision = Precision::kBf16) {
  ModelOptions o;
  o.backend = backend;
  o.kv_cache_dtype = dtype;
  o.precision = precision;
  return o;
}

// 20 KDA layers of 32 heads: recurrent state 32·128·128 fp32 values, conv state 3·32·128·3 values;
// 7 MLA layers of 576 cached values per token.
TEST(BenchModelBytes, CacheEntriesFollowTheBackendAndTheCacheDtype) {
  const ModelConfig c = full_size();
  ASSERT_EQ(c.num_kda_layers(), 20);
  ASSERT_EQ(c.num_mla_layers(), 7);
  const int64_t state = 32 * 128 * 128 * 4, conv = 3 * 32 * 128 * 3;
  struct Case {
    ModelOptions opts;
    int64_t slot, mla_token;
  };
  const Case cases[] = {
      // CPU: fp32 throughout, the fp8 round trip kept in fp32 too.
      {options("cpu", KvCacheDtype::kBf16), 20 * (state + conv * 4), 7 * 576 * 4},
      {options("cpu", KvCacheDtype::kFp8), 20 * (state + conv * 4), 7 * 576 * 4},
      // CUDA: bf16 conv state (fp32 at high precision); ĉ | k_pe in bf16, or the 656-byte record.
      {options("cuda", KvCacheDtype::kBf16), 20 * (state + conv * 2), 7 * 1152},
      {options("cuda", KvCacheDtype::kFp8), 20 * (state + conv * 2), 7 * 656},
      {options("cuda", KvCacheDtype::kFp8, Precision::kHigh), 20 * (state + conv * 4), 7 * 656},
  };
  for (const Case& k : cases) {
    const CacheEntryBytes e = cache_entry_bytes(c, k.opts);
    EXPECT_EQ(e.slot, k.slot) << k.opts.backend << " "
                              << kv_cache_dtype_name(k.opts.kv_cache_dtype);
    EXPECT_EQ(e.mla_token, k.mla_token)
        << k.opts.backend << " " << kv_cache_dtype_name(k.opts.kv_cache_dtype);
  }
  EXPECT_EQ(kMlaFp8RowBytes, 656);
}

// A decode step over B sequences at depth C reads and writes each KDA slot and reads C cached
// tokens plus writes one per sequence: with the fp8 cache on CUDA, 656 bytes per token and layer.
TEST(BenchModelBytes, DecodeStateTrafficFollowsTheCacheDtype) {
  const ModelConfig c = full_size();
  const int B = 4;
  const int64_t C = 1000;
  const int64_t slot = 20 * (32 * 128 * 128 * 4 + 3 * 32 * 128 * 3 * 2);
  const StepBytes bf16 =
      decode_step_bytes(c, B, C, 2, cache_entry_bytes(c, options("cuda", KvCacheDtype::kBf16)));
  const StepBytes fp8 =
      decode_step_bytes(c, B, C, 2, cache_entry_bytes(c, options("cuda", KvCacheDtype::kFp8)));
  EXPECT_DOUBLE_EQ(bf16.state, double(B) * (2.0 * double(slot) + double(C + 1) * 7 * 1152));
  EXPECT_DOUBLE_EQ(fp8.state, double(B) * (2.0 * double(slot) + double(C + 1) * 7 * 656));
  EXPECT_DOUBLE_EQ(bf16.weights, fp8.weights);  // the weights do not depend on the cache
}

}  // namespace
}  // namespace kimi::bench
