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

// Over N GPUs each rank holds and reads its own copy of the whole tensors (model/tensor_parallel.h)
// and of the latent cache; split tensors, routed experts and the KDA slots count once.
TEST(BenchModelBytes, TensorParallelCountsWhatEveryRankReads) {
  const ModelConfig c = full_size();
  // Whole on every rank: 27 layers' two norms and the final norm; per KDA layer f_a and g_a
  // [128, 2304] and o_norm [128]; per MLA layer kv_a_proj_with_mqa [576, 2304] and
  // kv_a_layernorm [512]; per MoE layer (26) the router [256, 2304] and its bias [256].
  const int64_t whole = (27 * 2 + 1) * 2304 + 20 * (2 * 128 * 2304 + 128) + 7 * (576 * 2304 + 512) +
                        26 * (256 * 2304 + 256);
  const ParamCounts one = param_counts(c);
  EXPECT_EQ(one.dense_replicas, 0);
  for (const ModelSplit split : {ModelSplit{2, false}, ModelSplit{4, false}, ModelSplit{2, true}}) {
    const ParamCounts p = param_counts(c, split);
    EXPECT_EQ(p.total, one.total);
    EXPECT_EQ(p.dense_replicas, (split.world - 1) * whole) << split.world;
    const int B = 3;
    const int64_t C = 5000;
    const CacheEntryBytes e = cache_entry_bytes(c, options("cuda", KvCacheDtype::kBf16));
    const StepBytes s1 = decode_step_bytes(c, B, C, 2, e);
    const StepBytes sn = decode_step_bytes(c, B, C, 2, e, split);
    EXPECT_DOUBLE_EQ(sn.state - s1.state, (split.world - 1) * double(B) * double(C + 1) * 7 * 1152);
    EXPECT_DOUBLE_EQ(sn.weights - s1.weights,
                     (split.world - 1) * 2.0 * double(whole + int64_t(B) * 2304));
  }
  // A config the split cannot divide is refused by name, as the model would refuse it.
  EXPECT_THROW(param_counts(c, ModelSplit{3, false}), std::exception);
}

}  // namespace
}  // namespace kimi::bench
