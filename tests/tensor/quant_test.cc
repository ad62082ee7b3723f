#include "tensor/quant.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/thread_pool.h"
#include "support/test_support.h"

namespace bw {
namespace {

void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  p[0] = static_cast<uint8_t>(h);
  p[1] = static_cast<uint8_t>(h >> 8);
}

std::vector<float> dequant(DType type, const std::vector<uint8_t>& bytes) {
  const int64_t n = static_cast<int64_t>(bytes.size()) / block_bytes(type) * block_elements(type);
  std::vector<float> out(static_cast<size_t>(n), std::nanf(""));
  const Status s = dequantize_to_f32(type, bytes.data(), bytes.size(), out.data(), n);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return out;
}

TEST(QuantTest, Q8_0KnownValues) {
  std::vector<uint8_t> b(34);
  put_f16(b.data(), 0.5f);
  for (int j = 0; j < 32; ++j)
    b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j * 8 - 128));
  const auto y = dequant(DType::kQ8_0, b);
  for (int j = 0; j < 32; ++j)
    EXPECT_EQ(y[j], static_cast<float>(j * 8 - 128) * 0.5f) << j;
}

TEST(QuantTest, Q4_0KnownValues) {
  std::vector<uint8_t> b(18);
  put_f16(b.data(), 2.0f);
  for (int j = 0; j < 16; ++j)
    b[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  const auto y = dequant(DType::kQ4_0, b);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], static_cast<float>(j - 8) * 2.0f) << j;
    EXPECT_EQ(y[j + 16], static_cast<float>(15 - j - 8) * 2.0f) << j;
  }
}

TEST(QuantTest, Q4_1KnownValues) {
  std::vector<uint8_t> b(20);
  put_f16(b.data(), 0.25f);
  put_f16(b.data() + 2, -1.5f);
  for (int j = 0; j < 16; ++j)
    b[4 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  const auto y = dequant(DType::kQ4_1, b);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], static_cast<float>(j) * 0.25f - 1.5f) << j;
    EXPECT_EQ(y[j + 16], static_cast<float>(15 - j) * 0.25f - 1.5f) << j;
  }
}

// 5-bit codes q[0..31]: low nibbles in qs (elements j and j + 16 share byte j), the fifth
// bit of element i is bit i of the little-endian u32 qh.
void pack_q5(const std::array<int, 32>& q, uint8_t* qh, uint8_t* qs) {
  uint32_t h = 0;
  for (int i = 0; i < 32; ++i)
    h |= static_cast<uint32_t>((q[i] >> 4) & 1) << i;
  for (int i = 0; i < 4; ++i)
    qh[i] = static_cast<uint8_t>(h >> (8 * i));
  for (int j = 0; j < 16; ++j)
    qs[j] = static_cast<uint8_t>((q[j] & 15) | ((q[j + 16] & 15) << 4));
}

TEST(QuantTest, Q5_0AndQ5_1KnownValues) {
  std::array<int, 32> q;
  for (int i = 0; i < 32; ++i)
    q[i] = (i * 7 + 3) % 32;
  std::vector<uint8_t> b0(22);
  put_f16(b0.data(), 0.125f);
  pack_q5(q, b0.data() + 2, b0.data() + 6);
  const auto y0 = dequant(DType::kQ5_0, b0);
  for (int i = 0; i < 32; ++i)
    EXPECT_EQ(y0[i], static_cast<float>(q[i] - 16) * 0.125f) << i;

  std::vector<uint8_t> b1(24);
  put_f16(b1.data(), 0.5f);
  put_f16(b1.data() + 2, 3.0f);
  pack_q5(q, b1.data() + 4, b1.data() + 8);
  const auto y1 = dequant(DType::kQ5_1, b1);
  for (int i = 0; i < 32; ++i)
    EXPECT_EQ(y1[i], static_cast<float>(q[i]) * 0.5f + 3.0f) << i;
}

// Packs eight 6-bit scales and mins the k-quant way (12 bytes).
void pack_k_scales(const std::array<int, 8>& sc, const std::array<int, 8>& m, uint8_t* s) {
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<uint8_t>((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    s[j + 4] = static_cast<uint8_t>((m[j] & 63) | ((m[j + 4] >> 4) << 6));
    s[j + 8] = static_cast<uint8_t>((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
  }
}

struct KBlock {
  std::array<int, 8> sc, m;
  std::array<int, 256> q;
};

KBlock random_k_block(uint32_t seed, int qmax) {
  std::mt19937 rng(seed);
  KBlock k;
  for (int i = 0; i < 8; ++i) {
    k.sc[i] = static_cast<int>(rng() % 64);
    k.m[i] = static_cast<int>(rng() % 64);
  }
  for (auto& v : k.q)
    v = static_cast<int>(rng() % (qmax + 1));
  return k;
}

TEST(QuantTest, Q4_KKnownValues) {
  for (uint32_t seed = 1; seed <= 4; ++seed) {
    const KBlock k = random_k_block(seed, 15);
    std::vector<uint8_t> b(144);
    put_f16(b.data(), 0.03125f);
    put_f16(b.data() + 2, 0.0078125f);
    pack_k_scales(k.sc, k.m, b.data() + 4);
    // Value v: 64-value chunk c = v / 64; the first 32 in the low nibbles of qs[32c..],
    // the next 32 in the high nibbles.
    for (int v = 0; v < 256; ++v) {
      const int c = v / 64, r = v % 64;
      uint8_t& byte = b[16 + 32 * c + r % 32];
      byte = static_cast<uint8_t>(byte | (r < 32 ? k.q[v] : k.q[v] << 4));
    }
    const auto y = dequant(DType::kQ4_K, b);
    for (int v = 0; v < 256; ++v) {
      const int s = v / 32;
      const float expected =
          0.03125f * static_cast<float>(k.sc[s]) * static_cast<float>(k.q[v]) - 0.0078125f * static_cast<float>(k.m[s]);
      ASSERT_EQ(y[v], expected) << "seed " << seed << " v " << v;
    }
  }
}

TEST(QuantTest, Q5_KKnownValues) {
  for (uint32_t seed = 1; seed <= 4; ++seed) {
    const KBlock k = random_k_block(seed + 10, 31);
    std::vector<uint8_t> b(176);
    put_f16(b.data(), 0.0625f);
    put_f16(b.data() + 2, 0.25f);
    pack_k_scales(k.sc, k.m, b.data() + 4);
    for (int v = 0; v < 256; ++v) {
      const int c = v / 64, r = v % 64, l = v % 32, s = v / 32;
      uint8_t& byte = b[48 + 32 * c + r % 32];
      const int lo = k.q[v] & 15;
      byte = static_cast<uint8_t>(byte | (r < 32 ? lo : lo << 4));
      b[16 + l] = static_cast<uint8_t>(b[16 + l] | (((k.q[v] >> 4) & 1) << s));
    }
    const auto y = dequant(DType::kQ5_K, b);
    for (int v = 0; v < 256; ++v) {
      const int s = v / 32;
      const float expected =
          0.0625f * static_cast<float>(k.sc[s]) * static_cast<float>(k.q[v]) - 0.25f * static_cast<float>(k.m[s]);
      ASSERT_EQ(y[v], expected) << "seed " << seed << " v " << v;
    }
  }
}

TEST(QuantTest, Q6_KKnownValues) {
  std::mt19937 rng(7);
  std::array<int, 256> q;
  std::array<int, 16> sc;
  for (auto& v : q)
    v = static_cast<int>(rng() % 64);
  for (auto& v : sc)
    v = static_cast<int>(rng() % 256) - 128;
  std::vector<uint8_t> b(210);
  for (int i = 0; i < 16; ++i)
    b[192 + i] = static_cast<uint8_t>(static_cast<int8_t>(sc[i]));
  put_f16(b.data() + 208, 0.001953125f);
  // Value v: half h = v / 128, k = (v % 128) / 32, l = v % 32. Low 4 bits in nibble k / 2 of
  // ql[64h + 32 (k % 2) + l], high 2 bits in bits 2k..2k+1 of qh[32h + l]; scale
  // sc[v / 16].
  for (int v = 0; v < 256; ++v) {
    const int h = v / 128, k = (v % 128) / 32, l = v % 32;
    uint8_t& lo = b[64 * h + 32 * (k % 2) + l];
    lo = static_cast<uint8_t>(lo | ((q[v] & 15) << (4 * (k / 2))));
    uint8_t& hi = b[128 + 32 * h + l];
    hi = static_cast<uint8_t>(hi | ((q[v] >> 4) << (2 * k)));
  }
  const auto y = dequant(DType::kQ6_K, b);
  for (int v = 0; v < 256; ++v) {
    const float expected = 0.001953125f * static_cast<float>(sc[v / 16]) * static_cast<float>(q[v] - 32);
    ASSERT_EQ(y[v], expected) << v;
  }
}

TEST(QuantTest, RejectsBadSizes) {
  std::vector<uint8_t> b(36);
  std::vector<float> y(64);
  EXPECT_EQ(dequantize_to_f32(DType::kQ8_0, b.data(), 34, y.data(), 33).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dequantize_to_f32(DType::kQ8_0, b.data(), 35, y.data(), 32).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dequantize_to_f32(DType::kQ8_0, b.data(), 33, y.data(), 32).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dequantize_to_f32(DType::kQ8_0, b.data(), 34, y.data(), -32).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dequantize_to_f32(DType::kF16, b.data(), 4, y.data(), 2).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(convert_to_f32(DType::kI32, b.data(), 4, y.data(), 1).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(dequantize_to_f32(DType::kQ8_0, b.data(), 0, y.data(), 0).ok());
  EXPECT_EQ(quantize(DType::kQ4_0, std::vector<float>(31)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(quantize(DType::kQ4_K, std::vector<float>(256)).status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(quantize_q8_0(y.data(), 32, b.data(), 33).code(), StatusCode::kInvalidArgument);
}

TEST(QuantTest, ConvertFloatTypes) {
  const std::vector<float> x = {1.0f, -2.5f, 0.0f, 65504.0f, 1e-3f, -0.0f};
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    auto bytes = quantize(t, x);
    ASSERT_TRUE(bytes.ok());
    // Also from an odd address (GGUF data need not be 2-byte aligned).
    std::vector<uint8_t> shifted(bytes->size() + 1);
    std::memcpy(shifted.data() + 1, bytes->data(), bytes->size());
    std::vector<float> y(x.size()), y2(x.size());
    ASSERT_TRUE(convert_to_f32(t, bytes->data(), bytes->size(), y.data(), static_cast<int64_t>(x.size())).ok());
    ASSERT_TRUE(convert_to_f32(t, shifted.data() + 1, bytes->size(), y2.data(), static_cast<int64_t>(x.size())).ok());
    for (size_t i = 0; i < x.size(); ++i) {
      const float expected = t == DType::kF32   ? x[i]
                             : t == DType::kF16 ? f16_to_f32(f32_to_f16(x[i]))
                                                : bf16_to_f32(f32_to_bf16(x[i]));
      EXPECT_EQ(y[i], expected) << dtype_name(t) << " " << i;
      EXPECT_EQ(y2[i], expected) << dtype_name(t) << " " << i;
    }
  }
}

TEST(QuantTest, Q8_0RoundTripWithinHalfStep) {
  const auto x = test::random_floats(32 * 64, 11, -3.0f, 3.0f);
  auto q = quantize(DType::kQ8_0, x);
  ASSERT_TRUE(q.ok());
  ASSERT_EQ(q->size(), 34u * 64);
  const auto y = dequant(DType::kQ8_0, *q);
  for (size_t b = 0; b < 64; ++b) {
    float amax = 0.0f;
    for (size_t j = 0; j < 32; ++j)
      amax = std::max(amax, std::fabs(x[32 * b + j]));
    const float d = amax / 127.0f;
    for (size_t j = 0; j < 32; ++j) {
      ASSERT_LE(std::fabs(x[32 * b + j] - y[32 * b + j]), 0.57f * d) << b << " " << j;
    }
  }
  // Values on the grid come back exactly; an all-zero block stays zero.
  std::vector<float> grid(64, 0.0f);
  for (int j = 0; j < 32; ++j)
    grid[j] = static_cast<float>(j - 16) * 0.25f;
  grid[31] = 127 * 0.25f;
  const auto yg = dequant(DType::kQ8_0, *quantize(DType::kQ8_0, grid));
  for (int j = 0; j < 64; ++j)
    EXPECT_EQ(yg[j], grid[j]) << j;
}

TEST(QuantTest, Q4_0RoundTripWithinStep) {
  const auto x = test::random_floats(32 * 64, 12, -1.0f, 1.0f);
  auto q = quantize(DType::kQ4_0, x);
  ASSERT_TRUE(q.ok());
  const auto y = dequant(DType::kQ4_0, *q);
  double sq = 0.0;
  for (size_t b = 0; b < 64; ++b) {
    float amax = 0.0f;
    for (size_t j = 0; j < 32; ++j)
      amax = std::max(amax, std::fabs(x[32 * b + j]));
    const float d = amax / 8.0f;
    for (size_t j = 0; j < 32; ++j) {
      const float err = std::fabs(x[32 * b + j] - y[32 * b + j]);
      // Half a step, except the clamped top code on the side opposite the largest value.
      ASSERT_LE(err, 1.01f * d) << b << " " << j;
      sq += static_cast<double>(err) * err;
    }
  }
  EXPECT_LT(std::sqrt(sq / static_cast<double>(x.size())), 0.05);  // ~ d / sqrt(12) for d ~ 1/8
  // The largest-magnitude value maps to code 0 (-8 * d) and comes back exactly.
  std::vector<float> v(32, 0.0f);
  v[5] = -4.0f;
  v[6] = 1.0f;
  const auto yv = dequant(DType::kQ4_0, *quantize(DType::kQ4_0, v));
  EXPECT_EQ(yv[5], -4.0f);
  EXPECT_EQ(yv[6], 1.0f);
  EXPECT_EQ(yv[0], 0.0f);
}

TEST(QuantTest, NonFiniteInputsStayInRange) {
  std::vector<float> x(64, 1.0f);
  x[3] = std::nanf("");
  x[40] = INFINITY;
  x[41] = -INFINITY;
  EXPECT_TRUE(quantize(DType::kQ8_0, x).ok());
  EXPECT_TRUE(quantize(DType::kQ4_0, x).ok());
}

TEST(QuantTest, ParallelConvertMatchesSerial) {
  ThreadPool pool(4);
  std::mt19937 rng(5);
  for (DType t : {DType::kQ4_K, DType::kQ6_K, DType::kQ8_0, DType::kF16}) {
    const int64_t n = 256 * 1024 + (t == DType::kQ8_0 ? 32 : 0);
    std::vector<uint8_t> src(*dtype_bytes(t, static_cast<uint64_t>(n)));
    for (auto& b : src)
      b = static_cast<uint8_t>(rng());
    // Keep f16 scales finite so the comparison is not NaN != NaN.
    if (is_quantized(t)) {
      const int64_t bb = block_bytes(t);
      const int64_t d_at = t == DType::kQ6_K ? 208 : 0;
      for (int64_t i = 0; i < n / block_elements(t); ++i) {
        src[i * bb + d_at + 1] &= 0x3b;
        if (t != DType::kQ6_K && t != DType::kQ8_0) src[i * bb + 3] &= 0x3b;
      }
    } else {
      for (size_t i = 1; i < src.size(); i += 2)
        src[i] &= 0x3b;
    }
    std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
    ASSERT_TRUE(convert_to_f32(t, src.data(), src.size(), a.data(), n).ok());
    ASSERT_TRUE(convert_to_f32(t, src.data(), src.size(), b.data(), n, &pool).ok());
    ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << dtype_name(t);
  }
}

}  // namespace
}  // namespace bw
