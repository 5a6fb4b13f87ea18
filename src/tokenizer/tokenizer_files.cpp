// Tokenizer loading: tiktoken.model and tokenizer_config.json.
#include <algorithm>
#include <charconv>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/check.h"
#include "tokenizer/base64.h"
#include "tokenizer/tokenizer.h"

namespace kimi {

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open the file");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// tiktoken.model: `base64 rank` per line (blank lines ignored, as tiktoken's loader does).
std::vector<std::string> parse_tiktoken_model(const std::string& path, std::string_view text) {
  std::vector<std::string> tokens;
  std::vector<int> rank_line;  // rank -> line that defined it (0 = not yet)
  size_t line_start = 0;
  for (int line_no = 1; line_start < text.size(); ++line_no) {
    size_t line_end = text.find('\n', line_start);
    if (line_end == std::string_view::npos) line_end = text.size();
    std::string_view line = text.substr(line_start, line_end - line_start);
    line_start = line_end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    if (sp == std::string_view::npos || line.find(' ', sp + 1) != std::string_view::npos)
      fail(path, ":", line_no, ": expected 'base64 rank', got '", line, "'");
    const std::string_view b64 = line.substr(0, sp), rank_text = line.substr(sp + 1);
    auto bytes = base64_decode(b64);
    if (!bytes || bytes->empty())
      fail(path, ":", line_no, ": '", b64, "' is not valid base64 of a non-empty token");
    int rank = -1;
    auto [end, ec] = std::from_chars(rank_text.data(), rank_text.data() + rank_text.size(), rank);
    if (ec != std::errc() || end != rank_text.data() + rank_text.size() || rank < 0 ||
        rank >= (1 << 30))
      fail(path, ":", line_no, ": rank '", rank_text, "' is not a non-negative integer");
    if (static_cast<size_t>(rank) >= tokens.size()) {
      tokens.resize(rank + 1);
      rank_line.resize(rank + 1, 0);
    }
    if (rank_line[rank] != 0)
      fail(path, ":", line_no, ": rank ", rank, " was already defined on line ", rank_line[rank]);
    tokens[rank] = std::move(*bytes);
    rank_line[rank] = line_no;
  }
  if (tokens.empty()) fail(path, ": no tokens");
  for (size_t r = 0; r < tokens.size(); ++r)
    if (rank_line[r] == 0)
      fail(path, ": ranks must be 0..", tokens.size() - 1, " without gaps; rank ", r,
           " is missing");
  std::unordered_map<std::string_view, size_t> seen;
  seen.reserve(tokens.size());
  for (size_t r = 0; r < tokens.size(); ++r) {
    auto [it, fresh] = seen.emplace(tokens[r], r);
    if (!fresh)
      fail(path, ":", std::max(rank_line[r], rank_line[it->second]), ": the bytes of rank ", r,
           " repeat those of rank ", it->second, " (line ",
           std::min(rank_line[r], rank_line[it->second]), ")");
  }
  return tokens;
}

// A special-token field: "name", {"content": "name", ...} or null/absent.
std::optional<std::string> token_field(const std::string& path, const nlohmann::json& config,
                                       const char* key, const char* fallback) {
  auto it = config.find(key);
  if (it == config.end()) return std::string(fallback);
  if (it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  fail(path, ": ", key, " must be a string or an object with a string 'content'");
}

}  // namespace

Tokenizer Tokenizer::from_parts(const std::vector<std::string>& tokens,
                                const std::unordered_map<int, std::string>& special_names,
                                const std::string& bos_token, const std::string& eos_token,
                                const std::string& pad_token) {
  return build(BpeVocab(tokens), special_names, bos_token, eos_token, pad_token);
}

Tokenizer Tokenizer::build(BpeVocab vocab,
                           const std::unordered_map<int, std::string>& special_names,
                           const std::string& bos_token, const std::string& eos_token,
                           const std::string& pad_token) {
  Tokenizer t;
  t.vocab_ = std::move(vocab);
  t.num_base_ = t.vocab_.size();
  t.specials_ = SpecialTokens(t.num_base_, special_names);
  auto resolve = [&](const std::string& name, const char* what) {
    if (name.empty()) return -1;
    auto id = t.specials_.id(name);
    if (!id) fail(what, " '", name, "' is not one of the special tokens");
    return *id;
  };
  t.bos_id_ = resolve(bos_token, "bos_token");
  t.eos_id_ = resolve(eos_token, "eos_token");
  t.pad_id_ = resolve(pad_token, "pad_token");
  return t;
}

Tokenizer Tokenizer::load(const std::string& dir) {
  const std::string model_path = dir + "/tiktoken.model";
  const std::string config_path = dir + "/tokenizer_config.json";
  BpeVocab vocab;
  try {
    vocab = BpeVocab(parse_tiktoken_model(model_path, read_file(model_path)));
  } catch (const Error& e) {
    const std::string_view msg = e.what();
    if (msg.starts_with(model_path)) throw;
    fail(model_path, ": ", msg);
  }

  nlohmann::json config;
  try {
    config = nlohmann::json::parse(read_file(config_path));
  } catch (const nlohmann::json::exception& e) {
    fail(config_path, ": ", e.what());
  }
  if (!config.is_object()) fail(config_path, ": expected a JSON object");

  std::unordered_map<int, std::string> names;
  if (auto it = config.find("added_tokens_decoder"); it != config.end()) {
    if (!it->is_object()) fail(config_path, ": added_tokens_decoder must be an object");
    for (const auto& [key, entry] : it->items()) {
      int id = -1;
      auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
      if (ec != std::errc() || end != key.data() + key.size())
        fail(config_path, ": added_tokens_decoder key '", key, "' is not a token id");
      if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string())
        fail(config_path, ": added_tokens_decoder[\"", key, "\"] has no string 'content'");
      names[id] = entry["content"].get<std::string>();
    }
  }
  try {
    auto pick = [&](const char* key, const char* fallback) {
      auto name = token_field(config_path, config, key, fallback);
      if (!name) return std::string();
      // A default name that the file does not define is no error; an explicit one is.
      if (!config.contains(key)) {
        bool found = false;
        for (const auto& [id, n] : names) found = found || n == *name;
        if (!found) return std::string();
      }
      return *name;
    };
    return build(std::move(vocab), names, pick("bos_token", "[BOS]"), pick("eos_token", "[EOS]"),
                 pick("pad_token", "[PAD]"));
  } catch (const Error& e) {
    fail(config_path, ": ", e.what());
  }
}

}  // namespace kimi
