// kimi-bench: throughput and latency measurement (issue 6).
//   kimi-bench offline [--model DIR] [--backend cpu|cuda] ...   the engine's model in process
//   kimi-bench online --base-url URL --endpoint /v1/completions ...  any OpenAI-compatible server
//   kimi-bench perplexity --file TEXT [--model DIR] [--ctx 512] ...  the model's perplexity on a
//                                     text (llama.cpp's llama-perplexity method)
// Online metrics use vLLM's `bench serve` definitions and JSON keys (serving.md §3.4-3.5).
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>

#include "bench/dataset.h"
#include "bench/engine_run.h"
#include "bench/offline.h"
#include "bench/offline_report.h"
#include "bench/online.h"
#include "bench/online_plot.h"
#include "bench/perplexity.h"
#include "bench/report.h"
#include "bench/sysinfo.h"
#include "core/check.h"
#include "core/log.h"
#include "tokenizer/tokenizer.h"

namespace {

const char* const kOnlineFooter = R"(
Metrics (vLLM `bench serve` definitions; statistics in ms: mean, median, std (population),
percentiles 0..100 linearly interpolated as numpy does; default 90,99, vLLM's is 99):
  TTFT   first SSE event with non-empty choices - request start (its content may be empty)
  TPOT   (E2EL - TTFT) / (output_tokens - 1) per request, then the statistics over requests;
         requests with 1 output token have none (for --goodput their TPOT counts as 0)
  ITL    every gap between consecutive choices events, pooled over all requests (a server
         that sends k tokens per event shows about k x TPOT here)
  E2EL   last choices event - request start (the usage chunk and [DONE] don't count)
  output_tokens = usage.completion_tokens (stream_options.include_usage is always requested);
  without it the generated text counted with --tokenizer, else 1 (warned; JSON
  requests_without_usage). Prompt tokens = usage.prompt_tokens, else the dataset's count.
  Only successful requests enter statistics and totals. A request fails on an HTTP status
  other than 200, a transport error or a read slower than --timeout, no choices event, an
  unparsable event, or an {"error": ...} event in the stream (vLLM counts the last as a success
  when a token came before it). A stream that ends without [DONE] is not a failure.
  duration: start of the arrival schedule (after the warm-ups) to the last completion; the
  throughputs divide by it. Peak output token throughput: choices events per whole second
  since the first successful request's start. Peak concurrent requests: most overlapping
  [start, start + E2EL) intervals. --burstiness inf: constant gaps of 1 / rate.

Name clashes between tools:
| Concept                               | vLLM/SGLang       | genai-perf        | guidellm         | llmperf               |
|---------------------------------------|-------------------|-------------------|------------------|-----------------------|
| first-token delay                     | TTFT              | TTFT              | TTFT             | ttft_s                |
| (E2E-TTFT)/(n-1) per request          | TPOT              | ITL               | ITL              | -                     |
| E2E/n per request                     | -                 | -                 | TPOT             | ~inter_token_latency_s|
| gap between consecutive stream events | ITL (all pooled)  | chunked ITL       | -                | -                     |
| request end-to-end                    | E2EL              | request latency   | request latency  | end_to_end_latency_s  |
kimi-bench reports guidellm's "TPOT" as "E2EL / output tokens" (JSON *_e2el_per_output_token_ms).

JSON (--result-file): vLLM's keys (date, backend, model_id, tokenizer_id, num_prompts,
request_rate, burstiness, max_concurrency, duration, completed, failed, total_input_tokens,
total_output_tokens, request_throughput, request_goodput, output_throughput,
total_token_throughput, max_output_tokens_per_s, max_concurrent_requests,
{mean,median,std,pNN}_{ttft,tpot,itl,e2el}_ms, input_lens, output_lens, ttfts, itls, latencies,
start_times (s since the benchmark start), queue_times, errors, generated_texts; with
--max-concurrency also {mean,median,std,pNN}_client_queue_time_ms, and with a finite
--request-rate *_e2el_including_client_queue_ms: the wait for a slot, outside TTFT and E2EL)
plus host, card and git_commit (of the machine kimi-bench runs on).
A --max-concurrency sweep writes a JSON array with one such object per value.
Exit status: 0, 1 on errors before/while measuring, 3 when some requests failed.
)";

std::vector<double> parse_percentiles(const std::string& s) {
  std::vector<double> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    double p = 0;
    try {
      p = std::stod(item);
    } catch (const std::exception&) {
      kimi::fail("--metric-percentiles: '", item, "' is not a number");
    }
    // numpy (vLLM) takes 0..100: p0 is the minimum, p100 the maximum (e.g. the largest ITL).
    if (!(p >= 0 && p <= 100)) kimi::fail("--metric-percentiles: ", p, " is outside [0, 100]");
    out.push_back(p);
  }
  return out;
}

std::map<std::string, double> parse_goodput(const std::vector<std::string>& items) {
  std::map<std::string, double> slo;
  for (auto& it : items) {
    auto c = it.find(':');
    std::string k = it.substr(0, c);
    if (c == std::string::npos || (k != "ttft" && k != "tpot" && k != "e2el"))
      kimi::fail("--goodput: '", it, "' must be ttft:MS, tpot:MS or e2el:MS");
    double ms = -1;
    try {
      ms = std::stod(it.substr(c + 1));
    } catch (const std::exception&) {
    }
    if (!(ms >= 0)) kimi::fail("--goodput: '", it, "' needs a non-negative number of ms");
    slo[k] = ms;
  }
  return slo;
}

double parse_rate(const std::string& s) {
  if (s == "inf") return std::numeric_limits<double>::infinity();
  try {
    return std::stod(s);
  } catch (const std::exception&) {
    kimi::fail("--request-rate: '", s, "' is not a number or inf");
  }
}

void write_json(const std::string& path, const nlohmann::ordered_json& j) {
  std::ofstream f(path);
  if (!f) kimi::fail("cannot write ", path);
  f << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  if (!f) kimi::fail("writing ", path, " failed");
}

struct OnlineArgs {
  std::string base_url = "http://127.0.0.1:8000", endpoint = "/v1/completions", model, api_key;
  std::string tokenizer_dir, request_rate = "inf", percentiles = "90,99", result_file, plot;
  std::vector<std::string> dataset = {"random"}, goodput;
  std::string dataset_path;
  std::vector<int> max_concurrency;
  int num_prompts = 1000, input_len = 1024, output_len = 128, prefix_len = 0, num_warmups = 1;
  std::optional<int> sharegpt_output_len;
  double range_ratio = 0, burstiness = 1, timeout = 600;
  uint64_t seed = 0;
  bool ignore_eos = false, no_progress = false;
};

int run_online_cmd(const OnlineArgs& a) {
  using namespace kimi::bench;
  Endpoint ep = make_endpoint(a.base_url, a.endpoint);
  ep.api_key = a.api_key;
  ep.ignore_eos = a.ignore_eos;
  ep.timeout_s = a.timeout;
  ep.model = a.model.empty() ? first_served_model(ep) : a.model;
  if (ep.model.empty())
    kimi::fail("--model not given and ", ep.host_url, " did not list a model at /v1/models");
  std::optional<kimi::Tokenizer> tok;
  if (!a.tokenizer_dir.empty()) tok = kimi::Tokenizer::load(a.tokenizer_dir);
  MetricOptions mopts;
  mopts.percentiles = parse_percentiles(a.percentiles);
  mopts.goodput_slo_ms = parse_goodput(a.goodput);

  std::string dname = a.dataset.at(0), dpath = a.dataset.size() > 1 ? a.dataset[1] : a.dataset_path;
  std::vector<SampleRequest> reqs;
  if (dname == "random") {
    RandomDatasetOptions r;
    r.num_prompts = a.num_prompts;
    r.input_len = a.input_len;
    r.output_len = a.output_len;
    r.range_ratio = a.range_ratio;
    r.prefix_len = a.prefix_len;
    r.seed = a.seed;
    reqs = random_dataset(r, tok ? &*tok : nullptr);
  } else if (dname == "sharegpt") {
    if (dpath.empty()) kimi::fail("--dataset sharegpt needs a file: --dataset sharegpt FILE");
    ShareGptOptions s;
    s.path = dpath;
    s.num_prompts = a.num_prompts;
    s.output_len = a.sharegpt_output_len;
    s.seed = a.seed;
    reqs = sharegpt_dataset(s, tok ? &*tok : nullptr);
  } else {
    kimi::fail("--dataset: '", dname, "' is not random or sharegpt");
  }

  std::vector<int> sweep = a.max_concurrency.empty() ? std::vector<int>{0} : a.max_concurrency;
  SystemInfo sys = system_info();
  std::vector<SweepPoint> points;
  nlohmann::ordered_json all = nlohmann::ordered_json::array();
  int failed = 0;
  for (int c : sweep) {
    if (c < 0) kimi::fail("--max-concurrency: ", c, " is negative");
    OnlineOptions o;
    o.request_rate = parse_rate(a.request_rate);
    o.burstiness = a.burstiness;
    o.seed = a.seed;
    o.max_concurrency = c;
    o.num_warmups = a.num_warmups;
    o.progress = !a.no_progress;
    OnlineRunInfo info;
    info.date = utc_date_stamp();
    OnlineRun run = run_online(ep, reqs, o);
    // Servers that send no usage: count the generated text with --tokenizer, as vLLM does.
    std::vector<int> fallback(run.outputs.size(), 0);
    for (size_t i = 0; i < run.outputs.size(); ++i)
      if (run.outputs[i].success && !run.outputs[i].usage_present)
        fallback[i] = count_tokens(run.outputs[i].generated_text, tok ? &*tok : nullptr);
    BenchmarkMetrics m = calculate_metrics(run.outputs, run.duration, mopts, fallback);
    info.backend = ep.chat ? "openai-chat" : "openai";
    info.base_url = a.base_url;
    info.endpoint = a.endpoint;
    info.model_id = ep.model;
    info.tokenizer_id = a.tokenizer_dir;
    info.dataset_name = dname;
    info.num_prompts = int(reqs.size());
    info.request_rate = o.request_rate;
    info.burstiness = o.burstiness;
    info.max_concurrency = c;
    info.client_queue = c > 0;
    info.ignore_eos = a.ignore_eos;
    info.seed = a.seed;
    std::fputs(format_table(m, info, mopts).c_str(), stdout);
    std::fflush(stdout);
    for (auto& out : run.outputs)
      if (!out.success) {
        std::fprintf(stderr, "first failure: %s\n", out.error.c_str());
        break;
      }
    failed += m.failed;
    all.push_back(result_json(m, run.outputs, info, mopts, sys));
    points.push_back({c, std::move(m)});
  }
  if (!a.result_file.empty()) write_json(a.result_file, sweep.size() == 1 ? all[0] : all);
  if (!a.plot.empty()) {
    SvgPlot plot("kimi-bench online: " + ep.model + " @ " + a.base_url + a.endpoint);
    add_online_plot(plot, points, mopts);
    plot.save(a.plot);
  }
  return failed > 0 ? 3 : 0;
}

struct OfflineArgs {
  kimi::bench::OfflineOptions o;
  kimi::bench::EngineRunOptions e;  // e.num_prompts = 0: no engine run
  bool engine_only = false;
  std::string result_file, plot;
};

// The Engine end to end (--engine-requests): the online table and JSON keys, in process.
nlohmann::ordered_json run_engine_part(const OfflineArgs& a, const kimi::bench::SystemInfo& sys) {
  using namespace kimi::bench;
  EngineRunOptions e = a.e;
  e.model_dir = a.o.model_dir;
  e.backend = a.o.backend;
  e.kv_cache_dtype = a.o.kv_cache_dtype;
  e.progress = a.o.progress;
  EngineRun run = run_engine(e);
  MetricOptions mo;
  BenchmarkMetrics m = calculate_metrics(run.outputs, run.duration, mo);
  OnlineRunInfo info;
  info.date = utc_date_stamp();
  info.backend = "kimi-engine-" + e.backend;
  info.model_id = e.model_dir;
  info.dataset_name = "random-ids";
  info.num_prompts = e.num_prompts;
  info.request_rate = std::numeric_limits<double>::infinity();
  info.max_concurrency = e.max_num_seqs;
  info.ignore_eos = true;
  info.seed = e.seed;
  std::printf(
      "\nEngine end to end (%d requests, %d prompt + %d output tokens, max_num_seqs %d):\n%s",
      e.num_prompts, e.input_len, e.output_len, e.max_num_seqs, format_table(m, info, mo).c_str());
  if (m.failed > 0) kimi::fail(m.failed, " engine requests failed: ", run.outputs[0].error);
  return result_json(m, run.outputs, info, mo, sys);
}

int run_offline_cmd(OfflineArgs& a) {
  using namespace kimi::bench;
  SystemInfo sys = system_info();
  std::string label = a.o.random_weights ? "random weights, " + a.o.config_file : a.o.model_dir;
  if (a.engine_only) {
    if (a.e.num_prompts < 1) kimi::fail("--engine-only needs --engine-requests N");
    auto j = run_engine_part(a, sys);
    if (!a.result_file.empty()) write_json(a.result_file, j);
    return 0;
  }
  OfflineResults r = run_offline(a.o);
  std::printf("%s", format_offline_table(r, label).c_str());
  std::printf("host %s (%s, %d cores), card %s, commit %s%s\n", sys.hostname.c_str(),
              sys.cpu_model.c_str(), sys.cpu_cores, sys.card.c_str(), sys.git_commit.c_str(),
              sys.git_dirty ? " (dirty)" : "");
  auto j = offline_json(r, label, sys, utc_date_stamp());
  if (a.e.num_prompts > 0) j["engine"] = run_engine_part(a, sys);
  if (!a.result_file.empty()) write_json(a.result_file, j);
  if (!a.plot.empty()) {
    SvgPlot plot("kimi-bench offline: " + label + " (" + r.backend + ")");
    add_offline_plot(plot, r);
    plot.save(a.plot);
  }
  return 0;
}

struct PerplexityArgs {
  std::string model_dir = KIMI_DEFAULT_MODEL_DIR, file, backend = "cpu", precision = "bf16",
              kv_cache_dtype = "auto", result_file;
  int ctx = 512, chunks = 0, tensor_parallel = 1;
  bool expert_parallel = false;
};

int run_perplexity_cmd(const PerplexityArgs& a) {
  using namespace kimi::bench;
  if (a.ctx < 4) kimi::fail("--ctx must be at least 4, got ", a.ctx);
  if (!std::filesystem::exists(a.model_dir + "/tiktoken.model"))
    kimi::fail("perplexity needs the model's tokenizer files: no ", a.model_dir, "/tiktoken.model");
  std::ifstream in(a.file, std::ios::binary);
  if (!in) kimi::fail("cannot read --file ", a.file);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const kimi::Tokenizer tok = kimi::Tokenizer::load(a.model_dir);
  const std::vector<int> tokens = tok.encode(text, /*allow_special=*/false);
  if (tokens.size() < size_t(a.ctx))  // before the model is loaded
    kimi::fail(a.file, " has ", tokens.size(), " tokens, fewer than one chunk of --ctx ", a.ctx);
  kimi::ModelOptions mo;
  mo.backend = a.backend;
  mo.tensor_parallel = a.tensor_parallel;
  mo.expert_parallel = a.expert_parallel;
  mo.precision = kimi::parse_precision(a.precision);
  mo.kv_cache_dtype = kimi::parse_kv_cache_dtype(a.kv_cache_dtype);
  mo.cache.num_slots = 1;
  mo.cache.num_blocks = (a.ctx + kimi::kBlockSize - 1) / kimi::kBlockSize;
  mo.max_batch_tokens = a.ctx;
  std::unique_ptr<kimi::Model> model = kimi::load_model(a.model_dir, mo);
  std::fprintf(stderr, "%s: %zu tokens, chunks of %d (the second half of each scored)\n",
               a.file.c_str(), tokens.size(), a.ctx);
  const PerplexityResult r =
      perplexity(*model, tokens, a.ctx, a.chunks, [](const PerplexityResult& p) {
        std::fprintf(stderr, "[%d] %.4f\n", p.chunks, p.perplexity);
      });
  // exp(nll ± stderr) as the interval, llama.cpp's "PPL = x +/- y" uses the first-order width.
  std::printf(
      "perplexity %.4f +/- %.4f over %lld tokens (%d chunks of %d, %s, kv cache %s); %.1f "
      "tokens/s\n",
      r.perplexity, r.perplexity * r.nll_stderr, static_cast<long long>(r.scored), r.chunks, a.ctx,
      a.backend.c_str(), kimi::kv_cache_dtype_name(mo.kv_cache_dtype),
      double(r.chunks) * a.ctx / r.seconds);
  if (!a.result_file.empty()) {
    const SystemInfo sys = system_info();
    nlohmann::ordered_json j = {{"mode", "perplexity"},
                                {"date", utc_date_stamp()},
                                {"model", a.model_dir},
                                {"file", a.file},
                                {"backend", a.backend},
                                {"precision", a.backend == "cuda" ? a.precision : "fp32"},
                                {"kv_cache_dtype", kimi::kv_cache_dtype_name(mo.kv_cache_dtype)},
                                {"ctx", a.ctx},
                                {"chunks", r.chunks},
                                {"tokens_scored", r.scored},
                                {"nll", r.nll},
                                {"nll_stderr", r.nll_stderr},
                                {"perplexity", r.perplexity},
                                {"seconds", r.seconds},
                                {"card", sys.card},
                                {"git_commit", sys.git_commit}};
    write_json(a.result_file, j);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "kimi-bench: offline (in-process) and online (OpenAI-compatible server) benchmarks, "
      "perplexity"};
  app.require_subcommand(1);
  std::string log_level = "warn";
  app.add_option("--log-level", log_level, "debug, info, warn, error, off");

  OfflineArgs off;
  off.o.model_dir = KIMI_DEFAULT_MODEL_DIR;
  auto* offc = app.add_subcommand(
      "offline", "prefill tokens/s, decode TPOT and bandwidth, memory (model in process)");
  offc->option_defaults()->always_capture_default();
  offc->add_option("--model", off.o.model_dir,
                   "model directory (default: the embedded tiny model)");
  offc->add_option("--backend", off.o.backend, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  auto* rw = offc->add_flag("--random-weights", off.o.random_weights,
                            "random weights at --config's shapes (no checkpoint)");
  offc->add_option("--config", off.o.config_file, "config.json for --random-weights")->needs(rw);
  offc->add_option("--tensor-parallel-size", off.o.tensor_parallel,
                   "cuda: GPUs to split the model over (1, 2, 4, 8)")
      ->check(CLI::Range(1, 64));
  offc->add_flag("--enable-expert-parallel", off.o.expert_parallel,
                 "cuda, with --tensor-parallel-size > 1: routed experts split by expert");
  offc->add_option("--precision", off.o.precision, "cuda activations: bf16 or high")
      ->check(CLI::IsMember({"bf16", "high"}));
  offc->add_option("--kv-cache-dtype", off.o.kv_cache_dtype,
                   "MLA latent cache: auto (= bf16), bf16 or fp8 (e4m3, a scale per 128 values)")
      ->check(CLI::IsMember({"auto", "bf16", "fp8"}));
  offc->add_option("--prompt-lens", off.o.prompt_lens, "prefill prompt lengths")->delimiter(',');
  offc->add_option("--batches", off.o.batches, "decode batch sizes")->delimiter(',');
  offc->add_option("--contexts", off.o.contexts, "decode context depths")->delimiter(',');
  offc->add_option("--decode-steps", off.o.decode_steps,
                   "decode steps per shape (first not timed)");
  offc->add_option("--reps", off.o.reps, "prefill repetitions (median)");
  offc->add_option("--prefill-chunk", off.o.prefill_chunk, "tokens per prefill forward");
  offc->add_option("--result-file", off.result_file, "write the results as JSON");
  offc->add_option("--plot", off.plot, "write an SVG plot");
  bool off_no_progress = false;
  offc->add_flag("--disable-progress", off_no_progress, "no progress bar");
  off.e.num_prompts = 0;
  offc->add_option("--engine-requests", off.e.num_prompts,
                   "also run N requests through the Engine (TTFT/TPOT/ITL/E2EL); 0: skip");
  offc->add_option("--engine-input-len", off.e.input_len, "prompt tokens per engine request");
  offc->add_option("--engine-output-len", off.e.output_len, "output tokens per engine request");
  offc->add_option("--max-num-seqs", off.e.max_num_seqs, "engine: sequences running at once");
  offc->add_flag("--engine-only", off.engine_only, "skip the model-level measurements");

  OnlineArgs on;
  auto* onc =
      app.add_subcommand("online", "serving benchmark against an OpenAI-compatible endpoint");
  onc->alias("serve");
  onc->option_defaults()->always_capture_default();
  onc->add_option("--base-url", on.base_url, "http://HOST:PORT[/PREFIX]");
  onc->add_option("--endpoint", on.endpoint, "/v1/completions or /v1/chat/completions");
  onc->add_option("--model", on.model,
                  "model name sent in requests (default: first of /v1/models)");
  onc->add_option("--api-key", on.api_key, "sent as Authorization: Bearer KEY")
      ->envname("OPENAI_API_KEY");
  onc->add_option("--num-prompts", on.num_prompts, "benchmark requests")
      ->check(CLI::PositiveNumber);
  onc->add_option("--request-rate", on.request_rate, "requests/s (Poisson arrivals), or inf");
  onc->add_option("--burstiness", on.burstiness,
                  "gamma shape of the gaps; 1 = Poisson, inf = constant gaps");
  onc->add_option("--seed", on.seed, "seed of the dataset and the arrival times");
  onc->add_option("--max-concurrency", on.max_concurrency, "in-flight cap; a,b,c runs a sweep")
      ->delimiter(',');
  onc->add_option("--input-len,--random-input-len", on.input_len, "random dataset prompt tokens");
  onc->add_option("--output-len,--random-output-len", on.output_len,
                  "random dataset output tokens");
  onc->add_option("--random-range-ratio", on.range_ratio,
                  "lengths uniform in len*(1-r)..len*(1+r)");
  onc->add_option("--random-prefix-len", on.prefix_len, "shared random prefix tokens");
  onc->add_option("--sharegpt-output-len", on.sharegpt_output_len,
                  "fixed output length for sharegpt");
  onc->add_option("--dataset,--dataset-name", on.dataset, "random | sharegpt FILE")->expected(1, 2);
  onc->add_option("--dataset-path", on.dataset_path, "ShareGPT JSON file");
  onc->add_option("--tokenizer", on.tokenizer_dir, "tokenizer directory: exact prompt lengths");
  onc->add_flag("--ignore-eos", on.ignore_eos,
                "send ignore_eos: outputs have exactly the requested length");
  onc->add_option("--num-warmups", on.num_warmups, "warm-up requests, not measured")
      ->check(CLI::NonNegativeNumber);
  onc->add_option("--metric-percentiles", on.percentiles, "comma-separated percentiles, 0..100");
  onc->add_option("--goodput", on.goodput, "SLOs: ttft:MS tpot:MS e2el:MS");
  onc->add_option("--timeout", on.timeout, "per-request connect/read timeout, s");
  onc->add_option("--result-file,--save-result", on.result_file, "write the results as JSON");
  onc->add_option("--plot", on.plot, "write an SVG plot");
  onc->add_flag("--disable-progress,--disable-tqdm", on.no_progress, "no progress bar");
  onc->footer(kOnlineFooter);

  PerplexityArgs pp;
  auto* ppc = app.add_subcommand(
      "perplexity", "the model's perplexity on a text file (llama.cpp's llama-perplexity method)");
  ppc->option_defaults()->always_capture_default();
  ppc->add_option("--file,-f", pp.file, "the text (UTF-8)")->required();
  ppc->add_option("--model", pp.model_dir, "model directory with its tokenizer files");
  ppc->add_option("--ctx,-c", pp.ctx, "tokens per chunk; the second half of each is scored");
  ppc->add_option("--chunks", pp.chunks, "chunks to use at most (0: all whole chunks)");
  ppc->add_option("--backend", pp.backend, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  ppc->add_option("--tensor-parallel-size", pp.tensor_parallel,
                  "cuda: GPUs to split the model over")
      ->check(CLI::Range(1, 64));
  ppc->add_flag("--enable-expert-parallel", pp.expert_parallel,
                "cuda, with --tensor-parallel-size > 1: routed experts split by expert");
  ppc->add_option("--precision", pp.precision, "cuda activations: bf16 or high")
      ->check(CLI::IsMember({"bf16", "high"}));
  ppc->add_option("--kv-cache-dtype", pp.kv_cache_dtype, "MLA latent cache: auto, bf16 or fp8")
      ->check(CLI::IsMember({"auto", "bf16", "fp8"}));
  ppc->add_option("--result-file", pp.result_file, "write the result as JSON");

  CLI11_PARSE(app, argc, argv);
  // One socket per in-flight request: allow as many descriptors as the hard limit permits.
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  try {
    kimi::set_log_level(log_level);
    if (*offc) {
      off.o.progress = !off_no_progress;
      return run_offline_cmd(off);
    }
    if (*ppc) return run_perplexity_cmd(pp);
    return run_online_cmd(on);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kimi-bench: %s\n", e.what());
    return 1;
  }
}
