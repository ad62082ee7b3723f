#include "tokenizer/jinja/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include <fmt/format.h>

#include "tokenizer/jinja/unicode.h"

namespace bw::jinja {
namespace {

struct ListData {
  std::vector<Value> items;
  int depth = 1;
  std::string error;  // failed generators only
};

struct DictData {
  Dict dict;
  int depth = 1;
};

const std::vector<Value>& empty_list() {
  static const std::vector<Value> empty;
  return empty;
}

}  // namespace

Value Value::undefined(std::string message, bool unsafe) {
  Value v;
  v.sub_ = unsafe ? 1 : 0;
  if (!message.empty()) v.obj_ = std::make_shared<std::string>(std::move(message));
  return v;
}

Value Value::none() {
  Value v;
  v.kind_ = ValueKind::kNone;
  return v;
}

Value Value::boolean(bool b) {
  Value v;
  v.kind_ = ValueKind::kBool;
  v.num_.b = b;
  return v;
}

Value Value::integer(int64_t i) {
  Value v;
  v.kind_ = ValueKind::kInt;
  v.num_.i = i;
  return v;
}

Value Value::number(double d) {
  Value v;
  v.kind_ = ValueKind::kFloat;
  v.num_.f = d;
  return v;
}

Value Value::string(std::string s, bool markup) {
  Value v;
  v.kind_ = ValueKind::kString;
  v.sub_ = markup ? 1 : 0;
  v.obj_ = std::make_shared<std::string>(std::move(s));
  return v;
}

Value Value::list(std::vector<Value> items, bool tuple) {
  return list(std::move(items), tuple ? ListKind::kTuple : ListKind::kList);
}

Value Value::list(std::vector<Value> items, ListKind kind) {
  Value v;
  v.kind_ = ValueKind::kList;
  v.sub_ = static_cast<uint8_t>(kind);
  auto data = std::make_shared<ListData>();
  int depth = 0;
  for (const Value& item : items)
    depth = std::max(depth, item.depth());
  data->depth = depth + 1;
  data->items = std::move(items);
  v.obj_ = std::move(data);
  return v;
}

Value Value::dict(Dict d) {
  Value v;
  v.kind_ = ValueKind::kDict;
  auto data = std::make_shared<DictData>();
  int depth = 0;
  for (const auto& [key, value] : d.items())
    depth = std::max({depth, key.depth(), value.depth()});
  data->depth = depth + 1;
  data->dict = std::move(d);
  v.obj_ = std::move(data);
  return v;
}

Value Value::callable(std::shared_ptr<const Callable> fn) {
  Value v;
  v.kind_ = ValueKind::kCallable;
  v.obj_ = std::const_pointer_cast<Callable>(std::move(fn));
  return v;
}

Value Value::make_namespace(Dict attrs) {
  Value v;
  v.kind_ = ValueKind::kNamespace;
  v.obj_ = std::make_shared<Dict>(std::move(attrs));
  return v;
}

double Value::as_double() const {
  if (is_float()) return num_.f;
  return static_cast<double>(as_int());
}

Value Value::failed_generator(std::string error) {
  Value v = list({}, ListKind::kGenerator);
  static_cast<ListData*>(v.obj_.get())->error = std::move(error);
  return v;
}

const std::string* Value::deferred_error() const {
  if (!is_list()) return nullptr;
  const std::string& error = static_cast<const ListData*>(obj_.get())->error;
  return error.empty() ? nullptr : &error;
}

const std::vector<Value>& Value::items() const {
  if (!is_list()) return empty_list();
  return static_cast<const ListData*>(obj_.get())->items;
}

const Dict& Value::dict() const { return static_cast<const DictData*>(obj_.get())->dict; }

std::string Value::undefined_message() const {
  if (obj_ == nullptr) return "undefined value";
  return *static_cast<const std::string*>(obj_.get());
}

int Value::depth() const {
  if (is_list()) return static_cast<const ListData*>(obj_.get())->depth;
  if (is_dict()) return static_cast<const DictData*>(obj_.get())->depth;
  return 0;
}

// ---- Dict -----------------------------------------------------------------------------

const Value* Dict::find(std::string_view key) const {
  if (items_.size() < kIndexFrom) {
    for (const auto& [k, v] : items_) {
      if (k.is_string() && k.str() == key) return &v;
    }
    return nullptr;
  }
  auto it = string_keys_.find(key);
  return it == string_keys_.end() ? nullptr : &items_[it->second].second;
}

const Value* Dict::find(const Value& key) const {
  if (key.is_string()) return find(std::string_view(key.str()));
  for (const auto& [k, v] : items_) {
    if (!k.is_string() && equals(k, key)) return &v;
  }
  return nullptr;
}

void Dict::set(Value key, Value value) {
  if (key.is_string()) {
    if (Value* existing = const_cast<Value*>(find(std::string_view(key.str())))) {
      *existing = std::move(value);
      return;
    }
  } else {
    for (auto& [k, v] : items_) {
      if (!k.is_string() && equals(k, key)) {
        v = std::move(value);
        return;
      }
    }
  }
  items_.emplace_back(std::move(key), std::move(value));
  if (items_.size() == kIndexFrom) {
    // The strings live in shared immutable objects: views of them stay valid when items_ grows.
    for (size_t i = 0; i < items_.size(); ++i) {
      if (items_[i].first.is_string()) string_keys_.emplace(items_[i].first.str(), i);
    }
  } else if (items_.size() > kIndexFrom && items_.back().first.is_string()) {
    string_keys_.emplace(items_.back().first.str(), items_.size() - 1);
  }
}

void Dict::clear() {
  // Move the entries out first so that values freed here cannot reach this dict again.
  std::vector<std::pair<Value, Value>> old;
  old.swap(items_);
  string_keys_.clear();
}

// ---- Python semantics -----------------------------------------------------------------

bool truthy(const Value& v) {
  switch (v.kind()) {
    case ValueKind::kUndefined:
    case ValueKind::kNone:
      return false;
    case ValueKind::kBool:
      return v.as_bool();
    case ValueKind::kInt:
      return v.as_int() != 0;
    case ValueKind::kFloat:
      return v.as_double() != 0.0;
    case ValueKind::kString:
      return !v.str().empty();
    case ValueKind::kList:
      return v.is_iterator() || !v.items().empty();
    case ValueKind::kDict:
      return !v.dict().empty();
    case ValueKind::kCallable:
    case ValueKind::kNamespace:
      return true;
  }
  return false;
}

std::string format_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string_view sci(buf, static_cast<size_t>(res.ptr - buf));
  std::string out;
  if (sci.front() == '-') {
    out.push_back('-');
    sci.remove_prefix(1);
  }
  const size_t e = sci.find('e');
  std::string digits;
  for (char c : sci.substr(0, e)) {
    if (c != '.') digits.push_back(c);
  }
  int exp = 0;
  std::from_chars(sci.data() + e + 1 + (sci[e + 1] == '+' ? 1 : 0), sci.data() + sci.size(), exp);
  const int decpt = exp + 1;  // position of the decimal point relative to the digits
  const int ndigits = static_cast<int>(digits.size());
  if (decpt <= -4 || decpt > 16) {
    out += digits.substr(0, 1);
    if (ndigits > 1) out += "." + digits.substr(1);
    out += fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', std::abs(exp));
  } else if (decpt <= 0) {
    out += "0." + std::string(static_cast<size_t>(-decpt), '0') + digits;
  } else if (decpt >= ndigits) {
    out += digits + std::string(static_cast<size_t>(decpt - ndigits), '0') + ".0";
  } else {
    out += digits.substr(0, static_cast<size_t>(decpt)) + "." + digits.substr(static_cast<size_t>(decpt));
  }
  return out;
}

namespace {

// Code points Python's repr() escapes (str.isprintable() is false), approximated for the
// ranges that matter in chat text.
bool is_printable(char32_t cp) {
  if (cp < 0x20 || cp == 0x7F) return false;
  if (cp < 0x7F) return true;
  if (cp <= 0xA0 || cp == 0xAD) return false;
  if ((cp >= 0x2000 && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202F) || (cp >= 0x205F && cp <= 0x206F)) return false;
  if (cp == 0x1680 || cp == 0x3000 || cp == 0xFEFF || cp == 0x180E || cp == 0x061C) return false;
  if ((cp >= 0xE000 && cp <= 0xF8FF) || (cp >= 0xFFF9 && cp <= 0xFFFB) || cp == 0xFFFE || cp == 0xFFFF) return false;
  if (cp >= 0xF0000) return false;  // private use planes
  return true;
}

void repr_string(std::string& out, std::string_view s) {
  const bool has_single = s.find('\'') != std::string_view::npos;
  const bool has_double = s.find('"') != std::string_view::npos;
  const char quote = (has_single && !has_double) ? '"' : '\'';
  out.push_back(quote);
  for (size_t pos = 0; pos < s.size();) {
    const unicode::Decoded d = unicode::decode(s, pos);
    pos += d.len;
    if (!d.valid) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned>(d.cp));
      continue;
    }
    const char32_t cp = d.cp;
    if (cp == static_cast<char32_t>(quote) || cp == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(cp));
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (is_printable(cp)) {
      unicode::append_utf8(out, cp);
    } else if (cp < 0x100) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned>(cp));
    } else if (cp < 0x10000) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(cp));
    } else {
      out += fmt::format("\\U{:08x}", static_cast<unsigned>(cp));
    }
  }
  out.push_back(quote);
}

void repr_into(std::string& out, const Value& v, int depth);

void str_into(std::string& out, const Value& v, int depth) {
  switch (v.kind()) {
    case ValueKind::kUndefined:
      return;
    case ValueKind::kString:
      out += v.str();
      return;
    default:
      repr_into(out, v, depth);
  }
}

void repr_into(std::string& out, const Value& v, int depth) {
  if (depth > kMaxValueDepth) {
    out += "...";
    return;
  }
  switch (v.kind()) {
    case ValueKind::kUndefined:
      out += "Undefined";
      return;
    case ValueKind::kNone:
      out += "None";
      return;
    case ValueKind::kBool:
      out += v.as_bool() ? "True" : "False";
      return;
    case ValueKind::kInt:
      out += std::to_string(v.as_int());
      return;
    case ValueKind::kFloat:
      out += format_float(v.as_double());
      return;
    case ValueKind::kString:
      if (v.is_markup()) {
        out += "Markup(";
        repr_string(out, v.str());
        out += ")";
      } else {
        repr_string(out, v.str());
      }
      return;
    case ValueKind::kList: {
      const auto& items = v.items();
      if (v.is_iterator()) {
        out += v.list_kind() == ListKind::kGenerator ? "<generator object>" : "<list_reverseiterator object>";
        return;
      }
      if (!v.is_sequence()) out += type_name(v) + "(";
      out += v.is_tuple() ? "(" : "[";
      for (size_t i = 0; i < items.size(); ++i) {
        if (i > 0) out += ", ";
        repr_into(out, items[i], depth + 1);
      }
      if (v.is_tuple() && items.size() == 1) out += ",";
      out += v.is_tuple() ? ")" : "]";
      if (!v.is_sequence()) out += ")";
      return;
    }
    case ValueKind::kDict:
    case ValueKind::kNamespace: {
      const Dict& d = v.is_dict() ? v.dict() : v.namespace_attrs();
      if (v.is_namespace()) out += "<Namespace ";
      out += "{";
      bool first = true;
      for (const auto& [key, value] : d.items()) {
        if (!first) out += ", ";
        first = false;
        repr_into(out, key, depth + 1);
        out += ": ";
        repr_into(out, value, depth + 1);
      }
      out += "}";
      if (v.is_namespace()) out += ">";
      return;
    }
    case ValueKind::kCallable:
      out += v.callable().repr();
      return;
  }
}

template <typename Json>
Result<Value> from_json_impl(const Json& j, int depth) {
  if (depth > kMaxValueDepth) return InvalidArgument("JSON input nested deeper than {} levels", kMaxValueDepth);
  switch (j.type()) {
    case nlohmann::json::value_t::null:
    case nlohmann::json::value_t::discarded:
      return Value::none();
    case nlohmann::json::value_t::boolean:
      return Value::boolean(j.template get<bool>());
    case nlohmann::json::value_t::number_integer:
      return Value::integer(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      const auto u = j.template get<uint64_t>();
      if (u <= static_cast<uint64_t>(INT64_MAX)) return Value::integer(static_cast<int64_t>(u));
      return Value::number(static_cast<double>(u));
    }
    case nlohmann::json::value_t::number_float:
      return Value::number(j.template get<double>());
    case nlohmann::json::value_t::string:
      return Value::string(j.template get<std::string>());
    case nlohmann::json::value_t::binary:
      return InvalidArgument("binary JSON values are not supported");
    case nlohmann::json::value_t::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const auto& item : j) {
        ASSIGN_OR_RETURN(Value v, from_json_impl(item, depth + 1));
        items.push_back(std::move(v));
      }
      return Value::list(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it) {
        ASSIGN_OR_RETURN(Value v, from_json_impl(it.value(), depth + 1));
        d.set(it.key(), std::move(v));
      }
      return Value::dict(std::move(d));
    }
  }
  return Value::none();
}

}  // namespace

std::string to_str(const Value& v) {
  std::string out;
  str_into(out, v, 0);
  return out;
}

std::string repr(const Value& v) {
  std::string out;
  repr_into(out, v, 0);
  return out;
}

bool equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() == b.as_int();
    return a.as_double() == b.as_double();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case ValueKind::kUndefined:
    case ValueKind::kNone:
      return true;
    case ValueKind::kString:
      return a.str() == b.str();
    case ValueKind::kList: {
      if (a.list_kind() != b.list_kind()) return false;
      if (a.is_iterator() || a.list_kind() == ListKind::kDictValues) return a.identity() == b.identity();
      if (!a.is_sequence()) {
        // dict_keys / dict_items compare as sets.
        if (a.items().size() != b.items().size()) return false;
        for (const Value& x : a.items()) {
          if (std::none_of(b.items().begin(), b.items().end(), [&](const Value& y) { return equals(x, y); })) {
            return false;
          }
        }
        return true;
      }
      const auto& x = a.items();
      const auto& y = b.items();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i) {
        if (!equals(x[i], y[i])) return false;
      }
      return true;
    }
    case ValueKind::kDict: {
      const Dict& x = a.dict();
      const Dict& y = b.dict();
      if (x.size() != y.size()) return false;
      for (const auto& [key, value] : x.items()) {
        const Value* other = y.find(key);
        if (other == nullptr || !equals(value, *other)) return false;
      }
      return true;
    }
    default:
      return a.identity() == b.identity();
  }
}

std::string type_name(const Value& v) {
  switch (v.kind()) {
    case ValueKind::kUndefined:
      return "Undefined";
    case ValueKind::kNone:
      return "NoneType";
    case ValueKind::kBool:
      return "bool";
    case ValueKind::kInt:
      return "int";
    case ValueKind::kFloat:
      return "float";
    case ValueKind::kString:
      return v.is_markup() ? "Markup" : "str";
    case ValueKind::kList:
      switch (v.list_kind()) {
        case ListKind::kList:
          return "list";
        case ListKind::kTuple:
          return "tuple";
        case ListKind::kGenerator:
          return "generator";
        case ListKind::kReverseIterator:
          return "list_reverseiterator";
        case ListKind::kDictKeys:
          return "dict_keys";
        case ListKind::kDictValues:
          return "dict_values";
        case ListKind::kDictItems:
          return "dict_items";
      }
      return "list";
    case ValueKind::kDict:
      return "dict";
    case ValueKind::kCallable:
      return "function";
    case ValueKind::kNamespace:
      return "Namespace";
  }
  return "object";
}

std::string object_type_repr(const Value& v) {
  if (v.is_none()) return "None";
  if (v.is_namespace()) return "jinja2.utils.Namespace object";
  if (v.is_markup()) return "markupsafe.Markup object";
  if (v.is_undefined()) return "jinja2.runtime.Undefined object";
  return type_name(v) + " object";
}

bool is_hashable(const Value& v) {
  if (v.is_dict()) return false;
  if (v.is_list()) {
    if (!v.is_tuple()) return v.is_iterator() || v.list_kind() == ListKind::kDictValues;
    for (const Value& item : v.items()) {
      if (!is_hashable(item)) return false;
    }
  }
  return true;
}

Result<Value> from_json(const nlohmann::json& j) { return from_json_impl(j, 0); }
Result<Value> from_json(const nlohmann::ordered_json& j) { return from_json_impl(j, 0); }

}  // namespace bw::jinja
