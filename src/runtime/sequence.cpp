#include "runtime/sequence.h"

#include <filesystem>

namespace kimi {

Sequence::Sequence(std::shared_ptr<RequestState> r, int idx, uint64_t ord, std::vector<int> toks)
    : req(std::move(r)), index(idx), order(ord), tokens(std::move(toks)) {
  prompt_len = int(tokens.size());
  sampling = req->req.sampling;
  // Sample i of a seeded request draws from seed + i: sample 0 equals the n = 1 request.
  sampling.seed += uint64_t(idx);
  history.set_prompt(tokens);
  if (req->req.response_format == ResponseFormat::kJsonObject) json.emplace();
  if (req->req.response_format == ResponseFormat::kJsonSchema) json.emplace(req->req.json_schema);
  if (req->req.tool_calls) tool.emplace(req->req.tool_calls, req->tool_markers);
}

bool Sequence::wants_prompt_logprobs() const {
  return index == 0 && req->req.prompt_logprobs >= 0 && !prompt_logprobs_sent &&
         num_computed < prompt_len;
}

void Sequence::init_decoder(const Tokenizer* tok) {
  if (!tok) return;
  decoder_.emplace(*tok, req->req.skip_special_tokens);
  stops_.emplace(req->req.stop);
}

TextDelta Sequence::push_text(int token, bool is_stop_token, bool match_stops) {
  TextDelta d;
  if (!decoder_ || text_stopped_ || is_stop_token) return d;
  StopMatcher::Result r = stops_->push(decoder_->push(token), match_stops);
  d.text = std::move(r.text);
  if (r.stop) {
    text_stopped_ = true;
    d.stopped = true;
    d.stop_string = stops_->stops()[*r.stop];
    if (req->req.include_stop_str_in_output) d.text += d.stop_string;
  }
  return d;
}

std::string Sequence::flush_text(FinishReason) {
  if (!decoder_ || text_stopped_) return {};
  StopMatcher::Result r = stops_->push(decoder_->flush());
  if (r.stop) {
    text_stopped_ = true;
    std::string out = std::move(r.text);
    if (req->req.include_stop_str_in_output) out += stops_->stops()[*r.stop];
    return out;
  }
  return r.text + stops_->flush();
}

std::unique_ptr<Tokenizer> load_tokenizer_if_present(const std::string& dir) {
  if (!std::filesystem::exists(dir + "/tiktoken.model")) return nullptr;
  return std::make_unique<Tokenizer>(Tokenizer::load(dir));
}

}  // namespace kimi
