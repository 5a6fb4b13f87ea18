#include "tool_calls.h"

#include <algorithm>

namespace kimi::server {
namespace {

constexpr std::string_view kSectionBegin = "<|tool_calls_section_begin|>";
constexpr std::string_view kSectionEnd = "<|tool_calls_section_end|>";
constexpr std::string_view kCallBegin = "<|tool_call_begin|>";
constexpr std::string_view kArgBegin = "<|tool_call_argument_begin|>";
constexpr std::string_view kCallEnd = "<|tool_call_end|>";
// Turn markers that must not leak into content when special tokens are kept for the parser.
constexpr std::string_view kDropped[] = {"<|im_end|>", "<|im_user|>", "<|im_assistant|>",
                                         "<|im_system|>", "<|im_middle|>", "[EOS]", "[BOS]"};

bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

// Length of the longest suffix of `s` that is a proper prefix of `marker`.
size_t partial_suffix(std::string_view s, std::string_view marker) {
  size_t best = 0;
  for (size_t len = std::min(s.size(), marker.size() - 1); len > 0; --len)
    if (s.substr(s.size() - len) == marker.substr(0, len)) {
      best = len;
      break;
    }
  return best;
}

std::string_view rtrim(std::string_view s) {
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}
std::string_view trim(std::string_view s) {
  s = rtrim(s);
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  return s;
}

}  // namespace

std::string ToolCallParser::name_from_id(std::string_view id) {
  std::string_view head = id.substr(0, id.find(':'));
  size_t dot = head.rfind('.');
  return std::string(dot == std::string_view::npos ? head : head.substr(dot + 1));
}

ToolCallParser::ToolCallParser(std::string_view forced_prefix) {
  if (!forced_prefix.empty()) {
    pending_ = forced_prefix;
    run(carried_, false);
  }
}

ParsedDelta ToolCallParser::feed(std::string_view text) {
  ParsedDelta out = std::move(carried_);
  carried_ = {};
  pending_ += text;
  run(out, false);
  return out;
}

ParsedDelta ToolCallParser::finish() {
  ParsedDelta out = std::move(carried_);
  carried_ = {};
  run(out, true);
  pending_.clear();
  return out;
}

void ToolCallParser::run(ParsedDelta& out, bool final) {
  for (;;) {
    std::string_view p = pending_;
    switch (state_) {
      case State::kContent: {
        // Earliest marker: the section start, or a turn marker to drop.
        size_t pos = p.find(kSectionBegin);
        std::string_view hit = kSectionBegin;
        for (auto m : kDropped) {
          size_t q = p.find(m);
          if (q < pos) pos = q, hit = m;
        }
        if (pos != std::string_view::npos) {
          out.content += p.substr(0, pos);
          pending_.erase(0, pos + hit.size());
          if (hit == kSectionBegin) state_ = State::kSection;
          continue;
        }
        size_t hold = 0;
        if (!final) {
          hold = partial_suffix(p, kSectionBegin);
          for (auto m : kDropped) hold = std::max(hold, partial_suffix(p, m));
        }
        out.content += p.substr(0, p.size() - hold);
        pending_.erase(0, p.size() - hold);
        return;
      }
      case State::kSection: {
        size_t ws = 0;
        while (ws < p.size() && is_space(p[ws])) ++ws;
        pending_.erase(0, ws);
        p = pending_;
        if (p.starts_with(kCallBegin)) {
          pending_.erase(0, kCallBegin.size());
          state_ = State::kId;
          continue;
        }
        if (p.starts_with(kSectionEnd)) {
          pending_.erase(0, kSectionEnd.size());
          state_ = State::kAfter;
          continue;
        }
        if (p.empty() || (!final && (kCallBegin.starts_with(p) || kSectionEnd.starts_with(p)))) return;
        // Stray text inside the section: skip to the next marker.
        size_t next = p.find('<', 1);
        pending_.erase(0, next == std::string_view::npos ? p.size() : next);
        continue;
      }
      case State::kId: {
        size_t pos = p.find(kArgBegin);
        if (pos == std::string_view::npos) {
          if (final) pending_.clear();  // an id without arguments: no call
          return;
        }
        ToolCall call;
        call.id = std::string(trim(p.substr(0, pos)));
        call.name = name_from_id(call.id);
        ToolCallDelta d;
        d.index = int(calls_.size());
        d.start = true;
        d.id = call.id;
        d.name = call.name;
        out.calls.push_back(d);
        calls_.push_back(std::move(call));
        pending_.erase(0, pos + kArgBegin.size());
        args_started_ = false;
        state_ = State::kArgs;
        continue;
      }
      case State::kArgs: {
        if (!args_started_) {
          size_t ws = 0;
          while (ws < p.size() && is_space(p[ws])) ++ws;
          pending_.erase(0, ws);
          p = pending_;
          if (p.empty()) return;
          args_started_ = true;
        }
        size_t pos = p.find(kCallEnd);
        std::string_view frag;
        bool closed = pos != std::string_view::npos;
        if (closed) {
          frag = rtrim(p.substr(0, pos));
        } else {
          size_t hold = final ? 0 : partial_suffix(p, kCallEnd);
          // Trailing whitespace may precede the end marker: hold it until more text comes.
          frag = rtrim(p.substr(0, p.size() - hold));
        }
        if (!frag.empty()) {
          calls_.back().arguments += frag;
          ToolCallDelta d;
          d.index = int(calls_.size()) - 1;
          d.arguments = std::string(frag);
          if (!out.calls.empty() && out.calls.back().index == d.index)
            out.calls.back().arguments += d.arguments;
          else
            out.calls.push_back(d);
        }
        if (closed) {
          pending_.erase(0, pos + kCallEnd.size());
          ++completed_;
          state_ = State::kSection;
          continue;
        }
        pending_.erase(0, frag.size());
        return;
      }
      case State::kAfter:
        pending_.clear();
        return;
    }
  }
}

}  // namespace kimi::server
