// Golden tests: tiny random Llama/Qwen2 models whose logits and greedy tokens Hugging Face
// transformers computed (scripts/make_golden_fixtures.py -> tests/golden/fixtures/).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <memory>

#include "backend/cpu/cpu_backend.h"
#include "golden/golden_fixture.h"
#include "model/causal_lm.h"
#include "model/checkpoint.h"
#include "runner/generator.h"
#include "support/test_support.h"

namespace bw {
namespace {

namespace fs = std::filesystem;

using golden::fixture_names;
using golden::fixtures_dir;
using golden::read_reference;
using golden::Reference;
using golden::relative_error;

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

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest, ::testing::ValuesIn(fixture_names(fixtures_dir())),
                         test::StringParamName());

}  // namespace
}  // namespace bw
