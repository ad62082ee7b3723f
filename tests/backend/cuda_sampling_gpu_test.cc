// CudaBackend::sample on fresh random logits: greedy rows equal the host argmax (ties,
// -inf, NaN and +inf rows included); penalties + greedy equal the host Sampler's token for
// the same row and history; top_k = 1 and a tiny top_p are the argmax; under every mix of
// temperature / top-k / top-p / min-p the token lies in the set the definitions allow
// (computed here in double); on a 40-token vocabulary the frequencies of 20,000 draws
// match the renormalised probabilities; the same (seed, step) gives the same token, and a
// row's token does not depend on the other rows; the selections ranked in shared memory
// draw what the radix select draws; V = 151,936 works; bad input is
// InvalidArgument. A last test prints the time to sample 1, 64 and 256 rows of 151,936
// (never pass/fail on time). Skips when no CUDA device is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_kernels.h"
#include "runner/device_sampling.h"
#include "runner/sampler.h"
#include "support/logit_rows.h"

namespace bw {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kQwenVocab = 151936;

class CudaSamplingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto b = CudaBackend::create({});
    if (!b.ok()) GTEST_SKIP() << "no CUDA device: " << b.status().to_string();
    gpu_ = std::move(*b);
  }

  // A device copy of `logits` ([rows, vocab]).
  TensorView upload(const std::vector<float>& logits, int64_t vocab) {
    auto buf = gpu_->allocate(logits.size() * sizeof(float));
    EXPECT_TRUE(buf.ok());
    EXPECT_TRUE(gpu_->copy_to_device(buf->data(), logits.data(), logits.size() * sizeof(float)).ok());
    TensorView v = buf->view(DType::kF32, {static_cast<int64_t>(logits.size()) / vocab, vocab});
    buffers_.push_back(std::move(*buf));
    return v;
  }

  // The tokens sampled from `logits` [rows, vocab] under `batch` (fresh device copy).
  std::vector<int32_t> sample(const std::vector<float>& logits, int64_t vocab, const DeviceSamplingBatch& batch) {
    TensorView t = upload(logits, vocab);
    std::vector<int32_t> tokens(static_cast<size_t>(t.dim(0)), -7);
    const Status s = gpu_->sample(tokens, t, batch);
    EXPECT_TRUE(s.ok()) << s.to_string();
    buffers_.clear();
    return tokens;
  }

  std::unique_ptr<CudaBackend> gpu_;
  std::vector<DeviceBuffer> buffers_;
};

using test::random_logits;
using test::row_of;

DeviceSamplingBatch rows_only(const std::vector<DeviceSamplingRow>& rows) {
  DeviceSamplingBatch b;
  b.rows = rows;
  return b;
}

DeviceSamplingRow random_row(float temperature, int32_t top_k, float top_p, float min_p, uint64_t seed, uint64_t step) {
  DeviceSamplingRow r;
  r.temperature = temperature;
  r.top_k = top_k;
  r.top_p = top_p;
  r.min_p = min_p;
  r.seed = seed;
  r.step = step;
  return r;
}

// The tokens (and records) `backend` samples from a copy of `logits` ([rows, vocab] on the
// host) under `batch`.
std::vector<int32_t> sample_copy(CudaBackend& backend, const std::vector<float>& logits, int64_t vocab,
                                 const DeviceSamplingBatch& batch, std::vector<DeviceTokenLogprob>* records) {
  const size_t rows = batch.rows.size();
  std::vector<int32_t> tokens(rows, -7);
  records->assign(rows * kLogprobsRecord, DeviceTokenLogprob{-9, 9.0f});
  auto buf = backend.allocate(logits.size() * sizeof(float));
  EXPECT_TRUE(buf.ok());
  if (!buf.ok()) return tokens;
  EXPECT_TRUE(backend.copy_to_device(buf->data(), logits.data(), logits.size() * sizeof(float)).ok());
  const Status s = backend.sample(tokens, buf->view(DType::kF32, {static_cast<int64_t>(rows), vocab}), batch, *records);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return tokens;
}

// Backends that split the rows of every call they can (BW_CUDA_SAMPLE_SPLIT=all) and of
// none (=0).
struct SplitAndPerRow {
  std::unique_ptr<CudaBackend> split, per_row;
  static Result<SplitAndPerRow> create() {
    SplitAndPerRow out;
    setenv("BW_CUDA_SAMPLE_SPLIT", "all", 1);
    auto split = CudaBackend::create({});
    setenv("BW_CUDA_SAMPLE_SPLIT", "0", 1);
    auto per_row = CudaBackend::create({});
    unsetenv("BW_CUDA_SAMPLE_SPLIT");
    RETURN_IF_ERROR(split.status());
    RETURN_IF_ERROR(per_row.status());
    out.split = std::move(*split);
    out.per_row = std::move(*per_row);
    return out;
  }

  // Samples copies of `logits` ([rows, vocab]) under `params` on both: the call must take
  // the split path, and both must give the same tokens and records (log-probabilities up
  // to the log-normaliser's rounding). Returns the tokens, and in *done the split path's
  // flags (1: it sampled the row itself).
  std::vector<int32_t> sample_both(const std::vector<float>& logits, int64_t vocab,
                                   const std::vector<DeviceSamplingRow>& params, std::vector<int32_t>* done) const {
    const DeviceSamplingBatch batch = rows_only(params);
    std::vector<DeviceTokenLogprob> split_records, per_row_records;
    const int64_t before = cuda::split_sample_launches();
    const std::vector<int32_t> tokens = sample_copy(*split, logits, vocab, batch, &split_records);
    EXPECT_EQ(cuda::split_sample_launches() - before, 1) << "the call did not take the split path";
    auto flags = split->last_split_rows_done();
    EXPECT_TRUE(flags.ok()) << flags.status().to_string();
    done->assign(params.size(), -1);
    if (flags.ok() && flags->size() == params.size()) *done = *flags;
    EXPECT_EQ(tokens, sample_copy(*per_row, logits, vocab, batch, &per_row_records));
    for (size_t r = 0; r < params.size(); ++r) {
      for (int j = 0; j <= params[r].logprobs; ++j) {
        const size_t e = r * kLogprobsRecord + static_cast<size_t>(j);
        EXPECT_EQ(split_records[e].token_id, per_row_records[e].token_id) << "row " << r << " entry " << j;
        EXPECT_NEAR(split_records[e].logprob, per_row_records[e].logprob, 1e-4) << "row " << r << " entry " << j;
      }
    }
    return tokens;
  }
};

// The kept set and its renormalised probabilities under the definitions, in double:
// temperature, then min-p (relative to the top token), top-k (by logit, ties by lower id),
// top-p (the smallest best-first prefix reaching top_p of the kept mass). `allowed` widens
// each boundary by a relative `slack` for float rounding on the device.
struct Reference {
  std::vector<double> prob;   // renormalised, 0 outside the kept set
  std::vector<char> allowed;  // within slack of the kept set
  size_t num_kept = 0;
};

Reference reference(std::span<const float> x, const DeviceSamplingRow& p, double slack) {
  const size_t n = x.size();
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return x[static_cast<size_t>(a)] > x[static_cast<size_t>(b)] ||
           (x[static_cast<size_t>(a)] == x[static_cast<size_t>(b)] && a < b);
  });
  const double max = x[static_cast<size_t>(order[0])];
  const size_t k = p.top_k > 0 ? std::min(n, static_cast<size_t>(p.top_k)) : n;
  const double kth = x[static_cast<size_t>(order[k - 1])];
  std::vector<double> rel(n);
  for (size_t i = 0; i < n; ++i)
    rel[i] = std::exp((static_cast<double>(x[i]) - max) / static_cast<double>(p.temperature));
  // Strict set, best first.
  std::vector<int32_t> kept;
  double total = 0.0;
  for (size_t j = 0; j < k; ++j) {
    const auto id = static_cast<size_t>(order[j]);
    if (rel[id] >= p.min_p && rel[id] > 0.0) {
      kept.push_back(order[j]);
      total += rel[id];
    }
  }
  Reference ref;
  ref.prob.assign(n, 0.0);
  ref.allowed.assign(n, 0);
  const double target = static_cast<double>(p.top_p) * total;
  double cumulative = 0.0;
  double kept_mass = 0.0;
  std::vector<int32_t> strict;
  for (const int32_t id : kept) {
    const double before = cumulative;
    cumulative += rel[static_cast<size_t>(id)];
    if (before < target) {
      strict.push_back(id);
      kept_mass += rel[static_cast<size_t>(id)];
    }
    if (before < target * (1.0 + slack) + 1e-12) ref.allowed[static_cast<size_t>(id)] = 1;
  }
  // Near-boundary tokens outside the strict prefix (ties of the k-th logit, min-p edge).
  double mass_before = 0.0;
  for (size_t j = 0; j < n; ++j) {
    const auto id = static_cast<size_t>(order[j]);
    const bool in_k = static_cast<double>(x[id]) >= kth;
    const bool in_min_p = rel[id] >= static_cast<double>(p.min_p) * (1.0 - slack) && rel[id] > 0.0;
    if (in_k && in_min_p && mass_before < target * (1.0 + slack) + 1e-12) ref.allowed[id] = 1;
    if (in_k && in_min_p) mass_before += rel[id];
  }
  for (const int32_t id : strict)
    ref.prob[static_cast<size_t>(id)] = rel[static_cast<size_t>(id)] / kept_mass;
  ref.num_kept = strict.size();
  return ref;
}

TEST_F(CudaSamplingTest, GreedyEqualsHostArgmax) {
  for (int64_t vocab : {int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{4099}, kQwenVocab}) {
    const size_t rows = vocab == kQwenVocab ? 9 : 37;
    std::vector<float> logits = random_logits(rows, vocab, static_cast<uint32_t>(vocab));
    std::mt19937 rng(static_cast<uint32_t>(vocab) + 1);
    std::vector<DeviceSamplingRow> params(rows);
    for (size_t r = 0; r < rows; ++r) {
      float* x = logits.data() + r * static_cast<size_t>(vocab);
      const auto v = static_cast<size_t>(vocab);
      const size_t top = static_cast<size_t>(argmax({x, v}));
      switch (r % 6) {
        case 1:  // ties with the maximum, before and after it
          for (int j = 0; j < 3; ++j)
            x[rng() % v] = x[top];
          break;
        case 2:  // all -inf
          std::fill(x, x + v, -kInf);
          break;
        case 3:  // NaNs never win
          for (size_t i = 0; i < v; i += 3)
            x[i] = std::numeric_limits<float>::quiet_NaN();
          break;
        case 4:  // +inf, twice
          x[rng() % v] = kInf;
          x[rng() % v] = kInf;
          break;
        default:
          break;
      }
      params[r].temperature = r % 5 == 0 ? 1e-40f : 0.0f;  // 1 / 1e-40 overflows: greedy
      params[r].top_k = static_cast<int32_t>(r % 3);       // ignored when greedy
      params[r].seed = r;
    }
    const std::vector<int32_t> got = sample(logits, vocab, rows_only(params));
    for (size_t r = 0; r < rows; ++r)
      EXPECT_EQ(got[r], argmax(row_of(logits, vocab, r))) << "vocab " << vocab << " row " << r;
  }
}

TEST_F(CudaSamplingTest, PenaltiesWithGreedyEqualTheHostSampler) {
  constexpr int64_t kVocab = 5000;
  constexpr size_t kRows = 96;
  const std::vector<float> logits = random_logits(kRows, kVocab, 11, 2.0f);
  std::mt19937 rng(12);
  std::vector<SamplingParams> params(kRows);
  std::vector<std::vector<int32_t>> prompts(kRows), outputs(kRows);
  DeviceSamplingBatchBuilder builder(kVocab);
  int changed = 0;
  std::vector<int32_t> want(kRows);
  for (size_t r = 0; r < kRows; ++r) {
    SamplingParams& p = params[r];
    switch (r % 4) {
      case 0:
        p.repetition_penalty = 1.7f;
        break;
      case 1:
        p.presence_penalty = 1.2f;
        break;
      case 2:
        p.frequency_penalty = 0.6f;
        break;
      default:
        p.repetition_penalty = 0.7f;
        p.presence_penalty = -0.4f;
        p.frequency_penalty = 0.9f;
        break;
    }
    // Histories that hit the top tokens, so the penalties change the argmax.
    std::span<const float> row = row_of(logits, kVocab, r);
    std::vector<int32_t> order(static_cast<size_t>(kVocab));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 8, order.end(),
                      [&](int32_t a, int32_t b) { return row[static_cast<size_t>(a)] > row[static_cast<size_t>(b)]; });
    prompts[r].resize(r % 50);
    outputs[r].resize(r % 37);
    for (int32_t& t : prompts[r])
      t = rng() % 2 == 0 ? order[rng() % 8] : static_cast<int32_t>(rng() % kVocab);
    for (int32_t& t : outputs[r])
      t = rng() % 2 == 0 ? order[rng() % 8] : static_cast<int32_t>(rng() % kVocab);
    builder.add_row(p, 5, outputs[r].size(), prompts[r], outputs[r]);
    Sampler sampler(p, 5);
    std::vector<float> host_row(row.begin(), row.end());
    want[r] = sampler.sample(host_row, prompts[r], outputs[r]).token_id;
    if (want[r] != order[0]) ++changed;
  }
  const std::vector<int32_t> got = sample(logits, kVocab, builder.batch());
  EXPECT_EQ(got, want);
  EXPECT_GT(changed, 20);  // the penalties mattered
}

TEST_F(CudaSamplingTest, TopK1AndTinyTopPAreTheArgmax) {
  constexpr int64_t kVocab = 32000;
  constexpr size_t kRows = 40;
  std::vector<float> logits = random_logits(kRows, kVocab, 21);
  std::vector<DeviceSamplingRow> params;
  for (size_t r = 0; r < kRows; ++r) {
    float* x = logits.data() + r * kVocab;
    const size_t top = static_cast<size_t>(argmax({x, static_cast<size_t>(kVocab)}));
    if (r % 4 == 1) x[(top + 977) % kVocab] = x[top];  // a tie, before or after
    if (r % 2 == 0) {
      params.push_back(random_row(1.3f, 1, 1.0f, 0.0f, r, r));
    } else {
      params.push_back(random_row(1.3f, 0, 1e-7f, 0.0f, r, r));
    }
  }
  const std::vector<int32_t> got = sample(logits, kVocab, rows_only(params));
  for (size_t r = 0; r < kRows; ++r)
    EXPECT_EQ(got[r], argmax(row_of(logits, kVocab, r))) << "row " << r;
}

TEST_F(CudaSamplingTest, TokensStayInTheAllowedSet) {
  constexpr int64_t kVocab = 32000;
  const float temperatures[] = {0.5f, 1.0f, 1.7f};
  const int32_t top_ks[] = {0, 2, 20, 1000};
  const float top_ps[] = {1.0f, 0.9f, 0.5f, 0.1f};
  const float min_ps[] = {0.0f, 0.05f, 0.3f};
  std::vector<DeviceSamplingRow> params;
  for (float t : temperatures)
    for (int32_t k : top_ks)
      for (float p : top_ps)
        for (float m : min_ps)
          for (uint64_t step = 0; step < 3; ++step)
            params.push_back(random_row(t, k, p, m, 99, step));
  const size_t rows = params.size();
  // Scale 1.5: many plausible tokens, so the cuts matter.
  const std::vector<float> logits = random_logits(rows, kVocab, 31, 1.5f);
  const std::vector<int32_t> got = sample(logits, kVocab, rows_only(params));
  size_t not_argmax = 0;
  for (size_t r = 0; r < rows; ++r) {
    ASSERT_GE(got[r], 0);
    ASSERT_LT(got[r], kVocab);
    const Reference ref = reference(row_of(logits, kVocab, r), params[r], 1e-4);
    const DeviceSamplingRow& p = params[r];
    EXPECT_TRUE(ref.allowed[static_cast<size_t>(got[r])])
        << "row " << r << " t " << p.temperature << " k " << p.top_k << " p " << p.top_p << " min_p " << p.min_p
        << ": token " << got[r] << " outside the " << ref.num_kept << " kept";
    if (got[r] != argmax(row_of(logits, kVocab, r))) ++not_argmax;
  }
  EXPECT_GT(not_argmax, rows / 4);  // real draws, not argmax
}

// Ties at the top-k / top-p boundary keep the lowest ids, as the host Sampler's order
// (value descending, then id) does: on a flat row, top_k = 5 and a top_p worth 4.5 tokens
// both keep ids 0..4, and all five get drawn.
TEST_F(CudaSamplingTest, BoundaryTiesKeepTheLowestIds) {
  constexpr int64_t kVocab = 1000;
  constexpr size_t kRows = 400;
  std::vector<float> logits(kRows * kVocab, 0.25f);
  std::vector<DeviceSamplingRow> params;
  for (size_t r = 0; r < kRows; ++r) {
    if (r % 2 == 0) {
      params.push_back(random_row(1.0f, 5, 1.0f, 0.0f, 3, r));
    } else {
      params.push_back(random_row(1.0f, 0, 0.0045f, 0.0f, 3, r));
    }
  }
  const std::vector<int32_t> got = sample(logits, kVocab, rows_only(params));
  std::vector<int> seen_k(5, 0), seen_p(5, 0);
  for (size_t r = 0; r < kRows; ++r) {
    ASSERT_GE(got[r], 0) << "row " << r;
    ASSERT_LT(got[r], 5) << "row " << r;
    ++(r % 2 == 0 ? seen_k : seen_p)[static_cast<size_t>(got[r])];
  }
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_GT(seen_k[i], 10) << "top-k token " << i;
    EXPECT_GT(seen_p[i], 10) << "top-p token " << i;
  }
}

// Frequencies of 20,000 draws (one row each, steps 0..19,999) on 40 tokens against the
// renormalised kept probabilities.
TEST_F(CudaSamplingTest, FrequenciesMatchTheKeptDistribution) {
  constexpr int64_t kVocab = 40;
  constexpr size_t kDraws = 20000;
  const std::vector<float> one = random_logits(1, kVocab, 41, 1.5f);
  std::vector<float> logits;
  logits.reserve(kDraws * kVocab);
  for (size_t i = 0; i < kDraws; ++i)
    logits.insert(logits.end(), one.begin(), one.end());
  const DeviceSamplingRow settings[] = {random_row(1.0f, 0, 1.0f, 0.0f, 7, 0), random_row(0.7f, 0, 0.9f, 0.0f, 8, 0),
                                        random_row(1.3f, 12, 1.0f, 0.02f, 9, 0),
                                        random_row(0.9f, 25, 0.8f, 0.05f, 10, 0)};
  for (const DeviceSamplingRow& setting : settings) {
    std::vector<DeviceSamplingRow> params(kDraws, setting);
    for (size_t i = 0; i < kDraws; ++i)
      params[i].step = i;
    const std::vector<int32_t> got = sample(logits, kVocab, rows_only(params));
    const Reference ref = reference(one, setting, 0.0);
    std::vector<double> freq(kVocab, 0.0);
    for (const int32_t t : got) {
      ASSERT_GE(t, 0);
      ASSERT_LT(t, kVocab);
      freq[static_cast<size_t>(t)] += 1.0 / kDraws;
    }
    double max_diff = 0.0;
    double chi2 = 0.0;
    for (size_t i = 0; i < kVocab; ++i) {
      max_diff = std::max(max_diff, std::abs(freq[i] - ref.prob[i]));
      if (ref.prob[i] == 0.0) {
        EXPECT_EQ(freq[i], 0.0) << "token " << i << " is outside the kept set";
      } else {
        const double expected = ref.prob[i] * kDraws;
        chi2 += (freq[i] * kDraws - expected) * (freq[i] * kDraws - expected) / expected;
      }
    }
    // chi-square with (kept - 1) degrees of freedom: mean dof, sd sqrt(2 dof); 6 sd is far
    // beyond chance, while a wrong temperature or cut gives thousands.
    const double dof = static_cast<double>(ref.num_kept) - 1.0;
    EXPECT_LT(max_diff, 0.015) << "t " << setting.temperature << " k " << setting.top_k << " p " << setting.top_p;
    EXPECT_LT(chi2, dof + 6.0 * std::sqrt(2.0 * std::max(dof, 1.0)) + 10.0)
        << "t " << setting.temperature << " kept " << ref.num_kept;
    EXPECT_GT(ref.num_kept, 3u);
  }
}

TEST_F(CudaSamplingTest, SameSeedAndStepSameTokenWhateverTheBatch) {
  constexpr int64_t kVocab = kQwenVocab;
  constexpr size_t kRows = 24;
  const std::vector<float> logits = random_logits(kRows, kVocab, 51, 2.0f);
  std::vector<DeviceSamplingRow> params;
  for (size_t r = 0; r < kRows; ++r) {
    switch (r % 4) {
      case 0:
        params.push_back(random_row(0.7f, 0, 0.9f, 0.0f, 1000 + r, 17));
        break;
      case 1:
        params.push_back(random_row(1.0f, 50, 1.0f, 0.0f, 1000 + r, 3));
        break;
      case 2:
        params.push_back(random_row(1.2f, 0, 1.0f, 0.01f, 1000 + r, 0));
        break;
      default:
        params.push_back(random_row(0.0f, 0, 1.0f, 0.0f, 1000 + r, 0));
        break;
    }
  }
  const std::vector<int32_t> first = sample(logits, kVocab, rows_only(params));
  const std::vector<int32_t> again = sample(logits, kVocab, rows_only(params));
  EXPECT_EQ(first, again);
  for (size_t r = 0; r < kRows; ++r) {
    if (params[r].temperature <= 0.0f) {
      EXPECT_EQ(first[r], argmax(row_of(logits, kVocab, r))) << "row " << r;
      continue;
    }
    const Reference ref = reference(row_of(logits, kVocab, r), params[r], 1e-4);
    EXPECT_TRUE(ref.allowed[static_cast<size_t>(first[r])]) << "row " << r;
  }
  // Each row alone, and rows 5..9 with other rows (reversed order) around them.
  for (size_t r : {size_t{0}, size_t{5}, size_t{10}, size_t{23}}) {
    const auto row = row_of(logits, kVocab, r);
    const std::vector<float> alone(row.begin(), row.end());
    const std::vector<DeviceSamplingRow> p = {params[r]};
    EXPECT_EQ(sample(alone, kVocab, rows_only(p))[0], first[r]) << "row " << r;
  }
  std::vector<float> mixed;
  std::vector<DeviceSamplingRow> mixed_params;
  for (size_t r = 9; r >= 5; --r) {
    const auto row = row_of(logits, kVocab, r);
    mixed.insert(mixed.end(), row.begin(), row.end());
    mixed_params.push_back(params[r]);
  }
  const std::vector<int32_t> got = sample(mixed, kVocab, rows_only(mixed_params));
  for (size_t j = 0; j < got.size(); ++j)
    EXPECT_EQ(got[j], first[9 - j]) << "row " << 9 - j;
  // Other seeds and steps draw other tokens (the row is spread: not the argmax every time).
  std::vector<DeviceSamplingRow> varied;
  std::vector<float> same_row;
  for (uint64_t i = 0; i < 32; ++i) {
    varied.push_back(random_row(1.0f, 0, 1.0f, 0.0f, i % 2 == 0 ? 1000 + i : 1000, i));
    const auto row = row_of(logits, kVocab, 1);
    same_row.insert(same_row.end(), row.begin(), row.end());
  }
  const std::vector<int32_t> draws = sample(same_row, kVocab, rows_only(varied));
  std::vector<int32_t> distinct = draws;
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  EXPECT_GT(distinct.size(), 8u);
}

// The selections ranked in shared memory (top-k, top-p and the draw among the kept tokens
// when the logits near the maximum fit) give the tokens of the radix select and the row
// walk (BW_CUDA_SAMPLE_RADIX=1): on peaked rows (the shared paths), flat rows (the radix
// select), rows with ties at the boundary, under every mix of top-k, top-p and min-p.
TEST_F(CudaSamplingTest, SharedMemorySelectionsDrawAsTheRadixSelect) {
  ASSERT_EQ(setenv("BW_CUDA_SAMPLE_RADIX", "1", 1), 0);
  auto radix_backend = CudaBackend::create({});
  unsetenv("BW_CUDA_SAMPLE_RADIX");
  ASSERT_TRUE(radix_backend.ok()) << radix_backend.status().to_string();
  for (const int64_t vocab : {kQwenVocab, int64_t{3000}}) {
    SCOPED_TRACE(vocab);
    constexpr size_t kRows = 96;
    std::vector<float> logits = random_logits(kRows, vocab, 83, 1.0f);
    std::mt19937 rng(7);
    std::uniform_int_distribution<int64_t> token(0, vocab - 1);
    std::uniform_real_distribution<float> boost(2.0f, 9.0f);
    std::vector<DeviceSamplingRow> params;
    for (size_t r = 0; r < kRows; ++r) {
      float* row = logits.data() + r * static_cast<size_t>(vocab);
      const size_t shape = r % 3;  // peaked, flat, peaked with ties
      if (shape != 1) {
        for (int j = 0; j < 40; ++j)
          row[token(rng)] += boost(rng);
      } else {
        for (int64_t i = 0; i < vocab; ++i)
          row[i] *= 0.05f;
      }
      if (shape == 2) {
        for (int64_t i = 0; i < vocab; ++i)
          row[i] = std::round(row[i] * 2.0f) / 2.0f;
      }
      const size_t mix = (r / 3) % 8;
      const float temperature = 0.5f + 0.1f * static_cast<float>(r % 7);
      const int32_t top_k = mix == 0 || mix == 3 ? 40 : mix == 4 ? 2000 : mix == 5 ? 3 : 0;
      const float top_p = mix == 1 || mix == 3 ? 0.9f : mix == 6 ? 0.5f : mix == 7 ? 0.99f : 1.0f;
      const float min_p = mix == 2 || mix == 7 ? 0.02f : 0.0f;
      params.push_back(random_row(temperature, top_k, top_p, min_p, 500 + r, r % 5));
    }
    const std::vector<int32_t> shared = sample(logits, vocab, rows_only(params));
    std::vector<int32_t> radix(kRows, -7);
    auto buf = (*radix_backend)->allocate(logits.size() * sizeof(float));
    ASSERT_TRUE(buf.ok());
    ASSERT_TRUE((*radix_backend)->copy_to_device(buf->data(), logits.data(), logits.size() * sizeof(float)).ok());
    const Status s =
        (*radix_backend)
            ->sample(radix, buf->view(DType::kF32, {static_cast<int64_t>(kRows), vocab}), rows_only(params));
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_EQ(shared, radix);
    for (size_t r = 0; r < kRows; ++r) {
      if (r % 3 == 2) continue;  // (ties: BoundaryTiesKeepTheLowestIds checks those)
      const Reference ref = reference(row_of(logits, vocab, r), params[r], 1e-4);
      EXPECT_TRUE(ref.allowed[static_cast<size_t>(shared[r])]) << "row " << r;
    }
  }
}

// BW_CUDA_SAMPLE_SPLIT=all splits each row of a call over many blocks (cuda_sampling_split.cu;
// rows whose top-k, top-p or top-logprob candidates do not fit in shared memory fall back
// to one block a row); BW_CUDA_SAMPLE_SPLIT=0 samples them one block a row. Both must give
// the same tokens and records: greedy and temperature rows, min-p, top-k, top-p and both,
// a logit bias and penalties, 0 / 5 / 20 top log-probabilities, on peaked (candidates fit),
// flat (they may not) and tied rows, with -inf, NaN and rows with no finite logit, for one
// row, a few and more rows than the SMs take two blocks of. Rows that select must be seen
// both sampled by the split path and left to one block a row.
TEST_F(CudaSamplingTest, SplitRowsSampleAsOneBlockARow) {
  auto backends = SplitAndPerRow::create();
  ASSERT_TRUE(backends.ok()) << backends.status().to_string();
  CudaBackend& split_backend = *backends->split;
  CudaBackend& per_row_backend = *backends->per_row;
  int selecting_split = 0, records_split = 0, left_to_one_block = 0;
  for (const int64_t vocab : {kQwenVocab, int64_t{3001}, int64_t{37}}) {
    for (const size_t rows : {size_t{1}, size_t{40}, size_t{300}}) {
      SCOPED_TRACE(testing::Message() << "vocab " << vocab << ", " << rows << " rows");
      std::vector<float> logits = random_logits(rows, vocab, 91 + rows, 1.0f);
      std::mt19937 rng(static_cast<uint32_t>(vocab + rows));
      std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab - 1));
      DeviceSamplingBatchBuilder builder(vocab);
      bool any_penalty = false;
      for (size_t r = 0; r < rows; ++r) {
        float* row = logits.data() + r * static_cast<size_t>(vocab);
        const size_t shape = (r + rows) % 5;  // peaked, flat, tied, with -inf and NaN, no finite logit
        if (shape == 0 || shape == 3) {
          for (int j = 0; j < 30; ++j)
            row[token(rng)] += 6.0f;
        }
        if (shape == 1) {
          for (int64_t i = 0; i < vocab; ++i)
            row[i] *= 0.05f;
        }
        if (shape == 2) {
          for (int64_t i = 0; i < vocab; ++i)
            row[i] = std::round(row[i] * 2.0f) / 2.0f;
        }
        if (shape == 3) {
          for (int j = 0; j < 10; ++j) {
            row[token(rng)] = -kInf;
            row[token(rng)] = std::numeric_limits<float>::quiet_NaN();
          }
        }
        if (shape == 4) std::fill(row, row + vocab, r % 2 == 0 ? -kInf : std::numeric_limits<float>::quiet_NaN());
        SamplingParams p;
        const size_t mix = rows == 1 ? 2 : (r / 5) % 8;
        p.temperature = mix == 0 ? 0.0f : 0.4f + 0.3f * static_cast<float>(r % 4);
        if (mix == 2 || mix == 5) p.min_p = 0.05f;
        if (mix == 3 || mix == 5 || (mix == 0 && r % 2 == 1)) {
          p.repetition_penalty = 1.5f;
          p.frequency_penalty = 0.5f;
          any_penalty = true;
        }
        if (mix == 4 || mix == 5) p.logit_bias = {{token(rng), 3.0f}, {token(rng), -2.0f}};
        if (mix == 2 || mix == 6) p.top_p = r % 3 == 0 ? 0.5f : r % 3 == 1 ? 0.9f : 0.99f;
        if (mix == 5 || mix == 6 || mix == 7) p.top_k = r % 3 == 0 ? 3 : r % 3 == 1 ? 40 : 2000;
        // Log-probabilities (0, 5 or 20 top entries) on rows without a bias or penalties.
        if (!p.has_penalty() && p.logit_bias.empty() && r % 4 < 2) p.logprobs = r % 3 == 0 ? 0 : r % 3 == 1 ? 5 : 20;
        std::vector<int32_t> history(r % 7);
        for (int32_t& t : history)
          t = token(rng);
        builder.add_row(p, 1000 + r, r % 11, history, history);
      }
      const DeviceSamplingBatch& batch = builder.batch();
      const int64_t before = cuda::split_sample_launches();
      const auto sample_on = [&](CudaBackend& backend, std::vector<DeviceTokenLogprob>* records) {
        return sample_copy(backend, logits, vocab, batch, records);
      };
      std::vector<DeviceTokenLogprob> split_records, per_row_records;
      const std::vector<int32_t> split = sample_on(split_backend, &split_records);
      EXPECT_EQ(cuda::split_sample_launches() - before, 1) << "the call did not take the split path";
      auto done = split_backend.last_split_rows_done();
      ASSERT_TRUE(done.ok()) << done.status().to_string();
      ASSERT_EQ(done->size(), rows);
      for (size_t r = 0; r < rows; ++r) {
        const DeviceSamplingRow& p = batch.rows[r];
        const bool cut = p.temperature > 0.0f && ((p.top_k > 0 && p.top_k < vocab) || p.top_p < 1.0f);
        if ((*done)[r] == 0) ++left_to_one_block;
        if ((*done)[r] == 1 && cut) ++selecting_split;
        if ((*done)[r] == 1 && p.logprobs > 0) ++records_split;
      }
      const std::vector<int32_t> per_row = sample_on(per_row_backend, &per_row_records);
      EXPECT_EQ(cuda::split_sample_launches() - before, 1) << "BW_CUDA_SAMPLE_SPLIT=0 took the split path";
      EXPECT_EQ(split, per_row);
      // The records: the same tokens; log-probabilities up to the log-normaliser's rounding
      // (its sum runs in another order).
      int checked = 0;
      for (size_t r = 0; r < rows; ++r) {
        for (int j = 0; j <= std::max(batch.rows[r].logprobs, -1); ++j) {
          const DeviceTokenLogprob& a = split_records[r * kLogprobsRecord + static_cast<size_t>(j)];
          const DeviceTokenLogprob& b = per_row_records[r * kLogprobsRecord + static_cast<size_t>(j)];
          ASSERT_EQ(a.token_id, b.token_id) << "row " << r << " entry " << j;
          if (std::isfinite(b.logprob)) {
            EXPECT_NEAR(a.logprob, b.logprob, 1e-4) << "row " << r << " entry " << j;
          } else {
            EXPECT_EQ(a.logprob, b.logprob) << "row " << r << " entry " << j;
          }
          ++checked;
        }
      }
      EXPECT_GT(checked, 0);
      // The default dispatch: the same tokens whichever path it takes.
      std::vector<DeviceTokenLogprob> default_records;
      EXPECT_EQ(sample_on(*gpu_, &default_records), per_row);
      EXPECT_TRUE(any_penalty || rows == 1);
    }
  }
  EXPECT_GT(selecting_split, 50);
  EXPECT_GT(records_split, 50);
  EXPECT_GT(left_to_one_block, 10);
}

// Rows whose kept set ends between two of the prefilter's bounds, with more than 1,024
// logits inside the looser one: top-k rows whose k-th logit lies far below the maximum
// with the bulk of the row farther still (a trained model's confident rows), and top-p
// rows whose kept set ends among 600 tokens of probability 2e-3 (relative to the best)
// above 3,000 tail tokens of 2.6e-4, within one factor-16 floor. The split path refines
// a top-k row's gap (split_gather_refined_kernel) and finds a top-p row's cut by its radix
// select, so it samples every such row itself, with one block a row's tokens and records.
// Top-k: k = 5, 50 and 200 (the k-th logit 6, ~20 and ~20 below the maximum), alone and
// with top-p, min-p and top log-probabilities; top-p 0.6 and 0.7 at temperature 1; 1 and
// 16 rows. (Without either every such row falls back: the looser bound takes in the bulk
// or the tail.)
TEST_F(CudaSamplingTest, KeptSetsEndingBetweenBoundsStaySplit) {
  auto backends = SplitAndPerRow::create();
  ASSERT_TRUE(backends.ok()) << backends.status().to_string();
  struct Spread {
    int32_t k;   // 0: a top-p row
    float top;   // the best raised logit (the bulk is N(0, 1))
    float step;  // between raised logits; k + 10 of them
  };
  const Spread spreads[] = {{5, 10.0f, 1.5f}, {50, 28.0f, 0.4f}, {200, 25.0f, 0.1f}, {0, 0.0f, 0.0f}};
  const int64_t vocab = kQwenVocab;
  int sampled_rows = 0;
  std::vector<int32_t> distinct;
  for (const size_t rows : {size_t{1}, size_t{16}}) {
    for (uint32_t round = 0; round < 4; ++round) {
      SCOPED_TRACE(testing::Message() << rows << " rows, round " << round);
      std::vector<float> logits = random_logits(rows, vocab, 300 + round, 1.0f);
      std::mt19937 rng(400 + round);
      std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab - 1));
      std::uniform_real_distribution<float> jitter(-0.05f, 0.05f);
      std::vector<DeviceSamplingRow> params;
      for (size_t r = 0; r < rows; ++r) {
        const Spread& spread = spreads[(r + round) % 4];
        float* row = logits.data() + r * static_cast<size_t>(vocab);
        const size_t mix = (r / 4 + round) % 4;  // alone, with top-p (top-k rows), with min-p, with logprobs
        if (spread.k == 0) {
          for (int64_t i = 0; i < vocab; ++i)
            row[i] -= 30.0f;  // (a bulk of no mass)
          for (int j = 0; j < 3000; ++j)
            row[token(rng)] = std::log(2.6e-4f) + 0.4f * jitter(rng);
          for (int j = 0; j < 600; ++j)
            row[token(rng)] = std::log(2e-3f) + jitter(rng);
          row[token(rng)] = 0.0f;
          DeviceSamplingRow p = random_row(1.0f, 0, r % 2 == 0 ? 0.6f : 0.7f, 0.0f, 900 + r + 100 * round, r % 5);
          if (mix == 3) p.logprobs = 5;
          params.push_back(p);
          continue;
        }
        for (int32_t j = 0; j < spread.k + 10; ++j)
          row[token(rng)] = spread.top - spread.step * static_cast<float>(j);
        DeviceSamplingRow p = random_row(0.6f + 0.4f * static_cast<float>(r % 3), spread.k, mix == 1 ? 0.9f : 1.0f,
                                         mix == 2 ? 0.01f : 0.0f, 900 + r + 100 * round, r % 5);
        // (Top log-probabilities on the rows whose top 5 lie within a gap that fits: their
        // bound is not refined.)
        if (mix == 3 && spread.k >= 50) p.logprobs = 5;
        params.push_back(p);
      }
      std::vector<int32_t> done;
      const std::vector<int32_t> split = backends->sample_both(logits, vocab, params, &done);
      for (size_t r = 0; r < rows; ++r) {
        EXPECT_EQ(done[r], 1) << "row " << r << " (top-k " << params[r].top_k << ", top-p " << params[r].top_p
                              << ") was left to one block a row";
        sampled_rows += done[r] == 1 ? 1 : 0;
      }
      distinct.insert(distinct.end(), split.begin(), split.end());
    }
  }
  EXPECT_EQ(sampled_rows, 4 * (1 + 16));
  // (Draws, not the argmax every time: the rows keep many tokens.)
  std::sort(distinct.begin(), distinct.end());
  EXPECT_GT(std::unique(distinct.begin(), distinct.end()) - distinct.begin(), 20);
}

// Flat top-p rows, whose kept set (thousands of tokens) no prefilter bound holds: the split
// path finds the cut by its radix select (split_gather_kernel's first level, a second one
// when the first level's bin holds more than 1,024 tokens) and samples each row itself,
// with one block a row's tokens and records. Rows: N(0, 1) at temperature 1 (top-p 0.5 /
// 0.9 / 0.99, with min-p, with top log-probabilities), N(0, 0.05) at temperature 1.5 (every
// token above the top floor, the top token's probability 1 in the bracket), and a cluster
// of 3,000 tokens within 1e-4 of one logit where the cut falls (the first level's bin
// holds too many). Rows whose cut falls among 3,000 exact ties (no level separates them)
// are left to one block a row. 1 and 16 rows.
TEST_F(CudaSamplingTest, FlatTopPRowsTakeTheRadixSelect) {
  auto backends = SplitAndPerRow::create();
  ASSERT_TRUE(backends.ok()) << backends.status().to_string();
  const int64_t vocab = kQwenVocab;
  int radix_rows = 0, tied_rows = 0, all_rows = 0;
  std::vector<int32_t> distinct;
  for (const size_t rows : {size_t{1}, size_t{16}, size_t{256}}) {
    for (uint32_t round = 0; round < (rows > 16 ? 2u : 5u); ++round) {
      all_rows += static_cast<int>(rows);
      SCOPED_TRACE(testing::Message() << rows << " rows, round " << round);
      std::vector<float> logits = random_logits(rows, vocab, 500 + round, 1.0f);
      std::mt19937 rng(600 + round);
      std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab - 1));
      std::uniform_real_distribution<float> jitter(-1e-4f, 1e-4f);
      std::vector<DeviceSamplingRow> params;
      std::vector<char> tied;
      for (size_t r = 0; r < rows; ++r) {
        float* row = logits.data() + r * static_cast<size_t>(vocab);
        const size_t shape = (r + round) % 5;  // N(0, 1); N(0, 0.05); cluster; exact ties; N(0, 1) + records
        const uint64_t seed = 700 + r + 100 * round;
        DeviceSamplingRow p = random_row(1.0f, 0,
                                         r % 3 == 0   ? 0.5f
                                         : r % 3 == 1 ? 0.9f
                                                      : 0.99f,
                                         r % 4 == 3 ? 0.02f : 0.0f, seed, r % 7);
        if (shape == 1) {
          for (int64_t i = 0; i < vocab; ++i)
            row[i] *= 0.05f;
          p.temperature = 1.5f;
        }
        if (shape == 2 || shape == 3) {
          // The top token, 500 at -1, 3,000 at -2 (jittered, or exact ties), the rest at
          // -30: top-p 0.6 cuts inside the 3,000 (masses 1, 184, 406).
          for (int64_t i = 0; i < vocab; ++i)
            row[i] = -30.0f;
          for (int j = 0; j < 3000; ++j)
            row[token(rng)] = -2.0f + (shape == 2 ? jitter(rng) : 0.0f);
          for (int j = 0; j < 500; ++j)
            row[token(rng)] = -1.0f;
          row[token(rng)] = 0.0f;
          p.top_p = 0.6f;
          p.min_p = 0.0f;
        }
        if (shape == 4) p.logprobs = 5;
        params.push_back(p);
        tied.push_back(shape == 3 ? 1 : 0);
      }
      std::vector<int32_t> done;
      const std::vector<int32_t> split = backends->sample_both(logits, vocab, params, &done);
      for (size_t r = 0; r < rows; ++r) {
        EXPECT_EQ(done[r], tied[r] != 0 ? 0 : 1) << "row " << r << " (top-p " << params[r].top_p << ")";
        radix_rows += tied[r] == 0 && done[r] == 1 ? 1 : 0;
        tied_rows += tied[r];
      }
      distinct.insert(distinct.end(), split.begin(), split.end());
    }
  }
  EXPECT_EQ(radix_rows + tied_rows, all_rows);
  EXPECT_GT(tied_rows, 0);
  std::sort(distinct.begin(), distinct.end());
  EXPECT_GT(std::unique(distinct.begin(), distinct.end()) - distinct.begin(), 60);
}

// Sharp rows (64 tokens 8 to 24 above N(0, 2), PrintsSampleTimes' rows) under top-k 50,
// and confident ones: every fourth row's best token raised to 48 (its 50th logit ~36 below
// it, beyond the widest gap: the split path refines from 32 to 64 below the maximum), every
// eighth to 100 (88 below: left to one block a row). The split path samples every other row
// itself, with one block a row's tokens, at 64 and 256 rows (two chunks a row).
TEST_F(CudaSamplingTest, ConfidentTopKRowsStaySplit) {
  auto backends = SplitAndPerRow::create();
  ASSERT_TRUE(backends.ok()) << backends.status().to_string();
  const int64_t vocab = kQwenVocab;
  int confident = 0;
  for (const size_t rows : {size_t{64}, size_t{256}}) {
    SCOPED_TRACE(testing::Message() << rows << " rows");
    std::vector<float> logits = random_logits(rows, vocab, 71, 2.0f);
    std::mt19937 rng(72);
    rng.discard(rows * 20);
    std::vector<char> beyond(rows, 0);
    for (size_t r = 0; r < rows; ++r) {
      float* row = logits.data() + r * static_cast<size_t>(vocab);
      for (int j = 0; j < 64; ++j)
        row[rng() % vocab] += 24.0f - 0.25f * static_cast<float>(j);
      if (r % 4 == 3) {
        float* best = std::max_element(row, row + vocab);
        *best = r % 8 == 7 ? 100.0f : 48.0f;
        beyond[r] = r % 8 == 7 ? 1 : 0;
        confident += r % 8 == 3 ? 1 : 0;
      }
    }
    std::vector<DeviceSamplingRow> params;
    for (size_t r = 0; r < rows; ++r)
      params.push_back(random_row(0.8f, 50, 0.95f, 0.0f, r, 0));
    std::vector<int32_t> done;
    backends->sample_both(logits, vocab, params, &done);
    for (size_t r = 0; r < rows; ++r) {
      const std::span<const float> x = row_of(logits, vocab, r);
      std::vector<float> sorted(x.begin(), x.end());
      std::nth_element(sorted.begin(), sorted.begin() + 49, sorted.end(), std::greater<>());
      EXPECT_EQ(done[r], beyond[r] != 0 ? 0 : 1)
          << "row " << r << ": max " << *std::max_element(x.begin(), x.end()) << ", 50th " << sorted[49];
    }
  }
  EXPECT_GT(confident, 30);
}

// The default dispatch: calls of up to 256 rows that cut with top-p or top-k take the split
// path (one block a row takes as long as its slowest row: PrintsSampleTimes' "mixed" rows),
// larger ones one block a row.
TEST_F(CudaSamplingTest, CallsOfUpTo256CuttingRowsSplit) {
  if (std::getenv("BW_CUDA_SAMPLE_SPLIT") != nullptr) GTEST_SKIP() << "BW_CUDA_SAMPLE_SPLIT overrides the dispatch";
  const int64_t vocab = 4096;
  std::vector<DeviceTokenLogprob> records;
  for (const size_t rows : {size_t{200}, size_t{256}, size_t{257}}) {
    const std::vector<float> logits = random_logits(rows, vocab, 90 + static_cast<uint32_t>(rows), 1.0f);
    for (const bool top_k : {false, true}) {
      std::vector<DeviceSamplingRow> params;
      for (size_t r = 0; r < rows; ++r)
        params.push_back(random_row(0.8f, top_k ? 40 : 0, 0.9f, 0.0f, r, 0));
      const int64_t before = cuda::split_sample_launches();
      sample_copy(*gpu_, logits, vocab, rows_only(params), &records);
      EXPECT_EQ(cuda::split_sample_launches() - before, rows <= 256 ? 1 : 0)
          << rows << " rows, " << (top_k ? "top-k" : "top-p");
    }
  }
}

// Overlapped steps: two sample_async calls outstanding give what sample() gives, and
// select_tokens copies the named rows of a pending sample into a step's ids on the device
// (rows -1 or past the sample's rows leave the id as it was).
TEST_F(CudaSamplingTest, AsyncSamplesAndSelectedTokens) {
  const int64_t vocab = 4099;
  const size_t rows_a = 37, rows_b = 12;
  const std::vector<float> logits_a = random_logits(rows_a, vocab, 71);
  const std::vector<float> logits_b = random_logits(rows_b, vocab, 72);
  std::vector<DeviceSamplingRow> params_a(rows_a), params_b(rows_b);
  for (size_t r = 0; r < rows_a; ++r) {
    params_a[r].temperature = r % 2 == 0 ? 0.0f : 0.8f;
    params_a[r].seed = r;
  }
  const std::vector<int32_t> want_a = sample(logits_a, vocab, rows_only(params_a));
  const std::vector<int32_t> want_b = sample(logits_b, vocab, rows_only(params_b));

  TensorView a = upload(logits_a, vocab);
  TensorView b = upload(logits_b, vocab);
  auto pending_a = gpu_->sample_async(a, rows_only(params_a));
  ASSERT_TRUE(pending_a.ok()) << pending_a.status().to_string();
  auto pending_b = gpu_->sample_async(b, rows_only(params_b));
  ASSERT_TRUE(pending_b.ok()) << pending_b.status().to_string();

  // A step's ids [n]: random rows of sample a, some -1 or out of range (kept).
  const int64_t n = 50;
  std::mt19937 rng(3);
  std::vector<int32_t> rows(n), ids(n), want(n);
  for (int64_t i = 0; i < n; ++i) {
    ids[i] = 1000 + static_cast<int32_t>(i);
    rows[i] = i % 7 == 3 ? -1 : i % 11 == 5 ? static_cast<int32_t>(rows_a + i) : static_cast<int32_t>(rng() % rows_a);
    const bool taken = rows[i] >= 0 && rows[i] < static_cast<int32_t>(rows_a);
    want[i] = taken ? want_a[static_cast<size_t>(rows[i])] : ids[i];
  }
  auto ids_buf = gpu_->allocate(n * sizeof(int32_t));
  auto rows_buf = gpu_->allocate(n * sizeof(int32_t));
  ASSERT_TRUE(ids_buf.ok() && rows_buf.ok());
  ASSERT_TRUE(gpu_->copy_to_device(ids_buf->data(), ids.data(), n * sizeof(int32_t)).ok());
  ASSERT_TRUE(gpu_->copy_to_device(rows_buf->data(), rows.data(), n * sizeof(int32_t)).ok());
  const Status selected =
      gpu_->select_tokens(ids_buf->view(DType::kI32, {n}), *pending_a, rows_buf->view(DType::kI32, {n}));
  ASSERT_TRUE(selected.ok()) << selected.to_string();

  std::vector<int32_t> got_a(rows_a), got_b(rows_b);
  ASSERT_TRUE(gpu_->wait_sampled(*pending_a, got_a).ok());
  ASSERT_TRUE(gpu_->wait_sampled(*pending_b, got_b).ok());
  EXPECT_EQ(got_a, want_a);
  EXPECT_EQ(got_b, want_b);
  std::vector<int32_t> got_ids(n);
  ASSERT_TRUE(gpu_->copy_to_host(got_ids.data(), ids_buf->data(), n * sizeof(int32_t)).ok());
  EXPECT_EQ(got_ids, want);

  EXPECT_FALSE(gpu_->wait_sampled(*pending_a, std::span<int32_t>(got_b)).ok());  // wrong count
  EXPECT_FALSE(
      gpu_->select_tokens(ids_buf->view(DType::kI32, {n}), *pending_a, rows_buf->view(DType::kI32, {n - 1})).ok());
  buffers_.clear();
}

// An overlapped step samples before the host has its rows' newest tokens: the penalties
// count each row's pending token (read on the device from the previous sample's ids) as
// one more output occurrence, giving the tokens of the full history.
TEST_F(CudaSamplingTest, PendingTokenCountsAsOneMoreOutput) {
  constexpr int64_t kVocab = 5000;
  constexpr size_t kRows = 64;
  const std::vector<float> logits = random_logits(kRows, kVocab, 81, 2.0f);
  std::mt19937 rng(82);
  std::vector<SamplingParams> params(kRows);
  std::vector<std::vector<int32_t>> prompts(kRows), outputs(kRows);
  std::vector<int32_t> newest(kRows);
  for (size_t r = 0; r < kRows; ++r) {
    SamplingParams& p = params[r];
    if (r % 2 == 1) p.temperature = 0.9f;
    switch (r % 3) {
      case 0:
        p.frequency_penalty = 1.3f;
        break;
      case 1:
        p.presence_penalty = 1.8f;
        break;
      default:
        p.repetition_penalty = 2.5f;
        break;
    }
    // Newest tokens among the row's top ones, sometimes already in the history.
    std::span<const float> row = row_of(logits, kVocab, r);
    std::vector<int32_t> order(static_cast<size_t>(kVocab));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 4, order.end(),
                      [&](int32_t a, int32_t b) { return row[static_cast<size_t>(a)] > row[static_cast<size_t>(b)]; });
    prompts[r].resize(r % 9);
    outputs[r].resize(1 + r % 6);
    for (int32_t& t : prompts[r])
      t = rng() % 3 == 0 ? order[rng() % 4] : static_cast<int32_t>(rng() % kVocab);
    for (int32_t& t : outputs[r])
      t = rng() % 3 == 0 ? order[rng() % 4] : static_cast<int32_t>(rng() % kVocab);
    newest[r] = order[rng() % 2];
    outputs[r].back() = newest[r];
  }
  // Wanted: the full histories, one synchronous call. Also the histories without the
  // newest token, to show it matters.
  DeviceSamplingBatchBuilder full(kVocab), short_by_one(kVocab), pending(kVocab);
  // The pending sample: row k's argmax is the newest token of row (k * 5) % kRows.
  std::vector<float> one_hot(kRows * static_cast<size_t>(kVocab), 0.0f);
  std::vector<int32_t> pending_row_of(kRows);
  for (size_t k = 0; k < kRows; ++k) {
    const size_t r = (k * 5) % kRows;
    one_hot[k * static_cast<size_t>(kVocab) + static_cast<size_t>(newest[r])] = 1.0f;
    pending_row_of[r] = static_cast<int32_t>(k);
  }
  for (size_t r = 0; r < kRows; ++r) {
    const uint64_t step = outputs[r].size();
    std::vector<int32_t> placeholder = outputs[r];
    placeholder.back() = -1;
    full.add_row(params[r], 9 + r, step, prompts[r], outputs[r]);
    short_by_one.add_row(params[r], 9 + r, step, prompts[r], placeholder);
    pending.add_row(params[r], 9 + r, step, prompts[r], placeholder, pending_row_of[r]);
  }
  const std::vector<int32_t> want = sample(logits, kVocab, full.batch());
  const std::vector<int32_t> without = sample(logits, kVocab, short_by_one.batch());
  int differ = 0;
  for (size_t r = 0; r < kRows; ++r)
    differ += want[r] != without[r] ? 1 : 0;
  EXPECT_GT(differ, static_cast<int>(kRows / 4));

  std::vector<DeviceSamplingRow> greedy_rows(kRows);
  auto in_flight = gpu_->sample_async(upload(one_hot, kVocab), rows_only(greedy_rows));
  ASSERT_TRUE(in_flight.ok()) << in_flight.status().to_string();
  DeviceSamplingBatch batch = pending.batch();
  batch.pending = *in_flight;
  auto next = gpu_->sample_async(upload(logits, kVocab), batch);
  ASSERT_TRUE(next.ok()) << next.status().to_string();
  std::vector<int32_t> got_first(kRows), got(kRows);
  ASSERT_TRUE(gpu_->wait_sampled(*in_flight, got_first).ok());
  ASSERT_TRUE(gpu_->wait_sampled(*next, got).ok());
  for (size_t k = 0; k < kRows; ++k)
    ASSERT_EQ(got_first[k], newest[(k * 5) % kRows]) << k;
  EXPECT_EQ(got, want);
  buffers_.clear();
}

TEST_F(CudaSamplingTest, BadInputIsInvalidArgument) {
  constexpr int64_t kVocab = 100;
  const std::vector<float> logits = random_logits(2, kVocab, 61);
  TensorView t = upload(logits, kVocab);
  std::vector<int32_t> tokens(2);
  std::vector<DeviceSamplingRow> rows(2);
  const auto code = [&](std::span<int32_t> out, TensorView view, const DeviceSamplingBatch& b) {
    return gpu_->sample(out, view, b).code();
  };
  EXPECT_EQ(code(tokens, t, rows_only(rows)), StatusCode::kOk);
  // Shapes.
  TensorView bf16 = t;
  bf16.dtype = DType::kBF16;
  EXPECT_EQ(code(tokens, bf16, rows_only(rows)), StatusCode::kInvalidArgument);
  TensorView flat = t;
  flat.shape = Shape({2 * kVocab});
  EXPECT_EQ(code(tokens, flat, rows_only(rows)), StatusCode::kInvalidArgument);
  std::vector<int32_t> three(3);
  EXPECT_EQ(code(three, t, rows_only(rows)), StatusCode::kInvalidArgument);
  std::vector<DeviceSamplingRow> one(1);
  EXPECT_EQ(code(tokens, t, rows_only(one)), StatusCode::kInvalidArgument);
  // Parameters.
  const auto with = [&](auto&& edit) {
    std::vector<DeviceSamplingRow> r = rows;
    edit(r[1]);
    return code(tokens, t, rows_only(r));
  };
  EXPECT_EQ(with([](DeviceSamplingRow& r) { r.top_p = 0.0f; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](DeviceSamplingRow& r) { r.top_p = 1.5f; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](DeviceSamplingRow& r) { r.top_p = std::nanf(""); }), StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](DeviceSamplingRow& r) { r.min_p = 1.5f; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](DeviceSamplingRow& r) { r.min_p = -0.1f; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](DeviceSamplingRow& r) { r.temperature = std::nanf(""); }), StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](DeviceSamplingRow& r) { r.repetition_penalty = 0.0f; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](DeviceSamplingRow& r) { r.presence_penalty = kInf; }), StatusCode::kInvalidArgument);
  // A pending token without a pending sample to read it from.
  EXPECT_EQ(with([](DeviceSamplingRow& r) { r.pending_row = 0; }), StatusCode::kInvalidArgument);
  // The history.
  const std::vector<int32_t> offsets = {0, 1, 2}, ids = {3, 4}, counts = {0, 2};
  const auto history = [&](std::vector<int32_t> o, std::vector<int32_t> i, std::vector<int32_t> c) {
    DeviceSamplingBatch b = rows_only(rows);
    b.penalty_offsets = o;
    b.penalty_tokens = i;
    b.penalty_output_counts = c;
    return code(tokens, t, b);
  };
  EXPECT_EQ(history(offsets, ids, counts), StatusCode::kOk);
  EXPECT_EQ(history({0, 2}, ids, counts), StatusCode::kInvalidArgument);        // not rows + 1
  EXPECT_EQ(history({0, 2, 1}, ids, counts), StatusCode::kInvalidArgument);     // decreasing
  EXPECT_EQ(history({0, 1, 1}, ids, counts), StatusCode::kInvalidArgument);     // does not end at 2
  EXPECT_EQ(history(offsets, {3, 100}, counts), StatusCode::kInvalidArgument);  // id outside V
  EXPECT_EQ(history(offsets, {3, -1}, counts), StatusCode::kInvalidArgument);   // id outside V
  EXPECT_EQ(history(offsets, ids, {0, -2}), StatusCode::kInvalidArgument);      // negative count
  EXPECT_EQ(history(offsets, ids, {0}), StatusCode::kInvalidArgument);          // counts size
  EXPECT_EQ(history({}, ids, counts), StatusCode::kInvalidArgument);            // ids, no offsets
  // No rows at all is fine; the backend still works after the errors.
  TensorView empty = t;
  empty.shape = Shape({0, kVocab});
  EXPECT_EQ(code({}, empty, {}), StatusCode::kOk);
  EXPECT_EQ(code(tokens, t, rows_only(rows)), StatusCode::kOk);
  EXPECT_TRUE(gpu_->synchronize().ok());
}

// Not a correctness test: the time of one sample() call (upload, kernel, read-back) for
// 1, 16, 64, 128 and 256 rows of 151,936 logits, against copying those logits to the host (what the
// host Sampler needs first). "flat" rows are N(0, 2) logits, a worst case for top-p (its
// set holds thousands of tokens); "peaked" rows add 10 to 20 random tokens; "sharp" rows
// put 64 tokens 8 to 24 above the rest, as a trained model's rows are peaked (the
// shared-memory selections take them); "tail" rows keep ~550 tokens under top-p 0.7 among
// 3,600 above the floor that holds them; "mixed" rows are sharp but every 16th flat (what
// decides between the two paths at many rows). Printed; never fails on time. For a profiler:
// BW_SAMPLE_TIMES_ROWS=N times calls of N rows only, BW_SAMPLE_TIMES_REPS=M each M times
// (12 by default).
TEST_F(CudaSamplingTest, PrintsSampleTimes) {
  constexpr int64_t kVocab = kQwenVocab;
  constexpr size_t kMaxRows = 256;
  const std::vector<float> flat = random_logits(kMaxRows, kVocab, 71, 2.0f);
  std::vector<float> peaked = flat;
  std::mt19937 rng(72);
  for (size_t r = 0; r < kMaxRows; ++r) {
    for (int j = 0; j < 20; ++j)
      peaked[r * kVocab + rng() % kVocab] += 10.0f;
  }
  // Sharp rows, closer to a trained model's: 64 tokens far above the rest, decaying (the
  // top-k and top-p candidates fit in shared memory).
  std::vector<float> sharp = flat;
  for (size_t r = 0; r < kMaxRows; ++r) {
    for (int j = 0; j < 64; ++j)
      sharp[r * kVocab + rng() % kVocab] += 24.0f - 0.25f * static_cast<float>(j);
  }
  // Tail rows: the best token, 600 at 2e-3 of its probability and 3,000 at 2.6e-4 (the rest
  // negligible): top-p 0.7 at temperature 1 keeps ~550 tokens, inside the floor that takes
  // in the tail (the split path's radix select finds its cut).
  std::vector<float> tail(flat.size());
  for (size_t r = 0; r < kMaxRows; ++r) {
    float* row = tail.data() + r * kVocab;
    for (int64_t i = 0; i < kVocab; ++i)
      row[i] = flat[r * kVocab + static_cast<size_t>(i)] - 30.0f;
    for (int j = 0; j < 3000; ++j)
      row[rng() % kVocab] = std::log(2.6e-4f);
    for (int j = 0; j < 600; ++j)
      row[rng() % kVocab] = std::log(2e-3f);
    row[rng() % kVocab] = 0.0f;
  }
  // Mixed rows: sharp, every 16th flat (a batch where a few requests are uncertain).
  std::vector<float> mixed = sharp;
  for (size_t r = 0; r < kMaxRows; r += 16)
    std::copy_n(flat.begin() + static_cast<std::ptrdiff_t>(r * kVocab), kVocab,
                mixed.begin() + static_cast<std::ptrdiff_t>(r * kVocab));
  const TensorView pristine[] = {upload(flat, kVocab), upload(peaked, kVocab), upload(sharp, kVocab),
                                 upload(tail, kVocab), upload(mixed, kVocab)};
  const char* const kDists[] = {"flat", "peaked", "sharp", "tail", "mixed"};
  auto scratch = gpu_->allocate(flat.size() * sizeof(float));
  ASSERT_TRUE(scratch.ok());
  std::vector<float> host(flat.size());
  const char* const kModes[] = {"greedy", "top_p 0.9 temp 0.7", "temp 1.0, no cut", "top_k 50 top_p 0.95"};
  const char* only_rows = std::getenv("BW_SAMPLE_TIMES_ROWS");
  const char* reps_env = std::getenv("BW_SAMPLE_TIMES_REPS");
  const int reps = reps_env != nullptr ? std::max(1, std::atoi(reps_env)) : 12;
  for (size_t rows : {size_t{1}, size_t{16}, size_t{64}, size_t{128}, size_t{256}}) {
    if (only_rows != nullptr && static_cast<size_t>(std::atoi(only_rows)) != rows) continue;
    for (int dist = 0; dist < 5; ++dist) {
      for (int mode = dist == 0 ? 0 : 1; mode < (dist == 3 ? 2 : 4); ++mode) {
        std::vector<DeviceSamplingRow> params(rows);
        for (size_t r = 0; r < rows; ++r) {
          switch (mode) {
            case 0:
              params[r] = DeviceSamplingRow{};
              break;
            case 1:  // (tail rows: top-p 0.7 at temperature 1)
              params[r] = dist == 3 ? random_row(1.0f, 0, 0.7f, 0.0f, r, 0) : random_row(0.7f, 0, 0.9f, 0.0f, r, 0);
              break;
            case 2:
              params[r] = random_row(1.0f, 0, 1.0f, 0.0f, r, 0);
              break;
            default:
              params[r] = random_row(0.8f, 50, 0.95f, 0.0f, r, 0);
              break;
          }
        }
        TensorView t = scratch->view(DType::kF32, {static_cast<int64_t>(rows), kVocab});
        std::vector<int32_t> tokens(rows);
        std::vector<double> us;
        for (int it = 0; it < reps; ++it) {
          ASSERT_TRUE(gpu_->copy_on_device(t.data, pristine[dist].data, rows * kVocab * sizeof(float)).ok());
          ASSERT_TRUE(gpu_->synchronize().ok());
          const auto start = std::chrono::steady_clock::now();
          ASSERT_TRUE(gpu_->sample(tokens, t, rows_only(params)).ok());
          us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
        }
        std::sort(us.begin(), us.end());
        std::printf("[ sample   ] %3zu rows x %lld, %-6s %-20s median %8.1f us, min %8.1f us\n", rows,
                    static_cast<long long>(kVocab), kDists[dist], dist == 3 ? "top_p 0.7 temp 1.0" : kModes[mode],
                    us[us.size() / 2], us[0]);
      }
    }
    std::vector<double> us;
    for (int it = 0; it < 5; ++it) {
      const auto start = std::chrono::steady_clock::now();
      ASSERT_TRUE(gpu_->copy_to_host(host.data(), pristine[0].data, rows * kVocab * sizeof(float)).ok());
      us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(us.begin(), us.end());
    std::printf("[ sample   ] %3zu rows x %lld, copy of the logits to pageable host memory: median %8.1f us\n", rows,
                static_cast<long long>(kVocab), us[us.size() / 2]);
  }
}

}  // namespace
}  // namespace bw
