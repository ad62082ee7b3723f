// ModelRunner: executes the scheduler's steps on a model — owns the paged KV cache
// tensors, lays out each step's batch (BatchInputs), applies pending KV block copies,
// runs the forward pass and returns the logits of the sequences to sample, as f32 on the
// host, in the order of SchedulerOutput::sequences.
//
// The runner knows requests only through SchedulerOutput (plain data). It owns the KV
// storage and the logits buffers; the model and backend are borrowed and must outlive it.
// Not thread-safe: driven by the engine's step-loop thread.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "model/causal_lm.h"
#include "runner/batch_inputs.h"
#include "runner/decode_graphs.h"
#include "runner/kv_cache_storage.h"
#include "sched/scheduler.h"

namespace bw {

struct ModelRunnerConfig {
  int32_t kv_num_blocks = 0;
  int32_t kv_block_size = 16;
  DType kv_dtype = DType::kF32;
  // Decode-only steps of up to this many sequences replay graphs (runner/decode_graphs.h)
  // when the backend supports them; 0 runs every step eagerly.
  int32_t max_graph_batch = 0;
  int32_t max_model_len = 0;  // sizes the graphs' block tables
};

struct RunnerOutput {
  std::vector<RequestId> request_ids;  // the sequences with `sample` set, in output order
  int64_t vocab_size = 0;
  // Sampled on the host: [request_ids.size(), vocab_size]. Sampled on the device: the
  // rows listed in host_rows only ([host_rows.size(), vocab_size]), for the host Sampler.
  std::vector<float> logits;
  // Sampled on the device: one id per request row, then one per extra choice
  // ([request_ids.size() + choice_sources.size()]).
  std::vector<int32_t> sampled;
  std::vector<int32_t> host_rows;  // increasing indices into request_ids
  // The extra choices sampled on the device (execute's choice_sources): extra row k
  // (sampled[request_ids.size() + k]) drew from request row choice_sources[k]'s logits.
  std::vector<int32_t> choice_sources;
  // Sampled on the device with a row that asked for log-probabilities: one record of
  // kLogprobsRecord entries per row of `sampled` (Backend::sample; only those rows' are
  // written). Else empty.
  std::vector<DeviceTokenLogprob> logprobs;

  std::span<float> row(size_t i) {
    return std::span<float>(logits).subspan(i * static_cast<size_t>(vocab_size), static_cast<size_t>(vocab_size));
  }
};

class ModelRunner {
 public:
  static Result<std::unique_ptr<ModelRunner>> create(CausalLM& model, Backend& backend,
                                                     const ModelRunnerConfig& config);

  // With `sampling` (one row per sequence with `sample` set, in order) and a backend that
  // samples on the device, returns the sampled tokens instead of the logits, and the logits
  // of `host_rows` (increasing row indices) besides.
  // `choice_sources`: the later choices of n > 1 requests whose prompts end in this step
  // draw from their prompt's logits too: `sampling` then has one more row for each, after
  // the sequences' rows, and extra row k samples a copy of the logits of sequence row
  // choice_sources[k] (non-decreasing).
  Result<RunnerOutput> execute(const SchedulerOutput& output, const DeviceSamplingBatch* sampling = nullptr,
                               std::span<const int32_t> host_rows = {}, std::span<const int32_t> choice_sources = {});
  bool samples_on_device() const { return backend_.supports_device_sampling(); }

  // Overlapped steps (the engine's async scheduling): launch() enqueues a step (replayed
  // from a decode graph or run eagerly) and its device sampling and returns before the ids
  // are back; wait() returns them. Only on a backend with asynchronous sampling
  // (can_launch); at most two launched steps may be outstanding, waited for in order.
  // `sampling` has one row per sequence with `sample` set (none: nothing to wait for), then
  // those of `choice_sources` as in execute(). `source` names the input tokens still on the
  // device: per sequence, the row of the previous launched step's ids that is its last
  // token, or -1.
  struct PendingStep {
    RunnerOutput output;  // request_ids and vocab_size; sampled filled by wait()
    AsyncSample sample;
  };
  bool can_launch(const SchedulerOutput& output) const;
  Result<PendingStep> launch(const SchedulerOutput& output, const DeviceSamplingBatch& sampling,
                             const TokenSource* source = nullptr, std::span<const int32_t> choice_sources = {});
  Result<RunnerOutput> wait(PendingStep step);

  const KvCacheStorage& kv_cache() const { return kv_cache_; }
  // Runs one eager forward step of each of these token counts (Backend::warm_up_rows), so
  // that the first steps of a surge do not pay the backend's first-use costs (decode graph
  // replays are capture_decode_graphs' part). The dummy prompts (token 0, split into
  // sequences of at most max_len tokens) write their K/V into KV block 0 only, which no
  // sequence holds before the engine starts.
  Status warm_up(std::span<const int64_t> token_counts, int32_t max_len);
  // Records every decode graph now (DecodeGraphs::capture_all); 0 when graphs are off.
  Result<int64_t> capture_decode_graphs() {
    if (graphs_ == nullptr) return int64_t{0};
    return graphs_->capture_all(kv_cache_.layers());
  }
  // Null when graphs are off.
  const DecodeGraphs* decode_graphs() const { return graphs_.get(); }
  CausalLM& model() { return model_; }

 private:
  ModelRunner(CausalLM& model, Backend& backend, KvCacheStorage kv_cache, std::unique_ptr<DecodeGraphs> graphs)
      : model_(model), backend_(backend), kv_cache_(std::move(kv_cache)), graphs_(std::move(graphs)) {}

  // Enqueues the step's forward pass (a graph replay when the graphs take it); the logits
  // of its sampled sequences, in order.
  Result<TensorView> forward(const SchedulerOutput& output, const TokenSource* source);
  Result<TensorView> forward_eagerly(const SchedulerOutput& output, const TokenSource* source);
  // Reads the logits back, or samples them on the device when `sampling` is given (and
  // reads back the host_rows' logits first).
  Status finish(const TensorView& logits, const DeviceSamplingBatch* sampling, std::span<const int32_t> host_rows,
                std::span<const int32_t> choice_sources, RunnerOutput* result);
  // The logits the sampling rows read: `logits` itself, or (with extra choices) a copy of
  // it followed by a copy of row choice_sources[k] for each extra row k. Checks that
  // `sampling` has a row for each.
  Result<TensorView> sampled_logits(const TensorView& logits, const DeviceSamplingBatch& sampling,
                                    std::span<const int32_t> choice_sources);

  CausalLM& model_;
  Backend& backend_;
  KvCacheStorage kv_cache_;
  std::unique_ptr<DecodeGraphs> graphs_;
  BatchInputs inputs_;
  DeviceBuffer logits_buffer_;   // [rows, vocab] f32
  DeviceBuffer choices_buffer_;  // [rows + extra choices, vocab] f32 (sampled_logits)
};

// Copies `rows` x vocab logits in the backend's activation dtype to f32 on the host.
Status read_logits(Backend& backend, const TensorView& logits, std::vector<float>* out);

}  // namespace bw
