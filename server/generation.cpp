#include "generation.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "core/check.h"
#include "core/log.h"

namespace kimi::server {

void ActiveGenerations::add(Generation* g) {
  std::lock_guard lk(mu_);
  set_.insert(g);
}
void ActiveGenerations::remove(Generation* g) {
  std::lock_guard lk(mu_);
  set_.erase(g);
}
int ActiveGenerations::size() const {
  std::lock_guard lk(mu_);
  return int(set_.size());
}
void ActiveGenerations::cancel_all() {
  std::lock_guard lk(mu_);
  for (Generation* g : set_) g->cancel(true);
}

// Per-choice streaming / accumulation state.
struct Generation::Choice {
  ChoiceResult result;
  std::optional<ToolCallParser> parser;
  bool role_sent = false;
  bool finished = false;
  size_t text_offset = 0;  // completions logprobs text_offset
};

Generation::Generation(Engine& engine, ServerMetrics& metrics, ActiveGenerations& active,
                       GenerationRequest req, PreparedPrompts prompts, int max_tokens,
                       ResponseHead head)
    : engine_(engine),
      metrics_(metrics),
      active_(active),
      req_(std::move(req)),
      prompts_(std::move(prompts)),
      max_tokens_(max_tokens),
      head_(std::move(head)),
      texts_(engine.tokenizer(), req_.return_tokens_as_token_ids) {
  active_.add(this);
}

Generation::~Generation() {
  cancel(false);
  // A cancelled request ends with kCancelled by the engine's next step: read those events so the
  // aborts are counted (bounded: the engine answers a cancel within one step).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  for (size_t i = 0; i < handles_.size(); ++i)
    while (!handle_done_[i] && std::chrono::steady_clock::now() < deadline) {
      auto e = handles_[i]->next(std::chrono::milliseconds(50));
      if (e && e->finish != FinishReason::kNone) record_finish(*e, int(i));
      if (!e && handles_[i]->done()) {
        std::lock_guard lk(mu_);  // cancel() may read it from the shutdown thread
        handle_done_[i] = true;
      }
    }
  active_.remove(this);
}

void Generation::submit() {
  for (size_t p = 0; p < prompts_.ids.size(); ++p) {
    Request r = req_.engine;
    r.prompt_ids = prompts_.ids[p];
    r.cache_point = prompts_.cache_point;
    r.max_tokens = max_tokens_;
    if (p > 0 && r.seed_given) r.sampling.seed += p;  // distinct prompts, still reproducible
    auto h = engine_.submit(std::move(r));
    std::lock_guard lk(mu_);
    handles_.push_back(std::move(h));
    handle_done_.push_back(false);
    sample_tokens_.emplace_back(req_.engine.n, 0);
    samples_finished_.push_back(0);
    if (cancelled_) engine_.cancel(handles_.back()->id());
  }
}

void Generation::cancel(bool by_shutdown) {
  if (by_shutdown) by_shutdown_ = true;
  cancelled_ = true;
  std::lock_guard lk(mu_);
  for (size_t i = 0; i < handles_.size(); ++i)
    if (!handle_done_[i] && !handles_[i]->done()) engine_.cancel(handles_[i]->id());
}

bool Generation::next_event(GenerationEvent& ev, int& prompt,
                            const std::function<bool()>& client_gone) {
  // One handle: block (waking to look at the client). Several (completions with a list of
  // prompts): short polls in turn.
  const auto timeout = handles_.size() > 1 ? std::chrono::milliseconds(2)
                       : client_gone       ? std::chrono::milliseconds(100)
                                           : std::chrono::milliseconds(1000);
  for (;;) {
    if (client_gone && !cancelled_ && client_gone()) cancel(false);
    bool any_open = false;
    for (size_t k = 0; k < handles_.size(); ++k) {
      size_t i = (rr_ + k) % handles_.size();
      if (handle_done_[i]) continue;
      auto e = handles_[i]->next(timeout);
      if (e) {
        rr_ = i + 1;
        ev = std::move(*e);
        prompt = int(i);
        if (ev.index >= 0 && ev.index < int(sample_tokens_[i].size()))
          sample_tokens_[i][ev.index] += int(ev.token_ids.size());
        if (ev.finish != FinishReason::kNone) record_finish(ev, prompt);
        return true;
      }
      if (handles_[i]->done()) {
        std::lock_guard lk(mu_);
        handle_done_[i] = true;
      } else {
        any_open = true;
      }
    }
    if (!any_open) return false;
  }
}

void Generation::record_finish(const GenerationEvent& ev, int prompt) {
  std::string reason = "stop";
  if (ev.finish == FinishReason::kLength)
    reason = "length";
  else if (ev.finish == FinishReason::kCancelled)
    reason = "abort";
  else if (ev.finish == FinishReason::kError)
    reason = "error";
  const std::vector<int>& tokens = sample_tokens_[prompt];
  metrics_.sample_finished(reason, int(prompts_.ids[prompt].size()), tokens[ev.index], max_tokens_);
  // vLLM observes n (and the longest sample) once per parent request, when its last child ends.
  if (++samples_finished_[prompt] == req_.engine.n)
    metrics_.request_finished(req_.engine.n, *std::max_element(tokens.begin(), tokens.end()));
}

Usage Generation::usage() const {
  Usage u;
  for (const auto& h : handles_) {
    Usage x = h->usage();
    u.prompt_tokens += x.prompt_tokens;
    u.completion_tokens += x.completion_tokens;
    u.cached_tokens += x.cached_tokens;
  }
  return u;
}

std::variant<json, ApiError> Generation::collect(const std::function<bool()>& client_gone) {
  const int n = req_.engine.n;
  std::vector<Choice> choices(handles_.size() * n);
  GenerationEvent ev;
  int prompt = 0;
  std::string engine_error;
  bool cancelled = false;
  while (next_event(ev, prompt, client_gone)) {
    if (ev.prompt_logprobs) {  // the prompt's, for every sample of it
      for (int k = 0; k < n; ++k) {
        choices[prompt * n + k].result.prompt = prompts_.ids[prompt];
        choices[prompt * n + k].result.prompt_logprobs = *ev.prompt_logprobs;
      }
      continue;
    }
    Choice& c = choices[prompt * n + ev.index];
    c.result.text += ev.text;
    for (auto& lp : ev.logprobs) c.result.logprobs.push_back(std::move(lp));
    if (ev.finish != FinishReason::kNone) {
      c.result.finish = ev.finish;
      c.result.stop_reason = ev.stop_reason;
      c.result.stop_token = ev.stop_token;
      if (ev.finish == FinishReason::kError)
        engine_error = ev.error.empty() ? "generation failed" : ev.error;
      if (ev.finish == FinishReason::kCancelled) cancelled = true;
    }
  }
  if (!engine_error.empty()) return internal_error(engine_error);
  if (cancelled || cancelled_) return unavailable("the server is shutting down", 5);
  std::vector<ChoiceResult> results;
  for (size_t i = 0; i < choices.size(); ++i) {
    ChoiceResult r = std::move(choices[i].result);
    if (req_.parse_tool_calls()) {
      ToolCallParser parser(prompts_.forced_prefix);
      ParsedDelta a = parser.feed(r.text), b = parser.finish();
      r.text = a.content + b.content;
      r.tool_calls = parser.calls();
      r.completed_tool_calls = parser.num_completed();
      r.parsed_tools = true;
    } else if (!req_.chat && req_.echo) {
      r.text = prompts_.echo_texts[i / n] + r.text;
    }
    results.push_back(std::move(r));
  }
  const LogprobsOut lo{req_.logprobs, req_.echo_logprobs(), req_.prompt_logprobs};
  return req_.chat ? chat_completion_json(head_, results, usage(), texts_, lo)
                   : text_completion_json(head_, results, usage(), texts_, lo);
}

void Generation::stream(const std::function<bool(const std::string&)>& write) {
  const int n = req_.engine.n;
  std::vector<Choice> choices(handles_.size() * n);
  if (req_.parse_tool_calls())
    for (auto& c : choices) c.parser.emplace(prompts_.forced_prefix);
  GenerationEvent ev;
  int prompt = 0;
  std::string error;
  bool shutdown_cut = false;
  // Completions echo with logprobs: each prompt's logprobs, sent in its choices' first chunks.
  std::vector<std::vector<TokenLogprob>> echo_lps(handles_.size());
  while (next_event(ev, prompt)) {
    if (ev.prompt_logprobs) {
      echo_lps[size_t(prompt)] = std::move(*ev.prompt_logprobs);
      continue;
    }
    const int idx = prompt * n + ev.index;
    Choice& c = choices[idx];
    const bool finishing = ev.finish != FinishReason::kNone;
    if (ev.finish == FinishReason::kError)
      error = ev.error.empty() ? "generation failed" : ev.error;
    if (ev.finish == FinishReason::kCancelled) {
      if (by_shutdown_) shutdown_cut = true;
      c.finished = true;
      continue;
    }
    // The usage value of this event's chunks: null, or (continuous usage stats, vLLM) the
    // prompt, its cached part and this choice's completion tokens so far.
    json usage_value = nullptr;
    if (req_.continuous_usage) {
      Usage u;
      u.prompt_tokens = int(prompts_.ids[prompt].size());
      u.cached_tokens = handles_[size_t(prompt)]->usage().cached_tokens;  // known at admission
      u.completion_tokens = sample_tokens_[prompt][ev.index];
      usage_value = usage_json(u);
    }
    const json* usage = req_.include_usage ? &usage_value : nullptr;
    std::string out;
    if (req_.chat) {
      ParsedDelta pd;
      if (c.parser) {
        pd = c.parser->feed(ev.text);
        if (finishing) {
          ParsedDelta tail = c.parser->finish();
          pd.content += tail.content;
          for (auto& d : tail.calls) pd.calls.push_back(std::move(d));
        }
      } else {
        pd.content = ev.text;
      }
      json delta = json::object();
      if (!c.role_sent) {
        // The role goes with the first generated token, never before (serving.md §0.4).
        delta["role"] = "assistant";
        delta["content"] = pd.content;
        c.role_sent = true;
      } else if (!pd.content.empty()) {
        delta["content"] = pd.content;
      }
      if (!pd.calls.empty()) delta["tool_calls"] = tool_call_deltas(pd.calls);
      const bool has_lp = req_.logprobs && !ev.logprobs.empty();
      if (!delta.empty() || has_lp)
        out += sse_event(chat_chunk(head_, idx, delta,
                                    has_lp ? chat_logprobs(ev.logprobs, texts_) : json(nullptr),
                                    nullptr, usage));
      if (finishing && ev.finish != FinishReason::kError) {
        c.result.finish = ev.finish;
        c.result.completed_tool_calls = c.parser ? c.parser->num_completed() : 0;
        const std::string fr = choice_finish_reason(c.result);
        out += sse_event(
            chat_chunk(head_, idx, json::object(), nullptr, fr.c_str(), usage));
      }
    } else {
      std::string text = ev.text;
      json lp = nullptr;
      if (req_.echo && !c.role_sent) {
        text = prompts_.echo_texts[prompt] + text;
        if (req_.echo_logprobs())
          lp = echo_prompt_logprobs(prompts_.ids[prompt], echo_lps[size_t(prompt)], texts_,
                                    c.text_offset);
      }
      c.role_sent = true;
      if (req_.logprobs && !ev.logprobs.empty())
        append_completion_logprobs(lp, completion_logprobs(ev.logprobs, texts_, c.text_offset));
      std::string fr;
      if (finishing && ev.finish != FinishReason::kError) {
        c.result.finish = ev.finish;
        fr = choice_finish_reason(c.result);
      }
      if (!text.empty() || !lp.is_null() || !fr.empty())
        out += sse_event(completion_chunk(head_, idx, text, lp, fr.empty() ? nullptr : fr.c_str(),
                                          usage));
    }
    if (finishing) c.finished = true;
    if (!out.empty() && !write(out)) {
      cancel(false);
      return;
    }
  }
  if (cancelled_ && !by_shutdown_) return;  // the client went away
  std::string tail;
  if (!error.empty() || shutdown_cut) {
    // After the 200 header errors travel as a data event (vLLM/SGLang; both SDKs raise on it).
    ApiError e =
        error.empty() ? unavailable("the server is shutting down", 5) : internal_error(error);
    tail += sse_event(error_json(e));
  } else if (req_.include_usage) {
    tail += sse_event(usage_chunk(head_, req_.chat, usage()));
  }
  tail += kSseDone;
  write(tail);
}

}  // namespace kimi::server
