// JobWorker: the pool that runs queued jobs of one process. Its thread claims up to
// `concurrency` jobs from the JobStore under a lease, runs each through the JobExecutor at
// a lower engine priority than interactive requests, renews the leases every lease/3, and
// writes each job's end through the store (which accepts it only from the lease holder, so
// a job another worker took over is never written twice).
//
// Retry policy: a transport/engine failure, a 5xx or a 429 answer is retried with
// exponential backoff (base 1 s, x2 per attempt, capped at 60 s, "equal jitter": half the
// delay fixed, half random) until 1 + max_retries attempts were made; then the job fails
// with the reason. Any other 4xx answer is final (failed with that answer). A lost lease
// (the job was taken over after this worker stalled) or a cancel request stops the engine
// request; a cancelled job ends cancelled.
//
// Shutdown: stop_claiming() stops taking new jobs; shutdown(grace) waits up to `grace` for
// running jobs to finish, then stops the rest and hands them back at once (fail_attempt
// with an immediate retry) so another replica, or this one after a restart, picks them up
// without waiting for the lease to expire. (A crash cannot hand back: then the lease runs
// out and the job is claimed again.)
//
// Thread-safety: all public methods may be called from any thread; store and executor calls
// happen on the worker thread (or the thread calling tick() in tests).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "common/logging.h"
#include "jobs/job_executor.h"
#include "jobs/job_store.h"

namespace bw::jobs {

struct WorkerConfig {
  std::string worker_id;  // "" = make_worker_id()
  int concurrency = 1;    // jobs running at once
  int max_retries = 3;    // attempts = 1 + max_retries
  int64_t lease_ms = 30000;
  int32_t priority_offset = 1000;  // added to each job's engine priority (lower runs first)
  int64_t poll_interval_ms = 250;  // how often an idle worker looks for jobs
  int64_t backoff_base_ms = 1000;
  int64_t backoff_cap_ms = 60000;
  uint64_t seed = 0;  // jitter; 0 = random
};

// Counters since start, for /metrics.
struct WorkerStats {
  int64_t claimed = 0;
  int64_t succeeded = 0;
  int64_t failed = 0;     // final failures (incl. 4xx answers)
  int64_t retried = 0;    // attempts put back with a backoff
  int64_t cancelled = 0;  // ended on a cancel request
  int64_t lost_leases = 0;
  int64_t running = 0;  // now
};

// host:pid:random — unique per process.
std::string make_worker_id();

// The backoff before attempt `attempt + 1` after attempt `attempt` (1-based) failed:
// min(cap, base * 2^(attempt-1)), half of it fixed and half scaled by `unit_random` in [0, 1).
int64_t retry_backoff_ms(int attempt, int64_t base_ms, int64_t cap_ms, double unit_random);

// Whether an endpoint answer (or an error without an answer) is worth another attempt.
bool is_retryable_answer(const Result<JobResult>& answer);

class JobWorker {
 public:
  using Clock = std::function<int64_t()>;  // wall-clock ms
  JobWorker(JobStore* store, JobExecutor* executor, WorkerConfig config, Logger logger, Clock clock = wall_clock_ms);
  ~JobWorker();
  JobWorker(const JobWorker&) = delete;
  JobWorker& operator=(const JobWorker&) = delete;

  // Runs tick() on a thread of its own until shutdown().
  void start();
  // No new claims from now on (running jobs go on).
  void stop_claiming();
  // Waits up to `grace` for running jobs, hands back the rest, stops the thread. Idempotent.
  void shutdown(std::chrono::milliseconds grace);

  // Called (on the worker thread) when a batch's job reached a terminal state.
  void set_on_batch_job_done(std::function<void(const std::string& batch_id)> callback) {
    on_batch_job_done_ = std::move(callback);
  }

  // One round: applies finished executions, renews due leases, claims free slots. Returns
  // the ms until something is due (a lease renewal), capped at the poll interval. The
  // thread calls this in a loop; tests call it directly.
  int64_t tick();
  // Blocks until an execution finished or `timeout` passed (the thread's idle wait).
  void wait_for_work(std::chrono::milliseconds timeout);

  WorkerStats stats() const;
  const std::string& worker_id() const { return config_.worker_id; }
  int num_running() const { return static_cast<int>(running_count_.load()); }

 private:
  struct Running {
    JobRecord job;
    uint64_t run_seq = 0;
    ExecutionId execution_id = 0;
    bool executing = false;
    int64_t next_renew_ms = 0;
    bool cancel_requested = false;
  };
  struct Finished {
    std::string job_id;
    uint64_t run_seq = 0;
    Result<JobResult> answer;
  };

  void apply_finished(const Finished& finished);
  void renew_leases(int64_t now);
  void claim_jobs(int64_t now);
  void start_job(JobRecord job, int64_t now);
  void record_end(const JobRecord& job, bool terminal);
  void hand_back_all();
  void run();

  JobStore* store_;
  JobExecutor* executor_;
  WorkerConfig config_;
  Logger logger_;
  Clock clock_;
  std::function<void(const std::string&)> on_batch_job_done_;

  // Worker-thread state (tick()).
  std::map<std::string, Running> running_;
  uint64_t next_run_seq_ = 1;
  std::mt19937_64 rng_;

  // Where executions report; shared with their callbacks, which may outlive the worker.
  struct Inbox {
    std::mutex mutex;
    std::condition_variable cv;
    std::deque<Finished> finished;  // guarded by mutex
    bool wake = false;              // guarded by mutex
  };
  std::shared_ptr<Inbox> inbox_ = std::make_shared<Inbox>();

  std::atomic<bool> claiming_{true};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> handing_back_{false};
  std::thread thread_;

  std::atomic<int64_t> running_count_{0};
  std::atomic<int64_t> claimed_{0};
  std::atomic<int64_t> succeeded_{0};
  std::atomic<int64_t> failed_{0};
  std::atomic<int64_t> retried_{0};
  std::atomic<int64_t> cancelled_{0};
  std::atomic<int64_t> lost_leases_{0};
};

}  // namespace bw::jobs
