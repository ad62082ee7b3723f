// Internal to the filter implementations (filters.cc, sequence_filters.cc): small value
// helpers, jinja2's attribute getter and sorting, and the registration of each file's filters.
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/unicode.h"

namespace bw::jinja {

using FilterTable = std::unordered_map<std::string_view, FilterFn>;
void add_string_filters(FilterTable& table);
void add_sequence_filters(FilterTable& table);

inline Value none() { return Value::none(); }
inline Value str(std::string s) { return Value::string(std::move(s)); }
inline Value boolean(bool b) { return Value::boolean(b); }
inline Value integer(int64_t i) { return Value::integer(i); }
// What jinja2's generator filters (map, select, unique, batch ...) return.
inline Value generator(std::vector<Value> items) { return Value::list(std::move(items), ListKind::kGenerator); }
// A string result keeping the input's Markup flag (what str methods on Markup do).
inline Value same_kind(const Value& input, std::string s) { return Value::string(std::move(s), input.is_markup()); }
// jinja2's ignore_case postprocessor: strings lowercased, others unchanged.
inline Value ignore_case(const Value& v) {
  if (v.is_string()) return Value::string(unicode::to_lower(v.str()));
  return v;
}

// jinja2's make_attrgetter: "a.b.0" looks up item a, then b, then index 0; `default_value`
// (unless none) replaces an Undefined result.
Result<Value> attr_path(Evaluator& ev, Value item, const Value& attribute, const Value& default_value);

// Stable sort of `items` by `keys` (Python's sorted(key=..., reverse=...)).
Status sort_by_keys(std::vector<Value>& items, const std::vector<Value>& keys, bool reverse);

}  // namespace bw::jinja
