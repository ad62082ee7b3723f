// EngineClient: the only door into the engine (ARCHITECTURE.md). Submit a generation
// request, receive its events, cancel it, read stats. The server, the response cache and
// the job queue use this interface and are tested against fakes of it.
//
// Events are delivered through an EventSink called on the engine's step-loop thread: a
// sink must be quick and must not block or call back into the engine synchronously
// (hand the event to your own queue or executor; EventQueue below is one). Every accepted
// request receives exactly one event with `done` set, last.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "runner/sampler.h"
#include "sched/request.h"
#include "sched/sampling_params.h"

namespace bw {

struct GenerationRequest {
  std::vector<int32_t> prompt_ids;
  SamplingParams sampling;
  StoppingCriteria stop;                            // max_tokens, stop_token_ids, ignore_eos
  std::vector<std::string> stop_strings;            // end a choice; never part of its text
  int32_t n = 1;                                    // completions sharing the prompt
  int32_t priority = 0;                             // lower runs first
  std::optional<SteadyClock::time_point> deadline;  // then finish_reason "timeout"
  bool detokenize = true;                           // text deltas in events (needs the engine's tokenizer)
  std::string cache_salt;                           // separates prefix caches (adapter, tenant)
};

struct SampledLogprobs {
  int32_t token_id = 0;
  float logprob = 0.0f;
  std::vector<TokenLogprob> top;
};

struct Usage {
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;  // all choices
  int32_t cached_tokens = 0;      // prompt tokens served from the prefix cache
};

struct RequestTimings {
  double queued_seconds = 0.0;       // submit -> first scheduled
  double first_token_seconds = 0.0;  // submit -> first token
  double total_seconds = 0.0;        // submit -> done
};

struct EngineEvent {
  RequestId request_id = 0;                   // as returned by submit
  int32_t index = 0;                          // the choice (0 .. n-1)
  std::vector<int32_t> token_ids;             // tokens generated since this choice's last event
  std::vector<SampledLogprobs> logprobs;      // one per token when sampling.logprobs >= 0
  std::string text;                           // text completed by them (UTF-8 whole characters)
  std::optional<FinishReason> finish_reason;  // this choice ended
  std::string stop_string;                    // the stop string that ended it, if one did
  bool done = false;                          // the request's last event: every choice ended
  Usage usage;                                // with done
  RequestTimings timings;                     // with done
  Status error;                               // with done, when the request failed
};

using EventSink = std::function<void(EngineEvent event)>;

// A snapshot of the engine's counters (cumulative since start unless noted).
struct EngineStats {
  int32_t num_running = 0;           // sequences, now
  int32_t num_waiting = 0;           // sequences, now (includes preempted)
  int32_t num_pending_requests = 0;  // accepted requests not yet done, now
  int32_t kv_num_blocks = 0;
  int32_t kv_used_blocks = 0;    // now
  int32_t kv_free_blocks = 0;    // now
  int32_t kv_cached_blocks = 0;  // now
  int32_t kv_block_size = 0;
  int64_t prefix_queried_tokens = 0;
  int64_t prefix_hit_tokens = 0;
  int64_t num_preemptions = 0;
  int64_t prompt_tokens = 0;    // prompt tokens of accepted requests
  int64_t computed_tokens = 0;  // tokens run through the model (prefill + decode + recompute)
  int64_t generated_tokens = 0;
  int64_t num_steps = 0;
  int64_t num_overlapped_steps = 0;  // steps launched while the one before was still running
  int64_t requests_finished = 0;
  int64_t requests_failed = 0;
  std::vector<int64_t> finished_by_reason = std::vector<int64_t>(5, 0);  // indexed by FinishReason
  // Steps by number of sequences in the batch: bucket i counts sizes in (2^(i-1), 2^i].
  std::vector<int64_t> batch_size_histogram = std::vector<int64_t>(10, 0);
  double busy_seconds = 0.0;                  // time spent in steps
  double generation_tokens_per_second = 0.0;  // generated_tokens / busy_seconds

  double kv_usage() const { return kv_num_blocks == 0 ? 0.0 : static_cast<double>(kv_used_blocks) / kv_num_blocks; }
};

struct ModelInfo {
  std::string name;
  int64_t vocab_size = 0;
  int32_t max_model_len = 0;
  std::vector<int32_t> eos_token_ids;
};

class EngineClient {
 public:
  virtual ~EngineClient() = default;

  // Validates and queues the request; its events go to `sink`. InvalidArgument for a bad
  // request (message names the field), ResourceExhausted when the queue is full,
  // Unavailable while shutting down. On error the sink is never called.
  virtual Result<RequestId> submit(GenerationRequest request, EventSink sink) = 0;
  // Ends the request (finish_reason abort) and frees its blocks within one step. Unknown
  // or finished ids are ignored.
  virtual void cancel(RequestId request_id) = 0;
  virtual EngineStats stats() const = 0;
  virtual const ModelInfo& model_info() const = 0;
};

// A thread-safe queue of events: pass sink() to submit, then pop() from any thread.
class EventQueue {
 public:
  EventSink sink() {
    return [this](EngineEvent event) {
      std::lock_guard lock(mutex_);
      events_.push_back(std::move(event));
      cv_.notify_all();
    };
  }
  // Waits for the next event; nullopt after `timeout`.
  std::optional<EngineEvent> pop(std::chrono::milliseconds timeout = std::chrono::minutes(10)) {
    std::unique_lock lock(mutex_);
    if (!cv_.wait_for(lock, timeout, [this] { return !events_.empty(); })) return std::nullopt;
    EngineEvent event = std::move(events_.front());
    events_.pop_front();
    return event;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<EngineEvent> events_;
};

// The whole result of one request, gathered from its events.
struct Completion {
  struct Choice {
    std::vector<int32_t> token_ids;
    std::vector<SampledLogprobs> logprobs;
    std::string text;
    FinishReason finish_reason = FinishReason::kError;
    std::string stop_string;
  };
  RequestId request_id = 0;
  std::vector<Choice> choices;
  Usage usage;
  RequestTimings timings;
};

// Submits and waits for the request's last event. The status of a failed submit or of a
// request that ended with an error.
Result<Completion> generate_blocking(EngineClient& engine, GenerationRequest request);

// Folds one event into a completion (for callers that also stream).
void accumulate_event(const EngineEvent& event, Completion* completion);

}  // namespace bw
