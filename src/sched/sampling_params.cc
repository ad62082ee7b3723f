#include "sched/sampling_params.h"

#include <cmath>

namespace bw {

namespace {

// The OpenAI range of logit_bias values.
constexpr float kMaxLogitBias = 100.0f;
constexpr float kMaxPenalty = 2.0f;
constexpr int32_t kMaxLogprobs = 20;

// True for a finite value in [lo, hi] (false for NaN).
bool in_closed_range(float value, float lo, float hi) { return value >= lo && value <= hi; }

}  // namespace

Status SamplingParams::validate(int64_t vocab_size) const {
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    return InvalidArgument("temperature must be >= 0 and finite, got {}", temperature);
  }
  if (top_k < -1) return InvalidArgument("top_k must be -1 or 0 (off) or positive, got {}", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) return InvalidArgument("top_p must be in (0, 1], got {}", top_p);
  if (!in_closed_range(min_p, 0.0f, 1.0f)) return InvalidArgument("min_p must be in [0, 1], got {}", min_p);
  if (!std::isfinite(repetition_penalty) || repetition_penalty <= 0.0f) {
    return InvalidArgument("repetition_penalty must be > 0 and finite, got {}", repetition_penalty);
  }
  if (!in_closed_range(presence_penalty, -kMaxPenalty, kMaxPenalty)) {
    return InvalidArgument("presence_penalty must be in [-2, 2], got {}", presence_penalty);
  }
  if (!in_closed_range(frequency_penalty, -kMaxPenalty, kMaxPenalty)) {
    return InvalidArgument("frequency_penalty must be in [-2, 2], got {}", frequency_penalty);
  }
  for (const auto& [token_id, bias] : logit_bias) {
    if (token_id < 0 || token_id >= vocab_size) {
      return InvalidArgument("logit_bias token id {} is outside the vocabulary [0, {})", token_id, vocab_size);
    }
    if (!in_closed_range(bias, -kMaxLogitBias, kMaxLogitBias)) {
      return InvalidArgument("logit_bias for token {} must be in [-100, 100], got {}", token_id, bias);
    }
  }
  if (logprobs < -1 || logprobs > kMaxLogprobs) {
    return InvalidArgument("logprobs must be in [-1, 20] (-1: off), got {}", logprobs);
  }
  return OkStatus();
}

}  // namespace bw
