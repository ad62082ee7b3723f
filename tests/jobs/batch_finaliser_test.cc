// BatchFinaliser against a real SQLite store on a fake clock: completion with ordered output
// and error files, idempotence across replicas, takeover of a stale finalisation,
// cancellation, expiry and purging.
#include "jobs/batch_finaliser.h"

#include <gtest/gtest.h>

#include <sstream>

#include <nlohmann/json.hpp>

#include "jobs/batch_format.h"
#include "jobs/job_store.h"
#include "support/test_support.h"

namespace bw::jobs {
namespace {

using Json = nlohmann::json;

class BatchFinaliserTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = open_sqlite_job_store(dir_.file("jobs.sqlite3"));
    ASSERT_TRUE(store.ok()) << store.status().message();
    store_ = std::move(*store);
  }

  std::unique_ptr<BatchFinaliser> finaliser(FinaliserConfig config = {}) {
    return std::make_unique<BatchFinaliser>(store_.get(), config, make_null_logger(), [this] { return now_; });
  }

  void create(const std::string& id, int n, int64_t window_s = 86400) {
    BatchRecord batch;
    batch.id = id;
    batch.input_file_id = "file-in";
    batch.endpoint = "/v1/completions";
    batch.created_at = now_ / 1000;
    batch.in_progress_at = batch.created_at;
    batch.expires_at = batch.created_at + window_s;
    std::vector<JobSpec> specs;
    for (int i = 0; i < n; ++i) {
      JobSpec s;
      s.id = "job-" + id + "-" + std::to_string(i);
      s.batch_id = id;
      s.line = i;
      s.custom_id = "c" + std::to_string(i);
      s.url = "/v1/completions";
      s.body = "{}";
      s.created_at_ms = now_;
      specs.push_back(s);
    }
    ASSERT_TRUE(store_->create_batch(batch, specs).ok());
  }

  // Claims every claimable job as `worker`.
  std::vector<JobRecord> claim_all(const std::string& worker = "w") {
    ClaimOptions options;
    options.worker_id = worker;
    options.max_jobs = 1000;
    Result<std::vector<JobRecord>> jobs = store_->claim(options, now_);
    EXPECT_TRUE(jobs.ok());
    return jobs.ok() ? *jobs : std::vector<JobRecord>{};
  }

  BatchRecord batch(const std::string& id) {
    Result<BatchRecord> b = store_->get_batch(id);
    EXPECT_TRUE(b.ok()) << b.status().message();
    return b.ok() ? *b : BatchRecord{};
  }

  std::vector<Json> lines(const std::string& file_id) {
    std::vector<Json> out;
    if (file_id.empty()) return out;
    Result<std::string> content = store_->get_file_content(file_id);
    EXPECT_TRUE(content.ok());
    std::istringstream in(content.ok() ? *content : "");
    for (std::string text; std::getline(in, text);)
      out.push_back(Json::parse(text));
    return out;
  }

  // Ends the claimed jobs: odd lines fail with a 400, even ones succeed (in reverse order).
  void finish_mixed(std::vector<JobRecord> jobs) {
    for (auto it = jobs.rbegin(); it != jobs.rend(); ++it) {
      if (it->spec.line % 2 == 0) {
        ASSERT_TRUE(*store_->complete(it->spec.id, it->worker_id, JobResult{200, R"({"ok":true})"}, now_));
      } else {
        ASSERT_TRUE(*store_->fail_attempt(it->spec.id, it->worker_id, "HTTP 400",
                                          JobResult{400, R"({"error":{"message":"bad"}})"}, std::nullopt, now_));
      }
    }
  }

  test::TempDir dir_;
  std::unique_ptr<JobStore> store_;
  int64_t now_ = 1'700'000'000'000;
};

TEST_F(BatchFinaliserTest, CompletesWithOrderedOutputAndErrorFiles) {
  create("batch_a", 5);
  auto fin = finaliser();
  ASSERT_TRUE(fin->run_once().ok());
  EXPECT_EQ(batch("batch_a").state, BatchState::kInProgress);
  std::vector<JobRecord> jobs = claim_all();
  ASSERT_EQ(jobs.size(), 5u);
  finish_mixed(jobs);
  now_ += 5000;
  ASSERT_TRUE(fin->run_once().ok());
  BatchRecord b = batch("batch_a");
  EXPECT_EQ(b.state, BatchState::kCompleted);
  EXPECT_EQ(b.completed, 3);
  EXPECT_EQ(b.failed, 2);
  EXPECT_EQ(b.completed_at, now_ / 1000);
  EXPECT_EQ(b.output_file_id, batch_output_file_id("batch_a"));
  EXPECT_EQ(b.error_file_id, batch_error_file_id("batch_a"));
  std::vector<Json> out = lines(b.output_file_id);
  std::vector<Json> err = lines(b.error_file_id);
  ASSERT_EQ(out.size(), 3u);
  ASSERT_EQ(err.size(), 2u);
  EXPECT_EQ(out[0]["custom_id"], "c0");
  EXPECT_EQ(out[1]["custom_id"], "c2");
  EXPECT_EQ(out[2]["custom_id"], "c4");
  EXPECT_EQ(err[0]["custom_id"], "c1");
  EXPECT_EQ(err[0]["response"]["status_code"], 400);
  Result<FileRecord> file = store_->get_file(b.output_file_id);
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->purpose, "batch_output");
  EXPECT_EQ(fin->stats().batches_completed, 1);

  // Another pass, and another replica's finaliser: nothing changes.
  auto other = finaliser();
  ASSERT_TRUE(fin->run_once().ok());
  ASSERT_TRUE(other->run_once().ok());
  EXPECT_EQ(fin->stats().batches_completed + other->stats().batches_completed, 1);
  EXPECT_EQ(lines(b.output_file_id).size(), 3u);
}

TEST_F(BatchFinaliserTest, TakesOverAStaleFinalisation) {
  create("batch_b", 2);
  std::vector<JobRecord> jobs = claim_all();
  finish_mixed(jobs);
  // A replica won the CAS to finalizing and died before writing anything.
  BatchRecord stuck = batch("batch_b");
  stuck.state = BatchState::kFinalizing;
  stuck.finalizing_at = now_ / 1000;
  ASSERT_TRUE(*store_->transition_batch("batch_b", BatchState::kInProgress, stuck));
  FinaliserConfig config;
  config.finalizing_timeout_ms = 60000;
  auto fin = finaliser(config);
  now_ += 30000;
  ASSERT_TRUE(fin->run_once().ok());
  EXPECT_EQ(batch("batch_b").state, BatchState::kFinalizing);  // not yet stale
  now_ += 31000;
  ASSERT_TRUE(fin->run_once().ok());
  BatchRecord b = batch("batch_b");
  EXPECT_EQ(b.state, BatchState::kCompleted);
  EXPECT_EQ(lines(b.output_file_id).size(), 1u);
  EXPECT_EQ(lines(b.error_file_id).size(), 1u);
}

TEST_F(BatchFinaliserTest, CancellingEndsWhenNothingRuns) {
  create("batch_c", 3);
  ClaimOptions one;
  one.worker_id = "w";
  one.max_jobs = 1;
  std::vector<JobRecord> running = *store_->claim(one, now_);
  ASSERT_EQ(running.size(), 1u);
  ASSERT_TRUE(store_->cancel_batch("batch_c", now_).ok());
  auto fin = finaliser();
  ASSERT_TRUE(fin->run_once().ok());
  EXPECT_EQ(batch("batch_c").state, BatchState::kCancelling);  // one job still running
  // Its worker finishes it (cancel requested: it ends cancelled, with what it produced).
  ASSERT_TRUE(*store_->complete(running[0].spec.id, "w", JobResult{200, R"({"ok":true})"}, now_));
  ASSERT_TRUE(fin->run_once().ok());
  BatchRecord b = batch("batch_c");
  EXPECT_EQ(b.state, BatchState::kCancelled);
  EXPECT_GT(b.cancelled_at, 0);
  std::vector<Json> err = lines(b.error_file_id);
  const size_t total = err.size() + lines(b.output_file_id).size();
  EXPECT_EQ(total, 3u);
  ASSERT_FALSE(err.empty());
  EXPECT_EQ(err.back()["error"]["code"], "batch_cancelled");
}

TEST_F(BatchFinaliserTest, ExpiredWindowCancelsQueuedJobsAndEndsExpired) {
  create("batch_d", 3, /*window_s=*/60);
  ClaimOptions one;
  one.worker_id = "w";
  one.max_jobs = 1;
  std::vector<JobRecord> done = *store_->claim(one, now_);
  ASSERT_TRUE(*store_->complete(done[0].spec.id, "w", JobResult{200, R"({"ok":true})"}, now_));
  auto fin = finaliser();
  now_ += 61000;
  ASSERT_TRUE(fin->run_once().ok());
  BatchRecord b = batch("batch_d");
  EXPECT_EQ(b.state, BatchState::kExpired);
  EXPECT_EQ(b.completed, 1);
  EXPECT_EQ(b.failed, 2);
  EXPECT_EQ(lines(b.output_file_id).size(), 1u);
  std::vector<Json> err = lines(b.error_file_id);
  ASSERT_EQ(err.size(), 2u);
  EXPECT_EQ(err[0]["error"]["code"], "batch_expired");
  EXPECT_EQ(fin->stats().batches_expired, 1);
  EXPECT_TRUE(claim_all().empty());
}

TEST_F(BatchFinaliserTest, PurgesOldResults) {
  create("batch_e", 1);
  finish_mixed(claim_all());
  FinaliserConfig config;
  config.result_ttl_ms = 3600 * 1000;
  config.purge_interval_ms = 0;
  auto fin = finaliser(config);
  ASSERT_TRUE(fin->run_once().ok());
  EXPECT_EQ(batch("batch_e").state, BatchState::kCompleted);
  now_ += 2 * 3600 * 1000;
  ASSERT_TRUE(fin->run_once().ok());
  EXPECT_GT(fin->stats().records_purged, 0);
  EXPECT_EQ(store_->get_batch("batch_e").status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace bw::jobs
