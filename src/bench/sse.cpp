#include "bench/sse.h"

#include <nlohmann/json.hpp>

namespace kimi::bench {

void SseSplitter::feed(std::string_view bytes,
                       const std::function<void(std::string_view)>& on_data) {
  for (char c : bytes)
    if (c != '\r') buf_ += c;
  size_t pos;
  while ((pos = buf_.find("\n\n")) != std::string::npos) {
    std::string event = buf_.substr(0, pos);
    buf_.erase(0, pos + 2);
    std::string data;
    bool any = false;
    size_t start = 0;
    while (start <= event.size()) {
      size_t end = event.find('\n', start);
      if (end == std::string::npos) end = event.size();
      std::string_view line(event.data() + start, end - start);
      if (line.substr(0, 5) == "data:") {
        line.remove_prefix(5);
        if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
        if (any) data += '\n';
        data += line;
        any = true;
      }
      start = end + 1;
    }
    if (any) on_data(data);
  }
}

void StreamParser::feed(std::string_view bytes, double t) {
  split_.feed(bytes, [&](std::string_view data) { on_event(data, t); });
}

void StreamParser::on_event(std::string_view data, double t) {
  if (data == "[DONE]") {
    done_ = true;
    return;
  }
  auto j = nlohmann::json::parse(data, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    if (error_.empty()) error_ = "unparsable SSE event: " + std::string(data.substr(0, 200));
    return;
  }
  if (j.contains("error")) {
    auto& e = j["error"];
    error_ = e.is_object() && e.contains("message") && e["message"].is_string()
                 ? e["message"].get<std::string>()
                 : e.dump();
    return;
  }
  auto ch = j.find("choices");
  if (ch != j.end() && ch->is_array() && !ch->empty()) {
    timeline_.on_event(t);
    const auto& c0 = (*ch)[0];
    const nlohmann::json* piece = nullptr;
    if (chat_) {
      auto d = c0.find("delta");
      if (d != c0.end() && d->is_object()) {
        auto ct = d->find("content");
        if (ct != d->end()) piece = &*ct;
      }
    } else {
      auto tx = c0.find("text");
      if (tx != c0.end()) piece = &*tx;
    }
    if (piece && piece->is_string()) text_ += piece->get<std::string>();
  }
  auto u = j.find("usage");
  if (u != j.end() && u->is_object()) {
    auto get = [&](const char* k) {
      auto it = u->find(k);
      return it != u->end() && it->is_number_integer() ? it->get<int>() : -1;
    };
    prompt_tokens_ = get("prompt_tokens");
    completion_tokens_ = get("completion_tokens");
  }
}

void StreamParser::finish(RequestOutput& out) const {
  timeline_.finish(out);
  out.generated_text = text_;
  out.usage_present = completion_tokens_ >= 0;
  out.output_tokens = std::max(completion_tokens_, 0);
  if (prompt_tokens_ > 0) out.prompt_len = prompt_tokens_;
  if (!error_.empty()) {
    out.success = false;
    out.error = error_;
  } else if (!timeline_.any()) {
    out.success = false;
    out.error = "Never received a valid chunk to calculate TTFT.";
  } else {
    out.success = true;
  }
}

}  // namespace kimi::bench
