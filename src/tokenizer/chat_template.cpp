#include "tokenizer/chat_template.h"

#include <unordered_map>

#include "core/check.h"

namespace kimi {

const std::string_view kDefaultSystemPrompt =
    "You are Kimi, an AI assistant created by Moonshot AI.";

namespace {

constexpr std::string_view kImSystem = "<|im_system|>", kImUser = "<|im_user|>",
                           kImAssistant = "<|im_assistant|>", kImMiddle = "<|im_middle|>",
                           kImEnd = "<|im_end|>";
constexpr std::string_view kSectionBegin = kToolCallsSectionBegin,
                           kSectionEnd = kToolCallsSectionEnd, kCallBegin = kToolCallBegin,
                           kArgBegin = kToolCallArgumentBegin, kCallEnd = kToolCallEnd;

template <typename Json>
std::string dump_compact(const Json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Python's json.dumps(x, ensure_ascii=False) with its default separators ", " and ": ".
template <typename Json>
void dump_python(const Json& j, std::string& out) {
  if (j.is_object()) {
    out += '{';
    bool first = true;
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!first) out += ", ";
      first = false;
      out += dump_compact(Json(it.key()));
      out += ": ";
      dump_python(it.value(), out);
    }
    out += '}';
  } else if (j.is_array()) {
    out += '[';
    for (size_t i = 0; i < j.size(); ++i) {
      if (i) out += ", ";
      dump_python(j[i], out);
    }
    out += ']';
  } else {
    out += dump_compact(j);
  }
}

// The canonical Kimi tool-call id: functions.NAME:IDX.
bool is_canonical_id(std::string_view id) {
  if (!id.starts_with("functions.")) return false;
  const size_t colon = id.rfind(':');
  if (colon == std::string_view::npos || colon <= 10 || colon + 1 == id.size()) return false;
  for (size_t i = colon + 1; i < id.size(); ++i)
    if (id[i] < '0' || id[i] > '9') return false;
  return id.substr(10, colon - 10).find_first_of(".:<") == std::string_view::npos;
}

void check_function_name(const std::string& name, const std::string& where) {
  if (name.empty()) fail(where, " must not be empty");
  if (name.find_first_of(".:<>") != std::string::npos)
    fail(where, " '", name,
         "' contains '.', ':', '<' or '>', which Kimi tool-call ids cannot carry");
}

template <typename Json>
class Renderer {
 public:
  Renderer(const Json& messages, const Json& tools, const ChatTemplateOptions& opt)
      : messages_(messages), tools_(tools), opt_(opt) {}

  std::string render() {
    if (!messages_.is_array()) fail("messages must be an array");
    if (messages_.empty()) fail("messages must not be empty");
    render_tools();
    for (size_t i = 0; i < messages_.size(); ++i) {
      const std::string where = str("messages[", i, "]");
      const Json& m = messages_[i];
      if (!m.is_object()) fail(where, " must be an object");
      const std::string role = role_of(m, where);
      if (i == 0 && role != "system" && opt_.default_system_prompt)
        turn(kImSystem, "system", std::string(kDefaultSystemPrompt));
      render_message(m, role, where);
    }
    if (opt_.add_generation_prompt) out_ += str(kImAssistant, "assistant", kImMiddle);
    return std::move(out_);
  }

 private:
  static std::string role_of(const Json& m, const std::string& where) {
    auto it = m.find("role");
    if (it == m.end() || !it->is_string()) fail(where, ".role must be a string");
    std::string role = it->template get<std::string>();
    if (role == "developer") role = "system";
    if (role != "system" && role != "user" && role != "assistant" && role != "tool")
      fail(where, ".role '", role, "' is not one of system, developer, user, assistant, tool");
    return role;
  }

  void turn(std::string_view role_token, const std::string& role_name, const std::string& body) {
    out_ += str(role_token, role_name, kImMiddle, body, kImEnd);
  }

  void render_tools() {
    if (tools_.is_null()) return;
    if (!tools_.is_array()) fail("tools must be an array");
    if (tools_.empty()) return;  // the template tests `if tools`: an empty list renders nothing
    for (size_t i = 0; i < tools_.size(); ++i) {
      const std::string where = str("tools[", i, "]");
      const Json& t = tools_[i];
      if (!t.is_object()) fail(where, " must be an object");
      if (auto ty = t.find("type"); ty == t.end() || *ty != "function")
        fail(where, ".type must be \"function\"");
      auto fn = t.find("function");
      if (fn == t.end() || !fn->is_object()) fail(where, ".function must be an object");
      auto name = fn->find("name");
      if (name == fn->end() || !name->is_string()) fail(where, ".function.name must be a string");
      check_function_name(name->template get<std::string>(), where + ".function.name");
    }
    turn(kImSystem, "tool_declare", dump_compact(tools_));
  }

  // The content field: string, null/absent (empty) or an array of text parts.
  static std::string content_of(const Json& m, const std::string& where, bool required) {
    auto it = m.find("content");
    if (it == m.end() || it->is_null()) {
      if (required) fail(where, ".content is required");
      return {};
    }
    if (it->is_string()) return it->template get<std::string>();
    if (!it->is_array()) fail(where, ".content must be a string, an array of text parts or null");
    std::string text;
    for (size_t k = 0; k < it->size(); ++k) {
      const Json& part = (*it)[k];
      const std::string pw = str(where, ".content[", k, "]");
      if (!part.is_object()) fail(pw, " must be an object");
      auto type = part.find("type");
      if (type == part.end() || !type->is_string()) fail(pw, ".type must be a string");
      if (*type != "text")
        fail(pw, ".type '", type->template get<std::string>(),
             "' is not supported: this model accepts text only");
      auto t = part.find("text");
      if (t == part.end() || !t->is_string()) fail(pw, ".text must be a string");
      text += t->template get<std::string>();
    }
    return text;
  }

  static std::string name_or(const Json& m, const std::string& role, const std::string& where) {
    auto it = m.find("name");
    if (it == m.end() || it->is_null()) return role;
    if (!it->is_string()) fail(where, ".name must be a string");
    std::string name = it->template get<std::string>();
    return name.empty() ? role : name;  // Jinja: message.get('name') or message['role']
  }

  std::string canonical_id(const std::string& id, const std::string& fn_name) {
    const int k = call_counter_++;
    if (!opt_.normalize_tool_call_ids || is_canonical_id(id)) return id;
    auto [it, fresh] = id_map_.emplace(id, str("functions.", fn_name, ":", k));
    return it->second;
  }

  std::string tool_calls_of(const Json& calls, const std::string& where) {
    if (!calls.is_array()) fail(where, " must be an array");
    std::string s(kSectionBegin);
    for (size_t k = 0; k < calls.size(); ++k) {
      const std::string cw = str(where, "[", k, "]");
      const Json& c = calls[k];
      if (!c.is_object()) fail(cw, " must be an object");
      auto fn = c.find("function");
      if (fn == c.end() || !fn->is_object()) fail(cw, ".function must be an object");
      auto name = fn->find("name");
      if (name == fn->end() || !name->is_string()) fail(cw, ".function.name must be a string");
      const std::string fn_name = name->template get<std::string>();
      check_function_name(fn_name, cw + ".function.name");
      std::string id;
      if (auto it = c.find("id"); it != c.end() && !it->is_null()) {
        if (!it->is_string()) fail(cw, ".id must be a string");
        id = it->template get<std::string>();
      }
      id =
          id.empty() ? str("functions.", fn_name, ":", call_counter_++) : canonical_id(id, fn_name);
      std::string args;
      auto a = fn->find("arguments");
      if (a == fn->end() || a->is_null()) {
        args = "{}";
      } else if (a->is_string()) {
        args = a->template get<std::string>();
      } else {
        dump_python(*a, args);
      }
      s += str(kCallBegin, id, kArgBegin, args, kCallEnd);
    }
    s += kSectionEnd;
    return s;
  }

  void render_message(const Json& m, const std::string& role, const std::string& where) {
    const std::string role_name = name_or(m, role, where);
    if (role == "assistant") {
      std::string body = content_of(m, where, /*required=*/false);
      auto calls = m.find("tool_calls");
      if (calls != m.end() && !calls->is_null() && !calls->empty())
        body += tool_calls_of(*calls, where + ".tool_calls");
      turn(kImAssistant, role_name, body);
    } else if (role == "tool") {
      auto id = m.find("tool_call_id");
      if (id == m.end() || !id->is_string()) fail(where, ".tool_call_id must be a string");
      std::string call_id = id->template get<std::string>();
      if (auto it = id_map_.find(call_id); it != id_map_.end()) call_id = it->second;
      turn(kImSystem, role_name,
           str("## Return of ", call_id, "\n", content_of(m, where, /*required=*/true)));
    } else {
      turn(role == "user" ? kImUser : kImSystem, role_name, content_of(m, where, true));
    }
  }

  const Json& messages_;
  const Json& tools_;
  const ChatTemplateOptions& opt_;
  std::string out_;
  int call_counter_ = 0;
  std::unordered_map<std::string, std::string> id_map_;
};

}  // namespace

std::string render_chat(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                        const ChatTemplateOptions& options) {
  return Renderer<nlohmann::ordered_json>(messages, tools, options).render();
}

std::string render_chat(const nlohmann::json& messages, const nlohmann::json& tools,
                        const ChatTemplateOptions& options) {
  return Renderer<nlohmann::json>(messages, tools, options).render();
}

}  // namespace kimi
