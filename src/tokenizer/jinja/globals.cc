// jinja2's default globals (range, dict, namespace) and the argument-binding helpers the
// builtins share.
#include <fmt/format.h>

#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/operators.h"

namespace bw::jinja {
namespace {

// The sandbox's MAX_RANGE.
constexpr int64_t kMaxRange = 100000;

Result<Value> range_fn(Evaluator& ev, CallArgs& args) {
  if (!args.keyword.empty()) return InvalidArgument("range() takes no keyword arguments");
  const size_t n = args.positional.size();
  if (n == 0 || n > 3) return InvalidArgument("range expected at most 3 arguments, got {}", n);
  int64_t start = 0;
  int64_t stop = 0;
  int64_t step = 1;
  if (n == 1) {
    ASSIGN_OR_RETURN(stop, int_arg("range", args.positional[0]));
  } else {
    ASSIGN_OR_RETURN(start, int_arg("range", args.positional[0]));
    ASSIGN_OR_RETURN(stop, int_arg("range", args.positional[1]));
    if (n == 3) {
      ASSIGN_OR_RETURN(step, int_arg("range", args.positional[2]));
    }
  }
  if (step == 0) return InvalidArgument("range() arg 3 must not be zero");
  // Length computed in 128 bits so that extreme bounds cannot overflow.
  __int128 len = 0;
  if (step > 0 && stop > start) len = (static_cast<__int128>(stop) - start + step - 1) / step;
  if (step < 0 && stop < start) len = (static_cast<__int128>(start) - stop - step - 1) / -step;
  if (len > kMaxRange) {
    return InvalidArgument("Range too big. The sandbox blocks ranges larger than MAX_RANGE ({}).", kMaxRange);
  }
  RETURN_IF_ERROR(ev.charge(static_cast<uint64_t>(len)));
  std::vector<Value> items;
  items.reserve(static_cast<size_t>(len));
  for (int64_t i = 0; i < static_cast<int64_t>(len); ++i)
    items.push_back(Value::integer(start + i * step));
  return Value::list(std::move(items));
}

// dict(mapping_or_pairs, **kwargs), as Python's dict constructor.
Result<Dict> build_dict(std::string_view function, CallArgs& args) {
  if (args.positional.size() > 1) {
    return InvalidArgument("{} expected at most 1 argument, got {}", function, args.positional.size());
  }
  Dict d;
  if (!args.positional.empty()) {
    const Value& src = args.positional[0];
    if (src.is_dict()) {
      d = src.dict();
    } else if (src.is_namespace()) {
      d = src.namespace_attrs();
    } else {
      ASSIGN_OR_RETURN(std::vector<Value> pairs, iterate(src));
      for (const Value& pair : pairs) {
        ASSIGN_OR_RETURN(std::vector<Value> kv, iterate(pair));
        if (kv.size() != 2) {
          return InvalidArgument("dictionary update sequence element has length {}; 2 is required", kv.size());
        }
        if (!is_hashable(kv[0])) return InvalidArgument("unhashable type: '{}'", type_name(kv[0]));
        d.set(kv[0], kv[1]);
      }
    }
  }
  for (auto& [key, value] : args.keyword)
    d.set(key, value);
  return d;
}

}  // namespace

Result<std::vector<Value>> bind_args(std::string_view function, CallArgs& args, std::initializer_list<Param> params) {
  if (args.positional.size() > params.size()) {
    return InvalidArgument("{}() takes at most {} argument(s) ({} given)", function, params.size(),
                           args.positional.size());
  }
  std::vector<Value> out(params.size());
  std::vector<bool> given(params.size(), false);
  for (size_t i = 0; i < args.positional.size(); ++i) {
    out[i] = std::move(args.positional[i]);
    given[i] = true;
  }
  for (auto& [key, value] : args.keyword) {
    size_t index = 0;
    for (const Param& p : params) {
      if (p.name == key) break;
      ++index;
    }
    if (index == params.size()) return InvalidArgument("{}() got an unexpected keyword argument '{}'", function, key);
    if (given[index]) return InvalidArgument("{}() got multiple values for argument '{}'", function, key);
    out[index] = std::move(value);
    given[index] = true;
  }
  size_t index = 0;
  for (const Param& p : params) {
    if (!given[index]) {
      if (p.required) return InvalidArgument("{}() missing required argument '{}'", function, p.name);
      out[index] = p.default_value;
    }
    ++index;
  }
  return out;
}

Result<int64_t> int_arg(std::string_view function, const Value& v) {
  if (v.is_integral()) return v.as_int();
  if (v.is_undefined()) return undefined_error(v);
  return InvalidArgument("{}: '{}' object cannot be interpreted as an integer", function, type_name(v));
}

void add_default_globals(Globals& globals) {
  globals.emplace_back("range", make_function("range", range_fn));
  globals.emplace_back("dict", make_function("dict", [](Evaluator&, CallArgs& args) -> Result<Value> {
                         ASSIGN_OR_RETURN(Dict d, build_dict("dict", args));
                         return Value::dict(std::move(d));
                       }));
  globals.emplace_back("namespace", make_function("namespace", [](Evaluator& ev, CallArgs& args) -> Result<Value> {
                         ASSIGN_OR_RETURN(Dict d, build_dict("namespace", args));
                         return ev.make_namespace(std::move(d));
                       }));
}

}  // namespace bw::jinja
