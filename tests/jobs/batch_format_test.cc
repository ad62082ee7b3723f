// The Batch API file formats: input validation (OpenAI's errors list) and the output and
// error file lines.
#include "jobs/batch_format.h"

#include <gtest/gtest.h>

#include <set>

#include <nlohmann/json.hpp>

namespace bw::jobs {
namespace {

using Json = nlohmann::json;

constexpr const char* kChat = "/v1/chat/completions";

std::string line(const std::string& custom_id, const std::string& url = kChat, const std::string& body = "{}") {
  return R"({"custom_id":")" + custom_id + R"(","method":"POST","url":")" + url + R"(","body":)" + body + "}";
}

TEST(BatchFormat, ParsesValidLinesSkippingBlankOnes) {
  const std::string content =
      line("a", kChat, R"({"messages":[{"role":"user","content":"hi"}]})") + "\n\n" + line("b") + "\r\n";
  ParsedBatchInput parsed = parse_batch_input(content, kChat);
  ASSERT_TRUE(parsed.errors.empty()) << batch_errors_json(parsed.errors);
  ASSERT_EQ(parsed.lines.size(), 2u);
  EXPECT_EQ(parsed.lines[0].custom_id, "a");
  EXPECT_EQ(parsed.lines[0].line, 0);
  EXPECT_EQ(parsed.lines[1].custom_id, "b");
  EXPECT_EQ(parsed.lines[1].line, 2);  // the blank line keeps its number
  EXPECT_EQ(parsed.lines[0].url, kChat);
  EXPECT_EQ(Json::parse(parsed.lines[0].body)["messages"][0]["content"], "hi");
}

TEST(BatchFormat, ReportsEveryBadLineInOpenAiShape) {
  const std::string content = line("a") + "\n" +                     // 1 ok
                              "not json\n" +                         // 2
                              line("a") + "\n" +                     // 3 duplicate
                              line("c", "/v1/completions") + "\n" +  // 4 wrong url
                              R"({"custom_id":"d","method":"GET","url":"/v1/chat/completions","body":{}})" + "\n" +
                              R"({"custom_id":"e","method":"POST","url":"/v1/chat/completions","body":[]})" + "\n" +
                              R"({"method":"POST","url":"/v1/chat/completions","body":{}})" + "\n";
  ParsedBatchInput parsed = parse_batch_input(content, kChat);
  const Json errors = Json::parse(batch_errors_json(parsed.errors));
  EXPECT_EQ(errors["object"], "list");
  ASSERT_EQ(errors["data"].size(), 6u) << errors.dump();
  std::vector<std::pair<std::string, int>> got;
  for (const Json& e : errors["data"]) {
    got.emplace_back(e["code"], e["line"]);
    EXPECT_TRUE(e["message"].is_string());
    EXPECT_TRUE(e.contains("param"));
  }
  const std::vector<std::pair<std::string, int>> want = {
      {"invalid_json_line", 2}, {"duplicate_custom_id", 3},        {"mismatched_endpoint", 4},
      {"invalid_method", 5},    {"missing_required_parameter", 6}, {"missing_required_parameter", 7}};
  EXPECT_EQ(got, want);
}

TEST(BatchFormat, EmptyFileAndTooManyRequests) {
  ParsedBatchInput empty = parse_batch_input("\n\n", kChat);
  ASSERT_EQ(empty.errors.size(), 1u);
  EXPECT_EQ(empty.errors[0].code, "empty_file");
  BatchInputLimits limits;
  limits.max_requests = 2;
  ParsedBatchInput many = parse_batch_input(line("a") + "\n" + line("b") + "\n" + line("c") + "\n", kChat, limits);
  ASSERT_EQ(many.errors.size(), 1u);
  EXPECT_EQ(many.errors[0].code, "too_many_requests");
  EXPECT_EQ(many.errors[0].line, 3);
}

JobRecord job(int64_t line, JobState state, std::optional<JobResult> result, std::string error = "") {
  JobRecord j;
  j.spec.id = "job-" + std::to_string(line);
  j.spec.batch_id = "batch_x";
  j.spec.line = line;
  j.spec.custom_id = "req-" + std::to_string(line);
  j.state = state;
  j.result = std::move(result);
  j.error = std::move(error);
  return j;
}

TEST(BatchFormat, OutputAndErrorLines) {
  const std::vector<JobRecord> jobs = {
      job(0, JobState::kSucceeded, JobResult{200, R"({"id":"chatcmpl-1","object":"chat.completion"})"}),
      job(1, JobState::kFailed, JobResult{400, R"({"error":{"message":"bad","type":"invalid_request_error"}})"},
          "the endpoint answered HTTP 400"),
      job(2, JobState::kFailed, std::nullopt, "engine failure (after 4 attempts)"),
      job(3, JobState::kCancelled, std::nullopt, "cancelled"),
      job(4, JobState::kRunning, std::nullopt),  // not terminal: left out
  };
  BatchResultFiles files = build_batch_result_files(jobs, "batch_x", /*batch_expired=*/false);
  EXPECT_EQ(files.num_output_lines, 1);
  EXPECT_EQ(files.num_error_lines, 3);
  std::istringstream out(files.output);
  std::string text;
  ASSERT_TRUE(std::getline(out, text));
  Json ok = Json::parse(text);
  EXPECT_EQ(ok["custom_id"], "req-0");
  EXPECT_EQ(ok["id"].get<std::string>().rfind("batch_req_", 0), 0u);
  EXPECT_EQ(ok["response"]["status_code"], 200);
  EXPECT_EQ(ok["response"]["body"]["id"], "chatcmpl-1");
  EXPECT_TRUE(ok["response"]["request_id"].is_string());
  EXPECT_TRUE(ok["error"].is_null());

  std::istringstream err(files.errors);
  std::vector<Json> lines;
  while (std::getline(err, text))
    lines.push_back(Json::parse(text));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["custom_id"], "req-1");  // input order
  EXPECT_EQ(lines[0]["response"]["status_code"], 400);
  EXPECT_EQ(lines[0]["response"]["body"]["error"]["message"], "bad");
  EXPECT_TRUE(lines[0]["error"].is_null());
  EXPECT_TRUE(lines[1]["response"].is_null());
  EXPECT_EQ(lines[1]["error"]["code"], "request_failed");
  EXPECT_EQ(lines[1]["error"]["message"], "engine failure (after 4 attempts)");
  EXPECT_EQ(lines[2]["error"]["code"], "batch_cancelled");

  BatchResultFiles expired = build_batch_result_files(jobs, "batch_x", /*batch_expired=*/true);
  EXPECT_NE(expired.errors.find("batch_expired"), std::string::npos);
}

TEST(BatchFormat, IdsAreDeterministicPerBatchAndLine) {
  EXPECT_EQ(batch_output_file_id("batch_1"), batch_output_file_id("batch_1"));
  EXPECT_NE(batch_output_file_id("batch_1"), batch_error_file_id("batch_1"));
  EXPECT_NE(batch_output_file_id("batch_1"), batch_output_file_id("batch_2"));
  std::set<std::string> ids;
  for (int64_t i = 0; i < 1000; ++i)
    ids.insert(batch_request_id("batch_1", i));
  EXPECT_EQ(ids.size(), 1000u);
  EXPECT_EQ(batch_request_id("batch_1", 7), batch_request_id("batch_1", 7));
  EXPECT_NE(batch_request_id("batch_1", 7), batch_request_id("batch_2", 7));
}

}  // namespace
}  // namespace bw::jobs
