#include "jobs/job_store.h"

#include <array>
#include <chrono>
#include <utility>

namespace bw::jobs {

namespace {

constexpr std::array<std::pair<JobState, std::string_view>, 5> kJobStateNames = {{
    {JobState::kQueued, "queued"},
    {JobState::kRunning, "running"},
    {JobState::kSucceeded, "succeeded"},
    {JobState::kFailed, "failed"},
    {JobState::kCancelled, "cancelled"},
}};

constexpr std::array<std::pair<BatchState, std::string_view>, 8> kBatchStateNames = {{
    {BatchState::kValidating, "validating"},
    {BatchState::kInProgress, "in_progress"},
    {BatchState::kFinalizing, "finalizing"},
    {BatchState::kCompleted, "completed"},
    {BatchState::kFailed, "failed"},
    {BatchState::kExpired, "expired"},
    {BatchState::kCancelling, "cancelling"},
    {BatchState::kCancelled, "cancelled"},
}};

}  // namespace

int64_t wall_clock_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string_view job_state_name(JobState state) {
  for (const auto& [value, name] : kJobStateNames) {
    if (value == state) return name;
  }
  return "unknown";
}

Result<JobState> parse_job_state(std::string_view name) {
  for (const auto& [value, state_name] : kJobStateNames) {
    if (state_name == name) return value;
  }
  return InvalidArgument("unknown job state '{}' (expected queued, running, succeeded, failed or cancelled)", name);
}

std::string_view batch_state_name(BatchState state) {
  for (const auto& [value, name] : kBatchStateNames) {
    if (value == state) return name;
  }
  return "unknown";
}

Result<BatchState> parse_batch_state(std::string_view name) {
  for (const auto& [value, state_name] : kBatchStateNames) {
    if (state_name == name) return value;
  }
  return InvalidArgument(
      "unknown batch state '{}' (expected validating, in_progress, finalizing, completed, failed, expired, "
      "cancelling or cancelled)",
      name);
}

}  // namespace bw::jobs
