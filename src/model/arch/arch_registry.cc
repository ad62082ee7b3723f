#include "model/arch/arch_registry.h"

#include <utility>

#include <fmt/ranges.h>

namespace bw {

namespace {

constexpr std::pair<const char*, ArchLoader> kArchitectures[] = {
    {"llama", &load_llama},
    {"qwen2", &load_qwen2},
};

}  // namespace

ArchLoader find_arch_loader(const std::string& architecture) {
  for (const auto& [name, loader] : kArchitectures) {
    if (architecture == name) return loader;
  }
  return nullptr;
}

std::vector<std::string> supported_architectures() {
  std::vector<std::string> names;
  for (const auto& [name, loader] : kArchitectures)
    names.emplace_back(name);
  return names;
}

Result<std::unique_ptr<CausalLM>> load_causal_lm(const Checkpoint& checkpoint, Backend& backend,
                                                 const WeightLoadOptions& options) {
  ArchLoader loader = find_arch_loader(checkpoint.config().architecture);
  if (loader == nullptr) {
    return Unimplemented("{}: architecture '{}' is not supported (supported: {})", checkpoint.path(),
                         checkpoint.config().architecture, fmt::join(supported_architectures(), ", "));
  }
  Result<std::unique_ptr<CausalLM>> model = loader(checkpoint, backend, options);
  if (!model.ok() && model.status().code() == StatusCode::kResourceExhausted) {
    return ResourceExhausted(
        "{}: the model's weights do not fit in the memory of {} ({}); use smaller weights (--dtype bf16, a quantised "
        "GGUF) or a device with more memory",
        checkpoint.path(), backend.name(), model.status().message());
  }
  return model;
}

}  // namespace bw
