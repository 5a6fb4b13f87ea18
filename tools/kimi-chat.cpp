// kimi-chat: terminal chat with a Kimi model, in-process (--model, default the embedded tiny
// model) or against a running kimi-serve (--url). Streams the answer; multi-line input (end a
// line with '\' or wrap it in """); the conversation is kept until /clear; Ctrl-C stops the
// current answer and returns to the prompt; /stats prints prompt and throughput figures.
#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <charconv>
#include <chrono>
#include <climits>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>

#include "core/check.h"
#include "core/log.h"
#include "kimi/engine.h"
#include "model/model.h"
#include "server/openai_request.h"
#include "server/prompt.h"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::atomic<bool> g_interrupted{false};
void on_sigint(int) {
  g_interrupted = true;
}

struct Settings {
  double temperature = 0.7, top_p = 1.0;
  int max_tokens = 512;
  std::optional<int64_t> seed;
  bool ignore_eos = false;
};

struct Stats {
  int prompt_tokens = 0, completion_tokens = 0;
  double ttft_s = 0, total_s = 0;
  bool interrupted = false;
};

// One answer, streamed to `out` piece by piece. Returns the text generated (also when stopped).
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string answer(const json& messages, const Settings& s, Stats& st) = 0;
};

// The whole of `text` as a number (from_chars: no leading space, no trailing junk such as "3x").
template <class T>
bool parse_number(const std::string& text, T& out) {
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, out);
  return ec == std::errc() && p == end;
}

std::string check_top_p(std::string& v) {
  double x = 0;
  return parse_number(v, x) && x > 0 && x <= 1 ? "" : "must be a number in (0, 1], got " + v;
}

// `/set KEY VALUE`, with the ranges the command line accepts (the server's). Returns an error
// message, empty when the setting was changed; a bad value leaves the setting as it was.
std::string set_setting(Settings& s, const std::string& key, std::string value) {
  if (key == "temperature") {
    double x = 0;
    if (!parse_number(value, x) || !(x >= 0 && x <= 2))
      return "temperature must be a number in [0, 2], got '" + value + "'";
    s.temperature = x;
  } else if (key == "top_p") {
    if (std::string bad = check_top_p(value); !bad.empty()) return "top_p " + bad;
    parse_number(value, s.top_p);
  } else if (key == "max_tokens") {
    int x = 0;
    if (!parse_number(value, x) || x < 1)
      return "max_tokens must be an integer in [1, " + std::to_string(INT_MAX) + "], got '" +
             value + "'";
    s.max_tokens = x;
  } else if (key == "seed") {
    int64_t x = 0;
    if (!parse_number(value, x)) return "seed must be an integer, got '" + value + "'";
    s.seed = x;
  } else {
    return "usage: /set temperature|top_p|max_tokens|seed VALUE";
  }
  return "";
}

json request_body(const json& messages, const Settings& s, const std::string& model) {
  json b = {{"messages", messages}, {"temperature", s.temperature},
            {"top_p", s.top_p},     {"max_tokens", s.max_tokens},
            {"stream", true},       {"stream_options", {{"include_usage", true}}}};
  if (!model.empty()) b["model"] = model;
  if (s.seed) b["seed"] = *s.seed;
  if (s.ignore_eos) b["ignore_eos"] = true;
  return b;
}

void emit(const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

class LocalBackend : public Backend {
 public:
  LocalBackend(const std::string& dir, const std::string& backend, int tensor_parallel,
               bool expert_parallel, const std::string& kv_cache_dtype) {
    kimi::EngineOptions eo;
    eo.model_dir = dir;
    eo.backend = backend == "auto" ? kimi::default_backend() : backend;
    eo.tensor_parallel_size = tensor_parallel;
    eo.enable_expert_parallel = expert_parallel;
    eo.kv_cache_dtype = kv_cache_dtype;
    eo.max_num_seqs = 1;
    engine_ = kimi::Engine::create(eo);
    if (!engine_->tokenizer())
      kimi::fail(dir, " has no tokenizer files (tiktoken.model, tokenizer_config.json): ",
                 "a chat needs them");
  }
  std::string answer(const json& messages, const Settings& s, Stats& st) override {
    kimi::server::ParseLimits lim;
    lim.vocab_size = engine_->config().vocab_size;
    auto req = kimi::server::parse_chat_request(request_body(messages, s, ""), lim);
    auto prompts = kimi::server::prepare_prompts(req, engine_->tokenizer(), lim.vocab_size);
    kimi::Request r = req.engine;
    r.prompt_ids = prompts.ids[0];
    r.max_tokens = int(
        std::min<int64_t>(s.max_tokens, engine_->max_model_len() - int64_t(r.prompt_ids.size())));
    if (r.max_tokens <= 0)
      kimi::fail("the conversation is longer than the model's context: /clear it");
    const auto t0 = Clock::now();
    auto h = engine_->submit(std::move(r));
    std::string text;
    bool first = true;
    while (true) {
      if (g_interrupted) {
        engine_->cancel(h->id());
        st.interrupted = true;
        g_interrupted = false;
      }
      auto ev = h->next(std::chrono::milliseconds(50));
      if (!ev) {
        if (h->done()) break;
        continue;
      }
      if (first && !ev->token_ids.empty()) {
        st.ttft_s = std::chrono::duration<double>(Clock::now() - t0).count();
        first = false;
      }
      if (ev->finish == kimi::FinishReason::kError) kimi::fail("generation failed: ", ev->error);
      emit(ev->text);
      text += ev->text;
    }
    st.total_s = std::chrono::duration<double>(Clock::now() - t0).count();
    st.prompt_tokens = h->usage().prompt_tokens;
    st.completion_tokens = h->usage().completion_tokens;
    return text;
  }

 private:
  std::unique_ptr<kimi::Engine> engine_;
};

class HttpBackend : public Backend {
 public:
  HttpBackend(const std::string& url, const std::string& key, std::string model)
      : cli_(url), key_(key), model_(std::move(model)) {
    cli_.set_read_timeout(600);
    if (model_.empty()) {
      auto res = cli_.Get("/v1/models", headers());
      if (!res) kimi::fail("cannot reach ", url, ": ", httplib::to_string(res.error()));
      if (res->status != 200) kimi::fail("GET /v1/models: HTTP ", res->status, " ", res->body);
      model_ = json::parse(res->body).at("data").at(0).at("id").get<std::string>();
    }
  }
  std::string answer(const json& messages, const Settings& s, Stats& st) override {
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.headers = headers();
    req.set_header("Content-Type", "application/json");
    req.body = request_body(messages, s, model_).dump();
    std::string buf, text, error;
    const auto t0 = Clock::now();
    bool first = true;
    int status = 0;
    req.response_handler = [&](const httplib::Response& r) {
      status = r.status;
      return true;
    };
    req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
      if (g_interrupted) return false;  // closing the connection cancels the request on the server
      if (status != 200) {
        error.append(data, len);
        return true;
      }
      buf.append(data, len);
      for (size_t pos; (pos = buf.find("\n\n")) != std::string::npos;) {
        std::string event = buf.substr(0, pos);
        buf.erase(0, pos + 2);
        if (event.rfind("data: ", 0) != 0) continue;
        std::string payload = event.substr(6);
        if (payload == "[DONE]") continue;
        json j = json::parse(payload, nullptr, false);
        if (j.is_discarded()) continue;
        if (j.contains("error")) {
          error = j["error"].value("message", "error");
          continue;
        }
        if (j.contains("usage") && j["usage"].is_object()) {
          st.prompt_tokens = j["usage"].value("prompt_tokens", 0);
          st.completion_tokens = j["usage"].value("completion_tokens", 0);
        }
        if (!j["choices"].empty()) {
          if (first)
            st.ttft_s = std::chrono::duration<double>(Clock::now() - t0).count(), first = false;
          const json& d = j["choices"][0]["delta"];
          if (d.contains("content") && d["content"].is_string()) {
            emit(d["content"].get<std::string>());
            text += d["content"].get<std::string>();
          }
        }
      }
      return true;
    };
    auto res = cli_.send(req);
    st.total_s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (g_interrupted) {
      g_interrupted = false;
      st.interrupted = true;
      return text;
    }
    if (!res) kimi::fail("request failed: ", httplib::to_string(res.error()));
    if (status != 200) {
      json j = json::parse(error, nullptr, false);
      kimi::fail(
          "HTTP ", status, ": ",
          !j.is_discarded() && j.contains("error") ? j["error"].value("message", error) : error);
    }
    if (!error.empty()) kimi::fail(error);
    return text;
  }

 private:
  httplib::Headers headers() const {
    httplib::Headers h;
    if (!key_.empty()) h.emplace("Authorization", "Bearer " + key_);
    return h;
  }
  httplib::Client cli_;
  std::string key_, model_;
};

void print_stats(const Stats& st) {
  const double decode = st.total_s - st.ttft_s;
  std::printf(
      "[ prompt: %d tokens, first token after %.3f s | generation: %d tokens in %.3f s, %.1f "
      "tok/s%s ]\n",
      st.prompt_tokens, st.ttft_s, st.completion_tokens, st.total_s,
      st.completion_tokens > 1 && decode > 0 ? (st.completion_tokens - 1) / decode : 0.0,
      st.interrupted ? ", interrupted" : "");
}

const char* kHelp =
    "commands: /help  /clear (forget the conversation)  /system TEXT (set the system prompt)\n"
    "          /save FILE (write the conversation as JSON)  /stats (figures of the last answer)\n"
    "          /set temperature|top_p|max_tokens|seed VALUE\n"
    "          /exit (or Ctrl-D)\n"
    "multi-line input: end a line with \\ to continue it, or start and end a block with \"\"\"\n"
    "Ctrl-C stops the answer being generated.\n";

// Prompts ("> ", "... ") only when a person types: piped input gets the answers alone.
const bool g_interactive = isatty(STDIN_FILENO);
void prompt(const char* p) {
  if (!g_interactive) return;
  std::printf("%s", p);
  std::fflush(stdout);
}

// Reads one user turn; nullopt at end of input. A turn still open at the end (a last line ending
// in '\', an unclosed """ block) is returned as it is, not dropped.
std::optional<std::string> read_turn() {
  std::string text, line;
  bool block = false;
  prompt("> ");
  while (true) {
    if (!std::getline(std::cin, line)) {
      if (std::cin.eof()) {
        if (text.empty()) return std::nullopt;
        return text;
      }
      // Ctrl-C at the prompt interrupts the read: drop what was typed and prompt again.
      std::cin.clear();
      g_interrupted = false;
      std::printf("\n(use /exit or Ctrl-D to leave)\n");
      prompt("> ");
      text.clear();
      block = false;
      continue;
    }
    if (!block && text.empty() && line == "\"\"\"") {
      block = true;
    } else if (block) {
      if (line == "\"\"\"") return text;
      text += (text.empty() ? "" : "\n") + line;
    } else if (!line.empty() && line.back() == '\\') {
      line.pop_back();
      text += line + "\n";
    } else {
      return text + line;
    }
    prompt("... ");
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Chat with a Kimi model in the terminal"};
  std::string model_dir, url, api_key, system_prompt, model_name, log_level = "warn",
                                                                  backend_name = "auto";
  Settings s;
  bool show_stats = false;
  int tensor_parallel = 1;
  auto* m = app.add_option("--model", model_dir,
                           "model directory, run in-process (default: the embedded tiny model)");
  auto* u = app.add_option("--url", url, "a running kimi-serve, e.g. http://127.0.0.1:8000");
  m->excludes(u);
  app.add_option("--backend", backend_name, "in-process backend: cpu, cuda or auto")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--tensor-parallel-size", tensor_parallel,
                 "in-process cuda backend: GPUs to split the model over (1, 2, 4, 8)")
      ->check(CLI::Range(1, 64))
      ->excludes(u);
  bool expert_parallel = false;
  app.add_flag("--enable-expert-parallel", expert_parallel,
               "in-process cuda backend, with --tensor-parallel-size > 1: routed experts split by expert")
      ->excludes(u);
  std::string kv_cache_dtype = "auto";
  app.add_option("--kv-cache-dtype", kv_cache_dtype,
                 "in-process backend: MLA latent cache auto (= bf16), bf16 or fp8")
      ->check(CLI::IsMember({"auto", "bf16", "fp8"}))
      ->excludes(u);
  app.add_option("--api-key", api_key, "API key for --url")->envname("KIMI_API_KEY");
  app.add_option("--model-name", model_name,
                 "model id for --url (default: the first of /v1/models)");
  app.add_option("--system", system_prompt, "system prompt");
  app.add_option("--temperature", s.temperature)
      ->capture_default_str()
      ->check(CLI::Range(0.0, 2.0));
  app.add_option("--top-p", s.top_p)
      ->capture_default_str()
      ->check(CLI::Validator(check_top_p, "in (0, 1]"));
  app.add_option("--max-tokens", s.max_tokens, "tokens per answer")
      ->capture_default_str()
      ->check(CLI::Range(1, INT_MAX));
  app.add_option("--seed", s.seed, "sampling seed (reproducible answers)");
  app.add_flag("--ignore-eos", s.ignore_eos,
               "generate max-tokens tokens whatever the model says (benchmarks)");
  app.add_flag("--show-stats", show_stats, "print the figures after every answer");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: Ctrl-C must interrupt a blocking read at the prompt
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::unique_ptr<Backend> backend;
  try {
    kimi::set_log_level(log_level);
    if (!url.empty()) {
      backend = std::make_unique<HttpBackend>(url, api_key, model_name);
      std::fprintf(stderr, "kimi-chat: connected to %s\n", url.c_str());
    } else {
      if (model_dir.empty()) {
        model_dir = KIMI_DEFAULT_MODEL_DIR;
        std::fprintf(stderr,
                     "kimi-chat: no --model given: using the embedded tiny model (random "
                     "weights)\n");
      }
      backend = std::make_unique<LocalBackend>(model_dir, backend_name, tensor_parallel,
                                               expert_parallel, kv_cache_dtype);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kimi-chat: %s\n", e.what());
    return 1;
  }
  if (g_interactive) std::fprintf(stderr, "Type /help for commands.\n");

  json history = json::array();
  Stats last;
  bool have_last = false;
  int failed_turns = 0;
  while (true) {
    auto turn = read_turn();
    if (!turn) {
      if (g_interactive) std::printf("\n");
      break;
    }
    const std::string& t = *turn;
    if (t.empty()) continue;
    if (t == "/exit" || t == "/quit" || t == "/bye") break;
    if (t == "/help") {
      std::printf("%s", kHelp);
      continue;
    }
    if (t == "/clear") {
      history = json::array();
      std::printf("(conversation cleared)\n");
      continue;
    }
    if (t == "/stats") {
      if (have_last)
        print_stats(last);
      else
        std::printf("(no answer yet)\n");
      continue;
    }
    if (t.rfind("/system", 0) == 0 && (t.size() == 7 || t[7] == ' ')) {
      system_prompt = t.size() > 8 ? t.substr(8) : "";
      std::printf(system_prompt.empty() ? "(system prompt removed)\n" : "(system prompt set)\n");
      continue;
    }
    if (t.rfind("/save", 0) == 0 && (t.size() == 5 || t[5] == ' ')) {
      std::string file = t.size() > 6 ? t.substr(6) : "";
      if (file.empty()) {
        std::printf("usage: /save FILE\n");
        continue;
      }
      json conv = json::array();
      if (!system_prompt.empty()) conv.push_back({{"role", "system"}, {"content", system_prompt}});
      for (const auto& msg : history) conv.push_back(msg);
      std::ofstream f(file);
      f << conv.dump(2) << "\n";
      std::printf(f ? "(saved %zu messages to %s)\n" : "(cannot write %zu messages to %s)\n",
                  conv.size(), file.c_str());
      continue;
    }
    if (t.rfind("/set ", 0) == 0) {
      std::istringstream in(t.substr(5));
      std::string key, value, extra;
      in >> key >> value >> extra;
      const std::string bad = extra.empty() ? set_setting(s, key, value)
                                            : "usage: /set temperature|top_p|max_tokens|seed VALUE";
      if (bad.empty())
        std::printf("(%s = %s)\n", key.c_str(), value.c_str());
      else
        std::printf("%s\n", bad.c_str());
      continue;
    }
    if (t[0] == '/' && t.find(' ') == std::string::npos && t.find('\n') == std::string::npos) {
      std::printf("unknown command %s (/help lists them)\n", t.c_str());
      continue;
    }

    json messages = json::array();
    if (!system_prompt.empty())
      messages.push_back({{"role", "system"}, {"content", system_prompt}});
    for (const auto& msg : history) messages.push_back(msg);
    messages.push_back({{"role", "user"}, {"content", t}});
    Stats st;
    g_interrupted = false;
    try {
      std::string answer = backend->answer(messages, s, st);
      std::printf(st.interrupted ? "\n[stopped]\n" : "\n");
      // The partial answer of a stopped turn stays in the conversation.
      history.push_back(messages.back());
      history.push_back({{"role", "assistant"}, {"content", answer}});
      last = st;
      have_last = true;
      if (show_stats) print_stats(st);
    } catch (const std::exception& e) {
      std::fflush(stdout);
      std::fprintf(stderr, "\nerror: %s\n", e.what());
      ++failed_turns;
    }
  }
  // Piped input has no one to read an error: a failed turn makes the exit code 1.
  return !g_interactive && failed_turns > 0 ? 1 : 0;
}
