// Offline results as a markdown table (pasteable into docs/perf-log.md), JSON and an SVG.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "bench/offline.h"
#include "bench/svg_plot.h"
#include "bench/sysinfo.h"

namespace kimi::bench {

std::string format_offline_table(const OfflineResults& r, const std::string& model_label);
nlohmann::ordered_json offline_json(const OfflineResults& r, const std::string& model_label,
                                    const SystemInfo& sys, const std::string& date);
void add_offline_plot(SvgPlot& plot, const OfflineResults& r);

}  // namespace kimi::bench
