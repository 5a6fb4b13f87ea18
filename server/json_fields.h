// Typed, validating reads of optional JSON fields: JSON null counts as absent (SDKs send nulls),
// a wrong type or an out-of-range value throws an ApiException naming the field by its path.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace kimi::server {

using json = nlohmann::json;

class Fields {
 public:
  // `path` prefixes field names in error messages ("messages[2]." -> "messages[2].role").
  Fields(const json& obj, std::string path);

  const std::string& path() const { return path_; }
  std::string name(const std::string& key) const { return path_ + key; }

  // nullptr when the key is missing or null.
  const json* get(const std::string& key) const;

  std::optional<bool> boolean(const std::string& key) const;
  std::optional<double> number(const std::string& key, double lo, double hi) const;
  // Accepts integral doubles (1.0); rejects 1.5.
  std::optional<int64_t> integer(const std::string& key, int64_t lo, int64_t hi) const;
  std::optional<std::string> string(const std::string& key) const;
  // Present and an object.
  const json* object(const std::string& key) const;
  const json* array(const std::string& key) const;

  // Required variants.
  std::string require_string(const std::string& key) const;

 private:
  const json& obj_;
  std::string path_;
};

// Fields of the top-level request body (path "").
inline Fields body_fields(const json& body) { return Fields(body, ""); }

// A JSON type name for messages ("a string", "an array", ...).
std::string json_type_name(const json& v);

}  // namespace kimi::server
