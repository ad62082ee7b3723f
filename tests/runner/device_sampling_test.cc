// The host side of device sampling: which params it takes, and the batch (rows, the CSR
// penalty history and logit bias) the builder makes, checked field by field and against
// the host Sampler: the bias and penalties a kernel applies from the CSR lists give the
// Sampler's greedy token on random rows and histories, and log-probability records read
// back as the Sampler reports them.
#include "runner/device_sampling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <vector>

#include "runner/sampler.h"
#include "support/device_penalties.h"

namespace bw {
namespace {

TEST(DeviceSamplingTest, SamplableWithLogitBiasAndLogprobs) {
  SamplingParams p;
  p.temperature = 0.7f;
  p.top_k = 40;
  p.top_p = 0.9f;
  p.min_p = 0.05f;
  p.repetition_penalty = 1.1f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = -0.5f;
  p.seed = 7;
  EXPECT_TRUE(device_samplable(p));
  SamplingParams biased = p;
  biased.logit_bias = {{3, 1.0f}};
  EXPECT_TRUE(device_samplable(biased));
  SamplingParams logprobs = p;
  for (const int32_t n : {0, 5, kMaxDeviceTopLogprobs}) {
    logprobs.logprobs = n;
    EXPECT_TRUE(device_samplable(logprobs)) << n;
  }
  logprobs.logprobs = kMaxDeviceTopLogprobs + 1;  // (validate() refuses it)
  EXPECT_FALSE(device_samplable(logprobs));
}

TEST(DeviceSamplingTest, BuildsTheBiasOnceForEachToken) {
  DeviceSamplingBatchBuilder builder(100);
  SamplingParams plain;
  SamplingParams biased;
  biased.logit_bias = {{7, 2.0f}, {-1, 5.0f}, {3, -1.5f}, {7, 0.5f}, {100, 9.0f}, {99, -100.0f}};
  biased.logprobs = 4;
  builder.add_row(plain, 1, 0, {}, {});
  builder.add_row(biased, 2, 0, {}, {});
  builder.add_row(plain, 3, 0, {}, {});
  const DeviceSamplingBatch b = builder.batch();
  ASSERT_EQ(b.bias_offsets.size(), 4u);
  EXPECT_EQ(b.bias_offsets[0], 0);
  EXPECT_EQ(b.bias_offsets[1], 0);
  EXPECT_EQ(b.bias_offsets[2], 3);
  EXPECT_EQ(b.bias_offsets[3], 3);
  // Out-of-vocabulary ids dropped, token 7's two entries summed, first-listing order.
  EXPECT_EQ(std::vector<int32_t>(b.bias_tokens.begin(), b.bias_tokens.end()), (std::vector<int32_t>{7, 3, 99}));
  EXPECT_EQ(std::vector<float>(b.bias_values.begin(), b.bias_values.end()), (std::vector<float>{2.5f, -1.5f, -100.0f}));
  EXPECT_EQ(b.rows[0].logprobs, -1);
  EXPECT_EQ(b.rows[1].logprobs, 4);
  builder.clear();
  EXPECT_EQ(builder.batch().bias_offsets.size(), 1u);
  EXPECT_TRUE(builder.batch().bias_tokens.empty());
}

// The records the device writes, read back as the host Sampler reports log-probabilities:
// the same tokens, and values within float rounding, on random rows with ties, -inf and
// fewer finite logits than asked for.
TEST(DeviceSamplingTest, LogprobsRecordsReadAsTheHostSamplerReportsThem) {
  constexpr int64_t kVocab = 500;
  std::mt19937 rng(99);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int trial = 0; trial < 60; ++trial) {
    std::vector<float> logits(kVocab);
    for (float& x : logits)
      x = std::round(normal(rng) * 4.0f) / 4.0f;  // many ties
    if (trial % 5 == 0) {
      // Only a handful of finite logits.
      for (size_t i = 0; i < logits.size(); ++i) {
        if (i % 97 != 3) logits[i] = -std::numeric_limits<float>::infinity();
      }
    }
    SamplingParams p;
    p.logprobs = trial % (kMaxDeviceTopLogprobs + 1);
    if (trial % 3 == 1) p.logit_bias = {{static_cast<int32_t>(trial), 50.0f}};  // bias: not in the raw record
    Sampler sampler(p, 1);
    std::vector<float> host_row = logits;
    const SampledToken want = sampler.sample(host_row, {}, {});

    std::vector<DeviceTokenLogprob> record(kLogprobsRecord);
    test::device_logprobs_record(logits, want.token_id, p.logprobs, record);
    const SampledToken got = device_logprobs(want.token_id, p.logprobs, record);
    EXPECT_EQ(got.token_id, want.token_id);
    EXPECT_NEAR(got.logprob, want.logprob, 1e-5) << "trial " << trial;
    ASSERT_EQ(got.top.size(), want.top.size()) << "trial " << trial;
    for (size_t j = 0; j < want.top.size(); ++j) {
      EXPECT_EQ(got.top[j].token_id, want.top[j].token_id) << "trial " << trial << " rank " << j;
      EXPECT_NEAR(got.top[j].logprob, want.top[j].logprob, 1e-5) << "trial " << trial << " rank " << j;
    }
  }
}

// The row's history as token -> output count.
std::map<int32_t, int32_t> history_of(const DeviceSamplingBatch& b, size_t row) {
  std::map<int32_t, int32_t> h;
  for (int32_t j = b.penalty_offsets[row]; j < b.penalty_offsets[row + 1]; ++j) {
    EXPECT_EQ(h.count(b.penalty_tokens[static_cast<size_t>(j)]), 0u) << "duplicate token in row " << row;
    h[b.penalty_tokens[static_cast<size_t>(j)]] = b.penalty_output_counts[static_cast<size_t>(j)];
  }
  return h;
}

TEST(DeviceSamplingTest, BuildsRowsAndDistinctHistory) {
  DeviceSamplingBatchBuilder builder(100);
  SamplingParams none;  // no penalty: no history
  none.temperature = 0.5f;
  none.top_k = 7;
  none.top_p = 0.8f;
  none.min_p = 0.1f;
  SamplingParams repetition;
  repetition.repetition_penalty = 1.3f;
  SamplingParams presence;
  presence.presence_penalty = 0.4f;
  presence.frequency_penalty = 0.2f;
  const std::vector<int32_t> prompt = {5, 9, 5, 200, -1, 11};
  const std::vector<int32_t> output = {9, 12, 12, 9, 9, 100};
  builder.add_row(none, 42, 6, prompt, output);
  builder.add_row(repetition, 43, 0, prompt, output);
  builder.add_row(presence, 44, 3, prompt, output);
  builder.add_row(repetition, 45, 0, {}, {}, /*pending_row=*/3);
  builder.add_row(none, 46, 0, {}, {}, /*pending_row=*/2);  // nothing to count it for
  ASSERT_EQ(builder.num_rows(), 5u);
  const DeviceSamplingBatch b = builder.batch();
  ASSERT_EQ(b.rows.size(), 5u);
  ASSERT_EQ(b.penalty_offsets.size(), 6u);
  ASSERT_EQ(b.penalty_tokens.size(), b.penalty_output_counts.size());
  EXPECT_EQ(b.penalty_offsets.front(), 0);
  EXPECT_EQ(static_cast<size_t>(b.penalty_offsets.back()), b.penalty_tokens.size());

  EXPECT_EQ(b.rows[0].temperature, 0.5f);
  EXPECT_EQ(b.rows[0].top_k, 7);
  EXPECT_EQ(b.rows[0].top_p, 0.8f);
  EXPECT_EQ(b.rows[0].min_p, 0.1f);
  EXPECT_EQ(b.rows[0].seed, 42u);
  EXPECT_EQ(b.rows[0].step, 6u);
  EXPECT_EQ(b.rows[1].repetition_penalty, 1.3f);
  EXPECT_EQ(b.rows[2].presence_penalty, 0.4f);
  EXPECT_EQ(b.rows[2].frequency_penalty, 0.2f);
  EXPECT_EQ(b.rows[2].seed, 44u);
  EXPECT_EQ(b.rows[2].step, 3u);
  EXPECT_EQ(b.rows[2].pending_row, -1);
  EXPECT_EQ(b.rows[3].pending_row, 3);
  EXPECT_EQ(b.rows[4].pending_row, -1);

  EXPECT_TRUE(history_of(b, 0).empty());
  // Repetition: prompt (count 0) + output; 200 and -1 are outside the vocabulary.
  EXPECT_EQ(history_of(b, 1), (std::map<int32_t, int32_t>{{5, 0}, {9, 3}, {11, 0}, {12, 2}}));
  // Presence/frequency only: the output alone.
  EXPECT_EQ(history_of(b, 2), (std::map<int32_t, int32_t>{{9, 3}, {12, 2}}));
  EXPECT_TRUE(history_of(b, 3).empty());
  EXPECT_TRUE(history_of(b, 4).empty());
  // First occurrence order.
  EXPECT_EQ(b.penalty_tokens[static_cast<size_t>(b.penalty_offsets[1])], 5);

  builder.clear();
  EXPECT_EQ(builder.num_rows(), 0u);
  const DeviceSamplingBatch empty = builder.batch();
  EXPECT_TRUE(empty.rows.empty());
  ASSERT_EQ(empty.penalty_offsets.size(), 1u);
  EXPECT_TRUE(empty.penalty_tokens.empty());
}

TEST(DeviceSamplingTest, CsrPenaltiesMatchTheHostSampler) {
  constexpr int64_t kVocab = 300;
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_int_distribution<int32_t> token(-5, kVocab + 5);  // a few out of range
  int changed = 0;
  for (int trial = 0; trial < 300; ++trial) {
    SamplingParams p;  // greedy
    switch (trial % 4) {
      case 0:
        p.repetition_penalty = 1.5f;
        break;
      case 1:
        p.presence_penalty = 1.5f;
        break;
      case 2:
        p.frequency_penalty = 0.7f;
        break;
      default:
        p.repetition_penalty = 0.8f;
        p.presence_penalty = -0.5f;
        p.frequency_penalty = 1.1f;
        break;
    }
    std::vector<float> logits(kVocab);
    for (float& x : logits)
      x = normal(rng);
    std::vector<int32_t> prompt(static_cast<size_t>(trial % 40));
    std::vector<int32_t> output(static_cast<size_t>(trial % 23));
    // Histories that favour the current top tokens, so penalties change the argmax.
    const int32_t top = argmax(logits);
    for (int32_t& t : prompt)
      t = rng() % 3 == 0 ? top : token(rng);
    for (int32_t& t : output)
      t = rng() % 3 == 0 ? top : token(rng);

    if (trial % 3 == 0) p.logit_bias = {{top, -0.5f}, {token(rng), 1.0f}, {token(rng), 0.25f}};

    DeviceSamplingBatchBuilder builder(kVocab);
    builder.add_row(p, 1, output.size(), prompt, output);
    const DeviceSamplingBatch b = builder.batch();
    std::vector<float> device_row = logits;
    test::apply_device_bias(device_row, b, 0);
    test::apply_device_penalties(device_row, b, 0);

    Sampler sampler(p, 1);
    std::vector<float> host_row = logits;
    const int32_t want = sampler.sample(host_row, prompt, output).token_id;
    EXPECT_EQ(argmax(device_row), want) << "trial " << trial;
    if (want != top) ++changed;

    // The same with the newest output token still pending (an overlapped step): the row's
    // history holds a placeholder, the token comes from the pending sample's ids.
    if (output.empty()) continue;
    const int32_t newest = output.back();
    std::vector<int32_t> placeholder = output;
    placeholder.back() = -1;
    builder.clear();
    builder.add_row(p, 1, output.size(), prompt, placeholder, /*pending_row=*/1);
    DeviceSamplingBatch pending_batch = builder.batch();
    const int32_t pending_ids[2] = {kVocab - 1, newest};
    pending_batch.pending = AsyncSample{pending_ids, 2, 0};
    EXPECT_EQ(pending_batch.rows[0].pending_row, 1);
    std::vector<float> pending_logits = logits;
    test::apply_device_bias(pending_logits, pending_batch, 0);
    test::apply_device_penalties(pending_logits, pending_batch, 0);
    EXPECT_EQ(pending_logits, device_row) << "trial " << trial;
  }
  EXPECT_GT(changed, 50);  // the penalties mattered
}

}  // namespace
}  // namespace bw
