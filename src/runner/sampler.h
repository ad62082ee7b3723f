// Token sampling from one row of logits: greedy (argmax, lowest id on ties) or
// temperature sampling from a seeded generator. The full sampler (top-k/p, min-p,
// penalties, logprobs) comes with the engine. Not thread-safe: one per sequence.
#pragma once

#include <cstdint>
#include <random>
#include <span>

namespace bw {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplingParams params) : params_(params), rng_(params.seed) {}
  int32_t sample(std::span<const float> logits);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

int32_t argmax(std::span<const float> logits);

}  // namespace bw
