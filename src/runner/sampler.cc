#include "runner/sampler.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace bw {

int32_t argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (params_.temperature <= 0.0f || logits.empty()) return argmax(logits);
  // Softmax in double, max-subtracted; then invert the CDF with one uniform draw.
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  std::vector<double> probs(logits.size());
  double total = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    probs[i] = std::exp((static_cast<double>(logits[i]) - max_logit) / params_.temperature);
    total += probs[i];
  }
  std::uniform_real_distribution<double> uniform(0.0, total);
  double r = uniform(rng_);
  for (size_t i = 0; i < probs.size(); ++i) {
    r -= probs[i];
    if (r <= 0.0) return static_cast<int32_t>(i);
  }
  return argmax(logits);
}

}  // namespace bw
