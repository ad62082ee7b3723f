#include "cli/cli_util.h"

#include <charconv>
#include <cstdio>

#include "tokenizer/open_tokenizer.h"

namespace bw::cli {

Result<std::vector<int32_t>> parse_id_list(const std::string& text) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    std::string item = text.substr(pos, comma - pos);
    const size_t first = item.find_first_not_of(" \t");
    const size_t last = item.find_last_not_of(" \t");
    item = first == std::string::npos ? "" : item.substr(first, last - first + 1);
    if (item.empty()) return InvalidArgument("token id list '{}': empty item at position {}", text, ids.size());
    int32_t value = 0;
    auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
    if (ec != std::errc() || ptr != item.data() + item.size()) {
      return InvalidArgument("token id list: '{}' is not a 32-bit integer", item);
    }
    ids.push_back(value);
    pos = comma + 1;
  }
  return ids;
}

int report_error(const Status& status) {
  std::fprintf(stderr, "error: %s\n", status.message().c_str());
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
      return 2;
    default:
      return 1;
  }
}

Result<std::optional<DType>> parse_weight_dtype(const std::string& s) {
  if (s == "auto") return std::optional<DType>();
  auto t = dtype_from_name(s);
  if (!t || !is_float(*t)) return InvalidArgument("--dtype must be auto, f32, f16 or bf16, got '{}'", s);
  return std::optional<DType>(*t);
}

// The model's tokenizer: from the GGUF itself, else from the model folder. Optional when
// the prompt is given as ids (the output then has no text).
Result<std::unique_ptr<Tokenizer>> model_tokenizer(const Checkpoint& checkpoint, const std::string& path) {
  if (checkpoint.gguf() != nullptr) {
    auto t = Tokenizer::from_gguf(*checkpoint.gguf());
    if (!t.ok()) return t.status().with_context(path);
    return std::move(*t);
  }
  return open_tokenizer(path);
}

}  // namespace bw::cli
