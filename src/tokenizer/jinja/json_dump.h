// Python's json.dumps() over interpreter values, as Hugging Face's `tojson` filter calls it:
// json.dumps(x, ensure_ascii=..., indent=..., separators=..., sort_keys=...). Keys keep
// insertion order unless sort_keys; floats print as Python's repr; non-ASCII stays UTF-8
// unless ensure_ascii.
//
// Thread-safety: pure functions.
#pragma once

#include <optional>
#include <string>

#include "common/status.h"
#include "tokenizer/jinja/value.h"

namespace bw::jinja {

struct JsonDumpOptions {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // nullopt: one line; "" or "  ": one item per line
  std::string item_separator = ", ";  // Python's defaults: ", " / ": " without indent,
  std::string key_separator = ": ";   // "," / ": " with indent
  bool sort_keys = false;
};

// Fails like Python for values JSON cannot hold (Undefined, callables, namespaces) and for
// keys that are not str/int/float/bool/None.
Result<std::string> dump_json(const Value& value, const JsonDumpOptions& options);

}  // namespace bw::jinja
