// A one-line progress bar on stderr, drawn only when stderr is a terminal (logs and CI output
// stay clean). Thread-safe; redraws at most ~10 times a second.
#pragma once

#include <chrono>
#include <mutex>
#include <string>

namespace kimi::bench {

class Progress {
 public:
  // enabled = false never draws (e.g. --disable-tqdm); true draws when stderr is a terminal.
  Progress(std::string label, int total, bool enabled = true);
  ~Progress();
  void tick(bool ok = true);  // one unit done
  void finish();              // final redraw and newline

 private:
  void draw(bool force);

  std::string label_;
  int total_, done_ = 0, failed_ = 0;
  bool enabled_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
  std::mutex mu_;
};

}  // namespace kimi::bench
