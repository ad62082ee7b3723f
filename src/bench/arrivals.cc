#include "bench/arrivals.h"

#include <cmath>
#include <random>

namespace bw::bench {

Result<std::vector<double>> arrival_offsets(size_t num_requests, double rate, double burstiness, uint64_t seed) {
  if (!(rate > 0.0)) return InvalidArgument("--request-rate must be positive (or inf), got {}", rate);
  if (!(burstiness > 0.0) || std::isinf(burstiness)) {
    return InvalidArgument("--burstiness must be positive and finite, got {}", burstiness);
  }
  std::vector<double> offsets(num_requests, 0.0);
  if (std::isinf(rate)) return offsets;
  std::mt19937_64 rng(seed);
  // Exponential gaps by inversion (the same numbers on every standard library); other
  // shapes through the library's gamma distribution.
  auto uniform = [&rng] { return static_cast<double>(rng() >> 11) * 0x1.0p-53; };  // [0, 1)
  std::gamma_distribution<double> gamma(burstiness, 1.0 / (rate * burstiness));
  double t = 0.0;
  for (size_t i = 1; i < num_requests; ++i) {
    t += burstiness == 1.0 ? -std::log1p(-uniform()) / rate : gamma(rng);
    offsets[i] = t;
  }
  return offsets;
}

}  // namespace bw::bench
