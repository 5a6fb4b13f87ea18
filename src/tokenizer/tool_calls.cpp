#include "tokenizer/tool_calls.h"

#include <algorithm>

namespace kimi {

namespace {
constexpr std::string_view kSectionBegin = kToolCallsSectionBegin,
                           kSectionEnd = kToolCallsSectionEnd, kCallBegin = kToolCallBegin,
                           kArgBegin = kToolCallArgumentBegin, kCallEnd = kToolCallEnd;
}  // namespace

ParsedOutput parse_tool_calls(std::string_view text) {
  const size_t begin = text.find(kSectionBegin);
  if (begin == std::string_view::npos) return {std::string(text), {}};
  auto plain = [&] { return ParsedOutput{std::string(text), {}}; };
  auto trim = [](std::string_view s) {
    const size_t a = s.find_first_not_of(" \t\r\n");
    if (a == std::string_view::npos) return std::string_view();
    return s.substr(a, s.find_last_not_of(" \t\r\n") - a + 1);
  };
  ParsedOutput out{std::string(text.substr(0, begin)), {}};
  std::string_view rest = text.substr(begin + kSectionBegin.size());
  for (;;) {
    rest = rest.substr(std::min(rest.size(), rest.find_first_not_of(" \t\r\n")));
    if (rest.empty()) break;  // no section end: tolerated
    if (rest.starts_with(kSectionEnd)) {
      const std::string_view after = rest.substr(kSectionEnd.size());
      if (!trim(after).empty()) out.content += after;
      break;
    }
    if (!rest.starts_with(kCallBegin)) return plain();
    rest.remove_prefix(kCallBegin.size());
    const size_t arg = rest.find(kArgBegin);
    if (arg == std::string_view::npos) return plain();
    const std::string_view id = trim(rest.substr(0, arg));
    const size_t colon = id.find(':');
    if (id.empty() || id.find('<') != std::string_view::npos || colon == std::string_view::npos)
      return plain();
    const std::string_view idx = id.substr(id.rfind(':') + 1);
    if (idx.empty() || idx.find_first_not_of("0123456789") != std::string_view::npos)
      return plain();
    rest.remove_prefix(arg + kArgBegin.size());
    const size_t end = rest.find(kCallEnd);
    if (end == std::string_view::npos) return plain();
    const std::string_view args = rest.substr(0, end);
    if (args.find(kCallBegin) != std::string_view::npos) return plain();
    std::string_view name = id.substr(0, colon);
    if (const size_t dot = name.rfind('.'); dot != std::string_view::npos)
      name.remove_prefix(dot + 1);
    out.tool_calls.push_back({std::string(id), std::string(name), std::string(trim(args))});
    rest.remove_prefix(end + kCallEnd.size());
  }
  return out;
}

}  // namespace kimi
