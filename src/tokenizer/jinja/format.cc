// Python string formatting for templates: "%s" % x (printf style, also the `format`
// filter) and str.format() with the common parts of the format-spec mini-language.
#include <algorithm>
#include <cstdio>

#include <fmt/format.h>

#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/operators.h"
#include "tokenizer/jinja/unicode.h"

namespace bw::jinja {
namespace {

constexpr int64_t kMaxWidth = 1 << 20;

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Pads `s` (already formatted) to `width` code points.
std::string align(std::string s, int64_t width, char how, const std::string& fill, bool sign_aware_zero) {
  const auto len = static_cast<int64_t>(unicode::length(s));
  if (width <= len) return s;
  const int64_t pad = width - len;
  std::string padding;
  for (int64_t i = 0; i < pad; ++i)
    padding += fill;
  switch (how) {
    case '<':
      return s + padding;
    case '^': {
      std::string left;
      for (int64_t i = 0; i < pad / 2; ++i)
        left += fill;
      std::string right;
      for (int64_t i = 0; i < pad - pad / 2; ++i)
        right += fill;
      return left + s + right;
    }
    case '=': {
      const size_t sign = sign_aware_zero && !s.empty() && (s[0] == '-' || s[0] == '+' || s[0] == ' ') ? 1 : 0;
      return s.substr(0, sign) + padding + s.substr(sign);
    }
    default:
      return padding + s;
  }
}

Result<int64_t> read_int(std::string_view f, size_t& i) {
  int64_t v = 0;
  while (i < f.size() && is_digit(f[i])) {
    v = v * 10 + (f[i] - '0');
    if (v > kMaxWidth) return InvalidArgument("format width or precision too large");
    ++i;
  }
  return v;
}

std::string c_format(const std::string& spec, double d) {
  char buf[512];
  std::snprintf(buf, sizeof(buf), spec.c_str(), d);
  return buf;
}

std::string c_format_int(const std::string& spec, long long v) {
  char buf[512];
  std::snprintf(buf, sizeof(buf), spec.c_str(), v);
  return buf;
}

// One %-conversion of `v`.
Result<std::string> percent_one(const Value& v, const std::string& flags, int64_t width, int64_t precision, char conv) {
  const bool left = flags.find('-') != std::string::npos;
  std::string body;
  switch (conv) {
    case 's':
    case 'r':
    case 'a': {
      body = conv == 's' ? to_str(v) : repr(v);
      if (precision >= 0) body = body.substr(0, unicode::byte_offset(body, static_cast<size_t>(precision)));
      return align(body, width, left ? '<' : '>', " ", false);
    }
    case 'd':
    case 'i':
    case 'u':
    case 'x':
    case 'X':
    case 'o':
    case 'c': {
      if (!v.is_number()) {
        if (conv == 'c' && v.is_string() && unicode::length(v.str()) == 1)
          return align(v.str(), width, left ? '<' : '>', " ", false);
        return InvalidArgument("%{} format: a real number is required, not {}", conv, type_name(v));
      }
      if (v.is_float() && conv != 'd' && conv != 'i' && conv != 'u') {
        return InvalidArgument("%{} format: an integer is required, not float", conv);
      }
      const double d = v.as_double();
      if (v.is_float() && (d != d || d > 9.2e18 || d < -9.2e18))
        return InvalidArgument("cannot convert float to integer");
      const long long i = v.is_float() ? static_cast<long long>(d) : static_cast<long long>(v.as_int());
      if (conv == 'c') {
        if (i < 0 || i > 0x10FFFF) return InvalidArgument("%c arg not in range(0x110000)");
        std::string s;
        unicode::append_utf8(s, static_cast<char32_t>(i));
        return align(s, width, left ? '<' : '>', " ", false);
      }
      std::string spec = "%" + flags;
      if (width > 0) spec += std::to_string(width);
      if (precision >= 0) spec += "." + std::to_string(precision);
      spec += "ll";
      spec.push_back(conv == 'i' || conv == 'u' ? 'd' : conv);
      std::string s = c_format_int(spec, i);
      if (conv == 'o' && flags.find('#') != std::string::npos) {
        // Python writes 0o17 where C writes 017.
        const size_t at = s.find_first_of("01234567");
        if (at != std::string::npos && s[at] == '0' && i != 0) s.insert(at + 1, "o");
      }
      return s;
    }
    case 'e':
    case 'E':
    case 'f':
    case 'F':
    case 'g':
    case 'G': {
      if (!v.is_number()) return InvalidArgument("must be real number, not {}", type_name(v));
      std::string spec = "%" + flags;
      if (width > 0) spec += std::to_string(width);
      spec += "." + std::to_string(precision >= 0 ? precision : 6);
      spec.push_back(conv);
      return c_format(spec, v.as_double());
    }
    default:
      return InvalidArgument("unsupported format character '{}'", conv);
  }
}

}  // namespace

Result<std::string> percent_format(std::string_view f, const Value& args) {
  std::vector<Value> values;
  const Dict* mapping = nullptr;
  // Python treats any non-tuple object with __getitem__ (dict, list) as a mapping: unused
  // arguments are then no error.
  bool mapping_like = false;
  if (args.is_tuple()) {
    values = args.items();
  } else {
    values.push_back(args);
    if (args.is_dict()) mapping = &args.dict();
    mapping_like = args.is_dict() || args.is_sequence() || args.is_undefined();
  }
  size_t next = 0;
  std::string out;
  for (size_t i = 0; i < f.size(); ++i) {
    if (f[i] != '%') {
      out.push_back(f[i]);
      continue;
    }
    if (++i >= f.size()) return InvalidArgument("incomplete format");
    if (f[i] == '%') {
      out.push_back('%');
      continue;
    }
    const Value* value = nullptr;
    if (f[i] == '(') {
      if (args.is_undefined()) return undefined_error(args);
      if (mapping == nullptr) return InvalidArgument("format requires a mapping");
      const size_t close = f.find(')', i);
      if (close == std::string_view::npos) return InvalidArgument("incomplete format key");
      const std::string key(f.substr(i + 1, close - i - 1));
      value = mapping->find(std::string_view(key));
      if (value == nullptr) return InvalidArgument("'{}'", key);
      i = close + 1;
    }
    std::string flags;
    while (i < f.size() && (f[i] == '-' || f[i] == '+' || f[i] == ' ' || f[i] == '#' || f[i] == '0'))
      flags.push_back(f[i++]);
    auto next_value = [&]() -> Result<Value> {
      if (next >= values.size()) return InvalidArgument("not enough arguments for format string");
      return values[next++];
    };
    int64_t width = 0;
    if (i < f.size() && f[i] == '*') {
      ASSIGN_OR_RETURN(Value w, next_value());
      ASSIGN_OR_RETURN(width, int_arg("%*", w));
      ++i;
    } else {
      ASSIGN_OR_RETURN(width, read_int(f, i));
    }
    int64_t precision = -1;
    if (i < f.size() && f[i] == '.') {
      ++i;
      if (i < f.size() && f[i] == '*') {
        ASSIGN_OR_RETURN(Value p, next_value());
        ASSIGN_OR_RETURN(precision, int_arg("%.*", p));
        ++i;
      } else {
        ASSIGN_OR_RETURN(precision, read_int(f, i));
      }
    }
    if (width > kMaxWidth || width < 0 || precision > kMaxWidth) return InvalidArgument("format width too large");
    while (i < f.size() && (f[i] == 'h' || f[i] == 'l' || f[i] == 'L'))
      ++i;
    if (i >= f.size()) return InvalidArgument("incomplete format");
    Value v;
    if (value != nullptr) {
      v = *value;
    } else {
      ASSIGN_OR_RETURN(v, next_value());
    }
    ASSIGN_OR_RETURN(std::string piece, percent_one(v, flags, width, precision, f[i]));
    out += piece;
  }
  if (!mapping_like && next < values.size()) {
    return InvalidArgument("not all arguments converted during string formatting");
  }
  return out;
}

namespace {

// Python's format(value, spec) for str, int and float.
Result<std::string> format_spec(const Value& v, std::string_view spec) {
  if (spec.empty()) return to_str(v);
  size_t i = 0;
  std::string fill = " ";
  char how = 0;
  // [[fill]align]
  const size_t first_len = unicode::decode(spec, 0).len;
  if (first_len < spec.size() && std::string_view("<>=^").find(spec[first_len]) != std::string_view::npos) {
    fill = std::string(spec.substr(0, first_len));
    how = spec[first_len];
    i = first_len + 1;
  } else if (std::string_view("<>=^").find(spec[0]) != std::string_view::npos) {
    how = spec[0];
    i = 1;
  }
  char sign = '-';
  if (i < spec.size() && (spec[i] == '+' || spec[i] == '-' || spec[i] == ' ')) sign = spec[i++];
  const bool alternate = i < spec.size() && spec[i] == '#';
  if (alternate) ++i;
  bool zero = false;
  if (i < spec.size() && spec[i] == '0') {
    zero = true;
    ++i;
  }
  ASSIGN_OR_RETURN(int64_t width, read_int(spec, i));
  char grouping = 0;
  if (i < spec.size() && (spec[i] == ',' || spec[i] == '_')) grouping = spec[i++];
  int64_t precision = -1;
  if (i < spec.size() && spec[i] == '.') {
    ++i;
    ASSIGN_OR_RETURN(precision, read_int(spec, i));
  }
  char type = 0;
  if (i < spec.size()) type = spec[i++];
  if (i != spec.size()) return InvalidArgument("Invalid format specifier");
  if (zero && how == 0) {
    fill = "0";
    how = '=';
  }
  if (v.is_string()) {
    if (type != 0 && type != 's') return InvalidArgument("Unknown format code '{}' for object of type 'str'", type);
    std::string s = v.str();
    if (precision >= 0) s = s.substr(0, unicode::byte_offset(s, static_cast<size_t>(precision)));
    return align(std::move(s), width, how ? how : '<', fill, false);
  }
  if (!v.is_number()) return InvalidArgument("unsupported format string passed to {}.__format__", type_name(v));
  std::string body;
  const bool is_int_type =
      type == 0 || type == 'd' || type == 'x' || type == 'X' || type == 'o' || type == 'b' || type == 'n';
  if (v.is_integral() && is_int_type) {
    const int64_t n = v.as_int();
    const uint64_t mag = n < 0 ? static_cast<uint64_t>(0) - static_cast<uint64_t>(n) : static_cast<uint64_t>(n);
    switch (type) {
      case 'x':
        body = fmt::format("{}{:x}", alternate ? "0x" : "", mag);
        break;
      case 'X':
        body = fmt::format("{}{:X}", alternate ? "0X" : "", mag);
        break;
      case 'o':
        body = fmt::format("{}{:o}", alternate ? "0o" : "", mag);
        break;
      case 'b':
        body = fmt::format("{}{:b}", alternate ? "0b" : "", mag);
        break;
      default:
        body = std::to_string(mag);
        if (grouping) {
          std::string grouped;
          for (size_t k = 0; k < body.size(); ++k) {
            if (k > 0 && (body.size() - k) % 3 == 0) grouped.push_back(grouping);
            grouped.push_back(body[k]);
          }
          body = grouped;
        }
    }
    if (n < 0) {
      body = "-" + body;
    } else if (sign != '-') {
      body = std::string(1, sign) + body;
    }
  } else {
    if (type != 0 && std::string_view("eEfFgG%").find(type) == std::string_view::npos) {
      return InvalidArgument("Unknown format code '{}' for object of type '{}'", type, type_name(v));
    }
    double d = v.as_double();
    if (type == 0 && precision < 0) {
      body = v.is_float() ? format_float(d) : std::to_string(v.as_int());
    } else {
      char conv = type == 0 ? 'g' : type;
      if (type == '%') {
        d *= 100;
        conv = 'f';
      }
      body = c_format("%." + std::to_string(precision >= 0 ? precision : 6) + std::string(1, conv), d);
      if (type == '%') body += "%";
    }
    if (!body.empty() && body[0] != '-' && sign != '-') body = std::string(1, sign) + body;
  }
  return align(std::move(body), width, how ? how : '>', fill, true);
}

}  // namespace

Result<std::string> str_format(std::string_view f, CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    const char c = f[i];
    if (c == '}') {
      if (i + 1 < f.size() && f[i + 1] == '}') {
        out.push_back('}');
        ++i;
        continue;
      }
      return InvalidArgument("Single '}}' encountered in format string");
    }
    if (c != '{') {
      out.push_back(c);
      continue;
    }
    if (i + 1 < f.size() && f[i + 1] == '{') {
      out.push_back('{');
      ++i;
      continue;
    }
    const size_t close = f.find('}', i);
    if (close == std::string_view::npos) return InvalidArgument("Single '{{' encountered in format string");
    std::string_view field = f.substr(i + 1, close - i - 1);
    if (field.find('{') != std::string_view::npos) return InvalidArgument("nested format fields are not supported");
    i = close;
    std::string_view spec;
    if (const size_t colon = field.find(':'); colon != std::string_view::npos) {
      spec = field.substr(colon + 1);
      field = field.substr(0, colon);
    }
    char conversion = 0;
    if (const size_t bang = field.find('!'); bang != std::string_view::npos) {
      if (bang + 2 != field.size()) return InvalidArgument("expected ':' after conversion specifier");
      conversion = field[bang + 1];
      field = field.substr(0, bang);
    }
    // Field name: first part, then .attr / [key] parts.
    size_t end = 0;
    while (end < field.size() && field[end] != '.' && field[end] != '[')
      ++end;
    const std::string_view first = field.substr(0, end);
    Value value;
    if (first.empty() || std::all_of(first.begin(), first.end(), is_digit)) {
      size_t index = auto_index++;
      if (!first.empty()) index = static_cast<size_t>(std::strtoull(std::string(first).c_str(), nullptr, 10));
      if (index >= args.positional.size()) {
        return InvalidArgument("Replacement index {} out of range for positional args tuple", index);
      }
      value = args.positional[index];
    } else {
      bool found = false;
      for (const auto& [key, v] : args.keyword) {
        if (key == first) {
          value = v;
          found = true;
        }
      }
      if (!found) return InvalidArgument("'{}'", first);
    }
    while (end < field.size()) {
      if (field[end] == '.') {
        size_t next = end + 1;
        while (next < field.size() && field[next] != '.' && field[next] != '[')
          ++next;
        if (value.is_undefined()) return undefined_error(value);
        value = get_attribute(value, field.substr(end + 1, next - end - 1));
        end = next;
      } else {
        const size_t close_bracket = field.find(']', end);
        if (close_bracket == std::string_view::npos) return InvalidArgument("Missing ']' in format string");
        const std::string key(field.substr(end + 1, close_bracket - end - 1));
        const bool digits = !key.empty() && std::all_of(key.begin(), key.end(), is_digit) && key.size() < 18;
        if (value.is_undefined()) return undefined_error(value);
        value = get_item(value, digits ? Value::integer(std::strtoll(key.c_str(), nullptr, 10)) : Value::string(key));
        end = close_bracket + 1;
      }
    }
    if (conversion == 's') {
      value = Value::string(to_str(value));
    } else if (conversion == 'r' || conversion == 'a') {
      value = Value::string(repr(value));
    } else if (conversion != 0) {
      return InvalidArgument("Unknown conversion specifier {}", conversion);
    }
    ASSIGN_OR_RETURN(std::string piece, format_spec(value, spec));
    out += piece;
    if (out.size() > (size_t{16} << 20)) return InvalidArgument("formatted string too large");
  }
  return out;
}

}  // namespace bw::jinja
