// kimi-tokenize: text <-> token ids, one JSON value per line.
//   kimi-tokenize --tokenizer DIR [--no-special] < texts.jsonl > ids.jsonl
//   kimi-tokenize --tokenizer DIR --decode < ids.jsonl > texts.jsonl
// Encode: each input line is a JSON string; each output line the JSON array of its ids.
// Decode: each input line is a JSON array of ids; each output line the JSON string (bytes that
// are not valid UTF-8 come out as U+FFFD). A bad line stops the run with a message naming the
// line and exit code 1; lines before it have been written.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/check.h"
#include "tokenizer/tokenizer.h"

namespace {

int run(const kimi::Tokenizer& tok, bool decode, bool allow_special) {
  std::string line;
  for (long line_no = 1; std::getline(std::cin, line); ++line_no) {
    try {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& e) {
        kimi::fail("not valid JSON: ", e.what());
      }
      if (decode) {
        if (!j.is_array()) kimi::fail("expected a JSON array of token ids");
        std::vector<int> ids;
        for (const auto& v : j) {
          if (!v.is_number_integer()) kimi::fail("expected integer token ids, got ", v.dump());
          // Range-checked before the narrowing: 4294967297 must not decode as id 1.
          if (v.is_number_unsigned()
                  ? v.get<uint64_t>() >= uint64_t(tok.vocab_size())
                  : (v.get<int64_t>() < 0 || v.get<int64_t>() >= tok.vocab_size()))
            kimi::fail("token id ", v.dump(), " is outside the vocabulary [0, ", tok.vocab_size(),
                       ")");
          ids.push_back(v.get<int>());
        }
        const std::string text = tok.decode(ids);
        std::cout << nlohmann::json(text).dump(-1, ' ', false,
                                               nlohmann::json::error_handler_t::replace)
                  << '\n';
      } else {
        if (!j.is_string()) kimi::fail("expected a JSON string");
        std::cout << nlohmann::json(tok.encode(j.get<std::string>(), allow_special)).dump() << '\n';
      }
    } catch (const kimi::Error& e) {
      std::cout.flush();
      std::cerr << "kimi-tokenize: line " << line_no << ": " << e.what() << '\n';
      return 1;
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Encode JSON strings to token ids or decode id arrays to strings, one per line"};
  std::string dir;
  bool no_special = false, decode = false;
  app.add_option("--tokenizer", dir, "directory with tiktoken.model and tokenizer_config.json")
      ->required();
  app.add_flag("--no-special", no_special,
               "encode special-token strings as plain text instead of special ids");
  app.add_flag("--decode", decode, "decode: JSON arrays of ids in, JSON strings out");
  CLI11_PARSE(app, argc, argv);
  try {
    std::ios::sync_with_stdio(false);
    const kimi::Tokenizer tok = kimi::Tokenizer::load(dir);
    return run(tok, decode, !no_special);
  } catch (const kimi::Error& e) {
    std::cerr << "kimi-tokenize: " << e.what() << '\n';
    return 1;
  }
}
