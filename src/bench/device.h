// Accelerator hooks for the offline mode. On the CPU backend they report why there is nothing
// to measure; the CUDA backend measures with the CUDA runtime.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "model/config.h"
#include "model/model.h"

namespace kimi::bench {

// Device-to-device copy bandwidth (GB/s, bytes read + written), the ceiling decode bandwidth is
// compared with. nullopt with *why set when the backend has no device ("n/a on CPU").
std::optional<double> copy_bandwidth_gbps(const std::string& backend, std::string* why);

// Device memory in use as text ("12.3 GiB of 79.1 GiB"), or "n/a on CPU".
std::string device_memory_used(const std::string& backend);

// A model with random weights at the config's shapes (no checkpoint needed). Throws kimi::Error
// naming the backend and what it lacks when the backend cannot build one.
std::unique_ptr<Model> random_weights_model(const ModelConfig& c, const ModelOptions& opts);

}  // namespace kimi::bench
