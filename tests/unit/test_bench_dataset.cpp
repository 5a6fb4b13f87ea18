// kimi-bench datasets: fixed seeds give the same prompts; token-id prompts decode and re-encode
// to the requested length with the tiny model's tokenizer; ShareGPT filters as vLLM does.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "bench/dataset.h"
#include "bench/openai_client.h"
#include "core/check.h"
#include "tokenizer/tokenizer.h"

namespace kimi::bench {
namespace {

const std::string kModel = std::string(KIMI_BINARY_DIR) + "/default-model";

TEST(BenchDataset, RandomWordsAreReproducibleAndSized) {
  RandomDatasetOptions o;
  o.num_prompts = 20;
  o.input_len = 50;
  o.output_len = 16;
  o.range_ratio = 0.5;
  o.seed = 9;
  auto a = random_dataset(o, nullptr), b = random_dataset(o, nullptr);
  ASSERT_EQ(a.size(), 20u);
  bool varied = false;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].prompt, b[i].prompt);
    EXPECT_EQ(estimate_tokens(a[i].prompt), a[i].prompt_len);
    EXPECT_GE(a[i].prompt_len, 25);
    EXPECT_LE(a[i].prompt_len, 75);
    EXPECT_GE(a[i].expected_output_len, 8);
    EXPECT_LE(a[i].expected_output_len, 24);
    EXPECT_FALSE(a[i].prompt_len_exact);
    varied |= a[i].prompt_len != a[0].prompt_len;
  }
  EXPECT_TRUE(varied);
  o.seed = 10;
  EXPECT_NE(random_dataset(o, nullptr)[0].prompt, a[0].prompt);
}

TEST(BenchDataset, TokenPromptsHitTheLengthWithTheTokenizer) {
  if (!std::filesystem::exists(kModel + "/tiktoken.model"))
    GTEST_SKIP() << "no tokenizer in " << kModel;
  Tokenizer tok = Tokenizer::load(kModel);
  RandomDatasetOptions o;
  o.num_prompts = 10;
  o.input_len = 64;
  o.output_len = 8;
  o.prefix_len = 5;
  o.seed = 1;
  auto reqs = random_dataset(o, &tok);
  int exact = 0;
  for (auto& r : reqs) {
    int n = int(tok.encode(r.prompt, false).size());
    EXPECT_EQ(n, r.prompt_len);  // the recorded length is the true one
    exact += n == 69;
    EXPECT_EQ(r.expected_output_len, 8);
    // Serializable: the prompt is valid UTF-8.
    EXPECT_NO_THROW(nlohmann::json(r.prompt).dump());
  }
  EXPECT_EQ(exact, 10);  // deterministic for the seed; every prompt hits the length
}

TEST(BenchDataset, ShareGptFiltersAndShuffles) {
  auto path = std::filesystem::temp_directory_path() /
              ("kimi_sharegpt_" + std::to_string(::getpid()) + ".json");
  nlohmann::json convs = nlohmann::json::array();
  auto conv = [](const std::string& p, const std::string& c) {
    return nlohmann::json{
        {"conversations", {{{"from", "human"}, {"value", p}}, {{"from", "gpt"}, {"value", c}}}}};
  };
  for (int i = 0; i < 6; ++i)
    convs.push_back(conv("please tell me about topic number " + std::to_string(i),
                         "here is a long enough answer " + std::to_string(i)));
  convs.push_back(conv("too short", "an answer that is long enough"));  // prompt < 4
  convs.push_back(conv("a prompt that is long enough", "no"));          // output < 4
  convs.push_back(
      nlohmann::json{{"conversations", {{{"from", "human"}, {"value", "one turn only here"}}}}});
  std::ofstream(path) << convs.dump();
  ShareGptOptions o;
  o.path = path.string();
  o.num_prompts = 6;
  o.seed = 0;
  auto reqs = sharegpt_dataset(o, nullptr);
  ASSERT_EQ(reqs.size(), 6u);
  for (auto& r : reqs) {
    EXPECT_NE(r.prompt.find("topic number"), std::string::npos);
    EXPECT_EQ(r.prompt_len, 7);
    EXPECT_EQ(r.expected_output_len, 7);
  }
  o.output_len = 3;  // a fixed output length skips the output-length filter
  o.num_prompts = 7;
  auto fixed = sharegpt_dataset(o, nullptr);
  EXPECT_EQ(fixed.size(), 7u);
  for (auto& r : fixed) EXPECT_EQ(r.expected_output_len, 3);
  o.num_prompts = 8;
  EXPECT_THROW(sharegpt_dataset(o, nullptr), Error);
  std::filesystem::remove(path);
}

TEST(BenchEndpoint, UrlsAndPayloads) {
  Endpoint a = make_endpoint("http://127.0.0.1:8000", "/v1/completions");
  EXPECT_EQ(a.host_url, "http://127.0.0.1:8000");
  EXPECT_EQ(a.path, "/v1/completions");
  EXPECT_FALSE(a.chat);
  Endpoint b = make_endpoint("http://h:1/v1/", "/v1/chat/completions");
  EXPECT_EQ(b.path, "/v1/chat/completions");
  EXPECT_TRUE(b.chat);
  Endpoint c = make_endpoint("http://h:1/proxy", "/v1/completions");
  EXPECT_EQ(c.path, "/proxy/v1/completions");
  EXPECT_THROW(make_endpoint("127.0.0.1:8000", "/v1/completions"), Error);
  EXPECT_THROW(make_endpoint("http://h:1", "/v1/embeddings"), Error);

  SampleRequest r;
  r.prompt = "hi";
  r.expected_output_len = 5;
  a.model = "m";
  a.ignore_eos = true;
  auto j = nlohmann::json::parse(request_body(a, r));
  EXPECT_EQ(j["prompt"], "hi");
  EXPECT_EQ(j["max_tokens"], 5);
  EXPECT_EQ(j["stream"], true);
  EXPECT_EQ(j["stream_options"]["include_usage"], true);
  EXPECT_EQ(j["ignore_eos"], true);
  b.model = "m";
  auto k = nlohmann::json::parse(request_body(b, r));
  EXPECT_EQ(k["messages"][0]["content"], "hi");
  EXPECT_EQ(k["max_completion_tokens"], 5);
  EXPECT_FALSE(k.contains("ignore_eos"));
}

}  // namespace
}  // namespace kimi::bench
