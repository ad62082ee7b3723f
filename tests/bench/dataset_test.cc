#include "bench/dataset.h"

#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "support/test_support.h"
#include "tokenizer/open_tokenizer.h"

namespace bw::bench {
namespace {

void write_file(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

TEST(SyntheticDatasetTest, WordsWithoutTokenizer) {
  SyntheticOptions options{20, 30, 7, 0.0, 5};
  auto prompts = synthetic_prompts(options, nullptr);
  ASSERT_TRUE(prompts.ok()) << prompts.status().to_string();
  ASSERT_EQ(prompts->size(), 20u);
  std::set<std::string> distinct;
  for (const BenchPrompt& p : *prompts) {
    EXPECT_EQ(p.prompt_len, 30);
    EXPECT_EQ(count_words(p.prompt), 30);
    EXPECT_EQ(p.output_len, 7);
    distinct.insert(p.prompt);
  }
  EXPECT_EQ(distinct.size(), 20u);
  auto again = synthetic_prompts(options, nullptr);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)[3].prompt, (*prompts)[3].prompt);  // seeded
}

TEST(SyntheticDatasetTest, RangeRatioGivesUniformLengthsInRange) {
  SyntheticOptions options{400, 100, 50, 0.5, 1};
  auto prompts = synthetic_prompts(options, nullptr);
  ASSERT_TRUE(prompts.ok());
  int64_t min_in = 1 << 30, max_in = 0, min_out = 1 << 30, max_out = 0;
  for (const BenchPrompt& p : *prompts) {
    min_in = std::min(min_in, p.prompt_len);
    max_in = std::max(max_in, p.prompt_len);
    min_out = std::min(min_out, p.output_len);
    max_out = std::max(max_out, p.output_len);
    EXPECT_EQ(count_words(p.prompt), p.prompt_len);
  }
  EXPECT_GE(min_in, 50);
  EXPECT_LE(max_in, 150);
  EXPECT_LT(min_in, 60);  // the whole range is used
  EXPECT_GT(max_in, 140);
  EXPECT_GE(min_out, 25);
  EXPECT_LE(max_out, 75);
}

TEST(SyntheticDatasetTest, BadOptions) {
  EXPECT_EQ(synthetic_prompts({1, 0, 5, 0.0, 0}, nullptr).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(synthetic_prompts({1, 5, 0, 0.0, 0}, nullptr).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(synthetic_prompts({1, 5, 5, 1.0, 0}, nullptr).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(synthetic_prompts({1, 5, 5, -0.1, 0}, nullptr).status().code(), StatusCode::kInvalidArgument);
}

TEST(SyntheticDatasetTest, ExactTokenLengthsWithTokenizer) {
  BW_TESTDATA_OR_SKIP(model, "models/stories260K.gguf");
  auto tokenizer = open_tokenizer(model.string());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().to_string();
  SyntheticOptions options{30, 64, 8, 0.25, 3};
  auto prompts = synthetic_prompts(options, tokenizer->get());
  ASSERT_TRUE(prompts.ok()) << prompts.status().to_string();
  size_t exact = 0;
  for (const BenchPrompt& p : *prompts) {
    const auto count = static_cast<int64_t>((*tokenizer)->encode(p.prompt, false, false).size());
    EXPECT_EQ(count, p.prompt_len);  // the recorded length is the real one
    EXPECT_GE(p.prompt_len, 47);
    EXPECT_LE(p.prompt_len, 81);
    if (p.prompt_len >= 48 && p.prompt_len <= 80) ++exact;
  }
  EXPECT_EQ(exact, prompts->size());
}

TEST(ShareGptTest, LoadsFirstTurnAndSecondTurnLength) {
  test::TempDir dir;
  const std::string path = dir.file("sharegpt.json");
  write_file(path, R"([
    {"id": "a", "conversations": [{"from": "human", "value": "tell me a story about a cat please"},
                                  {"from": "gpt", "value": "once upon a time there was a cat"}]},
    {"id": "b", "conversations": [{"from": "human", "value": "only one turn here"}]},
    {"id": "c", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "too short prompt x"}]},
    {"id": "d", "conversations": [{"from": "human", "value": "what is the capital of france"},
                                  {"from": "gpt", "value": "the capital of france is paris"},
                                  {"from": "human", "value": "thanks"}]}
  ])");
  auto prompts = load_sharegpt(path, {2, 0, std::nullopt}, nullptr);
  ASSERT_TRUE(prompts.ok()) << prompts.status().to_string();
  ASSERT_EQ(prompts->size(), 2u);
  std::set<std::string> texts;
  for (const BenchPrompt& p : *prompts) {
    texts.insert(p.prompt);
    EXPECT_EQ(p.prompt_len, count_words(p.prompt));
    if (p.prompt == "tell me a story about a cat please") {
      EXPECT_EQ(p.output_len, 8);
    } else {
      EXPECT_EQ(p.output_len, 6);
    }
  }
  EXPECT_EQ(texts.count("tell me a story about a cat please"), 1u);
  EXPECT_EQ(texts.count("what is the capital of france"), 1u);

  auto fixed = load_sharegpt(path, {1, 0, int64_t{3}}, nullptr);
  ASSERT_TRUE(fixed.ok());
  EXPECT_EQ((*fixed)[0].output_len, 3);

  auto too_many = load_sharegpt(path, {3, 0, std::nullopt}, nullptr);
  EXPECT_EQ(too_many.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_many.status().message().find("2 usable"), std::string::npos) << too_many.status().message();
}

TEST(ShareGptTest, TokenCountsWithTokenizer) {
  BW_TESTDATA_OR_SKIP(model, "models/stories260K.gguf");
  auto tokenizer = open_tokenizer(model.string());
  ASSERT_TRUE(tokenizer.ok());
  test::TempDir dir;
  const std::string path = dir.file("s.json");
  write_file(path, R"([{"conversations": [{"from": "human", "value": "Once upon a time, there was a little girl"},
                                         {"from": "gpt", "value": "She liked to play in the park with her dog"}]}])");
  auto prompts = load_sharegpt(path, {1, 0, std::nullopt}, tokenizer->get());
  ASSERT_TRUE(prompts.ok()) << prompts.status().to_string();
  EXPECT_EQ((*prompts)[0].prompt_len,
            static_cast<int64_t>((*tokenizer)->encode((*prompts)[0].prompt, false, false).size()));
  EXPECT_EQ(
      (*prompts)[0].output_len,
      static_cast<int64_t>((*tokenizer)->encode("She liked to play in the park with her dog", false, false).size()));
}

TEST(ShareGptTest, BadFilesAreClearErrors) {
  test::TempDir dir;
  EXPECT_EQ(load_sharegpt(dir.file("missing.json"), {1, 0, std::nullopt}, nullptr).status().code(),
            StatusCode::kNotFound);
  struct Case {
    const char* text;
    StatusCode code;
    const char* needle;
  };
  const Case cases[] = {
      {"[{\"conversations\": [", StatusCode::kDataLoss, "not valid JSON"},
      {"{\"conversations\": []}", StatusCode::kInvalidArgument, "JSON list"},
      {"[42]", StatusCode::kInvalidArgument, "entry 0 is not an object"},
      {"[{\"id\": 1}]", StatusCode::kInvalidArgument, "no \"conversations\""},
      {"[{\"conversations\": {}}]", StatusCode::kInvalidArgument, "not a list"},
      {"[{\"conversations\": [{\"from\": \"human\", \"value\": 5}, {\"value\": \"x\"}]}]", StatusCode::kInvalidArgument,
       "turn 0"},
      {"[]", StatusCode::kInvalidArgument, "0 usable"},
  };
  for (const Case& c : cases) {
    const std::string path = dir.file("bad.json");
    write_file(path, c.text);
    Status s = load_sharegpt(path, {1, 0, std::nullopt}, nullptr).status();
    EXPECT_EQ(s.code(), c.code) << c.text << ": " << s.to_string();
    EXPECT_NE(s.message().find(c.needle), std::string::npos) << c.text << ": " << s.message();
    EXPECT_NE(s.message().find("bad.json"), std::string::npos) << s.message();
  }
}

}  // namespace
}  // namespace bw::bench
