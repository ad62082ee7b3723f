// Golden tests: tiny random Llama/Qwen2 models whose logits and greedy tokens Hugging Face
// transformers computed (scripts/make_golden_fixtures.py -> tests/golden/fixtures/).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <memory>

#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "common/mapped_file.h"
#include "model/causal_lm.h"
#include "model/checkpoint.h"
#include "runner/generator.h"
#include "support/test_support.h"

namespace bw {
namespace {

namespace fs = std::filesystem;

fs::path fixtures_dir() { return test::source_dir() / "tests" / "golden" / "fixtures"; }

std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(fixtures_dir())) {
    if (e.is_directory() && fs::exists(e.path() / "reference.json")) names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

struct Reference {
  std::vector<int32_t> prompt;
  std::vector<float> logits;  // [T, V]
  std::vector<int32_t> greedy;
};

Reference read_reference(const fs::path& dir) {
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

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(static_cast<double>(a[i]) - b[i]));
    max_ref = std::max(max_ref, std::abs(static_cast<double>(b[i])));
  }
  return max_diff / max_ref;
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, LogitsAndGreedyTokensMatchTransformers) {
  const fs::path dir = fixtures_dir() / GetParam();
  const Reference ref = read_reference(dir);
  auto ckpt = Checkpoint::open(dir.string());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().to_string();
  CpuBackend backend(2);
  WeightLoadOptions options;
  options.weight_dtype = DType::kF32;
  auto model = load_causal_lm(*ckpt, backend, options);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  Generator gen(**model, backend);

  // Whole prompt in one pass, and in chunks that straddle KV blocks (chunked prefill).
  for (int64_t chunk : {int64_t{512}, int64_t{5}}) {
    auto logits = gen.prompt_logits(ref.prompt, chunk, /*kv_block_size=*/4);
    ASSERT_TRUE(logits.ok()) << logits.status().to_string();
    ASSERT_EQ(logits->size(), ref.logits.size());
    const double err = relative_error(*logits, ref.logits);
    EXPECT_LE(err, 1e-4) << GetParam() << " chunk " << chunk;
  }

  GenerateOptions g;
  g.max_tokens = static_cast<int64_t>(ref.greedy.size());
  g.ignore_eos = true;
  g.kv_block_size = 16;
  auto result = gen.generate(ref.prompt, g);
  ASSERT_TRUE(result.ok()) << result.status().to_string();
  EXPECT_EQ(result->generated_ids, ref.greedy) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest, ::testing::ValuesIn(fixture_names()), test::StringParamName());

}  // namespace
}  // namespace bw
