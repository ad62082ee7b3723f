// CausalLM: one forward pass of a decoder-only language model over a flattened batch.
//
// The runner lays out the batch (token ids, attention metadata, which rows need logits)
// in backend memory; the model runs every layer through backend ops, reading and
// writing the paged KV cache, and writes logits for the requested rows. A model owns
// its weights and scratch activations; it knows nothing about requests.
// Not thread-safe: one forward at a time.
#pragma once

#include <memory>
#include <span>
#include <string>

#include "backend/backend.h"
#include "model/checkpoint.h"
#include "model/model_config.h"
#include "model/weight_loader.h"

namespace bw {

struct ForwardInput {
  TensorView token_ids;  // [T] i32
  AttentionMetadata attention;
  TensorView logits_indices;  // [N] i32: rows of the batch whose logits are computed
};

class CausalLM {
 public:
  virtual ~CausalLM() = default;

  virtual const ModelConfig& config() const = 0;
  // Bytes of weights held on the backend.
  virtual uint64_t weight_bytes() const = 0;

  // Sizes the scratch activations for batches of up to max_tokens tokens and max_logits
  // logits rows now (the memory plan: before the KV pool takes what is left). A larger
  // batch later still works; it reallocates.
  virtual Status reserve(int64_t max_tokens, int64_t max_logits) = 0;
  // Changes whenever the scratch activations are reallocated: graphs recorded over the old
  // ones must be captured again.
  virtual uint64_t workspace_epoch() const = 0;

  // kv_cache: one entry per layer. logits [N, vocab_size], activation dtype.
  virtual Status forward(const ForwardInput& input, std::span<const KvCacheLayer> kv_cache, TensorView logits) = 0;
};

// Loads the checkpoint's architecture (see model/arch_registry.h) onto `backend`.
Result<std::unique_ptr<CausalLM>> load_causal_lm(const Checkpoint& checkpoint, Backend& backend,
                                                 const WeightLoadOptions& options);

}  // namespace bw
