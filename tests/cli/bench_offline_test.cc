// `breakwater bench offline` end to end on a tiny random model (CPU backend): the JSON
// report has one run per batch size with positive prefill and decode rates; bad flags
// fail with a message.
#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "support/test_support.h"

namespace bw {
namespace {

test::CommandResult run(const std::string& args) {
  return test::run_shell(std::string(BW_BREAKWATER_BIN) + " " + args);
}

TEST(BenchOfflineTest, ReportsEveryBatchSize) {
  test::TempDir tmp;
  const std::string model = tmp.file("tiny");
  auto made = run("make-model --preset tiny-llama --dtype f32 --out " + model);
  ASSERT_EQ(made.exit_code, 0) << made.output;
  auto bench = run(
      "bench offline --model " + model +
      " --device cpu --threads 2 --kv-dtype f32 --kv-block-size 4 --input-len 12 --output-len 5 --batch 1,3 --json");
  ASSERT_EQ(bench.exit_code, 0) << bench.output;
  auto j = nlohmann::json::parse(bench.output, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << bench.output;
  EXPECT_EQ(j["device"], "cpu");
  EXPECT_EQ(j["input_len"], 12);
  EXPECT_EQ(j["output_len"], 5);
  EXPECT_EQ(j["kv_block_size"], 4);
  ASSERT_EQ(j["runs"].size(), 2u);
  EXPECT_EQ(j["runs"][0]["batch"], 1);
  EXPECT_EQ(j["runs"][1]["batch"], 3);
  for (const auto& r : j["runs"]) {
    EXPECT_GT(r["prefill_tokens_per_second"].get<double>(), 0.0) << r.dump();
    EXPECT_GT(r["decode_tokens_per_second"].get<double>(), 0.0) << r.dump();
    EXPECT_GT(r["time_per_output_token_ms"].get<double>(), 0.0) << r.dump();
    EXPECT_GE(r["total_seconds"].get<double>(), r["prefill_seconds"].get<double>()) << r.dump();
    // The decode stretch lies between the last first token and the last token.
    EXPECT_GT(r["decode_seconds"].get<double>(), 0.0) << r.dump();
    EXPECT_LE(r["decode_seconds"].get<double>(),
              r["total_seconds"].get<double>() - r["prefill_seconds"].get<double>() + 1e-9)
        << r.dump();
  }

  auto table = run("bench offline --model " + model + " --device cpu --threads 2 --input-len 4 --output-len 2");
  ASSERT_EQ(table.exit_code, 0) << table.output;
  EXPECT_NE(table.output.find("decode tok/s"), std::string::npos) << table.output;

  auto bad = run("bench offline --model " + model + " --batch 2,x");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("--batch"), std::string::npos) << bad.output;
  auto bad_block = run("bench offline --model " + model + " --kv-block-size 0");
  EXPECT_NE(bad_block.exit_code, 0);
  EXPECT_NE(bad_block.output.find("--kv-block-size"), std::string::npos) << bad_block.output;

  // Sampled tokens: the report says so, and bad parameters are refused before loading.
  auto sampled = run("bench offline --model " + model +
                     " --device cpu --threads 2 --input-len 4 --output-len 3 --temperature 0.8 --top-p 0.9 --top-k 5");
  ASSERT_EQ(sampled.exit_code, 0) << sampled.output;
  EXPECT_NE(sampled.output.find("sampled (temperature 0.8, top-p 0.9, top-k 5)"), std::string::npos) << sampled.output;
  auto sampled_json = run("bench offline --model " + model +
                          " --device cpu --threads 2 --input-len 4 --output-len 3 --temperature 1 --json");
  ASSERT_EQ(sampled_json.exit_code, 0) << sampled_json.output;
  auto sj = nlohmann::json::parse(sampled_json.output, nullptr, false);
  ASSERT_FALSE(sj.is_discarded()) << sampled_json.output;
  EXPECT_EQ(sj["temperature"], 1.0);
  EXPECT_GT(sj["runs"][0]["decode_tokens_per_second"].get<double>(), 0.0) << sj.dump();
  auto bad_top_p = run("bench offline --model " + model + " --temperature 1 --top-p 1.5");
  EXPECT_NE(bad_top_p.exit_code, 0);
  EXPECT_NE(bad_top_p.output.find("top_p"), std::string::npos) << bad_top_p.output;
}

}  // namespace
}  // namespace bw
