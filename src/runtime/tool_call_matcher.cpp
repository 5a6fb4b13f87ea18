#include "runtime/tool_call_matcher.h"

#include <algorithm>

#include "core/check.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tool_calls.h"

namespace kimi {
namespace {

constexpr std::string_view kFunctions = "functions.";

}  // namespace

ToolCallGrammar::ToolCallGrammar(std::vector<Function> fns, bool req, bool par, int first)
    : functions(std::move(fns)), required(req), parallel(par), first_index(first) {
  KIMI_CHECK(!functions.empty() && (required || functions.size() == 1),
             "a tool-call grammar needs one function, or several for tool_choice required");
  for (const Function& f : functions)
    KIMI_CHECK(!f.name.empty() && f.name.find_first_of(".:") == std::string::npos && f.parameters,
               "tool-call grammar: bad function '", f.name, "'");
  // Every id text is "functions." + NAME + ":" + the same index: ordered as "NAME:" is.
  std::sort(functions.begin(), functions.end(),
            [](const Function& a, const Function& b) { return a.name + ':' < b.name + ':'; });
}

std::optional<ToolCallMarkers> ToolCallMarkers::of(const Tokenizer& tok) {
  auto s = tok.special_id(kToolCallsSectionEnd);
  auto b = tok.special_id(kToolCallBegin);
  auto a = tok.special_id(kToolCallArgumentBegin);
  auto e = tok.special_id(kToolCallEnd);
  if (!s || !b || !a || !e) return std::nullopt;
  return ToolCallMarkers{*s, *b, *a, *e};
}

ToolCallMatcher::ToolCallMatcher(std::shared_ptr<const ToolCallGrammar> grammar,
                                 ToolCallMarkers markers)
    : g_(std::move(grammar)), markers_(markers) {
  if (g_->required) {
    pos_ = uint32_t(kFunctions.size());  // the prompt holds "functions."
    last_ = uint32_t(g_->functions.size());
  } else {
    phase_ = Phase::kArguments;  // the prompt holds the whole id
    args_.emplace(g_->functions[0].parameters);
  }
}

int ToolCallMatcher::id_byte(uint32_t fn, uint32_t pos) const {
  if (pos < kFunctions.size()) return uint8_t(kFunctions[pos]);
  pos -= uint32_t(kFunctions.size());
  const std::string& name = g_->functions[fn].name;
  if (pos < name.size()) return uint8_t(name[pos]);
  if (pos == name.size()) return ':';
  pos -= uint32_t(name.size()) + 1;
  const std::string index = std::to_string(g_->first_index + calls_);
  return pos < index.size() ? uint8_t(index[pos]) : -1;
}

bool ToolCallMatcher::id_whole() const {
  return phase_ == Phase::kId && last_ - first_ == 1 && id_byte(first_, pos_) < 0;
}

bool ToolCallMatcher::step(uint8_t c) {
  if (phase_ == Phase::kArguments) return args_->step(c);
  if (phase_ != Phase::kId) return false;
  // The live texts share their first pos_ bytes and are sorted: those going on with c are a range.
  uint32_t first = first_;
  while (first < last_ && id_byte(first, pos_) != c) ++first;
  if (first == last_) return false;
  uint32_t last = first + 1;
  while (last < last_ && id_byte(last, pos_) == c) ++last;
  first_ = first;
  last_ = last;
  ++pos_;
  return true;
}

bool ToolCallMatcher::step(std::string_view bytes) {
  for (char c : bytes)
    if (!step(uint8_t(c))) return false;
  return true;
}

bool ToolCallMatcher::step_marker(int id) {
  switch (phase_) {
    case Phase::kId:
      if (id != markers_.argument_begin || !id_whole()) return false;
      args_.emplace(g_->functions[first_].parameters);
      phase_ = Phase::kArguments;
      return true;
    case Phase::kArguments:
      if (id != markers_.call_end || !args_->complete()) return false;
      args_.reset();
      ++calls_;
      phase_ = Phase::kAfterCall;
      return true;
    case Phase::kAfterCall:
      if (id == markers_.section_end) {
        phase_ = Phase::kEnd;
        return true;
      }
      if (id != markers_.call_begin || !g_->required || !g_->parallel) return false;
      phase_ = Phase::kId;
      pos_ = 0;
      first_ = 0;
      last_ = uint32_t(g_->functions.size());
      return true;
    case Phase::kEnd:
      return false;
  }
  return false;
}

std::vector<int> ToolCallMatcher::markers() const {
  switch (phase_) {
    case Phase::kId:
      if (id_whole()) return {markers_.argument_begin};
      return {};
    case Phase::kArguments:
      return {markers_.call_end};
    case Phase::kAfterCall:
      if (g_->required && g_->parallel) return {markers_.call_begin, markers_.section_end};
      return {markers_.section_end};
    case Phase::kEnd:
      return {};
  }
  return {};
}

}  // namespace kimi
