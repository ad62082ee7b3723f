#include "backend/rope.h"

#include <cmath>
#include <numbers>

namespace bw {

namespace {

// Rounds a float32 intermediate to memory so that the compiler cannot fuse it into a
// multiply-add with a neighbouring operation (-ffp-contract=fast is GCC's default in
// C++); torch evaluates each eager op separately, with one rounding each.
float rounded(float v) {
  volatile float r = v;
  return r;
}

}  // namespace

std::vector<float> rope_inv_freq(const RopeParams& p) {
  const int half = p.rotary_dim / 2;
  std::vector<float> inv_freq(half > 0 ? static_cast<size_t>(half) : 0);
  const float dim = static_cast<float>(p.rotary_dim);
  for (int i = 0; i < half; ++i) {
    const float exponent = rounded(static_cast<float>(2 * i) / dim);
    inv_freq[i] = rounded(1.0f / rounded(std::pow(p.theta, exponent)));
  }

  const RopeScaling& s = p.scaling;
  switch (s.type) {
    case RopeScaling::Type::kNone:
      break;
    case RopeScaling::Type::kLinear:
      for (float& f : inv_freq)
        f = rounded(f / s.factor);
      break;
    case RopeScaling::Type::kLlama3: {
      // HF keeps old_context_len / *_freq_factor as Python doubles; comparing them with
      // a float32 tensor rounds them to float32 first.
      const double old_context_len = static_cast<double>(s.original_max_position);
      const float low_freq_wavelen = static_cast<float>(old_context_len / s.low_freq_factor);
      const float high_freq_wavelen = static_cast<float>(old_context_len / s.high_freq_factor);
      const float two_pi = static_cast<float>(2.0 * std::numbers::pi);
      const float context = static_cast<float>(old_context_len);
      const float factor_span =
          static_cast<float>(static_cast<double>(s.high_freq_factor) - static_cast<double>(s.low_freq_factor));
      for (float& f : inv_freq) {
        const float wavelen = rounded(two_pi / f);
        if (wavelen < high_freq_wavelen) continue;  // high frequency: unchanged
        if (wavelen > low_freq_wavelen) {           // low frequency: interpolated
          f = rounded(f / s.factor);
          continue;
        }
        // Medium frequency: blend the two, as HF evaluates it left to right.
        const float smooth = rounded(rounded(rounded(context / wavelen) - s.low_freq_factor) / factor_span);
        const float scaled = rounded(rounded(rounded(1.0f - smooth) * f) / s.factor);
        const float kept = rounded(smooth * f);
        f = rounded(scaled + kept);
      }
      break;
    }
  }
  // Explicit per-frequency divisors (GGUF `rope_freqs.weight`), as llama.cpp applies them.
  if (p.freq_factors.size() == inv_freq.size()) {
    for (size_t i = 0; i < inv_freq.size(); ++i)
      inv_freq[i] = rounded(inv_freq[i] / p.freq_factors[i]);
  }
  return inv_freq;
}

}  // namespace bw
