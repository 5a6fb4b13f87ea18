// The message of the kimi::Error a call throws, for the tests of refusals: "" when it throws none
// (compared with the expected message, or with "" where the call must be accepted).
#pragma once

#include <functional>
#include <string>

#include "core/check.h"

namespace kimi::test {

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The message of launch(bad), bad = params after change(bad): the launchers' refusal tests, one
// bad argument per call.
template <typename P, typename Launch, typename Change>
std::string error_with(const P& params, Launch&& launch, Change&& change) {
  P bad = params;
  change(bad);
  return error_of([&] { launch(bad); });
}

inline bool contains(const std::string& text, const char* part) {
  return text.find(part) != std::string::npos;
}

}  // namespace kimi::test
