// kimi-make-tiny: writes a random checkpoint in the official layout, deterministic from the
// seed (the embedded default model is made this way at build time).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>

#include "core/check.h"
#include "model/tiny.h"
#include "tokenizer/train.h"

int main(int argc, char** argv) {
  CLI::App app{"Write a tiny random Kimi Linear checkpoint (config, sharded safetensors, index)"};
  std::string out;
  kimi::TinySpec s;
  bool quiet = false, no_tokenizer = false;
  int merges = 768;
  app.add_option("--out", out, "output directory")->required();
  app.add_option("--seed", s.seed, "random seed");
  app.add_option("--layers", s.layers, "number of layers (every 4th and the last are MLA)");
  app.add_option("--hidden", s.hidden, "hidden size");
  app.add_option("--kda-heads", s.kda_heads, "KDA heads");
  app.add_option("--mla-heads", s.mla_heads, "MLA heads");
  app.add_option("--experts", s.experts, "routed experts");
  app.add_option("--top-k", s.top_k, "experts per token");
  app.add_option("--moe-inter", s.moe_inter, "expert intermediate size");
  app.add_option("--dense-inter", s.dense_inter, "layer-0 dense MLP intermediate size");
  app.add_option("--shards", s.shards, "number of safetensors shards");
  app.add_option("--dtype", s.dtype, "BF16 or F32")->check(CLI::IsMember({"BF16", "F32"}));
  app.add_option("--merges", merges, "BPE merges of the trained tokenizer (base vocab = 256 + merges)")
      ->check(CLI::Range(0, 100000));
  app.add_flag("--no-tokenizer", no_tokenizer, "write no tokenizer files (vocab from --vocab)");
  app.add_option("--vocab", s.vocab, "vocabulary rows when --no-tokenizer (default 256 + merges + 256)");
  app.add_flag("--quiet", quiet, "print nothing on success");
  CLI11_PARSE(app, argc, argv);
  try {
    if (!no_tokenizer) {
      // The Kimi layout: 256 special slots after the base tokens; eos is <|im_end|> = base + 2.
      const int base = 256 + merges;
      s.vocab = base + 256;
      s.bos_id = base;
      s.eos_id = base + 2;
      s.pad_id = base + 255;
      kimi::write_trained_tokenizer(out, merges);
    } else {
      s.bos_id = std::min(s.bos_id, s.vocab - 1);
      s.eos_id = std::min(s.eos_id, s.vocab - 1);
      s.pad_id = std::min(s.pad_id, s.vocab - 1);
    }
    kimi::write_tiny_checkpoint(out, s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kimi-make-tiny: %s\n", e.what());
    return 1;
  }
  if (!quiet) std::printf("wrote %s\n", out.c_str());
  return 0;
}
