#include "jobs/sqlite_job_store.h"

#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string_view>
#include <system_error>
#include <utility>
#include <variant>
#include <vector>

#include "jobs/store_util.h"

namespace bw::jobs {

namespace {

constexpr int kSchemaVersion = 1;

// The whole schema. Jobs are ordered for claims by (created_at_ms, rowid): rowid follows
// insertion, so a batch's jobs (inserted in line order with one created_at_ms) come out in
// line order. jobs_queue is (state, created_at_ms, rowid) implicitly, so a claim walks the
// queue in order and stops after max_jobs due rows instead of sorting the whole queue
// (next_attempt_ms is checked on the rows walked; only jobs waiting for a retry are skipped).
constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (
  id TEXT PRIMARY KEY,
  purpose TEXT NOT NULL,
  filename TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  content BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  input_file_id TEXT NOT NULL,
  endpoint TEXT NOT NULL,
  completion_window TEXT NOT NULL,
  metadata_json TEXT NOT NULL,
  state TEXT NOT NULL,
  output_file_id TEXT NOT NULL,
  error_file_id TEXT NOT NULL,
  errors_json TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  in_progress_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  finalizing_at INTEGER NOT NULL,
  completed_at INTEGER NOT NULL,
  failed_at INTEGER NOT NULL,
  cancelling_at INTEGER NOT NULL,
  cancelled_at INTEGER NOT NULL,
  expired_at INTEGER NOT NULL,
  total INTEGER NOT NULL,
  completed INTEGER NOT NULL,
  failed INTEGER NOT NULL,
  finished_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS batches_by_created ON batches (created_at, seq);
CREATE INDEX IF NOT EXISTS batches_by_finished ON batches (state, finished_ms);
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  batch_id TEXT NOT NULL,
  line INTEGER NOT NULL,
  custom_id TEXT NOT NULL,
  method TEXT NOT NULL,
  url TEXT NOT NULL,
  body TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  worker_id TEXT NOT NULL DEFAULT '',
  lease_expires_ms INTEGER NOT NULL DEFAULT 0,
  next_attempt_ms INTEGER NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  has_result INTEGER NOT NULL DEFAULT 0,
  result_status INTEGER NOT NULL DEFAULT 0,
  result_body TEXT NOT NULL DEFAULT '',
  error TEXT NOT NULL DEFAULT '',
  finished_at_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, created_at_ms);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (state, lease_expires_ms);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id, line);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (batch_id, finished_at_ms);
)sql";

constexpr const char* kJobColumns =
    "id, batch_id, line, custom_id, method, url, body, created_at_ms, state, attempts, worker_id, "
    "lease_expires_ms, next_attempt_ms, cancel_requested, has_result, result_status, result_body, error, "
    "finished_at_ms";

constexpr const char* kBatchColumns =
    "id, input_file_id, endpoint, completion_window, metadata_json, state, output_file_id, error_file_id, "
    "errors_json, created_at, in_progress_at, expires_at, finalizing_at, completed_at, failed_at, cancelling_at, "
    "cancelled_at, total, completed, failed, expired_at";

Status sqlite_status(sqlite3* db, int rc, std::string_view what) {
  const std::string message =
      fmt::format("sqlite: {}: {}", what, db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return Status(StatusCode::kUnavailable, message + " (another process holds the job store's lock)");
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return Status(StatusCode::kDataLoss, message);
    case SQLITE_FULL:
    case SQLITE_NOMEM:
      return Status(StatusCode::kResourceExhausted, message);
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_IOERR:
      return Status(StatusCode::kUnavailable, message);
    case SQLITE_CONSTRAINT:
      return Status(StatusCode::kInvalidArgument, message);
    default:
      return Status(StatusCode::kInternal, message);
  }
}

struct StmtDeleter {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};

struct Blob {
  std::string_view bytes;
};
using Arg = std::variant<int64_t, std::string_view, Blob>;

// One prepared statement with its arguments bound; step() walks the rows.
class Statement {
 public:
  static Result<Statement> prepare(sqlite3* db, std::string_view sql, const std::vector<Arg>& args) {
    sqlite3_stmt* raw = nullptr;
    const int rc = sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &raw, nullptr);
    Statement stmt(db, raw);
    if (rc != SQLITE_OK) return sqlite_status(db, rc, "prepare");
    for (size_t i = 0; i < args.size(); ++i) {
      const int index = static_cast<int>(i) + 1;
      int bind_rc = SQLITE_OK;
      if (const auto* number = std::get_if<int64_t>(&args[i])) {
        bind_rc = sqlite3_bind_int64(raw, index, *number);
      } else if (const auto* text = std::get_if<std::string_view>(&args[i])) {
        bind_rc = sqlite3_bind_text64(raw, index, text->data(), text->size(), SQLITE_TRANSIENT, SQLITE_UTF8);
      } else {
        const Blob& blob = std::get<Blob>(args[i]);
        bind_rc = sqlite3_bind_blob64(raw, index, blob.bytes.data(), blob.bytes.size(), SQLITE_TRANSIENT);
      }
      if (bind_rc != SQLITE_OK) return sqlite_status(db, bind_rc, "bind");
    }
    return stmt;
  }

  // True with a row to read, false when done.
  Result<bool> step() {
    const int rc = sqlite3_step(stmt_.get());
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return sqlite_status(db_, rc, "step");
  }

  int64_t int64(int col) const { return sqlite3_column_int64(stmt_.get(), col); }
  std::string text(int col) const {
    const auto* data = static_cast<const char*>(sqlite3_column_blob(stmt_.get(), col));
    const int size = sqlite3_column_bytes(stmt_.get(), col);
    return data == nullptr ? std::string() : std::string(data, static_cast<size_t>(size));
  }

 private:
  Statement(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  sqlite3* db_;
  std::unique_ptr<sqlite3_stmt, StmtDeleter> stmt_;
};

Status exec_script(sqlite3* db, const char* sql, std::string_view what) {
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &error);
  if (rc == SQLITE_OK) return OkStatus();
  std::string message = error != nullptr ? error : sqlite3_errstr(rc);
  sqlite3_free(error);
  Status status = sqlite_status(nullptr, rc, what);
  return Status(status.code(), fmt::format("sqlite: {}: {}", what, message));
}

// BEGIN IMMEDIATE ... COMMIT; rolls back when destroyed uncommitted.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {}
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction() {
    if (active_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  Status begin() {
    RETURN_IF_ERROR(exec_script(db_, "BEGIN IMMEDIATE", "begin"));
    active_ = true;
    return OkStatus();
  }
  Status commit() {
    RETURN_IF_ERROR(exec_script(db_, "COMMIT", "commit"));
    active_ = false;
    return OkStatus();
  }

 private:
  sqlite3* db_;
  bool active_ = false;
};

Result<JobRecord> read_job(const Statement& row) {
  JobRecord job;
  job.spec.id = row.text(0);
  job.spec.batch_id = row.text(1);
  job.spec.line = row.int64(2);
  job.spec.custom_id = row.text(3);
  job.spec.method = row.text(4);
  job.spec.url = row.text(5);
  job.spec.body = row.text(6);
  job.spec.created_at_ms = row.int64(7);
  auto state = parse_job_state(row.text(8));
  if (!state.ok()) return DataLoss("job store: job '{}': {}", job.spec.id, state.status().message());
  job.state = *state;
  job.attempts = static_cast<int>(row.int64(9));
  job.worker_id = row.text(10);
  job.lease_expires_ms = row.int64(11);
  job.next_attempt_ms = row.int64(12);
  job.cancel_requested = row.int64(13) != 0;
  if (row.int64(14) != 0) job.result = JobResult{static_cast<int>(row.int64(15)), row.text(16)};
  job.error = row.text(17);
  job.finished_at_ms = row.int64(18);
  return job;
}

Result<BatchRecord> read_batch(const Statement& row) {
  BatchRecord batch;
  batch.id = row.text(0);
  batch.input_file_id = row.text(1);
  batch.endpoint = row.text(2);
  batch.completion_window = row.text(3);
  batch.metadata_json = row.text(4);
  auto state = parse_batch_state(row.text(5));
  if (!state.ok()) return DataLoss("job store: batch '{}': {}", batch.id, state.status().message());
  batch.state = *state;
  batch.output_file_id = row.text(6);
  batch.error_file_id = row.text(7);
  batch.errors_json = row.text(8);
  batch.created_at = row.int64(9);
  batch.in_progress_at = row.int64(10);
  batch.expires_at = row.int64(11);
  batch.finalizing_at = row.int64(12);
  batch.completed_at = row.int64(13);
  batch.failed_at = row.int64(14);
  batch.cancelling_at = row.int64(15);
  batch.cancelled_at = row.int64(16);
  batch.total = row.int64(17);
  batch.completed = row.int64(18);
  batch.failed = row.int64(19);
  batch.expired_at = row.int64(20);
  return batch;
}

std::string_view name(JobState state) { return job_state_name(state); }

struct SqliteCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};

class SqliteJobStore final : public JobStore {
 public:
  explicit SqliteJobStore(sqlite3* db) : db_(db) {}

  Status put_file(const FileRecord& file, const std::string& content) override {
    if (file.id.empty()) return InvalidArgument("put_file: empty file id");
    const std::lock_guard lock(mutex_);
    return run(
        "INSERT OR REPLACE INTO files (id, purpose, filename, bytes, created_at, content) VALUES (?, ?, ?, ?, ?, ?)",
        {file.id, file.purpose, file.filename, static_cast<int64_t>(content.size()), file.created_at, Blob{content}});
  }

  Result<FileRecord> get_file(const std::string& id) override {
    const std::lock_guard lock(mutex_);
    ASSIGN_OR_RETURN(
        Statement row,
        Statement::prepare(db(), "SELECT id, purpose, filename, bytes, created_at FROM files WHERE id = ?", {id}));
    ASSIGN_OR_RETURN(const bool found, row.step());
    if (!found) return NotFound("file '{}' not found", id);
    return FileRecord{row.text(0), row.text(1), row.text(2), row.int64(3), row.int64(4)};
  }

  Result<std::string> get_file_content(const std::string& id) override {
    const std::lock_guard lock(mutex_);
    ASSIGN_OR_RETURN(Statement row, Statement::prepare(db(), "SELECT content FROM files WHERE id = ?", {id}));
    ASSIGN_OR_RETURN(const bool found, row.step());
    if (!found) return NotFound("file '{}' not found", id);
    return row.text(0);
  }

  Status create_batch(const BatchRecord& batch, const std::vector<JobSpec>& jobs) override {
    if (batch.id.empty()) return InvalidArgument("create_batch: empty batch id");
    for (const JobSpec& job : jobs) {
      if (job.id.empty()) return InvalidArgument("create_batch: batch '{}' has a job without an id", batch.id);
      if (!job.batch_id.empty() && job.batch_id != batch.id) {
        return InvalidArgument("create_batch: job '{}' names batch '{}', not '{}'", job.id, job.batch_id, batch.id);
      }
    }
    const std::lock_guard lock(mutex_);
    Transaction tx(db());
    RETURN_IF_ERROR(tx.begin());
    ASSIGN_OR_RETURN(const bool exists, row_exists("SELECT 1 FROM batches WHERE id = ?", batch.id));
    if (exists) return InvalidArgument("batch '{}' already exists", batch.id);
    const std::string state(batch_state_name(batch.state));
    RETURN_IF_ERROR(run(
        "INSERT INTO batches (id, input_file_id, endpoint, completion_window, metadata_json, state, output_file_id, "
        "error_file_id, errors_json, created_at, in_progress_at, expires_at, finalizing_at, completed_at, failed_at, "
        "cancelling_at, cancelled_at, expired_at, total, completed, failed, finished_ms) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?)",
        {batch.id,
         batch.input_file_id,
         batch.endpoint,
         batch.completion_window,
         batch.metadata_json,
         state,
         batch.output_file_id,
         batch.error_file_id,
         batch.errors_json,
         batch.created_at,
         batch.in_progress_at,
         batch.expires_at,
         batch.finalizing_at,
         batch.completed_at,
         batch.failed_at,
         batch.cancelling_at,
         batch.cancelled_at,
         batch.expired_at,
         static_cast<int64_t>(jobs.size()),
         is_terminal(batch.state) ? batch_finished_ms(batch) : int64_t{0}}));
    for (const JobSpec& job : jobs) {
      RETURN_IF_ERROR(insert_job(job, batch.id));
    }
    return tx.commit();
  }

  Result<BatchRecord> get_batch(const std::string& id) override {
    const std::lock_guard lock(mutex_);
    ASSIGN_OR_RETURN(Statement row, Statement::prepare(db(), select_batches("WHERE id = ?"), {id}));
    ASSIGN_OR_RETURN(const bool found, row.step());
    if (!found) return NotFound("batch '{}' not found", id);
    return read_batch(row);
  }

  Result<std::vector<BatchRecord>> list_batches(const std::string& after, int limit) override {
    return list_batches_where("", after, limit);
  }

  Result<std::vector<BatchRecord>> list_unfinished_batches(const std::string& after, int limit) override {
    // Through the (state, finished_ms) index: only the unfinished rows are read and sorted.
    static const std::string unfinished = [] {
      std::string names;
      for (BatchState state :
           {BatchState::kValidating, BatchState::kInProgress, BatchState::kFinalizing, BatchState::kCompleted,
            BatchState::kFailed, BatchState::kExpired, BatchState::kCancelling, BatchState::kCancelled}) {
        if (!is_terminal(state)) names += fmt::format("{}'{}'", names.empty() ? "" : ", ", batch_state_name(state));
      }
      return fmt::format("state IN ({}) AND ", names);
    }();
    return list_batches_where(unfinished, after, limit);
  }

  Result<std::vector<JobRecord>> batch_jobs(const std::string& batch_id) override {
    const std::lock_guard lock(mutex_);
    ASSIGN_OR_RETURN(const bool exists, row_exists("SELECT 1 FROM batches WHERE id = ?", batch_id));
    if (!exists) return NotFound("batch '{}' not found", batch_id);
    return select_jobs("WHERE batch_id = ? ORDER BY line", {batch_id});
  }

  Result<bool> transition_batch(const std::string& id, BatchState from, const BatchRecord& updated) override {
    const std::lock_guard lock(mutex_);
    const std::string from_name(batch_state_name(from));
    const std::string to_name(batch_state_name(updated.state));
    RETURN_IF_ERROR(
        run("UPDATE batches SET state = ?, output_file_id = ?, error_file_id = ?, errors_json = ?, "
            "in_progress_at = ?, expires_at = ?, finalizing_at = ?, completed_at = ?, failed_at = ?, "
            "cancelling_at = ?, cancelled_at = ?, expired_at = ?, finished_ms = ? WHERE id = ? AND state = ?",
            {to_name, updated.output_file_id, updated.error_file_id, updated.errors_json, updated.in_progress_at,
             updated.expires_at, updated.finalizing_at, updated.completed_at, updated.failed_at, updated.cancelling_at,
             updated.cancelled_at, updated.expired_at,
             is_terminal(updated.state) ? batch_finished_ms(updated) : int64_t{0}, id, from_name}));
    if (sqlite3_changes(db()) == 1) return true;
    ASSIGN_OR_RETURN(const bool exists, row_exists("SELECT 1 FROM batches WHERE id = ?", id));
    if (!exists) return NotFound("batch '{}' not found", id);
    return false;
  }

  Status cancel_batch(const std::string& id, int64_t now_ms) override {
    const std::lock_guard lock(mutex_);
    Transaction tx(db());
    RETURN_IF_ERROR(tx.begin());
    ASSIGN_OR_RETURN(Statement row, Statement::prepare(db(), "SELECT state FROM batches WHERE id = ?", {id}));
    ASSIGN_OR_RETURN(const bool found, row.step());
    if (!found) return NotFound("batch '{}' not found", id);
    const std::string state = row.text(0);
    if (state == "cancelling" || state == "cancelled") return OkStatus();  // already asked
    if (state != "validating" && state != "in_progress") {
      return FailedPrecondition("batch '{}' is {} and can no longer be cancelled", id, state);
    }
    RETURN_IF_ERROR(
        run("UPDATE jobs SET state = 'cancelled', error = ?, finished_at_ms = ?, next_attempt_ms = 0 "
            "WHERE batch_id = ? AND state = 'queued'",
            {kCancelledReason, now_ms, id}));
    const int64_t num_cancelled = sqlite3_changes64(db());
    RETURN_IF_ERROR(
        run("UPDATE jobs SET cancel_requested = 1 WHERE batch_id = ? AND state = 'running'", {std::string_view(id)}));
    RETURN_IF_ERROR(run("UPDATE batches SET state = 'cancelling', cancelling_at = ?, failed = failed + ? WHERE id = ?",
                        {now_ms / 1000, num_cancelled, id}));
    return tx.commit();
  }

  Status enqueue(const JobSpec& job) override {
    if (job.id.empty()) return InvalidArgument("enqueue: empty job id");
    if (!job.batch_id.empty()) {
      return InvalidArgument("enqueue: job '{}' belongs to batch '{}' (batch jobs come with create_batch)", job.id,
                             job.batch_id);
    }
    const std::lock_guard lock(mutex_);
    Transaction tx(db());
    RETURN_IF_ERROR(tx.begin());
    RETURN_IF_ERROR(insert_job(job, ""));
    return tx.commit();
  }

  Result<JobRecord> get_job(const std::string& id) override {
    const std::lock_guard lock(mutex_);
    ASSIGN_OR_RETURN(std::vector<JobRecord> jobs, select_jobs("WHERE id = ?", {id}));
    if (jobs.empty()) return NotFound("job '{}' not found", id);
    return std::move(jobs.front());
  }

  Result<bool> cancel_job(const std::string& id, int64_t now_ms) override {
    const std::lock_guard lock(mutex_);
    Transaction tx(db());
    RETURN_IF_ERROR(tx.begin());
    ASSIGN_OR_RETURN(Statement row, Statement::prepare(db(), "SELECT state, batch_id FROM jobs WHERE id = ?", {id}));
    ASSIGN_OR_RETURN(const bool found, row.step());
    if (!found) return NotFound("job '{}' not found", id);
    const std::string state = row.text(0);
    const std::string batch_id = row.text(1);
    if (state == name(JobState::kQueued)) {
      RETURN_IF_ERROR(finish_job(id, batch_id, JobState::kCancelled, kCancelledReason, std::nullopt, now_ms));
    } else if (state == name(JobState::kRunning)) {
      RETURN_IF_ERROR(run("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", {std::string_view(id)}));
    } else {
      return false;
    }
    RETURN_IF_ERROR(tx.commit());
    return true;
  }

  Result<std::vector<JobRecord>> claim(const ClaimOptions& options, int64_t now_ms) override {
    if (options.worker_id.empty()) return InvalidArgument("claim: empty worker id");
    if (options.lease_ms <= 0) return InvalidArgument("claim: lease_ms must be positive, got {}", options.lease_ms);
    std::vector<JobRecord> claimed;
    if (options.max_jobs <= 0) return claimed;
    const std::lock_guard lock(mutex_);
    Transaction tx(db());
    RETURN_IF_ERROR(tx.begin());
    std::vector<std::string> ids;
    const auto remaining = [&] { return static_cast<int64_t>(options.max_jobs) - static_cast<int64_t>(ids.size()); };

    // 1. Running jobs whose lease expired: their worker died (or stalled). Oldest lease first.
    struct Expired {
      std::string id, batch_id;
      int attempts;
      bool cancel_requested;
    };
    std::vector<Expired> expired;
    {
      ASSIGN_OR_RETURN(Statement rows, Statement::prepare(db(),
                                                          "SELECT id, batch_id, attempts, cancel_requested FROM jobs "
                                                          "WHERE state = 'running' AND lease_expires_ms <= ? "
                                                          "ORDER BY lease_expires_ms LIMIT 1000",
                                                          {now_ms}));
      while (true) {
        ASSIGN_OR_RETURN(const bool more, rows.step());
        if (!more) break;
        expired.push_back({rows.text(0), rows.text(1), static_cast<int>(rows.int64(2)), rows.int64(3) != 0});
      }
    }
    for (const Expired& job : expired) {
      if (job.cancel_requested) {
        RETURN_IF_ERROR(finish_job(job.id, job.batch_id, JobState::kCancelled,
                                   "cancelled (its worker was lost before it stopped)", std::nullopt, now_ms));
      } else if (job.attempts >= options.max_attempts) {
        RETURN_IF_ERROR(finish_job(
            job.id, job.batch_id, JobState::kFailed,
            fmt::format("worker lost: the lease expired on attempt {} of {}", job.attempts, options.max_attempts),
            std::nullopt, now_ms));
      } else if (remaining() > 0) {
        RETURN_IF_ERROR(take(job.id, options, now_ms));
        ids.push_back(job.id);
      }
    }

    // 2. Queued jobs that are due, oldest first. Those already at max_attempts (put back by a
    // retry the worker should not have asked for) fail instead; loop to fill their places.
    while (remaining() > 0) {
      struct Due {
        std::string id, batch_id, error;
        int attempts;
      };
      std::vector<Due> due;
      {
        ASSIGN_OR_RETURN(Statement rows, Statement::prepare(db(),
                                                            "SELECT id, batch_id, attempts, error FROM jobs "
                                                            "WHERE state = 'queued' AND next_attempt_ms <= ? "
                                                            "ORDER BY created_at_ms, rowid LIMIT ?",
                                                            {now_ms, remaining()}));
        while (true) {
          ASSIGN_OR_RETURN(const bool more, rows.step());
          if (!more) break;
          due.push_back({rows.text(0), rows.text(1), rows.text(3), static_cast<int>(rows.int64(2))});
        }
      }
      if (due.empty()) break;
      for (const Due& job : due) {
        if (job.attempts >= options.max_attempts) {
          RETURN_IF_ERROR(finish_job(job.id, job.batch_id, JobState::kFailed,
                                     fmt::format("gave up after {} attempts: {}", job.attempts, job.error),
                                     std::nullopt, now_ms));
        } else {
          RETURN_IF_ERROR(take(job.id, options, now_ms));
          ids.push_back(job.id);
        }
      }
    }

    for (const std::string& id : ids) {
      ASSIGN_OR_RETURN(std::vector<JobRecord> jobs, select_jobs("WHERE id = ?", {id}));
      if (jobs.empty()) return Internal("claim: job '{}' vanished inside a transaction", id);
      claimed.push_back(std::move(jobs.front()));
    }
    RETURN_IF_ERROR(tx.commit());
    return claimed;
  }

  Result<bool> renew_lease(const std::string& job_id, const std::string& worker_id, int64_t lease_ms, int64_t now_ms,
                           bool* cancel_requested) override {
    if (lease_ms <= 0) return InvalidArgument("renew_lease: lease_ms must be positive, got {}", lease_ms);
    const std::lock_guard lock(mutex_);
    ASSIGN_OR_RETURN(Statement row, Statement::prepare(db(),
                                                       "UPDATE jobs SET lease_expires_ms = ? WHERE id = ? AND "
                                                       "state = 'running' AND worker_id = ? RETURNING cancel_requested",
                                                       {now_ms + lease_ms, job_id, worker_id}));
    ASSIGN_OR_RETURN(const bool held, row.step());
    if (held) {
      if (cancel_requested != nullptr) *cancel_requested = row.int64(0) != 0;
      ASSIGN_OR_RETURN(const bool more, row.step());  // runs the statement to completion
      (void)more;
      return true;
    }
    if (cancel_requested != nullptr) {
      ASSIGN_OR_RETURN(Statement other,
                       Statement::prepare(db(), "SELECT cancel_requested FROM jobs WHERE id = ?", {job_id}));
      ASSIGN_OR_RETURN(const bool found, other.step());
      *cancel_requested = found && other.int64(0) != 0;
    }
    return false;
  }

  Result<bool> complete(const std::string& job_id, const std::string& worker_id, const JobResult& result,
                        int64_t now_ms) override {
    const std::lock_guard lock(mutex_);
    Transaction tx(db());
    RETURN_IF_ERROR(tx.begin());
    ASSIGN_OR_RETURN(std::optional<std::string> batch_id, held_job(job_id, worker_id));
    if (!batch_id) return false;
    RETURN_IF_ERROR(finish_job(job_id, *batch_id, JobState::kSucceeded, "", result, now_ms));
    RETURN_IF_ERROR(tx.commit());
    return true;
  }

  Result<bool> fail_attempt(const std::string& job_id, const std::string& worker_id, const std::string& reason,
                            std::optional<JobResult> last_result, std::optional<int64_t> retry_at_ms,
                            int64_t now_ms) override {
    const std::lock_guard lock(mutex_);
    Transaction tx(db());
    RETURN_IF_ERROR(tx.begin());
    ASSIGN_OR_RETURN(std::optional<std::string> batch_id, held_job(job_id, worker_id));
    if (!batch_id) return false;
    ASSIGN_OR_RETURN(const bool cancel, row_exists("SELECT 1 FROM jobs WHERE id = ? AND cancel_requested = 1", job_id));
    if (cancel) {
      RETURN_IF_ERROR(finish_job(job_id, *batch_id, JobState::kCancelled, reason.empty() ? kCancelledReason : reason,
                                 last_result, now_ms));
    } else if (retry_at_ms) {
      RETURN_IF_ERROR(
          run("UPDATE jobs SET state = 'queued', worker_id = '', lease_expires_ms = 0, "
              "next_attempt_ms = ?, error = ? WHERE id = ?",
              {*retry_at_ms, reason, job_id}));
      if (last_result) RETURN_IF_ERROR(store_result(job_id, *last_result));
    } else {
      RETURN_IF_ERROR(finish_job(job_id, *batch_id, JobState::kFailed, reason, last_result, now_ms));
    }
    RETURN_IF_ERROR(tx.commit());
    return true;
  }

  Result<int64_t> purge_finished(int64_t finished_before_ms) override {
    const std::lock_guard lock(mutex_);
    Transaction tx(db());
    RETURN_IF_ERROR(tx.begin());
    RETURN_IF_ERROR(
        run("DELETE FROM jobs WHERE batch_id = '' AND state IN ('succeeded', 'failed', 'cancelled') "
            "AND finished_at_ms < ?",
            {finished_before_ms}));
    int64_t num_purged = sqlite3_changes64(db());
    struct Done {
      std::string id, output_file_id, error_file_id;
    };
    std::vector<Done> done;
    {
      ASSIGN_OR_RETURN(Statement rows,
                       Statement::prepare(db(),
                                          "SELECT id, output_file_id, error_file_id FROM batches WHERE state IN "
                                          "('completed', 'failed', 'expired', 'cancelled') AND finished_ms < ?",
                                          {finished_before_ms}));
      while (true) {
        ASSIGN_OR_RETURN(const bool more, rows.step());
        if (!more) break;
        done.push_back({rows.text(0), rows.text(1), rows.text(2)});
      }
    }
    for (const Done& batch : done) {
      RETURN_IF_ERROR(run("DELETE FROM jobs WHERE batch_id = ?", {batch.id}));
      num_purged += sqlite3_changes64(db());
      for (const std::string& file_id : {batch.output_file_id, batch.error_file_id}) {
        if (file_id.empty()) continue;
        RETURN_IF_ERROR(run("DELETE FROM files WHERE id = ?", {file_id}));
        num_purged += sqlite3_changes64(db());
      }
      RETURN_IF_ERROR(run("DELETE FROM batches WHERE id = ?", {batch.id}));
      num_purged += sqlite3_changes64(db());
    }
    RETURN_IF_ERROR(tx.commit());
    return num_purged;
  }

 private:
  sqlite3* db() { return db_.get(); }

  // Runs one statement to completion (mutex held).
  Status run(std::string_view sql, const std::vector<Arg>& args) {
    ASSIGN_OR_RETURN(Statement stmt, Statement::prepare(db(), sql, args));
    while (true) {
      ASSIGN_OR_RETURN(const bool more, stmt.step());
      if (!more) return OkStatus();
    }
  }

  Result<bool> row_exists(std::string_view sql, std::string_view key) {
    ASSIGN_OR_RETURN(Statement stmt, Statement::prepare(db(), sql, {key}));
    return stmt.step();
  }

  static std::string select_batches(std::string_view where) {
    return fmt::format("SELECT {} FROM batches {}", kBatchColumns, where);
  }

  // list_batches over the rows `filter` (a condition followed by AND, or "") admits.
  Result<std::vector<BatchRecord>> list_batches_where(std::string_view filter, const std::string& after, int limit) {
    std::vector<BatchRecord> batches;
    if (limit <= 0) return batches;
    const std::lock_guard lock(mutex_);
    // Newest first: (created_at, seq) descending; `after` continues below that batch.
    int64_t created_at = INT64_MAX;
    int64_t seq = INT64_MAX;
    if (!after.empty()) {
      ASSIGN_OR_RETURN(Statement row,
                       Statement::prepare(db(), "SELECT created_at, seq FROM batches WHERE id = ?", {after}));
      ASSIGN_OR_RETURN(const bool found, row.step());
      if (!found) return NotFound("batch '{}' (the 'after' cursor) not found", after);
      created_at = row.int64(0);
      seq = row.int64(1);
    }
    ASSIGN_OR_RETURN(Statement rows,
                     Statement::prepare(db(),
                                        select_batches(fmt::format("WHERE {}(created_at < ? OR (created_at = ? AND "
                                                                   "seq < ?)) ORDER BY created_at DESC, seq DESC "
                                                                   "LIMIT ?",
                                                                   filter)),
                                        {created_at, created_at, seq, int64_t{limit}}));
    while (true) {
      ASSIGN_OR_RETURN(const bool more, rows.step());
      if (!more) break;
      ASSIGN_OR_RETURN(BatchRecord batch, read_batch(rows));
      batches.push_back(std::move(batch));
    }
    return batches;
  }

  Result<std::vector<JobRecord>> select_jobs(std::string_view where, const std::vector<Arg>& args) {
    ASSIGN_OR_RETURN(Statement rows,
                     Statement::prepare(db(), fmt::format("SELECT {} FROM jobs {}", kJobColumns, where), args));
    std::vector<JobRecord> jobs;
    while (true) {
      ASSIGN_OR_RETURN(const bool more, rows.step());
      if (!more) break;
      ASSIGN_OR_RETURN(JobRecord job, read_job(rows));
      jobs.push_back(std::move(job));
    }
    return jobs;
  }

  Status insert_job(const JobSpec& job, std::string_view batch_id) {
    ASSIGN_OR_RETURN(const bool exists, row_exists("SELECT 1 FROM jobs WHERE id = ?", job.id));
    if (exists) return InvalidArgument("job '{}' already exists", job.id);
    return run(
        "INSERT INTO jobs (id, batch_id, line, custom_id, method, url, body, created_at_ms, state) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued')",
        {job.id, batch_id, job.line, job.custom_id, job.method, job.url, job.body, job.created_at_ms});
  }

  // The batch id ("" for a single job) of a job running under `worker_id`'s lease, or nullopt.
  Result<std::optional<std::string>> held_job(const std::string& job_id, const std::string& worker_id) {
    ASSIGN_OR_RETURN(
        Statement row,
        Statement::prepare(db(), "SELECT batch_id FROM jobs WHERE id = ? AND state = 'running' AND worker_id = ?",
                           {job_id, worker_id}));
    ASSIGN_OR_RETURN(const bool found, row.step());
    if (!found) return std::optional<std::string>();
    return std::optional<std::string>(row.text(0));
  }

  // Hands a job to the claiming worker (inside the claim transaction).
  Status take(const std::string& id, const ClaimOptions& options, int64_t now_ms) {
    return run(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker_id = ?, lease_expires_ms = ?, "
        "next_attempt_ms = 0 WHERE id = ?",
        {options.worker_id, now_ms + options.lease_ms, id});
  }

  Status store_result(const std::string& id, const JobResult& result) {
    return run("UPDATE jobs SET has_result = 1, result_status = ?, result_body = ? WHERE id = ?",
               {int64_t{result.http_status}, result.body, id});
  }

  // The terminal transition of one job and its batch's counter, in the caller's transaction:
  // the counter moves exactly when the job does. A missing `result` keeps an earlier one.
  Status finish_job(const std::string& id, const std::string& batch_id, JobState state, const std::string& error,
                    const std::optional<JobResult>& result, int64_t now_ms) {
    RETURN_IF_ERROR(
        run("UPDATE jobs SET state = ?, error = ?, finished_at_ms = ?, lease_expires_ms = 0, "
            "next_attempt_ms = 0 WHERE id = ?",
            {name(state), error, now_ms, id}));
    if (result) RETURN_IF_ERROR(store_result(id, *result));
    if (batch_id.empty()) return OkStatus();
    return run(state == JobState::kSucceeded ? "UPDATE batches SET completed = completed + 1 WHERE id = ?"
                                             : "UPDATE batches SET failed = failed + 1 WHERE id = ?",
               {batch_id});
  }

  std::mutex mutex_;  // guards every use of db_
  std::unique_ptr<sqlite3, SqliteCloser> db_;
};

}  // namespace

Result<std::unique_ptr<JobStore>> open_sqlite_job_store(const std::string& path, const SqliteJobStoreOptions& options) {
  if (path.empty()) return InvalidArgument("job store: empty SQLite path");
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) return Unavailable("job store: cannot create folder '{}': {}", parent.string(), ec.message());
  }
  sqlite3* raw = nullptr;
  const int rc =
      sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  std::unique_ptr<sqlite3, SqliteCloser> db(raw);
  const auto context = [&](const Status& status) { return status.with_context(path); };
  if (rc != SQLITE_OK) return context(sqlite_status(raw, rc, "open"));
  sqlite3_busy_timeout(db.get(), static_cast<int>(options.busy_timeout_ms));
  sqlite3_extended_result_codes(db.get(), 1);
  {
    // journal_mode answers with the mode now in force; a file that is not a database fails here.
    auto row = Statement::prepare(db.get(), "PRAGMA journal_mode=WAL", {});
    if (!row.ok()) return context(row.status());
    auto found = row->step();
    if (!found.ok()) return context(found.status());
    if (!*found || row->text(0) != "wal") {
      return context(Unavailable("sqlite: cannot switch the job store to WAL mode (got '{}')",
                                 *found ? row->text(0) : std::string()));
    }
  }
  if (Status status = exec_script(db.get(), "PRAGMA synchronous=NORMAL", "synchronous"); !status.ok()) {
    return context(status);
  }
  {
    Transaction tx(db.get());
    if (Status status = tx.begin(); !status.ok()) return context(status);
    if (Status status = exec_script(db.get(), kSchema, "create schema"); !status.ok()) return context(status);
    auto row = Statement::prepare(db.get(), "SELECT MAX(version) FROM schema_version", {});
    if (!row.ok()) return context(row.status());
    auto found = row->step();
    if (!found.ok()) return context(found.status());
    const int64_t version = *found ? row->int64(0) : 0;
    if (version > kSchemaVersion) {
      return context(FailedPrecondition(
          "job store schema version {} is newer than this build's {} (written by a newer Breakwater)", version,
          kSchemaVersion));
    }
    if (version == 0) {
      auto insert =
          Statement::prepare(db.get(), "INSERT INTO schema_version (version) VALUES (?)", {int64_t{kSchemaVersion}});
      if (!insert.ok()) return context(insert.status());
      if (auto done = insert->step(); !done.ok()) return context(done.status());
    }
    if (Status status = tx.commit(); !status.ok()) return context(status);
  }
  return std::unique_ptr<JobStore>(std::make_unique<SqliteJobStore>(db.release()));
}

Result<std::unique_ptr<JobStore>> open_sqlite_job_store(const std::string& path) {
  return open_sqlite_job_store(path, SqliteJobStoreOptions{});
}

}  // namespace bw::jobs
