// Structured outputs (response_format json_schema): the subset of JSON Schema that the matcher
// (runtime/json_matcher.h) enforces, compiled into a graph of nodes ($ref cycles are edges back).
//
// Supported: type (a name or an array of names), properties + required (keys are generated in
// the schema's order, as OpenAI's strict mode emits them), additionalProperties, items,
// minItems / maxItems, enum and const of scalars, anyOf, $ref to "#", "#/$defs/NAME" and
// "#/definitions/NAME", boolean schemas, and the annotations title, description, default,
// examples, $schema, $id, $comment, deprecated, readOnly, writeOnly. Every other keyword is
// refused by name, never ignored. Keys beyond the declared properties take values that match
// additionalProperties (true: any value; false: none; absent: any value where no properties are
// declared, none beside them, as in OpenAI's strict mode); they come after the declared ones
// (runtime/json_matcher.h) and never repeat one.
// A schema without type, enum, const, anyOf or $ref (e.g. {}) takes any JSON value.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace kimi {

struct SchemaNode {
  enum Type : uint8_t {
    kObject = 1, kArray = 2, kString = 4, kNumber = 8, kInteger = 16, kBoolean = 32, kNull = 64,
    kAny = 127,
  };
  // min_depth of a node with no value within the matcher's nesting limit (any depth above it).
  static constexpr int kUnbounded = 1 << 20;

  uint8_t types = 0;              // what the value may be, unless choice or alts decide
  int choice = -1;                // enum / const: the value is one of choices[choice]'s texts
  std::vector<uint32_t> alts;     // anyOf (and $ref): the branches, none of which has alts
  // Object: declared properties in schema order, their JSON key texts (quoted) and value nodes.
  std::vector<std::string> keys;
  std::vector<uint32_t> values;
  std::vector<uint8_t> required;  // per property
  int last_required = -1;         // index of the last required property
  // After p properties, properties p..next_required[p] may come next (the first required one
  // at or after p ends the run; the last property if none is).
  std::vector<int> next_required;
  int key_choice = -1;            // all the keys, sorted, tagged with their property index
  int free_values = -1;           // keys beyond the declared ones: values of this node; -1: none
  // Array.
  uint32_t items = 0;
  int min_items = 0, max_items = std::numeric_limits<int>::max();
  // Fewest containers a value of this node opens (the object or array itself included).
  int min_depth = kUnbounded, object_depth = kUnbounded, array_depth = kUnbounded;
};

// A set of JSON texts (enum values, or the keys that may come next in an object), sorted, so the
// texts sharing a prefix are a contiguous range. tags[i]: a key's property index.
struct SchemaChoice {
  std::vector<std::string> texts;
  std::vector<int> tags;
};

class JsonSchema {
 public:
  std::vector<SchemaNode> nodes;
  std::vector<SchemaChoice> choices;
  uint32_t root = 0;

  // JSON mode (response_format json_object): one object with any keys and values.
  static const std::shared_ptr<const JsonSchema>& any_object();
};

struct SchemaError {
  std::string path;     // where in the schema: "properties.a.items.type" ("" = the schema itself)
  std::string message;  // what is wrong there, naming the keyword
};

// The schema compiled, or nullptr with *error filled (malformed or unsupported schema, or one
// that admits no document within the matcher's nesting limit).
std::shared_ptr<const JsonSchema> compile_json_schema(const nlohmann::ordered_json& schema,
                                                      SchemaError* error);

}  // namespace kimi
