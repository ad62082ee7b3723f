// The dynamic value of the Jinja interpreter, modelled on the Python objects that jinja2
// templates see: Undefined, None, bool, int (64-bit here), float, str (UTF-8; optionally
// markupsafe.Markup), list and tuple, dict (insertion-ordered), callables (builtins, macros,
// bound methods) and jinja2's namespace objects. Also Python's str()/repr(), ==, truthiness
// and the conversion from JSON.
//
// Ownership: a Value is a small handle; strings, lists, dicts and callables live in
// immutable heap objects shared by reference count (copying a Value never deep-copies).
// Namespaces are the one mutable object (`{% set ns.x = 1 %}`) and are shared by reference,
// as in Python.
//
// Thread-safety: immutable objects may be shared between threads (the literals inside a
// parsed template are). A namespace belongs to the render that created it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace bw::jinja {

class Evaluator;
class Value;
class Dict;

// Values nest at most this deep (lists in lists ...): deeper structures are an error, so
// printing, comparing and freeing them cannot exhaust the stack.
inline constexpr int kMaxValueDepth = 200;

// What kind of Python sequence a kList value is. Lists and tuples behave as such; the others
// are what jinja2 filters and dict methods return instead of lists (generators from map or
// select, reversed(), dict.items() views): iterable, but with no len() (iterators), no
// indexing, and not JSON-serialisable.
enum class ListKind : uint8_t {
  kList,
  kTuple,
  kGenerator,
  kReverseIterator,
  kDictKeys,
  kDictValues,
  kDictItems,
};

enum class ValueKind : uint8_t {
  kUndefined,
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kList,  // list or tuple
  kDict,
  kCallable,
  kNamespace,
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// Something a template can call: a global function, a macro, a bound method.
class Callable {
 public:
  virtual ~Callable() = default;
  virtual Result<Value> call(Evaluator& ev, CallArgs& args) const = 0;
  // What Python's repr() shows, e.g. "<Macro 'name'>".
  virtual std::string repr() const = 0;
};

class Value {
 public:
  Value() = default;  // Undefined without a name

  // `message` is the error raised when the undefined value is used (e.g. "'x' is
  // undefined"); `unsafe` marks the sandbox's SecurityError variant.
  static Value undefined(std::string message, bool unsafe = false);
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value number(double d);
  static Value string(std::string s, bool markup = false);
  static Value list(std::vector<Value> items, bool tuple = false);
  static Value list(std::vector<Value> items, ListKind kind);
  // A generator whose computation failed: the error surfaces when it is iterated (jinja2's
  // generator filters run lazily).
  static Value failed_generator(std::string error);
  static Value dict(Dict d);
  static Value callable(std::shared_ptr<const Callable> fn);
  static Value make_namespace(Dict attrs);

  ValueKind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == ValueKind::kUndefined; }
  bool is_none() const { return kind_ == ValueKind::kNone; }
  bool is_bool() const { return kind_ == ValueKind::kBool; }
  bool is_int() const { return kind_ == ValueKind::kInt; }
  bool is_float() const { return kind_ == ValueKind::kFloat; }
  bool is_string() const { return kind_ == ValueKind::kString; }
  bool is_list() const { return kind_ == ValueKind::kList; }
  bool is_dict() const { return kind_ == ValueKind::kDict; }
  bool is_callable() const { return kind_ == ValueKind::kCallable; }
  bool is_namespace() const { return kind_ == ValueKind::kNamespace; }
  // Python's numbers.Number (bool included) and int (bool included).
  bool is_number() const { return is_int() || is_float() || is_bool(); }
  bool is_integral() const { return is_int() || is_bool(); }

  bool as_bool() const { return num_.b; }
  int64_t as_int() const { return is_bool() ? (num_.b ? 1 : 0) : num_.i; }
  double as_double() const;
  const std::string& str() const { return *static_cast<const std::string*>(obj_.get()); }
  bool is_markup() const { return is_string() && sub_ != 0; }
  ListKind list_kind() const { return static_cast<ListKind>(sub_); }
  bool is_tuple() const { return is_list() && list_kind() == ListKind::kTuple; }
  // A real list or tuple (indexable, has len(), JSON-serialisable).
  bool is_sequence() const { return is_list() && sub_ <= static_cast<uint8_t>(ListKind::kTuple); }
  // A generator or reverse iterator: iterable only; always true.
  bool is_iterator() const {
    return is_list() && (list_kind() == ListKind::kGenerator || list_kind() == ListKind::kReverseIterator);
  }
  const std::vector<Value>& items() const;
  // The deferred error of a failed generator, else null.
  const std::string* deferred_error() const;
  const Dict& dict() const;
  const Callable& callable() const { return *static_cast<const Callable*>(obj_.get()); }
  Dict& namespace_attrs() const { return *static_cast<Dict*>(obj_.get()); }
  // The message to raise when an undefined value is used.
  std::string undefined_message() const;
  bool undefined_unsafe() const { return is_undefined() && sub_ != 0; }

  // Nesting depth of lists/dicts (0 for scalars).
  int depth() const;
  // The heap object (for identity tests); null for scalars.
  const void* identity() const { return obj_.get(); }

 private:
  ValueKind kind_ = ValueKind::kUndefined;
  uint8_t sub_ = 0;  // string: Markup; list: ListKind; undefined: unsafe
  union {
    bool b;
    int64_t i;
    double f;
  } num_{};
  std::shared_ptr<void> obj_;
};

// An insertion-ordered mapping with Python's key semantics (1, 1.0 and True are one key).
class Dict {
 public:
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  const std::vector<std::pair<Value, Value>>& items() const { return items_; }
  const Value* find(std::string_view key) const;
  const Value* find(const Value& key) const;
  // Inserts or replaces (keeping the first position, as Python does).
  void set(Value key, Value value);
  void set(std::string key, Value value) { set(Value::string(std::move(key)), std::move(value)); }
  void clear();

 private:
  // Small dicts are searched linearly; past kIndexFrom entries string keys are hashed.
  static constexpr size_t kIndexFrom = 12;
  std::vector<std::pair<Value, Value>> items_;
  std::unordered_map<std::string_view, size_t> string_keys_;  // views into the keys' strings
};

// Python truthiness.
bool truthy(const Value& v);
// Python str() (what `{{ v }}` prints; "" for undefined) and repr().
std::string to_str(const Value& v);
std::string repr(const Value& v);
// Python repr() of a float ("1.0", "0.1", "1e+16", "inf").
std::string format_float(double d);
// Python == (numbers compare by value across int/float/bool; undefined equals undefined).
bool equals(const Value& a, const Value& b);
// Python's type name: "str", "int", "NoneType", "list", "dict", "Undefined" ...
std::string type_name(const Value& v);
// jinja2's object_type_repr(): "dict object", "None", "str object" ...
std::string object_type_repr(const Value& v);
// Whether the value can be a dict key (no lists, dicts or namespaces).
bool is_hashable(const Value& v);

// JSON -> Value: objects become dicts in the json's key order, arrays lists. Fails on
// nesting deeper than kMaxValueDepth.
Result<Value> from_json(const nlohmann::json& j);
Result<Value> from_json(const nlohmann::ordered_json& j);

}  // namespace bw::jinja
