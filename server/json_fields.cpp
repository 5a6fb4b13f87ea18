#include "json_fields.h"

#include <cmath>

#include "api_error.h"
#include "core/check.h"

namespace kimi::server {

std::string json_type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer";
    case json::value_t::number_float:
      return "a number";
    default:
      return "an unsupported value";
  }
}

Fields::Fields(const json& obj, std::string path) : obj_(obj), path_(std::move(path)) {
  if (!obj_.is_object()) {
    std::string where = path_.empty() ? "the request body" : path_.substr(0, path_.size() - 1);
    throw_bad_request(where.empty() ? "" : where, str(where, " must be a JSON object"));
  }
}

const json* Fields::get(const std::string& key) const {
  auto it = obj_.find(key);
  if (it == obj_.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<bool> Fields::boolean(const std::string& key) const {
  const json* v = get(key);
  if (!v) return std::nullopt;
  if (!v->is_boolean())
    throw_bad_request(name(key),
                      str("'", name(key), "' must be a boolean, got ", json_type_name(*v)));
  return v->get<bool>();
}

std::optional<double> Fields::number(const std::string& key, double lo, double hi) const {
  const json* v = get(key);
  if (!v) return std::nullopt;
  if (!v->is_number())
    throw_bad_request(name(key),
                      str("'", name(key), "' must be a number, got ", json_type_name(*v)));
  double d = v->get<double>();
  if (!std::isfinite(d) || d < lo || d > hi)
    throw_bad_request(
        name(key), str("'", name(key), "' must be between ", lo, " and ", hi, ", got ", v->dump()));
  return d;
}

std::optional<int64_t> Fields::integer(const std::string& key, int64_t lo, int64_t hi) const {
  const json* v = get(key);
  if (!v) return std::nullopt;
  int64_t i = 0;
  // Unsigned first: nlohmann counts it as an integer too, and 2^63 and above would wrap.
  if (v->is_number_unsigned()) {
    uint64_t u = v->get<uint64_t>();
    if (u > uint64_t(INT64_MAX))
      throw_bad_request(name(key), str("'", name(key), "' is out of range: ", v->dump()));
    i = int64_t(u);
  } else if (v->is_number_integer()) {
    i = v->get<int64_t>();
  } else if (v->is_number_float()) {
    double d = v->get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9.0e15)
      throw_bad_request(name(key), str("'", name(key), "' must be an integer, got ", v->dump()));
    i = int64_t(d);
  } else {
    throw_bad_request(name(key),
                      str("'", name(key), "' must be an integer, got ", json_type_name(*v)));
  }
  if (i < lo || i > hi)
    throw_bad_request(name(key),
                      str("'", name(key), "' must be between ", lo, " and ", hi, ", got ", i));
  return i;
}

std::optional<std::string> Fields::string(const std::string& key) const {
  const json* v = get(key);
  if (!v) return std::nullopt;
  if (!v->is_string())
    throw_bad_request(name(key),
                      str("'", name(key), "' must be a string, got ", json_type_name(*v)));
  return v->get<std::string>();
}

const json* Fields::object(const std::string& key) const {
  const json* v = get(key);
  if (v && !v->is_object())
    throw_bad_request(name(key),
                      str("'", name(key), "' must be an object, got ", json_type_name(*v)));
  return v;
}

const json* Fields::array(const std::string& key) const {
  const json* v = get(key);
  if (v && !v->is_array())
    throw_bad_request(name(key),
                      str("'", name(key), "' must be an array, got ", json_type_name(*v)));
  return v;
}

std::string Fields::require_string(const std::string& key) const {
  auto s = string(key);
  if (!s) throw_bad_request(name(key), str("'", name(key), "' is required"));
  return *s;
}

}  // namespace kimi::server
