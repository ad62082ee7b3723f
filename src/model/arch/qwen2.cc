// Qwen2 (and DeepSeek-R1-Distill-Qwen): the dense decoder with q/k/v bias. GGUF `qwen2`
// files keep Hugging Face's Q/K row order (llama.cpp uses NeoX rope for them).
#include "model/arch/arch_registry.h"
#include "model/arch/dense_decoder.h"

namespace bw {

Result<std::unique_ptr<CausalLM>> load_qwen2(const Checkpoint& checkpoint, Backend& backend,
                                             const WeightLoadOptions& options) {
  if (!checkpoint.config().attention_bias) {
    return DataLoss("{}: a qwen2 model must have q/k/v biases", checkpoint.path());
  }
  ASSIGN_OR_RETURN(DenseDecoderWeights weights,
                   load_dense_decoder_weights(checkpoint, backend, options, /*unpermute_qk=*/false));
  return std::unique_ptr<CausalLM>(std::make_unique<DenseDecoder>(checkpoint.config(), std::move(weights), backend));
}

}  // namespace bw
