#include "prompt.h"

#include <map>

#include "api_error.h"
#include "core/check.h"
#include "tokenizer/tokenizer.h"

namespace kimi::server {
namespace {

constexpr const char* kDefaultSystem = "You are Kimi, an AI assistant created by Moonshot AI.";

class Builder {
 public:
  explicit Builder(const Tokenizer& tok) : tok_(tok) {}
  void special(const char* name) {
    auto id = tok_.special_id(name);
    if (!id) throw ApiException{internal_error(str("the model's tokenizer has no ", name, " token"))};
    ids.push_back(*id);
  }
  void text(const std::string& s) {
    if (s.empty()) return;
    try {
      auto v = tok_.encode(s, /*allow_special=*/false);
      ids.insert(ids.end(), v.begin(), v.end());
    } catch (const Error& e) {
      throw_bad_request("messages", e.what());
    }
  }
  std::vector<int> ids;

 private:
  const Tokenizer& tok_;
};

bool canonical_id(const std::string& id) {
  // functions.NAME:IDX
  if (id.rfind("functions.", 0) != 0) return false;
  size_t colon = id.rfind(':');
  if (colon == std::string::npos || colon + 1 == id.size()) return false;
  for (size_t i = colon + 1; i < id.size(); ++i)
    if (!std::isdigit(static_cast<unsigned char>(id[i]))) return false;
  return true;
}

}  // namespace

std::vector<int> render_chat(const Tokenizer& tok, const GenerationRequest& r) {
  Builder b(tok);
  if (!r.tools.empty()) {
    nlohmann::json decl = nlohmann::json::array();
    for (const auto& t : r.tools) decl.push_back(t.declaration);
    b.special("<|im_system|>");
    b.text("tool_declare");
    b.special("<|im_middle|>");
    b.text(decl.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    b.special("<|im_end|>");
  }
  if (r.messages.front().role != "system") {
    b.special("<|im_system|>");
    b.text("system");
    b.special("<|im_middle|>");
    b.text(kDefaultSystem);
    b.special("<|im_end|>");
  }
  // OpenAI-style ids (call_xxx) put Kimi models off-distribution: render them canonically.
  std::map<std::string, std::string> id_map;
  for (size_t i = 0; i < r.messages.size(); ++i) {
    const ChatMessage& m = r.messages[i];
    const bool last = i + 1 == r.messages.size();
    if (m.role == "user") b.special("<|im_user|>");
    else if (m.role == "assistant") b.special("<|im_assistant|>");
    else b.special("<|im_system|>");
    b.text(m.name.empty() ? m.role : m.name);
    b.special("<|im_middle|>");
    if (m.role == "tool") {
      auto it = id_map.find(m.tool_call_id);
      b.text("## Return of " + (it == id_map.end() ? m.tool_call_id : it->second) + "\n" + m.content.value_or(""));
    } else {
      b.text(m.content.value_or(""));
    }
    if (!m.tool_calls.empty()) {
      b.special("<|tool_calls_section_begin|>");
      for (size_t k = 0; k < m.tool_calls.size(); ++k) {
        const ToolCall& c = m.tool_calls[k];
        std::string id = canonical_id(c.id) ? c.id : str("functions.", c.name, ":", k);
        id_map[c.id] = id;
        b.special("<|tool_call_begin|>");
        b.text(id);
        b.special("<|tool_call_argument_begin|>");
        b.text(c.arguments);
        b.special("<|tool_call_end|>");
      }
      b.special("<|tool_calls_section_end|>");
    }
    if (!(last && r.continue_final_message)) b.special("<|im_end|>");
  }
  if (r.add_generation_prompt) {
    b.special("<|im_assistant|>");
    b.text("assistant");
    b.special("<|im_middle|>");
  }
  return std::move(b.ids);
}

std::string forced_tool_prefix(const GenerationRequest& r) {
  if (!r.parse_tool_calls()) return "";
  if (r.tool_choice == ToolChoice::kRequired) return "<|tool_calls_section_begin|><|tool_call_begin|>functions.";
  if (r.tool_choice == ToolChoice::kNamed)
    return "<|tool_calls_section_begin|><|tool_call_begin|>functions." + r.tool_choice_name +
           ":0<|tool_call_argument_begin|>";
  return "";
}

PreparedPrompts prepare_prompts(const GenerationRequest& r, const Tokenizer* tok, int vocab_size) {
  PreparedPrompts p;
  if (r.chat) {
    if (!tok) throw_bad_request("messages", "this model has no tokenizer files: send token ids to /v1/completions");
    p.ids.push_back(render_chat(*tok, r));
    p.forced_prefix = forced_tool_prefix(r);
    if (!p.forced_prefix.empty()) {
      auto forced = tok->encode(p.forced_prefix, /*allow_special=*/true);
      p.ids[0].insert(p.ids[0].end(), forced.begin(), forced.end());
    }
    return p;
  }
  if (!r.prompt_texts.empty()) {
    if (!tok) throw_bad_request("prompt", "this model has no tokenizer files: send the prompt as token ids");
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
          throw_bad_request("prompt", str("token id ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
      p.ids.push_back(ids);
      if (r.echo) {
        if (!tok) throw_bad_request("echo", "'echo' of a token-id prompt needs the model's tokenizer files");
        p.echo_texts.push_back(tok->decode(ids));
      }
    }
  }
  return p;
}

}  // namespace kimi::server
