#include "bench/progress.h"

#include <unistd.h>

#include <cstdio>

namespace kimi::bench {

Progress::Progress(std::string label, int total, bool enabled)
    : label_(std::move(label)),
      total_(total),
      enabled_(enabled && isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()) {
  std::lock_guard lk(mu_);
  draw(true);
}

Progress::~Progress() {
  finish();
}

void Progress::tick(bool ok) {
  std::lock_guard lk(mu_);
  ++done_;
  if (!ok) ++failed_;
  draw(done_ == total_);
}

void Progress::finish() {
  std::lock_guard lk(mu_);
  if (finished_) return;
  finished_ = true;
  if (!enabled_) return;
  draw(true);
  std::fputc('\n', stderr);
}

void Progress::draw(bool force) {
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (!force && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  constexpr int kWidth = 30;
  int filled = total_ > 0 ? done_ * kWidth / total_ : kWidth;
  std::string bar(size_t(filled), '#');
  bar.resize(kWidth, '.');
  double secs = std::chrono::duration<double>(now - start_).count();
  std::fprintf(stderr, "\r%s [%s] %d/%d  %.1fs%s", label_.c_str(), bar.c_str(), done_, total_, secs,
               failed_ ? ("  failed " + std::to_string(failed_)).c_str() : "");
  std::fflush(stderr);
}

}  // namespace kimi::bench
