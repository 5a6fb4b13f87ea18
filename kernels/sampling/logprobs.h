// Log-probabilities of tokens under raw logits rows on the GPU (OpenAI logprobs / top_logprobs,
// vLLM prompt_logprobs): per request, one small record instead of the row on the host. It
// computes what the host's row_logprobs (src/runtime/sampler.h) computes:
//
//   lse = float(max + log Σ_i exp(double(l_i) - max))   (double accumulation, as log_sum_exp)
//   lp_i = l_i - lse (fp32); logprob = lp_token;
//   rank = 1 + #{i : lp_i > lp_token, or lp_i == lp_token and i < token};
//   top = the min(k, vocab) best ids in that order (ties: lower ids first) with their lp.
//   A row with a NaN or +inf logit, or with no finite logit, has lse NaN: logprob NaN, rank 1,
//   top = ids 0..k-1 with lp NaN.
//
// The token is the request's, or (token < 0) the one the sampler drew for that row (`sampled`,
// run_sample's output in the same step). The logits are read as they are (before any logit
// processor). Launch: each request's row split into up to 128 chunks of >= 2048 logits, one CTA
// of 256 threads per chunk, in two kernels (chunk max and sum; then lse from the chunk partials in
// a fixed order, the chunk's rank count and top k, the request's last CTA merging them); no host
// synchronisation (capturable in a CUDA graph). Many requests with no alternatives (k = 0 for all,
// which the caller states in max_k) run one CTA of 512 threads per request instead: faster from
// 64 such requests (one H200: 71.9 vs 82.7 us at 64, 169 vs 320 us at 256; with k > 0 the split
// kernels win at every count). The workspace is static device memory: calls on two streams of one
// device must not overlap. A request the kernel cannot serve (row out of
// range, token outside the vocabulary) gets token -1, rank 0.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kimi::cuda {

constexpr int kMaxTopLogprobs = 20;

// Same layout as kimi::RowLogprobs (src/model/model.h), into which the host copies it.
struct LogprobRecord {
  int token = 0;
  int rank = 1;
  float logprob = 0.f;
  int num_top = 0;  // min(k, vocab); entries past it are zero
  int top_id[kMaxTopLogprobs] = {};
  float top_logprob[kMaxTopLogprobs] = {};
};

struct LogprobRequest {
  int row = 0;    // in row_begin .. row_begin + rows - 1
  int token = 0;  // < 0: sampled[row - row_begin]
  int k = 0;      // alternatives, 0 .. kMaxTopLogprobs
};

// Which kernels serve a call: kAuto picks by count and max_k (choose_logprob_kernel); the others
// force one, for bench_sampling's comparison and the tests.
enum class LogprobKernel { kAuto, kSplit, kOneCta };
constexpr int kLogprobOneCtaFromRequests = 64;

struct LogprobParams {
  int count = 0;      // requests
  int rows = 0;       // rows of logits (and of sampled)
  int row_begin = 0;  // the row number of logits' first row, as the requests count rows
  int vocab = 0;
  int64_t stride = 0;                        // elements between rows of logits (0: vocab)
  const float* logits = nullptr;             // [rows, stride]
  const int* sampled = nullptr;              // [rows], optional: the tokens drawn
  const LogprobRequest* requests = nullptr;  // [count], device memory
  LogprobRecord* out = nullptr;              // [count]
  int max_k = kMaxTopLogprobs;  // the largest k of the requests: picks the kernels, results equal
  LogprobKernel kernel = LogprobKernel::kAuto;
};
LogprobKernel choose_logprob_kernel(const LogprobParams& p);  // kSplit or kOneCta
void run_logprobs(const LogprobParams& p, cudaStream_t stream);

}  // namespace kimi::cuda
