// The architectures Breakwater can load, by ModelConfig::architecture name. Each
// architecture lives in its own file (arch/<name>.cc) and is listed once here.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "model/causal_lm.h"

namespace bw {

using ArchLoader = Result<std::unique_ptr<CausalLM>> (*)(const Checkpoint&, Backend&, const WeightLoadOptions&);

// nullptr when the architecture is unknown.
ArchLoader find_arch_loader(const std::string& architecture);
std::vector<std::string> supported_architectures();

Result<std::unique_ptr<CausalLM>> load_llama(const Checkpoint&, Backend&, const WeightLoadOptions&);
Result<std::unique_ptr<CausalLM>> load_qwen2(const Checkpoint&, Backend&, const WeightLoadOptions&);

}  // namespace bw
