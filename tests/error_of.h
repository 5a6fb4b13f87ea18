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

}  // namespace kimi::test
