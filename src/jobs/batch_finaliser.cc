#include "jobs/batch_finaliser.h"

#include <vector>

#include <fmt/format.h>

#include "jobs/batch_format.h"

namespace bw::jobs {

namespace {

bool is_active(BatchState state) {
  return state == BatchState::kInProgress || state == BatchState::kFinalizing || state == BatchState::kCancelling;
}

// The cancel came from the completion window, not from a user.
bool cancelled_by_expiry(const BatchRecord& batch) {
  return batch.expires_at > 0 && batch.cancelling_at >= batch.expires_at;
}

}  // namespace

BatchFinaliser::BatchFinaliser(JobStore* store, FinaliserConfig config, Logger logger, Clock clock)
    : store_(store), config_(config), logger_(std::move(logger)), clock_(std::move(clock)) {}

BatchFinaliser::~BatchFinaliser() { stop(); }

void BatchFinaliser::start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { run(); });
}

void BatchFinaliser::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void BatchFinaliser::poke() {
  {
    std::lock_guard lock(mutex_);
    poked_ = true;
  }
  cv_.notify_all();
}

void BatchFinaliser::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    poked_ = false;
    lock.unlock();
    Status s = run_once();
    if (!s.ok()) logger_->warn("batch finaliser: {}", s.message());
    lock.lock();
    cv_.wait_for(lock, std::chrono::milliseconds(config_.interval_ms), [this] { return stopping_ || poked_; });
  }
}

Status BatchFinaliser::run_once() {
  std::lock_guard pass(pass_mutex_);
  const int64_t now = clock_();
  Status first_error;
  // The unfinished batches, page by page (newest first); only active ones need work.
  std::string after;
  std::vector<BatchRecord> active;
  for (;;) {
    Result<std::vector<BatchRecord>> page = store_->list_unfinished_batches(after, 100);
    if (!page.ok()) return page.status();
    for (const BatchRecord& b : *page) {
      if (is_active(b.state)) active.push_back(b);
    }
    if (page->size() < 100) break;
    after = page->back().id;
  }
  for (const BatchRecord& batch : active) {
    Result<bool> r = finalise(batch, now);
    if (!r.ok() && first_error.ok()) first_error = r.status().with_context(batch.id);
  }
  if (now - last_purge_ms_ >= config_.purge_interval_ms) {
    last_purge_ms_ = now;
    Result<int64_t> purged = store_->purge_finished(now - config_.result_ttl_ms);
    if (!purged.ok()) {
      if (first_error.ok()) first_error = purged.status();
    } else {
      purged_.fetch_add(*purged);
    }
  }
  return first_error;
}

Result<bool> BatchFinaliser::finalise(const BatchRecord& batch, int64_t now_ms) {
  const int64_t now_s = now_ms / 1000;
  switch (batch.state) {
    case BatchState::kInProgress:
      // A batch with no jobs is being failed by its creator (validation).
      if (batch.total > 0 && batch.completed + batch.failed >= batch.total) {
        BatchRecord updated = batch;
        updated.state = BatchState::kFinalizing;
        updated.finalizing_at = now_s;
        ASSIGN_OR_RETURN(bool won, store_->transition_batch(batch.id, BatchState::kInProgress, updated));
        if (!won) return false;
        return finish_completed(updated, BatchState::kFinalizing, now_ms);
      }
      if (batch.expires_at > 0 && now_s >= batch.expires_at) {
        logger_->info("batch {}: the completion window expired; cancelling what is left", batch.id);
        RETURN_IF_ERROR(store_->cancel_batch(batch.id, now_ms));
        ASSIGN_OR_RETURN(BatchRecord cancelling, store_->get_batch(batch.id));
        if (cancelling.state == BatchState::kCancelling) return finish_cancelling(cancelling, now_ms);
        return true;
      }
      return false;
    case BatchState::kFinalizing: {
      if (now_s - batch.finalizing_at < config_.finalizing_timeout_ms / 1000) return false;
      // Its finaliser died: take it over (the CAS refreshes finalizing_at so others wait).
      logger_->warn("batch {}: finalizing since {} s; taking it over", batch.id, now_s - batch.finalizing_at);
      BatchRecord updated = batch;
      updated.finalizing_at = now_s;
      ASSIGN_OR_RETURN(bool won, store_->transition_batch(batch.id, BatchState::kFinalizing, updated));
      if (!won) return false;
      return finish_completed(updated, BatchState::kFinalizing, now_ms);
    }
    case BatchState::kCancelling:
      return finish_cancelling(batch, now_ms);
    default:
      return false;
  }
}

Status BatchFinaliser::write_files(const BatchRecord& batch, bool expired, BatchRecord* updated, int64_t now_ms) {
  ASSIGN_OR_RETURN(std::vector<JobRecord> jobs, store_->batch_jobs(batch.id));
  const BatchResultFiles files = build_batch_result_files(jobs, batch.id, expired);
  FileRecord file;
  file.purpose = "batch_output";
  file.created_at = now_ms / 1000;
  updated->output_file_id.clear();
  updated->error_file_id.clear();
  if (files.num_output_lines > 0) {
    file.id = batch_output_file_id(batch.id);
    file.filename = fmt::format("{}_output.jsonl", batch.id);
    file.bytes = static_cast<int64_t>(files.output.size());
    RETURN_IF_ERROR(store_->put_file(file, files.output));
    updated->output_file_id = file.id;
  }
  if (files.num_error_lines > 0) {
    file.id = batch_error_file_id(batch.id);
    file.filename = fmt::format("{}_error.jsonl", batch.id);
    file.bytes = static_cast<int64_t>(files.errors.size());
    RETURN_IF_ERROR(store_->put_file(file, files.errors));
    updated->error_file_id = file.id;
  }
  return OkStatus();
}

Result<bool> BatchFinaliser::finish_completed(BatchRecord batch, BatchState from, int64_t now_ms) {
  BatchRecord updated = batch;
  RETURN_IF_ERROR(write_files(batch, /*expired=*/false, &updated, now_ms));
  updated.state = BatchState::kCompleted;
  updated.completed_at = now_ms / 1000;
  ASSIGN_OR_RETURN(bool won, store_->transition_batch(batch.id, from, updated));
  if (won) {
    completed_.fetch_add(1);
    logger_->info("batch {}: completed ({} succeeded, {} failed)", batch.id, batch.completed, batch.failed);
  }
  return won;
}

Result<bool> BatchFinaliser::finish_cancelling(const BatchRecord& batch, int64_t now_ms) {
  ASSIGN_OR_RETURN(std::vector<JobRecord> jobs, store_->batch_jobs(batch.id));
  for (const JobRecord& job : jobs) {
    if (job.state == JobState::kQueued || job.state == JobState::kRunning) return false;  // still stopping
  }
  const bool expired = cancelled_by_expiry(batch);
  BatchRecord updated = batch;
  RETURN_IF_ERROR(write_files(batch, expired, &updated, now_ms));
  updated.state = expired ? BatchState::kExpired : BatchState::kCancelled;
  if (expired) {
    updated.expired_at = now_ms / 1000;
  } else {
    updated.cancelled_at = now_ms / 1000;
  }
  ASSIGN_OR_RETURN(bool won, store_->transition_batch(batch.id, BatchState::kCancelling, updated));
  if (won) (expired ? expired_ : cancelled_).fetch_add(1);
  return won;
}

FinaliserStats BatchFinaliser::stats() const {
  FinaliserStats s;
  s.batches_completed = completed_;
  s.batches_cancelled = cancelled_;
  s.batches_expired = expired_;
  s.records_purged = purged_;
  return s;
}

}  // namespace bw::jobs
