#include "tokenizer/jinja/json_dump.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "tokenizer/jinja/unicode.h"

namespace bw::jinja {
namespace {

void escape_string(std::string& out, std::string_view s, bool ensure_ascii) {
  out.push_back('"');
  for (size_t pos = 0; pos < s.size();) {
    const unicode::Decoded d = unicode::decode(s, pos);
    const char32_t cp = d.cp;
    if (!d.valid) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(cp));
    } else if (cp == '"') {
      out += "\\\"";
    } else if (cp == '\\') {
      out += "\\\\";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\b') {
      out += "\\b";
    } else if (cp == '\f') {
      out += "\\f";
    } else if (cp < 0x20 || (ensure_ascii && cp >= 0x7F)) {
      if (cp >= 0x10000) {
        const char32_t v = cp - 0x10000;
        out += fmt::format("\\u{:04x}\\u{:04x}", static_cast<unsigned>(0xD800 | (v >> 10)),
                           static_cast<unsigned>(0xDC00 | (v & 0x3FF)));
      } else {
        out += fmt::format("\\u{:04x}", static_cast<unsigned>(cp));
      }
    } else {
      out.append(s.substr(pos, d.len));
    }
    pos += d.len;
  }
  out.push_back('"');
}

std::string float_json(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d < 0 ? "-Infinity" : "Infinity";
  return format_float(d);
}

Result<std::string> key_string(const Value& key) {
  switch (key.kind()) {
    case ValueKind::kString:
      return key.str();
    case ValueKind::kInt:
      return std::to_string(key.as_int());
    case ValueKind::kFloat:
      return float_json(key.as_double());
    case ValueKind::kBool:
      return std::string(key.as_bool() ? "true" : "false");
    case ValueKind::kNone:
      return std::string("null");
    default:
      return InvalidArgument("keys must be str, int, float, bool or None, not {}", type_name(key));
  }
}

class Dumper {
 public:
  explicit Dumper(const JsonDumpOptions& options) : options_(options) {}

  Status dump(const Value& v, int level) {
    if (level > kMaxValueDepth) return InvalidArgument("tojson: value nested too deeply");
    switch (v.kind()) {
      case ValueKind::kNone:
        out_ += "null";
        return OkStatus();
      case ValueKind::kBool:
        out_ += v.as_bool() ? "true" : "false";
        return OkStatus();
      case ValueKind::kInt:
        out_ += std::to_string(v.as_int());
        return OkStatus();
      case ValueKind::kFloat:
        out_ += float_json(v.as_double());
        return OkStatus();
      case ValueKind::kString:
        escape_string(out_, v.str(), options_.ensure_ascii);
        return OkStatus();
      case ValueKind::kList:
        if (!v.is_sequence()) return InvalidArgument("Object of type {} is not JSON serializable", type_name(v));
        return dump_list(v.items(), level);
      case ValueKind::kDict:
        return dump_dict(v.dict(), level);
      default:
        return InvalidArgument("Object of type {} is not JSON serializable", type_name(v));
    }
  }

  std::string take() { return std::move(out_); }

 private:
  void newline(int level) {
    out_.push_back('\n');
    for (int i = 0; i < level; ++i)
      out_ += *options_.indent;
  }

  Status dump_list(const std::vector<Value>& items, int level) {
    if (items.empty()) {
      out_ += "[]";
      return OkStatus();
    }
    out_.push_back('[');
    if (options_.indent) newline(level + 1);
    for (size_t i = 0; i < items.size(); ++i) {
      if (i > 0) {
        out_ += options_.item_separator;
        if (options_.indent) newline(level + 1);
      }
      RETURN_IF_ERROR(dump(items[i], level + 1));
    }
    if (options_.indent) newline(level);
    out_.push_back(']');
    return OkStatus();
  }

  Status dump_dict(const Dict& dict, int level) {
    if (dict.empty()) {
      out_ += "{}";
      return OkStatus();
    }
    std::vector<const std::pair<Value, Value>*> entries;
    for (const auto& entry : dict.items())
      entries.push_back(&entry);
    if (options_.sort_keys) RETURN_IF_ERROR(sort_entries(entries));
    out_.push_back('{');
    if (options_.indent) newline(level + 1);
    bool first = true;
    for (const auto* entry : entries) {
      if (!first) {
        out_ += options_.item_separator;
        if (options_.indent) newline(level + 1);
      }
      first = false;
      ASSIGN_OR_RETURN(std::string key, key_string(entry->first));
      escape_string(out_, key, options_.ensure_ascii);
      out_ += options_.key_separator;
      RETURN_IF_ERROR(dump(entry->second, level + 1));
    }
    if (options_.indent) newline(level);
    out_.push_back('}');
    return OkStatus();
  }

  static Status sort_entries(std::vector<const std::pair<Value, Value>*>& entries) {
    bool all_strings = true;
    bool all_numbers = true;
    for (const auto* e : entries) {
      all_strings = all_strings && e->first.is_string();
      all_numbers = all_numbers && e->first.is_number();
    }
    if (all_strings) {
      std::stable_sort(entries.begin(), entries.end(),
                       [](const auto* a, const auto* b) { return a->first.str() < b->first.str(); });
    } else if (all_numbers) {
      std::stable_sort(entries.begin(), entries.end(),
                       [](const auto* a, const auto* b) { return a->first.as_double() < b->first.as_double(); });
    } else {
      return InvalidArgument("'<' not supported between dict keys of different types");
    }
    return OkStatus();
  }

  const JsonDumpOptions& options_;
  std::string out_;
};

}  // namespace

Result<std::string> dump_json(const Value& value, const JsonDumpOptions& options) {
  Dumper dumper(options);
  RETURN_IF_ERROR(dumper.dump(value, 0));
  return dumper.take();
}

}  // namespace bw::jinja
