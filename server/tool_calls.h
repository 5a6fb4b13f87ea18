// Kimi tool calls in generated text -> OpenAI tool_calls (serving.md §5.2), incrementally so the
// same code serves streamed and whole responses:
//   TEXT<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>
//   {json}<|tool_call_end|>...<|tool_calls_section_end|>
// id = "functions.NAME:IDX" verbatim; name = the text after the last '.' before ':'; arguments =
// the raw text. Marker text split across feeds is held back until it is complete. Text after the
// section end is dropped, as are other Kimi turn markers in the content.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "openai_request.h"

namespace kimi::server {

struct ToolCallDelta {
  int index = 0;
  bool start = false;     // first delta of this call: carries id and name
  std::string id, name;
  std::string arguments;  // fragment to append
};

struct ParsedDelta {
  std::string content;
  std::vector<ToolCallDelta> calls;
  bool empty() const { return content.empty() && calls.empty(); }
};

class ToolCallParser {
 public:
  // `forced_prefix`: text the server put at the start of the answer (tool_choice required/named);
  // parsed as if generated, its deltas come out of the first feed().
  explicit ToolCallParser(std::string_view forced_prefix = {});

  ParsedDelta feed(std::string_view text);
  ParsedDelta finish();  // the end of the generation: releases held-back text

  // Calls seen so far, the open one (no end marker yet) included.
  const std::vector<ToolCall>& calls() const { return calls_; }
  int num_completed() const { return completed_; }

  static std::string name_from_id(std::string_view id);

 private:
  enum class State { kContent, kSection, kId, kArgs, kAfter };
  void run(ParsedDelta& out, bool final);

  State state_ = State::kContent;
  std::string pending_;
  std::vector<ToolCall> calls_;
  int completed_ = 0;
  bool args_started_ = false;
  ParsedDelta carried_;  // output of the forced prefix
};

}  // namespace kimi::server
