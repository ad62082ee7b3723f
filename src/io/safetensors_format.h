// What the safetensors reader (io/safetensors.h) and writer (io/safetensors_writer.h)
// share: the file names of a model folder, the dtype name table, and the JSON string and
// UTF-8 helpers. The names in `safetensors_internal` are for those two only.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "tensor/dtype.h"

namespace bw {

// The file names of a Hugging Face model folder.
inline constexpr std::string_view kSafetensorsSingleName = "model.safetensors";
inline constexpr std::string_view kSafetensorsIndexName = "model.safetensors.index.json";

// The safetensors dtype string ("F32", "BF16", ...) of a DType; empty for types the format
// cannot hold (the GGUF block-quantised types).
std::string_view safetensors_dtype_name(DType t);

namespace safetensors_internal {

// The dtype strings we read and write, for error messages.
inline constexpr std::string_view kSupportedDTypes = "F32, F16, BF16, I32, I64, I8, U8";

// The DType of a safetensors dtype string, or nullopt for one we do not support.
std::optional<DType> dtype_from_safetensors(std::string_view name);

// A JSON string literal (quotes and escapes) of UTF-8 text.
std::string json_quote(std::string_view s);

// Whether `s` is well-formed UTF-8 (no overlong forms, surrogates or code points past
// U+10FFFF).
bool is_valid_utf8(std::string_view s);

}  // namespace safetensors_internal

}  // namespace bw
