// BatchFinaliser: moves OpenAI batches to their end states. Every replica runs one; the
// store's compare-and-set transitions make sure only one of them finalises a batch.
//
// Each pass (every interval, and soon after poke()):
//   - in_progress, every job terminal: CAS in_progress -> finalizing, write the output and
//     error files (ids derived from the batch id, lines ordered by input line), then CAS
//     finalizing -> completed with the file ids and completed_at. A crash in between leaves
//     a finalizing batch; once it is older than `finalizing_timeout_ms` the next replica
//     takes it over and redoes the (idempotent) writes.
//   - in_progress past expires_at: cancel_batch (queued jobs cancelled, running ones asked
//     to stop); it ends as expired below.
//   - cancelling with no job queued or running: write the files of what finished, then CAS
//     to cancelled (or expired, when the cancel came from the completion window).
//   - every purge interval: results finished longer than `result_ttl_ms` ago are purged.
//
// Thread-safety: all methods may be called from any thread; passes never overlap.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "common/logging.h"
#include "jobs/job_store.h"

namespace bw::jobs {

struct FinaliserConfig {
  int64_t interval_ms = 1000;
  int64_t finalizing_timeout_ms = 60000;
  int64_t result_ttl_ms = int64_t{7} * 24 * 3600 * 1000;
  int64_t purge_interval_ms = 60000;
};

struct FinaliserStats {
  int64_t batches_completed = 0;  // finalised by this replica
  int64_t batches_cancelled = 0;
  int64_t batches_expired = 0;
  int64_t records_purged = 0;
};

class BatchFinaliser {
 public:
  using Clock = std::function<int64_t()>;  // wall-clock ms
  BatchFinaliser(JobStore* store, FinaliserConfig config, Logger logger, Clock clock = wall_clock_ms);
  ~BatchFinaliser();
  BatchFinaliser(const BatchFinaliser&) = delete;
  BatchFinaliser& operator=(const BatchFinaliser&) = delete;

  void start();
  void stop();
  // Run a pass soon (a worker finished a batch's job).
  void poke();

  // One pass over the active batches (and a purge when due). Returns the first error.
  Status run_once();
  // Finalises one batch if it is ready; false when there was nothing to do (or another
  // replica did it).
  Result<bool> finalise(const BatchRecord& batch, int64_t now_ms);

  FinaliserStats stats() const;

 private:
  Status write_files(const BatchRecord& batch, bool expired, BatchRecord* updated, int64_t now_ms);
  Result<bool> finish_completed(BatchRecord batch, BatchState from, int64_t now_ms);
  Result<bool> finish_cancelling(const BatchRecord& batch, int64_t now_ms);
  void run();

  JobStore* store_;
  FinaliserConfig config_;
  Logger logger_;
  Clock clock_;
  std::mutex pass_mutex_;  // one pass at a time
  int64_t last_purge_ms_ = 0;

  std::mutex mutex_;
  std::condition_variable cv_;
  bool poked_ = false;     // guarded by mutex_
  bool stopping_ = false;  // guarded by mutex_
  std::thread thread_;

  std::atomic<int64_t> completed_{0};
  std::atomic<int64_t> cancelled_{0};
  std::atomic<int64_t> expired_{0};
  std::atomic<int64_t> purged_{0};
};

}  // namespace bw::jobs
