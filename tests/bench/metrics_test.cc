#include "bench/metrics.h"

#include <gtest/gtest.h>

#include <vector>

#include "bench/report.h"

namespace bw::bench {
namespace {

TEST(PercentileTest, LinearInterpolationLikeNumpy) {
  const std::vector<double> v = {1, 2, 3, 4};
  EXPECT_DOUBLE_EQ(percentile(v, 0), 1.0);
  EXPECT_DOUBLE_EQ(percentile(v, 100), 4.0);
  EXPECT_DOUBLE_EQ(percentile(v, 50), 2.5);
  EXPECT_DOUBLE_EQ(percentile(v, 90), 3.7);  // numpy.percentile([1,2,3,4], 90)
  EXPECT_DOUBLE_EQ(percentile(v, 99), 3.97);
  const std::vector<double> one = {5};
  EXPECT_DOUBLE_EQ(percentile(one, 99), 5.0);
  EXPECT_DOUBLE_EQ(percentile({}, 50), 0.0);
  std::vector<double> hundred;
  for (int i = 1; i <= 101; ++i)
    hundred.push_back(i);
  EXPECT_DOUBLE_EQ(percentile(hundred, 50), 51.0);
  EXPECT_DOUBLE_EQ(percentile(hundred, 99), 100.0);
}

TEST(LatencyStatsTest, UnsortedInput) {
  const LatencyStats s = latency_stats({4, 1, 3, 2});
  EXPECT_EQ(s.count, 4u);
  EXPECT_DOUBLE_EQ(s.mean, 2.5);
  EXPECT_DOUBLE_EQ(s.p50, 2.5);
  EXPECT_DOUBLE_EQ(s.min, 1);
  EXPECT_DOUBLE_EQ(s.max, 4);
  EXPECT_NEAR(s.stddev, 1.118033988749895, 1e-12);
  EXPECT_EQ(latency_stats({}).count, 0u);
}

RequestRecord ok_record(size_t i, double ttft, double e2e, int64_t tokens, std::vector<double> itl) {
  RequestRecord r;
  r.index = i;
  r.success = true;
  r.prompt_len = 10;
  r.prompt_tokens = 12;
  r.usage_reported = true;
  r.ttft_s = ttft;
  r.e2e_s = e2e;
  r.output_tokens = tokens;
  r.num_text_chunks = tokens;
  r.itl_s = std::move(itl);
  return r;
}

TEST(SummarizeTest, InvariantsAndDefinitions) {
  std::vector<RequestRecord> records;
  records.push_back(ok_record(0, 0.100, 1.000, 10, {0.1, 0.1}));  // TPOT 0.9/9 = 100 ms
  records.push_back(ok_record(1, 0.300, 0.700, 5, {0.1}));        // TPOT 0.4/4 = 100 ms
  records.push_back(ok_record(2, 0.050, 0.050, 1, {}));           // one token: no TPOT
  records[2].usage_reported = false;
  records[2].prompt_tokens.reset();
  RequestRecord failed;
  failed.index = 3;
  failed.failure = "http_429";
  records.push_back(failed);
  failed.failure = "timeout";
  records.push_back(failed);
  failed.failure = "http_429";
  records.push_back(failed);

  SloOptions slo;
  slo.ttft_ms = 200;
  const BenchSummary s = summarize(records, 2.0, slo);
  EXPECT_EQ(s.num_sent, 6u);
  EXPECT_EQ(s.num_completed + s.num_failed, s.num_sent);
  EXPECT_EQ(s.num_completed, 3u);
  EXPECT_EQ(s.failures.at("http_429"), 2u);
  EXPECT_EQ(s.failures.at("timeout"), 1u);
  EXPECT_EQ(s.total_output_tokens, 16);
  EXPECT_EQ(s.total_input_tokens, 12 + 12 + 10);
  EXPECT_FALSE(s.input_from_usage);
  EXPECT_EQ(s.num_without_usage, 1u);
  EXPECT_DOUBLE_EQ(s.output_throughput, 16 / 2.0);
  EXPECT_DOUBLE_EQ(s.request_throughput, 3 / 2.0);
  EXPECT_DOUBLE_EQ(s.total_token_throughput, (34 + 16) / 2.0);
  EXPECT_EQ(s.tpot_ms.count, 2u);
  EXPECT_NEAR(s.tpot_ms.mean, 100.0, 1e-9);
  EXPECT_EQ(s.itl_ms.count, 3u);
  EXPECT_NEAR(s.itl_ms.mean, 100.0, 1e-9);
  EXPECT_EQ(s.ttft_ms.count, 3u);
  EXPECT_NEAR(s.ttft_ms.p50, 100.0, 1e-9);
  EXPECT_NEAR(s.e2e_ms.max, 1000.0, 1e-9);
  ASSERT_TRUE(s.has_slo);
  EXPECT_EQ(s.num_good, 2u);  // the 300 ms TTFT misses
  EXPECT_DOUBLE_EQ(s.goodput, 1.0);

  // The JSON report carries the same numbers and every record.
  RunDescription run;
  run.request_rate = std::numeric_limits<double>::infinity();
  run.max_concurrency = 2;
  const nlohmann::json j = report_json(s, records, run);
  EXPECT_EQ(j["config"]["request_rate"], "inf");
  EXPECT_EQ(j["summary"]["num_failed"], 3);
  EXPECT_EQ(j["summary"]["failures"]["http_429"], 2);
  ASSERT_EQ(j["requests"].size(), 6u);
  EXPECT_EQ(j["requests"][3]["failure"], "http_429");
  EXPECT_TRUE(j["requests"][2]["tpot_s"].is_null());
  const std::string table = format_report(s, run);
  EXPECT_NE(table.find("closed loop, 2 in flight"), std::string::npos) << table;
  EXPECT_NE(table.find("http_429:"), std::string::npos) << table;
  EXPECT_NE(table.find("1 of 3 responses had no usage"), std::string::npos) << table;
  EXPECT_NE(table.find("Request goodput"), std::string::npos) << table;
}

TEST(SummarizeTest, NoRequestsAndNoTime) {
  const BenchSummary s = summarize({}, 0.0, {});
  EXPECT_EQ(s.num_sent, 0u);
  EXPECT_EQ(s.output_throughput, 0.0);
  EXPECT_FALSE(s.has_slo);
}

}  // namespace
}  // namespace bw::bench
