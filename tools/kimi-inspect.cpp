// kimi-inspect: prints a checkpoint directory's parsed config and its tensors (name, dtype,
// shape, file) with totals. Reads only headers (the data stays mapped, untouched), so it is quick
// on the full ~98 GB checkpoint.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

#include "core/check.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace {

using namespace kimi;

std::string with_commas(uint64_t v) {
  std::string d = std::to_string(v), out;
  for (size_t i = 0; i < d.size(); ++i) {
    if (i && (d.size() - i) % 3 == 0) out += ',';
    out += d[i];
  }
  return out;
}

// "layers.2." before "layers.10.": runs of digits compare as numbers.
bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit((unsigned char)a[i]) && std::isdigit((unsigned char)b[j])) {
      size_t i2 = i, j2 = j;
      while (i2 < a.size() && std::isdigit((unsigned char)a[i2])) ++i2;
      while (j2 < b.size() && std::isdigit((unsigned char)b[j2])) ++j2;
      std::string x = a.substr(i, i2 - i), y = b.substr(j, j2 - j);
      x.erase(0, std::min(x.find_first_not_of('0'), x.size()));
      y.erase(0, std::min(y.find_first_not_of('0'), y.size()));
      if (x.size() != y.size()) return x.size() < y.size();
      if (x != y) return x < y;
      i = i2, j = j2;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i, ++j;
    }
  }
  return a.size() - i < b.size() - j || (a.size() - i == b.size() - j && a < b);
}

std::string human_bytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(b);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.2f %s" : "%.0f %s", v, units[u]);
  return buf;
}

void print_config(const ModelConfig& c) {
  std::string mla;
  for (int i = 0; i < c.num_hidden_layers; ++i)
    if (!c.is_kda(i)) mla += (mla.empty() ? "" : ",") + std::to_string(i);
  int moe = 0;
  for (int i = 0; i < c.num_hidden_layers; ++i) moe += c.is_moe(i);
  std::printf("config:\n");
  std::printf("  vocab_size          %d\n", c.vocab_size);
  std::printf("  hidden_size         %d\n", c.hidden_size);
  std::printf("  layers              %d (%d KDA, %d MLA at 0-based %s)\n", c.num_hidden_layers,
              c.num_kda_layers(), c.num_mla_layers(), mla.empty() ? "-" : mla.c_str());
  std::printf("  KDA heads           %d x %d, conv %d\n", c.kda_num_heads, kKdaHeadDim, kKdaConvSize);
  std::printf("  MLA heads           %d (latent %d + rope %d, nope %d, v %d; NoPE)\n",
              c.num_attention_heads, kMlaLatentDim, kMlaRopeDim, kMlaNopeDim, kMlaVDim);
  std::printf("  dense MLP           inter %d on %d layer(s)\n", c.intermediate_size,
              c.num_hidden_layers - moe);
  std::printf("  MoE                 %d experts, top-%d, inter %d, %d shared, scale %g, %s (%d layers)\n",
              c.num_experts, c.num_experts_per_token, c.moe_intermediate_size, c.num_shared_experts,
              double(c.routed_scaling_factor), c.moe_renormalize ? "renormalized" : "not renormalized",
              moe);
  std::printf("  rms_norm_eps        %g\n", double(c.rms_norm_eps));
  std::string eos;
  for (int id : c.eos_token_ids) eos += (eos.empty() ? "" : ",") + std::to_string(id);
  std::printf("  bos / eos / pad     %d / %s / %d\n", c.bos_token_id, eos.empty() ? "-" : eos.c_str(),
              c.pad_token_id);
  std::printf("  model_max_length    %lld\n\n", (long long)c.model_max_length);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Print a Kimi Linear checkpoint's config and tensor table"};
  std::string dir;
  std::string filter;
  bool no_tensors = false;
  app.add_option("--model", dir, "checkpoint directory (config.json + safetensors)")->required();
  app.add_option("--filter", filter, "only list tensors whose name contains this string");
  app.add_flag("--summary", no_tensors, "print the config and totals, not the tensor table");
  CLI11_PARSE(app, argc, argv);

  int rc = 0;
  std::string config_path = (std::filesystem::path(dir) / "config.json").string();
  if (std::filesystem::exists(config_path)) {
    try {
      print_config(ModelConfig::from_file(config_path));
    } catch (const Error& e) {
      std::fprintf(stderr, "error: %s\n\n", e.what());
      rc = 1;
    }
  } else {
    std::printf("config: %s not found\n\n", config_path.c_str());
  }

  try {
    Checkpoint ck(dir);
    std::vector<const TensorInfo*> rows;
    for (const std::string& name : ck.names())
      if (filter.empty() || name.find(filter) != std::string::npos) rows.push_back(&ck.get(name));
    std::sort(rows.begin(), rows.end(),
              [](const TensorInfo* x, const TensorInfo* y) { return natural_less(x->name, y->name); });

    size_t wn = 4, ws = 5, wf = 4;
    for (const TensorInfo* t : rows) {
      wn = std::max(wn, t->name.size());
      ws = std::max(ws, t->shape_str().size());
      wf = std::max(wf, std::filesystem::path(t->file).filename().string().size());
    }
    if (!no_tensors) {
      std::printf("%-*s  %-7s  %-*s  %s\n", int(wn), "name", "dtype", int(ws), "shape", "file");
      for (const TensorInfo* t : rows)
        std::printf("%-*s  %-7s  %-*s  %s\n", int(wn), t->name.c_str(), dtype_name(t->dtype), int(ws),
                    t->shape_str().c_str(), std::filesystem::path(t->file).filename().c_str());
      std::printf("\n");
    }

    struct Totals {
      uint64_t count = 0, params = 0, bytes = 0;
    };
    std::map<std::string, Totals> by_dtype;
    Totals all;
    for (const TensorInfo* t : rows) {
      for (Totals* s : {&by_dtype[dtype_name(t->dtype)], &all}) {
        s->count += 1;
        s->params += uint64_t(t->numel());
        s->bytes += t->nbytes;
      }
    }
    for (auto& [name, s] : by_dtype)
      std::printf("%-8s %8s tensors  %20s params  %12s\n", name.c_str(), with_commas(s.count).c_str(),
                  with_commas(s.params).c_str(), human_bytes(s.bytes).c_str());
    std::printf("%-8s %8s tensors  %20s params  %12s (%s bytes) in %zu file(s)%s\n", "total",
                with_commas(all.count).c_str(), with_commas(all.params).c_str(),
                human_bytes(all.bytes).c_str(), with_commas(all.bytes).c_str(), ck.files().size(),
                filter.empty() ? "" : ", filtered");
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return rc;
}
