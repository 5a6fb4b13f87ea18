// Token-mask cost of JSON mode and structured outputs (runtime/json_token_mask.h): the uncached
// mask at states across a document, json_object against a json_schema with anyOf, enum and
// required keys, and a forced tool call's id (runtime/tool_call_matcher.h, never cached), median
// of --runs fresh masks each. The vocabulary is synthetic (163,840 tokens:
// words with and without a leading space, JSON fragments), made deterministic in a temporary
// directory. Prints one line per state for docs/architecture.md.
//   bench_json_mask [--runs 7]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "runtime/json_matcher.h"
#include "runtime/json_token_mask.h"
#include "runtime/tool_call_matcher.h"
#include "tokenizer/base64.h"
#include "tokenizer/tokenizer.h"

using namespace kimi;

namespace {

std::string make_vocabulary(int size) {
  const std::string dir = (std::filesystem::temp_directory_path() / "kimi_bench_json_mask").string();
  std::filesystem::create_directories(dir);
  std::mt19937 rng(1);
  const std::string alpha = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,-_'\"";
  const std::vector<std::string> pieces = {"{", "}", "[", "]", ":", ",", "\"", " ", "\n", "  ", "name",
                                           "age", "kind", "user", "true", "null", "1", "0", ".", "\":", "\",\""};
  std::set<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.insert(std::string(1, char(b)));
  while (int(tokens.size()) < size - 2) {
    std::string t;
    if (rng() % 10 < 7) {
      if (rng() % 2) t = " ";
      for (int n = 2 + int(rng() % 8); n > 0; --n) t += alpha[rng() % alpha.size()];
    } else {
      for (int n = 1 + int(rng() % 4); n > 0; --n) t += pieces[rng() % pieces.size()];
    }
    tokens.insert(t);
  }
  std::ofstream model(dir + "/tiktoken.model");
  int rank = 0;
  for (const std::string& t : tokens) model << base64_encode(t) << " " << rank++ << "\n";
  nlohmann::json added;
  const char* names[] = {"[BOS]", "[EOS]", "<|tool_calls_section_end|>", "<|tool_call_begin|>",
                         "<|tool_call_argument_begin|>", "<|tool_call_end|>"};
  for (const char* name : names) added[std::to_string(rank++)] = {{"content", name}};
  std::ofstream(dir + "/tokenizer_config.json")
      << nlohmann::json{{"added_tokens_decoder", added}}.dump();
  return dir;
}

// The median time of the matcher's mask with an empty cache (a fresh mask object per run, built
// outside the timed region), and how many tokens it allows.
template <typename Matcher>
void time_mask(const Tokenizer& tok, const Matcher& m, const std::vector<int>& end, int runs,
               const char* kind, const std::string& prefix) {
  std::vector<double> ms;
  int allowed = 0;
  for (int r = 0; r < runs; ++r) {
    JsonTokenMask masks(tok, tok.vocab_size());
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<uint64_t>& mask = masks.allowed(m, end);
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    allowed = 0;
    for (int id = 0; id < tok.vocab_size(); ++id) allowed += JsonTokenMask::test(mask, id);
  }
  std::nth_element(ms.begin(), ms.begin() + runs / 2, ms.end());
  std::printf("%-11s %-62s %7.3f ms %7d tokens allowed\n", kind, prefix.c_str(),
              ms[size_t(runs / 2)], allowed);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_json_mask"};
  int runs = 7;
  app.add_option("--runs", runs);
  CLI11_PARSE(app, argc, argv);
  const Tokenizer tok = Tokenizer::load(make_vocabulary(163840));
  SchemaError err;
  auto schema = compile_json_schema(nlohmann::ordered_json::parse(R"({"type": "object",
      "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                     "kind": {"enum": ["admin", "user"]}, "tags": {"type": "array", "items": {"type": "string"}},
                     "shape": {"anyOf": [{"type": "object", "properties": {"r": {"type": "number"}}, "required": ["r"]},
                                         {"type": "object", "properties": {"w": {"type": "number"}}, "required": ["w"]},
                                         {"type": "null"}]}},
      "required": ["name", "age", "kind", "tags", "shape"]})"), &err);
  const char* prefixes[] = {"", "{", "{\"", "{\"name\":", "{\"name\":\"ab", "{\"name\":\"x\",\"age\":1",
                            "{\"name\":\"x\",\"age\":1,\"kind\":\"u",
                            "{\"name\":\"x\",\"age\":1,\"kind\":\"user\",\"tags\":[",
                            "{\"name\":\"x\",\"age\":1,\"kind\":\"user\",\"tags\":[],\"shape\":{"};
  std::printf("vocabulary %d tokens, median of %d uncached masks\n", tok.vocab_size(), runs);
  const std::vector<int> end = {tok.eos_id()};
  for (bool with_schema : {false, true}) {
    for (const char* p : prefixes) {
      JsonMatcher m = with_schema ? JsonMatcher(schema) : JsonMatcher();
      if (m.step(std::string_view(p)))
        time_mask(tok, m, end, runs, with_schema ? "json_schema" : "json_object",
                  std::string("'") + p + "'");
    }
  }
  // tool_choice required over 16 functions: the id after "functions.", on its first byte, inside
  // a name two functions share, and whole (only <|tool_call_argument_begin|> may follow).
  std::vector<ToolCallGrammar::Function> fns;
  for (const char* n : {"get_weather", "get_time", "search", "send_mail", "read_file", "write_file",
                        "list_dir", "run", "fetch", "book", "cancel", "pay", "refund", "ask",
                        "translate", "summarize"})
    fns.push_back({n, JsonSchema::any_object()});
  auto grammar = std::make_shared<const ToolCallGrammar>(fns, true, true, 0);
  for (const char* p : {"", "get_", "get_weather:0"}) {
    ToolCallMatcher m(grammar, *ToolCallMarkers::of(tok));
    if (m.step(std::string_view(p)))
      time_mask(tok, m, end, runs, "tool id", std::string("'functions.") + p + "'");
  }
}
