// Llama (and DeepSeek-R1-Distill-Llama): the dense decoder with optional q/k/v bias.
// llama.cpp permutes Q/K rows when it writes GGUF `llama` files, so those are undone here.
#include "model/arch/arch_registry.h"
#include "model/arch/dense_decoder.h"

namespace bw {

Result<std::unique_ptr<CausalLM>> load_llama(const Checkpoint& checkpoint, Backend& backend,
                                             const WeightLoadOptions& options) {
  const bool from_gguf = checkpoint.format() == Checkpoint::Format::kGguf;
  ASSIGN_OR_RETURN(DenseDecoderWeights weights,
                   load_dense_decoder_weights(checkpoint, backend, options, /*unpermute_qk=*/from_gguf));
  return std::unique_ptr<CausalLM>(std::make_unique<DenseDecoder>(checkpoint.config(), std::move(weights), backend));
}

}  // namespace bw
