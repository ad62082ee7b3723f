#include "io/safetensors_format.h"

#include <array>
#include <cstdint>

#include <nlohmann/json.hpp>

namespace bw {

namespace {

struct SafetensorsDType {
  std::string_view name;
  DType type;
};

constexpr std::array<SafetensorsDType, 7> kDTypes = {{
    {"F32", DType::kF32},
    {"F16", DType::kF16},
    {"BF16", DType::kBF16},
    {"I32", DType::kI32},
    {"I64", DType::kI64},
    {"I8", DType::kI8},
    {"U8", DType::kU8},
}};

}  // namespace

std::string_view safetensors_dtype_name(DType t) {
  for (const auto& d : kDTypes) {
    if (d.type == t) return d.name;
  }
  return {};
}

namespace safetensors_internal {

std::optional<DType> dtype_from_safetensors(std::string_view name) {
  for (const auto& d : kDTypes) {
    if (d.name == name) return d.type;
  }
  return std::nullopt;
}

std::string json_quote(std::string_view s) {
  using json = nlohmann::json;
  return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
}

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1fu;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0fu;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07u;
    } else {
      return false;
    }
    if (s.size() - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3fu);
    }
    static constexpr uint32_t kMinForLen[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLen[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

}  // namespace safetensors_internal

}  // namespace bw
