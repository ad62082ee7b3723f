// jinja2's builtin filters over sequences and mappings (jinja2/filters.py): join, map,
// select/reject, sort, unique, dictsort, batch ... The generator filters return generator
// values (ListKind::kGenerator), as jinja2's do.
#include <algorithm>
#include <cstdlib>

#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/filter_util.h"
#include "tokenizer/jinja/operators.h"

namespace bw::jinja {

Result<Value> attr_path(Evaluator& ev, Value item, const Value& attribute, const Value& default_value) {
  std::vector<Value> parts;
  if (attribute.is_string()) {
    const std::string& s = attribute.str();
    size_t start = 0;
    while (true) {
      const size_t dot = s.find('.', start);
      const std::string part = s.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      const bool digits =
          !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
      if (digits && part.size() < 18) {
        parts.push_back(integer(std::strtoll(part.c_str(), nullptr, 10)));
      } else {
        parts.push_back(str(part));
      }
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
  } else if (!attribute.is_none()) {
    parts.push_back(attribute);
  }
  for (const Value& part : parts) {
    ASSIGN_OR_RETURN(item, ev.lookup_item(item, part));
    if (!default_value.is_none() && item.is_undefined()) item = default_value;
  }
  return item;
}

Status sort_by_keys(std::vector<Value>& items, const std::vector<Value>& keys, bool reverse) {
  std::vector<size_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  Status error;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (!error.ok()) return false;
    auto r = reverse ? less_than(keys[b], keys[a]) : less_than(keys[a], keys[b]);
    if (!r.ok()) {
      error = r.status();
      return false;
    }
    return *r;
  });
  RETURN_IF_ERROR(error);
  std::vector<Value> sorted;
  sorted.reserve(items.size());
  for (size_t i : order)
    sorted.push_back(std::move(items[i]));
  items = std::move(sorted);
  return OkStatus();
}

namespace {

Result<Value> f_batch(Evaluator& ev, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("batch", args, {{"linecount", {}, true}, {"fill_with", none()}}));
  ASSIGN_OR_RETURN(int64_t count, int_arg("batch", a[0]));
  if (count <= 0) return InvalidArgument("batch size must be positive");
  ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  RETURN_IF_ERROR(ev.charge(items.size()));
  std::vector<Value> out;
  std::vector<Value> tmp;
  for (Value& item : items) {
    if (static_cast<int64_t>(tmp.size()) == count) {
      out.push_back(Value::list(std::move(tmp)));
      tmp.clear();
    }
    tmp.push_back(std::move(item));
  }
  if (!tmp.empty()) {
    if (!a[1].is_none()) {
      while (static_cast<int64_t>(tmp.size()) < count)
        tmp.push_back(a[1]);
    }
    out.push_back(Value::list(std::move(tmp)));
  }
  return generator(std::move(out));
}

Result<Value> f_dictsort(Evaluator& ev, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a,
                   bind_args("dictsort", args,
                             {{"case_sensitive", boolean(false)}, {"by", str("key")}, {"reverse", boolean(false)}}));
  if (!v.is_dict()) return InvalidArgument("dictsort expects a mapping, got {}", type_name(v));
  int pos = 0;
  if (a[1].is_string() && a[1].str() == "value") {
    pos = 1;
  } else if (!a[1].is_string() || a[1].str() != "key") {
    return InvalidArgument("You can only sort by either \"key\" or \"value\"");
  }
  std::vector<Value> items;
  std::vector<Value> keys;
  for (const auto& [key, value] : v.dict().items()) {
    items.push_back(Value::list({key, value}, true));
    const Value& k = pos == 0 ? key : value;
    keys.push_back(truthy(a[0]) ? k : ignore_case(k));
  }
  RETURN_IF_ERROR(ev.charge(items.size()));
  RETURN_IF_ERROR(sort_by_keys(items, keys, truthy(a[2])));
  return Value::list(std::move(items));
}

Result<Value> f_first(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("first", args, {}));
  if (v.is_list() && v.deferred_error() == nullptr) {
    if (v.items().empty()) return Value::undefined("No first item, sequence was empty.");
    return v.items().front();
  }
  ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  if (items.empty()) return Value::undefined("No first item, sequence was empty.");
  return items.front();
}

Result<Value> f_last(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("last", args, {}));
  if (v.is_iterator()) return InvalidArgument("'{}' object is not reversible", type_name(v));
  ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  if (items.empty()) return Value::undefined("No last item, sequence was empty.");
  return items.back();
}

Result<Value> f_items(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("items", args, {}));
  if (v.is_undefined()) return generator({});
  if (!v.is_dict()) return InvalidArgument("Can only get item pairs from a mapping.");
  std::vector<Value> items;
  for (const auto& [key, value] : v.dict().items())
    items.push_back(Value::list({key, value}, true));
  return generator(std::move(items));
}

Result<Value> f_join(Evaluator& ev, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("join", args, {{"d", str("")}, {"attribute", none()}}));
  ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  RETURN_IF_ERROR(ev.charge(items.size()));
  const std::string sep = to_str(a[0]);
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += sep;
    if (!a[1].is_none()) {
      ASSIGN_OR_RETURN(items[i], attr_path(ev, items[i], a[1], none()));
    }
    out += to_str(items[i]);
    RETURN_IF_ERROR(ev.check_size(out.size()));
  }
  RETURN_IF_ERROR(ev.charge(out.size() / 16));
  return str(std::move(out));
}

Result<Value> f_list(Evaluator& ev, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("list", args, {}));
  ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  RETURN_IF_ERROR(ev.charge(items.size()));
  return Value::list(std::move(items));
}

Result<Value> f_map(Evaluator& ev, const Value& v, CallArgs& args) {
  if (!truthy(v)) return generator({});
  ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  RETURN_IF_ERROR(ev.charge(items.size()));
  std::vector<Value> out;
  out.reserve(items.size());
  if (args.positional.empty()) {
    Value attribute;
    Value default_value = none();
    bool has_attribute = false;
    for (auto& [key, value] : args.keyword) {
      if (key == "attribute") {
        attribute = value;
        has_attribute = true;
      } else if (key == "default") {
        default_value = value;
      } else {
        return InvalidArgument("Unexpected keyword argument '{}'", key);
      }
    }
    if (!has_attribute) return InvalidArgument("map requires a filter argument");
    for (const Value& item : items) {
      ASSIGN_OR_RETURN(Value x, attr_path(ev, item, attribute, default_value));
      out.push_back(std::move(x));
    }
    return generator(std::move(out));
  }
  if (!args.positional[0].is_string()) return InvalidArgument("map: filter name must be a string");
  const std::string name = args.positional[0].str();
  for (const Value& item : items) {
    CallArgs rest;
    rest.positional.assign(args.positional.begin() + 1, args.positional.end());
    rest.keyword = args.keyword;
    ASSIGN_OR_RETURN(Value x, ev.apply_filter(name, item, rest));
    out.push_back(std::move(x));
  }
  return generator(std::move(out));
}

Result<Value> min_max(Evaluator& ev, const Value& v, CallArgs& args, bool max) {
  ASSIGN_OR_RETURN(auto a,
                   bind_args(max ? "max" : "min", args, {{"case_sensitive", boolean(false)}, {"attribute", none()}}));
  ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  RETURN_IF_ERROR(ev.charge(items.size()));
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  size_t best = 0;
  Value best_key;
  for (size_t i = 0; i < items.size(); ++i) {
    ASSIGN_OR_RETURN(Value key, attr_path(ev, items[i], a[1], none()));
    if (!truthy(a[0])) key = ignore_case(key);
    if (i == 0) {
      best_key = key;
      continue;
    }
    ASSIGN_OR_RETURN(bool better, max ? less_than(best_key, key) : less_than(key, best_key));
    if (better) {
      best = i;
      best_key = key;
    }
  }
  return items[best];
}

Result<Value> f_max(Evaluator& ev, const Value& v, CallArgs& args) { return min_max(ev, v, args, true); }

Result<Value> f_min(Evaluator& ev, const Value& v, CallArgs& args) { return min_max(ev, v, args, false); }

// select / reject / selectattr / rejectattr.
Result<Value> select_or_reject(Evaluator& ev, const Value& v, CallArgs& args, bool select, bool lookup_attr) {
  if (!truthy(v)) return generator({});
  ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  RETURN_IF_ERROR(ev.charge(items.size()));
  size_t off = 0;
  Value attribute;
  if (lookup_attr) {
    if (args.positional.empty()) return InvalidArgument("Missing parameter for attribute name");
    attribute = args.positional[0];
    off = 1;
  }
  std::string test;
  if (args.positional.size() > off) {
    if (!args.positional[off].is_string()) return InvalidArgument("test name must be a string");
    test = args.positional[off].str();
  }
  std::vector<Value> out;
  for (Value& item : items) {
    Value x = item;
    if (lookup_attr) {
      ASSIGN_OR_RETURN(x, attr_path(ev, item, attribute, none()));
    }
    bool ok;
    if (test.empty()) {
      ok = truthy(x);
    } else {
      CallArgs rest;
      rest.positional.assign(args.positional.begin() + static_cast<std::ptrdiff_t>(off) + 1, args.positional.end());
      rest.keyword = args.keyword;
      ASSIGN_OR_RETURN(ok, ev.apply_test(test, x, rest));
    }
    if (ok == select) out.push_back(std::move(item));
  }
  return generator(std::move(out));
}

Result<Value> f_select(Evaluator& ev, const Value& v, CallArgs& args) {
  return select_or_reject(ev, v, args, true, false);
}

Result<Value> f_reject(Evaluator& ev, const Value& v, CallArgs& args) {
  return select_or_reject(ev, v, args, false, false);
}

Result<Value> f_selectattr(Evaluator& ev, const Value& v, CallArgs& args) {
  return select_or_reject(ev, v, args, true, true);
}

Result<Value> f_rejectattr(Evaluator& ev, const Value& v, CallArgs& args) {
  return select_or_reject(ev, v, args, false, true);
}

Result<Value> f_reverse(Evaluator& ev, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("reverse", args, {}));
  if (v.is_string()) return get_slice(v, none(), none(), integer(-1));
  ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  RETURN_IF_ERROR(ev.charge(items.size()));
  std::reverse(items.begin(), items.end());
  // reversed() of a sequence is an iterator; of an iterator, jinja2 builds a list.
  return Value::list(std::move(items), v.is_iterator() ? ListKind::kList : ListKind::kReverseIterator);
}

Result<Value> f_slice(Evaluator& ev, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("slice", args, {{"slices", {}, true}, {"fill_with", none()}}));
  ASSIGN_OR_RETURN(int64_t slices, int_arg("slice", a[0]));
  if (slices <= 0 || slices > 100000) return InvalidArgument("slice count out of range");
  ASSIGN_OR_RETURN(std::vector<Value> seq, iterate(v));
  RETURN_IF_ERROR(ev.charge(seq.size() + static_cast<uint64_t>(slices)));
  const auto length = static_cast<int64_t>(seq.size());
  const int64_t per = length / slices;
  const int64_t extra = length % slices;
  int64_t offset = 0;
  std::vector<Value> out;
  for (int64_t k = 0; k < slices; ++k) {
    const int64_t start = offset + k * per;
    if (k < extra) ++offset;
    const int64_t end = offset + (k + 1) * per;
    std::vector<Value> tmp(seq.begin() + start, seq.begin() + end);
    if (!a[1].is_none() && k >= extra) tmp.push_back(a[1]);
    out.push_back(Value::list(std::move(tmp)));
  }
  return generator(std::move(out));
}

Result<Value> f_sort(Evaluator& ev, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a,
                   bind_args("sort", args,
                             {{"reverse", boolean(false)}, {"case_sensitive", boolean(false)}, {"attribute", none()}}));
  ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  RETURN_IF_ERROR(ev.charge(items.size() * 8));
  std::vector<Value> keys;
  keys.reserve(items.size());
  for (const Value& item : items) {
    // "attr1,attr2" sorts by a list of attributes.
    std::vector<Value> parts;
    if (a[2].is_string()) {
      const std::string& spec = a[2].str();
      size_t start = 0;
      while (true) {
        const size_t comma = spec.find(',', start);
        ASSIGN_OR_RETURN(Value x, attr_path(ev, item, str(spec.substr(start, comma - start)), none()));
        parts.push_back(truthy(a[1]) ? x : ignore_case(x));
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    } else {
      ASSIGN_OR_RETURN(Value x, attr_path(ev, item, a[2], none()));
      parts.push_back(truthy(a[1]) ? x : ignore_case(x));
    }
    keys.push_back(Value::list(std::move(parts)));
  }
  RETURN_IF_ERROR(sort_by_keys(items, keys, truthy(a[0])));
  return Value::list(std::move(items));
}

Result<Value> f_sum(Evaluator& ev, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("sum", args, {{"attribute", none()}, {"start", integer(0)}}));
  ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  RETURN_IF_ERROR(ev.charge(items.size()));
  Value total = a[1];
  for (const Value& item : items) {
    ASSIGN_OR_RETURN(Value x, attr_path(ev, item, a[0], none()));
    if (x.is_string() || total.is_string()) return InvalidArgument("sum() can't sum strings");
    ASSIGN_OR_RETURN(total, binary_op(ev, BinaryOp::kAdd, total, x));
  }
  return total;
}

Result<Value> f_unique(Evaluator& ev, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("unique", args, {{"case_sensitive", boolean(false)}, {"attribute", none()}}));
  ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  RETURN_IF_ERROR(ev.charge(items.size() * 4));
  std::vector<Value> out;
  Dict seen;
  std::vector<Value> seen_unhashable;
  for (Value& item : items) {
    ASSIGN_OR_RETURN(Value key, attr_path(ev, item, a[1], none()));
    if (!truthy(a[0])) key = ignore_case(key);
    if (!is_hashable(key)) return InvalidArgument("unhashable type: '{}'", type_name(key));
    if (seen.find(key) != nullptr) continue;
    RETURN_IF_ERROR(ev.charge(seen.size() / 16));
    seen.set(key, none());
    out.push_back(std::move(item));
  }
  return generator(std::move(out));
}

Result<Value> f_length(Evaluator&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(auto a, bind_args("length", args, {}));
  ASSIGN_OR_RETURN(int64_t n, length(v));
  return integer(n);
}

}  // namespace

void add_sequence_filters(FilterTable& table) {
  table.emplace("batch", f_batch);
  table.emplace("count", f_length);
  table.emplace("dictsort", f_dictsort);
  table.emplace("first", f_first);
  table.emplace("items", f_items);
  table.emplace("join", f_join);
  table.emplace("last", f_last);
  table.emplace("length", f_length);
  table.emplace("list", f_list);
  table.emplace("map", f_map);
  table.emplace("max", f_max);
  table.emplace("min", f_min);
  table.emplace("reject", f_reject);
  table.emplace("rejectattr", f_rejectattr);
  table.emplace("reverse", f_reverse);
  table.emplace("select", f_select);
  table.emplace("selectattr", f_selectattr);
  table.emplace("slice", f_slice);
  table.emplace("sort", f_sort);
  table.emplace("sum", f_sum);
  table.emplace("unique", f_unique);
}

}  // namespace bw::jinja
