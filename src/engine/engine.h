// Engine: the EngineClient that runs a model. One step-loop thread owns the scheduler,
// the model runner and every request's sampler and detokenizer; each step is
// schedule() -> runner.execute() -> sample -> scheduler.update() -> events.
// Other threads only touch the inbox (submissions and cancels, under a mutex) and the
// stats snapshot; sinks are called on the loop thread.
//
// An optional batch window: when the engine is idle and a request arrives, it waits up
// to that long for more before the first step, so a burst starts as one batch.
//
// Ownership: the model, backend, tokenizer and logger are borrowed and must outlive the
// engine. Destroying the engine (or shutdown()) stops the loop; requests still pending
// end with finish_reason abort.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "common/logging.h"
#include "engine/engine_client.h"
#include "engine/stop_strings.h"
#include "model/causal_lm.h"
#include "runner/device_sampling.h"
#include "runner/model_runner.h"
#include "sched/scheduler.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace bw {

struct EngineConfig {
  SchedulerConfig scheduler{.max_model_len = 0};  // max_model_len 0: the model's context length
  int32_t kv_block_size = 16;
  // KV pool size: kv_num_blocks when > 0, else kv_cache_bytes when > 0, else enough for
  // max_num_seqs full-length sequences, capped at kv_memory_fraction of the memory
  // available now (host memory for the CPU backend).
  int32_t kv_num_blocks = 0;
  uint64_t kv_cache_bytes = 0;
  double kv_memory_fraction = 0.25;
  // Device backends (CUDA): the automatic KV pool takes what is left of this fraction of the
  // device's memory once the weights and the activation workspace are in place.
  double gpu_memory_utilization = 0.90;
  // Decode-only steps of up to this many sequences replay CUDA graphs (when the backend has
  // them); 0 runs every step eagerly (--enforce-eager).
  int32_t max_graph_batch = 256;
  // Record those graphs at each one's first step instead of in Engine::create (which then
  // takes longer, but no step of a burst waits for a recording).
  bool lazy_graph_capture = false;
  // On backends whose first step of a size costs more (Backend::warm_up_rows: CUDA), run
  // one step of each such size in Engine::create (ModelRunner::warm_up).
  bool warm_up = true;
  // Overlapped steps: while a step runs on the device, the next one is scheduled and
  // enqueued (input tokens still being sampled taken on the device from this step's
  // samples), and this step's outputs are handled while the next runs. Only where the
  // backend samples asynchronously (CUDA), for steps whose rows sample on the device
  // (penalties, logit bias and logprobs included) and that schedule() would not have to
  // preempt for, and not the step where an n > 1 request forks its choices; other steps
  // run one after another (docs/ENGINE.md).
  bool async_scheduling = true;
  DType kv_dtype = DType::kF32;
  bool enable_prefix_caching = true;
  std::chrono::milliseconds batch_window{0};
  // Log each step whose tokens came this long or longer after the previous step's (or after
  // it was scheduled, when the engine was idle), with what it computed; 0 logs none.
  std::chrono::milliseconds log_slow_steps{0};
  int32_t max_pending_requests = 0;  // accepted but not done; 0 = unlimited
  uint64_t seed = 0;                 // draws the seeds of requests that set none
  // Testing aid: sleep this long after every step, so tests can act on a request while it
  // is still generating (drain, disconnect, queue limits). Never set in production.
  std::chrono::milliseconds debug_step_delay{0};
  std::string model_name = "model";
};

class Engine final : public EngineClient {
 public:
  // Starts the step loop. `tokenizer` may be null (no text, no stop strings).
  static Result<std::unique_ptr<Engine>> create(CausalLM& model, Backend& backend, const Tokenizer* tokenizer,
                                                const EngineConfig& config, const Logger& logger);
  ~Engine() override;

  Result<RequestId> submit(GenerationRequest request, EventSink sink) override;
  void cancel(RequestId request_id) override;
  EngineStats stats() const override;
  const ModelInfo& model_info() const override { return model_info_; }

  // Stops accepting, ends pending requests (abort) and joins the loop. Idempotent.
  void shutdown();

  const EngineConfig& config() const { return config_; }
  // Tests inspect the runner (e.g. its graph counters) once requests are done.
  const ModelRunner* runner_for_testing() const { return runner_.get(); }

 private:
  struct Submission {
    RequestId request_id;
    GenerationRequest request;
    EventSink sink;
    SteadyClock::time_point submitted;
  };
  struct SequenceState;
  struct GroupState;

  Engine(const ModelConfig& model_config, const Tokenizer* tokenizer, const EngineConfig& config, Logger logger,
         std::unique_ptr<ModelRunner> runner);

  void loop();
  // Moves the inbox into the scheduler; returns false when the loop must stop.
  bool drain_inbox(bool wait_for_work);
  void admit(Submission submission);
  void expire_deadlines(SteadyClock::time_point now);
  void step();
  // The overlapped half of step(): schedules and launches the step after in_flight_ when it
  // can, then waits for in_flight_'s tokens and hands them out.
  void step_overlapped();
  // Records when the step's requests were first scheduled.
  void note_scheduled(const SchedulerOutput& output, SteadyClock::time_point start);
  // A failed step fails the requests in it; the engine keeps serving the others.
  void fail_step(const SchedulerOutput& output, const Status& status);
  // Scheduler outputs for the sampled tokens, then events and counters for the step.
  void finish_step(const SchedulerOutput& output, RunnerOutput& logits, bool advanced, SteadyClock::time_point start);
  void log_slow_step(const SchedulerOutput& output, double seconds, bool overlapped) const;
  // Fills device_batch_ for this step's sampled rows (maybe none); false when the backend
  // cannot sample. Rows that need the host Sampler get a greedy stand-in there and are
  // listed in host_rows_: the other rows still sample on the device, so a seeded request
  // draws the same tokens whatever shares its steps. An n > 1 request whose prompt ends
  // here samples its first choice in its row and the others in rows after every
  // sequence's (choice_sources_: the row each copies), each with its own seed.
  // pending_rows (one per sequence of a step scheduled ahead, or empty): the row of the
  // in-flight sample that holds each sequence's newest token.
  bool prepare_device_sampling(const SchedulerOutput& output, std::span<const int32_t> pending_rows = {});
  void handle_output(const SequenceOutput& output, const SampledToken* sampled);
  void finish_group_sequences(RequestId group_id, FinishReason reason, const Status& error = OkStatus());
  void end_sequence(SequenceState& seq, FinishReason reason, EngineEvent* event);
  // The group's last event: done, usage, timings; forgets its sequences.
  void complete_group(GroupState& group, EngineEvent* last_event);
  // Publishes the stats, then hands the step's events to their sinks and forgets the
  // requests that are done.
  void deliver_events();
  void publish_stats();

  const Tokenizer* tokenizer_;
  EngineConfig config_;
  KvCacheConfig kv_config_;
  Logger logger_;
  ModelInfo model_info_;
  std::unique_ptr<ModelRunner> runner_;
  DeviceSamplingBatchBuilder device_batch_;
  std::vector<int32_t> host_rows_;        // the sampled rows device_batch_ left to the host Sampler
  std::vector<int32_t> choice_sources_;   // ModelRunner::execute's choice_sources for device_batch_
  std::unique_ptr<Scheduler> scheduler_;  // loop thread only

  // A step launched on the device whose tokens are not back yet (async_scheduling).
  struct InFlight {
    SchedulerOutput output;
    ModelRunner::PendingStep pending;
    SteadyClock::time_point start;
  };
  std::optional<InFlight> in_flight_;  // loop thread only
  SteadyClock::time_point last_step_end_;
  int32_t steps_not_waited_for_ = 0;  // steps since the last that sampled (kept with --log-slow-steps)

  // Inbox (any thread).
  std::mutex inbox_mutex_;
  std::condition_variable inbox_cv_;
  std::vector<Submission> inbox_;
  std::vector<RequestId> cancels_;
  bool stopping_ = false;
  std::atomic<RequestId> next_request_id_{1};
  std::atomic<int32_t> num_pending_requests_{0};

  // Loop thread only.
  std::unordered_map<RequestId, std::unique_ptr<SequenceState>> sequences_;
  std::unordered_map<RequestId, std::unique_ptr<GroupState>> groups_;
  std::vector<EngineEvent> outbox_;  // this step's events, delivered by deliver_events()
  std::mt19937_64 seed_rng_;
  EngineStats counters_;

  mutable std::mutex stats_mutex_;
  EngineStats stats_;  // the published snapshot

  std::thread thread_;
};

// Device memory now, for sizing the KV pool of a device backend.
struct DeviceMemory {
  uint64_t free_bytes = 0;
  uint64_t total_bytes = 0;
};

// The KV pool size an EngineConfig asks for, in blocks: kv_num_blocks, else kv_cache_bytes,
// else automatic. Automatic on a device (`device` set; call it once weights and workspace
// are allocated): gpu_memory_utilization x total minus what is in use minus
// `reserved_bytes` (buffers allocated later), all of it; ResourceExhausted when that does
// not hold one max_model_len sequence. Automatic on the host: enough for max_num_seqs
// full-length sequences, capped at kv_memory_fraction of the available host memory.
Result<int32_t> resolve_kv_num_blocks(const EngineConfig& config, const ModelConfig& model, int32_t max_model_len,
                                      const DeviceMemory* device = nullptr, uint64_t reserved_bytes = 0);

}  // namespace bw
