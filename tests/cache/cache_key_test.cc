#include "cache/cache_key.h"

#include <gtest/gtest.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

namespace bw::cache {
namespace {

CacheKeyInput base_input() {
  CacheKeyInput in;
  in.endpoint = "completions";
  in.model = "stories";
  in.vocab_size = 512;
  in.eos_token_ids = {2};
  in.prompts = {{1, 403, 407}};
  in.max_tokens = {16};
  in.sampling.temperature = 0.0f;
  return in;
}

TEST(CacheKeyTest, EqualRequestsHaveEqualKeys) {
  const CacheKeyInput a = base_input();
  const CacheKeyInput b = base_input();
  EXPECT_EQ(cache_key(a), cache_key(b));
  EXPECT_EQ(cache_key(a).size(), 64u);
  EXPECT_EQ(cache_key(a).find_first_not_of("0123456789abcdef"), std::string::npos);
}

// Every field that can change a response changes the key, and no two changes collide.
TEST(CacheKeyTest, EveryFieldChangesTheKey) {
  const std::vector<std::pair<std::string, std::function<void(CacheKeyInput&)>>> changes = {
      {"endpoint", [](CacheKeyInput& in) { in.endpoint = "chat.completions"; }},
      {"model", [](CacheKeyInput& in) { in.model = "other"; }},
      {"vocab_size", [](CacheKeyInput& in) { in.vocab_size = 513; }},
      {"eos", [](CacheKeyInput& in) { in.eos_token_ids = {3}; }},
      {"adapter", [](CacheKeyInput& in) { in.adapter = "lora-a"; }},
      {"prompt token", [](CacheKeyInput& in) { in.prompts[0][2] = 408; }},
      {"prompt length", [](CacheKeyInput& in) { in.prompts[0].push_back(5); }},
      {"second prompt", [](CacheKeyInput& in) { in.prompts.push_back({1}); }},
      {"prompt split",
       [](CacheKeyInput& in) {
         in.prompts = {{1, 403}, {407}};
       }},
      {"max_tokens", [](CacheKeyInput& in) { in.max_tokens = {17}; }},
      {"temperature", [](CacheKeyInput& in) { in.sampling.temperature = 0.5f; }},
      {"top_k", [](CacheKeyInput& in) { in.sampling.top_k = 5; }},
      {"top_p", [](CacheKeyInput& in) { in.sampling.top_p = 0.9f; }},
      {"min_p", [](CacheKeyInput& in) { in.sampling.min_p = 0.1f; }},
      {"repetition_penalty", [](CacheKeyInput& in) { in.sampling.repetition_penalty = 1.1f; }},
      {"presence_penalty", [](CacheKeyInput& in) { in.sampling.presence_penalty = 0.5f; }},
      {"frequency_penalty", [](CacheKeyInput& in) { in.sampling.frequency_penalty = 0.5f; }},
      {"logit_bias",
       [](CacheKeyInput& in) {
         in.sampling.logit_bias = {{5, 1.0f}};
       }},
      {"logit_bias value",
       [](CacheKeyInput& in) {
         in.sampling.logit_bias = {{5, 2.0f}};
       }},
      {"seed", [](CacheKeyInput& in) { in.sampling.seed = 7; }},
      {"seed 0", [](CacheKeyInput& in) { in.sampling.seed = 0; }},
      {"logprobs", [](CacheKeyInput& in) { in.sampling.logprobs = 0; }},
      {"top logprobs", [](CacheKeyInput& in) { in.sampling.logprobs = 3; }},
      {"stop_token_ids", [](CacheKeyInput& in) { in.stop_token_ids = {9}; }},
      {"ignore_eos", [](CacheKeyInput& in) { in.ignore_eos = true; }},
      {"stop", [](CacheKeyInput& in) { in.stop_strings = {"."}; }},
      {"stop two",
       [](CacheKeyInput& in) {
         in.stop_strings = {".", "!"};
       }},
      {"stop joined", [](CacheKeyInput& in) { in.stop_strings = {".!"}; }},
      {"n", [](CacheKeyInput& in) { in.n = 2; }},
      {"reasoning", [](CacheKeyInput& in) { in.reasoning = true; }},
  };
  std::set<std::string> keys = {cache_key(base_input())};
  for (const auto& [name, change] : changes) {
    CacheKeyInput in = base_input();
    change(in);
    EXPECT_TRUE(keys.insert(cache_key(in)).second) << name << " did not change the key (or collided)";
  }
}

TEST(CacheKeyTest, CanonicalFormIsLengthPrefixed) {
  // A stop string containing the separator cannot mimic two stop strings.
  CacheKeyInput a = base_input();
  a.stop_strings = {"a;1:b"};
  CacheKeyInput b = base_input();
  b.stop_strings = {"a", "b"};
  EXPECT_NE(canonical_request(a), canonical_request(b));
  EXPECT_NE(cache_key(a), cache_key(b));
}

}  // namespace
}  // namespace bw::cache
