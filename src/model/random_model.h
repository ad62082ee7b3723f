// Random-weight models with real shapes (`breakwater make-model`): benchmarks and tests
// need checkpoints of the exact size of DeepSeek-R1-Distill models without downloading
// them. Writes a Hugging Face folder (config.json + safetensors) or a GGUF file that
// llama.cpp-compatible tools load (llama Q/K rows permuted as llama.cpp does, tokenizer
// keys copied from another GGUF).
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "common/thread_pool.h"
#include "model/model_config.h"
#include "tensor/tensor_view.h"

namespace bw {

struct RandomModelOptions {
  enum class Format { kSafetensors, kGguf };
  Format format = Format::kSafetensors;
  DType dtype = DType::kBF16;  // f32, f16 or bf16
  uint64_t seed = 0;
  std::string out_path;        // a folder (safetensors) or a .gguf file
  std::string tokenizer_from;  // GGUF file whose tokenizer.* keys are copied (GGUF only)
  uint64_t max_shard_bytes = uint64_t{4} << 30;
};

// The Hugging Face tensor names and shapes of a dense Llama/Qwen2 decoder, in the order
// transformers saves them.
struct NamedShape {
  std::string name;
  Shape shape;
};
std::vector<NamedShape> dense_decoder_tensor_shapes(const ModelConfig& config);

// Writes the model; returns the number of parameters written.
Result<uint64_t> write_random_model(const ModelConfig& config, const RandomModelOptions& options, ThreadPool& pool);

}  // namespace bw
