#include "sched/sampling_params.h"

#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace bw {
namespace {

constexpr int64_t kVocab = 1000;
constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(SamplingParams, DefaultsAreValid) { EXPECT_TRUE(SamplingParams{}.validate(kVocab).ok()); }

TEST(SamplingParams, BoundaryValuesAreValid) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.top_k = -1;
  p.top_p = 1.0f;
  p.min_p = 1.0f;
  p.repetition_penalty = 1e-3f;
  p.presence_penalty = -2.0f;
  p.frequency_penalty = 2.0f;
  p.logit_bias = {{0, -100.0f}, {kVocab - 1, 100.0f}};
  p.logprobs = 20;
  p.seed = 42;
  EXPECT_TRUE(p.validate(kVocab).ok()) << p.validate(kVocab).to_string();
  p.top_k = 5;
  p.top_p = 1e-6f;
  p.min_p = 0.0f;
  p.temperature = 1e6f;
  p.logprobs = -1;
  EXPECT_TRUE(p.validate(kVocab).ok()) << p.validate(kVocab).to_string();
}

struct BadCase {
  std::string field;  // must appear in the message
  std::function<void(SamplingParams&)> set;
};

TEST(SamplingParams, RejectsEachBadFieldByName) {
  const std::vector<BadCase> cases = {
      {"temperature", [](SamplingParams& p) { p.temperature = -0.1f; }},
      {"temperature", [](SamplingParams& p) { p.temperature = kNan; }},
      {"temperature", [](SamplingParams& p) { p.temperature = kInf; }},
      {"top_k", [](SamplingParams& p) { p.top_k = -2; }},
      {"top_p", [](SamplingParams& p) { p.top_p = 0.0f; }},
      {"top_p", [](SamplingParams& p) { p.top_p = 1.01f; }},
      {"top_p", [](SamplingParams& p) { p.top_p = kNan; }},
      {"min_p", [](SamplingParams& p) { p.min_p = -0.01f; }},
      {"min_p", [](SamplingParams& p) { p.min_p = 1.5f; }},
      {"min_p", [](SamplingParams& p) { p.min_p = kNan; }},
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = 0.0f; }},
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = -1.0f; }},
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = kInf; }},
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = kNan; }},
      {"presence_penalty", [](SamplingParams& p) { p.presence_penalty = 2.5f; }},
      {"presence_penalty", [](SamplingParams& p) { p.presence_penalty = -2.01f; }},
      {"presence_penalty", [](SamplingParams& p) { p.presence_penalty = kNan; }},
      {"frequency_penalty", [](SamplingParams& p) { p.frequency_penalty = -3.0f; }},
      {"frequency_penalty", [](SamplingParams& p) { p.frequency_penalty = 2.01f; }},
      {"frequency_penalty", [](SamplingParams& p) { p.frequency_penalty = kNan; }},
      {"logit_bias",
       [](SamplingParams& p) {
         p.logit_bias = {{-1, 1.0f}};
       }},
      {"logit_bias",
       [](SamplingParams& p) {
         p.logit_bias = {{5, 1.0f}, {kVocab, 1.0f}};
       }},
      {"logit_bias",
       [](SamplingParams& p) {
         p.logit_bias = {{5, 100.5f}};
       }},
      {"logit_bias",
       [](SamplingParams& p) {
         p.logit_bias = {{5, -101.0f}};
       }},
      {"logit_bias",
       [](SamplingParams& p) {
         p.logit_bias = {{5, kNan}};
       }},
      {"logit_bias",
       [](SamplingParams& p) {
         p.logit_bias = {{5, -kInf}};
       }},
      {"logprobs", [](SamplingParams& p) { p.logprobs = -2; }},
      {"logprobs", [](SamplingParams& p) { p.logprobs = 21; }},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SamplingParams p;
    cases[i].set(p);
    const Status s = p.validate(kVocab);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << "case " << i << " (" << cases[i].field << ")";
    EXPECT_NE(s.message().find(cases[i].field), std::string::npos)
        << "case " << i << ": '" << s.message() << "' does not name " << cases[i].field;
  }
}

TEST(SamplingParams, LogitBiasIdsAreCheckedAgainstTheVocab) {
  SamplingParams p;
  p.logit_bias = {{150000, 5.0f}};
  EXPECT_TRUE(p.validate(151936).ok());
  EXPECT_FALSE(p.validate(32000).ok());
}

TEST(SamplingParams, IsGreedy) {
  SamplingParams p;
  EXPECT_TRUE(p.is_greedy());
  p.temperature = 0.7f;
  EXPECT_FALSE(p.is_greedy());
}

}  // namespace
}  // namespace bw
