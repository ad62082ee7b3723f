#include "model/checkpoint.h"

#include <filesystem>

#include "common/mapped_file.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/gguf_names.h"

namespace bw {

namespace fs = std::filesystem;

Checkpoint::Checkpoint(Checkpoint&&) noexcept = default;
Checkpoint& Checkpoint::operator=(Checkpoint&&) noexcept = default;
Checkpoint::~Checkpoint() = default;

Result<Checkpoint> Checkpoint::open(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return NotFound("{}: no such file or folder", path);
  Checkpoint ckpt;
  ckpt.path_ = path;
  if (fs::is_regular_file(path, ec) && fs::path(path).extension() == ".gguf") {
    ckpt.format_ = Format::kGguf;
    ASSIGN_OR_RETURN(GgufFile file, GgufFile::open(path));
    ckpt.gguf_ = std::make_unique<GgufFile>(std::move(file));
    ASSIGN_OR_RETURN(ckpt.config_, model_config_from_gguf(*ckpt.gguf_));
    return ckpt;
  }
  ckpt.format_ = Format::kSafetensors;
  const fs::path dir = fs::is_directory(path, ec) ? fs::path(path) : fs::path(path).parent_path();
  const std::string config_path = (dir / "config.json").string();
  if (!fs::exists(config_path, ec)) {
    return NotFound("{}: not a GGUF file and no config.json in '{}' (expected a Hugging Face model folder)", path,
                    dir.string());
  }
  ASSIGN_OR_RETURN(std::string config_text, read_file_to_string(config_path));
  ASSIGN_OR_RETURN(ckpt.config_, model_config_from_hf_json(config_text, config_path));
  ASSIGN_OR_RETURN(SafetensorsModel weights, SafetensorsModel::open(path));
  ckpt.safetensors_ = std::make_unique<SafetensorsModel>(std::move(weights));
  return ckpt;
}

const TensorEntry* Checkpoint::find(std::string_view hf_name) const {
  if (format_ == Format::kSafetensors) return safetensors_->find(hf_name);
  auto name = hf_to_gguf_tensor_name(hf_name);
  if (!name) return nullptr;
  return gguf_->find_tensor(*name);
}

Result<const TensorEntry*> Checkpoint::require(std::string_view hf_name) const {
  if (const TensorEntry* t = find(hf_name)) return t;
  if (format_ == Format::kGguf) {
    return DataLoss("{}: missing tensor '{}' (Hugging Face name '{}')", path_,
                    hf_to_gguf_tensor_name(hf_name).value_or("?"), hf_name);
  }
  return DataLoss("{}: missing tensor '{}'", path_, hf_name);
}

}  // namespace bw
