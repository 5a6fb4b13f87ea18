// API-key checks (vLLM's rule: the key guards /v1/*, compared in constant time).
#pragma once

#include <string>
#include <vector>

namespace kimi::server {

// The time depends only on the lengths, not on where the strings differ.
bool constant_time_equal(const std::string& a, const std::string& b);

// Whether an Authorization header value carries one of `keys` as "Bearer KEY". Every key is
// compared, so the time does not reveal which one matched.
bool authorized(const std::string& authorization, const std::vector<std::string>& keys);

}  // namespace kimi::server
