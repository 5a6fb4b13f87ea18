// Logging goes through spdlog in host .cpp files only (nvcc 13 cannot compile fmt 9 headers).
#pragma once

#include <spdlog/spdlog.h>

namespace kimi {
// Sets the global level from a name ("debug", "info", "warn", "error", "off").
void set_log_level(const std::string& level);
}  // namespace kimi
