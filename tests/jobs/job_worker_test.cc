// JobWorker against a real SQLite store and a fake executor, on a fake clock: claiming,
// priority, retries with backoff, final 4xx, lease renewal and loss, cancellation, hand-back.
#include "jobs/job_worker.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "jobs/sqlite_job_store.h"
#include "support/test_support.h"

namespace bw::jobs {
namespace {

class FakeExecutor : public JobExecutor {
 public:
  struct Call {
    std::string url;
    std::string body;
    int32_t priority_offset = 0;
    ExecutionCallback done;
    ExecutionId id = 0;
  };
  std::optional<JobResult> validate(const std::string&, const std::string&) override { return std::nullopt; }
  Result<ExecutionId> execute(const std::string& url, const std::string& body, int32_t priority_offset,
                              ExecutionCallback done) override {
    if (refuse) return ResourceExhausted("queue full");
    calls.push_back({url, body, priority_offset, std::move(done), ++next_id});
    return next_id;
  }
  void cancel(ExecutionId id) override { cancelled.push_back(id); }
  // Ends call i (once).
  void finish(size_t i, Result<JobResult> answer) {
    ASSERT_LT(i, calls.size());
    ASSERT_TRUE(calls[i].done);
    auto done = std::move(calls[i].done);
    calls[i].done = nullptr;
    done(std::move(answer));
  }

  std::vector<Call> calls;
  std::vector<ExecutionId> cancelled;
  ExecutionId next_id = 0;
  bool refuse = false;
};

class JobWorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = open_sqlite_job_store(dir_.file("jobs.sqlite3"));
    ASSERT_TRUE(store.ok()) << store.status().message();
    store_ = std::move(*store);
  }

  std::unique_ptr<JobWorker> make_worker(WorkerConfig config, JobExecutor* executor = nullptr) {
    if (config.worker_id.empty()) config.worker_id = "w1";
    config.seed = 42;
    return std::make_unique<JobWorker>(store_.get(), executor ? executor : &executor_, config, make_null_logger(),
                                       [this] { return now_; });
  }

  void enqueue(const std::string& id, const std::string& body = R"({"prompt":"x"})") {
    JobSpec spec;
    spec.id = id;
    spec.url = "/v1/completions";
    spec.body = body;
    spec.created_at_ms = now_;
    ASSERT_TRUE(store_->enqueue(spec).ok());
  }

  JobRecord get(const std::string& id) {
    Result<JobRecord> r = store_->get_job(id);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? *r : JobRecord{};
  }

  test::TempDir dir_;
  std::unique_ptr<JobStore> store_;
  FakeExecutor executor_;
  int64_t now_ = 1'700'000'000'000;
};

TEST(JobWorkerPolicy, BackoffDoublesWithJitterAndCap) {
  EXPECT_EQ(retry_backoff_ms(1, 1000, 60000, 0.0), 500);
  EXPECT_EQ(retry_backoff_ms(1, 1000, 60000, 0.999999), 999);
  EXPECT_EQ(retry_backoff_ms(2, 1000, 60000, 0.0), 1000);
  EXPECT_EQ(retry_backoff_ms(3, 1000, 60000, 0.5), 3000);
  EXPECT_EQ(retry_backoff_ms(10, 1000, 60000, 0.0), 30000);  // capped at 60 s before jitter
  EXPECT_EQ(retry_backoff_ms(50, 1000, 60000, 1.0), 60000);
  EXPECT_TRUE(is_retryable_answer(Result<JobResult>(Unavailable("engine gone"))));
  EXPECT_TRUE(is_retryable_answer(JobResult{503, "{}"}));
  EXPECT_TRUE(is_retryable_answer(JobResult{429, "{}"}));
  EXPECT_FALSE(is_retryable_answer(JobResult{400, "{}"}));
  EXPECT_FALSE(is_retryable_answer(JobResult{404, "{}"}));
  const std::string id = make_worker_id();
  EXPECT_EQ(std::count(id.begin(), id.end(), ':'), 2) << id;
  EXPECT_NE(make_worker_id(), id);
}

TEST_F(JobWorkerTest, RunsJobAtLowerPriorityAndCompletes) {
  enqueue("job-1");
  WorkerConfig config;
  config.priority_offset = 777;
  auto worker = make_worker(config);
  worker->tick();
  ASSERT_EQ(executor_.calls.size(), 1u);
  EXPECT_EQ(executor_.calls[0].url, "/v1/completions");
  EXPECT_EQ(executor_.calls[0].body, R"({"prompt":"x"})");
  EXPECT_EQ(executor_.calls[0].priority_offset, 777);
  EXPECT_EQ(get("job-1").state, JobState::kRunning);
  EXPECT_EQ(get("job-1").worker_id, "w1");
  EXPECT_EQ(worker->num_running(), 1);

  executor_.finish(0, JobResult{200, R"({"id":"cmpl-1"})"});
  worker->tick();
  JobRecord job = get("job-1");
  EXPECT_EQ(job.state, JobState::kSucceeded);
  ASSERT_TRUE(job.result);
  EXPECT_EQ(job.result->body, R"({"id":"cmpl-1"})");
  EXPECT_EQ(job.attempts, 1);
  EXPECT_EQ(worker->stats().succeeded, 1);
  EXPECT_EQ(worker->num_running(), 0);
}

TEST_F(JobWorkerTest, RespectsConcurrency) {
  for (int i = 0; i < 5; ++i)
    enqueue("job-" + std::to_string(i));
  WorkerConfig config;
  config.concurrency = 2;
  auto worker = make_worker(config);
  worker->tick();
  EXPECT_EQ(executor_.calls.size(), 2u);
  worker->tick();
  EXPECT_EQ(executor_.calls.size(), 2u);  // no free slot
  executor_.finish(0, JobResult{200, "{}"});
  worker->tick();
  EXPECT_EQ(executor_.calls.size(), 3u);
}

TEST_F(JobWorkerTest, RetriesTransientFailuresWithBackoffThenFails) {
  enqueue("job-1");
  WorkerConfig config;
  config.max_retries = 2;  // 3 attempts
  auto worker = make_worker(config);
  worker->tick();
  ASSERT_EQ(executor_.calls.size(), 1u);
  executor_.finish(0, JobResult{503, R"({"error":{"message":"busy"}})"});
  worker->tick();
  JobRecord job = get("job-1");
  EXPECT_EQ(job.state, JobState::kQueued);
  EXPECT_GE(job.next_attempt_ms, now_ + 500);  // attempt 1: 1 s with jitter in [0.5, 1) s
  EXPECT_LT(job.next_attempt_ms, now_ + 1000);
  // Not before the backoff.
  worker->tick();
  EXPECT_EQ(executor_.calls.size(), 1u);
  now_ = job.next_attempt_ms;
  worker->tick();
  ASSERT_EQ(executor_.calls.size(), 2u);
  EXPECT_EQ(get("job-1").attempts, 2);
  executor_.finish(1, Result<JobResult>(Unavailable("engine stopped")));  // transport failure
  worker->tick();
  job = get("job-1");
  EXPECT_EQ(job.state, JobState::kQueued);
  EXPECT_GE(job.next_attempt_ms, now_ + 1000);  // attempt 2: 2 s with jitter
  EXPECT_LT(job.next_attempt_ms, now_ + 2000);
  now_ = job.next_attempt_ms;
  worker->tick();
  ASSERT_EQ(executor_.calls.size(), 3u);
  executor_.finish(2, JobResult{429, R"({"error":{"message":"slow down"}})"});
  worker->tick();
  job = get("job-1");
  EXPECT_EQ(job.state, JobState::kFailed);
  EXPECT_EQ(job.attempts, 3);
  EXPECT_NE(job.error.find("429"), std::string::npos) << job.error;
  EXPECT_NE(job.error.find("after 3 attempts"), std::string::npos) << job.error;
  EXPECT_EQ(worker->stats().retried, 2);
  EXPECT_EQ(worker->stats().failed, 1);
}

TEST_F(JobWorkerTest, ClientErrorIsFinal) {
  enqueue("job-1");
  auto worker = make_worker({});
  worker->tick();
  executor_.finish(0, JobResult{400, R"({"error":{"message":"bad max_tokens"}})"});
  worker->tick();
  JobRecord job = get("job-1");
  EXPECT_EQ(job.state, JobState::kFailed);
  EXPECT_EQ(job.attempts, 1);
  ASSERT_TRUE(job.result);
  EXPECT_EQ(job.result->http_status, 400);
}

TEST_F(JobWorkerTest, RefusedExecutionIsRetried) {
  enqueue("job-1");
  executor_.refuse = true;
  auto worker = make_worker({});
  worker->tick();
  worker->tick();
  JobRecord job = get("job-1");
  EXPECT_EQ(job.state, JobState::kQueued);
  EXPECT_EQ(job.attempts, 1);
  EXPECT_GT(job.next_attempt_ms, now_);
}

TEST_F(JobWorkerTest, RenewsLeaseEveryThirdAndStopsWhenItIsLost) {
  enqueue("job-1");
  WorkerConfig config;
  config.lease_ms = 3000;
  auto worker = make_worker(config);
  worker->tick();
  EXPECT_EQ(get("job-1").lease_expires_ms, now_ + 3000);
  now_ += 1000;
  worker->tick();
  EXPECT_EQ(get("job-1").lease_expires_ms, now_ + 3000);  // renewed

  // The worker stalls past its lease; another worker takes the job over.
  now_ += 3001;
  FakeExecutor other_executor;
  WorkerConfig other_config = config;
  other_config.worker_id = "w2";
  auto other = make_worker(other_config, &other_executor);
  other->tick();
  ASSERT_EQ(other_executor.calls.size(), 1u);
  EXPECT_EQ(get("job-1").worker_id, "w2");
  EXPECT_EQ(get("job-1").attempts, 2);

  worker->tick();  // its renewal fails: the engine request is stopped, nothing is written
  ASSERT_EQ(executor_.cancelled.size(), 1u);
  EXPECT_EQ(executor_.cancelled[0], executor_.calls[0].id);
  EXPECT_EQ(worker->stats().lost_leases, 1);
  executor_.finish(0, JobResult{200, R"({"from":"w1"})"});  // a late answer is ignored
  worker->tick();
  EXPECT_EQ(get("job-1").state, JobState::kRunning);

  other_executor.finish(0, JobResult{200, R"({"from":"w2"})"});
  other->tick();
  JobRecord job = get("job-1");
  EXPECT_EQ(job.state, JobState::kSucceeded);
  EXPECT_EQ(job.result->body, R"({"from":"w2"})");
}

TEST_F(JobWorkerTest, CancelRequestStopsTheRunningJob) {
  enqueue("job-1");
  WorkerConfig config;
  config.lease_ms = 3000;
  auto worker = make_worker(config);
  worker->tick();
  Result<bool> cancelled = store_->cancel_job("job-1", now_);
  ASSERT_TRUE(cancelled.ok() && *cancelled);
  now_ += 1000;
  worker->tick();  // the renewal sees the request
  ASSERT_EQ(executor_.cancelled.size(), 1u);
  executor_.finish(0, JobResult{200, R"({"choices":[{"finish_reason":"abort"}]})"});
  worker->tick();
  EXPECT_EQ(get("job-1").state, JobState::kCancelled);
  EXPECT_EQ(worker->stats().cancelled, 1);
}

TEST_F(JobWorkerTest, ShutdownHandsRunningJobsBack) {
  enqueue("job-1");
  auto worker = make_worker({});
  worker->tick();
  ASSERT_EQ(executor_.calls.size(), 1u);
  worker->shutdown(std::chrono::milliseconds(0));
  EXPECT_EQ(executor_.cancelled.size(), 1u);
  JobRecord job = get("job-1");
  EXPECT_EQ(job.state, JobState::kQueued);  // claimable again at once
  EXPECT_LE(job.next_attempt_ms, now_);
  // Another worker picks it up without waiting for a lease to expire.
  FakeExecutor other_executor;
  WorkerConfig other_config;
  other_config.worker_id = "w2";
  auto other = make_worker(other_config, &other_executor);
  other->tick();
  EXPECT_EQ(other_executor.calls.size(), 1u);
}

TEST_F(JobWorkerTest, ThreadRunsJobsAndNotifiesBatchCompletion) {
  // The real thread with the real clock.
  std::atomic<int> batch_done{0};
  BatchRecord batch;
  batch.id = "batch_t";
  batch.endpoint = "/v1/completions";
  batch.created_at = wall_clock_ms() / 1000;
  std::vector<JobSpec> specs(2);
  for (int i = 0; i < 2; ++i) {
    specs[i].id = "job-b" + std::to_string(i);
    specs[i].batch_id = batch.id;
    specs[i].line = i;
    specs[i].custom_id = "c" + std::to_string(i);
    specs[i].url = "/v1/completions";
    specs[i].body = "{}";
    specs[i].created_at_ms = wall_clock_ms();
  }
  ASSERT_TRUE(store_->create_batch(batch, specs).ok());
  // A fake executor that answers at once from inside execute().
  class Immediate : public FakeExecutor {
   public:
    Result<ExecutionId> execute(const std::string&, const std::string&, int32_t, ExecutionCallback done) override {
      done(JobResult{200, "{}"});
      return ExecutionId{1};
    }
  } immediate;
  JobWorker fast(store_.get(), &immediate, WorkerConfig{.worker_id = "w3", .concurrency = 4}, make_null_logger());
  fast.set_on_batch_job_done([&](const std::string& id) {
    if (id == "batch_t") batch_done.fetch_add(1);
  });
  fast.start();
  for (int i = 0; i < 500 && batch_done < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  fast.shutdown(std::chrono::milliseconds(1000));
  EXPECT_EQ(batch_done, 2);
  Result<BatchRecord> stored = store_->get_batch("batch_t");
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->completed, 2);
}

}  // namespace
}  // namespace bw::jobs
