// kimi-run: one-shot generation. Prints the generated ids on one line as a JSON array.
// --dump-logits FILE writes the prompt's per-position next-token logits as one F32 tensor
// `logits` [T, vocab] in a safetensors file. This interface is used by checks outside the
// repository: keep it stable.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/check.h"
#include "core/log.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"
#include <filesystem>
#include <optional>

namespace {

std::vector<int> parse_ids(const std::string& s) {
  std::vector<int> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t pos = 0;
    int v = 0;
    try {
      v = std::stoi(item, &pos);
    } catch (const std::exception&) {
      pos = 0;
    }
    if (pos == 0 || item.find_first_not_of(" \t", pos) != std::string::npos)
      kimi::fail("--prompt-ids: '", item, "' is not an integer");
    ids.push_back(v);
  }
  if (ids.empty()) kimi::fail("--prompt-ids: no ids given");
  if (s.back() == ',') kimi::fail("--prompt-ids: '", s, "' ends with a comma");
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Kimi Linear one-shot generation"};
  std::string model_dir = KIMI_DEFAULT_MODEL_DIR, prompt_ids, prompt, dump_logits;
  int max_tokens = 16;
  kimi::SamplingParams sp;
  bool seed_given = false;
  std::string log_level = "warn", backend = "cpu";
  bool random_weights = false;
  int layers = 0;
  uint64_t weights_seed = 1;
  int tp = 1;
  app.add_option("--model", model_dir, "model directory (default: the embedded tiny model)");
  auto* ids_opt = app.add_option("--prompt-ids", prompt_ids, "comma-separated token ids");
  auto* text_opt = app.add_option("--prompt", prompt, "prompt text (needs the tokenizer files)");
  ids_opt->excludes(text_opt);
  app.add_option("--max-tokens", max_tokens, "tokens to generate")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app.add_option("--temperature", sp.temperature, "0 = greedy")->capture_default_str();
  app.add_option("--top-p", sp.top_p, "nucleus sampling, in (0, 1]")->capture_default_str();
  app.add_option("--top-k", sp.top_k, "keep the K most likely tokens (0 or -1: off)")
      ->capture_default_str();
  app.add_option("--min-p", sp.min_p,
                 "drop tokens below min-p times the top probability, in [0, 1]")
      ->capture_default_str();
  app.add_option("--seed", sp.seed, "sampling seed (default: from the clock)")
      ->each([&](const std::string&) { seed_given = true; });
  app.add_option("--dump-logits", dump_logits, "write the prompt's logits [T, vocab] here");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();
  app.add_option("--backend", backend, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_flag("--random-weights", random_weights,
               "cuda: draw the weights on the GPU from config.json alone (no safetensors needed)");
  app.add_option("--layers", layers, "with --random-weights: keep the first N layers (0: all)");
  app.add_option("--weights-seed", weights_seed, "seed of --random-weights");
  app.add_option("--tensor-parallel-size", tp, "cuda: GPUs to split the model over (1, 2, 4, 8)")
      ->check(CLI::Range(1, 64));
  bool expert_parallel = false;
  app.add_flag("--enable-expert-parallel", expert_parallel,
               "cuda, with --tensor-parallel-size > 1: routed experts split by expert");
  std::string precision = "bf16";
  app.add_option("--precision", precision,
                 "cuda activations: bf16 (fast) or high (hi/lo split GEMM inputs, fp32 KDA)")
      ->check(CLI::IsMember({"bf16", "high"}));
  std::string kv_cache_dtype = "auto";
  app.add_option("--kv-cache-dtype", kv_cache_dtype,
                 "MLA latent cache: auto (= bf16), bf16 or fp8 (e4m3, a scale per 128 values)")
      ->check(CLI::IsMember({"auto", "bf16", "fp8"}));
  CLI11_PARSE(app, argc, argv);

  try {
    kimi::set_log_level(log_level);
    if (!ids_opt->count() && !text_opt->count()) kimi::fail("give --prompt-ids or --prompt");
    if (text_opt->count() && prompt.empty()) kimi::fail("--prompt is empty");
    std::optional<kimi::Tokenizer> tok;
    if (std::filesystem::exists(model_dir + "/tiktoken.model")) tok = kimi::Tokenizer::load(model_dir);
    std::vector<int> ids;
    if (text_opt->count()) {
      if (!tok) kimi::fail("--prompt needs ", model_dir, "/tiktoken.model; give --prompt-ids instead");
      ids = tok->encode(prompt, /*allow_special=*/true);
      if (ids.empty()) kimi::fail("--prompt encodes to no tokens");
    } else {
      ids = parse_ids(prompt_ids);
    }
    if (!seed_given) sp.seed = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());

    kimi::ModelOptions opts;
    opts.backend = backend;
    opts.random_weights = random_weights;
    opts.num_layers = layers;
    opts.seed = weights_seed;
    opts.tensor_parallel = tp;
    opts.expert_parallel = expert_parallel;
    opts.precision = kimi::parse_precision(precision);
    opts.kv_cache_dtype = kimi::parse_kv_cache_dtype(kv_cache_dtype);
    const int T = int(ids.size());
    opts.max_batch_tokens = std::max(T, 1);
    const int total = T + max_tokens;
    opts.cache.num_slots = 1;
    opts.cache.num_blocks = (total + kimi::kBlockSize - 1) / kimi::kBlockSize;
    auto model = kimi::load_model(model_dir, opts);
    const auto& cfg = model->config();
    if (total > cfg.model_max_length)
      kimi::fail("prompt (", T, ") + max tokens (", max_tokens, ") exceeds the model's maximum context length ",
                 cfg.model_max_length);
    std::string bad = sp.validate(cfg.vocab_size);
    if (!bad.empty()) kimi::fail(bad);
    for (int id : ids)
      if (id < 0 || id >= cfg.vocab_size)
        kimi::fail("--prompt-ids: token ", id, " is outside the vocabulary 0..", cfg.vocab_size - 1);
    std::vector<int> blocks(opts.cache.num_blocks);
    for (int i = 0; i < opts.cache.num_blocks; ++i) blocks[i] = i;

    auto t0 = std::chrono::steady_clock::now();
    kimi::Batch b;
    b.all_logits = !dump_logits.empty();
    b.add(ids, T, 0, blocks);
    std::vector<float> logits;
    model->forward(b, logits);
    auto t1 = std::chrono::steady_clock::now();
    const int V = cfg.vocab_size;
    if (!dump_logits.empty())
      kimi::write_safetensors(dump_logits, {{"logits", kimi::DType::kF32, {T, V}, logits.data()}});

    kimi::TokenHistory hist;
    hist.set_prompt(ids);
    std::vector<int> out;
    std::vector<float> last(logits.end() - V, logits.end());
    int ctx = T;
    for (int step = 0; step < max_tokens; ++step) {
      kimi::apply_logit_processors(last, sp, hist);
      int next = kimi::sample_token(last, sp, uint64_t(step));
      out.push_back(next);
      hist.add_generated(next);
      bool eos = false;
      for (int e : cfg.eos_token_ids) eos |= next == e;
      if (tok)
        for (int e : tok->stop_ids()) eos |= next == e;
      if (eos || step + 1 == max_tokens) break;
      kimi::Batch d;
      d.add({next}, ++ctx, 0, blocks);
      model->forward(d, logits);
      last.assign(logits.begin(), logits.end());
    }
    auto t2 = std::chrono::steady_clock::now();
    std::printf("%s\n", nlohmann::json(out).dump().c_str());
    if (tok) {
      // The text as a JSON string on the second line (invalid UTF-8 of a cut-off character is
      // replaced by U+FFFD).
      std::string text = tok->decode(out);
      std::printf("%s\n", nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
    std::fflush(stdout);
    double pre = std::chrono::duration<double>(t1 - t0).count();
    double dec = std::chrono::duration<double>(t2 - t1).count();
    std::fprintf(stderr, "prefill %d tokens in %.3f s (%.1f tok/s); decode %zu tokens in %.3f s (%.1f tok/s)\n",
                 T, pre, T / pre, out.size(), dec, out.size() > 1 ? (out.size() - 1) / dec : 0.0);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kimi-run: %s\n", e.what());
    return 1;
  }
  return 0;
}
