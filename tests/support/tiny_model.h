// A random-weight model of a preset's shape written to a test's temporary folder: the
// engine, runner and GPU tests run real forward passes on one. Header-only, because
// bw_test_support does not link the model library; include it from tests that do.
#pragma once

#include <string>

#include "common/thread_pool.h"
#include "model/presets.h"
#include "model/random_model.h"
#include "support/test_support.h"

namespace bw::test {

// Writes the preset's model with f32 (or `dtype`) weights drawn from `seed` to
// dir/<preset> and returns that path.
inline Result<std::string> write_tiny_model(const TempDir& dir, const std::string& preset, uint64_t seed,
                                            DType dtype = DType::kF32) {
  ASSIGN_OR_RETURN(ModelConfig config, find_model_preset(preset));
  ThreadPool pool(2);
  RandomModelOptions options;
  options.dtype = dtype;
  options.seed = seed;
  options.out_path = dir.file(preset);
  RETURN_IF_ERROR(write_random_model(config, options, pool).status());
  return options.out_path;
}

}  // namespace bw::test
