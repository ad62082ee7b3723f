// CudaBackend::sample with log-probabilities and logit bias on fresh random logits:
// each row's record (the sampled token's log-probability and the top tokens of the raw row)
// equals the host's computation in double (token ids exact, values within 1e-4), for
// greedy and random rows, with bias and penalties modifying the row, on V = 151,936 and
// on small rows with ties, -inf and fewer finite logits than asked for; asking for
// log-probabilities never changes a row's token; a bias on the device draws what the same
// seed draws from the row biased beforehand; greedy rows with bias and penalties give the
// host Sampler's token; bad bias lists and record spans are InvalidArgument. A last test
// prints the time of a call with and without log-probabilities (never pass/fail on time).
// Skips when no CUDA device is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "runner/device_sampling.h"
#include "runner/sampler.h"
#include "support/device_penalties.h"
#include "support/logit_rows.h"

namespace bw {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kQwenVocab = 151936;

struct Sampled {
  std::vector<int32_t> tokens;
  std::vector<DeviceTokenLogprob> records;  // [rows * kLogprobsRecord]
};

class CudaLogprobsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto b = CudaBackend::create({});
    if (!b.ok()) GTEST_SKIP() << "no CUDA device: " << b.status().to_string();
    gpu_ = std::move(*b);
  }

  // Samples a fresh device copy of `logits` [rows, vocab] under `batch`, with records.
  Sampled sample(const std::vector<float>& logits, int64_t vocab, const DeviceSamplingBatch& batch) {
    const size_t rows = logits.size() / static_cast<size_t>(vocab);
    auto buf = gpu_->allocate(logits.size() * sizeof(float));
    EXPECT_TRUE(buf.ok());
    EXPECT_TRUE(gpu_->copy_to_device(buf->data(), logits.data(), logits.size() * sizeof(float)).ok());
    Sampled out;
    out.tokens.assign(rows, -7);
    out.records.assign(rows * kLogprobsRecord, DeviceTokenLogprob{-9, 9.0f});
    const Status s =
        gpu_->sample(out.tokens, buf->view(DType::kF32, {static_cast<int64_t>(rows), vocab}), batch, out.records);
    EXPECT_TRUE(s.ok()) << s.to_string();
    return out;
  }

  std::unique_ptr<CudaBackend> gpu_;
};

using test::random_logits;
using test::row_of;

std::span<const DeviceTokenLogprob> record_of(const Sampled& s, size_t r) {
  return std::span<const DeviceTokenLogprob>(s.records).subspan(r * kLogprobsRecord, kLogprobsRecord);
}

// Every row's sampling mix: greedy or random (top-k, top-p, min-p), with and without a
// bias and penalties, asking for 0 to 20 top tokens.
struct Batch {
  std::vector<SamplingParams> params;
  DeviceSamplingBatchBuilder builder;
  explicit Batch(int64_t vocab) : builder(vocab) {}
  DeviceSamplingBatch build(const std::vector<std::vector<int32_t>>& outputs) {
    builder.clear();
    for (size_t r = 0; r < params.size(); ++r)
      builder.add_row(params[r], 1000 + r, outputs[r].size(), {}, outputs[r]);
    return builder.batch();
  }
};

Batch mixed_batch(size_t rows, int64_t vocab, uint32_t seed, std::vector<std::vector<int32_t>>* outputs) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab) - 1);
  Batch b(vocab);
  outputs->assign(rows, {});
  for (size_t r = 0; r < rows; ++r) {
    SamplingParams p;
    p.logprobs = static_cast<int32_t>((r * 7) % (kMaxDeviceTopLogprobs + 1));
    switch (r % 4) {
      case 0:
        break;  // greedy, unmodified: reads the logits in place
      case 1:
        p.temperature = 0.8f;
        p.top_k = 50;
        p.top_p = 0.9f;
        break;
      case 2:
        p.temperature = 1.2f;
        p.min_p = 0.01f;
        p.frequency_penalty = 0.7f;
        break;
      default:
        p.presence_penalty = 2.0f;  // greedy, modified
        break;
    }
    if (r % 3 == 0) {
      for (int j = 0; j < 12; ++j)
        p.logit_bias.emplace_back(token(rng), j % 2 == 0 ? 6.0f : -50.0f);
    }
    for (int j = 0; j < 20; ++j)
      (*outputs)[r].push_back(token(rng));
    b.params.push_back(p);
  }
  return b;
}

// The records against the raw rows, in double; returns how many top entries were checked.
size_t expect_records(const std::vector<float>& logits, int64_t vocab, const Sampled& got,
                      const std::vector<SamplingParams>& params) {
  size_t checked = 0;
  for (size_t r = 0; r < params.size(); ++r) {
    const int32_t n = params[r].logprobs;
    if (n < 0) continue;
    std::vector<DeviceTokenLogprob> want(kLogprobsRecord);
    test::device_logprobs_record(row_of(logits, vocab, r), got.tokens[r], n, want);
    const auto rec = record_of(got, r);
    EXPECT_EQ(rec[0].token_id, got.tokens[r]) << "row " << r;
    EXPECT_NEAR(rec[0].logprob, want[0].logprob, 1e-4) << "row " << r;
    for (int32_t j = 1; j <= n; ++j) {
      EXPECT_EQ(rec[j].token_id, want[j].token_id) << "row " << r << " rank " << j;
      if (want[j].token_id >= 0) EXPECT_NEAR(rec[j].logprob, want[j].logprob, 1e-4) << "row " << r << " rank " << j;
      ++checked;
    }
    // Entries past the row's count are not written.
    for (size_t j = static_cast<size_t>(n) + 1; j < kLogprobsRecord; ++j)
      EXPECT_EQ(rec[j].token_id, -9) << "row " << r << " entry " << j;
  }
  return checked;
}

TEST_F(CudaLogprobsTest, RecordsMatchTheRawDistribution) {
  for (const int64_t vocab : {kQwenVocab, int64_t{1000}, int64_t{37}}) {
    SCOPED_TRACE(vocab);
    constexpr size_t kRows = 24;
    std::vector<std::vector<int32_t>> outputs;
    Batch batch = mixed_batch(kRows, vocab, 5, &outputs);
    std::vector<float> logits = random_logits(kRows, vocab, 17 + static_cast<uint32_t>(vocab), 3.0f);
    // Ties at a coarse grid; a row of mostly -inf; a row with one NaN.
    for (size_t i = 0; i < static_cast<size_t>(vocab); ++i) {
      float& tie = logits[5 * static_cast<size_t>(vocab) + i];
      tie = std::round(tie);
      if (i % 9 != 2) logits[8 * static_cast<size_t>(vocab) + i] = -kInf;
    }
    logits[4 * static_cast<size_t>(vocab) + 3] = std::nanf("");
    const DeviceSamplingBatch b = batch.build(outputs);
    const Sampled got = sample(logits, vocab, b);
    EXPECT_GT(expect_records(logits, vocab, got, batch.params), 100u);

    // Greedy rows (modified or not) give the host Sampler's token.
    for (size_t r = 0; r < kRows; ++r) {
      if (!batch.params[r].is_greedy()) continue;
      Sampler sampler(batch.params[r], 1);
      std::vector<float> host_row(row_of(logits, vocab, r).begin(), row_of(logits, vocab, r).end());
      const SampledToken want = sampler.sample(host_row, {}, outputs[r]);
      EXPECT_EQ(got.tokens[r], want.token_id) << "row " << r;
      EXPECT_NEAR(record_of(got, r)[0].logprob, want.logprob, 1e-4) << "row " << r;
    }
  }
}

TEST_F(CudaLogprobsTest, NonFiniteRowsReportCertaintyOrNothing) {
  constexpr int64_t kVocab = 300;
  std::vector<float> logits(4 * kVocab, -kInf);  // row 0: all -inf
  logits[kVocab + 7] = kInf;                     // row 1: one +inf
  for (int64_t i = 0; i < kVocab; ++i) {
    logits[2 * kVocab + i] = static_cast<float>(i % 5);  // row 2: finite, ties
    logits[3 * kVocab + i] = -1.0f;                      // row 3: -0 and +0 tie
  }
  logits[3 * kVocab + 1] = -0.0f;
  logits[3 * kVocab + 2] = 0.0f;
  logits[3 * kVocab + 4] = -0.0f;
  logits[3 * kVocab + 5] = 0.0f;
  Batch batch(kVocab);
  for (int r = 0; r < 4; ++r) {
    SamplingParams p;
    p.logprobs = 6;
    batch.params.push_back(p);
  }
  const Sampled got = sample(logits, kVocab, batch.build({{}, {}, {}, {}}));
  EXPECT_EQ(got.tokens[0], 0);
  EXPECT_EQ(record_of(got, 0)[0].logprob, 0.0f);  // -inf == the maximum
  EXPECT_EQ(got.tokens[1], 7);
  EXPECT_EQ(record_of(got, 1)[0].logprob, 0.0f);
  for (int j = 1; j <= 6; ++j) {
    EXPECT_EQ(record_of(got, 0)[static_cast<size_t>(j)].token_id, -1);
    EXPECT_EQ(record_of(got, 1)[static_cast<size_t>(j)].token_id, -1);
  }
  // Ties at the top: the lowest ids first.
  EXPECT_EQ(got.tokens[2], 4);
  const std::vector<int32_t> want_top = {4, 9, 14, 19, 24, 29};
  for (size_t j = 0; j < want_top.size(); ++j)
    EXPECT_EQ(record_of(got, 2)[1 + j].token_id, want_top[j]);
  EXPECT_NEAR(record_of(got, 2)[1].logprob, record_of(got, 2)[6].logprob, 0.0);
  // -0 and +0 are equal values, ordered by id.
  EXPECT_EQ(got.tokens[3], 1);
  const std::vector<int32_t> zeros = {1, 2, 4, 5, 0, 3};
  for (size_t j = 0; j < zeros.size(); ++j)
    EXPECT_EQ(record_of(got, 3)[1 + j].token_id, zeros[j]) << j;
}

// Rows too flat for the shared-memory ranking (more than 1,024 logits within 0.5 of the
// maximum) take the radix select: all-equal logits list the lowest ids, and N(0, 0.01)
// logits the host's top 20.
TEST_F(CudaLogprobsTest, FlatRowsTakeTheRadixSelect) {
  std::vector<float> logits = random_logits(3, kQwenVocab, 41, 0.01f);
  std::fill(logits.begin(), logits.begin() + kQwenVocab, 1.0f);
  Batch batch(kQwenVocab);
  for (int r = 0; r < 3; ++r) {
    SamplingParams p;
    p.logprobs = kMaxDeviceTopLogprobs;
    if (r == 2) {
      p.temperature = 0.7f;
      p.top_k = 30;
    }
    batch.params.push_back(p);
  }
  const Sampled got = sample(logits, kQwenVocab, batch.build({{}, {}, {}}));
  for (int j = 0; j < kMaxDeviceTopLogprobs; ++j) {
    EXPECT_EQ(record_of(got, 0)[1 + static_cast<size_t>(j)].token_id, j);
    EXPECT_NEAR(record_of(got, 0)[1 + static_cast<size_t>(j)].logprob, -std::log(static_cast<double>(kQwenVocab)),
                1e-4);
  }
  EXPECT_EQ(got.tokens[0], 0);
  EXPECT_GE(expect_records(logits, kQwenVocab, got, batch.params), 60u);
}

// The draw depends on the row, its seed and step, never on whether it reports
// log-probabilities (which work on a copy of the row).
TEST_F(CudaLogprobsTest, LogprobsNeverChangeTheToken) {
  constexpr size_t kRows = 64;
  std::vector<std::vector<int32_t>> outputs;
  Batch with = mixed_batch(kRows, kQwenVocab, 9, &outputs);
  Batch without(kQwenVocab);
  without.params = with.params;
  for (SamplingParams& p : without.params)
    p.logprobs = -1;
  const std::vector<float> logits = random_logits(kRows, kQwenVocab, 23, 2.0f);
  const Sampled a = sample(logits, kQwenVocab, with.build(outputs));
  const Sampled b = sample(logits, kQwenVocab, without.build(outputs));
  EXPECT_EQ(a.tokens, b.tokens);
  int random_rows = 0;
  for (size_t r = 0; r < kRows; ++r)
    random_rows += with.params[r].is_greedy() ? 0 : 1;
  EXPECT_GE(random_rows, 30);
}

// The device's bias is the row biased beforehand: the same seed draws the same token.
TEST_F(CudaLogprobsTest, BiasDrawsAsTheBiasedRow) {
  constexpr size_t kRows = 32;
  constexpr int64_t kVocab = 5000;
  std::mt19937 rng(3);
  std::uniform_int_distribution<int32_t> token(0, kVocab - 1);
  const std::vector<float> logits = random_logits(kRows, kVocab, 29, 1.0f);
  std::vector<float> biased = logits;
  Batch with(kVocab);
  Batch plain(kVocab);
  int favoured = 0;
  std::vector<int32_t> boosted(kRows);
  for (size_t r = 0; r < kRows; ++r) {
    SamplingParams p;
    p.temperature = 1.0f;
    p.top_p = r % 2 == 0 ? 1.0f : 0.95f;
    plain.params.push_back(p);
    boosted[r] = token(rng);
    p.logit_bias = {{boosted[r], 12.0f}, {token(rng), -100.0f}, {token(rng), 0.5f}};
    for (const auto& [t, bias] : p.logit_bias)
      biased[r * kVocab + static_cast<size_t>(t)] += bias;
    with.params.push_back(p);
  }
  const std::vector<std::vector<int32_t>> none(kRows);
  const Sampled a = sample(logits, kVocab, with.build(none));
  const Sampled b = sample(biased, kVocab, plain.build(none));
  EXPECT_EQ(a.tokens, b.tokens);
  for (size_t r = 0; r < kRows; ++r)
    favoured += a.tokens[r] == boosted[r] ? 1 : 0;
  EXPECT_GT(favoured, static_cast<int>(kRows) / 2);  // +12 over N(0, 1) logits of 5,000: ~95%
}

TEST_F(CudaLogprobsTest, BadBiasAndRecordsAreInvalidArgument) {
  constexpr int64_t kVocab = 100;
  const std::vector<float> logits = random_logits(2, kVocab, 61, 3.0f);
  auto buf = gpu_->allocate(logits.size() * sizeof(float));
  ASSERT_TRUE(buf.ok());
  ASSERT_TRUE(gpu_->copy_to_device(buf->data(), logits.data(), logits.size() * sizeof(float)).ok());
  const TensorView t = buf->view(DType::kF32, {2, kVocab});
  std::vector<int32_t> tokens(2);
  std::vector<DeviceSamplingRow> rows(2);
  const auto bias = [&](std::vector<int32_t> o, std::vector<int32_t> ids, std::vector<float> values) {
    DeviceSamplingBatch b;
    b.rows = rows;
    b.bias_offsets = o;
    b.bias_tokens = ids;
    b.bias_values = values;
    return gpu_->sample(tokens, t, b).code();
  };
  EXPECT_EQ(bias({0, 1, 3}, {3, 4, 5}, {1, 2, 3}), StatusCode::kOk);
  EXPECT_EQ(bias({0, 1, 3}, {3, 4, 4}, {1, 2, 3}), StatusCode::kInvalidArgument);     // a token twice
  EXPECT_EQ(bias({0, 1, 3}, {3, 4, 100}, {1, 2, 3}), StatusCode::kInvalidArgument);   // outside V
  EXPECT_EQ(bias({0, 1, 3}, {-1, 4, 5}, {1, 2, 3}), StatusCode::kInvalidArgument);    // outside V
  EXPECT_EQ(bias({0, 1, 3}, {3, 4, 5}, {1, kInf, 3}), StatusCode::kInvalidArgument);  // not finite
  EXPECT_EQ(bias({0, 1, 3}, {3, 4, 5}, {1, 2}), StatusCode::kInvalidArgument);        // values size
  EXPECT_EQ(bias({0, 3}, {3, 4, 5}, {1, 2, 3}), StatusCode::kInvalidArgument);        // not rows + 1
  EXPECT_EQ(bias({0, 2, 1}, {3, 4}, {1, 2}), StatusCode::kInvalidArgument);           // decreasing
  EXPECT_EQ(bias({}, {3}, {1}), StatusCode::kInvalidArgument);                        // no offsets
  rows[1].logprobs = kMaxDeviceTopLogprobs + 1;
  DeviceSamplingBatch b;
  b.rows = rows;
  EXPECT_EQ(gpu_->sample(tokens, t, b).code(), StatusCode::kInvalidArgument);
  rows[1].logprobs = -2;
  EXPECT_EQ(gpu_->sample(tokens, t, b).code(), StatusCode::kInvalidArgument);
  // A record span of the wrong size for a sample with log-probabilities.
  rows[1].logprobs = 3;
  auto pending = gpu_->sample_async(t, b);
  ASSERT_TRUE(pending.ok());
  EXPECT_TRUE(pending->logprobs);
  std::vector<DeviceTokenLogprob> short_records(kLogprobsRecord);
  EXPECT_EQ(gpu_->wait_sampled(*pending, tokens, short_records).code(), StatusCode::kInvalidArgument);
  std::vector<DeviceTokenLogprob> records(2 * kLogprobsRecord);
  EXPECT_TRUE(gpu_->wait_sampled(*pending, tokens, records).ok());
  EXPECT_EQ(records[kLogprobsRecord].token_id, tokens[1]);
  EXPECT_TRUE(gpu_->synchronize().ok());
}

// Not a correctness test: one sample() call of 1, 64 and 256 rows of 151,936 greedy and
// random logits, without and with 5 top log-probabilities. Printed; never fails on time.
TEST_F(CudaLogprobsTest, PrintsSampleTimes) {
  for (const size_t rows : {size_t{1}, size_t{64}, size_t{256}}) {
    const std::vector<float> logits = random_logits(rows, kQwenVocab, 71, 2.0f);
    auto buf = gpu_->allocate(logits.size() * sizeof(float));
    ASSERT_TRUE(buf.ok());
    const TensorView t = buf->view(DType::kF32, {static_cast<int64_t>(rows), kQwenVocab});
    for (const float temperature : {0.0f, 0.8f}) {
      for (const int32_t logprobs : {-1, 5}) {
        std::vector<DeviceSamplingRow> params(rows);
        for (DeviceSamplingRow& p : params) {
          p.temperature = temperature;
          p.logprobs = logprobs;
        }
        DeviceSamplingBatch b;
        b.rows = params;
        std::vector<int32_t> tokens(rows);
        std::vector<DeviceTokenLogprob> records(rows * kLogprobsRecord);
        double best = 1e30;
        for (int rep = 0; rep < 5; ++rep) {
          ASSERT_TRUE(gpu_->copy_to_device(buf->data(), logits.data(), logits.size() * sizeof(float)).ok());
          ASSERT_TRUE(gpu_->synchronize().ok());
          const auto start = std::chrono::steady_clock::now();
          ASSERT_TRUE(gpu_->sample(tokens, t, b, records).ok());
          best = std::min(best,
                          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
        }
        std::printf("[ sample ] %3zu rows, temperature %.1f, logprobs %2d: %7.1f us\n", rows, temperature, logprobs,
                    best);
      }
    }
  }
}

}  // namespace
}  // namespace bw
