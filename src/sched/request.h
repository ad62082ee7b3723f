// Request: one sequence as the scheduler sees it — its tokens, how many of them have KV
// in the cache, its limits and its place in the queue. Plain data; no tensors.
//
// A user's request with n > 1 completions becomes n sequences (one Request each, sharing
// the prompt's KV blocks); the engine groups them back. The scheduler owns every Request
// it holds; the engine reads them only on the step-loop thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kv/kv_cache_manager.h"
#include "sched/sampling_params.h"

namespace bw {

using SteadyClock = std::chrono::steady_clock;

enum class RequestStatus {
  kWaiting,    // queued, never scheduled
  kRunning,    // has KV blocks, scheduled each step
  kPreempted,  // lost its blocks under memory pressure; queued to be recomputed
  kFinished,
};

enum class FinishReason {
  kStop,     // a stop token (EOS or stop_token_ids) or a stop string
  kLength,   // max_tokens or the model's context length
  kAbort,    // cancelled by the client
  kTimeout,  // the request's deadline passed
  kError,
};
std::string_view finish_reason_name(FinishReason reason);  // "stop", "length", "abort", "timeout", "error"

struct StoppingCriteria {
  int32_t max_tokens = 16;              // generated tokens; clipped to the context length
  std::vector<int32_t> stop_token_ids;  // in addition to the model's end-of-generation ids
  bool ignore_eos = false;
};

struct Request {
  RequestId request_id = 0;
  std::vector<int32_t> token_ids;  // prompt followed by the generated tokens
  int32_t num_prompt_tokens = 0;
  int32_t num_computed_tokens = 0;  // leading tokens whose KV is in the cache
  int32_t num_cached_tokens = -1;   // prompt tokens found in the prefix cache (first schedule); -1 before
  int32_t priority = 0;             // lower runs first (as vLLM); FCFS within a priority
  uint64_t arrival_seq = 0;         // admission order, set by the scheduler
  std::optional<SteadyClock::time_point> deadline;
  StoppingCriteria stop;
  SamplingParams sampling;
  std::string cache_salt;  // separates prefix caches (LoRA adapter, tenant); "" by default
  RequestStatus status = RequestStatus::kWaiting;
  std::optional<FinishReason> finish_reason;
  int32_t num_preemptions = 0;
  // n > 1: the sequences of one user request share a group id (the first sequence's id)
  // and carry their choice index.
  RequestId group_id = 0;
  int32_t choice_index = 0;
  // Sequences still to be forked from this one once its prompt is computed (n - 1 for the
  // first sequence of an n > 1 request, 0 otherwise).
  int32_t num_pending_forks = 0;

  int32_t num_tokens() const { return static_cast<int32_t>(token_ids.size()); }
  int32_t num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  std::span<const int32_t> prompt_ids() const {
    return std::span<const int32_t>(token_ids).first(static_cast<size_t>(num_prompt_tokens));
  }
  std::span<const int32_t> output_ids() const {
    return std::span<const int32_t>(token_ids).subspan(static_cast<size_t>(num_prompt_tokens));
  }
  bool is_finished() const { return status == RequestStatus::kFinished; }

  RequestTokens kv_view() const { return RequestTokens{request_id, token_ids, num_computed_tokens, cache_salt}; }
};

}  // namespace bw
