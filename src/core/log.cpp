#include "core/log.h"

#include "core/check.h"

namespace kimi {

void set_log_level(const std::string& level) {
  auto l = spdlog::level::from_str(level);
  if (l == spdlog::level::off && level != "off") fail("unknown log level '", level, "'");
  spdlog::set_level(l);
}

}  // namespace kimi
