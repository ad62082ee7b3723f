// Overflow-checked size arithmetic for parsers of untrusted files. Every size read from
// a GGUF or safetensors header goes through these before it is used.
#pragma once

#include <cstdint>
#include <optional>

namespace bw {

inline std::optional<uint64_t> checked_add(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

inline std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

}  // namespace bw
