// Errors: one exception type for the whole engine (style.md "errors are loud and precise").
// KIMI_CHECK is for invariants and carries the source position; kimi::fail is for bad input
// (files, configs, requests) and carries only the message the user needs.
// This header has no fmt/spdlog dependency so .cu files can include it.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace kimi {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Concatenates its arguments with operator<< into one string.
template <typename... Args>
std::string str(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(str(std::forward<Args>(args)...));
}

// Inline so kernels/ and src/ops/cuda/ (a separate library) need nothing else from core.
[[noreturn]] inline void fail_check(const char* file, int line, const char* expr,
                                    const std::string& msg) {
  std::string where = str(file, ":", line, ": check failed: ", expr);
  throw Error(msg.empty() ? where : msg + " (" + where + ")");
}

}  // namespace kimi

#define KIMI_CHECK(cond, ...)                                                       \
  do {                                                                              \
    if (!(cond)) ::kimi::fail_check(__FILE__, __LINE__, #cond, ::kimi::str("" __VA_ARGS__)); \
  } while (0)
