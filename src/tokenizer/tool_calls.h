// Kimi tool-call output format (serving.md §5.2) and its parser:
//   CONTENT<|tool_calls_section_begin|>
//     (<|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{json}<|tool_call_end|>)*
//   <|tool_calls_section_end|>
// Parsing follows vLLM's kimi_k2 parser: id verbatim, name = the id before the first ':' after
// its last '.', arguments = the raw text between the markers, whitespace-trimmed.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kimi {

inline constexpr std::string_view kToolCallsSectionBegin = "<|tool_calls_section_begin|>";
inline constexpr std::string_view kToolCallsSectionEnd = "<|tool_calls_section_end|>";
inline constexpr std::string_view kToolCallBegin = "<|tool_call_begin|>";
inline constexpr std::string_view kToolCallArgumentBegin = "<|tool_call_argument_begin|>";
inline constexpr std::string_view kToolCallEnd = "<|tool_call_end|>";

// A tool call recovered from generated text.
struct ToolCall {
  std::string id;         // verbatim, e.g. "functions.get_weather:0"
  std::string name;       // "get_weather": the id before ':' after the last '.'
  std::string arguments;  // raw JSON text, whitespace-trimmed, not validated
};

struct ParsedOutput {
  std::string content;  // text outside the tool-call section (may be empty)
  std::vector<ToolCall> tool_calls;
};

// Splits generated text (decoded with special tokens kept) into content and tool calls.
// Without <|tool_calls_section_begin|> everything is content. A malformed section (a call
// without its argument or end marker, a bad id, stray text between calls) makes the whole text
// plain content with no tool calls. A missing <|tool_calls_section_end|> is tolerated; text after
// it is appended to the content.
ParsedOutput parse_tool_calls(std::string_view text);

}  // namespace kimi
