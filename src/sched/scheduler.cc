#include "sched/scheduler.h"

#include <algorithm>
#include <cassert>

namespace bw {

std::string_view finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
    case FinishReason::kTimeout:
      return "timeout";
    case FinishReason::kError:
      return "error";
  }
  return "error";
}

Status SchedulerConfig::validate() const {
  if (max_num_seqs < 1) return InvalidArgument("max_num_seqs must be at least 1, got {}", max_num_seqs);
  if (max_num_batched_tokens < 1)
    return InvalidArgument("max_num_batched_tokens must be at least 1, got {}", max_num_batched_tokens);
  if (max_model_len < 2) return InvalidArgument("max_model_len must be at least 2, got {}", max_model_len);
  if (!enable_chunked_prefill && max_num_batched_tokens < max_model_len) {
    return InvalidArgument(
        "without chunked prefill, max_num_batched_tokens ({}) must be at least max_model_len ({}) so every prompt "
        "fits one step",
        max_num_batched_tokens, max_model_len);
  }
  return OkStatus();
}

Scheduler::Scheduler(const SchedulerConfig& config, const KvCacheConfig& kv_config, std::vector<int32_t> eos_token_ids)
    : config_(config), kv_config_(kv_config), kv_(kv_config), eos_token_ids_(std::move(eos_token_ids)) {}

Status Scheduler::check_admissible(const Request& request, const SchedulerConfig& config,
                                   const KvCacheConfig& kv_config) {
  const int64_t prompt = request.num_prompt_tokens;
  if (prompt <= 0 || request.num_tokens() != prompt) return InvalidArgument("the prompt is empty");
  if (prompt >= config.max_model_len) {
    return InvalidArgument(
        "the prompt has {} tokens, which leaves no room to generate within the context length of {} tokens", prompt,
        config.max_model_len);
  }
  if (request.stop.max_tokens < 0) return InvalidArgument("max_tokens must be >= 0, got {}", request.stop.max_tokens);
  // The last generated token is never fed back, so it needs no KV slot.
  const int64_t max_len = std::min<int64_t>(prompt + request.stop.max_tokens, config.max_model_len);
  const int64_t slots = std::max<int64_t>(max_len - 1, prompt);
  const int64_t needed = (slots + kv_config.block_size - 1) / kv_config.block_size;
  if (needed > kv_config.num_blocks) {
    return InvalidArgument(
        "the request needs up to {} tokens of KV cache ({} blocks) but the whole cache holds {} blocks; lower "
        "max_tokens or give the KV cache more memory",
        max_len, needed, kv_config.num_blocks);
  }
  return OkStatus();
}

void Scheduler::add_request(Request request) {
  assert(check_admissible(request).ok());
  assert(requests_.count(request.request_id) == 0);
  request.status = RequestStatus::kWaiting;
  request.arrival_seq = next_arrival_seq_++;
  request.num_computed_tokens = 0;
  request.num_cached_tokens = -1;
  if (request.group_id == 0) request.group_id = request.request_id;
  const RequestId id = request.request_id;
  waiting_.insert(waiting_key(request));
  requests_.emplace(id, std::move(request));
}

const Request* Scheduler::find(RequestId request_id) const {
  auto it = requests_.find(request_id);
  return it == requests_.end() ? nullptr : &it->second;
}

std::vector<RequestId> Scheduler::unfinished_request_ids() const {
  std::vector<RequestId> ids;
  ids.reserve(requests_.size());
  for (const auto& [id, request] : requests_)
    ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  s.num_running = num_running();
  s.num_waiting = num_waiting();
  s.num_preemptions = num_preemptions_;
  s.kv = kv_.stats();
  return s;
}

void Scheduler::preempt(Request& request) {
  kv_.free(request.request_id);
  request.num_computed_tokens = 0;
  request.status = RequestStatus::kPreempted;
  ++request.num_preemptions;
  ++num_preemptions_;
  waiting_.insert(waiting_key(request));
}

void Scheduler::emit(Request& request, int32_t num_new_tokens, SchedulerOutput* output) {
  ScheduledSequence seq;
  seq.request_id = request.request_id;
  seq.start_pos = request.num_computed_tokens;
  seq.token_ids.assign(request.token_ids.begin() + request.num_computed_tokens,
                       request.token_ids.begin() + request.num_computed_tokens + num_new_tokens);
  const std::span<const int32_t> table = kv_.block_table(request.request_id);
  seq.block_table.assign(table.begin(), table.end());
  seq.sample = request.num_computed_tokens + num_new_tokens == request.num_tokens();
  output->num_tokens += num_new_tokens;
  output->sequences.push_back(std::move(seq));
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput output;
  output.block_copies = std::move(pending_copies_);
  pending_copies_.clear();
  int32_t budget = config_.max_num_batched_tokens;

  // 1. Running sequences: decode tokens and the next chunks of prompts being prefilled.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Request& request = requests_.at(running_[i]);
    const int32_t num_new = std::min(request.num_tokens() - request.num_computed_tokens, budget);
    assert(num_new > 0);
    bool scheduled = false;
    for (;;) {
      if (kv_.allocate_slots(request.kv_view(), num_new).has_value()) {
        scheduled = true;
        break;
      }
      // Out of blocks: the newest running sequence gives its blocks back.
      Request& victim = requests_.at(running_.back());
      running_.pop_back();
      preempt(victim);
      output.preempted_ids.push_back(victim.request_id);
      if (&victim == &request) break;
    }
    if (!scheduled) break;
    emit(request, num_new, &output);
    budget -= num_new;
    ++i;
  }

  // 2. Waiting sequences. None are admitted in a step that had to preempt: memory is short,
  // and the preempted ones come first anyway.
  if (output.preempted_ids.empty()) admit_waiting(budget, &output);
  return output;
}

void Scheduler::admit_waiting(int32_t budget, SchedulerOutput* output, bool ahead) {
  // By priority then arrival, while the step has tokens and the batch has seats.
  while (!waiting_.empty() && budget > 0 && static_cast<int32_t>(running_.size()) < config_.max_num_seqs) {
    const RequestId id = std::get<2>(*waiting_.begin());
    Request& request = requests_.at(id);
    if (ahead && ahead_filter_ && !ahead_filter_(request)) break;
    const ComputedPrefix prefix = kv_.find_cached_prefix(request.kv_view());
    const int32_t num_remaining = request.num_tokens() - prefix.num_tokens;
    if (!config_.enable_chunked_prefill && num_remaining > budget) break;
    const int32_t num_new = std::min(num_remaining, budget);
    if (!kv_.allocate_slots(request.kv_view(), num_new, &prefix).has_value()) break;
    request.num_computed_tokens = prefix.num_tokens;
    if (request.num_cached_tokens < 0) request.num_cached_tokens = prefix.num_tokens;
    request.status = RequestStatus::kRunning;
    waiting_.erase(waiting_.begin());
    running_.push_back(id);
    emit(request, num_new, output);
    budget -= num_new;
  }
}

std::optional<FinishReason> Scheduler::check_stop(const Request& request) const {
  const int32_t last = request.token_ids.back();
  const auto& stops = request.stop.stop_token_ids;
  if (std::find(stops.begin(), stops.end(), last) != stops.end()) return FinishReason::kStop;
  if (!request.stop.ignore_eos && std::find(eos_token_ids_.begin(), eos_token_ids_.end(), last) != eos_token_ids_.end())
    return FinishReason::kStop;
  if (ends_by_length(request)) return FinishReason::kLength;
  return std::nullopt;
}

bool Scheduler::ends_by_length(const Request& request) const {
  return request.num_output_tokens() >= request.stop.max_tokens || request.num_tokens() >= config_.max_model_len;
}

void Scheduler::append_token(Request& request, int32_t token_id, std::vector<SequenceOutput>* outputs) {
  request.token_ids.push_back(token_id);
  record_token(request, outputs);
}

void Scheduler::record_token(Request& request, std::vector<SequenceOutput>* outputs) {
  const int32_t token_id = request.token_ids.back();
  SequenceOutput out;
  out.request_id = request.request_id;
  out.group_id = request.group_id;
  out.choice_index = request.choice_index;
  out.token_id = token_id;
  out.finish_reason = check_stop(request);
  outputs->push_back(out);
  if (out.finish_reason) remove(request.request_id);
}

void Scheduler::fork_choices(Request& parent, std::span<const int32_t> child_tokens,
                             std::vector<SequenceOutput>* outputs) {
  const int32_t num_children = parent.num_pending_forks;
  parent.num_pending_forks = 0;
  for (int32_t c = 0; c < num_children; ++c) {
    Request child = parent;
    child.request_id = parent.request_id + 1 + c;
    child.choice_index = parent.choice_index + 1 + c;
    child.num_preemptions = 0;
    child.token_ids.resize(static_cast<size_t>(parent.num_computed_tokens));
    assert(child.num_computed_tokens == child.num_tokens());
    std::optional<std::vector<BlockCopy>> copies = kv_.fork(parent.request_id, child.request_id);
    const RequestId child_id = child.request_id;
    if (copies.has_value()) {
      pending_copies_.insert(pending_copies_.end(), copies->begin(), copies->end());
      child.status = RequestStatus::kRunning;
      running_.push_back(child_id);
    } else {
      // No block for the partial tail: the choice is recomputed later, like a preempted one.
      child.num_computed_tokens = 0;
      child.status = RequestStatus::kPreempted;
      waiting_.insert(waiting_key(child));
    }
    Request& stored = requests_.emplace(child_id, std::move(child)).first->second;
    append_token(stored, child_tokens[static_cast<size_t>(c)], outputs);
  }
}

std::vector<SequenceOutput> Scheduler::update(const SchedulerOutput& output, std::span<const SampledTokens> sampled) {
  for (const ScheduledSequence& seq : output.sequences) {
    auto it = requests_.find(seq.request_id);
    if (it == requests_.end()) continue;
    Request& request = it->second;
    request.num_computed_tokens += static_cast<int32_t>(seq.token_ids.size());
    kv_.commit_computed(request.kv_view());
  }
  return take_tokens(sampled, /*placeholders=*/false);
}

std::vector<SequenceOutput> Scheduler::take_tokens(std::span<const SampledTokens> sampled, bool placeholders) {
  std::vector<SequenceOutput> outputs;
  outputs.reserve(sampled.size());
  for (const SampledTokens& s : sampled) {
    auto it = requests_.find(s.request_id);
    if (it == requests_.end() || s.token_ids.empty()) continue;
    Request& request = it->second;
    if (placeholders) {
      if (request.token_ids.back() != kPendingToken) continue;  // not advanced by schedule_ahead
      request.token_ids.back() = s.token_ids.front();
      record_token(request, &outputs);
      continue;
    }
    if (request.num_pending_forks > 0) {
      assert(static_cast<int32_t>(s.token_ids.size()) == request.num_pending_forks + 1);
      fork_choices(request, std::span<const int32_t>(s.token_ids).subspan(1), &outputs);
    }
    append_token(request, s.token_ids.front(), &outputs);
  }
  return outputs;
}

bool Scheduler::can_schedule_ahead(const SchedulerOutput& in_flight) const {
  if (in_flight.empty() || !pending_copies_.empty()) return false;
  // The next request to admit may not be scheduled ahead: schedule() admits it.
  if (!waiting_.empty() && static_cast<int32_t>(running_.size()) < config_.max_num_seqs && ahead_filter_ &&
      !ahead_filter_(requests_.at(std::get<2>(*waiting_.begin())))) {
    return false;
  }
  size_t num_running = 0;
  for (const ScheduledSequence& seq : in_flight.sequences) {
    const Request* request = find(seq.request_id);
    if (request == nullptr) continue;  // finished since
    const int32_t end = seq.start_pos + static_cast<int32_t>(seq.token_ids.size());
    // As schedule() left it: computed up to the step, and a step that samples ends at the
    // request's last token (a prompt chunk before it).
    if (request->status != RequestStatus::kRunning || request->num_pending_forks > 0 ||
        (ahead_filter_ && !ahead_filter_(*request)) || request->num_computed_tokens != seq.start_pos ||
        request->token_ids.back() == kPendingToken ||
        (seq.sample ? end != request->num_tokens() : end >= request->num_tokens())) {
      return false;
    }
    ++num_running;
  }
  // Every running sequence is in the step: none waits for tokens of the budget or for
  // memory (schedule() then decides, and may preempt).
  return num_running == running_.size();
}

SchedulerOutput Scheduler::schedule_ahead(const SchedulerOutput& in_flight) {
  assert(can_schedule_ahead(in_flight));
  for (const ScheduledSequence& seq : in_flight.sequences) {
    auto it = requests_.find(seq.request_id);
    if (it == requests_.end()) continue;
    Request& request = it->second;
    // What update() does with the step's computed tokens, then a placeholder for its sample.
    request.num_computed_tokens += static_cast<int32_t>(seq.token_ids.size());
    kv_.commit_computed(request.kv_view());
    if (seq.sample) request.token_ids.push_back(kPendingToken);
  }
  // schedule() without preemption: running sequences in order, then waiting ones.
  SchedulerOutput output;
  int32_t budget = config_.max_num_batched_tokens;
  bool short_of_blocks = false;
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Request& request = requests_.at(running_[i]);
    const bool pending = request.token_ids.back() == kPendingToken;
    if (pending && ends_by_length(request)) continue;  // whatever it samples: nothing to compute next
    const int32_t num_new = std::min(request.num_tokens() - request.num_computed_tokens, budget);
    if (!kv_.allocate_slots(request.kv_view(), num_new).has_value()) {
      short_of_blocks = true;  // schedule() will preempt
      continue;
    }
    emit(request, num_new, &output);
    budget -= num_new;
  }
  if (!short_of_blocks) admit_waiting(budget, &output, /*ahead=*/true);
  return output;
}

std::vector<SequenceOutput> Scheduler::resolve(std::span<const SampledTokens> sampled) {
  return take_tokens(sampled, /*placeholders=*/true);
}

bool Scheduler::finish_request(RequestId request_id, FinishReason reason) {
  auto it = requests_.find(request_id);
  if (it == requests_.end()) return false;
  it->second.finish_reason = reason;
  remove(request_id);
  return true;
}

void Scheduler::remove(RequestId request_id) {
  auto it = requests_.find(request_id);
  if (it == requests_.end()) return;
  Request& request = it->second;
  if (request.status == RequestStatus::kRunning) {
    running_.erase(std::find(running_.begin(), running_.end(), request_id));
  } else {
    waiting_.erase(waiting_key(request));
  }
  kv_.free(request_id);
  requests_.erase(it);
}

}  // namespace bw
