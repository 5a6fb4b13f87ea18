// Where a result came from: host, CPU, accelerator, build commit. Recorded in every JSON result
// so runs stay comparable.
#pragma once

#include <string>

namespace kimi::bench {

struct SystemInfo {
  std::string hostname;
  std::string cpu_model;   // /proc/cpuinfo "model name"
  int cpu_cores = 0;       // online logical CPUs
  std::string card;        // accelerator name; "none (CPU build)" without CUDA
  std::string git_commit;  // HEAD of the source tree, "unknown" when git can't tell
  bool git_dirty = false;
  std::string version;  // KIMI_VERSION
};

SystemInfo system_info();

// Resident set size now and its peak (bytes), from /proc/self/status; 0 when unavailable.
int64_t rss_bytes();
int64_t peak_rss_bytes();

}  // namespace kimi::bench
