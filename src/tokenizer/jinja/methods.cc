// Methods of str, dict and list that templates call (`s.strip()`, `d.items()`, `l.index(x)`),
// with Python's semantics over code points. The immutable sandbox refuses the mutating
// ones (list.append ...): accessing them yields an Undefined that raises SecurityError when
// called.
#include <algorithm>
#include <array>

#include <fmt/format.h>

#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/operators.h"
#include "tokenizer/jinja/unicode.h"

namespace bw::jinja {
namespace {

constexpr std::array<std::string_view, 39> kStrMethods = {
    "capitalize", "casefold",   "center",    "count",    "endswith",   "find",      "format",       "index",
    "isalnum",    "isalpha",    "isdecimal", "isdigit",  "islower",    "isnumeric", "isspace",      "istitle",
    "isupper",    "join",       "ljust",     "lower",    "lstrip",     "partition", "removeprefix", "removesuffix",
    "replace",    "rfind",      "rindex",    "rjust",    "rpartition", "rsplit",    "rstrip",       "split",
    "splitlines", "startswith", "strip",     "swapcase", "title",      "upper",     "zfill"};
constexpr std::array<std::string_view, 5> kDictSafe = {"copy", "get", "items", "keys", "values"};
constexpr std::array<std::string_view, 5> kDictUnsafe = {"clear", "pop", "popitem", "setdefault", "update"};
constexpr std::array<std::string_view, 5> kListSafe = {"clear", "copy", "count", "index", "pop"};
constexpr std::array<std::string_view, 6> kListUnsafe = {"append", "extend", "insert", "remove", "reverse", "sort"};

template <size_t N>
bool in(const std::array<std::string_view, N>& names, std::string_view name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

class BoundMethod : public Callable {
 public:
  BoundMethod(Value receiver, std::string name) : receiver_(std::move(receiver)), name_(std::move(name)) {}
  Result<Value> call(Evaluator& ev, CallArgs& args) const override { return call_method(ev, receiver_, name_, args); }
  std::string repr() const override {
    return fmt::format("<built-in method {} of {} object>", name_, type_name(receiver_));
  }

 private:
  Value receiver_;
  std::string name_;
};

// A string viewed as code points (byte offsets of each).
class Text {
 public:
  explicit Text(const std::string& s) : s_(s), ascii_(unicode::is_ascii(s)) {
    if (!ascii_) bounds_ = unicode::boundaries(s);
  }
  int64_t length() const { return ascii_ ? static_cast<int64_t>(s_.size()) : static_cast<int64_t>(bounds_.size()) - 1; }
  size_t byte(int64_t index) const { return ascii_ ? static_cast<size_t>(index) : bounds_[static_cast<size_t>(index)]; }
  int64_t index(size_t byte_offset) const {
    if (ascii_) return static_cast<int64_t>(byte_offset);
    return std::lower_bound(bounds_.begin(), bounds_.end(), byte_offset) - bounds_.begin();
  }
  const std::string& str() const { return s_; }

 private:
  const std::string& s_;
  bool ascii_;
  std::vector<size_t> bounds_;
};

// Python's adjustment of optional start/end arguments; returns false if start > len.
Result<bool> window(const Text& t, const Value& start_v, const Value& end_v, int64_t& start, int64_t& end) {
  const int64_t len = t.length();
  start = 0;
  end = len;
  if (!start_v.is_none()) {
    ASSIGN_OR_RETURN(start, int_arg("slice index", start_v));
  }
  if (!end_v.is_none()) {
    ASSIGN_OR_RETURN(end, int_arg("slice index", end_v));
  }
  if (end > len) {
    end = len;
  } else if (end < 0) {
    end = std::max<int64_t>(end + len, 0);
  }
  if (start < 0) start = std::max<int64_t>(start + len, 0);
  return start <= len;
}

Result<std::string> str_arg(std::string_view method, const Value& v) {
  if (!v.is_string()) return InvalidArgument("{}() argument must be str, not {}", method, type_name(v));
  return v.str();
}

// The set of code points of a strip() argument.
std::vector<std::string> char_set(const std::string& chars) {
  std::vector<std::string> out;
  for (size_t pos = 0; pos < chars.size();) {
    const size_t len = unicode::decode(chars, pos).len;
    out.push_back(chars.substr(pos, len));
    pos += len;
  }
  return out;
}

std::string strip(const std::string& s, const Value& chars, bool left, bool right) {
  if (chars.is_none()) return std::string(unicode::strip(s, left, right));
  const std::vector<std::string> set = char_set(chars.str());
  auto in_set = [&](size_t pos, size_t len) {
    for (const std::string& c : set) {
      if (c.size() == len && s.compare(pos, len, c) == 0) return true;
    }
    return false;
  };
  const std::vector<size_t> b = unicode::boundaries(s);
  size_t first = 0;
  size_t last = b.size() - 1;  // code point range [first, last)
  if (left) {
    while (first < last && in_set(b[first], b[first + 1] - b[first]))
      ++first;
  }
  if (right) {
    while (last > first && in_set(b[last - 1], b[last] - b[last - 1]))
      --last;
  }
  return s.substr(b[first], b[last] - b[first]);
}

Value split_whitespace(const std::string& s, int64_t maxsplit, bool from_right) {
  // Words separated by runs of whitespace; the unsplit rest keeps its inner whitespace.
  std::vector<std::pair<size_t, size_t>> words;  // byte ranges
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t n = unicode::space_at(s, pos);
    if (n > 0) {
      pos += n;
      continue;
    }
    size_t end = pos;
    while (end < s.size() && unicode::space_at(s, end) == 0)
      end += unicode::decode(s, end).len;
    words.emplace_back(pos, end);
    pos = end;
  }
  std::vector<Value> out;
  const auto count = static_cast<int64_t>(words.size());
  if (maxsplit < 0 || maxsplit + 1 >= count) {
    for (const auto& [b, e] : words)
      out.push_back(Value::string(s.substr(b, e - b)));
  } else if (!from_right) {
    for (int64_t i = 0; i < maxsplit; ++i)
      out.push_back(Value::string(s.substr(words[i].first, words[i].second - words[i].first)));
    const size_t rest = words[static_cast<size_t>(maxsplit)].first;
    out.push_back(Value::string(s.substr(rest)));
  } else {
    const size_t keep = words.size() - static_cast<size_t>(maxsplit);
    out.push_back(Value::string(s.substr(0, words[keep - 1].second)));
    for (size_t i = keep; i < words.size(); ++i)
      out.push_back(Value::string(s.substr(words[i].first, words[i].second - words[i].first)));
  }
  return Value::list(std::move(out));
}

Value split_sep(const std::string& s, const std::string& sep, int64_t maxsplit, bool from_right) {
  std::vector<std::string> parts;
  if (!from_right) {
    size_t start = 0;
    while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
      const size_t at = s.find(sep, start);
      if (at == std::string::npos) break;
      parts.push_back(s.substr(start, at - start));
      start = at + sep.size();
    }
    parts.push_back(s.substr(start));
  } else {
    size_t end = s.size();
    while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
      if (end < sep.size()) break;
      const size_t at = s.rfind(sep, end - sep.size());
      if (at == std::string::npos) break;
      parts.push_back(s.substr(at + sep.size(), end - at - sep.size()));
      end = at;
    }
    parts.push_back(s.substr(0, end));
    std::reverse(parts.begin(), parts.end());
  }
  std::vector<Value> out;
  out.reserve(parts.size());
  for (std::string& p : parts)
    out.push_back(Value::string(std::move(p)));
  return Value::list(std::move(out));
}

std::string py_title(const std::string& s) {
  std::string out;
  bool prev_cased = false;
  for (size_t pos = 0; pos < s.size();) {
    const unicode::Decoded d = unicode::decode(s, pos);
    if (prev_cased) {
      unicode::append_lower(out, d);
    } else {
      unicode::append_upper(out, d);
    }
    prev_cased = d.valid && (unicode::is_upper(d.cp) || unicode::is_lower(d.cp));
    pos += d.len;
  }
  return out;
}

// str.isdigit() etc: true if non-empty and every code point passes.
template <typename Pred>
bool all_chars(const std::string& s, Pred pred) {
  if (s.empty()) return false;
  for (size_t pos = 0; pos < s.size();) {
    const unicode::Decoded d = unicode::decode(s, pos);
    if (!d.valid || !pred(d.cp)) return false;
    pos += d.len;
  }
  return true;
}

Result<Value> pad(Evaluator& ev, const Value& self, CallArgs& args, std::string_view method) {
  ASSIGN_OR_RETURN(auto a, bind_args(method, args, {{"width", {}, true}, {"fillchar", Value::string(" ")}}));
  ASSIGN_OR_RETURN(int64_t width, int_arg(method, a[0]));
  if (!a[1].is_string() || unicode::length(a[1].str()) != 1) {
    return InvalidArgument("The fill character must be exactly one character long");
  }
  const std::string& s = self.str();
  const auto len = static_cast<int64_t>(unicode::length(s));
  if (width <= len) return self;
  RETURN_IF_ERROR(ev.check_size(static_cast<size_t>(width) * a[1].str().size()));
  const int64_t marg = width - len;
  int64_t left = 0;
  if (method == "rjust") left = marg;
  if (method == "center") left = marg / 2 + (marg & width & 1);
  std::string out;
  for (int64_t i = 0; i < left; ++i)
    out += a[1].str();
  out += s;
  for (int64_t i = left; i < marg; ++i)
    out += a[1].str();
  return Value::string(std::move(out), self.is_markup());
}

Result<Value> find_like(const Value& self, CallArgs& args, std::string_view method) {
  ASSIGN_OR_RETURN(auto a,
                   bind_args(method, args, {{"sub", {}, true}, {"start", Value::none()}, {"end", Value::none()}}));
  ASSIGN_OR_RETURN(std::string sub, str_arg(method, a[0]));
  const Text t(self.str());
  int64_t start = 0;
  int64_t end = 0;
  ASSIGN_OR_RETURN(bool ok, window(t, a[1], a[2], start, end));
  const bool reverse = method == "rfind" || method == "rindex";
  int64_t found = -1;
  if (ok && end - start >= static_cast<int64_t>(sub.empty() ? 0 : 1)) {
    const size_t b = t.byte(start);
    const size_t e = t.byte(std::max(start, end));
    const std::string_view hay = std::string_view(t.str()).substr(b, e - b);
    const size_t at = reverse ? hay.rfind(sub) : hay.find(sub);
    if (at != std::string_view::npos) found = t.index(b + at);
  }
  if (method == "count") {
    if (!ok || end < start) return Value::integer(0);
    if (sub.empty()) return Value::integer(end - start + 1);
    const size_t b = t.byte(start);
    const std::string_view hay = std::string_view(t.str()).substr(b, t.byte(end) - b);
    int64_t n = 0;
    for (size_t at = hay.find(sub); at != std::string_view::npos; at = hay.find(sub, at + sub.size()))
      ++n;
    return Value::integer(n);
  }
  if (found < 0 && (method == "index" || method == "rindex")) return InvalidArgument("substring not found");
  return Value::integer(found);
}

Result<Value> starts_ends(const Value& self, CallArgs& args, bool starts) {
  const char* method = starts ? "startswith" : "endswith";
  ASSIGN_OR_RETURN(auto a,
                   bind_args(method, args, {{"prefix", {}, true}, {"start", Value::none()}, {"end", Value::none()}}));
  const Text t(self.str());
  int64_t start = 0;
  int64_t end = 0;
  ASSIGN_OR_RETURN(bool ok, window(t, a[1], a[2], start, end));
  std::vector<Value> candidates;
  if (a[0].is_tuple()) {
    candidates = a[0].items();
  } else {
    candidates.push_back(a[0]);
  }
  for (const Value& c : candidates) {
    if (!c.is_string()) {
      return InvalidArgument("{} first arg must be str or a tuple of str, not {}", method, type_name(c));
    }
  }
  if (!ok) return Value::boolean(false);
  const size_t b = t.byte(start);
  const size_t e = t.byte(std::max(start, end));
  const std::string_view hay = std::string_view(t.str()).substr(b, e - b);
  for (const Value& c : candidates) {
    const std::string& p = c.str();
    if (end < start) continue;
    if (p.size() <= hay.size() && (starts ? hay.substr(0, p.size()) == p : hay.substr(hay.size() - p.size()) == p)) {
      return Value::boolean(true);
    }
  }
  return Value::boolean(false);
}

Result<Value> str_replace(Evaluator& ev, const Value& self, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a,
                   bind_args("replace", args, {{"old", {}, true}, {"new", {}, true}, {"count", Value::integer(-1)}}));
  ASSIGN_OR_RETURN(std::string from, str_arg("replace", a[0]));
  ASSIGN_OR_RETURN(std::string to, str_arg("replace", a[1]));
  ASSIGN_OR_RETURN(int64_t count, int_arg("replace", a[2]));
  const std::string& s = self.str();
  std::string out;
  int64_t done = 0;
  if (from.empty()) {
    // Python inserts `to` before every code point and at the end.
    size_t pos = 0;
    while (true) {
      if (count < 0 || done < count) {
        out += to;
        ++done;
        RETURN_IF_ERROR(ev.check_size(out.size()));
      }
      if (pos >= s.size()) break;
      const size_t len = unicode::decode(s, pos).len;
      out.append(s, pos, len);
      pos += len;
    }
  } else {
    size_t start = 0;
    while (count < 0 || done < count) {
      const size_t at = s.find(from, start);
      if (at == std::string::npos) break;
      out.append(s, start, at - start);
      out += to;
      start = at + from.size();
      ++done;
      RETURN_IF_ERROR(ev.check_size(out.size()));
    }
    out.append(s, start, std::string::npos);
  }
  RETURN_IF_ERROR(ev.check_size(out.size()));
  RETURN_IF_ERROR(ev.charge(out.size() / 16));
  return Value::string(std::move(out), self.is_markup());
}

Result<Value> partition(const Value& self, CallArgs& args, bool from_right) {
  ASSIGN_OR_RETURN(auto a, bind_args(from_right ? "rpartition" : "partition", args, {{"sep", {}, true}}));
  ASSIGN_OR_RETURN(std::string sep, str_arg("partition", a[0]));
  if (sep.empty()) return InvalidArgument("empty separator");
  const std::string& s = self.str();
  const size_t at = from_right ? s.rfind(sep) : s.find(sep);
  if (at == std::string::npos) {
    if (from_right) return Value::list({Value::string(""), Value::string(""), Value::string(s)}, true);
    return Value::list({Value::string(s), Value::string(""), Value::string("")}, true);
  }
  return Value::list({Value::string(s.substr(0, at)), Value::string(sep), Value::string(s.substr(at + sep.size()))},
                     true);
}

Result<Value> str_method(Evaluator& ev, const Value& self, std::string_view name, CallArgs& args) {
  const std::string& s = self.str();
  auto no_args = [&]() -> Status {
    auto bound = bind_args(name, args, {});
    return bound.ok() ? OkStatus() : bound.status();
  };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    ASSIGN_OR_RETURN(auto a, bind_args(name, args, {{"chars", Value::none()}}));
    if (!a[0].is_none() && !a[0].is_string()) return InvalidArgument("{} arg must be None or str", name);
    return Value::string(strip(s, a[0], name != "rstrip", name != "lstrip"), self.is_markup());
  }
  if (name == "split" || name == "rsplit") {
    ASSIGN_OR_RETURN(auto a, bind_args(name, args, {{"sep", Value::none()}, {"maxsplit", Value::integer(-1)}}));
    ASSIGN_OR_RETURN(int64_t maxsplit, int_arg(name, a[1]));
    RETURN_IF_ERROR(ev.charge(s.size() / 16));
    if (a[0].is_none()) return split_whitespace(s, maxsplit, name == "rsplit");
    ASSIGN_OR_RETURN(std::string sep, str_arg(name, a[0]));
    if (sep.empty()) return InvalidArgument("empty separator");
    return split_sep(s, sep, maxsplit, name == "rsplit");
  }
  if (name == "splitlines") {
    ASSIGN_OR_RETURN(auto a, bind_args(name, args, {{"keepends", Value::boolean(false)}}));
    std::vector<Value> out;
    for (std::string& line : split_lines(s, truthy(a[0])))
      out.push_back(Value::string(std::move(line)));
    return Value::list(std::move(out));
  }
  if (name == "startswith" || name == "endswith") return starts_ends(self, args, name == "startswith");
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    return find_like(self, args, name);
  }
  if (name == "replace") return str_replace(ev, self, args);
  if (name == "upper" || name == "lower" || name == "casefold") {
    RETURN_IF_ERROR(no_args());
    return Value::string(name == "upper" ? unicode::to_upper(s) : unicode::to_lower(s), self.is_markup());
  }
  if (name == "title") {
    RETURN_IF_ERROR(no_args());
    return Value::string(py_title(s), self.is_markup());
  }
  if (name == "capitalize" || name == "swapcase") {
    RETURN_IF_ERROR(no_args());
    std::string out;
    bool first = true;
    for (size_t pos = 0; pos < s.size();) {
      const unicode::Decoded d = unicode::decode(s, pos);
      const bool upper = name == "capitalize" ? first : (d.valid && unicode::is_lower(d.cp));
      if (upper) {
        unicode::append_upper(out, d);
      } else {
        unicode::append_lower(out, d);
      }
      first = false;
      pos += d.len;
    }
    return Value::string(std::move(out), self.is_markup());
  }
  if (name == "center" || name == "ljust" || name == "rjust") return pad(ev, self, args, name);
  if (name == "zfill") {
    ASSIGN_OR_RETURN(auto a, bind_args(name, args, {{"width", {}, true}}));
    ASSIGN_OR_RETURN(int64_t width, int_arg(name, a[0]));
    const auto len = static_cast<int64_t>(unicode::length(s));
    if (width <= len) return self;
    RETURN_IF_ERROR(ev.check_size(static_cast<size_t>(width)));
    const size_t sign = (!s.empty() && (s[0] == '+' || s[0] == '-')) ? 1 : 0;
    return Value::string(s.substr(0, sign) + std::string(static_cast<size_t>(width - len), '0') + s.substr(sign));
  }
  if (name == "join") {
    ASSIGN_OR_RETURN(auto a, bind_args(name, args, {{"iterable", {}, true}}));
    ASSIGN_OR_RETURN(std::vector<Value> items, iterate(a[0]));
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].is_string()) {
        return InvalidArgument("sequence item {}: expected str instance, {} found", i, type_name(items[i]));
      }
      if (i > 0) out += s;
      out += items[i].str();
      RETURN_IF_ERROR(ev.check_size(out.size()));
    }
    RETURN_IF_ERROR(ev.charge(items.size() + out.size() / 16));
    return Value::string(std::move(out));
  }
  if (name == "partition" || name == "rpartition") return partition(self, args, name == "rpartition");
  if (name == "removeprefix" || name == "removesuffix") {
    ASSIGN_OR_RETURN(auto a, bind_args(name, args, {{"affix", {}, true}}));
    ASSIGN_OR_RETURN(std::string affix, str_arg(name, a[0]));
    if (name == "removeprefix" && s.compare(0, affix.size(), affix) == 0) return Value::string(s.substr(affix.size()));
    if (name == "removesuffix" && !affix.empty() && s.size() >= affix.size() &&
        s.compare(s.size() - affix.size(), affix.size(), affix) == 0) {
      return Value::string(s.substr(0, s.size() - affix.size()));
    }
    return Value::string(s);
  }
  if (name == "format") {
    ASSIGN_OR_RETURN(std::string out, str_format(s, args));
    RETURN_IF_ERROR(ev.check_size(out.size()));
    return Value::string(std::move(out));
  }
  RETURN_IF_ERROR(no_args());
  if (name == "isdigit" || name == "isdecimal" || name == "isnumeric")
    return Value::boolean(all_chars(s, unicode::is_digit));
  if (name == "isalpha") return Value::boolean(all_chars(s, unicode::is_alpha));
  if (name == "isalnum") {
    return Value::boolean(all_chars(s, [](char32_t c) { return unicode::is_alpha(c) || unicode::is_digit(c); }));
  }
  if (name == "isspace") return Value::boolean(all_chars(s, unicode::is_space));
  if (name == "islower" || name == "isupper") {
    bool cased = false;
    for (size_t pos = 0; pos < s.size();) {
      const unicode::Decoded d = unicode::decode(s, pos);
      pos += d.len;
      if (!d.valid) continue;
      if ((name == "islower" && unicode::is_upper(d.cp)) || (name == "isupper" && unicode::is_lower(d.cp))) {
        return Value::boolean(false);
      }
      cased = cased || unicode::is_upper(d.cp) || unicode::is_lower(d.cp);
    }
    return Value::boolean(cased);
  }
  if (name == "istitle") return Value::boolean(!s.empty() && py_title(s) == s && s != unicode::to_lower(s));
  return InvalidArgument("str.{}() is not supported", name);
}

Result<Value> dict_method(const Value& self, std::string_view name, CallArgs& args) {
  const Dict& d = self.dict();
  if (name == "get") {
    ASSIGN_OR_RETURN(auto a, bind_args("get", args, {{"key", {}, true}, {"default", Value::none()}}));
    if (!is_hashable(a[0])) return InvalidArgument("unhashable type: '{}'", type_name(a[0]));
    if (const Value* v = d.find(a[0])) return *v;
    return a[1];
  }
  ASSIGN_OR_RETURN(auto a, bind_args(name, args, {}));
  if (name == "copy") return self;
  const ListKind kind =
      name == "keys" ? ListKind::kDictKeys : (name == "values" ? ListKind::kDictValues : ListKind::kDictItems);
  std::vector<Value> out;
  out.reserve(d.size());
  for (const auto& [key, value] : d.items()) {
    if (name == "keys") {
      out.push_back(key);
    } else if (name == "values") {
      out.push_back(value);
    } else {
      out.push_back(Value::list({key, value}, true));
    }
  }
  return Value::list(std::move(out), kind);
}

Result<Value> list_method(const Value& self, std::string_view name, CallArgs& args) {
  const auto& items = self.items();
  if (name == "count") {
    ASSIGN_OR_RETURN(auto a, bind_args("count", args, {{"value", {}, true}}));
    return Value::integer(std::count_if(items.begin(), items.end(), [&](const Value& v) { return equals(v, a[0]); }));
  }
  if (name == "index") {
    ASSIGN_OR_RETURN(
        auto a, bind_args("index", args, {{"value", {}, true}, {"start", Value::integer(0)}, {"stop", Value::none()}}));
    const auto n = static_cast<int64_t>(items.size());
    ASSIGN_OR_RETURN(int64_t start, int_arg("index", a[1]));
    int64_t stop = n;
    if (!a[2].is_none()) {
      ASSIGN_OR_RETURN(stop, int_arg("index", a[2]));
    }
    if (start < 0) start = std::max<int64_t>(start + n, 0);
    if (stop < 0) stop = std::max<int64_t>(stop + n, 0);
    for (int64_t i = start; i < std::min(stop, n); ++i) {
      if (equals(items[static_cast<size_t>(i)], a[0])) return Value::integer(i);
    }
    return InvalidArgument("{} is not in list", repr(a[0]));
  }
  if (name == "copy") {
    ASSIGN_OR_RETURN(auto a, bind_args("copy", args, {}));
    return Value::list(items);
  }
  return InvalidArgument("list.{}() is not supported (lists cannot be modified here)", name);
}

}  // namespace

MethodSafety method_safety(const Value& receiver, std::string_view name) {
  switch (receiver.kind()) {
    case ValueKind::kString:
      return in(kStrMethods, name) ? MethodSafety::kSafe : MethodSafety::kNone;
    case ValueKind::kDict:
      if (in(kDictSafe, name)) return MethodSafety::kSafe;
      return in(kDictUnsafe, name) ? MethodSafety::kUnsafe : MethodSafety::kNone;
    case ValueKind::kList:
      if (!receiver.is_sequence()) return MethodSafety::kNone;
      if (receiver.is_tuple()) return (name == "count" || name == "index") ? MethodSafety::kSafe : MethodSafety::kNone;
      if (in(kListSafe, name)) return MethodSafety::kSafe;
      return in(kListUnsafe, name) ? MethodSafety::kUnsafe : MethodSafety::kNone;
    default:
      return MethodSafety::kNone;
  }
}

Value bound_method(const Value& receiver, std::string name) {
  return Value::callable(std::make_shared<BoundMethod>(receiver, std::move(name)));
}

Result<Value> call_method(Evaluator& ev, const Value& receiver, std::string_view name, CallArgs& args) {
  RETURN_IF_ERROR(ev.charge(1));
  switch (receiver.kind()) {
    case ValueKind::kString:
      RETURN_IF_ERROR(ev.charge(receiver.str().size() / 16));
      return str_method(ev, receiver, name, args);
    case ValueKind::kDict:
      RETURN_IF_ERROR(ev.charge(receiver.dict().size()));
      return dict_method(receiver, name, args);
    case ValueKind::kList:
      RETURN_IF_ERROR(ev.charge(receiver.items().size()));
      return list_method(receiver, name, args);
    default:
      return InvalidArgument("'{}' object has no attribute '{}'", type_name(receiver), name);
  }
}

}  // namespace bw::jinja
