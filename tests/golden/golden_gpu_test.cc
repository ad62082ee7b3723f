// The golden fixtures (tests/golden/fixtures, logits and greedy tokens from HF
// transformers) through the model runner on the CUDA backend: f32 mode (f32 weights and
// activations) must match the logits to 1e-3 relative and the greedy tokens exactly, in
// one prefill pass and in chunks that straddle KV blocks; bf16 mode (bf16 weights and
// activations) must pick the reference's argmax at >= 99% of all prompt positions.
// Skips when no CUDA device is present. BW_SOURCE_DIR in the environment overrides the
// compiled-in source folder (the tests may run from a copy of the tree).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <memory>

#include "backend/backend_factory.h"
#include "engine/engine.h"
#include "golden/golden_fixture.h"
#include "model/causal_lm.h"
#include "model/checkpoint.h"
#include "runner/generator.h"
#include "support/test_support.h"

namespace bw {
namespace {

namespace fs = std::filesystem;

using golden::read_reference;
using golden::Reference;
using golden::relative_error;

// The fixtures of the source tree, or of the one that BW_SOURCE_DIR names.
fs::path fixtures_dir() {
  const char* env = std::getenv("BW_SOURCE_DIR");
  return golden::fixtures_dir(env != nullptr && *env != '\0' ? fs::path(env) : test::source_dir());
}

std::vector<std::string> fixture_names() { return golden::fixture_names(fixtures_dir()); }

size_t argmax(const float* row, size_t n) { return static_cast<size_t>(std::max_element(row, row + n) - row); }

std::unique_ptr<Backend> cuda_or_skip(DType weight_dtype) {
  auto b = create_backend("cuda", 0, weight_dtype);
  if (!b.ok()) return nullptr;
  return std::move(*b);
}

// The fixture's model in `dir` on `backend`, weights in `dtype`.
Result<std::unique_ptr<CausalLM>> load_fixture_model(const fs::path& dir, Backend& backend, DType dtype) {
  ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::open(dir.string()));
  WeightLoadOptions options;
  options.weight_dtype = dtype;
  return load_causal_lm(ckpt, backend, options);
}

class GoldenGpuTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenGpuTest, F32ModeMatchesTransformers) {
  std::unique_ptr<Backend> backend = cuda_or_skip(DType::kF32);
  if (backend == nullptr) GTEST_SKIP() << "no CUDA device";
  const fs::path dir = fixtures_dir() / GetParam();
  const Reference ref = read_reference(dir);
  auto model = load_fixture_model(dir, *backend, DType::kF32);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  Generator gen(**model, *backend);
  for (int64_t chunk : {int64_t{512}, int64_t{5}}) {
    auto logits = gen.prompt_logits(ref.prompt, chunk, /*kv_block_size=*/4);
    ASSERT_TRUE(logits.ok()) << logits.status().to_string();
    ASSERT_EQ(logits->size(), ref.logits.size());
    EXPECT_LE(relative_error(*logits, ref.logits), 1e-3) << GetParam() << " chunk " << chunk;
  }
  GenerateOptions g;
  g.max_tokens = static_cast<int64_t>(ref.greedy.size());
  g.ignore_eos = true;
  g.kv_block_size = 16;
  auto result = gen.generate(ref.prompt, g);
  ASSERT_TRUE(result.ok()) << result.status().to_string();
  EXPECT_EQ(result->generated_ids, ref.greedy) << GetParam();
}

// The full engine: chunked prefill, decode steps replayed from CUDA graphs (batch 5 pads
// to 8), sampling on the device; every copy of the prompt must produce the reference's
// greedy tokens.
TEST_P(GoldenGpuTest, F32EngineWithGraphsAndDeviceSamplingMatchesTransformers) {
  std::unique_ptr<Backend> backend = cuda_or_skip(DType::kF32);
  if (backend == nullptr) GTEST_SKIP() << "no CUDA device";
  ASSERT_TRUE(backend->supports_graphs());
  ASSERT_TRUE(backend->supports_device_sampling());
  const fs::path dir = fixtures_dir() / GetParam();
  const Reference ref = read_reference(dir);
  auto model = load_fixture_model(dir, *backend, DType::kF32);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  EngineConfig config;
  config.scheduler.max_model_len = 256;
  config.scheduler.max_num_seqs = 8;
  config.scheduler.max_num_batched_tokens = 16;  // prompts arrive in chunks
  config.kv_block_size = 4;
  config.kv_num_blocks = 512;
  config.enable_prefix_caching = false;
  auto engine = Engine::create(**model, *backend, nullptr, config, make_stderr_logger("golden-gpu", "warn"));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  std::vector<std::unique_ptr<EventQueue>> queues;
  for (int i = 0; i < 5; ++i) {
    GenerationRequest r;
    r.prompt_ids = ref.prompt;
    r.stop.max_tokens = static_cast<int32_t>(ref.greedy.size());
    r.stop.ignore_eos = true;
    r.detokenize = false;
    queues.push_back(std::make_unique<EventQueue>());
    ASSERT_TRUE((*engine)->submit(std::move(r), queues.back()->sink()).ok());
  }
  for (auto& q : queues) {
    Completion c;
    for (;;) {
      auto event = q->pop(std::chrono::seconds(60));
      ASSERT_TRUE(event.has_value()) << "timed out";
      ASSERT_TRUE(event->error.ok()) << event->error.to_string();
      accumulate_event(*event, &c);
      if (event->done) break;
    }
    ASSERT_EQ(c.choices.size(), 1u);
    EXPECT_EQ(c.choices[0].token_ids, ref.greedy) << GetParam();
  }
  const ModelRunner* runner = (*engine)->runner_for_testing();
  ASSERT_NE(runner->decode_graphs(), nullptr);
  EXPECT_GT(runner->decode_graphs()->num_replays(), 0) << runner->decode_graphs()->disabled().to_string();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenGpuTest, ::testing::ValuesIn(fixture_names()), test::StringParamName());

TEST(GoldenGpuBf16Test, GreedyTokensAgreeAtAlmostEveryPosition) {
  std::unique_ptr<Backend> backend = cuda_or_skip(DType::kBF16);
  if (backend == nullptr) GTEST_SKIP() << "no CUDA device";
  ASSERT_EQ(backend->activation_dtype(), DType::kBF16);
  size_t positions = 0, agree = 0;
  for (const std::string& name : fixture_names()) {
    const fs::path dir = fixtures_dir() / name;
    const Reference ref = read_reference(dir);
    auto model = load_fixture_model(dir, *backend, DType::kBF16);
    ASSERT_TRUE(model.ok()) << model.status().to_string();
    Generator gen(**model, *backend);
    auto logits = gen.prompt_logits(ref.prompt, 512, /*kv_block_size=*/16);
    ASSERT_TRUE(logits.ok()) << logits.status().to_string();
    ASSERT_EQ(logits->size(), ref.logits.size());
    const size_t vocab = ref.logits.size() / ref.prompt.size();
    for (size_t t = 0; t < ref.prompt.size(); ++t) {
      ++positions;
      const float* got = logits->data() + t * vocab;
      const float* want = ref.logits.data() + t * vocab;
      const size_t g = argmax(got, vocab), w = argmax(want, vocab);
      agree += g == w;
      if (g != w) {
        std::printf("%s position %zu: bf16 picks %zu (%.4f; reference %.4f), reference picks %zu (%.4f; bf16 %.4f)\n",
                    name.c_str(), t, g, got[g], want[g], w, want[w], got[w]);
      }
    }
    std::printf("%s: bf16 logits relative error %.3g\n", name.c_str(), relative_error(*logits, ref.logits));
    // Decoding runs too (the decode path of every kernel), and yields valid ids.
    GenerateOptions g;
    g.max_tokens = 8;
    g.ignore_eos = true;
    auto result = gen.generate(ref.prompt, g);
    ASSERT_TRUE(result.ok()) << result.status().to_string();
    for (int32_t id : result->generated_ids)
      EXPECT_LT(static_cast<size_t>(id), vocab);
  }
  ASSERT_GT(positions, 0u) << "no fixtures found under " << fixtures_dir();
  const double rate = static_cast<double>(agree) / static_cast<double>(positions);
  std::printf("bf16 greedy agreement: %zu / %zu positions (%.4f)\n", agree, positions, rate);
  EXPECT_GE(rate, 0.99);
}

}  // namespace
}  // namespace bw
