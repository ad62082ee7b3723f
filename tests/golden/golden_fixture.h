// The golden fixtures (tests/golden/fixtures/<name>/: a tiny random model plus
// reference.json with the prompt ids, the logits and the greedy tokens that Hugging Face
// transformers computed; scripts/make_golden_fixtures.py writes them), shared by the CPU
// (golden_test.cc) and CUDA (golden_gpu_test.cc) golden tests. Header-only: the tests in
// this folder are globbed by name, so a helper .cc here would not be compiled.
// Stateless functions; safe to call from any thread.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/mapped_file.h"
#include "support/test_support.h"

namespace bw::golden {

// The fixtures folder of the source tree rooted at `source_root`.
inline std::filesystem::path fixtures_dir(const std::filesystem::path& source_root = test::source_dir()) {
  return source_root / "tests" / "golden" / "fixtures";
}

// The names of the fixtures (sub-folders with a reference.json) under `dir`, sorted; empty
// when `dir` does not exist.
inline std::vector<std::string> fixture_names(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  if (!std::filesystem::exists(dir)) return names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.is_directory() && std::filesystem::exists(e.path() / "reference.json"))
      names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

struct Reference {
  std::vector<int32_t> prompt;
  std::vector<float> logits;  // [T, V]
  std::vector<int32_t> greedy;
};

// The reference.json of the fixture in `dir` (a gtest failure when it cannot be read).
inline Reference read_reference(const std::filesystem::path& dir) {
  auto text = read_file_to_string((dir / "reference.json").string());
  EXPECT_TRUE(text.ok());
  auto j = nlohmann::json::parse(*text);
  Reference r;
  r.prompt = j["prompt_ids"].get<std::vector<int32_t>>();
  for (const auto& row : j["logits"]) {
    for (const auto& v : row)
      r.logits.push_back(v.get<float>());
  }
  r.greedy = j["greedy_ids"].get<std::vector<int32_t>>();
  return r;
}

// max |a - b| / max |b| over the elements of `a` (`b` the reference).
inline double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(static_cast<double>(a[i]) - b[i]));
    max_ref = std::max(max_ref, std::abs(static_cast<double>(b[i])));
  }
  return max_diff / max_ref;
}

}  // namespace bw::golden
