// Element types of tensors: float types used for compute and storage, integer types for
// ids and metadata, and the GGUF block-quantised types (stored, dequantised on load).
//
// Block types pack `block_elements()` values into `block_bytes()` bytes; plain types have
// block_elements() == 1. Thread-safe: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace bw {

enum class DType : uint8_t {
  kF32,
  kF16,
  kBF16,
  kI32,
  kI64,
  kI8,
  kU8,
  // GGUF block-quantised types.
  kQ8_0,
  kQ4_0,
  kQ4_1,
  kQ5_0,
  kQ5_1,
  kQ4_K,
  kQ5_K,
  kQ6_K,
};

std::string_view dtype_name(DType t);                         // "f32", "bf16", "q4_k", ...
std::optional<DType> dtype_from_name(std::string_view name);  // inverse of dtype_name

bool is_float(DType t);      // f32, f16, bf16
bool is_quantized(DType t);  // the GGUF block types
int64_t block_elements(DType t);
int64_t block_bytes(DType t);
// Bytes of `n` elements; n must be a multiple of block_elements(t) (else nullopt), and
// the result must not overflow.
std::optional<uint64_t> dtype_bytes(DType t, uint64_t n);

// --- Scalar conversions (exact IEEE semantics; bf16 rounds to nearest even) ---------

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Row conversions (vectorised where the CPU allows).
void convert_f16_to_f32(const uint16_t* src, float* dst, int64_t n);
void convert_bf16_to_f32(const uint16_t* src, float* dst, int64_t n);
void convert_f32_to_f16(const float* src, uint16_t* dst, int64_t n);
void convert_f32_to_bf16(const float* src, uint16_t* dst, int64_t n);

}  // namespace bw
