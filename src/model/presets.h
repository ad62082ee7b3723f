// Model shape presets for `breakwater make-model`: the exact shapes of real checkpoints
// (from their published config.json) and tiny shapes for tests.
#pragma once

#include <string>
#include <vector>

#include "model/model_config.h"

namespace bw {

struct ModelPreset {
  std::string name;
  std::string description;
  ModelConfig config;
};

const std::vector<ModelPreset>& model_presets();
Result<ModelConfig> find_model_preset(const std::string& name);

}  // namespace bw
