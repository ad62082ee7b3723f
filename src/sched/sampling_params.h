// SamplingParams: how one request turns logits into tokens. A plain, serialisable struct:
// the scheduler carries it, the runner's Sampler applies it (runner/sampler.h).
//
// The order of application follows vLLM and llama.cpp: logit bias, then penalties
// (repetition over prompt + output, presence/frequency over output), then temperature,
// then min-p, top-k, top-p, then one draw from the request's own generator. Logprobs are
// those of the model's raw distribution (log-softmax of the unmodified logits), as
// vLLM reports them by default.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "common/status.h"

namespace bw {

struct SamplingParams {
  float temperature = 0.0f;                           // 0: greedy (argmax, lowest id on ties); else > 0
  int32_t top_k = 0;                                  // 0 or -1: off; else keep the k most likely tokens
  float top_p = 1.0f;                                 // (0, 1]: keep the smallest set whose probability reaches p
  float min_p = 0.0f;                                 // [0, 1]: drop tokens below min_p * the top probability
  float repetition_penalty = 1.0f;                    // > 0; 1 = off (HF/CTRL: divide positive, multiply negative)
  float presence_penalty = 0.0f;                      // [-2, 2], OpenAI semantics, over generated tokens
  float frequency_penalty = 0.0f;                     // [-2, 2], OpenAI semantics, over generated tokens
  std::vector<std::pair<int32_t, float>> logit_bias;  // token id -> added to its logit
  // Same seed -> same tokens whatever else shares the batch. Unset: the engine draws one.
  std::optional<uint64_t> seed;
  // -1: no logprobs; 0: the sampled token's logprob only; k > 0: plus the top k tokens.
  int32_t logprobs = -1;

  bool is_greedy() const { return temperature <= 0.0f; }
  // A repetition, presence or frequency penalty: the token depends on the history.
  bool has_penalty() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }

  // InvalidArgument naming the field when a value is out of range (token ids against
  // vocab_size; logprobs at most 20, as OpenAI allows).
  Status validate(int64_t vocab_size) const;
};

}  // namespace bw
