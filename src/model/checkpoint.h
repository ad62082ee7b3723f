// Checkpoint: a model on disk opened for loading — a Hugging Face folder (config.json +
// safetensors, single or sharded) or a GGUF file. Gives the ModelConfig and the tensors
// by their Hugging Face names, whatever the format. Owns the memory maps; TensorEntry
// pointers stay valid while the Checkpoint lives. Move-only, immutable once open.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"
#include "io/tensor_entry.h"
#include "model/model_config.h"

namespace bw {

class GgufFile;
class SafetensorsModel;

class Checkpoint {
 public:
  enum class Format { kSafetensors, kGguf };

  // `path`: a .gguf file, a folder with config.json and *.safetensors, or a .safetensors
  // file whose folder holds config.json.
  static Result<Checkpoint> open(const std::string& path);

  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;
  ~Checkpoint();

  Format format() const { return format_; }
  const std::string& path() const { return path_; }
  const ModelConfig& config() const { return config_; }
  // The GGUF file (tokenizer metadata), or nullptr for safetensors checkpoints.
  const GgufFile* gguf() const { return gguf_.get(); }

  // A tensor by its Hugging Face name, or nullptr.
  const TensorEntry* find(std::string_view hf_name) const;
  // Like find, but a missing tensor is DataLoss naming the file and the tensor.
  Result<const TensorEntry*> require(std::string_view hf_name) const;

 private:
  Checkpoint() = default;

  Format format_ = Format::kSafetensors;
  std::string path_;
  ModelConfig config_;
  std::unique_ptr<GgufFile> gguf_;
  std::unique_ptr<SafetensorsModel> safetensors_;
};

}  // namespace bw
