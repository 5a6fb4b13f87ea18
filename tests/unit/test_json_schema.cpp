// Structured outputs: the schema-driven matcher (runtime/json_matcher.h over
// runtime/json_schema.h) accepts valid documents byte by byte, refuses each kind of violation at
// its first wrong byte, never reaches a dead end (random walks through it always finish, and what
// they write validates against the schema by an independent validator below), and the token mask
// lets through exactly the tokens whose bytes it accepts.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>

#include "runtime/json_matcher.h"
#include "runtime/json_schema.h"
#include "runtime/json_token_mask.h"
#include "tokenizer/base64.h"
#include "tokenizer_test_util.h"

namespace kimi {
namespace {

using ojson = nlohmann::ordered_json;

std::shared_ptr<const JsonSchema> compile(const std::string& text) {
  SchemaError e;
  auto s = compile_json_schema(ojson::parse(text), &e);
  EXPECT_NE(s, nullptr) << text << ": " << e.path << ": " << e.message;
  return s;
}

size_t accepted_prefix(const std::shared_ptr<const JsonSchema>& s, std::string_view text,
                       JsonMatcher* out = nullptr) {
  JsonMatcher m(s);
  size_t i = 0;
  while (i < text.size() && m.step(uint8_t(text[i]))) ++i;
  if (out) *out = m;
  return i;
}

bool accepts(const std::shared_ptr<const JsonSchema>& s, std::string_view text) {
  JsonMatcher m(s);
  return accepted_prefix(s, text, &m) == text.size() && m.complete();
}

// JSON Schema validation of the supported keywords, written from the specification and
// independent of the compiler: what generated documents are checked against.
bool valid(const ojson& root, const ojson& s, const nlohmann::json& v) {
  if (s.is_boolean()) return s.get<bool>();
  if (s.contains("$ref")) {
    const std::string ref = s["$ref"];
    if (ref == "#") return valid(root, root, v);
    const size_t slash = ref.rfind('/');
    return valid(root, root[ref.substr(2, slash - 2)][ref.substr(slash + 1)], v);
  }
  if (s.contains("anyOf")) {
    for (const ojson& b : s["anyOf"])
      if (valid(root, b, v)) return true;
    return false;
  }
  if (s.contains("type")) {
    const ojson types = s["type"].is_array() ? s["type"] : ojson::array({s["type"]});
    bool any = false;
    for (const std::string t : types)
      any = any || (t == "object" && v.is_object()) || (t == "array" && v.is_array()) ||
            (t == "string" && v.is_string()) || (t == "number" && v.is_number()) ||
            (t == "integer" && v.is_number_integer()) || (t == "boolean" && v.is_boolean()) ||
            (t == "null" && v.is_null());
    if (!any) return false;
  }
  auto same = [](const ojson& a, const nlohmann::json& b) { return nlohmann::json::parse(a.dump()) == b; };
  if (s.contains("const") && !same(s["const"], v)) return false;
  if (s.contains("enum")) {
    bool found = false;
    for (const ojson& e : s["enum"]) found = found || same(e, v);
    if (!found) return false;
  }
  if (v.is_object()) {
    const ojson props = s.value("properties", ojson::object());
    if (s.contains("required"))
      for (const std::string k : s["required"])
        if (!v.contains(k)) return false;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (props.contains(it.key())) {
        if (!valid(root, props[it.key()], it.value())) return false;
      } else if (s.contains("additionalProperties") && !valid(root, s["additionalProperties"], it.value())) {
        return false;
      }
    }
  }
  if (v.is_array()) {
    if (s.contains("minItems") && v.size() < s["minItems"].get<size_t>()) return false;
    if (s.contains("maxItems") && v.size() > s["maxItems"].get<size_t>()) return false;
    if (s.contains("items"))
      for (const auto& item : v)
        if (!valid(root, s["items"], item)) return false;
  }
  return true;
}

// Every name a schema declares in some "properties".
void declared_names(const ojson& s, std::set<std::string>& out) {
  if (s.is_object())
    for (auto it = s.begin(); it != s.end(); ++it) {
      if (it.key() == "properties" && it->is_object())
        for (auto p = it->begin(); p != it->end(); ++p) out.insert(p.key());
      declared_names(*it, out);
    }
  if (s.is_array())
    for (const ojson& v : s) declared_names(v, out);
}

// The keys of each object of a document, duplicates kept (a parsed value keeps one of them).
std::vector<std::vector<std::string>> object_keys(const std::string& text) {
  std::vector<std::vector<std::string>> done, open;
  using event = nlohmann::json::parse_event_t;
  const nlohmann::json doc = nlohmann::json::parse(text, [&](int, event e, nlohmann::json& v) {
    if (e == event::object_start) open.emplace_back();
    if (e == event::key) open.back().push_back(v.get<std::string>());
    if (e == event::object_end) done.push_back(std::move(open.back())), open.pop_back();
    return true;
  });
  EXPECT_TRUE(open.empty()) << doc.dump();
  return done;
}

const char* const kPerson = R"({
  "type": "object",
  "properties": {
    "name": {"type": "string"},
    "age": {"type": "integer"},
    "nickname": {"type": ["string", "null"]},
    "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
    "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}},
                "required": ["city"], "additionalProperties": false},
    "kind": {"enum": ["admin", "user", 7, null]},
    "score": {"anyOf": [{"type": "number"}, {"type": "null"}]},
    "ok": {"const": true}
  },
  "required": ["name", "age", "tags", "kind"],
  "additionalProperties": false
})";

const char* const kTree = R"({
  "$defs": {"node": {"type": "object",
                     "properties": {"value": {"type": "integer"},
                                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                     "required": ["value", "children"], "additionalProperties": false}},
  "$ref": "#/$defs/node"
})";

const char* const kShapes = R"({
  "type": "object",
  "properties": {"shapes": {"type": "array", "maxItems": 4, "items": {"anyOf": [
    {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number"}},
     "required": ["kind", "r"], "additionalProperties": false},
    {"type": "object", "properties": {"kind": {"const": "rect"}, "w": {"type": "number"}, "h": {"type": "number"}},
     "required": ["kind", "w", "h"], "additionalProperties": false},
    {"type": "object", "properties": {"kind": {"const": "circle"}, "d": {"type": "integer"}},
     "required": ["kind", "d"], "additionalProperties": false},
    {"$ref": "#/definitions/label"}]}}},
  "required": ["shapes"],
  "definitions": {"label": {"type": "string"}}
})";

const char* const kMap = R"({"type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer"}}})";

// Extra keys beside declared properties: after the required ones, never one of the declared.
const char* const kExtras = R"({
  "type": "object",
  "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "note": {"type": "string"}},
  "required": ["id"],
  "additionalProperties": {"type": "boolean"}
})";

const char* const kOpenItems = R"({
  "type": "array", "maxItems": 3,
  "items": {"type": "object", "properties": {"k": {"enum": ["a", "b"]}}, "required": ["k"],
            "additionalProperties": {"type": "object", "properties": {"v": {"type": "null"}},
                                     "additionalProperties": true}}
})";

TEST(JsonSchemaMatcher, AcceptsValidDocumentsByteByByte) {
  const std::pair<const char*, std::vector<std::string>> cases[] = {
      {kPerson,
       {R"({"name":"Ann","age":31,"tags":["a"],"kind":"admin"})",
        R"({ "name" : "B\u00e9" , "age" : -4 , "nickname" : null , "tags" : [ "x" , "y" , "z" ] ,)"
        R"( "address" : { "city" : "Oslo" , "zip" : 150 } , "kind" : 7 , "score" : 2.5e-3 , "ok" : true })",
        R"({"name":"","age":0,"nickname":"n","tags":[""],"kind":null,"score":null})"}},
      {kTree, {R"({"value":1,"children":[{"value":2,"children":[]},{"value":3,"children":[{"value":4,"children":[]}]}]})"}},
      {kShapes,
       {R"({"shapes":[{"kind":"circle","r":1.5},{"kind":"rect","w":1,"h":2},{"kind":"circle","d":3},"label"]})",
        R"({"shapes":[]})"}},
      {kMap, {R"({})", R"({"a":[1,2],"b":[],"a":[-3]})"}},
      {kExtras,
       {R"({"id":1})", R"({"id":1,"x":true})", R"({"id":1,"name":"a","x":true,"y":false})",
        R"({"id":1,"nam":true,"names":false,"Name":true,"":false})",  // near the declared keys
        R"({"id":1,"note":"n","x\u0041\n":true})"}},  // escapes once no declared key is near
      {R"({"properties": {"a": {"type": "integer"}}, "additionalProperties": true})",
       {R"({})", R"({"a":1,"b":[1,{"c":null}]})", R"({"b":"x","c":{}})"}},
      {kOpenItems, {R"([{"k":"a"},{"k":"b","x":{},"y":{"v":null,"w":[true]}}])"}},
      {R"({})", {R"([1,"x",{"k":[null,true]}])", R"("s")", R"(-0.5)", R"(null)"}},
      {R"({"type": "array", "items": false})", {"[]"}},
      {R"({"type": ["integer", "boolean"]})", {"12", "false"}},
  };
  for (const auto& [schema, docs] : cases) {
    auto s = compile(schema);
    const ojson root = ojson::parse(schema);
    for (const std::string& d : docs) {
      ASSERT_TRUE(valid(root, root, nlohmann::json::parse(d))) << d;  // the validator agrees
      JsonMatcher m(s);
      for (size_t i = 0; i < d.size(); ++i) {
        // Only a top-level number may be complete before its end.
        if (d[0] != '-' && !isdigit(d[0])) {
          EXPECT_FALSE(m.complete()) << d << " at " << i;
        }
        ASSERT_TRUE(m.step(uint8_t(d[i]))) << d << " refused at byte " << i;
      }
      EXPECT_TRUE(m.complete()) << d;
    }
  }
}

// Each text is refused exactly at the byte its index marks (the prefix before is accepted).
TEST(JsonSchemaMatcher, RefusesEachViolationAtItsFirstByte) {
  const char* const strict = R"({"type": "object", "properties": {"a": {"type": "integer"},
      "b": {"type": "boolean"}, "c": {"type": "string"}}, "required": ["a", "c"], "additionalProperties": false})";
  const std::tuple<const char*, std::string, size_t> cases[] = {
      {strict, R"({"a":"1")", 5},         // wrong type: a string for an integer
      {strict, R"({"a":1.5)", 6},         // integers have no fraction
      {strict, R"({"a":1e3)", 6},         // nor an exponent
      {strict, R"({"a":true)", 5},
      {strict, R"({})", 1},               // missing required key before '}'
      {strict, R"({"a":1})", 6},          // "c" is required too
      {strict, R"({"a":1,"b":true})", 15},
      {strict, R"({"b")", 2},             // "a" is required and comes first
      {strict, R"({"a":1,"d")", 8},       // an extra key, additionalProperties false
      {strict, R"({"a":1,"c":"x","b")", 14},  // keys in the schema's order: none after "c"
      {strict, R"([)", 0},
      {kPerson, R"({"name":"x","age":1,"tags":["t"],"kind":"adm1")", 44},  // enum mismatch
      {kPerson, R"({"name":"x","age":1,"tags":["t"],"kind":70)", 41},       // 7, not 70
      {kPerson, R"({"name":"x","age":1,"tags":[])", 28},                    // minItems 1
      {kPerson, R"({"name":"x","age":1,"tags":["1","2","3",)", 39},         // maxItems 3
      {kPerson, R"({"name":"x","age":1,"tags":["t"],"kind":null,"ok":false)", 50},  // const
      {kPerson, R"({"name":"x","age":1,"nickname":1)", 31},                 // ["string", "null"]
      {kPerson, R"({"name":"x","age":1,"tags":["t"],"address":{"zip":1)", 45},  // required "city"
      {kPerson, R"({"name":"x","age":1,"tags":["t"],"kind":null,"score":"1")", 53},  // anyOf
      {kShapes, R"({"shapes":[{"kind":"circle","w")", 29},  // no branch has "w" after "circle"
      {kShapes, R"({"shapes":[{"kind":"rect","w":1,"r")", 33},
      {kShapes, R"({"shapes":[{"kind":"circle","d":1.5)", 33},  // the "d" branch is an integer
      {kShapes, R"({"shapes":[true)", 11},
      {kTree, R"({"value":1,"children":[{"value":2}]})", 33},  // "children" is required below too
      {kMap, R"({"k":[1,"x")", 8},
      {R"({"type": "object", "additionalProperties": false})", R"({")", 1},
      {kExtras, R"({"x":true)", 2},                     // extra keys only after the required "id"
      {kExtras, R"({"id":1,"name":"a","id")", 22},      // a declared key is never an extra one
      {kExtras, R"({"id":1,"x":true,"name")", 22},      // nor comes after an extra one
      {kExtras, R"({"id":1,"x":1)", 12},                // extra values match additionalProperties
      {kExtras, R"({"id":1,"n\u)", 10},                 // "\u0061" could spell a declared key
      {R"({"properties": {"a": {"type": "integer"}, "c": {}}})", R"({"a":1,"b")", 8},  // absent: none
      {kOpenItems, R"([{"k":"a","x":{"v":1)", 19},
      {R"({"enum": ["a", "ab"]})", R"("ac")", 2},
  };
  for (const auto& [schema, text, at] : cases)
    EXPECT_EQ(accepted_prefix(compile(schema), text), at) << text;
}

// The nesting limit counts containers; no accepted prefix is a dead end at it: a recursive tree
// stops offering '{' where a node could not be closed in time, and a required chain deeper than
// the limit admits no document at all (a compile error, see OpenAIRequest.JsonSchemaResponseFormat).
TEST(JsonSchemaMatcher, DepthLimitLeavesNoDeadEnds) {
  auto tree = compile(kTree);
  // Each tree level opens an object and an array; a node needs 2 levels (object + children array).
  std::string text;
  const int levels = JsonMatcher::kMaxDepth / 2;
  for (int i = 0; i < levels; ++i) text += R"({"value":1,"children":[)";
  EXPECT_EQ(accepted_prefix(tree, text + "{"), text.size());  // depth 64: no room for a node
  std::string closed = text;
  for (int i = 0; i < levels; ++i) closed += "]}";
  EXPECT_TRUE(accepts(tree, closed));

  // A linked list through "#" (next optional): at depth 64 the key "next" is no longer offered.
  auto list = compile(R"({"type": "object", "properties": {"next": {"$ref": "#"}}})");
  std::string chain;
  for (int i = 1; i < JsonMatcher::kMaxDepth; ++i) chain += R"({"next":)";
  EXPECT_EQ(accepted_prefix(list, chain + R"({")"), chain.size() + 1);
  EXPECT_TRUE(accepts(list, chain + "{}" + std::string(size_t(JsonMatcher::kMaxDepth - 1), '}')));
  // Whitespace and number limits hold as in JSON mode.
  auto num = compile(R"({"type": "array", "items": {"type": "number"}})");
  const std::string open = "[", minus = "[-";  // (GCC 12 warns on "[" + std::string(...))
  EXPECT_EQ(accepted_prefix(num, open + std::string(JsonMatcher::kMaxWhitespaceRun + 1, ' ')),
            size_t(1 + JsonMatcher::kMaxWhitespaceRun));
  EXPECT_EQ(accepted_prefix(num, open + std::string(JsonMatcher::kMaxNumberBytes + 1, '1')),
            size_t(1 + JsonMatcher::kMaxNumberBytes));
  // Integers stay within int64, so parsers read them as integers.
  auto ints = compile(R"({"type": "array", "items": {"type": "integer"}})");
  const std::string digits(JsonMatcher::kMaxIntegerDigits + 1, '9');
  EXPECT_EQ(accepted_prefix(ints, open + digits), size_t(1 + JsonMatcher::kMaxIntegerDigits));
  EXPECT_EQ(accepted_prefix(ints, minus + digits), size_t(2 + JsonMatcher::kMaxIntegerDigits));
  const std::string longest = minus + digits.substr(1) + "]";
  EXPECT_TRUE(accepts(ints, longest));
  EXPECT_TRUE(nlohmann::json::parse(longest)[0].is_number_integer());
}

// A top-level number or enum value may end or go on: complete() while more digits may follow.
TEST(JsonSchemaMatcher, TopLevelScalarsMayEndOrGoOn) {
  auto e = compile(R"({"enum": [1, 12, "x"]})");
  JsonMatcher m(e);
  ASSERT_TRUE(m.step(uint8_t('1')));
  EXPECT_TRUE(m.complete());
  JsonMatcher more = m;
  EXPECT_TRUE(more.step(uint8_t('2')) && more.complete());
  EXPECT_FALSE(more.step(uint8_t('3')));
  EXPECT_FALSE(m.step(uint8_t(' ')));  // nothing after the document
}

// Random walks: from each state pick a random accepted byte (after a length budget, bytes that
// close things first). Every walk must find an accepted byte until the matcher is complete (no
// dead ends) and what it wrote must parse and validate against the schema.
TEST(JsonSchemaMatcher, RandomWalksFinishAndValidate) {
  const char* const schemas[] = {kPerson, kTree, kShapes, kMap, kExtras, kOpenItems, R"({})",
                                 R"({"type": "array", "minItems": 2, "maxItems": 5, "items": {"enum": [1, 12, 123]}})"};
  std::mt19937 rng(11);
  const std::string closers = "\"}]0n:,";
  for (const char* schema : schemas) {
    auto s = compile(schema);
    const ojson root = ojson::parse(schema);
    std::set<std::string> declared;
    declared_names(root, declared);
    int extra_keys = 0;
    for (int walk = 0; walk < 60; ++walk) {
      JsonMatcher m(s);
      std::string text;
      const size_t budget = 20 + rng() % 200;
      while (!m.complete() || (text.size() < budget && rng() % 4 != 0)) {
        std::vector<uint8_t> ok;
        for (int c = 0; c < 256; ++c) {
          JsonMatcher t = m;
          if (t.step(uint8_t(c))) ok.push_back(uint8_t(c));
        }
        if (ok.empty()) break;  // complete and nothing may follow
        uint8_t pick = ok[rng() % ok.size()];
        if (text.size() >= budget)
          for (char c : closers)
            if (std::find(ok.begin(), ok.end(), uint8_t(c)) != ok.end()) {
              pick = uint8_t(c);
              break;
            }
        ASSERT_TRUE(m.step(pick));
        text += char(pick);
        ASSERT_LT(text.size(), 5000u) << "the walk does not finish: " << text;
      }
      ASSERT_TRUE(m.complete()) << "dead end after: " << text;
      nlohmann::json v = nlohmann::json::parse(text, nullptr, false);
      ASSERT_FALSE(v.is_discarded()) << text;
      EXPECT_TRUE(valid(root, root, v)) << schema << "\n" << text;
      // What parsing hides: a declared key twice in one object (extra keys may repeat, as the
      // keys of an object without declared properties do).
      for (const std::vector<std::string>& keys : object_keys(text))
        for (size_t i = 0; i < keys.size(); ++i) {
          if (!declared.count(keys[i])) {
            ++extra_keys;
          } else {
            EXPECT_EQ(std::count(keys.begin(), keys.end(), keys[i]), 1) << keys[i] << " in " << text;
          }
        }
    }
    if (schema == kExtras || schema == kOpenItems) {
      EXPECT_GT(extra_keys, 0) << schema;
    }
  }
}

// The mask over a small vocabulary of schema fragments equals stepping each token's bytes on a
// copy of the matcher, at states across the schema; end ids are allowed exactly when complete.
TEST(JsonSchemaTokenMask, EqualsBruteForce) {
  const std::vector<std::string> pieces = {
      "{", "}", "[", "]", ":", ",", "\"", " ", "\n", "name", "age", "tags", "kind", "admin", "user",
      "nick", "ad", "score", "null", "true", "1", "7", "0", ".", "e", "-", "\\u", "00e9", "x",
      "\":", "\",\"", "\"}", "],", "\xc3\xa9", "address", "city", "ok", "id", "note", "na"};
  const Tokenizer tok = test::fragment_tokenizer(pieces, 6000, 1, 3, 5);
  const int V = tok.vocab_size() + 3;
  JsonTokenMask masks(tok, V);
  const std::vector<int> end = {tok.eos_id()};
  const std::pair<const char*, std::vector<std::string>> states[] = {
      {kPerson,
       {"", "{", R"({")", R"({"na)", R"({"name")", R"({"name":"x","age":)", R"({"name":"x","age":1)",
        R"({"name":"x","age":1,")", R"({"name":"x","age":1,"tags":[)", R"({"name":"x","age":1,"tags":["a")",
        R"({"name":"x","age":1,"tags":["a"],"kind":)", R"({"name":"x","age":1,"tags":["a"],"kind":"ad)",
        R"({"name":"x","age":1,"tags":["a"],"kind":7)", R"({"name":"x","age":1,"tags":["a"],"kind":7})"}},
      {kShapes, {R"({"shapes":[)", R"({"shapes":[{"kind":"circle",)"}},
      {kExtras, {R"({"id":1,)", R"({"id":1,")", R"({"id":1,"na)", R"({"id":1,"nax)", R"({"id":1,"x":)",
                 R"({"id":1,"x":true,")"}},
      {R"({"enum": [1, 17, 170]})", {"", "1", "17"}},
  };
  for (const auto& [schema, prefixes] : states) {
    auto s = compile(schema);
    for (const std::string& p : prefixes) {
      JsonMatcher m(s);
      ASSERT_TRUE(m.step(p)) << p;
      for (int pass = 0; pass < 2; ++pass) {  // the second answer comes from the cache
        const std::vector<uint64_t>& mask = masks.allowed(m, end);
        int allowed = 0;
        for (int id = 0; id < V; ++id) {
          bool want = id == tok.eos_id() && m.complete();
          if (id < tok.num_base_tokens()) {
            JsonMatcher c = m;
            want = c.step(tok.token_bytes(id));
          }
          ASSERT_EQ(JsonTokenMask::test(mask, id), want) << "prefix '" << p << "' token " << id;
          allowed += want;
        }
        EXPECT_GT(allowed, 0) << p;
      }
    }
  }
}

}  // namespace
}  // namespace kimi
