#include "tokenizer/jinja/operators.h"

#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/evaluator.h"
#include "tokenizer/jinja/unicode.h"

namespace bw::jinja {
namespace {

const char* op_symbol(BinaryOp op) {
  switch (op) {
    case BinaryOp::kAdd:
      return "+";
    case BinaryOp::kSub:
      return "-";
    case BinaryOp::kMul:
      return "*";
    case BinaryOp::kDiv:
      return "/";
    case BinaryOp::kFloorDiv:
      return "//";
    case BinaryOp::kMod:
      return "%";
    case BinaryOp::kPow:
      return "**";
    case BinaryOp::kAnd:
      return "and";
    case BinaryOp::kOr:
      return "or";
  }
  return "?";
}

Status unsupported_operands(BinaryOp op, const Value& a, const Value& b) {
  return InvalidArgument("unsupported operand type(s) for {}: '{}' and '{}'", op_symbol(op), type_name(a),
                         type_name(b));
}

Status overflow() { return InvalidArgument("integer overflow (values beyond 64 bits are not supported)"); }

Result<Value> repeat(Evaluator& ev, const Value& seq, int64_t n) {
  if (n < 0) n = 0;
  if (seq.is_string()) {
    const std::string& s = seq.str();
    if (!s.empty() && static_cast<uint64_t>(n) > ev.limits().max_output_bytes / s.size()) {
      return InvalidArgument("string repetition result too large");
    }
    RETURN_IF_ERROR(ev.charge(1 + s.size() * static_cast<uint64_t>(n) / 16));
    std::string out;
    out.reserve(s.size() * static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      out += s;
    return Value::string(std::move(out), seq.is_markup());
  }
  const auto& items = seq.items();
  if (!items.empty() && static_cast<uint64_t>(n) > ev.limits().max_output_bytes / items.size()) {
    return InvalidArgument("list repetition result too large");
  }
  RETURN_IF_ERROR(ev.charge(1 + items.size() * static_cast<uint64_t>(n)));
  std::vector<Value> out;
  out.reserve(items.size() * static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    out.insert(out.end(), items.begin(), items.end());
  return Value::list(std::move(out), seq.is_tuple());
}

Result<Value> add(Evaluator& ev, const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) {
      int64_t r;
      if (__builtin_add_overflow(a.as_int(), b.as_int(), &r)) return overflow();
      return Value::integer(r);
    }
    return Value::number(a.as_double() + b.as_double());
  }
  if (a.is_string() && b.is_string()) {
    RETURN_IF_ERROR(ev.check_size(a.str().size() + b.str().size()));
    RETURN_IF_ERROR(ev.charge(1 + (a.str().size() + b.str().size()) / 16));
    if (a.is_markup() || b.is_markup()) {
      return Value::string(
          (a.is_markup() ? a.str() : html_escape(a.str())) + (b.is_markup() ? b.str() : html_escape(b.str())), true);
    }
    return Value::string(a.str() + b.str());
  }
  if (a.is_sequence() && b.is_sequence() && a.is_tuple() == b.is_tuple()) {
    RETURN_IF_ERROR(ev.check_size(a.items().size() + b.items().size()));
    RETURN_IF_ERROR(ev.charge(1 + a.items().size() + b.items().size()));
    std::vector<Value> items = a.items();
    items.insert(items.end(), b.items().begin(), b.items().end());
    return Value::list(std::move(items), a.is_tuple());
  }
  if (a.is_string() || a.is_sequence()) {
    return InvalidArgument("can only concatenate {} (not \"{}\") to {}", type_name(a), type_name(b), type_name(a));
  }
  return unsupported_operands(BinaryOp::kAdd, a, b);
}

Result<Value> int_pow(int64_t base, int64_t exp) {
  int64_t result = 1;
  while (exp > 0) {
    if (exp & 1) {
      if (__builtin_mul_overflow(result, base, &result)) return overflow();
    }
    exp >>= 1;
    if (exp > 0 && __builtin_mul_overflow(base, base, &base)) return overflow();
  }
  return Value::integer(result);
}

Result<Value> arith(BinaryOp op, const Value& a, const Value& b) {
  const bool ints = a.is_integral() && b.is_integral();
  if (ints) {
    const int64_t x = a.as_int();
    const int64_t y = b.as_int();
    int64_t r = 0;
    switch (op) {
      case BinaryOp::kSub:
        if (__builtin_sub_overflow(x, y, &r)) return overflow();
        return Value::integer(r);
      case BinaryOp::kMul:
        if (__builtin_mul_overflow(x, y, &r)) return overflow();
        return Value::integer(r);
      case BinaryOp::kDiv:
        if (y == 0) return InvalidArgument("division by zero");
        return Value::number(static_cast<double>(x) / static_cast<double>(y));
      case BinaryOp::kFloorDiv:
      case BinaryOp::kMod: {
        if (y == 0) return InvalidArgument("integer division or modulo by zero");
        if (x == std::numeric_limits<int64_t>::min() && y == -1) {
          if (op == BinaryOp::kMod) return Value::integer(0);
          return overflow();
        }
        int64_t q = x / y;
        int64_t m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) {
          q -= 1;
          m += y;
        }
        return Value::integer(op == BinaryOp::kFloorDiv ? q : m);
      }
      case BinaryOp::kPow:
        if (y >= 0) return int_pow(x, y);
        if (x == 0) return InvalidArgument("0.0 cannot be raised to a negative power");
        return Value::number(std::pow(static_cast<double>(x), static_cast<double>(y)));
      default:
        break;
    }
  }
  const double x = a.as_double();
  const double y = b.as_double();
  switch (op) {
    case BinaryOp::kSub:
      return Value::number(x - y);
    case BinaryOp::kMul:
      return Value::number(x * y);
    case BinaryOp::kDiv:
      if (y == 0) return InvalidArgument("float division by zero");
      return Value::number(x / y);
    case BinaryOp::kFloorDiv:
    case BinaryOp::kMod: {
      if (y == 0) return InvalidArgument("{}", op == BinaryOp::kMod ? "float modulo" : "float floor division by zero");
      double mod = std::fmod(x, y);
      double div = (x - mod) / y;
      if (mod != 0) {
        if ((y < 0) != (mod < 0)) {
          mod += y;
          div -= 1.0;
        }
      } else {
        mod = std::copysign(0.0, y);
      }
      double floordiv;
      if (div != 0) {
        floordiv = std::floor(div);
        if (div - floordiv > 0.5) floordiv += 1.0;
      } else {
        floordiv = std::copysign(0.0, x / y);
      }
      return Value::number(op == BinaryOp::kMod ? mod : floordiv);
    }
    case BinaryOp::kPow:
      if (x == 0 && y < 0) return InvalidArgument("0.0 cannot be raised to a negative power");
      if (x < 0 && y != std::floor(y)) return InvalidArgument("complex results are not supported");
      return Value::number(std::pow(x, y));
    default:
      break;
  }
  return unsupported_operands(op, a, b);
}

// Index of `i` into a sequence of `n` (negative counts from the end); -1 if out of range.
int64_t wrap_index(int64_t i, int64_t n) {
  if (i < 0) i += n;
  return (i < 0 || i >= n) ? -1 : i;
}

std::string no_element(const Value& obj, const Value& key) {
  return fmt::format("{} has no element {}", object_type_repr(obj), repr(key));
}

std::string no_attribute(const Value& obj, std::string_view name) {
  return fmt::format("'{}' has no attribute '{}'", object_type_repr(obj), name);
}

Value method_or_undefined(const Value& obj, std::string_view name, const std::string& missing_message) {
  switch (method_safety(obj, name)) {
    case MethodSafety::kSafe:
      return bound_method(obj, std::string(name));
    case MethodSafety::kUnsafe:
      return Value::undefined(fmt::format("access to attribute '{}' of '{}' object is unsafe.", name, type_name(obj)),
                              true);
    case MethodSafety::kNone:
      break;
  }
  return Value::undefined(missing_message);
}

Result<bool> ordering(CompareOp op, const Value& a, const Value& b) {
  // Python's rich comparison for <, <=, >, >=.
  auto pick = [op](auto x, auto y) {
    switch (op) {
      case CompareOp::kLt:
        return x < y;
      case CompareOp::kLe:
        return x <= y;
      case CompareOp::kGt:
        return x > y;
      default:
        return x >= y;
    }
  };
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return pick(a.as_int(), b.as_int());
    return pick(a.as_double(), b.as_double());
  }
  if (a.is_string() && b.is_string()) return pick(a.str().compare(b.str()), 0);
  if (a.is_sequence() && b.is_sequence() && a.is_tuple() == b.is_tuple()) {
    const auto& x = a.items();
    const auto& y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!equals(x[i], y[i])) return ordering(op, x[i], y[i]);
    }
    return pick(x.size(), y.size());
  }
  static constexpr const char* kNames[] = {"==", "!=", "<", "<=", ">", ">="};
  return InvalidArgument("'{}' not supported between instances of '{}' and '{}'", kNames[static_cast<int>(op)],
                         type_name(a), type_name(b));
}

}  // namespace

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '\'':
        out += "&#39;";
        break;
      case '"':
        out += "&#34;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

Status undefined_error(const Value& v) { return InvalidArgument("{}", v.undefined_message()); }

Result<Value> binary_op(Evaluator& ev, BinaryOp op, const Value& a, const Value& b) {
  if (a.is_undefined()) return undefined_error(a);
  if (b.is_undefined() && !(op == BinaryOp::kMod && a.is_string())) return undefined_error(b);
  switch (op) {
    case BinaryOp::kAdd:
      return add(ev, a, b);
    case BinaryOp::kMul:
      if ((a.is_string() || a.is_sequence()) && b.is_integral()) return repeat(ev, a, b.as_int());
      if ((b.is_string() || b.is_sequence()) && a.is_integral()) return repeat(ev, b, a.as_int());
      if (a.is_string() || a.is_sequence() || b.is_string() || b.is_sequence()) {
        return InvalidArgument("can't multiply sequence by non-int of type '{}'",
                               type_name((a.is_string() || a.is_sequence()) ? b : a));
      }
      break;
    case BinaryOp::kMod:
      if (a.is_string()) {
        ASSIGN_OR_RETURN(std::string s, percent_format(a.str(), b));
        RETURN_IF_ERROR(ev.check_size(s.size()));
        return Value::string(std::move(s));
      }
      break;
    default:
      break;
  }
  if (a.is_number() && b.is_number()) return arith(op, a, b);
  return unsupported_operands(op, a, b);
}

Result<Value> unary_op(UnaryOp op, const Value& v) {
  if (op == UnaryOp::kNot) return Value::boolean(!truthy(v));
  if (v.is_undefined()) return undefined_error(v);
  if (v.is_integral()) {
    if (op == UnaryOp::kPos) return Value::integer(v.as_int());
    if (v.as_int() == std::numeric_limits<int64_t>::min()) return overflow();
    return Value::integer(-v.as_int());
  }
  if (v.is_float()) return Value::number(op == UnaryOp::kPos ? v.as_double() : -v.as_double());
  return InvalidArgument("bad operand type for unary {}: '{}'", op == UnaryOp::kNeg ? "-" : "+", type_name(v));
}

Result<bool> compare(CompareOp op, const Value& a, const Value& b) {
  switch (op) {
    case CompareOp::kEq:
      return equals(a, b);
    case CompareOp::kNe:
      return !equals(a, b);
    case CompareOp::kIn:
      return contains(b, a);
    case CompareOp::kNotIn: {
      ASSIGN_OR_RETURN(bool in, contains(b, a));
      return !in;
    }
    default:
      if (a.is_undefined()) return undefined_error(a);
      if (b.is_undefined()) return undefined_error(b);
      return ordering(op, a, b);
  }
}

Result<bool> less_than(const Value& a, const Value& b) { return compare(CompareOp::kLt, a, b); }

Result<bool> contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case ValueKind::kUndefined:
      return false;
    case ValueKind::kString:
      if (!item.is_string()) {
        return InvalidArgument("'in <string>' requires string as left operand, not {}", type_name(item));
      }
      return container.str().find(item.str()) != std::string::npos;
    case ValueKind::kList:
      if (const std::string* error = container.deferred_error()) return InvalidArgument("{}", *error);
      for (const Value& v : container.items()) {
        if (equals(v, item)) return true;
      }
      return false;
    case ValueKind::kDict:
      if (!is_hashable(item)) return InvalidArgument("unhashable type: '{}'", type_name(item));
      return container.dict().find(item) != nullptr;
    default:
      return InvalidArgument("argument of type '{}' is not iterable", type_name(container));
  }
}

Value get_attribute(const Value& obj, std::string_view name) {
  switch (obj.kind()) {
    case ValueKind::kDict: {
      if (method_safety(obj, name) != MethodSafety::kNone) return method_or_undefined(obj, name, "");
      if (const Value* v = obj.dict().find(name)) return *v;
      return Value::undefined(no_attribute(obj, name));
    }
    case ValueKind::kNamespace:
      if (const Value* v = obj.namespace_attrs().find(name)) return *v;
      return Value::undefined(no_attribute(obj, name));
    default:
      return method_or_undefined(obj, name, no_attribute(obj, name));
  }
}

Value get_item(const Value& obj, const Value& key) {
  const std::string missing = key.is_string() ? no_attribute(obj, key.str()) : no_element(obj, key);
  switch (obj.kind()) {
    case ValueKind::kDict:
      if (is_hashable(key)) {
        if (const Value* v = obj.dict().find(key)) return *v;
      }
      break;
    case ValueKind::kList:
      if (key.is_integral() && obj.is_sequence()) {
        const int64_t i = wrap_index(key.as_int(), static_cast<int64_t>(obj.items().size()));
        if (i >= 0) return obj.items()[static_cast<size_t>(i)];
      }
      break;
    case ValueKind::kString:
      if (key.is_integral()) {
        const std::string& s = obj.str();
        if (unicode::is_ascii(s)) {
          const int64_t i = wrap_index(key.as_int(), static_cast<int64_t>(s.size()));
          if (i >= 0) return Value::string(s.substr(static_cast<size_t>(i), 1), obj.is_markup());
        } else {
          const auto bounds = unicode::boundaries(s);
          const int64_t i = wrap_index(key.as_int(), static_cast<int64_t>(bounds.size()) - 1);
          if (i >= 0) {
            const size_t b = bounds[static_cast<size_t>(i)];
            return Value::string(s.substr(b, bounds[static_cast<size_t>(i) + 1] - b), obj.is_markup());
          }
        }
      }
      break;
    case ValueKind::kNamespace:
      if (key.is_string()) return get_attribute(obj, key.str());
      break;
    default:
      break;
  }
  if (key.is_string()) return method_or_undefined(obj, key.str(), missing);
  return Value::undefined(missing);
}

Result<Value> get_slice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v) {
  for (const Value* v : {&start_v, &stop_v, &step_v}) {
    if (!v->is_none() && !v->is_integral()) {
      return InvalidArgument("slice indices must be integers or None or have an __index__ method");
    }
  }
  const int64_t step = step_v.is_none() ? 1 : step_v.as_int();
  if (step == 0) return InvalidArgument("slice step cannot be zero");
  std::vector<size_t> bounds;  // code point boundaries for non-ASCII strings
  int64_t n = 0;
  if (obj.is_string()) {
    if (!unicode::is_ascii(obj.str())) bounds = unicode::boundaries(obj.str());
    n = bounds.empty() ? static_cast<int64_t>(obj.str().size()) : static_cast<int64_t>(bounds.size()) - 1;
  } else if (obj.is_sequence()) {
    n = static_cast<int64_t>(obj.items().size());
  } else if (obj.is_dict()) {
    return InvalidArgument("unhashable type: 'slice'");
  } else {
    // jinja2 compiles slices to a plain Python subscript: no Undefined fallback.
    return InvalidArgument("'{}' object is not subscriptable", type_name(obj));
  }
  auto clamp = [n](int64_t v) { return std::max<int64_t>(-n - 1, std::min<int64_t>(v, n + 1)); };
  int64_t start;
  int64_t stop;
  if (step > 0) {
    start = start_v.is_none() ? 0 : clamp(start_v.as_int());
    stop = stop_v.is_none() ? n : clamp(stop_v.as_int());
    if (start < 0) start = std::max<int64_t>(start + n, 0);
    if (stop < 0) stop = std::max<int64_t>(stop + n, 0);
    start = std::min(start, n);
    stop = std::min(stop, n);
  } else {
    start = start_v.is_none() ? n - 1 : clamp(start_v.as_int());
    stop = stop_v.is_none() ? -1 : clamp(stop_v.as_int());
    if (!start_v.is_none()) start = start < 0 ? std::max<int64_t>(start + n, -1) : std::min(start, n - 1);
    if (!stop_v.is_none()) stop = stop < 0 ? std::max<int64_t>(stop + n, -1) : std::min(stop, n - 1);
  }
  std::vector<int64_t> indices;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
    indices.push_back(i);
  if (obj.is_list()) {
    std::vector<Value> items;
    items.reserve(indices.size());
    for (int64_t i : indices)
      items.push_back(obj.items()[static_cast<size_t>(i)]);
    return Value::list(std::move(items), obj.is_tuple());
  }
  const std::string& s = obj.str();
  std::string out;
  if (step == 1 && !indices.empty()) {
    const auto b = static_cast<size_t>(indices.front());
    const auto e = static_cast<size_t>(indices.back()) + 1;
    out = bounds.empty() ? s.substr(b, e - b) : s.substr(bounds[b], bounds[e] - bounds[b]);
  } else {
    for (int64_t i : indices) {
      const auto k = static_cast<size_t>(i);
      if (bounds.empty()) {
        out.push_back(s[k]);
      } else {
        out.append(s, bounds[k], bounds[k + 1] - bounds[k]);
      }
    }
  }
  return Value::string(std::move(out), obj.is_markup());
}

Result<std::vector<Value>> iterate(const Value& v) {
  switch (v.kind()) {
    case ValueKind::kUndefined:
      return std::vector<Value>{};
    case ValueKind::kList:
      if (const std::string* error = v.deferred_error()) return InvalidArgument("{}", *error);
      return v.items();
    case ValueKind::kDict: {
      std::vector<Value> keys;
      keys.reserve(v.dict().size());
      for (const auto& [key, value] : v.dict().items())
        keys.push_back(key);
      return keys;
    }
    case ValueKind::kString: {
      std::vector<Value> chars;
      const std::string& s = v.str();
      for (size_t pos = 0; pos < s.size();) {
        const size_t len = unicode::decode(s, pos).len;
        chars.push_back(Value::string(s.substr(pos, len), v.is_markup()));
        pos += len;
      }
      return chars;
    }
    default:
      return InvalidArgument("'{}' object is not iterable", type_name(v));
  }
}

Result<int64_t> length(const Value& v) {
  switch (v.kind()) {
    case ValueKind::kUndefined:
      return int64_t{0};
    case ValueKind::kString:
      return static_cast<int64_t>(unicode::length(v.str()));
    case ValueKind::kList:
      if (v.is_iterator()) return InvalidArgument("object of type '{}' has no len()", type_name(v));
      return static_cast<int64_t>(v.items().size());
    case ValueKind::kDict:
      return static_cast<int64_t>(v.dict().size());
    default:
      return InvalidArgument("object of type '{}' has no len()", type_name(v));
  }
}

}  // namespace bw::jinja
