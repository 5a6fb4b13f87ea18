#include "runtime/json_schema.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "runtime/json_matcher.h"

namespace kimi {

namespace {

using ojson = nlohmann::ordered_json;
constexpr int kInf = SchemaNode::kUnbounded;
constexpr int kMaxProperties = 1024;  // a key's first byte scans them all
constexpr int kMaxAlternatives = 256;  // per anyOf, after $ref and nested anyOf: a thread each
constexpr int kMaxNesting = 256;     // schema recursion (nesting and $ref chains), for the stack

const std::set<std::string>& annotations() {
  static const std::set<std::string> k = {"title",    "description", "default",  "examples",
                                          "$schema",  "$id",         "$comment", "deprecated",
                                          "readOnly", "writeOnly",   "$defs",    "definitions"};
  return k;
}

const std::set<std::string>& constraints() {
  static const std::set<std::string> k = {"type",     "properties", "required", "additionalProperties",
                                          "items",    "minItems",   "maxItems", "enum",
                                          "const",    "anyOf",      "$ref"};
  return k;
}

struct Failure {
  SchemaError error;
};

std::string join(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

template <typename... Args>
[[noreturn]] void fail(const std::string& path, Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw Failure{{path, os.str()}};
}

std::string kind(const ojson& v) {
  switch (v.type()) {
    case ojson::value_t::object: return "an object";
    case ojson::value_t::array: return "an array";
    case ojson::value_t::string: return "a string";
    case ojson::value_t::boolean: return "a boolean";
    case ojson::value_t::null: return "null";
    default: return "a number";
  }
}

uint8_t type_bit(const std::string& name, const std::string& path) {
  static const std::map<std::string, uint8_t> k = {
      {"object", SchemaNode::kObject},   {"array", SchemaNode::kArray},
      {"string", SchemaNode::kString},   {"number", SchemaNode::kNumber},
      {"integer", SchemaNode::kInteger}, {"boolean", SchemaNode::kBoolean},
      {"null", SchemaNode::kNull}};
  auto it = k.find(name);
  if (it == k.end())
    fail(path, "unknown type '", name,
         "' (one of object, array, string, number, integer, boolean, null)");
  return it->second;
}

// Whether a scalar enum / const value has one of the types.
bool has_type(const ojson& v, uint8_t types) {
  if (v.is_string()) return types & SchemaNode::kString;
  if (v.is_boolean()) return types & SchemaNode::kBoolean;
  if (v.is_null()) return types & SchemaNode::kNull;
  if (types & SchemaNode::kNumber) return true;
  const double d = v.get<double>();
  return (types & SchemaNode::kInteger) && (v.is_number_integer() || std::floor(d) == d);
}

int count_of(const ojson& v, const std::string& path) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0 ||
      v.get<int64_t>() > std::numeric_limits<int>::max())
    fail(path, "must be an integer in [0, 2147483647], got ", v.dump());
  return int(v.get<int64_t>());
}

class Compiler {
 public:
  explicit Compiler(const ojson& root) : root_(root) {}

  std::shared_ptr<JsonSchema> run() {
    out_->root = pointer("#", "");
    // Definitions nothing refers to are checked too: no keyword in the schema goes unread.
    for (const char* defs : {"$defs", "definitions"}) {
      if (!root_.is_object() || !root_.contains(defs)) continue;
      if (!root_[defs].is_object()) fail(defs, "'", defs, "' must be an object of schemas");
      for (auto it = root_[defs].begin(); it != root_[defs].end(); ++it) {
        std::string ref = std::string("#/") + defs + "/";
        for (char c : it.key()) ref += c == '~' ? "~0" : c == '/' ? "~1" : std::string(1, c);
        pointer(ref, defs);
      }
    }
    for (uint32_t i = 0; i < out_->nodes.size(); ++i) flatten(i);
    min_depths();
    if (out_->nodes[out_->root].min_depth > JsonMatcher::kMaxDepth)
      fail("", "the schema admits no JSON document (an unsatisfiable type, enum or required "
               "property, minItems > 0 of such items, or nesting deeper than ",
           JsonMatcher::kMaxDepth, ")");
    return out_;
  }

 private:
  uint32_t new_node(const std::string& path) {
    out_->nodes.emplace_back();
    paths_.push_back(path);
    return uint32_t(out_->nodes.size() - 1);
  }

  uint32_t any() {
    if (any_ < 0) {
      any_ = int(new_node("(any)"));
      SchemaNode& n = out_->nodes[size_t(any_)];
      n.types = SchemaNode::kAny;
      n.free_values = any_;
      n.items = uint32_t(any_);
    }
    return uint32_t(any_);
  }

  // The node of a $ref target; the same pointer always gives the same node, so recursion ends.
  uint32_t pointer(const std::string& ref, const std::string& path) {
    if (auto it = by_pointer_.find(ref); it != by_pointer_.end()) return it->second;
    const ojson* target = nullptr;
    std::string target_path;
    if (ref == "#") {
      target = &root_;
    } else {
      for (const char* prefix : {"#/$defs/", "#/definitions/"}) {
        const std::string p = prefix;
        if (ref.compare(0, p.size(), p) != 0) continue;
        std::string name;  // JSON pointer escapes: ~1 is '/', ~0 is '~'
        for (size_t i = p.size(); i < ref.size(); ++i) {
          if (ref[i] == '/') fail(path, "'$ref' '", ref, "' points inside a definition (not supported)");
          if (ref[i] == '~' && i + 1 < ref.size() && (ref[i + 1] == '0' || ref[i + 1] == '1')) {
            name += ref[++i] == '0' ? '~' : '/';
          } else {
            name += ref[i];
          }
        }
        const std::string defs = p.substr(2, p.size() - 3);
        if (!root_.is_object() || !root_.contains(defs) || !root_[defs].is_object() ||
            !root_[defs].contains(name))
          fail(path, "'$ref' '", ref, "' names no definition in the schema's '", defs, "'");
        target = &root_[defs][name];
        target_path = defs + "." + name;
      }
    }
    if (!target)
      fail(path, "'$ref' '", ref, "' is not supported (only '#', '#/$defs/NAME' and '#/definitions/NAME')");
    const uint32_t id = new_node(target_path);
    by_pointer_[ref] = id;
    fill(id, *target, target_path);
    return id;
  }

  uint32_t node(const ojson& s, const std::string& path) {
    const uint32_t id = new_node(path);
    fill(id, s, path);
    return id;
  }

  void fill(uint32_t id, const ojson& s, const std::string& path) {
    if (++nesting_ > kMaxNesting) fail(path, "the schema nests deeper than ", kMaxNesting, " levels");
    SchemaNode n = compile_node(s, path);
    out_->nodes[id] = std::move(n);
    --nesting_;
  }

  SchemaNode compile_node(const ojson& s, const std::string& path) {
    SchemaNode n;
    if (s.is_boolean()) {  // true: any value; false: none
      if (s.get<bool>()) n.alts = {any()};
      return n;
    }
    if (!s.is_object()) fail(path, "a schema must be an object or a boolean, got ", kind(s));
    std::vector<std::string> given;
    for (auto it = s.begin(); it != s.end(); ++it) {
      if (constraints().count(it.key())) given.push_back(it.key());
      else if (!annotations().count(it.key()))
        fail(join(path, it.key()), "keyword '", it.key(), "' is not supported");
    }
    for (const char* alone : {"$ref", "anyOf"}) {
      if (!s.contains(alone) || given.size() == 1) continue;
      const std::string other = given[0] == alone ? given[1] : given[0];
      fail(join(path, other), "'", other, "' beside '", alone, "' is not supported (put it in the ",
           alone == std::string("$ref") ? "referenced schema" : "branches", ")");
    }
    if (const auto it = s.find("$ref"); it != s.end()) {
      if (!it->is_string()) fail(join(path, "$ref"), "'$ref' must be a string, got ", kind(*it));
      n.alts = {pointer(it->get<std::string>(), join(path, "$ref"))};
      return n;
    }
    if (const auto it = s.find("anyOf"); it != s.end()) {
      const std::string p = join(path, "anyOf");
      if (!it->is_array() || it->empty()) fail(p, "'anyOf' must be a non-empty array of schemas");
      for (size_t i = 0; i < it->size(); ++i)
        n.alts.push_back(node((*it)[i], p + "[" + std::to_string(i) + "]"));
      return n;
    }
    n.types = SchemaNode::kAny;
    if (const auto it = s.find("type"); it != s.end()) {
      const std::string p = join(path, "type");
      n.types = 0;
      if (it->is_string()) {
        n.types = type_bit(it->get<std::string>(), p);
      } else if (it->is_array() && !it->empty()) {
        for (size_t i = 0; i < it->size(); ++i) {
          const std::string pi = p + "[" + std::to_string(i) + "]";
          if (!(*it)[i].is_string()) fail(pi, "a type name must be a string, got ", kind((*it)[i]));
          n.types |= type_bit((*it)[i].get<std::string>(), pi);
        }
      } else {
        fail(p, "'type' must be a type name or a non-empty array of them, got ", kind(*it));
      }
    }
    choices(n, s, path);
    object(n, s, path);
    array(n, s, path);
    return n;
  }

  // enum and const: the values (of the node's types) as JSON texts.
  void choices(SchemaNode& n, const ojson& s, const std::string& path) {
    const auto e = s.find("enum"), c = s.find("const");
    if (e == s.end() && c == s.end()) return;
    auto check = [&](const ojson& v, const std::string& p) {
      if (v.is_object() || v.is_array())
        fail(p, "enum and const values must be strings, numbers, booleans or null, got ", kind(v));
    };
    std::vector<const ojson*> values;
    if (e != s.end()) {
      const std::string p = join(path, "enum");
      if (!e->is_array()) fail(p, "'enum' must be an array, got ", kind(*e));
      for (size_t i = 0; i < e->size(); ++i) {
        check((*e)[i], p + "[" + std::to_string(i) + "]");
        if (c == s.end() || (*e)[i] == *c) values.push_back(&(*e)[i]);
      }
    }
    if (c != s.end()) {
      check(*c, join(path, "const"));
      if (e == s.end()) values.push_back(&*c);
    }
    std::set<std::string> texts;
    for (const ojson* v : values)
      if (has_type(*v, n.types)) texts.insert(v->dump(-1, ' ', false, ojson::error_handler_t::replace));
    n.choice = int(out_->choices.size());
    out_->choices.push_back({std::vector<std::string>(texts.begin(), texts.end()), {}});
  }

  void object(SchemaNode& n, const ojson& s, const std::string& path) {
    const auto props = s.find("properties");
    if (props != s.end()) {
      const std::string p = join(path, "properties");
      if (!props->is_object()) fail(p, "'properties' must be an object, got ", kind(*props));
      if (props->size() > size_t(kMaxProperties))
        fail(p, "at most ", kMaxProperties, " properties per object are supported, got ", props->size());
      for (auto it = props->begin(); it != props->end(); ++it) {
        n.keys.push_back(ojson(it.key()).dump(-1, ' ', false, ojson::error_handler_t::replace));
        n.values.push_back(node(it.value(), join(p, it.key())));
      }
    }
    n.required.assign(n.keys.size(), 0);
    if (const auto req = s.find("required"); req != s.end()) {
      const std::string p = join(path, "required");
      if (!req->is_array()) fail(p, "'required' must be an array of property names, got ", kind(*req));
      for (size_t i = 0; i < req->size(); ++i) {
        const std::string pi = p + "[" + std::to_string(i) + "]";
        const ojson& name = (*req)[i];
        if (!name.is_string()) fail(pi, "a required property name must be a string, got ", kind(name));
        size_t k = 0;
        if (props != s.end())
          for (auto it = props->begin(); it != props->end() && it.key() != name.get<std::string>(); ++it) ++k;
        if (k == n.keys.size())
          fail(pi, "'required' names '", name.get<std::string>(), "', which 'properties' does not declare");
        n.required[k] = 1;
        n.last_required = std::max(n.last_required, int(k));
      }
    }
    const auto extra = s.find("additionalProperties");
    std::optional<uint32_t> extra_node;
    if (extra != s.end()) {
      const std::string p = join(path, "additionalProperties");
      if (!extra->is_boolean() && !extra->is_object())
        fail(p, "'additionalProperties' must be a boolean or a schema, got ", kind(*extra));
      if (extra->is_object()) extra_node = node(*extra, p);
    }
    // Absent beside declared properties: none (what OpenAI's strict mode means; JSON Schema
    // would allow any).
    if (extra == s.end() ? n.keys.empty() : *extra == true)
      n.free_values = int(any());
    else if (extra_node)
      n.free_values = int(*extra_node);
    const int np = int(n.keys.size());
    n.next_required.assign(size_t(np), np - 1);
    for (int pos = np - 1; pos >= 0; --pos)
      n.next_required[size_t(pos)] = n.required[size_t(pos)] || pos == np - 1 ? pos : n.next_required[size_t(pos) + 1];
    if (np == 0) return;
    std::vector<std::pair<std::string, int>> keys;
    for (int i = 0; i < np; ++i) keys.emplace_back(n.keys[size_t(i)], i);
    std::sort(keys.begin(), keys.end());
    SchemaChoice ch;
    for (auto& [text, tag] : keys) ch.texts.push_back(text), ch.tags.push_back(tag);
    n.key_choice = int(out_->choices.size());
    out_->choices.push_back(std::move(ch));
  }

  void array(SchemaNode& n, const ojson& s, const std::string& path) {
    if (const auto it = s.find("items"); it != s.end()) {
      const std::string p = join(path, "items");
      if (it->is_array())
        fail(p, "'items' as an array (tuple validation) is not supported: give one schema");
      n.items = node(*it, p);
    } else {
      n.items = any();
    }
    if (const auto it = s.find("minItems"); it != s.end()) n.min_items = count_of(*it, join(path, "minItems"));
    if (const auto it = s.find("maxItems"); it != s.end()) n.max_items = count_of(*it, join(path, "maxItems"));
    if (n.min_items > n.max_items)
      fail(join(path, "minItems"), "'minItems' (", n.min_items, ") is greater than 'maxItems' (",
           n.max_items, ")");
  }

  // Replaces each node's alts by the concrete nodes they lead to; a cycle of $ref / anyOf with no
  // value in between admits nothing and would loop the matcher.
  void flatten(uint32_t id) {
    if (state_.size() < out_->nodes.size()) state_.resize(out_->nodes.size(), 0);
    if (state_[id] == 2 || out_->nodes[id].alts.empty()) return;
    if (state_[id] == 1)
      fail(paths_[id], "'$ref' / 'anyOf' refer back to themselves with no value in between");
    state_[id] = 1;
    std::vector<uint32_t> flat;
    for (uint32_t a : std::vector<uint32_t>(out_->nodes[id].alts)) {
      flatten(a);
      const SchemaNode& t = out_->nodes[a];
      if (t.alts.empty()) flat.push_back(a);
      else flat.insert(flat.end(), t.alts.begin(), t.alts.end());
    }
    std::vector<uint32_t> unique;
    for (uint32_t a : flat)
      if (std::find(unique.begin(), unique.end(), a) == unique.end()) unique.push_back(a);
    if (unique.size() > size_t(kMaxAlternatives))
      fail(paths_[id], "'anyOf' has ", unique.size(), " alternatives (through $ref and nested anyOf); at most ",
           kMaxAlternatives, " are supported");
    out_->nodes[id].alts = std::move(unique);
    state_[id] = 2;
  }

  // The least fixpoint of: scalar 0; object 1 + the deepest required property; array 1, or 1 +
  // the items with minItems > 0; anyOf the shallowest branch. Depths above the nesting limit
  // count as kInf, so each node's value falls at most kMaxDepth + 2 times: a worklist that
  // re-evaluates a node's parents when it falls stays linear in the schema.
  void min_depths() {
    auto& nodes = out_->nodes;
    std::vector<std::vector<uint32_t>> parents(nodes.size());
    for (uint32_t i = 0; i < nodes.size(); ++i) {
      const SchemaNode& n = nodes[i];
      for (uint32_t a : n.alts) parents[a].push_back(i);
      for (size_t k = 0; k < n.keys.size(); ++k)
        if (n.required[k]) parents[n.values[k]].push_back(i);
      if (n.min_items > 0) parents[n.items].push_back(i);
    }
    auto capped = [](int d) { return d > JsonMatcher::kMaxDepth ? kInf : d; };
    std::vector<uint32_t> work;
    std::vector<uint8_t> queued(nodes.size(), 1);
    for (uint32_t i = uint32_t(nodes.size()); i-- > 0;) work.push_back(i);  // children first
    while (!work.empty()) {
      const uint32_t id = work.back();
      work.pop_back();
      queued[id] = 0;
      SchemaNode& n = nodes[id];
      int d = kInf, od = kInf, ad = kInf;
      if (!n.alts.empty()) {
        for (uint32_t a : n.alts) d = std::min(d, nodes[a].min_depth);
      } else if (n.choice >= 0) {
        d = out_->choices[size_t(n.choice)].texts.empty() ? kInf : 0;
      } else {
        if (n.types & ~(SchemaNode::kObject | SchemaNode::kArray)) d = 0;
        if (n.types & SchemaNode::kObject) {
          od = 1;
          for (size_t i = 0; i < n.keys.size(); ++i)
            if (n.required[i]) od = std::max(od, capped(1 + nodes[n.values[i]].min_depth));
        }
        if (n.types & SchemaNode::kArray) ad = n.min_items > 0 ? capped(1 + nodes[n.items].min_depth) : 1;
        d = std::min({d, od, ad});
      }
      if (d == n.min_depth && od == n.object_depth && ad == n.array_depth) continue;
      n.min_depth = d, n.object_depth = od, n.array_depth = ad;
      for (uint32_t p : parents[id])
        if (!queued[p]) queued[p] = 1, work.push_back(p);
    }
  }

  const ojson& root_;
  std::shared_ptr<JsonSchema> out_ = std::make_shared<JsonSchema>();
  std::vector<std::string> paths_;  // per node, for messages
  std::map<std::string, uint32_t> by_pointer_;
  std::vector<uint8_t> state_;  // flatten: 1 in progress, 2 done
  int any_ = -1;
  int nesting_ = 0;
};

}  // namespace

const std::shared_ptr<const JsonSchema>& JsonSchema::any_object() {
  static const std::shared_ptr<const JsonSchema> k = [] {
    SchemaError e;
    auto s = compile_json_schema(ojson{{"type", "object"}}, &e);
    return s;
  }();
  return k;
}

std::shared_ptr<const JsonSchema> compile_json_schema(const ojson& schema, SchemaError* error) {
  try {
    return Compiler(schema).run();
  } catch (const Failure& f) {
    *error = f.error;
    return nullptr;
  }
}

}  // namespace kimi
