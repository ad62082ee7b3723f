// jinja2's builtin tests (jinja2/tests.py): `x is defined`, `x is divisibleby 3` ...
#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/operators.h"
#include "tokenizer/jinja/unicode.h"

namespace bw::jinja {
namespace {

Status no_args(std::string_view name, CallArgs& args) {
  auto bound = bind_args(name, args, {});
  return bound.ok() ? OkStatus() : bound.status();
}

Result<Value> one_arg(std::string_view name, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args(name, args, {{"other", {}, true}}));
  return a[0];
}

Result<Value> modulo(const Value& v, const Value& n) {
  if (v.is_undefined()) return undefined_error(v);
  if (!v.is_number() || !n.is_number()) {
    return InvalidArgument("unsupported operand type(s) for %: '{}' and '{}'", type_name(v), type_name(n));
  }
  if (v.is_integral() && n.is_integral()) {
    if (n.as_int() == 0) return InvalidArgument("integer division or modulo by zero");
    if (n.as_int() == -1) return Value::integer(0);
    int64_t m = v.as_int() % n.as_int();
    if (m != 0 && ((m < 0) != (n.as_int() < 0))) m += n.as_int();
    return Value::integer(m);
  }
  if (n.as_double() == 0) return InvalidArgument("float modulo");
  double m = std::fmod(v.as_double(), n.as_double());
  if (m != 0 && ((m < 0) != (n.as_double() < 0))) m += n.as_double();
  return Value::number(m);
}

Result<bool> t_odd(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("odd", args));
  ASSIGN_OR_RETURN(Value m, modulo(v, Value::integer(2)));
  return equals(m, Value::integer(1));
}

Result<bool> t_even(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("even", args));
  ASSIGN_OR_RETURN(Value m, modulo(v, Value::integer(2)));
  return equals(m, Value::integer(0));
}

Result<bool> t_divisibleby(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("divisibleby", args, {{"num", {}, true}}));
  ASSIGN_OR_RETURN(Value m, modulo(v, a[0]));
  return equals(m, Value::integer(0));
}

Result<bool> t_defined(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("defined", args));
  return !v.is_undefined();
}

Result<bool> t_undefined(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("undefined", args));
  return v.is_undefined();
}

Result<bool> t_filter(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("filter", args));
  return v.is_string() && is_jinja2_filter(v.str());
}

Result<bool> t_test(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("test", args));
  return v.is_string() && is_jinja2_test(v.str());
}

Result<bool> t_none(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("none", args));
  return v.is_none();
}

Result<bool> t_boolean(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("boolean", args));
  return v.is_bool();
}

Result<bool> t_false(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("false", args));
  return v.is_bool() && !v.as_bool();
}

Result<bool> t_true(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("true", args));
  return v.is_bool() && v.as_bool();
}

Result<bool> t_integer(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("integer", args));
  return v.is_int();
}

Result<bool> t_float(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("float", args));
  return v.is_float();
}

// Python str.islower()/isupper(): at least one cased character, none of the other case.
bool has_case(const std::string& s, bool lower) {
  bool cased = false;
  for (size_t pos = 0; pos < s.size();) {
    const unicode::Decoded d = unicode::decode(s, pos);
    pos += d.len;
    if (!d.valid) continue;
    if (unicode::is_upper(d.cp)) {
      if (lower) return false;
      cased = true;
    } else if (unicode::is_lower(d.cp)) {
      if (!lower) return false;
      cased = true;
    }
  }
  return cased;
}

Result<bool> t_lower(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("lower", args));
  return has_case(to_str(v), true);
}

Result<bool> t_upper(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("upper", args));
  return has_case(to_str(v), false);
}

Result<bool> t_string(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("string", args));
  return v.is_string();
}

Result<bool> t_mapping(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("mapping", args));
  return v.is_dict();
}

Result<bool> t_number(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("number", args));
  return v.is_number();
}

Result<bool> t_sequence(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("sequence", args));
  return v.is_string() || v.is_sequence() || v.is_dict() || v.is_undefined();
}

Result<bool> t_iterable(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("iterable", args));
  return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
}

Result<bool> t_callable(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("callable", args));
  return v.is_callable();
}

Result<bool> t_sameas(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Value other, one_arg("sameas", args));
  // Python `is`: singletons and (small) ints compare by value, objects by identity.
  if (v.kind() != other.kind()) return false;
  switch (v.kind()) {
    case ValueKind::kNone:
    case ValueKind::kUndefined:
      return v.identity() == other.identity() || v.is_none();
    case ValueKind::kBool:
    case ValueKind::kInt:
      return v.as_int() == other.as_int();
    case ValueKind::kFloat:
      return false;
    default:
      return v.identity() == other.identity();
  }
}

Result<bool> t_escaped(Evaluator&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(no_args("escaped", args));
  return v.is_markup();
}

Result<bool> t_in(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("in", args, {{"seq", {}, true}}));
  return contains(a[0], v);
}

template <CompareOp op>
Result<bool> t_compare(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Value other, one_arg("compare", args));
  return compare(op, v, other);
}

const std::unordered_map<std::string_view, TestFn>& test_table() {
  static const auto* table = new std::unordered_map<std::string_view, TestFn>{
      {"odd", t_odd},
      {"even", t_even},
      {"divisibleby", t_divisibleby},
      {"defined", t_defined},
      {"undefined", t_undefined},
      {"filter", t_filter},
      {"test", t_test},
      {"none", t_none},
      {"boolean", t_boolean},
      {"false", t_false},
      {"true", t_true},
      {"integer", t_integer},
      {"float", t_float},
      {"lower", t_lower},
      {"upper", t_upper},
      {"string", t_string},
      {"mapping", t_mapping},
      {"number", t_number},
      {"sequence", t_sequence},
      {"iterable", t_iterable},
      {"callable", t_callable},
      {"sameas", t_sameas},
      {"escaped", t_escaped},
      {"in", t_in},
      {"==", t_compare<CompareOp::kEq>},
      {"eq", t_compare<CompareOp::kEq>},
      {"equalto", t_compare<CompareOp::kEq>},
      {"!=", t_compare<CompareOp::kNe>},
      {"ne", t_compare<CompareOp::kNe>},
      {">", t_compare<CompareOp::kGt>},
      {"gt", t_compare<CompareOp::kGt>},
      {"greaterthan", t_compare<CompareOp::kGt>},
      {">=", t_compare<CompareOp::kGe>},
      {"ge", t_compare<CompareOp::kGe>},
      {"<", t_compare<CompareOp::kLt>},
      {"lt", t_compare<CompareOp::kLt>},
      {"lessthan", t_compare<CompareOp::kLt>},
      {"<=", t_compare<CompareOp::kLe>},
      {"le", t_compare<CompareOp::kLe>},
  };
  return *table;
}

}  // namespace

bool is_jinja2_test(std::string_view name) { return test_table().count(name) > 0; }

TestFn find_test(std::string_view name) {
  auto it = test_table().find(name);
  return it == test_table().end() ? nullptr : it->second;
}

}  // namespace bw::jinja
