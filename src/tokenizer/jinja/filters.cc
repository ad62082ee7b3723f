// jinja2's builtin filters on strings and scalars (jinja2/filters.py), Hugging Face's tojson,
// and the table of all filters (the ones on sequences are in sequence_filters.cc).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <unordered_map>

#include <fmt/format.h>

#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/filter_util.h"
#include "tokenizer/jinja/json_dump.h"
#include "tokenizer/jinja/operators.h"
#include "tokenizer/jinja/unicode.h"

namespace bw::jinja {
namespace {

Result<Value> f_abs(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("abs", args, {}));
  if (v.is_integral()) {
    if (v.as_int() == INT64_MIN) return InvalidArgument("integer overflow");
    return integer(std::llabs(v.as_int()));
  }
  if (v.is_float()) return Value::number(std::fabs(v.as_double()));
  if (v.is_undefined()) return undefined_error(v);
  return InvalidArgument("bad operand type for abs(): '{}'", type_name(v));
}

Result<Value> f_attr(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("attr", args, {{"name", {}, true}}));
  if (!a[0].is_string()) return InvalidArgument("attribute name must be a string");
  if (v.is_undefined()) return undefined_error(v);
  if (method_safety(v, a[0].str()) != MethodSafety::kNone || v.is_namespace()) return get_attribute(v, a[0].str());
  return Value::undefined(fmt::format("'{}' has no attribute '{}'", object_type_repr(v), a[0].str()));
}

std::string capitalize(std::string_view s) {
  std::string out;
  bool first = true;
  for (size_t pos = 0; pos < s.size();) {
    const unicode::Decoded d = unicode::decode(s, pos);
    if (first) {
      unicode::append_upper(out, d);
    } else {
      unicode::append_lower(out, d);
    }
    first = false;
    pos += d.len;
  }
  return out;
}

Result<Value> f_capitalize(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("capitalize", args, {}));
  return same_kind(v, capitalize(to_str(v)));
}

Result<Value> f_center(Evaluator& ev, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("center", args, {{"width", integer(80)}}));
  ASSIGN_OR_RETURN(int64_t width, int_arg("center", a[0]));
  std::string s = to_str(v);
  const auto len = static_cast<int64_t>(unicode::length(s));
  if (width <= len) return same_kind(v, std::move(s));
  RETURN_IF_ERROR(ev.check_size(static_cast<size_t>(width)));
  const int64_t marg = width - len;
  const int64_t left = marg / 2 + (marg & width & 1);
  return same_kind(
      v, std::string(static_cast<size_t>(left), ' ') + s + std::string(static_cast<size_t>(marg - left), ' '));
}

Result<Value> f_default(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("default", args, {{"default_value", str("")}, {"boolean", boolean(false)}}));
  if (v.is_undefined() || (truthy(a[1]) && !truthy(v))) return a[0];
  return v;
}

Result<Value> f_escape(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("escape", args, {}));
  if (v.is_markup()) return v;
  return Value::string(html_escape(to_str(v)), true);
}

Result<Value> f_forceescape(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("forceescape", args, {}));
  return Value::string(html_escape(to_str(v)), true);
}

// Python float(str): surrounding whitespace and '_' between digits allowed; inf/nan.
bool parse_float(std::string_view text, double& out) {
  std::string s(unicode::strip(text, true, true));
  std::string clean;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '_') {
      if (i == 0 || i + 1 == s.size() || !std::isdigit(static_cast<unsigned char>(s[i - 1])) ||
          !std::isdigit(static_cast<unsigned char>(s[i + 1]))) {
        return false;
      }
      continue;
    }
    clean.push_back(s[i]);
  }
  if (clean.empty()) return false;
  std::string lower = unicode::to_lower(clean);
  std::string_view body = lower;
  if (!body.empty() && (body[0] == '+' || body[0] == '-')) body.remove_prefix(1);
  if (body == "inf" || body == "infinity" || body == "nan") {
    out = body == "nan" ? std::nan("") : INFINITY;
    if (lower[0] == '-') out = -out;
    return true;
  }
  for (char c : body) {
    if (!std::isdigit(static_cast<unsigned char>(c)) && c != '.' && c != 'e' && c != '+' && c != '-') return false;
  }
  char* end = nullptr;
  out = std::strtod(clean.c_str(), &end);
  return end == clean.c_str() + clean.size();
}

Result<Value> f_float(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("float", args, {{"default", Value::number(0.0)}}));
  if (v.is_undefined()) return undefined_error(v);  // float(Undefined) raises
  if (v.is_number()) return Value::number(v.as_double());
  double d = 0;
  if (v.is_string() && parse_float(v.str(), d)) return Value::number(d);
  return a[0];
}

// Python int(str, base): whitespace, sign, '_' separators, base prefixes for base 0/16/8/2.
bool parse_int(std::string_view text, int64_t base, int64_t& out) {
  std::string s(unicode::strip(text, true, true));
  bool negative = false;
  size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
  if (i + 1 < s.size() && s[i] == '0') {
    const char p = static_cast<char>(s[i + 1] | 0x20);
    if ((p == 'x' && (base == 16 || base == 0)) || (p == 'o' && (base == 8 || base == 0)) ||
        (p == 'b' && (base == 2 || base == 0))) {
      base = p == 'x' ? 16 : (p == 'o' ? 8 : 2);
      i += 2;
      if (i < s.size() && s[i] == '_') ++i;
    }
  }
  if (base == 0) base = 10;
  if (base < 2 || base > 36 || i >= s.size()) return false;
  __int128 value = 0;
  bool last_digit = false;
  for (; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '_' && last_digit && i + 1 < s.size()) {
      last_digit = false;
      continue;
    }
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') {
      d = (c | 0x20) - 'a' + 10;
    } else {
      return false;
    }
    if (d >= base) return false;
    value = value * base + d;
    if (value > static_cast<__int128>(INT64_MAX) + 1) return false;
    last_digit = true;
  }
  if (!last_digit) return false;
  if (negative) value = -value;
  if (value > INT64_MAX || value < INT64_MIN) return false;
  out = static_cast<int64_t>(value);
  return true;
}

Result<Value> f_int(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("int", args, {{"default", integer(0)}, {"base", integer(10)}}));
  if (v.is_undefined()) return undefined_error(v);  // int(Undefined) raises
  if (v.is_integral()) return integer(v.as_int());
  if (v.is_float()) {
    const double d = v.as_double();
    if (std::isnan(d) || std::isinf(d)) return InvalidArgument("cannot convert float {} to integer", format_float(d));
    if (std::fabs(d) >= 9.2e18) return InvalidArgument("integer overflow");
    return integer(static_cast<int64_t>(d));
  }
  if (v.is_string()) {
    int64_t i = 0;
    const int64_t base = a[1].is_integral() ? a[1].as_int() : 10;
    if (parse_int(v.str(), base, i)) return integer(i);
    double d = 0;
    if (parse_float(v.str(), d)) {
      if (std::isnan(d) || std::isinf(d)) return InvalidArgument("cannot convert float {} to integer", format_float(d));
      if (std::fabs(d) >= 9.2e18) return InvalidArgument("integer overflow");
      return integer(static_cast<int64_t>(d));
    }
  }
  return a[0];
}

Result<Value> f_format(Evaluator& ev, const Value& v, CallArgs& args) {
  if (!args.positional.empty() && !args.keyword.empty()) {
    return InvalidArgument("can't handle positional and keyword arguments at the same time");
  }
  Value params;
  if (!args.keyword.empty()) {
    Dict d;
    for (auto& [k, x] : args.keyword)
      d.set(k, x);
    params = Value::dict(std::move(d));
  } else {
    params = Value::list(args.positional, true);
  }
  ASSIGN_OR_RETURN(std::string s, percent_format(to_str(v), params));
  RETURN_IF_ERROR(ev.check_size(s.size()));
  return same_kind(v, std::move(s));
}

bool is_line_break(char32_t cp) {
  return cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || (cp >= 0x1C && cp <= 0x1E) || cp == 0x85 ||
         cp == 0x2028 || cp == 0x2029;
}

}  // namespace

// Python str.splitlines() (shared with the str method).
std::vector<std::string> split_lines(std::string_view s, bool keepends) {
  std::vector<std::string> lines;
  size_t start = 0;
  size_t pos = 0;
  while (pos < s.size()) {
    const unicode::Decoded d = unicode::decode(s, pos);
    if (d.valid && is_line_break(d.cp)) {
      size_t end = pos + d.len;
      if (d.cp == '\r' && end < s.size() && s[end] == '\n') ++end;
      lines.emplace_back(s.substr(start, (keepends ? end : pos) - start));
      start = pos = end;
    } else {
      pos += d.len;
    }
  }
  if (start < s.size()) lines.emplace_back(s.substr(start));
  return lines;
}

namespace {

Result<Value> f_indent(Evaluator& ev, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(
      auto a, bind_args("indent", args, {{"width", integer(4)}, {"first", boolean(false)}, {"blank", boolean(false)}}));
  // jinja2 appends "\n" to the value itself: only strings work.
  if (v.is_undefined()) return undefined_error(v);
  if (!v.is_string()) return InvalidArgument("unsupported operand type(s) for +=: '{}' and 'str'", type_name(v));
  std::string indention;
  if (a[0].is_string()) {
    indention = a[0].str();
  } else {
    ASSIGN_OR_RETURN(int64_t width, int_arg("indent", a[0]));
    RETURN_IF_ERROR(ev.check_size(static_cast<size_t>(std::max<int64_t>(width, 0))));
    indention.assign(static_cast<size_t>(std::max<int64_t>(width, 0)), ' ');
  }
  const std::string s = to_str(v) + "\n";
  const std::vector<std::string> lines = split_lines(s, false);
  std::string rv;
  if (truthy(a[2])) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i > 0) rv += "\n" + indention;
      rv += lines[i];
    }
  } else {
    rv = lines.empty() ? "" : lines[0];
    for (size_t i = 1; i < lines.size(); ++i) {
      rv += "\n";
      if (!lines[i].empty()) rv += indention;
      rv += lines[i];
    }
  }
  if (truthy(a[1])) rv = indention + rv;
  RETURN_IF_ERROR(ev.check_size(rv.size()));
  RETURN_IF_ERROR(ev.charge(rv.size() / 16));
  return same_kind(v, std::move(rv));
}

Result<Value> f_lower(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("lower", args, {}));
  return same_kind(v, unicode::to_lower(to_str(v)));
}

Result<Value> f_upper(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("upper", args, {}));
  return same_kind(v, unicode::to_upper(to_str(v)));
}

Result<Value> f_replace(Evaluator& ev, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("replace", args, {{"old", {}, true}, {"new", {}, true}, {"count", none()}}));
  CallArgs method_args;
  method_args.positional = {str(to_str(a[0])), str(to_str(a[1]))};
  if (!a[2].is_none()) method_args.positional.push_back(a[2]);
  return call_method(ev, str(to_str(v)), "replace", method_args);
}

Result<Value> f_round(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("round", args, {{"precision", integer(0)}, {"method", str("common")}}));
  if (!a[1].is_string() || (a[1].str() != "common" && a[1].str() != "ceil" && a[1].str() != "floor")) {
    return InvalidArgument("method must be common, ceil or floor");
  }
  ASSIGN_OR_RETURN(int64_t precision, int_arg("round", a[0]));
  if (v.is_undefined()) return undefined_error(v);
  if (!v.is_number()) return InvalidArgument("type {} doesn't define __round__ method", type_name(v));
  const std::string& method = a[1].str();
  if (method == "common") {
    if (v.is_integral()) return integer(v.as_int());  // round(int, n) is the int for n >= 0
    const double x = v.as_double();
    if (std::isnan(x) || std::isinf(x)) return Value::number(x);
    if (precision == 0) return Value::number(std::nearbyint(x));
    if (precision > 0 && precision < 300) {
      // Correctly rounded decimal conversion, half-even on the exact binary value (as CPython).
      char buf[512];
      std::snprintf(buf, sizeof(buf), "%.*f", static_cast<int>(precision), x);
      return Value::number(std::strtod(buf, nullptr));
    }
    if (precision >= 300) return Value::number(x);
    const double p = std::pow(10.0, static_cast<double>(-precision));
    return Value::number(std::nearbyint(x / p) * p);
  }
  const double p = std::pow(10.0, static_cast<double>(precision));
  const double x = v.as_double() * p;
  return Value::number((method == "ceil" ? std::ceil(x) : std::floor(x)) / p);
}

Result<Value> f_safe(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("safe", args, {}));
  return Value::string(to_str(v), true);
}

Result<Value> f_string(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("string", args, {}));
  if (v.is_string()) return v;
  return str(to_str(v));
}

Result<Value> f_title(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("title", args, {}));
  // jinja2: split on runs of [-\s({\[<] and capitalize each piece.
  const std::string s = to_str(v);
  std::string out;
  bool word_start = true;
  for (size_t pos = 0; pos < s.size();) {
    const unicode::Decoded d = unicode::decode(s, pos);
    const bool sep =
        d.valid && (unicode::is_space(d.cp) || d.cp == '-' || d.cp == '(' || d.cp == '{' || d.cp == '[' || d.cp == '<');
    if (sep) {
      out.append(s, pos, d.len);
      word_start = true;
    } else if (word_start) {
      unicode::append_upper(out, d);
      word_start = false;
    } else {
      unicode::append_lower(out, d);
    }
    pos += d.len;
  }
  return str(std::move(out));
}

// Hugging Face's tojson: json.dumps(x, ensure_ascii, indent, separators, sort_keys).
Result<Value> f_tojson(Evaluator& ev, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("tojson", args,
                                     {{"ensure_ascii", boolean(false)},
                                      {"indent", none()},
                                      {"separators", none()},
                                      {"sort_keys", boolean(false)}}));
  JsonDumpOptions options;
  options.ensure_ascii = truthy(a[0]);
  options.sort_keys = truthy(a[3]);
  if (a[1].is_string()) {
    options.indent = a[1].str();
  } else if (a[1].is_integral()) {
    RETURN_IF_ERROR(ev.check_size(static_cast<size_t>(std::max<int64_t>(a[1].as_int(), 0))));
    options.indent = std::string(static_cast<size_t>(std::max<int64_t>(a[1].as_int(), 0)), ' ');
  } else if (!a[1].is_none()) {
    return InvalidArgument("tojson: indent must be an int or a string");
  }
  if (options.indent) options.item_separator = ",";
  if (!a[2].is_none()) {
    if (!a[2].is_list() || a[2].items().size() != 2 || !a[2].items()[0].is_string() || !a[2].items()[1].is_string()) {
      return InvalidArgument("tojson: separators must be a pair of strings");
    }
    options.item_separator = a[2].items()[0].str();
    options.key_separator = a[2].items()[1].str();
  }
  ASSIGN_OR_RETURN(std::string json, dump_json(v, options));
  RETURN_IF_ERROR(ev.check_size(json.size()));
  RETURN_IF_ERROR(ev.charge(json.size() / 16));
  return str(std::move(json));
}

Result<Value> f_trim(Evaluator& ev, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("trim", args, {{"chars", none()}}));
  CallArgs method_args;
  method_args.positional.push_back(a[0]);
  return call_method(ev, same_kind(v, to_str(v)), "strip", method_args);
}

Result<Value> f_truncate(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(
      auto a,
      bind_args("truncate", args,
                {{"length", integer(255)}, {"killwords", boolean(false)}, {"end", str("...")}, {"leeway", none()}}));
  ASSIGN_OR_RETURN(int64_t len, int_arg("truncate", a[0]));
  int64_t leeway = 5;
  if (!a[3].is_none()) {
    ASSIGN_OR_RETURN(leeway, int_arg("truncate", a[3]));
  }
  const std::string end = to_str(a[2]);
  const auto end_len = static_cast<int64_t>(unicode::length(end));
  if (len < end_len) return InvalidArgument("expected length >= {}, got {}", end_len, len);
  if (leeway < 0) return InvalidArgument("expected leeway >= 0, got {}", leeway);
  ASSIGN_OR_RETURN(int64_t value_len, length(v));
  if (value_len <= len + leeway) return v;  // returned as is, whatever its type
  if (!v.is_string()) return InvalidArgument("truncate expects a string, got {}", type_name(v));
  const std::string& s = v.str();
  std::string head = s.substr(0, unicode::byte_offset(s, static_cast<size_t>(len - end_len)));
  if (!truthy(a[1])) {
    const size_t space = head.rfind(' ');
    if (space != std::string::npos) head.resize(space);
  }
  return str(head + end);
}

Result<Value> f_wordcount(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("wordcount", args, {}));
  const std::string s = to_str(v);
  int64_t words = 0;
  bool in_word = false;
  for (size_t pos = 0; pos < s.size();) {
    const unicode::Decoded d = unicode::decode(s, pos);
    const bool word_char = d.valid && (d.cp == '_' || unicode::is_alpha(d.cp) || unicode::is_digit(d.cp));
    if (word_char && !in_word) ++words;
    in_word = word_char;
    pos += d.len;
  }
  return integer(words);
}

}  // namespace

void add_string_filters(FilterTable& table) {
  table.emplace("abs", f_abs);
  table.emplace("attr", f_attr);
  table.emplace("capitalize", f_capitalize);
  table.emplace("center", f_center);
  table.emplace("d", f_default);
  table.emplace("default", f_default);
  table.emplace("e", f_escape);
  table.emplace("escape", f_escape);
  table.emplace("float", f_float);
  table.emplace("forceescape", f_forceescape);
  table.emplace("format", f_format);
  table.emplace("indent", f_indent);
  table.emplace("int", f_int);
  table.emplace("lower", f_lower);
  table.emplace("replace", f_replace);
  table.emplace("round", f_round);
  table.emplace("safe", f_safe);
  table.emplace("string", f_string);
  table.emplace("title", f_title);
  table.emplace("tojson", f_tojson);
  table.emplace("trim", f_trim);
  table.emplace("truncate", f_truncate);
  table.emplace("upper", f_upper);
  table.emplace("wordcount", f_wordcount);
}

namespace {

const FilterTable& filter_table() {
  static const FilterTable* table = [] {
    auto* t = new FilterTable;
    add_string_filters(*t);
    add_sequence_filters(*t);
    return t;
  }();
  return *table;
}

}  // namespace

bool is_jinja2_filter(std::string_view name) {
  static constexpr std::string_view kOthers[] = {"filesizeformat", "groupby", "pprint",   "random", "striptags",
                                                 "urlencode",      "urlize",  "wordwrap", "xmlattr"};
  if (filter_table().count(name) > 0) return true;
  return std::find(std::begin(kOthers), std::end(kOthers), name) != std::end(kOthers);
}

FilterFn find_filter(std::string_view name) {
  auto it = filter_table().find(name);
  return it == filter_table().end() ? nullptr : it->second;
}

}  // namespace bw::jinja
