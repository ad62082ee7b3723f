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

Status check_rope_params(std::string_view op, const RopeParams& p, int64_t head_dim) {
  if (p.rotary_dim == 0) {
    return InvalidArgument("{}: rope.rotary_dim is 0; set it to head_dim ({}) to rotate whole heads", op, head_dim);
  }
  if (p.rotary_dim < 0 || p.rotary_dim % 2 != 0 || p.rotary_dim > head_dim) {
    return InvalidArgument("{}: rope.rotary_dim {} must be even and in [2, head_dim {}]", op, p.rotary_dim, head_dim);
  }
  if (!(p.theta > 0.0f) || !std::isfinite(p.theta)) {
    return InvalidArgument("{}: rope.theta {} must be positive", op, p.theta);
  }
  if (p.scaling.type != RopeScaling::Type::kNone && !(p.scaling.factor > 0.0f)) {
    return InvalidArgument("{}: rope.scaling.factor {} must be positive", op, p.scaling.factor);
  }
  if (p.scaling.type == RopeScaling::Type::kLlama3 &&
      !(p.scaling.high_freq_factor > p.scaling.low_freq_factor && p.scaling.low_freq_factor > 0.0f &&
        p.scaling.original_max_position > 0)) {
    return InvalidArgument(
        "{}: llama3 scaling needs high_freq_factor {} > low_freq_factor {} > 0 and original_max_position {} > 0", op,
        p.scaling.high_freq_factor, p.scaling.low_freq_factor, p.scaling.original_max_position);
  }
  return OkStatus();
}

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
