// ModelRunner::warm_up on the CPU: the dummy steps run (one forward per token count, long
// counts split into sequences of at most max_len tokens), touch no KV block but block 0,
// and leave nothing behind that changes a later step's logits.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "model/checkpoint.h"
#include "runner/model_runner.h"
#include "support/test_support.h"
#include "support/tiny_model.h"

namespace bw {
namespace {

constexpr int32_t kBlocks = 8;
constexpr int32_t kBlock = 16;
constexpr float kFill = 0.25f;

class ModelRunnerWarmUpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto path = test::write_tiny_model(dir_, "tiny-llama", 23);
    ASSERT_TRUE(path.ok()) << path.status().to_string();
    auto ckpt = Checkpoint::open(*path);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().to_string();
    WeightLoadOptions load;
    load.weight_dtype = DType::kF32;
    auto model = load_causal_lm(*ckpt, cpu_, load);
    ASSERT_TRUE(model.ok()) << model.status().to_string();
    model_ = std::move(*model);
  }

  std::unique_ptr<ModelRunner> make_runner() {
    ModelRunnerConfig config;
    config.kv_num_blocks = kBlocks;
    config.kv_block_size = kBlock;
    config.max_model_len = 64;
    auto runner = ModelRunner::create(*model_, cpu_, config);
    EXPECT_TRUE(runner.ok()) << runner.status().to_string();
    if (!runner.ok()) return nullptr;
    // Every K/V value kFill (the CPU backend's cache is f32 in host memory).
    for (const KvCacheLayer& layer : (*runner)->kv_cache().layers()) {
      std::fill_n(layer.k.as<float>(), layer.k.numel(), kFill);
      std::fill_n(layer.v.as<float>(), layer.v.numel(), kFill);
    }
    return std::move(*runner);
  }

  // The logits of a 20-token prompt in blocks 3 and 4.
  std::vector<float> prompt_logits(ModelRunner& runner) {
    std::mt19937 rng(8);
    std::uniform_int_distribution<int32_t> token(3, static_cast<int32_t>(model_->config().vocab_size - 1));
    SchedulerOutput step;
    ScheduledSequence seq;
    seq.request_id = 1;
    seq.token_ids.resize(20);
    for (int32_t& id : seq.token_ids)
      id = token(rng);
    seq.block_table = {3, 4};
    seq.sample = true;
    step.num_tokens = 20;
    step.sequences.push_back(seq);
    auto out = runner.execute(step);
    EXPECT_TRUE(out.ok()) << out.status().to_string();
    return out.ok() ? out->logits : std::vector<float>{};
  }

  test::TempDir dir_;
  CpuBackend cpu_{2};
  std::unique_ptr<CausalLM> model_;
};

TEST_F(ModelRunnerWarmUpTest, WritesOnlyBlockZeroAndChangesNoLaterStep) {
  auto cold = make_runner();
  auto warm = make_runner();
  ASSERT_NE(cold, nullptr);
  ASSERT_NE(warm, nullptr);
  // 150 tokens run as sequences of 64, 64 and 22 (max_len 64).
  const std::vector<int64_t> counts = {1, 5, 40, 150};
  ASSERT_TRUE(warm->warm_up(counts, 64).ok());

  const int64_t block_values = warm->kv_cache().layers()[0].k.numel() / kBlocks;
  bool block0_written = false;
  for (const KvCacheLayer& layer : warm->kv_cache().layers()) {
    for (const TensorView* t : {&layer.k, &layer.v}) {
      const float* v = t->as<const float>();
      block0_written |= std::any_of(v, v + block_values, [](float x) { return x != kFill; });
      EXPECT_TRUE(std::all_of(v + block_values, v + t->numel(), [](float x) { return x == kFill; }))
          << "a warm-up step wrote outside KV block 0";
    }
  }
  EXPECT_TRUE(block0_written) << "the warm-up steps ran no forward pass";

  const std::vector<float> want = prompt_logits(*cold);
  const std::vector<float> got = prompt_logits(*warm);
  ASSERT_FALSE(want.empty());
  EXPECT_EQ(got, want);
}

TEST_F(ModelRunnerWarmUpTest, NeedsAPositiveSequenceLength) {
  auto runner = make_runner();
  ASSERT_NE(runner, nullptr);
  EXPECT_EQ(runner->warm_up(std::vector<int64_t>{4}, 0).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(runner->warm_up({}, 64).ok());
}

}  // namespace
}  // namespace bw
