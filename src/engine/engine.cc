#include "engine/engine.h"

#include <algorithm>
#include <bit>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

namespace bw {

namespace {

double seconds_between(SteadyClock::time_point a, SteadyClock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// MemAvailable from /proc/meminfo, or 0 when unknown.
uint64_t host_available_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string line;
  while (std::getline(meminfo, line)) {
    if (line.rfind("MemAvailable:", 0) == 0) {
      std::istringstream fields(line.substr(13));
      uint64_t kib = 0;
      fields >> kib;
      return kib * 1024;
    }
  }
  return 0;
}

int histogram_bucket(size_t batch_size, size_t num_buckets) {
  const size_t bucket = std::bit_width(batch_size > 0 ? batch_size - 1 : 0);  // 1 -> 0, 2 -> 1, 3..4 -> 2 ...
  return static_cast<int>(std::min(bucket, num_buckets - 1));
}

}  // namespace

struct Engine::SequenceState {
  RequestId request_id = 0;
  RequestId group_id = 0;
  int32_t index = 0;
  Sampler sampler;
  uint64_t seed = 0;  // params.seed, else the one drawn for the request (device sampling)
  std::unique_ptr<StreamingDetokenizer> detokenizer;
  StopStringMatcher stops;
  bool finished = false;

  SequenceState(const SamplingParams& params, uint64_t seed, std::vector<std::string> stop_strings)
      : sampler(params, seed), seed(params.seed.value_or(seed)), stops(std::move(stop_strings)) {}
};

struct Engine::GroupState {
  RequestId request_id = 0;
  EventSink sink;
  int32_t n = 1;
  int32_t num_finished = 0;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  std::optional<SteadyClock::time_point> deadline;
  SteadyClock::time_point submitted;
  std::optional<SteadyClock::time_point> first_scheduled;
  std::optional<SteadyClock::time_point> first_token;
  int32_t cached_tokens = 0;
};

Result<int32_t> resolve_kv_num_blocks(const EngineConfig& config, const ModelConfig& model, int32_t max_model_len,
                                      const DeviceMemory* device, uint64_t reserved_bytes) {
  if (config.kv_num_blocks > 0) return config.kv_num_blocks;
  ASSIGN_OR_RETURN(uint64_t block_bytes, KvCacheStorage::bytes_per_block(model, config.kv_block_size, config.kv_dtype));
  if (config.kv_cache_bytes > 0) {
    const uint64_t blocks = config.kv_cache_bytes / block_bytes;
    if (blocks == 0) {
      return InvalidArgument("kv_cache_bytes {} is smaller than one KV block ({} bytes for {} tokens)",
                             config.kv_cache_bytes, block_bytes, config.kv_block_size);
    }
    return static_cast<int32_t>(std::min<uint64_t>(blocks, INT32_MAX));
  }
  const uint64_t blocks_per_seq =
      (static_cast<uint64_t>(max_model_len) + config.kv_block_size - 1) / static_cast<uint64_t>(config.kv_block_size);
  const uint64_t wanted = blocks_per_seq * static_cast<uint64_t>(config.scheduler.max_num_seqs);
  if (device != nullptr) {
    const double util = config.gpu_memory_utilization;
    if (!(util > 0.0 && util <= 1.0)) return InvalidArgument("gpu_memory_utilization must be in (0, 1], got {}", util);
    const double gib = static_cast<double>(uint64_t{1} << 30);
    const uint64_t in_use = device->total_bytes - std::min(device->free_bytes, device->total_bytes);
    const double limit = util * static_cast<double>(device->total_bytes);
    const double budget = limit - static_cast<double>(in_use) - static_cast<double>(reserved_bytes);
    const double needed = static_cast<double>(blocks_per_seq * block_bytes);
    if (budget < needed) {
      return ResourceExhausted(
          "not enough GPU memory for the KV cache: one {}-token sequence needs {:.2f} GiB, but {:.2f} GiB is left of "
          "{:.0f}% of {:.1f} GiB ({:.2f} GiB in use by the weights and workspace, {:.2f} GiB kept for buffers); raise "
          "--gpu-memory-utilization, lower --max-model-len, or use a smaller --kv-dtype",
          max_model_len, needed / gib, std::max(budget, 0.0) / gib, util * 100.0,
          static_cast<double>(device->total_bytes) / gib, static_cast<double>(in_use) / gib,
          static_cast<double>(reserved_bytes) / gib);
    }
    return static_cast<int32_t>(std::min<uint64_t>(static_cast<uint64_t>(budget) / block_bytes, INT32_MAX));
  }
  const uint64_t available = host_available_bytes();
  if (!(config.kv_memory_fraction > 0.0 && config.kv_memory_fraction <= 1.0)) {
    return InvalidArgument("kv_memory_fraction must be in (0, 1], got {}", config.kv_memory_fraction);
  }
  const double budget = available > 0 ? static_cast<double>(available) * config.kv_memory_fraction
                                      : static_cast<double>(uint64_t{1} << 30);
  const uint64_t cap = static_cast<uint64_t>(budget) / block_bytes;
  return static_cast<int32_t>(std::clamp<uint64_t>(std::min(wanted, cap), 1, INT32_MAX));
}

namespace {

// One step of each token count whose first step costs more on this backend (none on the
// CPU), before the first request.
Status warm_up(ModelRunner& runner, const Backend& backend, const SchedulerConfig& scheduler, const Logger& log) {
  const std::vector<int64_t> rows = backend.warm_up_rows(scheduler.max_num_batched_tokens);
  if (rows.empty()) return OkStatus();
  const auto start = SteadyClock::now();
  RETURN_IF_ERROR(runner.warm_up(rows, scheduler.max_model_len));
  log->info("warmed up {} step sizes (1-{} tokens) in {:.2f} s", rows.size(), rows.back(),
            seconds_between(start, SteadyClock::now()));
  return OkStatus();
}

// Records the runner's decode graphs before the first request; a failure (e.g. out of
// memory) leaves every step eager, which is slower but serves.
void capture_decode_graphs(ModelRunner& runner, Backend& backend, const Logger& log) {
  const DecodeGraphs* graphs = runner.decode_graphs();
  if (graphs == nullptr) return;
  DeviceMemory before;
  const bool on_device = !backend.is_host_memory() && backend.memory_info(&before.free_bytes, &before.total_bytes).ok();
  const auto start = SteadyClock::now();
  Result<int64_t> recorded = runner.capture_decode_graphs();
  const double seconds = seconds_between(start, SteadyClock::now());
  if (!recorded.ok()) {
    log->warn("decode graphs off (every step runs eagerly): {}", recorded.status().message());
    return;
  }
  DeviceMemory after;
  std::string memory;
  if (on_device && backend.memory_info(&after.free_bytes, &after.total_bytes).ok()) {
    const uint64_t used = before.free_bytes - std::min(after.free_bytes, before.free_bytes);
    memory = fmt::format(", {} MiB of device memory", used >> 20);
  }
  log->info("recorded {} decode graphs (batch sizes 1-{}, block tables of up to {} blocks) in {:.2f} s{}", *recorded,
            graphs->sizes().empty() ? 0 : graphs->sizes().back(), graphs->max_width(), seconds, memory);
}

}  // namespace

Result<std::unique_ptr<Engine>> Engine::create(CausalLM& model, Backend& backend, const Tokenizer* tokenizer,
                                               const EngineConfig& config_in, const Logger& logger) {
  EngineConfig config = config_in;
  const ModelConfig& mc = model.config();
  if (config.scheduler.max_model_len == 0) {
    config.scheduler.max_model_len = static_cast<int32_t>(std::min<int64_t>(mc.max_position_embeddings, INT32_MAX));
  }
  if (config.scheduler.max_model_len > mc.max_position_embeddings) {
    return InvalidArgument("max_model_len {} exceeds the model's context length {}", config.scheduler.max_model_len,
                           mc.max_position_embeddings);
  }
  RETURN_IF_ERROR(config.scheduler.validate());
  // The memory plan: weights are loaded; the activation workspace for the largest step
  // next; the KV pool then takes what the budget leaves.
  RETURN_IF_ERROR(model.reserve(config.scheduler.max_num_batched_tokens, config.scheduler.max_num_seqs));
  const int32_t graph_batch = std::min(config.max_graph_batch, config.scheduler.max_num_seqs);
  DeviceMemory device;
  const bool on_device = !backend.is_host_memory() && backend.memory_info(&device.free_bytes, &device.total_bytes).ok();
  // Allocated after the pool: logits rows of the largest eager step and of the graphs, the
  // recorded graphs themselves (376 MiB for the 231 graphs of a 28-layer model on an H200:
  // ~1.6 MiB each), and room for cuBLAS and sampling buffers.
  const uint64_t logits_bytes = static_cast<uint64_t>(config.scheduler.max_num_seqs + std::max(graph_batch, 0)) *
                                static_cast<uint64_t>(mc.vocab_size) * sizeof(float);
  const auto num_graphs = static_cast<uint64_t>(
      DecodeGraphs::num_shapes(config.kv_block_size, graph_batch, config.scheduler.max_model_len));
  const uint64_t reserved = logits_bytes + num_graphs * (uint64_t{2} << 20) + (uint64_t{512} << 20);
  ASSIGN_OR_RETURN(int32_t num_blocks, resolve_kv_num_blocks(config, mc, config.scheduler.max_model_len,
                                                             on_device ? &device : nullptr, reserved));
  config.kv_num_blocks = num_blocks;
  KvCacheConfig kv{num_blocks, config.kv_block_size, config.enable_prefix_caching};
  RETURN_IF_ERROR(kv.validate());
  ModelRunnerConfig runner_config{num_blocks, config.kv_block_size, config.kv_dtype, graph_batch,
                                  config.scheduler.max_model_len};
  ASSIGN_OR_RETURN(std::unique_ptr<ModelRunner> runner, ModelRunner::create(model, backend, runner_config));
  if (config.warm_up) RETURN_IF_ERROR(warm_up(*runner, backend, config.scheduler, logger));
  if (!config.lazy_graph_capture) capture_decode_graphs(*runner, backend, logger);
  auto engine = std::unique_ptr<Engine>(new Engine(mc, tokenizer, config, logger, std::move(runner)));
  engine->thread_ = std::thread([e = engine.get()] { e->loop(); });
  return engine;
}

Engine::Engine(const ModelConfig& model_config, const Tokenizer* tokenizer, const EngineConfig& config, Logger logger,
               std::unique_ptr<ModelRunner> runner)
    : tokenizer_(tokenizer),
      config_(config),
      kv_config_{config.kv_num_blocks, config.kv_block_size, config.enable_prefix_caching},
      logger_(std::move(logger)),
      runner_(std::move(runner)),
      device_batch_(model_config.vocab_size),
      seed_rng_(config.seed) {
  const ModelConfig& mc = model_config;
  model_info_.name = config.model_name;
  model_info_.vocab_size = mc.vocab_size;
  model_info_.max_model_len = config.scheduler.max_model_len;
  model_info_.eos_token_ids.assign(mc.eos_token_ids.begin(), mc.eos_token_ids.end());
  if (tokenizer_ != nullptr) {
    for (int32_t id : tokenizer_->vocab().eog_ids) {
      if (std::find(model_info_.eos_token_ids.begin(), model_info_.eos_token_ids.end(), id) ==
          model_info_.eos_token_ids.end()) {
        model_info_.eos_token_ids.push_back(id);
      }
    }
  }
  scheduler_ = std::make_unique<Scheduler>(config.scheduler, kv_config_, model_info_.eos_token_ids);
  // Steps scheduled ahead sample on the device: requests that need the host Sampler wait
  // for an ordinary step. (An n > 1 request forks its choices in a step that is not
  // scheduled ahead of: Scheduler::can_schedule_ahead.)
  scheduler_->set_schedule_ahead_filter([](const Request& r) { return device_samplable(r.sampling); });
  counters_.kv_block_size = config.kv_block_size;
  publish_stats();
}

Engine::~Engine() { shutdown(); }

void Engine::shutdown() {
  {
    std::lock_guard lock(inbox_mutex_);
    stopping_ = true;
  }
  inbox_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Result<RequestId> Engine::submit(GenerationRequest request, EventSink sink) {
  const int64_t vocab = model_info_.vocab_size;
  if (request.prompt_ids.empty()) return InvalidArgument("the prompt is empty");
  for (size_t i = 0; i < request.prompt_ids.size(); ++i) {
    const int32_t id = request.prompt_ids[i];
    if (id < 0 || id >= vocab) {
      return InvalidArgument("prompt token {} at index {} is outside the vocabulary [0, {})", id, i, vocab);
    }
  }
  RETURN_IF_ERROR(request.sampling.validate(vocab));
  if (request.n < 1 || request.n > config_.scheduler.max_num_seqs) {
    return InvalidArgument("n must be in [1, {}], got {}", config_.scheduler.max_num_seqs, request.n);
  }
  if (request.stop.max_tokens < 1)
    return InvalidArgument("max_tokens must be at least 1, got {}", request.stop.max_tokens);
  for (int32_t id : request.stop.stop_token_ids) {
    if (id < 0 || id >= vocab) return InvalidArgument("stop token id {} is outside the vocabulary [0, {})", id, vocab);
  }
  if (!request.stop_strings.empty()) {
    if (tokenizer_ == nullptr || !request.detokenize) {
      return InvalidArgument("stop strings need text output: the engine has no tokenizer or detokenize is off");
    }
    for (const std::string& s : request.stop_strings) {
      if (s.empty()) return InvalidArgument("stop strings must not be empty");
    }
  }
  if (request.detokenize && tokenizer_ == nullptr) request.detokenize = false;
  Request probe;
  probe.token_ids = request.prompt_ids;
  probe.num_prompt_tokens = static_cast<int32_t>(request.prompt_ids.size());
  probe.stop = request.stop;
  RETURN_IF_ERROR(Scheduler::check_admissible(probe, config_.scheduler, kv_config_));
  if (!sink) return InvalidArgument("no event sink");

  std::lock_guard lock(inbox_mutex_);
  if (stopping_) return Unavailable("the engine is shutting down");
  if (config_.max_pending_requests > 0 && num_pending_requests_.load() >= config_.max_pending_requests) {
    return ResourceExhausted("the engine's queue is full ({} requests pending)", config_.max_pending_requests);
  }
  ++num_pending_requests_;
  const RequestId id = next_request_id_.fetch_add(request.n);
  inbox_.push_back(Submission{id, std::move(request), std::move(sink), SteadyClock::now()});
  inbox_cv_.notify_all();
  return id;
}

void Engine::cancel(RequestId request_id) {
  {
    std::lock_guard lock(inbox_mutex_);
    cancels_.push_back(request_id);
  }
  inbox_cv_.notify_all();
}

EngineStats Engine::stats() const {
  std::lock_guard lock(stats_mutex_);
  return stats_;
}

void Engine::loop() {
  for (;;) {
    if (!drain_inbox(/*wait_for_work=*/!scheduler_->has_unfinished_requests() && !in_flight_)) break;
    expire_deadlines(SteadyClock::now());
    if (scheduler_->has_unfinished_requests() || in_flight_) {
      step();
      if (config_.debug_step_delay.count() > 0) std::this_thread::sleep_for(config_.debug_step_delay);
    }
    deliver_events();
  }
  // Shutting down: a step still on the device is waited for (its buffers belong to the
  // runner), then everything still pending ends as aborted.
  if (in_flight_) {
    (void)runner_->wait(std::move(in_flight_->pending));
    in_flight_.reset();
  }
  std::vector<Submission> leftover;
  {
    std::lock_guard lock(inbox_mutex_);
    leftover.swap(inbox_);
  }
  for (Submission& s : leftover)
    admit(std::move(s));
  std::vector<RequestId> group_ids;
  for (const auto& [id, group] : groups_)
    group_ids.push_back(id);
  for (RequestId id : group_ids)
    finish_group_sequences(id, FinishReason::kAbort);
  deliver_events();
}

bool Engine::drain_inbox(bool wait_for_work) {
  std::vector<Submission> submissions;
  std::vector<RequestId> cancels;
  {
    std::unique_lock lock(inbox_mutex_);
    if (wait_for_work) {
      inbox_cv_.wait(lock, [this] { return stopping_ || !inbox_.empty() || !cancels_.empty(); });
      if (!stopping_ && !inbox_.empty() && config_.batch_window.count() > 0) {
        // Idle engine, first arrival: let a burst gather into one batch.
        const size_t full = static_cast<size_t>(config_.scheduler.max_num_seqs);
        inbox_cv_.wait_for(lock, config_.batch_window, [&] { return stopping_ || inbox_.size() >= full; });
      }
    }
    if (stopping_) return false;
    submissions.swap(inbox_);
    cancels.swap(cancels_);
  }
  for (Submission& s : submissions)
    admit(std::move(s));
  for (RequestId id : cancels) {
    if (groups_.count(id) != 0) finish_group_sequences(id, FinishReason::kAbort);
  }
  return true;
}

void Engine::admit(Submission submission) {
  GenerationRequest& req = submission.request;
  auto group = std::make_unique<GroupState>();
  group->request_id = submission.request_id;
  group->sink = std::move(submission.sink);
  group->n = req.n;
  group->prompt_tokens = static_cast<int32_t>(req.prompt_ids.size());
  group->deadline = req.deadline;
  group->submitted = submission.submitted;
  for (int32_t c = 0; c < req.n; ++c) {
    SamplingParams params = req.sampling;
    if (params.seed) params.seed = *params.seed + static_cast<uint64_t>(c);  // distinct, reproducible choices
    auto seq = std::make_unique<SequenceState>(params, seed_rng_(), req.stop_strings);
    seq->request_id = submission.request_id + c;
    seq->group_id = submission.request_id;
    seq->index = c;
    if (req.detokenize) {
      seq->detokenizer = std::make_unique<StreamingDetokenizer>(*tokenizer_, /*skip_special=*/true,
                                                                /*continuation=*/true);
    }
    sequences_.emplace(seq->request_id, std::move(seq));
  }
  Request r;
  r.request_id = submission.request_id;
  r.group_id = submission.request_id;
  r.num_prompt_tokens = static_cast<int32_t>(req.prompt_ids.size());
  r.token_ids = std::move(req.prompt_ids);
  r.stop = req.stop;
  r.sampling = req.sampling;
  r.priority = req.priority;
  r.deadline = req.deadline;
  r.cache_salt = std::move(req.cache_salt);
  r.num_pending_forks = req.n - 1;
  counters_.prompt_tokens += r.num_prompt_tokens;
  groups_.emplace(submission.request_id, std::move(group));
  scheduler_->add_request(std::move(r));
}

void Engine::expire_deadlines(SteadyClock::time_point now) {
  std::vector<RequestId> expired;
  for (const auto& [id, group] : groups_) {
    if (group->deadline && *group->deadline <= now) expired.push_back(id);
  }
  for (RequestId id : expired)
    finish_group_sequences(id, FinishReason::kTimeout);
}

void Engine::step() {
  if (in_flight_) return step_overlapped();
  const auto start = SteadyClock::now();
  SchedulerOutput output = scheduler_->schedule();
  if (output.empty()) return;
  note_scheduled(output, start);
  DeviceSamplingBatch device_batch;
  const bool device_sampling = prepare_device_sampling(output);
  if (device_sampling) device_batch = device_batch_.batch();
  if (device_sampling && host_rows_.empty() && config_.async_scheduling && runner_->can_launch(output)) {
    Result<ModelRunner::PendingStep> launched = runner_->launch(output, device_batch, nullptr, choice_sources_);
    if (!launched.ok()) return fail_step(output, launched.status());
    in_flight_ = InFlight{std::move(output), std::move(*launched), start};
    return step_overlapped();
  }
  // (Every row for the host Sampler: the logits come back in one copy.)
  const bool sample_on_device = device_sampling && device_batch_.num_rows() > host_rows_.size();
  Result<RunnerOutput> result = runner_->execute(output, sample_on_device ? &device_batch : nullptr, host_rows_,
                                                 sample_on_device ? choice_sources_ : std::span<const int32_t>());
  if (!result.ok()) return fail_step(output, result.status());
  finish_step(output, *result, /*advanced=*/false, start);
}

void Engine::step_overlapped() {
  InFlight current = std::move(*in_flight_);
  in_flight_.reset();
  // The next step, scheduled and enqueued before this one's tokens are back.
  bool advanced = false;
  if (config_.async_scheduling && scheduler_->can_schedule_ahead(current.output)) {
    const auto start = SteadyClock::now();
    SchedulerOutput ahead = scheduler_->schedule_ahead(current.output);
    advanced = true;
    if (!ahead.empty()) {
      note_scheduled(ahead, start);
      // A sequence whose last token is still being sampled takes it from current's ids.
      std::unordered_map<RequestId, int32_t> row_of;
      const std::vector<RequestId>& sampled_ids = current.pending.output.request_ids;
      for (size_t i = 0; i < sampled_ids.size(); ++i)
        row_of.emplace(sampled_ids[i], static_cast<int32_t>(i));
      std::vector<int32_t> rows;
      rows.reserve(ahead.sequences.size());
      bool any_pending = false;
      for (const ScheduledSequence& seq : ahead.sequences) {
        const bool pending = seq.token_ids.back() == Scheduler::kPendingToken;
        rows.push_back(pending ? row_of.at(seq.request_id) : -1);
        any_pending |= pending;
      }
      // (After a prompt chunk that sampled nothing, every token is known.)
      const TokenSource source{current.pending.sample, rows};
      // Penalty rows count their pending token on the device too.
      Status status = prepare_device_sampling(ahead, rows) && host_rows_.empty()
                          ? OkStatus()
                          : Internal("a step scheduled ahead cannot be sampled on the device");
      DeviceSamplingBatch batch = device_batch_.batch();
      batch.pending = source.from;
      Result<ModelRunner::PendingStep> launched =
          status.ok() ? runner_->launch(ahead, batch, any_pending ? &source : nullptr, choice_sources_)
                      : Result<ModelRunner::PendingStep>(status);
      if (launched.ok()) {
        counters_.num_overlapped_steps += 1;
        in_flight_ = InFlight{std::move(ahead), std::move(*launched), start};
      } else {
        fail_step(ahead, launched.status());
      }
    }
  }
  Result<RunnerOutput> result = runner_->wait(std::move(current.pending));
  if (!result.ok()) {
    // The step after it took its input tokens from this one: it fails too.
    if (in_flight_) {
      InFlight next = std::move(*in_flight_);
      in_flight_.reset();
      (void)runner_->wait(std::move(next.pending));
      fail_step(next.output, result.status());
    }
    return fail_step(current.output, result.status());
  }
  finish_step(current.output, *result, advanced, current.start);
}

void Engine::note_scheduled(const SchedulerOutput& output, SteadyClock::time_point start) {
  for (const ScheduledSequence& seq : output.sequences) {
    auto it = sequences_.find(seq.request_id);
    if (it == sequences_.end()) continue;
    GroupState& group = *groups_.at(it->second->group_id);
    if (!group.first_scheduled) {
      group.first_scheduled = start;
      const Request* request = scheduler_->find(seq.request_id);
      group.cached_tokens = request != nullptr ? std::max(request->num_cached_tokens, 0) : 0;
    }
  }
}

void Engine::fail_step(const SchedulerOutput& output, const Status& status) {
  logger_->error("engine step failed: {}", status.to_string());
  std::vector<RequestId> failed;
  for (const ScheduledSequence& seq : output.sequences) {
    auto it = sequences_.find(seq.request_id);
    if (it != sequences_.end()) failed.push_back(it->second->group_id);
  }
  for (RequestId id : failed) {
    if (groups_.count(id) != 0) finish_group_sequences(id, FinishReason::kError, status);
  }
}

void Engine::finish_step(const SchedulerOutput& output, RunnerOutput& logits, bool advanced,
                         SteadyClock::time_point start) {
  std::vector<SampledTokens> sampled;
  std::unordered_map<RequestId, SampledToken> details;
  std::vector<float> scratch;
  size_t next_host_row = 0;  // into logits.host_rows
  const std::span<const int32_t> choices = logits.choice_sources;
  size_t next_choice = 0;  // into choices
  for (size_t i = 0; i < logits.request_ids.size(); ++i) {
    const RequestId id = logits.request_ids[i];
    // Sampled on the device unless the runner gave this row's logits for the host Sampler.
    const bool on_host = logits.sampled.empty() || (next_host_row < logits.host_rows.size() &&
                                                    logits.host_rows[next_host_row] == static_cast<int32_t>(i));
    const size_t logits_row = logits.sampled.empty() ? i : next_host_row;
    if (on_host && !logits.sampled.empty()) ++next_host_row;
    const Request* request = scheduler_->find(id);
    if (request == nullptr) continue;
    if (!on_host) {
      SampledTokens tokens{id, {}};
      const auto take = [&](size_t sample_row, RequestId choice_id) {
        const int32_t token_id = logits.sampled[sample_row];
        tokens.token_ids.push_back(token_id);
        // (Records come back only for steps where some row asked for them.)
        const int32_t num_top = logits.logprobs.empty() ? -1 : sequences_.at(choice_id)->sampler.params().logprobs;
        if (num_top >= 0) {
          const auto record = std::span(logits.logprobs).subspan(sample_row * kLogprobsRecord, kLogprobsRecord);
          details.emplace(choice_id, device_logprobs(token_id, num_top, record));
        }
      };
      take(i, id);
      // Its other choices when its prompt ended here: rows after every sequence's.
      const auto row = static_cast<int32_t>(i);
      while (next_choice < choices.size() && choices[next_choice] < row)
        ++next_choice;
      for (RequestId c = 1; next_choice < choices.size() && choices[next_choice] == row; ++c, ++next_choice)
        take(logits.request_ids.size() + next_choice, id + c);
      sampled.push_back(std::move(tokens));
      continue;
    }
    SampledTokens tokens{id, {}};
    const int32_t num_choices = request->num_pending_forks + 1;
    for (int32_t c = 0; c < num_choices; ++c) {
      SequenceState& seq = *sequences_.at(id + c);
      std::span<float> row = logits.row(logits_row);
      if (num_choices > 1) {  // the sampler uses its row as scratch; each choice needs the original
        scratch.assign(row.begin(), row.end());
        row = scratch;
      }
      SampledToken token =
          seq.sampler.sample(row, request->prompt_ids(), c == 0 ? request->output_ids() : std::span<const int32_t>());
      tokens.token_ids.push_back(token.token_id);
      if (seq.sampler.params().logprobs >= 0) details.emplace(id + c, std::move(token));
    }
    sampled.push_back(std::move(tokens));
  }
  const std::vector<SequenceOutput> outputs =
      advanced ? scheduler_->resolve(sampled) : scheduler_->update(output, sampled);
  for (const SequenceOutput& out : outputs) {
    auto it = details.find(out.request_id);
    handle_output(out, it == details.end() ? nullptr : &it->second);
  }
  counters_.num_steps += 1;
  counters_.computed_tokens += output.num_tokens;
  counters_.batch_size_histogram[static_cast<size_t>(
      histogram_bucket(output.sequences.size(), counters_.batch_size_histogram.size()))] += 1;
  // Overlapped steps share wall time: count each stretch once.
  const auto now = SteadyClock::now();
  const double step_seconds = seconds_between(std::max(start, last_step_end_), now);
  counters_.busy_seconds += step_seconds;
  last_step_end_ = now;
  if (config_.log_slow_steps.count() > 0) {
    if (step_seconds * 1e3 >= static_cast<double>(config_.log_slow_steps.count()))
      log_slow_step(output, step_seconds, advanced);
    // On a backend that runs asynchronously (one that samples on the device), a step that
    // samples nothing (a prompt chunk) is not waited for: its device time shows in the next
    // step that samples.
    const bool waited =
        !runner_->samples_on_device() || std::any_of(output.sequences.begin(), output.sequences.end(),
                                                     [](const ScheduledSequence& seq) { return seq.sample; });
    steps_not_waited_for_ = waited ? 0 : steps_not_waited_for_ + 1;
  }
}

void Engine::log_slow_step(const SchedulerOutput& output, double seconds, bool overlapped) const {
  int32_t decoding = 0, prompt_chunks = 0, prompt_tokens = 0, longest_context = 0;
  for (const ScheduledSequence& seq : output.sequences) {
    const auto tokens = static_cast<int32_t>(seq.token_ids.size());
    longest_context = std::max(longest_context, seq.start_pos + tokens);
    if (tokens == 1) {  // (decoding, or a prompt's last token after a cached prefix)
      ++decoding;
    } else {
      ++prompt_chunks;
      prompt_tokens += tokens;
    }
  }
  const std::string earlier =
      steps_not_waited_for_ == 0
          ? ""
          : fmt::format(", after {} prompt-chunk step(s) not waited for (their device time counts here)",
                        steps_not_waited_for_);
  logger_->warn(
      "slow step: {:.1f} ms, {} rows ({} of one token, {} prompt chunks of {} tokens), longest context {}{}{}",
      seconds * 1e3, output.sequences.size(), decoding, prompt_chunks, prompt_tokens, longest_context,
      overlapped ? ", overlapped" : "", earlier);
}

bool Engine::prepare_device_sampling(const SchedulerOutput& output, std::span<const int32_t> pending_rows) {
  device_batch_.clear();
  host_rows_.clear();
  choice_sources_.clear();
  if (!runner_->samples_on_device()) return false;
  struct Fork {
    const Request* request;
    int32_t row;
  };
  std::vector<Fork> forks;
  int32_t row = 0;
  for (size_t i = 0; i < output.sequences.size(); ++i) {
    const ScheduledSequence& seq = output.sequences[i];
    if (!seq.sample) continue;
    const Request* request = scheduler_->find(seq.request_id);
    auto it = sequences_.find(seq.request_id);
    if (request == nullptr || it == sequences_.end() || !device_samplable(it->second->sampler.params())) {
      // The host Sampler takes this row; the device samples a greedy stand-in.
      host_rows_.push_back(row++);
      device_batch_.add_row(SamplingParams{}, 0, 0, {}, {});
      continue;
    }
    const SequenceState& state = *it->second;
    device_batch_.add_row(state.sampler.params(), state.seed, request->output_ids().size(), request->prompt_ids(),
                          request->output_ids(), pending_rows.empty() ? -1 : pending_rows[i]);
    if (request->num_pending_forks > 0) forks.push_back({request, row});
    ++row;
  }
  // The other choices draw from copies of the same logits, each with its sequence's params
  // and seed (and no output yet).
  for (const Fork& fork : forks) {
    for (int32_t c = 1; c <= fork.request->num_pending_forks; ++c) {
      const SequenceState& state = *sequences_.at(fork.request->request_id + c);
      device_batch_.add_row(state.sampler.params(), state.seed, 0, fork.request->prompt_ids(), {});
      choice_sources_.push_back(fork.row);
    }
  }
  return true;
}

void Engine::handle_output(const SequenceOutput& output, const SampledToken* sampled) {
  auto seq_it = sequences_.find(output.request_id);
  if (seq_it == sequences_.end()) return;
  SequenceState& seq = *seq_it->second;
  GroupState& group = *groups_.at(seq.group_id);
  const auto now = SteadyClock::now();
  if (!group.first_token) group.first_token = now;
  group.completion_tokens += 1;
  counters_.generated_tokens += 1;

  EngineEvent event;
  event.request_id = group.request_id;
  event.index = seq.index;
  event.token_ids.push_back(output.token_id);
  if (sampled != nullptr) event.logprobs.push_back({sampled->token_id, sampled->logprob, sampled->top});
  std::optional<FinishReason> reason = output.finish_reason;
  if (seq.detokenizer) {
    StopStringMatcher::Output text = seq.stops.feed(seq.detokenizer->push(output.token_id));
    event.text = std::move(text.text);
    if (text.stopped) {
      event.stop_string = std::move(text.matched);
      if (!reason) scheduler_->finish_request(output.request_id, FinishReason::kStop);
      reason = FinishReason::kStop;
    }
  }
  if (reason) end_sequence(seq, *reason, &event);
  if (group.num_finished == group.n) {
    complete_group(group, &event);  // forgets `seq`
  }
  outbox_.push_back(std::move(event));
}

void Engine::end_sequence(SequenceState& seq, FinishReason reason, EngineEvent* event) {
  if (seq.finished) return;
  seq.finished = true;
  if (seq.detokenizer && event->stop_string.empty()) {
    // The text still held back: an incomplete character, a partial stop-string match.
    StopStringMatcher::Output rest = seq.stops.feed(seq.detokenizer->flush());
    event->text += rest.text;
    if (rest.stopped) {
      event->stop_string = std::move(rest.matched);
      reason = FinishReason::kStop;
    } else {
      event->text += seq.stops.flush();
    }
  }
  event->finish_reason = reason;
  counters_.finished_by_reason[static_cast<size_t>(reason)] += 1;
  GroupState& group = *groups_.at(seq.group_id);
  group.num_finished += 1;
}

void Engine::complete_group(GroupState& group, EngineEvent* last_event) {
  const auto now = SteadyClock::now();
  last_event->done = true;
  last_event->usage = {group.prompt_tokens, group.completion_tokens, group.cached_tokens};
  last_event->timings.queued_seconds = group.first_scheduled ? seconds_between(group.submitted, *group.first_scheduled)
                                                             : seconds_between(group.submitted, now);
  last_event->timings.first_token_seconds =
      group.first_token ? seconds_between(group.submitted, *group.first_token) : 0.0;
  last_event->timings.total_seconds = seconds_between(group.submitted, now);
  for (int32_t c = 0; c < group.n; ++c)
    sequences_.erase(group.request_id + c);
  counters_.requests_finished += 1;
  if (!last_event->error.ok()) counters_.requests_failed += 1;
  --num_pending_requests_;
}

void Engine::finish_group_sequences(RequestId group_id, FinishReason reason, const Status& error) {
  auto group_it = groups_.find(group_id);
  if (group_it == groups_.end()) return;
  GroupState& group = *group_it->second;
  std::vector<EngineEvent> events;
  for (int32_t c = 0; c < group.n; ++c) {
    auto it = sequences_.find(group_id + c);
    if (it == sequences_.end() || it->second->finished) continue;
    scheduler_->finish_request(group_id + c, reason);
    EngineEvent event;
    event.request_id = group_id;
    event.index = c;
    end_sequence(*it->second, reason, &event);
    events.push_back(std::move(event));
  }
  if (events.empty()) return;
  events.back().error = error;
  complete_group(group, &events.back());
  for (EngineEvent& event : events)
    outbox_.push_back(std::move(event));
}

void Engine::deliver_events() {
  // Stats first, so a client that received its last event sees the step in stats().
  publish_stats();
  for (EngineEvent& event : outbox_) {
    auto it = groups_.find(event.request_id);
    if (it == groups_.end()) continue;
    const bool done = event.done;
    it->second->sink(std::move(event));
    if (done) groups_.erase(it);
  }
  outbox_.clear();
}

void Engine::publish_stats() {
  const SchedulerStats s = scheduler_->stats();
  EngineStats snapshot = counters_;
  snapshot.num_running = s.num_running;
  snapshot.num_waiting = s.num_waiting;
  snapshot.num_pending_requests = num_pending_requests_.load();
  snapshot.kv_num_blocks = s.kv.num_blocks;
  snapshot.kv_used_blocks = s.kv.num_used_blocks;
  snapshot.kv_free_blocks = s.kv.num_free_blocks;
  snapshot.kv_cached_blocks = s.kv.num_cached_blocks;
  snapshot.prefix_queried_tokens = s.kv.num_prefix_queried_tokens;
  snapshot.prefix_hit_tokens = s.kv.num_prefix_hit_tokens;
  snapshot.num_preemptions = s.num_preemptions;
  snapshot.generation_tokens_per_second =
      snapshot.busy_seconds > 0 ? static_cast<double>(snapshot.generated_tokens) / snapshot.busy_seconds : 0.0;
  std::lock_guard lock(stats_mutex_);
  stats_ = std::move(snapshot);
}

}  // namespace bw
