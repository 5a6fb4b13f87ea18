// tool_choice "required" / a named function: the answer is constrained to Kimi tool calls whose
// arguments match the function's `parameters` schema (vLLM constrains both with structured
// outputs). The server's prompt already ends inside the call (server/prompt.cpp), with
// "...<|tool_calls_section_begin|><|tool_call_begin|>functions." (required) or with the whole
// id and <|tool_call_argument_begin|> (named); what follows must be
//   named:    ARGS <|tool_call_end|> <|tool_calls_section_end|> EOS
//   required: NAME:IDX <|tool_call_argument_begin|> ARGS <|tool_call_end|>
//             (<|tool_call_begin|> functions.NAME:IDX <|tool_call_argument_begin|> ARGS
//              <|tool_call_end|>)*   -- only when parallel
//             <|tool_calls_section_end|> EOS
// NAME is one of the declared functions, IDX the call's number (first_index, then one more per
// call: the ids the chat template and vLLM's kimi_k2 ids count on from the history), ARGS one
// JSON document valid against that function's schema, matched by JsonMatcher. Markers are
// special ids; everything else is the bytes of base tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/json_matcher.h"
#include "runtime/json_schema.h"

namespace kimi {

class Tokenizer;

struct ToolCallGrammar {
  struct Function {
    std::string name;  // no '.' or ':' (the server's tool-name rule)
    std::shared_ptr<const JsonSchema> parameters;
  };
  // required: any of `functions`, one call or (parallel) more; otherwise one call of the only
  // function, whose id the prompt holds.
  ToolCallGrammar(std::vector<Function> functions, bool required, bool parallel, int first_index);

  std::vector<Function> functions;  // sorted by "NAME:" bytes, so a name prefix is a range
  bool required;
  bool parallel;
  int first_index;
};

// The marker ids, from the tokenizer's special tokens.
struct ToolCallMarkers {
  int section_end = -1, call_begin = -1, argument_begin = -1, call_end = -1;
  static std::optional<ToolCallMarkers> of(const Tokenizer& tok);  // nullopt if one is missing
};

class ToolCallMatcher {
 public:
  enum class Phase : uint8_t {
    kId,         // "functions.NAME:IDX" (the first call starts after "functions.")
    kArguments,  // ARGS, then <|tool_call_end|>
    kAfterCall,  // <|tool_call_begin|> (required, parallel) or <|tool_calls_section_end|>
    kEnd,        // the section has ended: only the end ids (EOS) may follow
  };

  ToolCallMatcher(std::shared_ptr<const ToolCallGrammar> grammar, ToolCallMarkers markers);

  // A byte of a base token; false (and no change) if it may not follow.
  bool step(uint8_t c);
  // The bytes of a base token; false if one may not follow (the state is then unspecified).
  bool step(std::string_view bytes);
  // A special token: a marker where the grammar allows it; false (no change) otherwise.
  bool step_marker(int id);

  Phase phase() const { return phase_; }
  // kArguments: the JSON text of the current call's arguments so far.
  const JsonMatcher& arguments() const { return *args_; }
  // The markers that may come next: <|tool_call_argument_begin|> once the id is whole,
  // <|tool_call_end|> in kArguments (once the document is complete, which the caller checks:
  // the JSON mask's end ids), the section's continuations in kAfterCall; none in kEnd.
  std::vector<int> markers() const;

 private:
  int id_byte(uint32_t fn, uint32_t pos) const;  // byte pos of fn's id text, -1 past its end
  bool id_whole() const;

  std::shared_ptr<const ToolCallGrammar> g_;
  ToolCallMarkers markers_;
  Phase phase_ = Phase::kId;
  int calls_ = 0;                  // calls begun before the current one
  uint32_t pos_ = 0;               // kId: bytes of the id text matched
  uint32_t first_ = 0, last_ = 0;  // kId: the functions whose id texts still match, [first_, last_)
  std::optional<JsonMatcher> args_;  // kArguments
};

}  // namespace kimi
