// ModelConfig: the hyperparameters of a dense decoder (Llama, Qwen2 and the DeepSeek
// distills built on them), read from a Hugging Face config.json or from GGUF metadata.
// A plain value type; validate() checks the invariants the forward pass relies on.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "common/status.h"
#include "tensor/dtype.h"

namespace bw {

class GgufFile;

struct ModelConfig {
  std::string architecture;  // registry name: "llama", "qwen2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  float rms_norm_eps = 1e-6f;
  // GGUF llama files carry Llama-3 scaling as rope.freq_factors (`rope_freqs.weight`).
  RopeParams rope;
  int64_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2)
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;
  DType weight_dtype = DType::kF32;  // the dtype the checkpoint stores (informational)

  Status validate() const;
  int64_t qkv_size() const { return (num_heads + 2 * num_kv_heads) * head_dim; }
  std::string summary() const;  // one line for logs
};

// From the text of a Hugging Face config.json (`source` names the file in errors).
// Reads both the legacy `rope_theta`/`rope_scaling` keys and transformers 5's
// `rope_parameters`.
Result<ModelConfig> model_config_from_hf_json(const std::string& json_text, const std::string& source);

// From GGUF metadata (general.architecture and the `<arch>.*` keys).
Result<ModelConfig> model_config_from_gguf(const GgufFile& gguf);

// The HF config.json text for a config (used by make-model).
std::string model_config_to_hf_json(const ModelConfig& config);

}  // namespace bw
