// DenseDecoder: the pre-norm transformer shared by Llama and Qwen2 (and the DeepSeek
// distills): RMSNorm -> fused QKV (+bias) -> RoPE -> paged causal GQA attention -> output
// projection -> residual -> RMSNorm -> fused gate/up -> SiLU*up -> down -> residual.
//
// Architecture files (arch/llama.cc, arch/qwen2.cc) say where each weight comes from and
// build the DenseDecoderWeights; this file is the forward pass, written once against
// backend ops. Owns its weights and a scratch workspace that grows with the batch.
#pragma once

#include <vector>

#include "backend/backend.h"
#include "model/causal_lm.h"

namespace bw {

using DenseDecoderLayer = DecoderLayerWeights;  // backend/backend.h

struct DenseDecoderWeights {
  TensorView embed;  // [V, H]
  std::vector<DenseDecoderLayer> layers;
  TensorView final_norm;              // [H]
  TensorView lm_head;                 // [V, H]; the embedding itself when tied
  std::vector<DeviceBuffer> buffers;  // owns all of the above
  uint64_t bytes = 0;
};

// Loads the standard Hugging Face Llama/Qwen2 tensor set. `unpermute_qk` undoes
// llama.cpp's Q/K row order (GGUF `llama` files).
Result<DenseDecoderWeights> load_dense_decoder_weights(const Checkpoint& checkpoint, Backend& backend,
                                                       const WeightLoadOptions& options, bool unpermute_qk);

class DenseDecoder final : public CausalLM {
 public:
  DenseDecoder(ModelConfig config, DenseDecoderWeights weights, Backend& backend);

  const ModelConfig& config() const override { return config_; }
  uint64_t weight_bytes() const override { return weights_.bytes; }
  Status forward(const ForwardInput& input, std::span<const KvCacheLayer> kv_cache, TensorView logits) override;
  Status reserve(int64_t max_tokens, int64_t max_logits) override { return ensure_workspace(max_tokens, max_logits); }
  uint64_t workspace_epoch() const override { return workspace_epoch_; }

 private:
  Status ensure_workspace(int64_t num_tokens, int64_t num_logits);

  ModelConfig config_;
  DenseDecoderWeights weights_;
  Backend& backend_;
  AttentionParams attention_;
  RopeParams rope_;

  // Scratch activations, sized for workspace_tokens_ rows.
  int64_t workspace_tokens_ = 0;
  uint64_t workspace_epoch_ = 0;
  DeviceBuffer residual_;  // [T, H]
  DeviceBuffer hidden_;    // [T, H]: normed input of the next projection
  DeviceBuffer qkv_;       // [T, (Hq + 2*Hkv) * D]
  DeviceBuffer attn_out_;  // [T, Hq * D]
  DeviceBuffer proj_out_;  // [T, H]: attention or MLP output before the residual add
  DeviceBuffer gate_up_;   // [T, 2 * F]
  DeviceBuffer act_;       // [T, F]
  DeviceBuffer last_;      // [N, H]: rows gathered for the LM head
};

}  // namespace bw
