// One suite, run against both JobStore implementations: SQLite on a real file in a temp
// dir, and Redis Streams on a real redis-server started by the test. Times are explicit
// now_ms values, so lease expiry and backoff are tested without sleeping.
#include <gtest/gtest.h>

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/redis_connection.h"
#include "jobs/job_store.h"
#include "jobs/sqlite_job_store.h"
#include "support/redis_server.h"
#include "support/test_support.h"

namespace bw::jobs {
namespace {

constexpr int64_t kT0 = 1'700'000'000'000;  // a fixed "now" in ms

JobSpec job_spec(const std::string& id, int64_t created_at_ms, const std::string& batch_id = "", int64_t line = 0) {
  JobSpec spec;
  spec.id = id;
  spec.batch_id = batch_id;
  spec.line = line;
  spec.custom_id = "req-" + id;
  spec.url = "/v1/chat/completions";
  spec.body = R"({"model":"m","messages":[{"role":"user","content":")" + id + R"("}]})";
  spec.created_at_ms = created_at_ms;
  return spec;
}

BatchRecord batch_record(const std::string& id, int64_t created_at) {
  BatchRecord batch;
  batch.id = id;
  batch.input_file_id = "file-in-" + id;
  batch.endpoint = "/v1/chat/completions";
  batch.metadata_json = R"({"team":"a"})";
  batch.created_at = created_at;
  batch.in_progress_at = created_at;
  batch.expires_at = created_at + 86400;
  return batch;
}

// A batch `id` with `n` jobs "<id>-j<line>", all created at kT0.
std::vector<JobSpec> batch_specs(const std::string& id, int n) {
  std::vector<JobSpec> jobs;
  jobs.reserve(static_cast<size_t>(n));
  for (int line = 0; line < n; ++line)
    jobs.push_back(job_spec(id + "-j" + std::to_string(line), kT0, id, line));
  return jobs;
}

ClaimOptions worker(const std::string& id, int max_jobs = 1, int64_t lease_ms = 1000, int max_attempts = 4) {
  ClaimOptions options;
  options.worker_id = id;
  options.max_jobs = max_jobs;
  options.lease_ms = lease_ms;
  options.max_attempts = max_attempts;
  return options;
}

std::vector<std::string> ids_of(const std::vector<JobRecord>& jobs) {
  std::vector<std::string> ids;
  ids.reserve(jobs.size());
  for (const JobRecord& job : jobs)
    ids.push_back(job.spec.id);
  return ids;
}

// The ids of a listing of batches (a failed listing is a test failure and no ids).
std::vector<std::string> batch_ids(const Result<std::vector<BatchRecord>>& listed) {
  EXPECT_TRUE(listed.ok()) << listed.status().to_string();
  std::vector<std::string> ids;
  if (listed.ok()) {
    for (const BatchRecord& b : *listed)
      ids.push_back(b.id);
  }
  return ids;
}

class JobStoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (is_redis()) {
      BW_REDIS_OR_SKIP();
      redis_ = std::make_unique<test::RedisServer>();
      ASSERT_TRUE(redis_->start());
    }
    store_ = open();
    ASSERT_NE(store_, nullptr);
  }

  bool is_redis() const { return GetParam() == "redis"; }

  // Another store object on the same file / the same Redis: a second replica.
  std::unique_ptr<JobStore> open() {
    auto store = is_redis() ? open_redis_job_store(redis_->url(), "test:")
                            : open_sqlite_job_store(dir_.file("data/nested/jobs.sqlite3"));
    EXPECT_TRUE(store.ok()) << store.status().to_string();
    return store.ok() ? std::move(store).value() : nullptr;
  }

  JobRecord job(const std::string& id) {
    auto record = store_->get_job(id);
    EXPECT_TRUE(record.ok()) << record.status().to_string();
    return record.ok() ? *record : JobRecord{};
  }

  BatchRecord batch(const std::string& id) {
    auto record = store_->get_batch(id);
    EXPECT_TRUE(record.ok()) << record.status().to_string();
    return record.ok() ? *record : BatchRecord{};
  }

  std::vector<JobRecord> claim(const ClaimOptions& options, int64_t now_ms) {
    auto claimed = store_->claim(options, now_ms);
    EXPECT_TRUE(claimed.ok()) << claimed.status().to_string();
    return claimed.ok() ? *claimed : std::vector<JobRecord>{};
  }

  bool complete(const std::string& id, const std::string& worker_id, int64_t now_ms, int status = 200) {
    auto done = store_->complete(id, worker_id, JobResult{status, R"({"id":")" + id + "\"}"}, now_ms);
    EXPECT_TRUE(done.ok()) << done.status().to_string();
    return done.ok() && *done;
  }

  test::TempDir dir_;
  std::unique_ptr<test::RedisServer> redis_;
  std::unique_ptr<JobStore> store_;
};

TEST_P(JobStoreTest, StateNamesRoundTrip) {
  for (JobState state :
       {JobState::kQueued, JobState::kRunning, JobState::kSucceeded, JobState::kFailed, JobState::kCancelled}) {
    auto parsed = parse_job_state(job_state_name(state));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, state);
  }
  EXPECT_EQ(batch_state_name(BatchState::kInProgress), "in_progress");
  for (BatchState state :
       {BatchState::kValidating, BatchState::kInProgress, BatchState::kFinalizing, BatchState::kCompleted,
        BatchState::kFailed, BatchState::kExpired, BatchState::kCancelling, BatchState::kCancelled}) {
    auto parsed = parse_batch_state(batch_state_name(state));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, state);
  }
  EXPECT_EQ(parse_job_state("done").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_batch_state("in-progress").status().code(), StatusCode::kInvalidArgument);
}

TEST_P(JobStoreTest, FilesRoundTripBinaryContentAndOverwrite) {
  std::string content = "line one\n";
  content.push_back('\0');
  content += "\xff\xfe binary \r\n";
  content.push_back('\0');
  FileRecord file{"file-abc", "batch", "input.jsonl", 0, 1'700'000'000};
  ASSERT_TRUE(store_->put_file(file, content).ok());

  auto meta = store_->get_file("file-abc");
  ASSERT_TRUE(meta.ok()) << meta.status().to_string();
  EXPECT_EQ(meta->id, "file-abc");
  EXPECT_EQ(meta->purpose, "batch");
  EXPECT_EQ(meta->filename, "input.jsonl");
  EXPECT_EQ(meta->bytes, static_cast<int64_t>(content.size()));
  EXPECT_EQ(meta->created_at, 1'700'000'000);
  auto read = store_->get_file_content("file-abc");
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, content);

  file.purpose = "batch_output";
  ASSERT_TRUE(store_->put_file(file, "new").ok());
  EXPECT_EQ(*store_->get_file_content("file-abc"), "new");
  EXPECT_EQ(store_->get_file("file-abc")->bytes, 3);
  EXPECT_EQ(store_->get_file("file-abc")->purpose, "batch_output");

  ASSERT_TRUE(store_->put_file(FileRecord{"file-empty", "batch", "e", 0, 1}, "").ok());
  EXPECT_EQ(*store_->get_file_content("file-empty"), "");

  EXPECT_EQ(store_->get_file("file-nope").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->get_file_content("file-nope").status().code(), StatusCode::kNotFound);
}

TEST_P(JobStoreTest, CreateBatchStoresJobsInLineOrderAtomically) {
  std::vector<JobSpec> jobs = batch_specs("batch_1", 5);
  std::swap(jobs[0], jobs[3]);  // stored order must not matter: batch_jobs sorts by line
  BatchRecord record = batch_record("batch_1", 100);
  record.total = 99;  // the store counts the jobs itself
  ASSERT_TRUE(store_->create_batch(record, jobs).ok());

  BatchRecord stored = batch("batch_1");
  EXPECT_EQ(stored.state, BatchState::kInProgress);
  EXPECT_EQ(stored.total, 5);
  EXPECT_EQ(stored.completed, 0);
  EXPECT_EQ(stored.failed, 0);
  EXPECT_EQ(stored.input_file_id, "file-in-batch_1");
  EXPECT_EQ(stored.metadata_json, R"({"team":"a"})");
  EXPECT_EQ(stored.expires_at, 100 + 86400);
  EXPECT_EQ(stored.errors_json, "null");

  auto listed = store_->batch_jobs("batch_1");
  ASSERT_TRUE(listed.ok()) << listed.status().to_string();
  ASSERT_EQ(listed->size(), 5U);
  for (int line = 0; line < 5; ++line) {
    const JobRecord& j = (*listed)[line];
    EXPECT_EQ(j.spec.line, line);
    EXPECT_EQ(j.spec.id, "batch_1-j" + std::to_string(line));
    EXPECT_EQ(j.spec.batch_id, "batch_1");
    EXPECT_EQ(j.spec.custom_id, "req-" + j.spec.id);
    EXPECT_EQ(j.spec.method, "POST");
    EXPECT_EQ(j.state, JobState::kQueued);
    EXPECT_EQ(j.attempts, 0);
    EXPECT_FALSE(j.result.has_value());
  }
  EXPECT_EQ(job("batch_1-j2").spec.body, job_spec("batch_1-j2", kT0).body);

  // The same batch id again, and a batch reusing a job id: refused, nothing stored.
  EXPECT_FALSE(store_->create_batch(batch_record("batch_1", 101), batch_specs("batch_x", 1)).ok());
  std::vector<JobSpec> clash = batch_specs("batch_2", 2);
  clash.push_back(job_spec("batch_1-j4", kT0, "batch_2", 2));
  EXPECT_FALSE(store_->create_batch(batch_record("batch_2", 102), clash).ok());
  EXPECT_EQ(store_->get_batch("batch_2").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->get_job("batch_2-j0").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(batch("batch_1").total, 5);
  EXPECT_EQ(job("batch_1-j4").spec.batch_id, "batch_1");

  EXPECT_EQ(store_->get_batch("batch_none").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->batch_jobs("batch_none").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->get_job("job-none").status().code(), StatusCode::kNotFound);
}

TEST_P(JobStoreTest, ListBatchesNewestFirstWithPaging) {
  // Two share a creation second: the later-created one counts as newer.
  const std::vector<std::pair<std::string, int64_t>> batches = {
      {"batch_a", 100}, {"batch_b", 101}, {"batch_c", 102}, {"batch_d", 102}, {"batch_e", 104}};
  for (const auto& [id, created] : batches) {
    ASSERT_TRUE(store_->create_batch(batch_record(id, created), batch_specs(id, 1)).ok());
  }
  const auto page = [&](const std::string& after, int limit) { return batch_ids(store_->list_batches(after, limit)); };
  EXPECT_EQ(page("", 2), (std::vector<std::string>{"batch_e", "batch_d"}));
  EXPECT_EQ(page("batch_d", 2), (std::vector<std::string>{"batch_c", "batch_b"}));
  EXPECT_EQ(page("batch_b", 2), (std::vector<std::string>{"batch_a"}));
  EXPECT_EQ(page("batch_a", 2), (std::vector<std::string>{}));
  EXPECT_EQ(page("", 100).size(), 5U);
  EXPECT_EQ(page("", 0).size(), 0U);
  auto listed = store_->list_batches("", 1);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ((*listed)[0].total, 1);
  EXPECT_EQ((*listed)[0].created_at, 104);
}

TEST_P(JobStoreTest, ListUnfinishedBatchesLeavesOutFinishedOnes) {
  for (const auto& [id, created] : std::vector<std::pair<std::string, int64_t>>{
           {"batch_a", 100}, {"batch_b", 101}, {"batch_c", 102}, {"batch_d", 103}, {"batch_e", 104}}) {
    ASSERT_TRUE(store_->create_batch(batch_record(id, created), batch_specs(id, 1)).ok());
  }
  BatchRecord failed = batch_record("batch_f", 105);  // failed validation: created terminal
  failed.state = BatchState::kFailed;
  failed.failed_at = 105;
  ASSERT_TRUE(store_->create_batch(failed, {}).ok());
  const auto move = [&](const std::string& id, BatchState from, BatchState to) {
    BatchRecord updated = batch(id);
    updated.state = to;
    updated.finalizing_at = 200;
    updated.completed_at = 201;
    auto won = store_->transition_batch(id, from, updated);
    ASSERT_TRUE(won.ok() && *won) << id;
  };
  move("batch_b", BatchState::kInProgress, BatchState::kFinalizing);  // still unfinished
  move("batch_d", BatchState::kInProgress, BatchState::kFinalizing);
  move("batch_d", BatchState::kFinalizing, BatchState::kCompleted);
  ASSERT_TRUE(store_->cancel_batch("batch_e", kT0).ok());  // cancelling: unfinished
  std::unique_ptr<JobStore> replica = open();
  ASSERT_NE(replica, nullptr);
  const auto page = [](JobStore& store, const std::string& after, int limit) {
    return batch_ids(store.list_unfinished_batches(after, limit));
  };
  using Ids = std::vector<std::string>;
  EXPECT_EQ(page(*store_, "", 10), (Ids{"batch_e", "batch_c", "batch_b", "batch_a"}));
  EXPECT_EQ(page(*replica, "", 2), (Ids{"batch_e", "batch_c"}));
  EXPECT_EQ(page(*replica, "batch_c", 2), (Ids{"batch_b", "batch_a"}));
  EXPECT_EQ(page(*store_, "", 0), Ids{});
  // A cursor batch that finished in between still continues the listing.
  move("batch_c", BatchState::kInProgress, BatchState::kFinalizing);
  move("batch_c", BatchState::kFinalizing, BatchState::kCompleted);
  EXPECT_EQ(page(*store_, "batch_c", 10), (Ids{"batch_b", "batch_a"}));
  EXPECT_EQ(page(*store_, "", 10), (Ids{"batch_e", "batch_b", "batch_a"}));
  EXPECT_EQ(store_->list_unfinished_batches("batch_none", 10).status().code(), StatusCode::kNotFound);
  // Purging the finished ones leaves the unfinished list as it is.
  ASSERT_TRUE(store_->purge_finished(kT0 * 10).ok());
  EXPECT_EQ(page(*store_, "", 10), (Ids{"batch_e", "batch_b", "batch_a"}));
  EXPECT_EQ(store_->list_batches("", 10)->size(), 3U);
}

TEST_P(JobStoreTest, ClaimOldestFirstUpToMaxJobs) {
  ASSERT_TRUE(store_->enqueue(job_spec("job-1", kT0 + 1)).ok());
  ASSERT_TRUE(store_->enqueue(job_spec("job-2", kT0 + 2)).ok());
  ASSERT_TRUE(store_->enqueue(job_spec("job-3", kT0 + 3)).ok());
  EXPECT_FALSE(store_->enqueue(job_spec("job-3", kT0 + 4)).ok());  // duplicate id

  const int64_t now = kT0 + 10;
  std::vector<JobRecord> first = claim(worker("w1", 2, 5000), now);
  EXPECT_EQ(ids_of(first), (std::vector<std::string>{"job-1", "job-2"}));
  for (const JobRecord& j : first) {
    EXPECT_EQ(j.state, JobState::kRunning);
    EXPECT_EQ(j.attempts, 1);
    EXPECT_EQ(j.worker_id, "w1");
    EXPECT_EQ(j.lease_expires_ms, now + 5000);
    EXPECT_EQ(j.spec.url, "/v1/chat/completions");
  }
  EXPECT_EQ(ids_of(claim(worker("w2", 5, 5000), now)), (std::vector<std::string>{"job-3"}));
  EXPECT_TRUE(claim(worker("w3", 5, 5000), now).empty());
  EXPECT_EQ(job("job-2").state, JobState::kRunning);
  EXPECT_EQ(job("job-3").worker_id, "w2");
}

TEST_P(JobStoreTest, RenewExtendsTheLease) {
  ASSERT_TRUE(store_->enqueue(job_spec("job-1", kT0)).ok());
  ASSERT_EQ(claim(worker("w1", 1, 1000), kT0).size(), 1U);
  bool cancel = true;
  auto renewed = store_->renew_lease("job-1", "w1", 1000, kT0 + 900, &cancel);
  ASSERT_TRUE(renewed.ok()) << renewed.status().to_string();
  EXPECT_TRUE(*renewed);
  EXPECT_FALSE(cancel);
  EXPECT_EQ(job("job-1").lease_expires_ms, kT0 + 1900);
  // Past the first lease but inside the renewed one: not claimable by anybody else.
  EXPECT_TRUE(claim(worker("w2", 1, 1000), kT0 + 1500).empty());
  // Another worker cannot renew a lease it does not hold.
  EXPECT_FALSE(*store_->renew_lease("job-1", "w2", 1000, kT0 + 1500, nullptr));
  EXPECT_EQ(job("job-1").worker_id, "w1");
  // After the renewed lease: w2 takes it.
  EXPECT_EQ(ids_of(claim(worker("w2", 1, 1000), kT0 + 1900)), (std::vector<std::string>{"job-1"}));
}

TEST_P(JobStoreTest, ExpiredLeaseIsReclaimedAndTheOldWorkerIsRefused) {
  ASSERT_TRUE(store_->create_batch(batch_record("batch_1", 100), batch_specs("batch_1", 1)).ok());
  ASSERT_EQ(claim(worker("w1", 1, 1000), kT0).size(), 1U);
  EXPECT_TRUE(claim(worker("w2", 1, 1000), kT0 + 999).empty());

  std::vector<JobRecord> reclaimed = claim(worker("w2", 1, 1000), kT0 + 1000);
  ASSERT_EQ(reclaimed.size(), 1U);
  EXPECT_EQ(reclaimed[0].spec.id, "batch_1-j0");
  EXPECT_EQ(reclaimed[0].attempts, 2);
  EXPECT_EQ(reclaimed[0].worker_id, "w2");
  EXPECT_EQ(reclaimed[0].lease_expires_ms, kT0 + 2000);

  // The old worker wakes up: its renew, completion and failure are all refused.
  bool cancel = false;
  EXPECT_FALSE(*store_->renew_lease("batch_1-j0", "w1", 1000, kT0 + 1100, &cancel));
  EXPECT_FALSE(complete("batch_1-j0", "w1", kT0 + 1100));
  EXPECT_FALSE(*store_->fail_attempt("batch_1-j0", "w1", "late", std::nullopt, std::nullopt, kT0 + 1100));
  EXPECT_EQ(job("batch_1-j0").state, JobState::kRunning);

  EXPECT_TRUE(complete("batch_1-j0", "w2", kT0 + 1200));
  JobRecord done = job("batch_1-j0");
  EXPECT_EQ(done.state, JobState::kSucceeded);
  ASSERT_TRUE(done.result.has_value());
  EXPECT_EQ(done.result->http_status, 200);
  EXPECT_EQ(done.result->body, R"({"id":"batch_1-j0"})");
  EXPECT_EQ(done.finished_at_ms, kT0 + 1200);
  EXPECT_EQ(batch("batch_1").completed, 1);
  EXPECT_EQ(batch("batch_1").failed, 0);
  // Finished: nothing more to claim, even long after.
  EXPECT_TRUE(claim(worker("w3", 5, 1000), kT0 + 100'000).empty());
}

TEST_P(JobStoreTest, JobPastMaxAttemptsFailsAsWorkerLost) {
  ASSERT_TRUE(store_->create_batch(batch_record("batch_1", 100), batch_specs("batch_1", 1)).ok());
  ASSERT_EQ(claim(worker("w1", 1, 1000, 2), kT0).size(), 1U);
  ASSERT_EQ(claim(worker("w2", 1, 1000, 2), kT0 + 1000).size(), 1U);
  // Both workers died: the second expiry is past max_attempts = 2.
  EXPECT_TRUE(claim(worker("w3", 1, 1000, 2), kT0 + 2000).empty());
  JobRecord failed = job("batch_1-j0");
  EXPECT_EQ(failed.state, JobState::kFailed);
  EXPECT_EQ(failed.attempts, 2);
  EXPECT_NE(failed.error.find("worker lost"), std::string::npos) << failed.error;
  EXPECT_EQ(failed.finished_at_ms, kT0 + 2000);
  EXPECT_EQ(batch("batch_1").failed, 1);
  EXPECT_EQ(batch("batch_1").completed, 0);
  EXPECT_FALSE(complete("batch_1-j0", "w2", kT0 + 2001));
  EXPECT_TRUE(claim(worker("w3", 1, 1000, 2), kT0 + 9000).empty());
  EXPECT_EQ(batch("batch_1").failed, 1);
}

TEST_P(JobStoreTest, RetryWaitsForItsBackoff) {
  ASSERT_TRUE(store_->create_batch(batch_record("batch_1", 100), batch_specs("batch_1", 1)).ok());
  ASSERT_EQ(claim(worker("w1"), kT0).size(), 1U);
  auto failed = store_->fail_attempt("batch_1-j0", "w1", "engine overloaded", JobResult{503, R"({"error":"busy"})"},
                                     kT0 + 5000, kT0 + 10);
  ASSERT_TRUE(failed.ok()) << failed.status().to_string();
  EXPECT_TRUE(*failed);
  JobRecord queued = job("batch_1-j0");
  EXPECT_EQ(queued.state, JobState::kQueued);
  EXPECT_EQ(queued.next_attempt_ms, kT0 + 5000);
  EXPECT_EQ(queued.error, "engine overloaded");
  EXPECT_EQ(batch("batch_1").failed, 0);  // not terminal yet
  // The old lease holder no longer holds anything.
  EXPECT_FALSE(complete("batch_1-j0", "w1", kT0 + 20));

  EXPECT_TRUE(claim(worker("w2"), kT0 + 4999).empty());
  std::vector<JobRecord> retried = claim(worker("w2"), kT0 + 5000);
  ASSERT_EQ(retried.size(), 1U);
  EXPECT_EQ(retried[0].attempts, 2);
  EXPECT_EQ(retried[0].worker_id, "w2");

  // The last attempt fails for good: failed with the reason and the last answer.
  EXPECT_TRUE(
      *store_->fail_attempt("batch_1-j0", "w2", "engine overloaded", JobResult{503, "{}"}, std::nullopt, kT0 + 6000));
  JobRecord final_state = job("batch_1-j0");
  EXPECT_EQ(final_state.state, JobState::kFailed);
  EXPECT_EQ(final_state.error, "engine overloaded");
  ASSERT_TRUE(final_state.result.has_value());
  EXPECT_EQ(final_state.result->http_status, 503);
  EXPECT_EQ(batch("batch_1").failed, 1);
  EXPECT_TRUE(claim(worker("w3"), kT0 + 100'000).empty());
}

TEST_P(JobStoreTest, QueuedJobAtMaxAttemptsIsNotHandedOutAgain) {
  ASSERT_TRUE(store_->enqueue(job_spec("job-1", kT0)).ok());
  ASSERT_EQ(claim(worker("w1", 1, 1000, 1), kT0).size(), 1U);
  ASSERT_TRUE(*store_->fail_attempt("job-1", "w1", "upstream 500", std::nullopt, kT0 + 10, kT0 + 5));
  EXPECT_TRUE(claim(worker("w2", 1, 1000, 1), kT0 + 10).empty());
  JobRecord failed = job("job-1");
  EXPECT_EQ(failed.state, JobState::kFailed);
  EXPECT_NE(failed.error.find("upstream 500"), std::string::npos) << failed.error;
}

TEST_P(JobStoreTest, TerminalTransitionsCountOnce) {
  ASSERT_TRUE(store_->create_batch(batch_record("batch_1", 100), batch_specs("batch_1", 3)).ok());
  ASSERT_EQ(claim(worker("w1", 3), kT0).size(), 3U);
  EXPECT_TRUE(complete("batch_1-j0", "w1", kT0 + 1));
  EXPECT_FALSE(complete("batch_1-j0", "w1", kT0 + 2));  // duplicate delivery of the result
  EXPECT_FALSE(*store_->fail_attempt("batch_1-j0", "w1", "x", std::nullopt, std::nullopt, kT0 + 2));
  EXPECT_TRUE(*store_->fail_attempt("batch_1-j1", "w1", "bad request", JobResult{400, R"({"error":{}})"}, std::nullopt,
                                    kT0 + 3));
  EXPECT_FALSE(*store_->fail_attempt("batch_1-j1", "w1", "again", std::nullopt, std::nullopt, kT0 + 4));
  EXPECT_FALSE(complete("batch_1-j1", "w1", kT0 + 4));
  BatchRecord counts = batch("batch_1");
  EXPECT_EQ(counts.completed, 1);
  EXPECT_EQ(counts.failed, 1);
  EXPECT_EQ(counts.total, 3);
  EXPECT_EQ(job("batch_1-j1").error, "bad request");
  EXPECT_EQ(job("batch_1-j1").result->http_status, 400);
  EXPECT_EQ(job("batch_1-j0").state, JobState::kSucceeded);
  EXPECT_EQ(job("batch_1-j2").state, JobState::kRunning);
}

TEST_P(JobStoreTest, CancelQueuedAndRunningJobs) {
  ASSERT_TRUE(store_->enqueue(job_spec("job-1", kT0)).ok());
  ASSERT_TRUE(store_->enqueue(job_spec("job-2", kT0 + 1)).ok());
  ASSERT_EQ(ids_of(claim(worker("w1"), kT0)), (std::vector<std::string>{"job-1"}));

  // Queued: cancelled at once, never handed out.
  auto cancelled = store_->cancel_job("job-2", kT0 + 5);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status().to_string();
  EXPECT_TRUE(*cancelled);
  EXPECT_EQ(job("job-2").state, JobState::kCancelled);
  EXPECT_EQ(job("job-2").finished_at_ms, kT0 + 5);
  EXPECT_FALSE(*store_->cancel_job("job-2", kT0 + 6));
  EXPECT_TRUE(claim(worker("w2"), kT0 + 10).empty());

  // Running: marked; the worker sees it on renew; its failure then ends as cancelled.
  EXPECT_TRUE(*store_->cancel_job("job-1", kT0 + 20));
  EXPECT_EQ(job("job-1").state, JobState::kRunning);
  EXPECT_TRUE(job("job-1").cancel_requested);
  bool cancel = false;
  EXPECT_TRUE(*store_->renew_lease("job-1", "w1", 1000, kT0 + 30, &cancel));
  EXPECT_TRUE(cancel);
  EXPECT_TRUE(*store_->fail_attempt("job-1", "w1", "cancelled by the user", std::nullopt, kT0 + 40, kT0 + 40));
  EXPECT_EQ(job("job-1").state, JobState::kCancelled);  // not re-queued despite the retry time
  EXPECT_TRUE(claim(worker("w2"), kT0 + 100'000).empty());
  EXPECT_FALSE(*store_->cancel_job("job-1", kT0 + 50));
  EXPECT_EQ(store_->cancel_job("job-none", kT0).status().code(), StatusCode::kNotFound);
}

TEST_P(JobStoreTest, CancelBatchCancelsQueuedAndFlagsRunning) {
  ASSERT_TRUE(store_->create_batch(batch_record("batch_1", 100), batch_specs("batch_1", 4)).ok());
  ASSERT_EQ(ids_of(claim(worker("w1", 1, 1000), kT0)), (std::vector<std::string>{"batch_1-j0"}));
  ASSERT_TRUE(store_->cancel_batch("batch_1", kT0 + 2000).ok());
  BatchRecord cancelling = batch("batch_1");
  EXPECT_EQ(cancelling.state, BatchState::kCancelling);
  EXPECT_EQ(cancelling.cancelling_at, (kT0 + 2000) / 1000);
  EXPECT_EQ(cancelling.failed, 3);
  for (int line = 1; line < 4; ++line)
    EXPECT_EQ(job("batch_1-j" + std::to_string(line)).state, JobState::kCancelled);
  EXPECT_TRUE(job("batch_1-j0").cancel_requested);
  bool cancel = false;
  EXPECT_TRUE(*store_->renew_lease("batch_1-j0", "w1", 1000, kT0 + 500, &cancel));
  EXPECT_TRUE(cancel);
  EXPECT_TRUE(claim(worker("w2", 4), kT0 + 600).empty());
  // The running one finishes anyway: it counts as completed.
  EXPECT_TRUE(complete("batch_1-j0", "w1", kT0 + 700));
  EXPECT_EQ(batch("batch_1").completed, 1);
  EXPECT_EQ(batch("batch_1").failed, 3);
  EXPECT_TRUE(store_->cancel_batch("batch_1", kT0 + 800).ok());  // again: nothing changes
  EXPECT_EQ(batch("batch_1").failed, 3);
  EXPECT_EQ(store_->cancel_batch("batch_none", kT0).code(), StatusCode::kNotFound);
}

TEST_P(JobStoreTest, ExpiredLeaseOfACancelledJobEndsCancelled) {
  ASSERT_TRUE(store_->create_batch(batch_record("batch_1", 100), batch_specs("batch_1", 1)).ok());
  ASSERT_EQ(claim(worker("w1", 1, 1000), kT0).size(), 1U);
  ASSERT_TRUE(store_->cancel_batch("batch_1", kT0 + 10).ok());
  EXPECT_TRUE(claim(worker("w2", 1, 1000), kT0 + 5000).empty());  // w1 died: not re-run
  EXPECT_EQ(job("batch_1-j0").state, JobState::kCancelled);
  EXPECT_EQ(batch("batch_1").failed, 1);
}

TEST_P(JobStoreTest, TransitionBatchIsACompareAndSet) {
  ASSERT_TRUE(store_->create_batch(batch_record("batch_1", 100), batch_specs("batch_1", 1)).ok());
  std::unique_ptr<JobStore> replica = open();
  ASSERT_NE(replica, nullptr);
  // Two replicas race to finalise the same batch: exactly one wins.
  std::atomic<int> wins{0};
  std::vector<std::thread> racers;
  racers.reserve(2);
  for (int i = 0; i < 2; ++i) {
    racers.emplace_back([&, i] {
      JobStore* store = i == 0 ? store_.get() : replica.get();
      BatchRecord updated = batch_record("batch_1", 100);
      updated.state = BatchState::kFinalizing;
      updated.finalizing_at = 200 + i;
      updated.output_file_id = "file-out-" + std::to_string(i);
      auto won = store->transition_batch("batch_1", BatchState::kInProgress, updated);
      EXPECT_TRUE(won.ok()) << won.status().to_string();
      if (won.ok() && *won) wins.fetch_add(1);
    });
  }
  for (std::thread& racer : racers)
    racer.join();
  EXPECT_EQ(wins.load(), 1);
  BatchRecord finalizing = batch("batch_1");
  EXPECT_EQ(finalizing.state, BatchState::kFinalizing);
  const int winner = static_cast<int>(finalizing.finalizing_at - 200);
  EXPECT_EQ(finalizing.output_file_id, "file-out-" + std::to_string(winner));
  EXPECT_EQ(finalizing.total, 1);  // counts are the store's, not the caller's

  BatchRecord completed = finalizing;
  completed.state = BatchState::kCompleted;
  completed.completed_at = 300;
  completed.error_file_id = "file-err";
  completed.completed = 42;  // ignored
  EXPECT_FALSE(*store_->transition_batch("batch_1", BatchState::kInProgress, completed));
  EXPECT_TRUE(*store_->transition_batch("batch_1", BatchState::kFinalizing, completed));
  BatchRecord done = batch("batch_1");
  EXPECT_EQ(done.state, BatchState::kCompleted);
  EXPECT_EQ(done.completed_at, 300);
  EXPECT_EQ(done.error_file_id, "file-err");
  EXPECT_EQ(done.completed, 0);
  EXPECT_EQ(store_->transition_batch("batch_none", BatchState::kInProgress, completed).status().code(),
            StatusCode::kNotFound);
}

TEST_P(JobStoreTest, ExpiredBatchKeepsItsExpiryTime) {
  ASSERT_TRUE(store_->create_batch(batch_record("batch_1", 100), batch_specs("batch_1", 2)).ok());
  ASSERT_TRUE(store_->cancel_batch("batch_1", 200'000).ok());  // the finaliser cancels queued jobs first
  BatchRecord expired = batch("batch_1");
  expired.state = BatchState::kExpired;
  expired.expired_at = 201;
  ASSERT_TRUE(*store_->transition_batch("batch_1", BatchState::kCancelling, expired));
  BatchRecord stored = batch("batch_1");
  EXPECT_EQ(stored.state, BatchState::kExpired);
  EXPECT_EQ(stored.expired_at, 201);
  EXPECT_EQ(stored.cancelling_at, 200);
  EXPECT_EQ(stored.failed, 2);
  EXPECT_EQ(*store_->purge_finished(201'000), 0);  // finished at 201 s: not before it
  EXPECT_EQ(*store_->purge_finished(201'001), 3);  // the batch and its two jobs
}

TEST_P(JobStoreTest, PurgeFinishedDeletesOldResults) {
  ASSERT_TRUE(store_->enqueue(job_spec("job-old", kT0)).ok());
  ASSERT_TRUE(store_->enqueue(job_spec("job-new", kT0 + 1)).ok());
  ASSERT_EQ(claim(worker("w1", 2), kT0).size(), 2U);
  ASSERT_TRUE(complete("job-old", "w1", kT0 + 1000));
  ASSERT_TRUE(complete("job-new", "w1", kT0 + 9000));

  // batch_old: completed at second (kT0 + 2000) / 1000, with an output file.
  ASSERT_TRUE(store_->put_file(FileRecord{"file-in-batch_old", "batch", "in.jsonl", 0, 1}, "{}\n{}\n").ok());
  ASSERT_TRUE(store_->create_batch(batch_record("batch_old", 100), batch_specs("batch_old", 2)).ok());
  ASSERT_TRUE(store_->create_batch(batch_record("batch_live", 101), batch_specs("batch_live", 1)).ok());
  ASSERT_TRUE(store_->enqueue(job_spec("job-queued", kT0 + 2)).ok());
  std::vector<JobRecord> jobs = claim(worker("w1", 2), kT0 + 100);
  ASSERT_EQ(ids_of(jobs), (std::vector<std::string>{"batch_old-j0", "batch_old-j1"}));
  ASSERT_TRUE(complete("batch_old-j0", "w1", kT0 + 200));
  ASSERT_TRUE(complete("batch_old-j1", "w1", kT0 + 200));
  ASSERT_TRUE(store_->put_file(FileRecord{"file-out-batch_old", "batch_output", "out.jsonl", 0, 2}, "out").ok());
  BatchRecord done = batch("batch_old");
  done.state = BatchState::kCompleted;
  done.output_file_id = "file-out-batch_old";
  done.completed_at = (kT0 + 2000) / 1000;
  ASSERT_TRUE(*store_->transition_batch("batch_old", BatchState::kInProgress, done));

  auto purged = store_->purge_finished(kT0 + 5000);
  ASSERT_TRUE(purged.ok()) << purged.status().to_string();
  // job-old, batch_old, its 2 jobs and its output file.
  EXPECT_EQ(*purged, 5);
  EXPECT_EQ(store_->get_job("job-old").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->get_batch("batch_old").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->get_job("batch_old-j0").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->get_file("file-out-batch_old").status().code(), StatusCode::kNotFound);
  // Kept: newer results, unfinished work, live batches, input files.
  EXPECT_EQ(job("job-new").state, JobState::kSucceeded);
  EXPECT_EQ(job("job-queued").state, JobState::kQueued);
  EXPECT_EQ(batch("batch_live").state, BatchState::kInProgress);
  EXPECT_EQ(job("batch_live-j0").state, JobState::kQueued);
  EXPECT_TRUE(store_->get_file("file-in-batch_old").ok());
  auto listed = store_->list_batches("", 10);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1U);
  EXPECT_EQ((*listed)[0].id, "batch_live");
  EXPECT_EQ(*store_->purge_finished(kT0 + 5000), 0);
}

// Two replicas (two store objects on one file / one Redis), four worker threads each,
// share a 200-job batch: every job is completed exactly once, none is lost.
TEST_P(JobStoreTest, ReplicasShareTheQueueWithoutDoubleClaims) {
  constexpr int kNumJobs = 200;
  ASSERT_TRUE(store_->create_batch(batch_record("batch_1", 100), batch_specs("batch_1", kNumJobs)).ok());
  std::unique_ptr<JobStore> replica = open();
  ASSERT_NE(replica, nullptr);

  std::mutex mutex;
  std::map<std::string, int> completions;  // job id -> successful complete() calls
  std::map<std::string, int> per_worker;
  std::atomic<int> errors{0};
  std::vector<std::thread> workers;
  workers.reserve(8);
  for (int i = 0; i < 8; ++i) {
    workers.emplace_back([&, i] {
      JobStore* store = i % 2 == 0 ? store_.get() : replica.get();
      const std::string worker_id = "replica" + std::to_string(i % 2) + ":w" + std::to_string(i);
      while (true) {
        auto claimed = store->claim(worker(worker_id, 1 + i % 3, 60'000), wall_clock_ms());
        if (!claimed.ok()) {
          errors.fetch_add(1);
          return;
        }
        if (claimed->empty()) return;
        for (const JobRecord& j : *claimed) {
          auto done = store->complete(j.spec.id, worker_id, JobResult{200, j.spec.custom_id}, wall_clock_ms());
          if (!done.ok()) errors.fetch_add(1);
          const std::lock_guard lock(mutex);
          if (done.ok() && *done) ++completions[j.spec.id];
          ++per_worker[worker_id];
        }
      }
    });
  }
  for (std::thread& w : workers)
    w.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(completions.size(), static_cast<size_t>(kNumJobs));
  for (const auto& [id, count] : completions)
    EXPECT_EQ(count, 1) << id;
  int num_claimed = 0;
  for (const auto& [id, count] : per_worker)
    num_claimed += count;
  EXPECT_EQ(num_claimed, kNumJobs);  // nobody was handed a job twice
  BatchRecord counts = batch("batch_1");
  EXPECT_EQ(counts.completed, kNumJobs);
  EXPECT_EQ(counts.failed, 0);
  auto jobs = replica->batch_jobs("batch_1");
  ASSERT_TRUE(jobs.ok());
  for (const JobRecord& j : *jobs) {
    EXPECT_EQ(j.state, JobState::kSucceeded);
    EXPECT_EQ(j.attempts, 1);
    ASSERT_TRUE(j.result.has_value());
    EXPECT_EQ(j.result->body, j.spec.custom_id);
  }
}

TEST_P(JobStoreTest, StateSurvivesReopening) {
  ASSERT_TRUE(store_->put_file(FileRecord{"file-1", "batch", "in.jsonl", 0, 5}, std::string("a\0b", 3)).ok());
  ASSERT_TRUE(store_->create_batch(batch_record("batch_1", 100), batch_specs("batch_1", 3)).ok());
  ASSERT_EQ(claim(worker("w1", 2, 1000), kT0).size(), 2U);
  ASSERT_TRUE(complete("batch_1-j0", "w1", kT0 + 10));
  store_.reset();

  store_ = open();
  ASSERT_NE(store_, nullptr);
  EXPECT_EQ(*store_->get_file_content("file-1"), std::string("a\0b", 3));
  BatchRecord counts = batch("batch_1");
  EXPECT_EQ(counts.total, 3);
  EXPECT_EQ(counts.completed, 1);
  EXPECT_EQ(job("batch_1-j0").state, JobState::kSucceeded);
  EXPECT_EQ(job("batch_1-j1").state, JobState::kRunning);
  EXPECT_EQ(job("batch_1-j1").worker_id, "w1");
  // The queue carries on where it was: the queued job next, the running one after its lease.
  EXPECT_EQ(ids_of(claim(worker("w2", 5, 1000), kT0 + 20)), (std::vector<std::string>{"batch_1-j2"}));
  std::vector<JobRecord> reclaimed = claim(worker("w2", 5, 1000), kT0 + 1000);
  ASSERT_EQ(ids_of(reclaimed), (std::vector<std::string>{"batch_1-j1"}));
  EXPECT_EQ(reclaimed[0].attempts, 2);
}

std::vector<std::string> store_kinds() { return {"sqlite", "redis"}; }

INSTANTIATE_TEST_SUITE_P(Stores, JobStoreTest, ::testing::ValuesIn(store_kinds()), test::StringParamName());

// ---- Redis only ---------------------------------------------------------------------------

class RedisJobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    BW_REDIS_OR_SKIP();
    ASSERT_TRUE(redis_.start());
    auto store = open_redis_job_store(redis_.url(), "test:");
    ASSERT_TRUE(store.ok()) << store.status().to_string();
    store_ = std::move(store).value();
    RedisOptions options;
    options.port = redis_.port();
    auto connection = RedisConnection::connect(options);
    ASSERT_TRUE(connection.ok()) << connection.status().to_string();
    redis_cli_ = std::move(connection).value();
  }

  int64_t integer(const std::vector<std::string>& command) {
    auto reply = redis_cli_->command(command);
    EXPECT_TRUE(reply.ok()) << reply.status().to_string();
    if (!reply.ok()) return -1;
    EXPECT_FALSE(reply->is_error()) << reply->str;
    // XPENDING's summary starts with the count.
    if (reply->type == RedisReply::Type::kArray) return reply->elements.empty() ? -1 : reply->elements[0].integer;
    return reply->integer;
  }

  test::RedisServer redis_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<RedisConnection> redis_cli_;
};

// A store written before the index of unfinished batches existed gets it built once, when
// a replica of the new version opens it.
TEST_F(RedisJobStoreTest, UnfinishedBatchIndexIsBuiltForAnOlderStore) {
  ASSERT_TRUE(store_->create_batch(batch_record("batch_a", 100), batch_specs("batch_a", 1)).ok());
  ASSERT_TRUE(store_->create_batch(batch_record("batch_b", 101), batch_specs("batch_b", 1)).ok());
  BatchRecord done = batch_record("batch_b", 101);
  done.state = BatchState::kCancelled;
  done.cancelled_at = 102;
  ASSERT_TRUE(store_->cancel_batch("batch_b", kT0).ok());
  ASSERT_TRUE(*store_->transition_batch("batch_b", BatchState::kCancelling, done));
  // What an older version left: no index, no marker.
  EXPECT_EQ(integer({"DEL", "test:batches:active", "test:batches:active:indexed"}), 2);
  auto reopened = open_redis_job_store(redis_.url(), "test:");
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  auto listed = (*reopened)->list_unfinished_batches("", 10);
  ASSERT_TRUE(listed.ok()) << listed.status().to_string();
  ASSERT_EQ(listed->size(), 1U);
  EXPECT_EQ((*listed)[0].id, "batch_a");
  // Built once: a later replica does not rebuild (a batch indexed since is not duplicated,
  // one removed by hand stays removed).
  EXPECT_EQ(integer({"ZREM", "test:batches:active", "batch_a"}), 1);
  ASSERT_TRUE(open_redis_job_store(redis_.url(), "test:").ok());
  EXPECT_EQ(integer({"ZCARD", "test:batches:active"}), 0);
}

// Every way out of the queue acknowledges and deletes the job's stream entry, so the
// stream and the consumer group's pending list hold only live work.
TEST_F(RedisJobStoreTest, FinishedJobsLeaveNoStreamEntries) {
  ASSERT_TRUE(store_->create_batch(batch_record("batch_1", 100), batch_specs("batch_1", 4)).ok());
  ASSERT_TRUE(store_->enqueue(job_spec("job-1", kT0 + 1)).ok());
  ASSERT_TRUE(store_->enqueue(job_spec("job-2", kT0 + 2)).ok());
  EXPECT_EQ(integer({"XLEN", "test:jobs"}), 6);

  auto claimed = store_->claim(worker("w1", 3, 1000), kT0);  // batch_1-j0..j2 now pending
  ASSERT_TRUE(claimed.ok());
  ASSERT_EQ(claimed->size(), 3U);
  EXPECT_EQ(integer({"XPENDING", "test:jobs", "workers"}), 3);
  ASSERT_TRUE(*store_->complete("batch_1-j0", "w1", {200, "ok"}, kT0 + 1));
  ASSERT_TRUE(*store_->fail_attempt("batch_1-j1", "w1", "503", std::nullopt, kT0 + 10, kT0 + 1));
  ASSERT_TRUE(*store_->fail_attempt("batch_1-j2", "w1", "400", std::nullopt, std::nullopt, kT0 + 1));
  ASSERT_TRUE(*store_->cancel_job("job-2", kT0 + 1));
  EXPECT_EQ(integer({"XPENDING", "test:jobs", "workers"}), 0);
  EXPECT_EQ(integer({"XLEN", "test:jobs"}), 2);  // batch_1-j3 and job-1 wait; j1 waits in retry
  EXPECT_EQ(integer({"ZCARD", "test:retry"}), 1);

  // A lease that expires moves its pending entry to the new worker.
  claimed = store_->claim(worker("w2", 5, 1000), kT0 + 10);
  ASSERT_TRUE(claimed.ok());
  ASSERT_EQ(ids_of(*claimed), (std::vector<std::string>{"batch_1-j3", "job-1", "batch_1-j1"}));
  EXPECT_EQ(integer({"XPENDING", "test:jobs", "workers"}), 3);
  for (const JobRecord& j : *claimed)
    ASSERT_TRUE(*store_->complete(j.spec.id, "w2", {200, "ok"}, kT0 + 20));
  EXPECT_EQ(integer({"XLEN", "test:jobs"}), 0);
  EXPECT_EQ(integer({"XPENDING", "test:jobs", "workers"}), 0);
  EXPECT_EQ(integer({"ZCARD", "test:leases"}), 0);
  EXPECT_EQ(integer({"ZCARD", "test:retry"}), 0);
  BatchRecord counts = *store_->get_batch("batch_1");
  EXPECT_EQ(counts.completed, 3);
  EXPECT_EQ(counts.failed, 1);
}

// Redis is down: calls fail with Unavailable instead of dropping writes. It comes back
// empty (no persistence in the test server): the store reloads its script and group.
TEST_F(RedisJobStoreTest, ReportsADownRedisAndRecoversAfterARestart) {
  redis_.stop(/*kill=*/true);
  const Status down = store_->enqueue(job_spec("job-1", kT0));
  EXPECT_EQ(down.code(), StatusCode::kUnavailable) << down.to_string();
  EXPECT_EQ(store_->claim(worker("w1"), kT0).status().code(), StatusCode::kUnavailable);

  ASSERT_TRUE(redis_.start());
  Status up = Unavailable("not tried");
  for (int i = 0; i < 100 && !up.ok(); ++i) {  // the connection waits out its reconnect backoff
    up = store_->enqueue(job_spec("job-1", kT0));
    if (!up.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(up.ok()) << up.to_string();
  auto claimed = store_->claim(worker("w1"), kT0);
  ASSERT_TRUE(claimed.ok()) << claimed.status().to_string();
  EXPECT_EQ(ids_of(*claimed), (std::vector<std::string>{"job-1"}));
}

TEST_F(RedisJobStoreTest, RejectsABadUrl) {
  EXPECT_EQ(open_redis_job_store("http://localhost", "x:").status().code(), StatusCode::kInvalidArgument);
}

// ---- SQLite only --------------------------------------------------------------------------

TEST(SqliteJobStoreTest, RejectsAFileThatIsNotADatabase) {
  test::TempDir dir;
  {
    std::ofstream out(dir.file("jobs.sqlite3"));
    out << "this is not a database, just text that is long enough to hold a header........\n";
  }
  auto store = open_sqlite_job_store(dir.file("jobs.sqlite3"));
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kDataLoss) << store.status().to_string();
}

// Two server processes on one data dir: each job is handed out once, across processes.
TEST(SqliteJobStoreTest, TwoProcessesOnOneFileNeverShareAJob) {
  test::TempDir dir;
  const std::string path = dir.file("jobs.sqlite3");
  constexpr int kNumJobs = 200;
  {
    auto store = open_sqlite_job_store(path);
    ASSERT_TRUE(store.ok()) << store.status().to_string();
    ASSERT_TRUE((*store)->create_batch(batch_record("batch_1", 100), batch_specs("batch_1", kNumJobs)).ok());
  }
  std::vector<pid_t> children;
  for (int i = 0; i < 2; ++i) {
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      // Writes the id of every job it completed, one per line; exit code 0 when all went well.
      auto store = open_sqlite_job_store(path);
      std::ofstream out(dir.file("done-" + std::to_string(i)));
      if (!store.ok()) _exit(2);
      const std::string worker_id = "process-" + std::to_string(i);
      while (true) {
        auto claimed = (*store)->claim(worker(worker_id, 2, 60'000), kT0);
        if (!claimed.ok()) _exit(3);
        if (claimed->empty()) break;
        for (const JobRecord& j : *claimed) {
          auto done = (*store)->complete(j.spec.id, worker_id, JobResult{200, worker_id}, kT0);
          if (!done.ok() || !*done) _exit(4);
          out << j.spec.id << "\n";
        }
      }
      out.close();
      _exit(0);
    }
    children.push_back(child);
  }
  for (const pid_t child : children) {
    int wstatus = 0;
    waitpid(child, &wstatus, 0);
    ASSERT_TRUE(WIFEXITED(wstatus));
    EXPECT_EQ(WEXITSTATUS(wstatus), 0);
  }
  std::map<std::string, int> completions;
  for (int i = 0; i < 2; ++i) {
    std::ifstream in(dir.file("done-" + std::to_string(i)));
    std::string id;
    while (std::getline(in, id))
      ++completions[id];
  }
  EXPECT_EQ(completions.size(), static_cast<size_t>(kNumJobs));
  for (const auto& [id, count] : completions)
    EXPECT_EQ(count, 1) << id;
  auto store = open_sqlite_job_store(path);
  ASSERT_TRUE(store.ok());
  EXPECT_EQ((*store)->get_batch("batch_1")->completed, kNumJobs);
}

// kill -9 of a process in the middle of its work leaves a consistent file: every job a
// batch counter counts is terminal and vice versa, nothing half-written.
TEST(SqliteJobStoreTest, KillNineLeavesAConsistentFile) {
  test::TempDir dir;
  const std::string path = dir.file("jobs.sqlite3");
  constexpr int kNumJobs = 400;
  {
    auto store = open_sqlite_job_store(path);
    ASSERT_TRUE(store.ok()) << store.status().to_string();
    ASSERT_TRUE((*store)->create_batch(batch_record("batch_1", 100), batch_specs("batch_1", kNumJobs)).ok());
  }
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Claims and completes (and creates single jobs) until killed.
    auto store = open_sqlite_job_store(path);
    if (!store.ok()) _exit(2);
    for (int i = 0;; ++i) {
      (void)(*store)->enqueue(job_spec("single-" + std::to_string(i), kT0));
      auto claimed = (*store)->claim(worker("child", 3, 60'000), kT0);
      if (!claimed.ok()) _exit(3);
      for (const JobRecord& j : *claimed) {
        if (j.spec.line % 2 == 0) {
          (void)(*store)->complete(j.spec.id, "child", JobResult{200, "ok"}, kT0);
        } else {
          (void)(*store)->fail_attempt(j.spec.id, "child", "odd", std::nullopt, std::nullopt, kT0);
        }
      }
    }
  }
  // Let it get some way into the batch, then kill it mid-flight.
  auto watcher = open_sqlite_job_store(path);
  ASSERT_TRUE(watcher.ok());
  for (int i = 0; i < 2000; ++i) {
    auto counts = (*watcher)->get_batch("batch_1");
    ASSERT_TRUE(counts.ok());
    if (counts->completed + counts->failed >= kNumJobs / 4) break;
    usleep(2000);
  }
  kill(child, SIGKILL);
  int wstatus = 0;
  waitpid(child, &wstatus, 0);
  ASSERT_TRUE(WIFSIGNALED(wstatus)) << "the child exited by itself with " << WEXITSTATUS(wstatus);

  auto store = open_sqlite_job_store(path);
  ASSERT_TRUE(store.ok()) << store.status().to_string();
  BatchRecord counts = *(*store)->get_batch("batch_1");
  auto jobs = (*store)->batch_jobs("batch_1");
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), static_cast<size_t>(kNumJobs));
  int succeeded = 0;
  int failed = 0;
  for (const JobRecord& j : *jobs) {
    if (j.state == JobState::kSucceeded) {
      ++succeeded;
      EXPECT_EQ(j.spec.line % 2, 0);
    }
    if (j.state == JobState::kFailed) ++failed;
  }
  EXPECT_GT(succeeded + failed, 0);
  EXPECT_EQ(counts.completed, succeeded);
  EXPECT_EQ(counts.failed, failed);
  // The rest is still there to finish: queued, or running under the dead child's lease.
  const int64_t later = kT0 + 120'000;
  while (true) {
    auto claimed = (*store)->claim(worker("survivor", 50, 60'000), later);
    ASSERT_TRUE(claimed.ok());
    if (claimed->empty()) break;
    for (const JobRecord& j : *claimed)
      ASSERT_TRUE(*(*store)->complete(j.spec.id, "survivor", {200, "ok"}, later));
  }
  counts = *(*store)->get_batch("batch_1");
  EXPECT_EQ(counts.completed + counts.failed, kNumJobs);
}

}  // namespace
}  // namespace bw::jobs
