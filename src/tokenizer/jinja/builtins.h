// Builtins of the Jinja interpreter: jinja2's filters (filters.cc for strings and scalars,
// sequence_filters.cc for lists and mappings) and tests (predicates.cc), the methods of str,
// dict and list that the sandbox allows (methods.cc; "%" and str.format in format.cc), and
// the default globals range(), dict() and namespace() (globals.cc). Each follows the Python
// original it is named after; where only part of one is supported the rest is an error
// (e.g. "filter 'urlize' is not supported"), not a silent difference.
//
// Thread-safety: stateless; everything a call needs comes through the Evaluator.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "tokenizer/jinja/evaluator.h"
#include "tokenizer/jinja/value.h"

namespace bw::jinja {

// Whether jinja2 3.1 defines the filter/test (implemented or not): unknown names are
// template errors at parse time.
bool is_jinja2_filter(std::string_view name);
bool is_jinja2_test(std::string_view name);

using FilterFn = Result<Value> (*)(Evaluator& ev, const Value& input, CallArgs& args);
using TestFn = Result<bool> (*)(Evaluator& ev, const Value& input, CallArgs& args);
// nullptr when not implemented.
FilterFn find_filter(std::string_view name);
TestFn find_test(std::string_view name);

// Methods: kUnsafe are the mutating ones the immutable sandbox refuses (list.append ...).
enum class MethodSafety { kNone, kSafe, kUnsafe };
MethodSafety method_safety(const Value& receiver, std::string_view name);
// `receiver.name` as a callable value.
Value bound_method(const Value& receiver, std::string name);
Result<Value> call_method(Evaluator& ev, const Value& receiver, std::string_view name, CallArgs& args);

// jinja2's default namespace: range (at most 100000 items, as the sandbox), dict, namespace.
void add_default_globals(Globals& globals);

// Python-style argument binding: positional then keyword, defaults for the rest.
struct Param {
  std::string_view name;
  Value default_value;    // used when not passed
  bool required = false;  // fail when not passed
};
Result<std::vector<Value>> bind_args(std::string_view function, CallArgs& args, std::initializer_list<Param> params);

// Python str.splitlines().
std::vector<std::string> split_lines(std::string_view s, bool keepends);

// Python int(x) for an argument that must be an integer (bool included).
Result<int64_t> int_arg(std::string_view function, const Value& v);

}  // namespace bw::jinja
