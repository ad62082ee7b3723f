// JobStore: the durable state of async work — uploaded files, OpenAI batches and the jobs
// (one HTTP request each) they expand to — shared by every worker and replica.
//
// Two implementations: SqliteJobStore (embedded, WAL, the default under --data-dir) and
// RedisJobStore (Redis Streams with a consumer group, for several replicas sharing one
// Redis). Both give the same guarantees, checked by one parameterised test suite:
//   - At-least-once with leases: claim() hands a job to one worker with a lease; the worker
//     renews it while it runs. A job whose lease expired (its worker died) is claimable
//     again; each claim counts an attempt, and a job past `max_attempts` is failed with a
//     reason instead of being handed out again.
//   - Exactly one terminal record: complete()/fail_attempt() succeed only for the worker
//     holding the current lease and only while the job is running, so a late or duplicate
//     worker cannot write a second result; batch counters move exactly once per job.
//   - Retries with backoff: fail_attempt() with a retry time puts the job back in the
//     queue, not claimable before that time.
//   - Cancellation: queued jobs become cancelled at once; a running job is marked
//     cancel-requested and its worker sees that when it renews the lease.
// Times are wall-clock milliseconds since the Unix epoch (they are persisted and compared
// across processes); every call takes `now_ms` from the caller so tests control time.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace bw::jobs {

int64_t wall_clock_ms();

// ---- Files (POST /v1/files) ----------------------------------------------------------------
struct FileRecord {
  std::string id;       // "file-..."
  std::string purpose;  // "batch", "batch_output"
  std::string filename;
  int64_t bytes = 0;
  int64_t created_at = 0;  // seconds (OpenAI's unit)
};

// ---- Jobs -------------------------------------------------------------------------------------
enum class JobState { kQueued, kRunning, kSucceeded, kFailed, kCancelled };
std::string_view job_state_name(JobState state);  // "queued", "running", ...
Result<JobState> parse_job_state(std::string_view name);

struct JobSpec {
  std::string id;         // "job-..." (unique across the store)
  std::string batch_id;   // empty for a single POST /v1/jobs job
  int64_t line = 0;       // 0-based line of the batch input file (output keeps input order)
  std::string custom_id;  // the batch line's custom_id
  std::string method = "POST";
  std::string url;   // "/v1/chat/completions" or "/v1/completions"
  std::string body;  // the JSON request body
  int64_t created_at_ms = 0;
};

// The endpoint's answer for a job: the HTTP status and the JSON body it returned.
struct JobResult {
  int http_status = 0;
  std::string body;
};

struct JobRecord {
  JobSpec spec;
  JobState state = JobState::kQueued;
  int attempts = 0;       // claims so far (the first run is attempt 1)
  std::string worker_id;  // the lease holder while running
  int64_t lease_expires_ms = 0;
  int64_t next_attempt_ms = 0;  // queued: not claimable before this
  bool cancel_requested = false;
  std::optional<JobResult> result;  // succeeded, or failed with the endpoint's last answer
  std::string error;                // failed / cancelled: why
  int64_t finished_at_ms = 0;
};

// ---- Batches (POST /v1/batches) ----------------------------------------------------------------
enum class BatchState { kValidating, kInProgress, kFinalizing, kCompleted, kFailed, kExpired, kCancelling, kCancelled };
std::string_view batch_state_name(BatchState state);  // OpenAI's names: "in_progress", ...
Result<BatchState> parse_batch_state(std::string_view name);

struct BatchRecord {
  std::string id;  // "batch_..."
  std::string input_file_id;
  std::string endpoint;  // "/v1/chat/completions" or "/v1/completions"
  std::string completion_window = "24h";
  std::string metadata_json = "null";  // the request's metadata object, verbatim
  BatchState state = BatchState::kInProgress;
  std::string output_file_id;  // set when finalized
  std::string error_file_id;
  std::string errors_json = "null";  // OpenAI's "errors" object when the batch failed
  // Seconds since the epoch; 0 = not reached.
  int64_t created_at = 0;
  int64_t in_progress_at = 0;
  int64_t expires_at = 0;
  int64_t finalizing_at = 0;
  int64_t completed_at = 0;
  int64_t failed_at = 0;
  int64_t cancelling_at = 0;
  int64_t cancelled_at = 0;
  // Added for the Batch API's `expired_at` (set with the transition to expired).
  int64_t expired_at = 0;
  // Request counts, maintained by the store as jobs reach terminal states.
  int64_t total = 0;
  int64_t completed = 0;  // jobs that succeeded
  int64_t failed = 0;     // jobs that failed or were cancelled
};

struct ClaimOptions {
  std::string worker_id;  // unique per worker process (host:pid:random)
  int max_jobs = 1;
  int64_t lease_ms = 30000;
  int max_attempts = 4;  // 1 + --job-max-retries
};

class JobStore {
 public:
  virtual ~JobStore() = default;

  // Files. put_file overwrites a file with the same id (finalization is idempotent).
  virtual Status put_file(const FileRecord& file, const std::string& content) = 0;
  virtual Result<FileRecord> get_file(const std::string& id) = 0;  // NotFound
  virtual Result<std::string> get_file_content(const std::string& id) = 0;

  // Batches. create_batch stores the batch (state in_progress, total = jobs.size()) and
  // queues its jobs, atomically: either all of it is stored or nothing.
  // (The stored state is batch.state, in_progress by default; the counts are the store's,
  // the caller's are ignored. InvalidArgument when the batch or a job id already exists.)
  virtual Status create_batch(const BatchRecord& batch, const std::vector<JobSpec>& jobs) = 0;
  virtual Result<BatchRecord> get_batch(const std::string& id) = 0;  // NotFound
  // Newest first; `after` is a batch id from a previous page ("" = from the newest).
  virtual Result<std::vector<BatchRecord>> list_batches(const std::string& after, int limit) = 0;
  // The same over the batches not yet in an end state (validating, in_progress, finalizing,
  // cancelling): what the finaliser looks at every second, at a cost that does not grow
  // with the finished batches kept for `result_ttl`.
  virtual Result<std::vector<BatchRecord>> list_unfinished_batches(const std::string& after, int limit) = 0;
  // Every job of a batch, ordered by line.
  virtual Result<std::vector<JobRecord>> batch_jobs(const std::string& batch_id) = 0;
  // Compare-and-set of a batch's state (and the fields the new state sets: timestamps,
  // output/error file ids, errors): true when the batch was in `from` and now is in
  // `updated.state`; false when another worker moved it first. NotFound when absent.
  virtual Result<bool> transition_batch(const std::string& id, BatchState from, const BatchRecord& updated) = 0;
  // Cancels every queued job of the batch and asks running ones to stop; the batch moves
  // to cancelling (the finaliser moves it to cancelled once no job runs).
  // (From validating or in_progress; OK and nothing changes when already cancelling or
  // cancelled; FailedPrecondition when finalizing or terminal.)
  virtual Status cancel_batch(const std::string& id, int64_t now_ms) = 0;

  // Single jobs.
  virtual Status enqueue(const JobSpec& job) = 0;
  virtual Result<JobRecord> get_job(const std::string& id) = 0;  // NotFound
  // Queued -> cancelled now; running -> cancel_requested. False when already terminal.
  virtual Result<bool> cancel_job(const std::string& id, int64_t now_ms) = 0;

  // Worker side. claim() returns up to max_jobs runnable jobs, each now running under a
  // lease held by options.worker_id with attempts incremented: queued jobs whose
  // next_attempt_ms has come, oldest first, and running jobs whose lease expired. An
  // expired job already at max_attempts is failed ("worker lost ...") instead.
  virtual Result<std::vector<JobRecord>> claim(const ClaimOptions& options, int64_t now_ms) = 0;
  // Extends the lease. False when the worker no longer holds it (expired and claimed by
  // another, or the job ended). Sets *cancel_requested when the job was asked to stop.
  virtual Result<bool> renew_lease(const std::string& job_id, const std::string& worker_id, int64_t lease_ms,
                                   int64_t now_ms, bool* cancel_requested) = 0;
  // Running -> succeeded with the result. False when the worker no longer holds the lease.
  virtual Result<bool> complete(const std::string& job_id, const std::string& worker_id, const JobResult& result,
                                int64_t now_ms) = 0;
  // The attempt failed. With retry_at_ms: back to queued, claimable from then on. Without:
  // failed (or cancelled, when cancel was requested) with `reason` and the endpoint's last
  // answer, if any. False when the worker no longer holds the lease.
  virtual Result<bool> fail_attempt(const std::string& job_id, const std::string& worker_id, const std::string& reason,
                                    std::optional<JobResult> last_result, std::optional<int64_t> retry_at_ms,
                                    int64_t now_ms) = 0;

  // Deletes single jobs (not batch jobs) that finished before `finished_before_ms`, and
  // batches (with their jobs and output files) completed before it. Returns how many
  // records went. (A terminal batch's finish time is its latest completed_at, failed_at,
  // cancelled_at or expired_at; input files are kept.)
  virtual Result<int64_t> purge_finished(int64_t finished_before_ms) = 0;
};

// --data-dir/jobs.sqlite3 (created with the folder when missing).
Result<std::unique_ptr<JobStore>> open_sqlite_job_store(const std::string& path);
// Keys under `key_prefix` ("bw:" by default) in the Redis at `redis_url`.
Result<std::unique_ptr<JobStore>> open_redis_job_store(const std::string& redis_url,
                                                       const std::string& key_prefix = "bw:");

}  // namespace bw::jobs
