// kimi-tokenize end to end (the built executable, on the golden tokenizer).
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>

#include "tokenizer_test_util.h"

namespace kimi {
namespace {

struct ToolRun {
  int status;
  std::string out, err;
};

ToolRun run_tool(const test::TempDir& dir, const std::string& args, const std::string& input) {
  dir.write("in.jsonl", input);
  const std::string cmd = std::string(KIMI_BINARY_DIR) + "/kimi-tokenize --tokenizer " +
                          test::golden_tokenizer_dir() + " " + args + " < " + dir.str() +
                          "/in.jsonl > " + dir.str() + "/out.jsonl 2> " + dir.str() + "/err.txt";
  const int rc = std::system(cmd.c_str());
  auto slurp = [&](const char* name) {
    std::ifstream f(dir.path / name);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, slurp("out.jsonl"), slurp("err.txt")};
}

#define KIMI_REQUIRE_TOOL()                                                        \
  do {                                                                             \
    KIMI_REQUIRE_GOLDEN_TOKENIZER();                                               \
    if (!std::filesystem::exists(std::string(KIMI_BINARY_DIR) + "/kimi-tokenize")) \
      GTEST_SKIP() << "kimi-tokenize is not built in " << KIMI_BINARY_DIR;         \
  } while (0)

TEST(KimiTokenizeTool, EncodesAndDecodesLines) {
  KIMI_REQUIRE_TOOL();
  const Tokenizer& tok = test::golden_tokenizer();
  test::TempDir dir;
  const std::vector<std::string> texts = {"Hello world", "<|im_end|>中文", ""};
  std::string input, want, want_plain, ids_input;
  for (const auto& t : texts) {
    input += nlohmann::json(t).dump() + "\n";
    want += nlohmann::json(tok.encode(t, true)).dump() + "\n";
    want_plain += nlohmann::json(tok.encode(t, false)).dump() + "\n";
  }
  auto r = run_tool(dir, "", input);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, want);
  r = run_tool(dir, "--no-special", input);
  EXPECT_EQ(r.out, want_plain);
  r = run_tool(dir, "--decode", want);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, input);
}

TEST(KimiTokenizeTool, BadLineNamesLineAndFails) {
  KIMI_REQUIRE_TOOL();
  test::TempDir dir;
  auto r = run_tool(dir, "", "\"ok\"\n[1, 2]\n\"never reached\"\n");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("line 2"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1);
  r = run_tool(dir, "--decode", "[1]\n[\"x\"]\n");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("line 2"), std::string::npos) << r.err;
  r = run_tool(dir, "", "not json\n");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("line 1: not valid JSON"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace kimi
