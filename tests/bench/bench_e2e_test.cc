// `breakwater bench serve` and tools/locustfile.py end to end: the real server on the
// stories260K model, a bounded benchmark run in each load mode, and the report's
// invariants checked against the server's own /metrics counters.
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/server_process.h"
#include "support/test_support.h"

namespace bw {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;

using test::ServerProcess;

// The value of an unlabelled-or-labelled counter line "name{...} value" in /metrics.
double metric_value(const std::string& url, const std::string& name) {
  const std::string text = test::run_shell("curl -s " + url + "/metrics").output;
  std::istringstream lines(text);
  double total = 0.0;
  bool found = false;
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(name, 0) != 0) continue;
    const char next = line.size() > name.size() ? line[name.size()] : ' ';
    if (next != '{' && next != ' ') continue;
    total += std::stod(line.substr(line.rfind(' ') + 1));
    found = true;
  }
  EXPECT_TRUE(found) << name << " not in /metrics";
  return total;
}

class BenchServeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = test::testdata_file("models/stories260K.gguf");
    if (!model) GTEST_SKIP() << "shared test data not found: models/stories260K.gguf (set BW_TESTDATA)";
    model_ = model->string();
    server_ = std::make_unique<ServerProcess>(
        BW_BREAKWATER_BIN,
        std::vector<std::string>{"--model", model_, "--served-model-name", "stories", "--api-key", "bench-key",
                                 "--chat-template", (test::source_dir() / "tests/e2e/simple_chat.jinja").string(),
                                 "--data-dir", dir_.file("data")});
    ASSERT_GT(server_->port(), 0);
    ASSERT_TRUE(server_->wait_ready());
  }

  // Runs bench serve with `flags`, checks the report's invariants against the server's
  // counters and returns the JSON report.
  Json run_bench(const std::string& flags) {
    const std::string json_path = dir_.file("report.json");
    const double tokens_before = metric_value(server_->url(), "breakwater:generation_tokens_total");
    const test::CommandResult r =
        test::run_shell("OPENAI_API_KEY=bench-key " + std::string(BW_BREAKWATER_BIN) + " bench serve --url " +
                        server_->url() + " " + flags + " --json " + json_path);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("Serving Benchmark Result"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("\033[K"), std::string::npos) << "progress line on a pipe";
    std::ifstream f(json_path);
    Json report = Json::parse(f, nullptr, false);
    if (report.is_discarded()) {
      ADD_FAILURE() << "no JSON report: " << r.output;
      return Json::object();
    }
    const Json& s = report["summary"];
    const size_t sent = s["num_sent"];
    EXPECT_EQ(s["num_completed"].get<size_t>() + s["num_failed"].get<size_t>(), sent);
    EXPECT_EQ(s["num_failed"], 0) << s.dump() << "\n" << r.output;
    EXPECT_EQ(report["requests"].size(), sent);
    // Output tokens: the sum of the server's usage over requests, and the server's own
    // counter moved by exactly as much.
    int64_t usage_sum = 0;
    for (const Json& req : report["requests"]) {
      EXPECT_TRUE(req["success"].get<bool>()) << req.dump();
      EXPECT_TRUE(req["usage_reported"].get<bool>()) << req.dump();
      EXPECT_EQ(req["output_tokens"], req["expected_output_len"]) << "ignore_eos: " << req.dump();
      EXPECT_GE(req["e2e_s"].get<double>(), req["ttft_s"].get<double>());
      usage_sum += req["output_tokens"].get<int64_t>();
    }
    EXPECT_EQ(s["total_output_tokens"].get<int64_t>(), usage_sum);
    EXPECT_EQ(s["num_without_usage"], 0);
    const double tokens_after = metric_value(server_->url(), "breakwater:generation_tokens_total");
    EXPECT_EQ(static_cast<int64_t>(tokens_after - tokens_before), usage_sum);
    // Throughput is tokens over wall time.
    const double duration = s["duration_s"];
    EXPECT_GT(duration, 0.0);
    EXPECT_NEAR(s["output_throughput"].get<double>(), static_cast<double>(usage_sum) / duration, 1e-6);
    EXPECT_NEAR(s["request_throughput"].get<double>(), static_cast<double>(sent) / duration, 1e-6);
    EXPECT_NEAR(s["total_token_throughput"].get<double>(),
                static_cast<double>(usage_sum + s["total_input_tokens"].get<int64_t>()) / duration, 1e-6);
    std::printf("%s\n", r.output.c_str());
    return report;
  }

  test::TempDir dir_;  // outlives the server, whose job store lives in it
  std::string model_;
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(BenchServeTest, OpenLoopCompletionsWithTokenizer) {
  const Json report = run_bench(
      "--model stories --endpoint completions --request-rate 30 --num-prompts 16 "
      "--input-len 24 --output-len 12 --range-ratio 0.25 --seed 7 --tokenizer " +
      model_ + " --slo-ttft-ms 60000 --slo-tpot-ms 60000");
  ASSERT_TRUE(report.contains("summary"));
  EXPECT_EQ(report["summary"]["num_sent"], 16);
  EXPECT_EQ(report["config"]["request_rate"], 30.0);
  EXPECT_EQ(report["summary"]["num_good"], 16);  // generous SLOs: every request meets them
  EXPECT_TRUE(report["summary"]["input_tokens_from_usage"].get<bool>());
  // Prompt lengths in tokens: the server counts the same tokens (plus BOS at most).
  for (const Json& req : report["requests"]) {
    const int64_t served = req["prompt_tokens"];
    const int64_t asked = req["prompt_len"];
    EXPECT_GE(served, asked);
    EXPECT_LE(served, asked + 1);
  }
  // Poisson arrivals: the sends are spread over time, in order.
  double last = -1.0;
  for (const Json& req : report["requests"]) {
    EXPECT_GE(req["start_s"].get<double>(), last);
    last = req["start_s"];
  }
  // Poisson arrivals at 30 req/s spread 16 requests over about half a second; each is sent
  // at its own time, not held back for later ones.
  EXPECT_LT(report["requests"][0]["start_s"].get<double>(), last - 0.1);
}

TEST_F(BenchServeTest, ClosedLoopChatWithModelDiscovery) {
  // No --model: the first of GET /v1/models ("stories").
  const Json report =
      run_bench("--endpoint chat --concurrency 3 --num-prompts 12 --input-len 10 --output-len 10 --seed 3");
  ASSERT_TRUE(report.contains("summary"));
  EXPECT_EQ(report["config"]["model"], "stories");
  EXPECT_EQ(report["config"]["request_rate"], "inf");
  EXPECT_LE(report["summary"]["max_in_flight"].get<int>(), 3);
  EXPECT_EQ(report["summary"]["max_in_flight"].get<int>(), 3);
  // Keep-alive: connections are reused, not one per request.
  EXPECT_LE(report["summary"]["num_connections"].get<int>(), 3);
  EXPECT_GT(report["summary"]["itl_ms"]["count"].get<int>(), 0);
  // The same prompts again: still generated by the engine (the server's counter moves by
  // the usage again), not replayed from the response cache.
  const Json again =
      run_bench("--endpoint chat --concurrency 3 --num-prompts 12 --input-len 10 --output-len 10 --seed 3");
  EXPECT_EQ(again["summary"]["total_output_tokens"], report["summary"]["total_output_tokens"]);
}

TEST_F(BenchServeTest, BadFlagsAreClearErrors) {
  const std::string bin = std::string(BW_BREAKWATER_BIN) + " bench serve --url " + server_->url();
  test::CommandResult r = test::run_shell(bin + " --num-prompts 2");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--request-rate R"), std::string::npos) << r.output;
  r = test::run_shell(bin + " --num-prompts 2 --concurrency 1 --dataset /nonexistent.json");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("/nonexistent.json"), std::string::npos) << r.output;
  // A wrong key: every request fails with http_401, reported by kind, and the exit code says so.
  r = test::run_shell(bin +
                      " --model stories --api-key wrong --num-prompts 2 --concurrency 1 --input-len 4 "
                      "--output-len 2");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("http_401:"), std::string::npos) << r.output;
}

TEST_F(BenchServeTest, LocustHeadlessZeroFailures) {
  if (test::run_shell("command -v locust").exit_code != 0) {
    GTEST_SKIP() << "locust is not installed (scripts/install-deps.sh installs python3-locust)";
  }
  const std::string locustfile = (test::source_dir() / "tools/locustfile.py").string();
  const std::string csv = dir_.file("locust");
  // Chat streaming, completions and the jobs API (POST /v1/jobs, polled to the end, DELETE).
  const test::CommandResult r = test::run_shell(
      "cd " + dir_.path().string() + " && BW_MODEL=stories OPENAI_API_KEY=bench-key timeout 60 locust -f " +
      locustfile + " --headless -u 6 -r 6 -t 8s --host " + server_->url() +
      " --only-summary --exit-code-on-error 1 --csv " + csv + " ChatStreamUser CompletionsUser JobsUser");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::ifstream f(csv + "_stats.csv");
  std::string header, line, aggregated;
  std::getline(f, header);
  while (std::getline(f, line)) {
    if (line.find("Aggregated") != std::string::npos) aggregated = line;
  }
  ASSERT_FALSE(aggregated.empty()) << r.output;
  // Type,Name,Request Count,Failure Count,...
  std::vector<std::string> cols;
  std::stringstream ss(aggregated);
  for (std::string col; std::getline(ss, col, ',');)
    cols.push_back(col);
  ASSERT_GE(cols.size(), 4u);
  EXPECT_GT(std::stoi(cols[2]), 0) << aggregated;
  EXPECT_EQ(std::stoi(cols[3]), 0) << aggregated << "\n" << r.output;
  EXPECT_NE(r.output.find("ttft"), std::string::npos) << "TTFT custom metric missing: " << r.output;
}

}  // namespace
}  // namespace bw
