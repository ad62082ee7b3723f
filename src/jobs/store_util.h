// Small rules shared by the two JobStore implementations (SQLite and Redis), so both
// give the same answers. Pure functions; thread-safe.
#pragma once

#include <algorithm>
#include <cstdint>

#include "jobs/job_store.h"

namespace bw::jobs {

inline bool is_terminal(JobState state) {
  return state == JobState::kSucceeded || state == JobState::kFailed || state == JobState::kCancelled;
}

inline bool is_terminal(BatchState state) {
  return state == BatchState::kCompleted || state == BatchState::kFailed || state == BatchState::kExpired ||
         state == BatchState::kCancelled;
}

// When a terminal batch finished, in ms (what purge_finished compares): the latest of its
// terminal timestamps (expired_at, else expires_at, for an expired batch), else its
// creation time.
inline int64_t batch_finished_ms(const BatchRecord& batch) {
  int64_t seconds = std::max({batch.completed_at, batch.failed_at, batch.cancelled_at, batch.expired_at});
  if (batch.state == BatchState::kExpired && batch.expired_at == 0) seconds = std::max(seconds, batch.expires_at);
  if (seconds == 0) seconds = batch.created_at;
  return seconds * 1000;
}

// The reasons the stores write themselves.
inline constexpr const char* kCancelledReason = "cancelled";

}  // namespace bw::jobs
