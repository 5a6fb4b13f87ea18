#include "bench/offline_report.h"

#include <algorithm>
#include <cstdio>
#include <optional>

namespace kimi::bench {
namespace {

std::string f(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

std::string mib(int64_t b) {
  return f("%.1f MiB", double(b) / (1 << 20));
}

// The ceiling a step's bytes are measured against: one GPU's copy rate times the GPUs.
std::optional<double> ceiling_gbps(const OfflineResults& r) {
  if (!r.copy_gbps) return std::nullopt;
  return *r.copy_gbps * r.split.world;
}

}  // namespace

std::string format_offline_table(const OfflineResults& r, const std::string& model_label) {
  std::string s = "model " + model_label + ", backend " + r.backend + ", " +
                  std::to_string(r.threads) + " threads; " + f("%.3g", double(r.params.total)) +
                  " parameters (" + std::to_string(r.weight_elem_bytes) +
                  " B each); caches: " + std::to_string(r.cache.slot) + " B per KDA slot, " +
                  std::to_string(r.cache.mla_token) + " B per MLA token (" + r.kv_cache_dtype +
                  ")" +
                  (r.split.world > 1 ? "; " + std::to_string(r.split.world) + " GPUs (" +
                                           (r.split.expert_parallel ? "expert" : "tensor") +
                                           " parallel): bytes and memory summed over them"
                                     : "") +
                  "\n\n";
  if (!r.prefill.empty()) {
    s += "| prefill | prompt tokens | time (ms) | tokens/s | CPU share "
         "|\n|---|---:|---:|---:|---:|\n";
    for (auto& p : r.prefill)
      s += "| prefill | " + std::to_string(p.prompt_len) + " | " + f("%.2f", p.seconds * 1e3) +
           " | " + f("%.0f", p.tokens_per_s) + " | " + f("%.2f", p.cpu_share) + " |\n";
    s += "\n";
  }
  if (!r.decode.empty()) {
    s += "| decode | batch | context | TPOT (ms) | tokens/s | weight MB/step | state MB/step | "
         "achieved GB/s | CPU share |\n"
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (auto& d : r.decode)
      s += "| decode | " + std::to_string(d.batch) + " | " + std::to_string(d.context) + " | " +
           f("%.3f", d.tpot_ms) + " | " + f("%.0f", d.tokens_per_s) + " | " +
           f("%.2f", d.bytes.weights / 1e6) + " | " + f("%.2f", d.bytes.state / 1e6) + " | " +
           f("%.2f", d.achieved_gbps) + " | " + f("%.2f", d.cpu_share) + " |\n";
    s += "\n";
  }
  s += "memory: weights " + mib(r.memory.weight_bytes) + ", caches " + mib(r.memory.cache_bytes) +
       ", process RSS " + mib(r.memory.rss_bytes) + " (peak " + mib(r.memory.peak_rss_bytes) +
       "), device " + r.memory.device + "\n";
  s += "copy bandwidth ceiling: " + (r.copy_gbps ? f("%.1f GB/s", *r.copy_gbps) : r.copy_note) +
       "\n";
  if (const auto ceiling = ceiling_gbps(r); ceiling && !r.decode.empty()) {
    s += "decode bandwidth as a fraction of the ceiling" +
         (r.split.world > 1 ? " (" + std::to_string(r.split.world) + " GPUs' copy rate)"
                            : std::string()) +
         ":";
    for (auto& d : r.decode)
      s += " b" + std::to_string(d.batch) + "/c" + std::to_string(d.context) + " " +
           f("%.0f%%", 100.0 * d.achieved_gbps / *ceiling);
    s += "\n";
  }
  return s;
}

nlohmann::ordered_json offline_json(const OfflineResults& r, const std::string& model_label,
                                    const SystemInfo& sys, const std::string& date) {
  nlohmann::ordered_json j;
  j["mode"] = "offline";
  j["date"] = date;
  j["model"] = model_label;
  j["backend"] = r.backend;
  j["threads"] = r.threads;
  j["gpus"] = r.split.world;
  j["expert_parallel"] = r.split.expert_parallel;
  j["parameters"] = r.params.total;
  j["weight_elem_bytes"] = r.weight_elem_bytes;
  j["kv_cache_dtype"] = r.kv_cache_dtype;
  j["kda_slot_bytes"] = r.cache.slot;
  j["mla_token_bytes"] = r.cache.mla_token;
  auto& pre = j["prefill"] = nlohmann::ordered_json::array();
  for (auto& p : r.prefill)
    pre.push_back({{"prompt_len", p.prompt_len},
                   {"seconds", p.seconds},
                   {"tokens_per_s", p.tokens_per_s},
                   {"cpu_share", p.cpu_share}});
  auto& dec = j["decode"] = nlohmann::ordered_json::array();
  for (auto& d : r.decode)
    dec.push_back({{"batch", d.batch},
                   {"context", d.context},
                   {"tpot_ms", d.tpot_ms},
                   {"tokens_per_s", d.tokens_per_s},
                   {"weight_bytes_per_step", d.bytes.weights},
                   {"state_bytes_per_step", d.bytes.state},
                   {"expected_experts_per_moe_layer", d.bytes.expected_experts_per_layer},
                   {"achieved_gbps", d.achieved_gbps},
                   {"cpu_share", d.cpu_share},
                   {"fraction_of_copy_ceiling",
                    r.copy_gbps ? nlohmann::ordered_json(d.achieved_gbps / *ceiling_gbps(r))
                                : nlohmann::ordered_json()}});
  j["memory"] = {{"weight_bytes", r.memory.weight_bytes},
                 {"cache_bytes", r.memory.cache_bytes},
                 {"rss_bytes", r.memory.rss_bytes},
                 {"peak_rss_bytes", r.memory.peak_rss_bytes},
                 {"device", r.memory.device}};
  j["copy_bandwidth_gbps"] =
      r.copy_gbps ? nlohmann::ordered_json(*r.copy_gbps) : nlohmann::ordered_json(r.copy_note);
  j["host"] = {{"hostname", sys.hostname}, {"cpu", sys.cpu_model}, {"cpu_cores", sys.cpu_cores}};
  j["card"] = sys.card;
  j["git_commit"] = sys.git_commit;
  j["git_dirty"] = sys.git_dirty;
  j["kimi_bench_version"] = sys.version;
  return j;
}

void add_offline_plot(SvgPlot& plot, const OfflineResults& r) {
  if (!r.prefill.empty()) {
    std::vector<double> x, y;
    for (auto& p : r.prefill) {
      x.push_back(p.prompt_len);
      y.push_back(p.tokens_per_s);
    }
    plot.add_lines("Prefill throughput", "prompt tokens", "tokens/s", x, {{"prefill", y}});
  }
  // One TPOT line per context depth over the batch sizes.
  std::vector<double> batches;
  for (auto& d : r.decode)
    if (std::find(batches.begin(), batches.end(), double(d.batch)) == batches.end())
      batches.push_back(d.batch);
  if (!batches.empty()) {
    std::vector<Series> tpot, bw;
    for (auto& d : r.decode) {
      std::string name = "context " + std::to_string(d.context);
      auto it =
          std::find_if(tpot.begin(), tpot.end(), [&](const Series& s) { return s.name == name; });
      if (it == tpot.end()) {
        tpot.push_back({name, {}});
        bw.push_back({name, {}});
        it = tpot.end() - 1;
      }
      it->y.push_back(d.tpot_ms);
      bw[size_t(it - tpot.begin())].y.push_back(d.achieved_gbps);
    }
    plot.add_lines("Decode TPOT", "batch size", "ms", batches, tpot);
    plot.add_lines("Decode achieved weight + state bandwidth", "batch size", "GB/s", batches, bw);
  }
}

}  // namespace kimi::bench
