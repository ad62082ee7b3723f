// Scheduler: iteration-level (continuous) batching over a paged KV cache, in the manner
// of vLLM v1. Each step it picks, under a token budget and a sequence cap:
//   1. running sequences, in admission order: one token each when decoding, or the next
//      chunk of a prompt being prefilled; when KV blocks run out, the newest running
//      sequence is preempted (blocks freed, recomputed later) until the current one fits;
//   2. then, if nothing was preempted this step, waiting sequences by (priority, arrival):
//      leading blocks found in the prefix cache count as computed; the rest of the prompt
//      is prefilled in chunks that fit the remaining budget (chunked prefill).
// After the runner computed the step and the engine sampled, update() advances each
// sequence, caches its newly full blocks, appends the sampled tokens, forks the extra
// completions of n > 1 requests from their computed prompt, and ends sequences at a stop
// token, max_tokens or the context length.
//
// The scheduler owns every unfinished Request and the KvCacheManager; it knows nothing of
// tensors, the model or text. A finished request is removed at once (its cached blocks
// stay reusable). Not thread-safe: owned by the engine's step-loop thread.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <span>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "kv/kv_cache_manager.h"
#include "sched/request.h"

namespace bw {

struct SchedulerConfig {
  int32_t max_num_seqs = 256;             // running sequences at once
  int32_t max_num_batched_tokens = 2048;  // tokens per step (decode + prefill)
  int32_t max_model_len = 4096;           // context length: prompt + generated tokens
  bool enable_chunked_prefill = true;     // else a prompt is prefilled whole or waits

  Status validate() const;
};

// One sequence's part of a step: compute token_ids at positions start_pos... and, when
// `sample` is set, produce logits for the last of them.
struct ScheduledSequence {
  RequestId request_id = 0;
  int32_t start_pos = 0;             // tokens of the sequence already in the cache
  std::vector<int32_t> token_ids;    // the tokens computed this step
  std::vector<int32_t> block_table;  // the sequence's blocks, covering start_pos + token_ids.size()
  bool sample = false;               // this step reaches the sequence's last known token
};

struct SchedulerOutput {
  std::vector<ScheduledSequence> sequences;  // running ones first, then newly admitted
  int32_t num_tokens = 0;
  std::vector<BlockCopy> block_copies;  // apply to the KV tensors before this step's forward
  std::vector<RequestId> preempted_ids;

  bool empty() const { return sequences.empty(); }
};

// The tokens the engine sampled for one sequence with `sample` set: one token, or, for
// the first sequence of an n > 1 request on the step its prompt completes, one token per
// choice (this sequence's first, then choices 1..n-1 in order).
struct SampledTokens {
  RequestId request_id = 0;
  std::vector<int32_t> token_ids;
};

// What one sequence produced in a step (one per sampled token).
struct SequenceOutput {
  RequestId request_id = 0;
  RequestId group_id = 0;
  int32_t choice_index = 0;
  int32_t token_id = 0;
  std::optional<FinishReason> finish_reason;
};

struct SchedulerStats {
  int32_t num_running = 0;
  int32_t num_waiting = 0;  // includes preempted sequences waiting to be recomputed
  int64_t num_preemptions = 0;
  KvCacheStats kv;
};

class Scheduler {
 public:
  // Both configs must pass validate(). `eos_token_ids`: the model's end-of-generation ids.
  Scheduler(const SchedulerConfig& config, const KvCacheConfig& kv_config, std::vector<int32_t> eos_token_ids);

  const SchedulerConfig& config() const { return config_; }

  // InvalidArgument when the request can never run: an empty prompt, a prompt that leaves
  // no room to generate within max_model_len, or more KV blocks than the whole pool
  // holds for prompt + max_tokens (max_tokens is first clipped to the context). Static so
  // other threads can check a request before handing it to the step loop.
  static Status check_admissible(const Request& request, const SchedulerConfig& config, const KvCacheConfig& kv_config);
  Status check_admissible(const Request& request) const { return check_admissible(request, config_, kv_config_); }

  // Queues a request (after check_admissible). The scheduler assigns its arrival order.
  // A request with n > 1 choices sets num_pending_forks = n - 1; its choices get the
  // consecutive ids request_id + 1 ... request_id + n - 1, which must be unused.
  void add_request(Request request);

  SchedulerOutput schedule();

  // After the step ran: every scheduled sequence's tokens are computed; `sampled` holds
  // the tokens for the sequences with `sample` set (any order). Returns one output per
  // sampled token; sequences that finished are removed and their blocks freed.
  std::vector<SequenceOutput> update(const SchedulerOutput& output, std::span<const SampledTokens> sampled);

  // Overlapped steps (the engine's async scheduling): the next step is scheduled while
  // `in_flight` still runs and before the tokens it samples are known, so the host's work
  // between steps overlaps the device's.
  //
  // can_schedule_ahead: whether in_flight is as schedule() left it (each sequence still
  // running, or finished since, computed up to the step; no forks pending) and holds every
  // running sequence (none is waiting for budget or memory, where schedule() must decide).
  bool can_schedule_ahead(const SchedulerOutput& in_flight) const;
  // Which requests may be scheduled ahead at all (default: all): the engine's overlapped
  // steps sample on the device, so it keeps out requests that need the host sampler. A
  // step with one that fails it is not scheduled ahead, and admission ahead stops at the
  // first waiting one that fails it.
  void set_schedule_ahead_filter(std::function<bool(const Request&)> filter) { ahead_filter_ = std::move(filter); }
  // Advances in_flight's sequences as update() would, each sampling one with kPendingToken
  // in place of the token still being sampled, and schedules the next step as schedule()
  // would but without preempting: the running sequences (each kPendingToken is the last
  // token of its sequence; one that ends by length whatever it samples is left out, as is
  // one short of KV blocks), then, when no sequence was short of blocks, waiting requests.
  // Only after can_schedule_ahead; in_flight's tokens must then be given to resolve(), not
  // update().
  SchedulerOutput schedule_ahead(const SchedulerOutput& in_flight);
  // update() for a step that schedule_ahead() advanced: the sampled tokens replace the
  // placeholders and sequences that stop end here (the step scheduled ahead computed
  // one token too many for them; its tokens for ended sequences are ignored).
  std::vector<SequenceOutput> resolve(std::span<const SampledTokens> sampled);
  static constexpr int32_t kPendingToken = -1;

  // Ends a queued or running sequence from outside (cancel, deadline, stop string): its
  // blocks are freed. False for an unknown (e.g. already finished) id.
  bool finish_request(RequestId request_id, FinishReason reason);

  // Unfinished requests; nullptr when unknown or finished.
  const Request* find(RequestId request_id) const;
  bool has_unfinished_requests() const { return !requests_.empty(); }
  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  std::vector<RequestId> unfinished_request_ids() const;
  SchedulerStats stats() const;
  const KvCacheManager& kv_cache() const { return kv_; }

 private:
  using WaitingKey = std::tuple<int32_t, uint64_t, RequestId>;  // priority, arrival, id
  static WaitingKey waiting_key(const Request& r) { return {r.priority, r.arrival_seq, r.request_id}; }

  void preempt(Request& request);
  // Schedules up to `budget` tokens of the request (KV blocks already allocated).
  void emit(Request& request, int32_t num_new_tokens, SchedulerOutput* output);
  // Admits waiting requests (by priority, then arrival) into `output` within `budget`
  // tokens and max_num_seqs; with `ahead`, not past one that ahead_filter_ refuses.
  void admit_waiting(int32_t budget, SchedulerOutput* output, bool ahead = false);
  void fork_choices(Request& parent, std::span<const int32_t> child_tokens, std::vector<SequenceOutput>* outputs);
  // Appends a sampled token, decides whether the sequence ends; records the output.
  void append_token(Request& request, int32_t token_id, std::vector<SequenceOutput>* outputs);
  // The output for the request's last token; ends the request when it stops there.
  void record_token(Request& request, std::vector<SequenceOutput>* outputs);
  std::optional<FinishReason> check_stop(const Request& request) const;
  // max_tokens or the context length reached with the request's last token.
  bool ends_by_length(const Request& request) const;
  // update() and resolve() after the sequences advanced: each sampled token is appended
  // (forking n > 1 requests), or with `placeholders` put in place of kPendingToken.
  std::vector<SequenceOutput> take_tokens(std::span<const SampledTokens> sampled, bool placeholders);
  void remove(RequestId request_id);

  SchedulerConfig config_;
  KvCacheConfig kv_config_;
  KvCacheManager kv_;
  std::vector<int32_t> eos_token_ids_;
  std::unordered_map<RequestId, Request> requests_;
  std::vector<RequestId> running_;  // admission order; the newest is preempted first
  std::set<WaitingKey> waiting_;
  std::vector<BlockCopy> pending_copies_;
  uint64_t next_arrival_seq_ = 0;
  std::function<bool(const Request&)> ahead_filter_;
  int64_t num_preemptions_ = 0;
};

}  // namespace bw
