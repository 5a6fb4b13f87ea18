#include "bench/sysinfo.h"

#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <memory>
#include <thread>

namespace kimi::bench {
namespace {

// stdout of a shell command, trailing newline removed; "" on failure.
std::string run_capture(const std::string& cmd) {
  std::unique_ptr<FILE, int (*)(FILE*)> p(popen(cmd.c_str(), "r"), pclose);
  if (!p) return "";
  std::string out;
  std::array<char, 256> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p.get())) > 0) out.append(buf.data(), n);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

int64_t status_kib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(std::string(key).size())) * 1024;
  return 0;
}

}  // namespace

int64_t rss_bytes() {
  return status_kib("VmRSS:");
}
int64_t peak_rss_bytes() {
  return status_kib("VmHWM:");
}

SystemInfo system_info() {
  SystemInfo s;
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) == 0) s.hostname = host;
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto c = line.find(':');
      if (c != std::string::npos) s.cpu_model = line.substr(line.find_first_not_of(" \t", c + 1));
      break;
    }
  }
  s.cpu_cores = int(std::thread::hardware_concurrency());
#ifdef KIMI_HAVE_CUDA
  // The CUDA backend will report the device it runs on; until it exposes that, ask the driver.
  s.card = run_capture("nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1");
  if (s.card.empty()) s.card = "unknown (CUDA build, nvidia-smi gave nothing)";
#else
  s.card = "none (CPU build)";
#endif
    // The commit of the tree the binary was built from, read at run time so it is right in a fresh
    // clone and after new commits without a reconfigure.
#ifdef KIMI_SOURCE_DIR
  std::string git = std::string("git -C '") + KIMI_SOURCE_DIR + "' ";
  s.git_commit = run_capture(git + "rev-parse HEAD 2>/dev/null");
  if (!s.git_commit.empty())
    s.git_dirty = !run_capture(git + "status --porcelain --untracked-files=no 2>/dev/null").empty();
#endif
  if (s.git_commit.empty()) s.git_commit = "unknown";
#ifdef KIMI_VERSION
  s.version = KIMI_VERSION;
#endif
  return s;
}

}  // namespace kimi::bench
