// Helpers for the CPU backend tests: values stored in f32/f16/bf16 together with the
// exact f32 values a backend reads back, NaN poison, and dtype epsilons.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/tensor_view.h"

namespace bw::test {

// Machine epsilon of a float storage dtype.
inline double dtype_epsilon(DType t) {
  switch (t) {
    case DType::kF16:
      return 0x1p-10;
    case DType::kBF16:
      return 0x1p-7;
    default:
      return 0x1p-23;
  }
}

inline int64_t element_bytes(DType t) { return t == DType::kF32 ? 4 : 2; }

inline uint16_t to_half_bits(float f, DType t) { return t == DType::kF16 ? f32_to_f16(f) : f32_to_bf16(f); }
inline float from_half_bits(uint16_t h, DType t) { return t == DType::kF16 ? f16_to_f32(h) : bf16_to_f32(h); }

// Values stored as `dtype`: the raw bytes handed to the backend and the f32 value of each
// element after rounding (what a correct backend computes with).
struct Stored {
  DType dtype = DType::kF32;
  std::vector<uint8_t> bytes;
  std::vector<float> values;

  Stored() = default;
  Stored(const std::vector<float>& v, DType t) : dtype(t), values(v.size()) {
    bytes.resize(v.size() * static_cast<size_t>(element_bytes(t)));
    for (size_t i = 0; i < v.size(); ++i)
      set(i, v[i]);
  }
  void set(size_t i, float f) {
    if (dtype == DType::kF32) {
      std::memcpy(bytes.data() + 4 * i, &f, 4);
      values[i] = f;
    } else {
      const uint16_t h = to_half_bits(f, dtype);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
      values[i] = from_half_bits(h, dtype);
    }
  }
  // The element as the backend would read it now (after the backend wrote to bytes).
  float read(size_t i) const {
    if (dtype == DType::kF32) {
      float f;
      std::memcpy(&f, bytes.data() + 4 * i, 4);
      return f;
    }
    uint16_t h;
    std::memcpy(&h, bytes.data() + 2 * i, 2);
    return from_half_bits(h, dtype);
  }
  TensorView view(Shape s) { return TensorView(bytes.data(), dtype, s); }
};

// A vector of quiet NaNs, for outputs that every element of must be written.
inline std::vector<float> poisoned(size_t n) { return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()); }

inline TensorView f32_view(std::vector<float>& v, Shape s) { return TensorView(v.data(), DType::kF32, s); }
inline TensorView i32_view(std::vector<int32_t>& v, Shape s) { return TensorView(v.data(), DType::kI32, s); }

inline std::string dtype_str(DType t) { return std::string(dtype_name(t)); }

}  // namespace bw::test
