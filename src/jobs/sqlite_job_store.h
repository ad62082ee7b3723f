// SqliteJobStore: the embedded JobStore (the default, --data-dir/jobs.sqlite3).
//
// One SQLite file in WAL mode. Every change that touches more than one row (a batch and
// its jobs, a job's terminal state and its batch's counters, a claim of several jobs) is
// one BEGIN IMMEDIATE transaction, so a kill -9 leaves all of it or nothing. BEGIN
// IMMEDIATE takes SQLite's write lock before reading, so two processes (two servers on
// one data dir) serialise their claims and never hand out the same job twice; waiting for
// the lock is bounded by `busy_timeout_ms` (then Unavailable).
//
// synchronous=NORMAL: with WAL a commit is appended to the -wal file before the call
// returns, so a process crash (kill -9) never loses a committed transaction; only an OS
// crash or power loss may lose the last few commits, and never corrupts the file. That is
// enough for a job queue whose work is redone at least once anyway.
//
// Thread-safety: one connection per store object, every call under its mutex.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "jobs/job_store.h"

namespace bw::jobs {

struct SqliteJobStoreOptions {
  int64_t busy_timeout_ms = 10000;  // how long a call waits for another process's write lock
};

// Creates the parent folders and the schema when missing; FailedPrecondition for a file
// written by a newer schema, DataLoss for a file that is not a SQLite database.
Result<std::unique_ptr<JobStore>> open_sqlite_job_store(const std::string& path, const SqliteJobStoreOptions& options);

}  // namespace bw::jobs
