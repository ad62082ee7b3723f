// Operators of the Jinja interpreter with Python semantics: arithmetic (int64 with
// overflow errors where Python would grow a big int, float, str/list concatenation and
// repetition), comparisons, `in`, attribute and item access with jinja2's sandbox rules
// (missing attributes and items are Undefined; using an Undefined raises), slicing,
// iteration and len().
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/value.h"

namespace bw::jinja {

class Evaluator;

// The UndefinedError for using `v` (an Undefined).
Status undefined_error(const Value& v);

// Arithmetic (not and/or). `ev` is charged for the bytes and items built.
Result<Value> binary_op(Evaluator& ev, BinaryOp op, const Value& a, const Value& b);
Result<Value> unary_op(UnaryOp op, const Value& v);
Result<bool> compare(CompareOp op, const Value& a, const Value& b);
// Python `item in container`.
Result<bool> contains(const Value& container, const Value& item);
// Python's sorting order (a < b) for sort/min/max.
Result<bool> less_than(const Value& a, const Value& b);

// jinja2's sandboxed getattr / getitem; `obj` must not be Undefined.
Value get_attribute(const Value& obj, std::string_view name);
Value get_item(const Value& obj, const Value& key);
// obj[start:stop:step]; none for an omitted bound.
Result<Value> get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step);

// Python iter(): list items, dict keys, string characters; Undefined yields nothing.
Result<std::vector<Value>> iterate(const Value& v);
// Python len().
Result<int64_t> length(const Value& v);

// markupsafe.escape(): & < > ' " as HTML entities.
std::string html_escape(std::string_view s);

// Python's "%" formatting of a string ("%s and %d" % (a, b)).
Result<std::string> percent_format(std::string_view format, const Value& args);
// Python's str.format() ("{} {name} {0!r:>8}").
Result<std::string> str_format(std::string_view format, CallArgs& args);

}  // namespace bw::jinja
