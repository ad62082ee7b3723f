// Generator: runs one sequence through a CausalLM — prefill (in chunks), then one token
// per step until a stop token or the token limit — over its own paged KV cache. It is
// the simplest runner: `breakwater generate` and the golden tests use it; the engine
// (continuous batching over many sequences) comes later. Not thread-safe.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/causal_lm.h"
#include "runner/sampler.h"

namespace bw {

struct GenerateOptions {
  int64_t max_tokens = 16;
  SamplingParams sampling;
  std::vector<int32_t> stop_token_ids;  // in addition to the model's EOS ids
  bool ignore_eos = false;
  int64_t kv_block_size = 16;
  int64_t prefill_chunk_tokens = 512;  // prompt tokens per forward pass
  DType kv_dtype = DType::kF32;
};

struct GenerateResult {
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> generated_ids;
  std::string finish_reason;  // "stop" (a stop/EOS token) or "length"
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;  // from the first generated token to the last
};

class Generator {
 public:
  Generator(CausalLM& model, Backend& backend) : model_(model), backend_(backend) {}

  // Logits at every prompt position, row-major [prompt.size(), vocab_size] (teacher
  // forcing over a fresh cache of `kv_dtype`). Prefilled in chunks of `chunk_tokens`.
  Result<std::vector<float>> prompt_logits(std::span<const int32_t> prompt, int64_t chunk_tokens = 512,
                                           int64_t kv_block_size = 16, DType kv_dtype = DType::kF32);

  // `on_token` is called with each generated token as soon as it is sampled.
  Result<GenerateResult> generate(std::span<const int32_t> prompt, const GenerateOptions& options,
                                  const std::function<void(int32_t)>& on_token = {});

 private:
  CausalLM& model_;
  Backend& backend_;
};

}  // namespace bw
