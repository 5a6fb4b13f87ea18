#include "core/check.h"

namespace kimi {

void fail_check(const char* file, int line, const char* expr, const std::string& msg) {
  std::string where = str(file, ":", line, ": check failed: ", expr);
  throw Error(msg.empty() ? where : msg + " (" + where + ")");
}

}  // namespace kimi
