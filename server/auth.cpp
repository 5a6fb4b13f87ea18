#include "auth.h"

#include <algorithm>

namespace kimi::server {

bool constant_time_equal(const std::string& a, const std::string& b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

bool authorized(const std::string& authorization, const std::vector<std::string>& keys) {
  const std::string prefix = "Bearer ";
  if (authorization.size() <= prefix.size() || authorization.compare(0, prefix.size(), prefix) != 0) return false;
  const std::string key = authorization.substr(prefix.size());
  bool ok = false;
  for (const auto& k : keys) ok |= constant_time_equal(key, k);
  return ok;
}

}  // namespace kimi::server
