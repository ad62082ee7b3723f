// ModelRunner's extra choices (the later choices of an n > 1 request draw their first
// tokens from copies of the prompt's logits, in sampling rows after the sequences' rows),
// on the CPU: a recording backend emulates device sampling (tests/support/
// recording_backend.h), so both execute() and launch()/wait() run as on a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "model/checkpoint.h"
#include "runner/device_sampling.h"
#include "runner/model_runner.h"
#include "support/recording_backend.h"
#include "support/test_support.h"
#include "support/tiny_model.h"

namespace bw {
namespace {

class ModelRunnerChoicesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto path = test::write_tiny_model(dir_, "tiny-llama", 17);
    ASSERT_TRUE(path.ok()) << path.status().to_string();
    auto ckpt = Checkpoint::open(*path);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().to_string();
    WeightLoadOptions load;
    load.weight_dtype = DType::kF32;
    auto model = load_causal_lm(*ckpt, backend_, load);
    ASSERT_TRUE(model.ok()) << model.status().to_string();
    model_ = std::move(*model);
    ModelRunnerConfig config;
    config.kv_num_blocks = 8;
    config.kv_block_size = 16;
    config.max_model_len = 64;
    auto runner = ModelRunner::create(*model_, backend_, config);
    ASSERT_TRUE(runner.ok()) << runner.status().to_string();
    runner_ = std::move(*runner);
  }

  // Three prompts (5, 9 and 12 tokens), each in its own KV block, all sampled.
  static SchedulerOutput prompts(int32_t vocab) {
    std::mt19937 rng(5);
    std::uniform_int_distribution<int32_t> token(3, vocab - 1);
    SchedulerOutput out;
    const size_t lengths[] = {5, 9, 12};
    for (int32_t i = 0; i < 3; ++i) {
      ScheduledSequence seq;
      seq.request_id = 10 * (i + 1);
      seq.token_ids.resize(lengths[i]);
      for (int32_t& id : seq.token_ids)
        id = token(rng);
      seq.block_table = {i};
      seq.sample = true;
      out.num_tokens += static_cast<int32_t>(seq.token_ids.size());
      out.sequences.push_back(std::move(seq));
    }
    return out;
  }

  // Rows: one per prompt, then `extra` (temperature 0.9, row k seeded 100 + k).
  DeviceSamplingBatch batch(size_t extra) {
    builder_.clear();
    SamplingParams params;
    params.temperature = 0.9f;
    for (size_t r = 0; r < 3 + extra; ++r)
      builder_.add_row(params, r < 3 ? 100 + r : 100 + (r - 3), 0, {}, {});
    return builder_.batch();
  }

  int32_t vocab() const { return static_cast<int32_t>(model_->config().vocab_size); }

  test::TempDir dir_;
  CpuBackend cpu_{2};
  test::RecordingBackend backend_{cpu_, test::RecordingBackend::Sampling::kEmulated};
  std::unique_ptr<CausalLM> model_;
  std::unique_ptr<ModelRunner> runner_;
  DeviceSamplingBatchBuilder builder_{0};
};

// Extra row k is seeded as prompt row k is, so it draws that row's token when it copies
// that row's logits (and, from another row's logits, that row's seed-k draw otherwise).
TEST_F(ModelRunnerChoicesTest, ExtraRowsDrawFromCopiesOfTheirSourceRows) {
  const SchedulerOutput step = prompts(vocab());
  builder_ = DeviceSamplingBatchBuilder(vocab());
  const std::vector<int32_t> sources = {0, 1, 2, 2};  // seeds 100, 101, 102, 103
  const DeviceSamplingBatch sampling = batch(sources.size());
  auto out = runner_->execute(step, &sampling, {}, sources);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  ASSERT_EQ(out->sampled.size(), 7u);
  EXPECT_EQ(out->request_ids, (std::vector<RequestId>{10, 20, 30}));
  EXPECT_EQ(out->choice_sources, sources);
  for (size_t k = 0; k < 3; ++k)
    EXPECT_EQ(out->sampled[3 + k], out->sampled[k]) << "extra row " << k;

  // The same through launch() / wait() (the KV blocks are simply written again).
  auto pending = runner_->launch(step, sampling, nullptr, sources);
  ASSERT_TRUE(pending.ok()) << pending.status().to_string();
  auto waited = runner_->wait(std::move(*pending));
  ASSERT_TRUE(waited.ok()) << waited.status().to_string();
  EXPECT_EQ(waited->sampled, out->sampled);
  EXPECT_EQ(waited->choice_sources, sources);

  // Seeds drawn apart: the fourth extra row (seed 103 over row 2's logits) is a real draw.
  std::vector<int32_t> draws;
  for (uint64_t seed = 100; seed < 140; ++seed) {
    builder_.clear();
    SamplingParams params;
    params.temperature = 5.0f;
    for (size_t r = 0; r < 4; ++r)
      builder_.add_row(params, r < 3 ? 7 : seed, 0, {}, {});
    const DeviceSamplingBatch one_extra = builder_.batch();
    const std::vector<int32_t> from_row_2 = {2};
    auto drawn = runner_->execute(step, &one_extra, {}, from_row_2);
    ASSERT_TRUE(drawn.ok()) << drawn.status().to_string();
    draws.push_back(drawn->sampled[3]);
  }
  std::sort(draws.begin(), draws.end());
  EXPECT_GT(std::unique(draws.begin(), draws.end()) - draws.begin(), 1) << "every seed drew the same token";
}

TEST_F(ModelRunnerChoicesTest, BadChoiceSourcesAreInvalidArguments) {
  const SchedulerOutput step = prompts(vocab());
  builder_ = DeviceSamplingBatchBuilder(vocab());
  const DeviceSamplingBatch two_extra = batch(2);
  for (const std::vector<int32_t>& bad : std::vector<std::vector<int32_t>>{{1, 0}, {0, 3}, {-1, 0}, {0}}) {
    auto out = runner_->execute(step, &two_extra, {}, bad);
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument) << out.status().to_string();
    auto launched = runner_->launch(step, two_extra, nullptr, bad);
    ASSERT_FALSE(launched.ok());
    EXPECT_EQ(launched.status().code(), StatusCode::kInvalidArgument) << launched.status().to_string();
  }
  // Extra choices need device sampling: without a batch the host gets logits, one row each.
  const std::vector<int32_t> sources = {0};
  auto host = runner_->execute(step, nullptr, {}, sources);
  ASSERT_FALSE(host.ok());
  EXPECT_EQ(host.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace bw
