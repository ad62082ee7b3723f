// Async jobs end to end: the real `breakwater serve` on the stories260K model with a real
// SQLite file or a real redis-server, driven with curl. Crash safety: kill -9 a server while
// a 200-request batch runs; after the restart (or on the other replica sharing Redis) every
// request ends exactly once in the output or error file.
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/redis_server.h"
#include "support/server_process.h"
#include "support/test_support.h"

namespace bw {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;

using test::curl;
using test::HttpResult;
using test::ServerProcess;

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s)
    q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

HttpResult post_json(const std::string& url, const Json& body) {
  return curl("-H 'Content-Type: application/json' -d " + quote(body.dump()) + " " + url);
}

Json parse(const HttpResult& r) {
  Json j = Json::parse(r.body, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << r.status << " " << r.body;
  return j;
}

std::vector<Json> jsonl(const std::string& text) {
  std::vector<Json> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out.push_back(Json::parse(line));
  }
  return out;
}

// A 200-line batch input for /v1/completions (greedy, short).
std::string batch_input(int n, int max_tokens) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    Json line = {
        {"custom_id", "req-" + std::to_string(i)},
        {"method", "POST"},
        {"url", "/v1/completions"},
        {"body",
         {{"prompt", "Once upon a time " + std::to_string(i % 7)}, {"max_tokens", max_tokens}, {"temperature", 0}}}};
    out += line.dump() + "\n";
  }
  return out;
}

// Uploads `content` with curl's multipart (as the SDK does) and creates a batch; its id.
std::string submit_batch(const std::string& url, const std::string& content, const test::TempDir& dir) {
  const std::string path = dir.file("input.jsonl");
  std::ofstream(path) << content;
  HttpResult file = curl("-F purpose=batch -F file=@" + path + " " + url + "/v1/files");
  EXPECT_EQ(file.status, 200) << file.body;
  Json f = parse(file);
  EXPECT_EQ(f["object"], "file");
  EXPECT_EQ(f["purpose"], "batch");
  EXPECT_EQ(f["bytes"], content.size());
  HttpResult batch = post_json(url + "/v1/batches", {{"input_file_id", f["id"]},
                                                     {"endpoint", "/v1/completions"},
                                                     {"completion_window", "24h"},
                                                     {"metadata", {{"test", "e2e"}}}});
  EXPECT_EQ(batch.status, 200) << batch.body;
  Json b = parse(batch);
  EXPECT_EQ(b["object"], "batch");
  EXPECT_EQ(b["status"], "in_progress") << b.dump();
  EXPECT_EQ(b["request_counts"]["total"], 200);
  EXPECT_EQ(b["metadata"]["test"], "e2e");
  return b.value("id", "");
}

Json get_batch(const std::string& url, const std::string& id) { return parse(curl(url + "/v1/batches/" + id)); }

// Polls until the batch is completed (or `timeout`); the last batch object.
Json wait_batch(const std::string& url, const std::string& id, std::chrono::seconds timeout) {
  Json b;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    b = get_batch(url, id);
    if (b.value("status", "") == "completed") break;
    std::this_thread::sleep_for(100ms);
  }
  return b;
}

// Polls until at least `n` requests of the batch ended.
bool wait_progress(const std::string& url, const std::string& id, int n, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    Json b = get_batch(url, id);
    if (b.contains("request_counts") &&
        b["request_counts"]["completed"].get<int>() + b["request_counts"]["failed"].get<int>() >= n)
      return true;
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

// Every custom_id exactly once across the output and error files; counts agree.
void check_batch_results(const std::string& url, const Json& batch, int n) {
  ASSERT_EQ(batch["status"], "completed") << batch.dump();
  std::map<std::string, int> seen;
  int num_output = 0;
  int num_error = 0;
  if (batch["output_file_id"].is_string()) {
    HttpResult out = curl(url + "/v1/files/" + batch["output_file_id"].get<std::string>() + "/content");
    ASSERT_EQ(out.status, 200);
    for (const Json& line : jsonl(out.body)) {
      ++seen[line["custom_id"]];
      ++num_output;
      EXPECT_EQ(line["response"]["status_code"], 200) << line.dump();
      EXPECT_EQ(line["response"]["body"]["object"], "text_completion") << line.dump();
      EXPECT_TRUE(line["error"].is_null());
      EXPECT_EQ(line["id"].get<std::string>().rfind("batch_req_", 0), 0u);
    }
  }
  if (batch["error_file_id"].is_string()) {
    HttpResult err = curl(url + "/v1/files/" + batch["error_file_id"].get<std::string>() + "/content");
    ASSERT_EQ(err.status, 200);
    for (const Json& line : jsonl(err.body)) {
      ++seen[line["custom_id"]];
      ++num_error;
      // Failed with a reason: an endpoint answer or an error message.
      EXPECT_TRUE(line["response"].is_object() || line["error"]["message"].is_string()) << line.dump();
    }
  }
  EXPECT_EQ(static_cast<int>(seen.size()), n);
  for (int i = 0; i < n; ++i)
    EXPECT_EQ(seen["req-" + std::to_string(i)], 1) << "req-" << i;
  EXPECT_EQ(batch["request_counts"]["total"], n);
  EXPECT_EQ(batch["request_counts"]["completed"], num_output);
  EXPECT_EQ(batch["request_counts"]["failed"], num_error);
}

// How many of a batch's jobs (ids "job-<batch>-<line>") needed more than one attempt; every
// one must have succeeded.
int count_reruns(const std::string& url, const std::string& batch_id, int n) {
  std::string urls;
  for (int i = 0; i < n; ++i)
    urls += " " + url + "/v1/jobs/job-" + batch_id + "-" + std::to_string(i);
  test::CommandResult jobs = test::run_shell("curl -sS -w '\\n'" + urls);
  int num_jobs = 0;
  int num_rerun = 0;
  for (const Json& job : jsonl(jobs.output)) {
    ++num_jobs;
    EXPECT_EQ(job["status"], "succeeded") << job.dump();
    if (job["attempts"].get<int>() >= 2) ++num_rerun;
  }
  EXPECT_EQ(num_jobs, n);
  return num_rerun;
}

// The breakwater:jobs_claimed_total of a replica (-1 when absent).
int64_t jobs_claimed(const std::string& url) {
  const std::string body = curl(url + "/metrics").body;
  constexpr std::string_view kName = "breakwater:jobs_claimed_total{";
  const size_t at = body.find(kName);
  if (at == std::string::npos) return -1;
  const size_t space = body.find("} ", at);
  if (space == std::string::npos) return -1;
  return std::atoll(body.c_str() + space + 2);
}

class JobsE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = test::testdata_file("models/stories260K.gguf");
    if (!model) GTEST_SKIP() << "shared test data not found: models/stories260K.gguf (set BW_TESTDATA)";
    model_ = model->string();
  }
  std::vector<std::string> args(std::vector<std::string> extra) const {
    // No response cache: every request of a batch runs in the engine.
    std::vector<std::string> a = {"--model",   model_, "--served-model-name", "stories",
                                  "--threads", "1",    "--cache-mode",        "off"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  std::string model_;
  test::TempDir dir_;
};

TEST_F(JobsE2eTest, SqliteBatchSurvivesKill9) {
  const std::string data = dir_.file("data");
  std::string batch_id;
  {
    ServerProcess server(BW_BREAKWATER_BIN, args({"--data-dir", data, "--job-lease-seconds", "2", "--max-seqs", "8",
                                                  "--debug-step-delay-ms", "15"}));
    ASSERT_TRUE(server.wait_ready());
    batch_id = submit_batch(server.url(), batch_input(200, 6), dir_);
    ASSERT_FALSE(batch_id.empty());
    ASSERT_TRUE(wait_progress(server.url(), batch_id, 12, 20s));
    server.kill9();  // mid-run: some done, some running under a lease, most queued
  }
  ASSERT_TRUE(std::filesystem::exists(data + "/jobs.sqlite3"));
  ServerProcess again(BW_BREAKWATER_BIN, args({"--data-dir", data, "--job-lease-seconds", "2", "--max-seqs", "32"}));
  ASSERT_TRUE(again.wait_ready());
  Json before = get_batch(again.url(), batch_id);
  EXPECT_EQ(before["status"], "in_progress") << before.dump();
  Json batch = wait_batch(again.url(), batch_id, 30s);
  check_batch_results(again.url(), batch, 200);
  EXPECT_EQ(batch["request_counts"]["completed"], 200) << batch.dump();  // nothing failed here
  // The jobs that were running at the kill were run again once their leases expired.
  EXPECT_GT(count_reruns(again.url(), batch_id, 200), 0);

  // The batch is listed, newest first, with OpenAI's list shape.
  Json list = parse(curl(again.url() + "/v1/batches?limit=1"));
  EXPECT_EQ(list["object"], "list");
  EXPECT_EQ(list["first_id"], batch_id);
  EXPECT_EQ(list["has_more"], false);
  EXPECT_EQ(again.terminate(), 0);
}

TEST_F(JobsE2eTest, RedisReplicasShareABatchAndSurviveKill9) {
  BW_REDIS_OR_SKIP();
  test::RedisServer redis;
  ASSERT_TRUE(redis.start());
  const std::vector<std::string> common = {
      "--redis-url", redis.url(),  "--job-lease-seconds", "2", "--max-seqs", "8", "--debug-step-delay-ms",
      "15",          "--data-dir", dir_.file("unused")};
  ServerProcess a(BW_BREAKWATER_BIN, args(common));
  ServerProcess b(BW_BREAKWATER_BIN, args(common));
  ASSERT_TRUE(a.wait_ready());
  ASSERT_TRUE(b.wait_ready());
  const std::string batch_id = submit_batch(a.url(), batch_input(200, 6), dir_);
  ASSERT_FALSE(batch_id.empty());
  // Both replicas take part before one dies.
  bool both = false;
  for (int i = 0; i < 400 && !both; ++i) {
    both = jobs_claimed(a.url()) > 0 && jobs_claimed(b.url()) > 0;
    if (!both) std::this_thread::sleep_for(25ms);
  }
  EXPECT_TRUE(both) << "a claimed " << jobs_claimed(a.url()) << ", b claimed " << jobs_claimed(b.url());
  ASSERT_TRUE(wait_progress(b.url(), batch_id, 12, 20s));
  const int64_t a_claimed = jobs_claimed(a.url());
  a.kill9();
  EXPECT_GT(a_claimed, 0);
  Json batch = wait_batch(b.url(), batch_id, 40s);
  check_batch_results(b.url(), batch, 200);
  EXPECT_GT(jobs_claimed(b.url()), 0);
  EXPECT_GT(count_reruns(b.url(), batch_id, 200), 0);  // what `a` was running, `b` ran again
  EXPECT_EQ(b.terminate(), 0);
}

TEST_F(JobsE2eTest, SingleJobsMatchTheSynchronousAnswerAndCancel) {
  ServerProcess server(BW_BREAKWATER_BIN, args({"--data-dir", dir_.file("data"), "--job-concurrency", "1",
                                                "--job-lease-seconds", "3", "--debug-step-delay-ms", "5"}));
  ASSERT_TRUE(server.wait_ready());
  const std::string v1 = server.url() + "/v1";
  const Json body = {{"prompt", "Once upon a time"}, {"max_tokens", 12}, {"temperature", 0}};
  HttpResult sync = post_json(v1 + "/completions", body);
  ASSERT_EQ(sync.status, 200) << sync.body;

  Json job_body = body;
  job_body["url"] = "/v1/completions";
  HttpResult created = post_json(v1 + "/jobs", job_body);
  ASSERT_EQ(created.status, 202) << created.body;
  Json job = parse(created);
  EXPECT_EQ(job["object"], "job");
  EXPECT_EQ(job["url"], "/v1/completions");
  EXPECT_TRUE(job["status"] == "queued" || job["status"] == "running") << job.dump();
  const std::string id = job["id"];
  for (int i = 0; i < 300 && job["status"] != "succeeded" && job["status"] != "failed"; ++i) {
    std::this_thread::sleep_for(20ms);
    job = parse(curl(v1 + "/jobs/" + id));
  }
  ASSERT_EQ(job["status"], "succeeded") << job.dump();
  EXPECT_EQ(job["attempts"], 1);
  EXPECT_TRUE(job["error"].is_null());
  EXPECT_TRUE(job["finished_at"].is_number());
  EXPECT_EQ(job["result"]["choices"][0]["text"], parse(sync)["choices"][0]["text"]);

  // A bad body is a 400 at POST time, like the endpoint's.
  HttpResult bad = post_json(v1 + "/jobs", {{"messages", "not a list"}});
  EXPECT_EQ(bad.status, 400) << bad.body;
  EXPECT_TRUE(parse(bad)["error"]["message"].is_string());
  EXPECT_EQ(curl(v1 + "/jobs/job-nope").status, 404);

  // One slot: a long job runs, the next waits queued and is cancelled.
  Json long_body = {
      {"url", "/v1/completions"}, {"prompt", "Once upon a time"}, {"max_tokens", 400}, {"ignore_eos", true}};
  HttpResult running = post_json(v1 + "/jobs", long_body);
  ASSERT_EQ(running.status, 202) << running.body;
  HttpResult queued = post_json(v1 + "/jobs", job_body);
  ASSERT_EQ(queued.status, 202);
  const std::string queued_id = parse(queued)["id"];
  HttpResult cancelled = curl("-X DELETE " + v1 + "/jobs/" + queued_id);
  ASSERT_EQ(cancelled.status, 200) << cancelled.body;
  EXPECT_EQ(parse(cancelled)["status"], "cancelled");
  EXPECT_EQ(parse(curl(v1 + "/jobs/" + queued_id))["status"], "cancelled");
  EXPECT_EQ(curl("-X DELETE " + v1 + "/jobs/" + queued_id).status, 409);
  // The running one can be cancelled too: it stops within a lease renewal.
  const std::string running_id = parse(running)["id"];
  EXPECT_EQ(curl("-X DELETE " + v1 + "/jobs/" + running_id).status, 200);
  EXPECT_EQ(server.terminate(), 0);
}

TEST_F(JobsE2eTest, InteractiveRequestsAreServedWhileABatchRuns) {
  ServerProcess server(BW_BREAKWATER_BIN,
                       args({"--data-dir", dir_.file("data"), "--max-seqs", "8", "--debug-step-delay-ms", "15"}));
  ASSERT_TRUE(server.wait_ready());
  const std::string batch_id = submit_batch(server.url(), batch_input(200, 6), dir_);
  ASSERT_TRUE(wait_progress(server.url(), batch_id, 4, 20s));
  for (int i = 0; i < 3; ++i) {
    HttpResult r =
        post_json(server.url() + "/v1/completions", {{"prompt", "Hello"}, {"max_tokens", 4}, {"temperature", 0}});
    EXPECT_EQ(r.status, 200) << r.body;
  }
  // Answered while the batch still had work: interactive traffic did not wait for it.
  Json b = get_batch(server.url(), batch_id);
  EXPECT_EQ(b["status"], "in_progress") << b.dump();
  EXPECT_LT(b["request_counts"]["completed"].get<int>(), 200);
  // Cancel it so the server stops quickly.
  HttpResult c = curl("-X POST " + server.url() + "/v1/batches/" + batch_id + "/cancel");
  EXPECT_EQ(c.status, 200) << c.body;
  EXPECT_TRUE(parse(c)["status"] == "cancelling" || parse(c)["status"] == "cancelled");
  Json end;
  for (int i = 0; i < 200; ++i) {
    end = get_batch(server.url(), batch_id);
    if (end["status"] == "cancelled") break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(end["status"], "cancelled") << end.dump();
  EXPECT_EQ(server.terminate(), 0);
}

TEST_F(JobsE2eTest, ValidationErrorsAndFileRoutes) {
  ServerProcess server(BW_BREAKWATER_BIN, args({"--data-dir", dir_.file("data")}));
  ASSERT_TRUE(server.wait_ready());
  const std::string url = server.url();
  const std::string path = dir_.file("bad.jsonl");
  std::ofstream(path) << R"({"custom_id":"a","method":"POST","url":"/v1/completions","body":{}})"
                      << "\n"
                      << "{oops\n"
                      << R"({"custom_id":"a","method":"POST","url":"/v1/completions","body":{}})"
                      << "\n";
  HttpResult file = curl("-F purpose=batch -F file=@" + path + " " + url + "/v1/files");
  ASSERT_EQ(file.status, 200) << file.body;
  const std::string file_id = parse(file)["id"];
  EXPECT_EQ(parse(curl(url + "/v1/files/" + file_id))["filename"], "bad.jsonl");
  HttpResult content = curl(url + "/v1/files/" + file_id + "/content");
  EXPECT_EQ(content.body.substr(0, 14), R"({"custom_id":")");
  Json batch =
      parse(post_json(url + "/v1/batches",
                      {{"input_file_id", file_id}, {"endpoint", "/v1/completions"}, {"completion_window", "24h"}}));
  EXPECT_EQ(batch["status"], "failed") << batch.dump();
  ASSERT_EQ(batch["errors"]["object"], "list");
  ASSERT_EQ(batch["errors"]["data"].size(), 2u);
  EXPECT_EQ(batch["errors"]["data"][0]["code"], "invalid_json_line");
  EXPECT_EQ(batch["errors"]["data"][0]["line"], 2);
  EXPECT_EQ(batch["errors"]["data"][1]["code"], "duplicate_custom_id");

  EXPECT_EQ(curl(url + "/v1/files/file-nope").status, 404);
  EXPECT_EQ(curl(url + "/v1/batches/batch_nope").status, 404);
  EXPECT_EQ(post_json(url + "/v1/batches", {{"input_file_id", "file-nope"}, {"endpoint", "/v1/completions"}}).status,
            404);
  EXPECT_EQ(post_json(url + "/v1/batches", {{"input_file_id", file_id}, {"endpoint", "/v1/embeddings"}}).status, 400);
  EXPECT_EQ(curl("-F purpose=fine-tune -F file=@" + path + " " + url + "/v1/files").status, 400);
  EXPECT_EQ(curl("-X POST " + url + "/v1/batches/" + batch["id"].get<std::string>() + "/cancel").status, 409);
  EXPECT_EQ(server.terminate(), 0);
}

// The official OpenAI Node SDK (multipart upload, batches.create/retrieve/list, files.content).
TEST_F(JobsE2eTest, OfficialOpenAiSdkBatchFlow) {
  const auto sdk = test::source_dir() / "tests/e2e/node_modules/openai/index.mjs";
  ASSERT_TRUE(std::filesystem::exists(sdk))
      << "the openai npm package is missing: run scripts/install-deps.sh (npm ci in tests/e2e)";
  ServerProcess server(BW_BREAKWATER_BIN, args({"--data-dir", dir_.file("data"), "--api-key", "k"}));
  ASSERT_TRUE(server.wait_ready());
  const std::string input = dir_.file("in.jsonl");
  std::ofstream(input)
      << R"({"custom_id":"a","method":"POST","url":"/v1/completions","body":{"model":"stories","prompt":"Once upon","max_tokens":5,"temperature":0}})"
      << "\n"
      << R"({"custom_id":"b","method":"POST","url":"/v1/completions","body":{"model":"nope","prompt":"Once upon"}})"
      << "\n";
  const std::string script = dir_.file("batch.mjs");
  std::ofstream(script) << "import OpenAI from '" << sdk.string() << "';\n"
                        << "import fs from 'fs';\n"
                        << "const c = new OpenAI({baseURL: process.env.BW_URL, apiKey: 'k'});\n"
                        << "const f = await c.files.create({file: fs.createReadStream(process.env.BW_INPUT), "
                           "purpose: 'batch'});\n"
                        << "let b = await c.batches.create({input_file_id: f.id, endpoint: '/v1/completions', "
                           "completion_window: '24h'});\n"
                        << "for (let i = 0; i < 200 && b.status !== 'completed'; ++i) {\n"
                        << "  await new Promise(r => setTimeout(r, 50)); b = await c.batches.retrieve(b.id); }\n"
                        << "const out = await (await c.files.content(b.output_file_id)).text();\n"
                        << "const err = await (await c.files.content(b.error_file_id)).text();\n"
                        << "const list = await c.batches.list({limit: 5});\n"
                        << "console.log(JSON.stringify({status: b.status, counts: b.request_counts, out, err, "
                           "listed: list.data.map(x => x.id).includes(b.id)}));\n";
  test::CommandResult r =
      test::run_shell("BW_URL=" + server.url() + "/v1 BW_INPUT=" + input + " node " + script + " 2>&1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Json j = Json::parse(r.output, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.output;
  EXPECT_EQ(j["status"], "completed");
  EXPECT_EQ(j["counts"]["completed"], 1);
  EXPECT_EQ(j["counts"]["failed"], 1);
  EXPECT_TRUE(j["listed"].get<bool>());
  EXPECT_EQ(Json::parse(j["out"].get<std::string>())["custom_id"], "a");
  const Json err = Json::parse(j["err"].get<std::string>());
  EXPECT_EQ(err["custom_id"], "b");
  EXPECT_EQ(err["response"]["status_code"], 404);
  EXPECT_EQ(server.terminate(), 0);
}

}  // namespace
}  // namespace bw
