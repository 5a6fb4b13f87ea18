#include "bench/dataset.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/check.h"
#include "core/log.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace kimi::bench {
namespace {

// Common English words for tokenizer-free prompts: ordinary text, one word ≈ one token for
// the usual BPE vocabularies.
const char* const kWords[] = {
    "the",       "of",      "and",       "to",          "in",        "is",       "that",
    "for",       "it",      "as",        "was",         "with",      "be",       "by",
    "on",        "not",     "he",        "this",        "are",       "or",       "his",
    "from",      "at",      "which",     "but",         "have",      "an",       "had",
    "they",      "you",     "were",      "their",       "one",       "all",      "we",
    "can",       "her",     "has",       "there",       "been",      "if",       "more",
    "when",      "will",    "would",     "who",         "so",        "no",       "time",
    "people",    "year",    "way",       "day",         "man",       "thing",    "woman",
    "life",      "child",   "world",     "school",      "state",     "family",   "student",
    "group",     "country", "problem",   "hand",        "part",      "place",    "case",
    "week",      "company", "system",    "program",     "question",  "work",     "government",
    "number",    "night",   "point",     "home",        "water",     "room",     "mother",
    "area",      "money",   "story",     "fact",        "month",     "lot",      "right",
    "study",     "book",    "eye",       "job",         "word",      "business", "issue",
    "side",      "kind",    "head",      "house",       "service",   "friend",   "father",
    "power",     "hour",    "game",      "line",        "end",       "member",   "law",
    "car",       "city",    "community", "name",        "president", "team",     "minute",
    "idea",      "kid",     "body",      "information", "back",      "parent",   "face",
    "others",    "level",   "office",    "door",        "health",    "person",   "art",
    "war",       "history", "party",     "result",      "change",    "morning",  "reason",
    "research",  "girl",    "guy",       "moment",      "air",       "teacher",  "force",
    "education", "river",   "mountain",  "light",       "music",     "garden",   "window",
    "paper",     "table",   "road",      "field"};
constexpr int kNumWords = int(sizeof(kWords) / sizeof(kWords[0]));

// Uniform integer in [lo, hi] from a 64-bit generator without modulo bias worth caring about.
int uniform_int(std::mt19937_64& rng, int lo, int hi) {
  if (hi <= lo) return lo;
  return lo + int(rng() % uint64_t(hi - lo + 1));
}

std::string random_words(std::mt19937_64& rng, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    if (i) s += ' ';
    s += kWords[rng() % kNumWords];
  }
  return s;
}

// Text that encodes to exactly `want` tokens (when possible): decode the ids (repairing invalid
// UTF-8: byte-level tokens split characters), re-encode, then cut at a token boundary that
// decodes to whole characters when too long, or top up with further consecutive ids when
// re-encoding merged tokens; keep the closest attempt.
std::string text_of_length(const Tokenizer& tok, std::vector<int> ids, int want, int next_id,
                           int* got) {
  const int base = tok.num_base_tokens();
  std::string best;
  int best_len = -1;
  for (int round = 0; round < 16; ++round) {
    std::string text;
    append_utf8_replacing(text, tok.decode(ids));
    std::vector<int> enc = tok.encode(text, /*allow_special=*/false);
    int n = int(enc.size());
    if (best_len < 0 || std::abs(n - want) < std::abs(best_len - want)) {
      best = text;
      best_len = n;
    }
    if (n == want) break;
    ids = std::move(enc);
    if (n > want) {
      ids.resize(size_t(want));
      while (ids.size() > 1 && !is_valid_utf8(tok.decode(ids))) ids.pop_back();
    }
    // Top up with tokens that are whole characters on their own, so the repair can't grow them.
    for (int tries = 0; int(ids.size()) < want && tries < 4 * base; ++tries) {
      int id = next_id++ % base;
      if (is_valid_utf8(tok.token_bytes(id))) ids.push_back(id);
    }
  }
  *got = best_len;
  return best;
}

}  // namespace

int estimate_tokens(const std::string& text) {
  std::istringstream is(text);
  std::string w;
  int n = 0;
  while (is >> w) ++n;
  return n;
}

int count_tokens(const std::string& text, const Tokenizer* tok) {
  if (!tok) return 0;
  std::string clean;
  append_utf8_replacing(clean, text);
  return int(tok->encode(clean, /*allow_special=*/false).size());
}

std::vector<SampleRequest> random_dataset(const RandomDatasetOptions& o, const Tokenizer* tok) {
  if (o.input_len < 1) fail("--input-len must be at least 1");
  if (o.output_len < 1) fail("--output-len must be at least 1");
  if (o.range_ratio < 0 || o.range_ratio >= 1) fail("--random-range-ratio must be in [0, 1)");
  if (o.prefix_len < 0) fail("--random-prefix-len must be >= 0");
  std::mt19937_64 rng(o.seed);
  auto lens = [&](int len) {
    int lo = std::max(1, int(len * (1 - o.range_ratio)));
    int hi = int(len * (1 + o.range_ratio));
    return uniform_int(rng, lo, hi);
  };
  std::vector<int> in_lens, out_lens;
  for (int i = 0; i < o.num_prompts; ++i) in_lens.push_back(lens(o.input_len));
  for (int i = 0; i < o.num_prompts; ++i) out_lens.push_back(lens(o.output_len));
  std::vector<SampleRequest> out;
  if (tok) {
    const int V = tok->num_base_tokens();  // ordinary tokens only: specials would be markup
    std::vector<int> prefix;
    for (int k = 0; k < o.prefix_len; ++k) prefix.push_back(int(rng() % uint64_t(V)));
    for (int i = 0; i < o.num_prompts; ++i) {
      int offset = int(rng() % uint64_t(V));
      std::vector<int> ids = prefix;
      for (int k = 0; k < in_lens[i]; ++k) ids.push_back(int((int64_t(offset) + i + k) % V));
      int want = o.prefix_len + in_lens[i], got = 0;
      SampleRequest r;
      r.prompt = text_of_length(*tok, ids, want, offset + i + in_lens[i], &got);
      r.prompt_len = got;
      r.prompt_len_exact = true;
      r.expected_output_len = out_lens[i];
      out.push_back(std::move(r));
    }
  } else {
    std::string prefix = random_words(rng, o.prefix_len);
    for (int i = 0; i < o.num_prompts; ++i) {
      SampleRequest r;
      r.prompt = prefix.empty() ? random_words(rng, in_lens[i])
                                : prefix + " " + random_words(rng, in_lens[i]);
      r.prompt_len = o.prefix_len + in_lens[i];
      r.expected_output_len = out_lens[i];
      out.push_back(std::move(r));
    }
  }
  return out;
}

std::vector<SampleRequest> sharegpt_dataset(const ShareGptOptions& o, const Tokenizer* tok) {
  std::ifstream f(o.path);
  if (!f) fail("cannot open the ShareGPT file ", o.path);
  nlohmann::json j = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_array()) fail(o.path, ": not a JSON array of conversations");
  std::vector<std::pair<std::string, std::string>> pairs;
  for (auto& e : j) {
    if (!e.is_object() || !e.contains("conversations")) continue;
    auto& c = e["conversations"];
    if (!c.is_array() || c.size() < 2) continue;
    auto text = [](const nlohmann::json& t) {
      return t.is_object() && t.contains("value") && t["value"].is_string()
                 ? t["value"].get<std::string>()
                 : std::string();
    };
    pairs.emplace_back(text(c[0]), text(c[1]));
  }
  std::mt19937_64 rng(o.seed);
  std::shuffle(pairs.begin(), pairs.end(), rng);
  if (!tok)
    spdlog::warn("sharegpt without --tokenizer: prompt lengths are word counts (estimates)");
  auto count = [&](const std::string& s) {
    return tok ? count_tokens(s, tok) : estimate_tokens(s);
  };
  std::vector<SampleRequest> out;
  for (auto& [p, c] : pairs) {
    if (int(out.size()) >= o.num_prompts) break;
    if (p.empty()) continue;
    int plen = count(p);
    int olen = o.output_len ? *o.output_len : count(c);
    if (plen < 4 || (!o.output_len && olen < 4)) continue;
    if (plen > 1024 || plen + olen > 2048) continue;
    SampleRequest r;
    r.prompt.clear();
    append_utf8_replacing(r.prompt, p);
    r.prompt_len = plen;
    r.prompt_len_exact = tok != nullptr;
    r.expected_output_len = olen;
    out.push_back(std::move(r));
  }
  if (int(out.size()) < o.num_prompts)
    fail(o.path, ": only ", out.size(), " conversations pass the filters, ", o.num_prompts,
         " requested");
  return out;
}

}  // namespace kimi::bench
