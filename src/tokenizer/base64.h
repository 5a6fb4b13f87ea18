// Strict standard base64 (RFC 4648 alphabet, '=' padding required), as tiktoken.model uses.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace kimi {

// nullopt when s is not canonical padded base64.
std::optional<std::string> base64_decode(std::string_view s);
std::string base64_encode(std::string_view bytes);

}  // namespace kimi
