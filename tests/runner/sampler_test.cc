#include "runner/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "support/test_support.h"

namespace bw {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

SamplingParams greedy_params() { return SamplingParams{}; }

SamplingParams random_params(float temperature, uint64_t seed) {
  SamplingParams p;
  p.temperature = temperature;
  p.seed = seed;
  return p;
}

// One call on a copy of `logits` (the sampler uses its row as scratch).
SampledToken sample_copy(Sampler& sampler, const std::vector<float>& logits, std::span<const int32_t> prompt = {},
                         std::span<const int32_t> output = {}) {
  std::vector<float> row = logits;
  return sampler.sample(row, prompt, output);
}

std::vector<int32_t> draw_many(Sampler& sampler, const std::vector<float>& logits, int n) {
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i)
    ids.push_back(sample_copy(sampler, logits).token_id);
  return ids;
}

std::vector<double> reference_log_softmax(const std::vector<float>& logits) {
  double max = -std::numeric_limits<double>::infinity();
  for (const float x : logits)
    max = std::max(max, static_cast<double>(x));
  double sum = 0.0;
  for (const float x : logits)
    sum += std::exp(static_cast<double>(x) - max);
  std::vector<double> out(logits.size());
  for (size_t i = 0; i < logits.size(); ++i)
    out[i] = static_cast<double>(logits[i]) - max - std::log(sum);
  return out;
}

// Token ids by value descending, ties by lower id.
std::vector<int32_t> reference_order(const std::vector<float>& values) {
  std::vector<int32_t> ids(values.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return values[a] > values[b]; });
  return ids;
}

// ---- greedy ----

TEST(Argmax, LowestIdOnTies) {
  const std::vector<float> logits = {1.0f, 3.0f, -2.0f, 3.0f, 3.0f};
  EXPECT_EQ(argmax(logits), 1);
  EXPECT_EQ(argmax(std::vector<float>{-kInf, -kInf}), 0);
  EXPECT_EQ(argmax(std::vector<float>{}), 0);
}

TEST(Sampler, GreedyEqualsArgmax) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    const std::vector<float> logits = test::random_floats(1000 + seed, seed, -8.0f, 8.0f);
    Sampler sampler(greedy_params(), seed);
    EXPECT_EQ(sample_copy(sampler, logits).token_id, argmax(logits)) << seed;
  }
}

TEST(Sampler, GreedyTiesPickLowestId) {
  // Ties a multiple of 8 apart and not: the first wins either way.
  for (const std::vector<int32_t>& ties : std::vector<std::vector<int32_t>>{{42, 70, 99}, {99, 43, 51, 59}, {7, 8}}) {
    std::vector<float> logits(103, 0.0f);
    for (const int32_t id : ties)
      logits[static_cast<size_t>(id)] = 5.0f;
    Sampler sampler(greedy_params(), 0);
    EXPECT_EQ(sample_copy(sampler, logits).token_id, *std::min_element(ties.begin(), ties.end()));
  }
}

TEST(Sampler, GreedyLeavesLogitsUntouchedWithoutBiasOrPenalties) {
  const std::vector<float> logits = test::random_floats(500, 3);
  std::vector<float> row = logits;
  Sampler sampler(greedy_params(), 0);
  const std::vector<int32_t> history = {1, 2, 3};
  (void)sampler.sample(row, history, history);
  EXPECT_EQ(row, logits);
}

TEST(Sampler, EmptyRowReturnsTokenZero) {
  Sampler sampler(random_params(1.0f, 1), 0);
  EXPECT_EQ(sampler.sample({}, {}, {}).token_id, 0);
}

// ---- logprobs ----

void expect_logprobs_match(const std::vector<float>& logits, int32_t num_top, SamplingParams params) {
  params.logprobs = num_top;
  Sampler sampler(params, 11);
  const SampledToken t = sample_copy(sampler, logits);
  const std::vector<double> ref = reference_log_softmax(logits);
  EXPECT_NEAR(t.logprob, ref[static_cast<size_t>(t.token_id)], 1e-5);
  const std::vector<int32_t> order = reference_order(logits);
  ASSERT_EQ(t.top.size(), static_cast<size_t>(num_top));
  for (size_t i = 0; i < t.top.size(); ++i) {
    EXPECT_EQ(t.top[i].token_id, order[i]) << "rank " << i;
    EXPECT_NEAR(t.top[i].logprob, ref[static_cast<size_t>(order[i])], 1e-5) << "rank " << i;
  }
}

TEST(Sampler, LogprobsMatchDoubleReference) {
  // Large rows (heap selection of the top tokens) and small ones (whole-row selection).
  for (uint32_t seed = 1; seed <= 5; ++seed) {
    expect_logprobs_match(test::random_floats(20000, seed, -15.0f, 15.0f), 5, greedy_params());
    expect_logprobs_match(test::random_floats(20000, seed, -15.0f, 15.0f), 20, random_params(0.7f, seed));
    expect_logprobs_match(test::random_floats(12, seed, -3.0f, 3.0f), 5, greedy_params());
    expect_logprobs_match(test::random_floats(12, seed, -3.0f, 3.0f), 12, random_params(1.0f, seed));
  }
}

TEST(Sampler, LogprobsLargeLogitsStayAccurate) {
  std::vector<float> logits = test::random_floats(151936, 9, -5.0f, 5.0f);
  for (float& x : logits)
    x += 1000.0f;
  logits[1234] = 1012.0f;
  expect_logprobs_match(logits, 3, greedy_params());
}

TEST(Sampler, TopLogprobsTiesByLowerId) {
  std::vector<float> logits(5000, -1.0f);
  for (const int32_t id : {4000, 17, 2500, 9})
    logits[static_cast<size_t>(id)] = 2.0f;
  logits[3000] = 3.0f;
  SamplingParams p = greedy_params();
  p.logprobs = 4;
  Sampler sampler(p, 0);
  const SampledToken t = sample_copy(sampler, logits);
  EXPECT_EQ(t.token_id, 3000);
  ASSERT_EQ(t.top.size(), 4u);
  EXPECT_EQ(t.top[0].token_id, 3000);
  EXPECT_EQ(t.top[1].token_id, 9);
  EXPECT_EQ(t.top[2].token_id, 17);
  EXPECT_EQ(t.top[3].token_id, 2500);
  EXPECT_FLOAT_EQ(t.top[1].logprob, t.top[3].logprob);
}

TEST(Sampler, LogprobsAreOfTheRawDistribution) {
  const std::vector<float> logits = test::random_floats(3000, 21, -4.0f, 4.0f);
  const std::vector<double> ref = reference_log_softmax(logits);
  SamplingParams p = random_params(0.5f, 3);
  p.logprobs = 0;
  p.logit_bias = {{77, 30.0f}};
  p.repetition_penalty = 1.3f;
  p.presence_penalty = 0.5f;
  p.top_k = 40;
  Sampler sampler(p, 0);
  const std::vector<int32_t> history = {5, 6, 77};
  const SampledToken t = sample_copy(sampler, logits, history, history);
  EXPECT_EQ(t.token_id, 77);  // the bias wins
  EXPECT_NEAR(t.logprob, ref[77], 1e-5);
  EXPECT_TRUE(t.top.empty());
}

TEST(Sampler, NoLogprobsByDefault) {
  Sampler sampler(greedy_params(), 0);
  const SampledToken t = sample_copy(sampler, test::random_floats(100, 1));
  EXPECT_EQ(t.logprob, 0.0f);
  EXPECT_TRUE(t.top.empty());
}

// ---- logit bias ----

TEST(Sampler, LogitBiasForcesAndBansTokens) {
  const std::vector<float> logits = test::random_floats(1000, 5, -5.0f, 5.0f);
  const int32_t best = argmax(logits);
  SamplingParams p = greedy_params();
  p.logit_bias = {{7, 100.0f}};
  Sampler forced(p, 0);
  EXPECT_EQ(sample_copy(forced, logits).token_id, 7);

  p.temperature = 1.0f;
  Sampler forced_random(p, 0);
  for (const int32_t id : draw_many(forced_random, logits, 50))
    EXPECT_EQ(id, 7);

  SamplingParams ban = greedy_params();
  ban.logit_bias = {{best, -100.0f}};
  Sampler banned(ban, 0);
  std::vector<float> expected = logits;
  expected[static_cast<size_t>(best)] -= 100.0f;
  EXPECT_EQ(sample_copy(banned, logits).token_id, argmax(expected));
}

// ---- penalties ----

struct PenaltyCase {
  float repetition = 1.0f;
  float presence = 0.0f;
  float frequency = 0.0f;
};

// The reference: repetition over the set of prompt + output tokens, then presence and
// frequency over the output's counts.
std::vector<float> reference_penalised(std::vector<float> logits, const std::vector<int32_t>& prompt,
                                       const std::vector<int32_t>& output, const PenaltyCase& c) {
  const auto in_row = [&](int32_t id) { return id >= 0 && static_cast<size_t>(id) < logits.size(); };
  std::set<int32_t> seen;
  std::map<int32_t, int> counts;
  for (const int32_t id : prompt) {
    if (in_row(id)) seen.insert(id);
  }
  for (const int32_t id : output) {
    if (!in_row(id)) continue;
    seen.insert(id);
    ++counts[id];
  }
  if (c.repetition != 1.0f) {
    for (const int32_t id : seen) {
      float& x = logits[static_cast<size_t>(id)];
      x = x > 0.0f ? x / c.repetition : x * c.repetition;
    }
  }
  for (const auto& [id, count] : counts) {
    // The product rounded before the sum (no FMA, whatever the compiler's flags).
    const volatile float scaled = c.frequency * static_cast<float>(count);
    logits[static_cast<size_t>(id)] -= scaled + c.presence;
  }
  return logits;
}

// Greedy leaves the biased and penalised logits in its scratch row: compare them exactly
// with the reference, and the greedy choice with the reference's argmax.
void expect_penalties(const std::vector<float>& logits, const std::vector<int32_t>& prompt,
                      const std::vector<int32_t>& output, const PenaltyCase& c) {
  SamplingParams p = greedy_params();
  p.repetition_penalty = c.repetition;
  p.presence_penalty = c.presence;
  p.frequency_penalty = c.frequency;
  Sampler sampler(p, 0);
  std::vector<float> row = logits;
  const SampledToken t = sampler.sample(row, prompt, output);
  const std::vector<float> expected = reference_penalised(logits, prompt, output, c);
  EXPECT_EQ(t.token_id, argmax(expected));
  for (size_t i = 0; i < row.size(); ++i)
    ASSERT_FLOAT_EQ(row[i], expected[i]) << "token " << i;
}

TEST(Sampler, RepetitionPenaltyDividesPositiveMultipliesNegative) {
  // Token 0 leads; penalised (in the prompt) it falls behind token 2.
  const std::vector<float> logits = {2.0f, -1.0f, 1.5f, 0.5f, -3.0f, 0.0f};
  SamplingParams p = greedy_params();
  p.repetition_penalty = 2.0f;
  Sampler sampler(p, 0);
  std::vector<float> row = logits;
  const std::vector<int32_t> prompt = {0, 1, 0, 5};
  const std::vector<int32_t> output = {1, 1};
  EXPECT_EQ(sampler.sample(row, prompt, output).token_id, 2);
  EXPECT_EQ(row, (std::vector<float>{1.0f, -2.0f, 1.5f, 0.5f, -3.0f, 0.0f}));  // once per distinct token
  expect_penalties(logits, prompt, output, {.repetition = 2.0f});
  expect_penalties(logits, prompt, output, {.repetition = 0.5f});
}

TEST(Sampler, PresencePenaltyOncePerOutputToken) {
  const std::vector<float> logits = {2.0f, 1.9f, 1.0f, 0.5f};
  SamplingParams p = greedy_params();
  p.presence_penalty = 0.5f;
  Sampler sampler(p, 0);
  std::vector<float> row = logits;
  // Prompt tokens are not penalised; token 0 three times in the output loses 0.5 once.
  const std::vector<int32_t> prompt = {1, 1, 1};
  const std::vector<int32_t> output = {0, 0, 0, 3};
  EXPECT_EQ(sampler.sample(row, prompt, output).token_id, 1);
  EXPECT_EQ(row, (std::vector<float>{1.5f, 1.9f, 1.0f, 0.0f}));
  expect_penalties(logits, prompt, output, {.presence = -1.5f});
}

TEST(Sampler, FrequencyPenaltyScalesWithCount) {
  const std::vector<float> logits = {3.0f, 2.0f, 1.0f, 0.0f};
  SamplingParams p = greedy_params();
  p.frequency_penalty = 0.75f;
  Sampler sampler(p, 0);
  std::vector<float> row = logits;
  const std::vector<int32_t> prompt = {2, 2, 2, 2};
  const std::vector<int32_t> output = {0, 0, 1, 0};
  EXPECT_EQ(sampler.sample(row, prompt, output).token_id, 1);
  EXPECT_EQ(row, (std::vector<float>{0.75f, 1.25f, 1.0f, 0.0f}));
}

TEST(Sampler, PenaltiesMatchReferenceOnLongHistories) {
  std::mt19937 rng(17);
  std::uniform_int_distribution<int32_t> id(0, 1999);
  for (const size_t length : {1u, 10u, 300u, 5000u}) {
    std::vector<int32_t> prompt(length), output(length / 2 + 1);
    for (int32_t& t : prompt)
      t = id(rng);
    for (int32_t& t : output)
      t = id(rng) % 500;  // many repeats
    const std::vector<float> logits = test::random_floats(2000, static_cast<uint32_t>(length), -6.0f, 6.0f);
    expect_penalties(logits, prompt, output, {.repetition = 1.3f, .presence = 0.4f, .frequency = 0.2f});
    expect_penalties(logits, prompt, output, {.repetition = 0.8f, .presence = -0.7f, .frequency = -1.1f});
    expect_penalties(logits, prompt, output, {.frequency = 2.0f});
  }
}

TEST(Sampler, PenaltiesIgnoreIdsOutsideTheRow) {
  const std::vector<float> logits = {1.0f, 2.0f};
  const std::vector<int32_t> history = {-1, 7, 1, 1000000};
  expect_penalties(logits, history, {1}, {.repetition = 1.5f});
  SamplingParams p = greedy_params();
  p.repetition_penalty = 4.0f;
  p.frequency_penalty = 1.0f;
  Sampler sampler(p, 0);
  std::vector<float> row = logits;
  EXPECT_EQ(sampler.sample(row, history, history).token_id, 0);  // token 1: 2 / 4 - 1
}

// ---- temperature, min-p, top-k, top-p ----

TEST(Sampler, TopKOneIsGreedyAtAnyTemperature) {
  for (const size_t vocab : {4u, 1000u}) {
    const std::vector<float> logits = test::random_floats(vocab, static_cast<uint32_t>(vocab), -2.0f, 2.0f);
    for (const float temperature : {0.1f, 1.0f, 5.0f, 100.0f}) {
      SamplingParams p = random_params(temperature, 5);
      p.top_k = 1;
      Sampler sampler(p, 0);
      for (const int32_t id : draw_many(sampler, logits, 100))
        EXPECT_EQ(id, argmax(logits));
    }
  }
}

TEST(Sampler, TinyTemperatureIsGreedy) {
  const std::vector<float> logits = test::random_floats(1000, 14, -2.0f, 2.0f);
  for (const float temperature : {1e-30f, 1e-40f}) {
    for (const int32_t top_k : {0, 10}) {
      SamplingParams p = random_params(temperature, 5);
      p.top_k = top_k;
      Sampler sampler(p, 0);
      for (const int32_t id : draw_many(sampler, logits, 20))
        EXPECT_EQ(id, argmax(logits)) << temperature;
    }
  }
}

TEST(Sampler, TinyTopPKeepsOnlyTheTopToken) {
  const std::vector<float> logits = test::random_floats(50000, 8, -1.0f, 1.0f);
  SamplingParams p = random_params(1.0f, 9);
  p.top_p = 1e-6f;
  Sampler sampler(p, 0);
  for (const int32_t id : draw_many(sampler, logits, 50))
    EXPECT_EQ(id, argmax(logits));
}

// Draws n tokens and returns their frequencies.
std::vector<double> frequencies(Sampler& sampler, const std::vector<float>& logits, int n) {
  std::vector<double> freq(logits.size(), 0.0);
  for (const int32_t id : draw_many(sampler, logits, n))
    freq[static_cast<size_t>(id)] += 1.0 / n;
  return freq;
}

// Each frequency within 5 standard deviations of its expected probability.
void expect_frequencies(const std::vector<double>& freq, const std::vector<double>& expected, int n) {
  ASSERT_EQ(freq.size(), expected.size());
  for (size_t i = 0; i < freq.size(); ++i) {
    const double sd = std::sqrt(expected[i] * (1.0 - expected[i]) / n);
    if (expected[i] == 0.0) {
      EXPECT_EQ(freq[i], 0.0) << "token " << i;
    } else {
      EXPECT_NEAR(freq[i], expected[i], 5.0 * sd) << "token " << i;
    }
  }
}

std::vector<double> softmax(const std::vector<float>& logits, double temperature) {
  std::vector<double> p(logits.size());
  double sum = 0.0;
  for (size_t i = 0; i < p.size(); ++i)
    sum += p[i] = std::exp(logits[i] / temperature);
  for (double& x : p)
    x /= sum;
  return p;
}

TEST(Sampler, TemperatureFrequenciesMatchSoftmax) {
  constexpr int kDraws = 20000;
  const std::vector<float> logits = {1.0f, 0.5f, -0.3f, -1.2f};
  for (const float temperature : {1.0f, 0.5f, 2.0f}) {
    Sampler sampler(random_params(temperature, 2024), 0);
    expect_frequencies(frequencies(sampler, logits, kDraws), softmax(logits, temperature), kDraws);
  }
}

TEST(Sampler, TopPRenormalisesOverTheKeptPrefix) {
  constexpr int kDraws = 20000;
  // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 keeps the first two.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  SamplingParams p = random_params(1.0f, 77);
  p.top_p = 0.75f;
  Sampler sampler(p, 0);
  expect_frequencies(frequencies(sampler, logits, kDraws), {0.625, 0.375, 0.0, 0.0}, kDraws);
}

TEST(Sampler, TopKRenormalises) {
  constexpr int kDraws = 20000;
  const std::vector<float> logits = {std::log(0.1f), std::log(0.4f), std::log(0.2f), std::log(0.3f)};
  SamplingParams p = random_params(1.0f, 78);
  p.top_k = 2;
  Sampler sampler(p, 0);
  expect_frequencies(frequencies(sampler, logits, kDraws), {0.0, 4.0 / 7, 0.0, 3.0 / 7}, kDraws);
}

TEST(Sampler, MinPFilters) {
  constexpr int kDraws = 20000;
  // Relative to the top token: 1, 0.5, 0.05, 0.01; min_p 0.1 keeps the first two.
  const std::vector<float> logits = {0.0f, std::log(0.5f), std::log(0.05f), std::log(0.01f)};
  for (const int32_t top_k : {0, 3}) {
    SamplingParams p = random_params(1.0f, 79);
    p.min_p = 0.1f;
    p.top_k = top_k;
    Sampler sampler(p, 0);
    expect_frequencies(frequencies(sampler, logits, kDraws), {2.0 / 3, 1.0 / 3, 0.0, 0.0}, kDraws);
  }
  // min_p applies after temperature: at temperature 4, token 2 is at 0.05^(1/4) = 0.47 of the top.
  SamplingParams p = random_params(4.0f, 80);
  p.min_p = 0.4f;
  Sampler sampler(p, 0);
  const std::vector<double> freq = frequencies(sampler, logits, 2000);
  EXPECT_GT(freq[2], 0.0);
  EXPECT_EQ(freq[3], 0.0);
}

// The top-p set computed the slow way: sort everything, keep the smallest prefix reaching
// top_p. Best first.
std::vector<int32_t> reference_top_p_set(const std::vector<float>& logits, float top_p) {
  const float max = logits[static_cast<size_t>(argmax(logits))];
  std::vector<float> probs(logits.size());
  double total = 0.0;
  for (size_t i = 0; i < logits.size(); ++i)
    total += probs[i] = std::exp(logits[i] - max);
  std::vector<int32_t> kept;
  double cumulative = 0.0;
  for (const int32_t id : reference_order(probs)) {
    kept.push_back(id);
    cumulative += probs[static_cast<size_t>(id)];
    if (cumulative >= top_p * total) break;
  }
  return kept;
}

// Every draw lies in the reference set; small sets are seen whole, and when `spread` (no
// token dominates) the draws reach the last fifth of a large set, so it is not cut short.
void expect_top_p_draws_within_reference(const std::vector<float>& logits, float top_p, int draws, bool spread) {
  const std::vector<int32_t> kept = reference_top_p_set(logits, top_p);
  std::map<int32_t, size_t> rank;
  for (size_t i = 0; i < kept.size(); ++i)
    rank[kept[i]] = i;
  SamplingParams p = random_params(1.0f, 4);
  p.top_p = top_p;
  Sampler sampler(p, 0);
  std::set<int32_t> seen;
  size_t max_rank = 0;
  for (const int32_t id : draw_many(sampler, logits, draws)) {
    const auto it = rank.find(id);
    ASSERT_TRUE(it != rank.end()) << "token " << id << " outside the top-p set of " << kept.size();
    max_rank = std::max(max_rank, it->second);
    seen.insert(id);
  }
  if (kept.size() <= 8) {
    EXPECT_EQ(seen, std::set<int32_t>(kept.begin(), kept.end()));
  } else if (spread) {
    EXPECT_GE(max_rank, (kept.size() - 1) * 4 / 5) << "of " << kept.size();
  }
}

TEST(Sampler, TopPOnLargeRowsMatchesFullSort) {
  // Peaked: a few tokens reach top_p, within 1e-3 of the top one.
  std::vector<float> peaked = test::random_floats(151936, 1, -10.0f, 0.0f);
  peaked[100] = 12.0f;
  peaked[200] = 11.5f;
  peaked[300] = 11.0f;
  expect_top_p_draws_within_reference(peaked, 0.9f, 200, false);
  // Broad: distinct values, the set reaches far below 1e-3 of the top.
  std::vector<float> broad(151936);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 2.5f);
  for (float& x : broad)
    x = normal(rng);
  expect_top_p_draws_within_reference(broad, 0.9f, 200, true);
  expect_top_p_draws_within_reference(broad, 0.3f, 200, true);
  // Most of the mass in a tail of ties under 1e-3 of the top: ties sort by id.
  std::vector<float> tail(100000, -10.0f);
  tail[5] = 0.0f;
  expect_top_p_draws_within_reference(tail, 0.9f, 200, true);
  // A tail under 1e-6 of the top.
  std::vector<float> far_tail(100000, -16.0f);
  far_tail[99999] = 0.0f;
  expect_top_p_draws_within_reference(far_tail, 0.9995f, 100, false);
  // Flat: the first half of the ids.
  const std::vector<float> flat(40000, 1.0f);
  expect_top_p_draws_within_reference(flat, 0.5f, 200, true);
}

TEST(Sampler, TopPBoundaryAmongTies) {
  // Equal probabilities sort by id: the kept set is exactly ids [0, ceil(top_p * n)).
  for (const int n : {100, 1000, 5000}) {
    for (const float top_p : {0.1f, 0.25f, 0.5f, 0.77f, 0.9f}) {
      const std::vector<float> flat(static_cast<size_t>(n), 0.5f);
      const int kept = static_cast<int>(reference_top_p_set(flat, top_p).size());
      ASSERT_EQ(kept, static_cast<int>(std::ceil(static_cast<double>(top_p) * n)));
      SamplingParams p = random_params(1.0f, static_cast<uint64_t>(n));
      p.top_p = top_p;
      Sampler sampler(p, 0);
      int max_id = 0;
      // (1,000 draws miss the top 5% of 4,500 kept ids with probability e^-51)
      for (const int32_t id : draw_many(sampler, flat, test::kUnderSanitizer ? 1000 : 3000)) {
        ASSERT_LT(id, kept) << "n " << n << " top_p " << top_p;
        max_id = std::max(max_id, id);
      }
      EXPECT_GE(max_id, kept * 19 / 20 - 1) << "n " << n << " top_p " << top_p;
    }
  }
}

TEST(Sampler, TopKOnLargeRowsKeepsTheKBest) {
  const std::vector<float> logits = test::random_floats(151936, 12, -3.0f, 3.0f);
  const std::vector<int32_t> order = reference_order(logits);
  for (const int32_t k : {5, 50, 40000}) {
    const std::set<int32_t> best(order.begin(), order.begin() + k);
    SamplingParams p = random_params(3.0f, 6);
    p.top_k = k;
    Sampler sampler(p, 0);
    std::set<int32_t> seen;
    for (const int32_t id : draw_many(sampler, logits, k > 1000 ? 20 : 200)) {
      EXPECT_TRUE(best.count(id)) << "k " << k << " token " << id;
      seen.insert(id);
    }
    if (k == 5) {
      EXPECT_EQ(seen, best);
    }
  }
}

TEST(Sampler, DegenerateRowsDoNotCrash) {
  Sampler sampler(random_params(1.0f, 1), 0);
  EXPECT_EQ(sample_copy(sampler, std::vector<float>(10, -kInf)).token_id, 0);
  std::vector<float> one_inf(10, 0.0f);
  one_inf[3] = kInf;
  EXPECT_EQ(sample_copy(sampler, one_inf).token_id, 3);
  std::vector<float> masked(10, -kInf);
  masked[6] = 1.0f;
  masked[8] = 1.0f;
  for (const int32_t id : draw_many(sampler, masked, 20))
    EXPECT_TRUE(id == 6 || id == 8);
  std::vector<float> with_nan(10, 0.0f);
  with_nan[2] = std::numeric_limits<float>::quiet_NaN();
  const int32_t id = sample_copy(sampler, with_nan).token_id;
  EXPECT_TRUE(id >= 0 && id < 10);
}

// ---- seeds and streams ----

TEST(Sampler, SameSeedSameTokensDifferentSeedsDiffer) {
  const std::vector<float> logits = test::random_floats(100, 31, -1.0f, 1.0f);
  Sampler a(random_params(1.0f, 123), 0);
  Sampler b(random_params(1.0f, 123), 0);
  Sampler c(random_params(1.0f, 124), 0);
  const std::vector<int32_t> ta = draw_many(a, logits, 200);
  EXPECT_EQ(ta, draw_many(b, logits, 200));
  EXPECT_NE(ta, draw_many(c, logits, 200));
}

TEST(Sampler, SeedOverridesDefaultSeed) {
  const std::vector<float> logits = test::random_floats(100, 32, -1.0f, 1.0f);
  SamplingParams unseeded = random_params(1.0f, 0);
  unseeded.seed.reset();
  Sampler seeded(random_params(1.0f, 55), /*default_seed=*/99);
  Sampler by_default(unseeded, /*default_seed=*/55);
  Sampler other_default(unseeded, /*default_seed=*/56);
  const std::vector<int32_t> t = draw_many(seeded, logits, 100);
  EXPECT_EQ(t, draw_many(by_default, logits, 100));
  EXPECT_NE(t, draw_many(other_default, logits, 100));
}

TEST(Sampler, InterleavedSamplersMatchSeparateRuns) {
  SamplingParams pa = random_params(0.8f, 7);
  pa.top_k = 20;
  pa.top_p = 0.9f;
  SamplingParams pb = random_params(1.2f, 7);
  pb.min_p = 0.05f;
  std::vector<std::vector<float>> rows_a, rows_b;
  for (uint32_t i = 0; i < 50; ++i) {
    rows_a.push_back(test::random_floats(300, 1000 + i, -3.0f, 3.0f));
    rows_b.push_back(test::random_floats(300, 2000 + i, -3.0f, 3.0f));
  }
  std::vector<int32_t> alone_a, alone_b, mixed_a, mixed_b;
  Sampler a1(pa, 0), b1(pb, 0);
  for (const auto& row : rows_a)
    alone_a.push_back(sample_copy(a1, row).token_id);
  for (const auto& row : rows_b)
    alone_b.push_back(sample_copy(b1, row).token_id);
  Sampler a2(pa, 0), b2(pb, 0), greedy(greedy_params(), 7);
  for (size_t i = 0; i < rows_a.size(); ++i) {
    mixed_b.push_back(sample_copy(b2, rows_b[i]).token_id);
    (void)sample_copy(greedy, rows_a[i]);
    mixed_a.push_back(sample_copy(a2, rows_a[i]).token_id);
  }
  EXPECT_EQ(alone_a, mixed_a);
  EXPECT_EQ(alone_b, mixed_b);
}

TEST(Sampler, ExactlyOneDrawPerToken) {
  // After n tokens through any mix of paths, the next token comes from the generator's
  // (n+1)-th output: on four equally likely tokens, floor(4 * u).
  const std::vector<float> peaked = {0.0f, 30.0f, 0.0f, 0.0f, -kInf};
  const std::vector<float> flat = {1.0f, 1.0f, 1.0f, 1.0f, -kInf};
  for (const int32_t top_k : {0, 4}) {
    for (const float top_p : {1.0f, 0.999f}) {
      SamplingParams p = random_params(1.0f, 99);
      p.top_k = top_k;
      p.top_p = top_p;
      Sampler sampler(p, 0);
      std::mt19937_64 rng(99);
      for (int i = 0; i < 10; ++i) {
        EXPECT_EQ(sample_copy(sampler, peaked).token_id, 1);
        rng();
      }
      for (int i = 0; i < 10; ++i) {
        const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
        EXPECT_EQ(sample_copy(sampler, flat).token_id, static_cast<int32_t>(u * 4)) << top_k << " " << top_p;
      }
    }
  }
}

}  // namespace
}  // namespace bw
