#include "prompt.h"

#include <algorithm>

#include "api_error.h"
#include "core/check.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kimi::server {

std::vector<int> render_chat(const Tokenizer& tok, const GenerationRequest& r) {
  ChatTemplateOptions opts;
  opts.add_generation_prompt = r.add_generation_prompt;
  std::string text;
  try {
    text = kimi::render_chat(r.messages_json,
                             r.tools.empty() ? nlohmann::ordered_json() : r.tools_json, opts);
  } catch (const Error& e) {
    // The template names the field first ("messages[2].content ...").
    std::string msg = e.what();
    throw_bad_request(msg.substr(0, msg.find(' ')), msg);
  }
  if (r.continue_final_message) {
    // The last assistant turn stays open: the model continues it.
    constexpr std::string_view kEnd = "<|im_end|>";
    if (text.ends_with(kEnd)) text.resize(text.size() - kEnd.size());
  }
  try {
    // The rendered markers are special-token strings: encode them as special ids (what the HF
    // tokenizer does with apply_chat_template's output).
    return tok.encode(text, /*allow_special=*/true);
  } catch (const Error& e) {
    throw_bad_request("messages", e.what());
  }
}

int system_prefix_length(const Tokenizer& tok, const std::vector<int>& ids) {
  // The template renders the system messages (tool declarations included) first, each opened by
  // <|im_system|>; the first other role marker starts what differs between requests.
  const std::optional<int> system = tok.special_id("<|im_system|>");
  if (!system || ids.empty() || ids[0] != *system) return 0;
  std::vector<int> others;
  for (const char* name : {"<|im_user|>", "<|im_assistant|>"})
    if (const std::optional<int> id = tok.special_id(name)) others.push_back(*id);
  for (size_t i = 1; i < ids.size(); ++i)
    if (std::find(others.begin(), others.end(), ids[i]) != others.end()) return int(i);
  return 0;  // only system messages: nothing after them to share them with
}

std::string forced_tool_prefix(const GenerationRequest& r) {
  if (!r.parse_tool_calls()) return "";
  if (r.tool_choice == ToolChoice::kRequired)
    return "<|tool_calls_section_begin|><|tool_call_begin|>functions.";
  if (r.tool_choice == ToolChoice::kNamed)
    return str("<|tool_calls_section_begin|><|tool_call_begin|>functions.", r.tool_choice_name, ":",
               r.history_tool_calls(), "<|tool_call_argument_begin|>");
  return "";
}

PreparedPrompts prepare_prompts(const GenerationRequest& r, const Tokenizer* tok, int vocab_size) {
  PreparedPrompts p;
  if (r.chat) {
    if (!tok)
      throw_bad_request("messages",
                        "this model has no tokenizer files: send token ids to /v1/completions");
    p.ids.push_back(render_chat(*tok, r));
    p.cache_point = system_prefix_length(*tok, p.ids[0]);
    // tool_choice required / named: the answer starts inside a tool call, so the model must call
    // (and Request::tool_calls makes it finish the call).
    p.forced_prefix = forced_tool_prefix(r);
    if (!p.forced_prefix.empty()) {
      auto forced = tok->encode(p.forced_prefix, /*allow_special=*/true);
      p.ids[0].insert(p.ids[0].end(), forced.begin(), forced.end());
    }
    return p;
  }
  if (!r.prompt_texts.empty()) {
    if (!tok)
      throw_bad_request("prompt",
                        "this model has no tokenizer files: send the prompt as token ids");
    for (const auto& t : r.prompt_texts) {
      try {
        p.ids.push_back(tok->encode(t, /*allow_special=*/true));  // what the HF tokenizer does
      } catch (const Error& e) {
        throw_bad_request("prompt", e.what());
      }
      p.echo_texts.push_back(t);
    }
  } else {
    for (const auto& ids : r.prompt_ids) {
      for (int id : ids)
        if (id < 0 || id >= vocab_size)
          throw_bad_request(
              "prompt", str("token id ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
      p.ids.push_back(ids);
      if (r.echo) {
        if (!tok)
          throw_bad_request("echo",
                            "'echo' of a token-id prompt needs the model's tokenizer files");
        p.echo_texts.push_back(tok->decode(ids));
      }
    }
  }
  // Text-level features of a token-id prompt need the tokenizer too: a 400 naming the field
  // (the engine's own refusal names none).
  if (!tok && !r.engine.stop.empty())
    throw_bad_request("stop", "stop strings need the model's tokenizer files");
  if (!tok && !r.format_param.empty()) {
    const std::string field = r.format_param.substr(0, r.format_param.find('.'));
    throw_bad_request(field, str("'", field, "' needs the model's tokenizer files"));
  }
  return p;
}

}  // namespace kimi::server
