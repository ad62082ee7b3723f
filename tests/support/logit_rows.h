// Random logits rows for sampling tests: [rows, vocab] N(0, scale) floats, and one row of them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace bw::test {

inline std::vector<float> random_logits(size_t rows, int64_t vocab, uint32_t seed, float scale = 3.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(rows * static_cast<size_t>(vocab));
  for (float& x : v)
    x = normal(rng);
  return v;
}

inline std::span<const float> row_of(const std::vector<float>& logits, int64_t vocab, size_t r) {
  return std::span<const float>(logits).subspan(r * static_cast<size_t>(vocab), static_cast<size_t>(vocab));
}

}  // namespace bw::test
