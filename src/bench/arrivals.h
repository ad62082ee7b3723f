// When each request of an open-loop run is sent: a seeded arrival process, as in vLLM's
// benchmark_serving. Thread-safe: pure functions.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"

namespace bw::bench {

// Seconds after the start at which each of `num_requests` requests is sent. The first goes
// at 0; the gaps are drawn from a gamma distribution with mean 1/rate and shape
// `burstiness` (1: exponential gaps, a Poisson process; < 1 burstier, > 1 more even) from a
// generator seeded with `seed`. An infinite rate sends everything at 0. InvalidArgument
// for a rate or burstiness that is not positive.
Result<std::vector<double>> arrival_offsets(size_t num_requests, double rate, double burstiness, uint64_t seed);

}  // namespace bw::bench
