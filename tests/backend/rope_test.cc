// rope_inv_freq against the formulas evaluated in double (default, linear and Llama 3
// scaling, with indices in each Llama 3 regime), and the float32 helpers.
#include "backend/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <vector>

namespace bw {
namespace {

double default_inv_freq(double theta, int i, int rotary_dim) { return 1.0 / std::pow(theta, 2.0 * i / rotary_dim); }

TEST(RopeTest, DefaultInverseFrequencies) {
  for (int rotary_dim : {2, 64, 80, 128}) {
    RopeParams p;
    p.theta = 10000.0f;
    p.rotary_dim = rotary_dim;
    const std::vector<float> f = rope_inv_freq(p);
    ASSERT_EQ(f.size(), static_cast<size_t>(rotary_dim / 2));
    EXPECT_EQ(f[0], 1.0f);
    for (int i = 0; i < rotary_dim / 2; ++i) {
      const double want = default_inv_freq(10000.0, i, rotary_dim);
      EXPECT_NEAR(f[i], want, 4e-7 * want) << "rotary_dim=" << rotary_dim << " i=" << i;
    }
  }
  RopeParams none;
  none.rotary_dim = 0;
  EXPECT_TRUE(rope_inv_freq(none).empty());
}

TEST(RopeTest, LinearScalingDividesByFactor) {
  RopeParams p;
  p.theta = 1000000.0f;
  p.rotary_dim = 128;
  const std::vector<float> base = rope_inv_freq(p);
  p.scaling.type = RopeScaling::Type::kLinear;
  p.scaling.factor = 4.0f;
  const std::vector<float> scaled = rope_inv_freq(p);
  ASSERT_EQ(scaled.size(), base.size());
  for (size_t i = 0; i < base.size(); ++i)
    EXPECT_EQ(scaled[i], base[i] / 4.0f) << i;
}

// HF _compute_llama3_parameters in double.
double llama3_inv_freq(int i) {
  const double theta = 500000.0, factor = 8.0, low = 1.0, high = 4.0, original = 8192.0;
  const double inv = default_inv_freq(theta, i, 64);
  const double low_freq_wavelen = original / low, high_freq_wavelen = original / high;
  const double wavelen = 2.0 * std::numbers::pi / inv;
  if (wavelen < high_freq_wavelen) return inv;
  if (wavelen > low_freq_wavelen) return inv / factor;
  const double smooth = (original / wavelen - low) / (high - low);
  return (1.0 - smooth) * inv / factor + smooth * inv;
}

TEST(RopeTest, Llama3ScalingMatchesTheFormulaInEachRegime) {
  RopeParams p;
  p.theta = 500000.0f;
  p.rotary_dim = 64;
  const std::vector<float> base = rope_inv_freq(p);
  p.scaling.type = RopeScaling::Type::kLlama3;
  p.scaling.factor = 8.0f;
  p.scaling.low_freq_factor = 1.0f;
  p.scaling.high_freq_factor = 4.0f;
  p.scaling.original_max_position = 8192;
  const std::vector<float> f = rope_inv_freq(p);
  ASSERT_EQ(f.size(), 32u);

  // wavelen = 2*pi * 500000^(i/32): below 2048 for i <= 14 (kept), above 8192 for
  // i >= 18 (divided by 8), blended for i = 15, 16, 17.
  int kept = 0, divided = 0, blended = 0;
  for (int i = 0; i < 32; ++i) {
    const double want = llama3_inv_freq(i);
    EXPECT_NEAR(f[i], want, 2e-6 * want) << "i=" << i;
    const double wavelen = 2.0 * std::numbers::pi / default_inv_freq(500000.0, i, 64);
    if (wavelen < 2048.0) {
      ++kept;
      EXPECT_EQ(f[i], base[i]) << "high-frequency entries are unchanged, i=" << i;
    } else if (wavelen > 8192.0) {
      ++divided;
      EXPECT_EQ(f[i], base[i] / 8.0f) << "low-frequency entries are divided by factor, i=" << i;
    } else {
      ++blended;
      EXPECT_LT(f[i], base[i]) << i;
      EXPECT_GT(f[i], base[i] / 8.0f) << i;
    }
  }
  EXPECT_EQ(kept, 15);
  EXPECT_EQ(divided, 14);
  EXPECT_EQ(blended, 3);
  // A few spot values, in each regime.
  for (int i : {0, 7, 14, 15, 16, 17, 18, 25, 31})
    EXPECT_NEAR(f[i], llama3_inv_freq(i), 2e-6 * llama3_inv_freq(i));
}

TEST(RopeTest, AngleIsOneFloatProduct) {
  const float inv = 0.0123456789f;
  for (int64_t pos : {0, 1, 17, 4095, 131071})
    EXPECT_EQ(rope_angle(pos, inv), static_cast<float>(pos) * inv);
}

TEST(RopeTest, RotatePairMatchesRotateHalf) {
  float x1 = 0.75f, x2 = -1.5f;
  const float c = std::cos(0.3f), s = std::sin(0.3f);
  const float want1 = x1 * c - x2 * s, want2 = x2 * c + x1 * s;
  rope_rotate_pair(x1, x2, c, s);
  EXPECT_NEAR(x1, want1, 1e-6f);
  EXPECT_NEAR(x2, want2, 1e-6f);
}

}  // namespace
}  // namespace bw
