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
#include "runner/kv_cache_storage.h"
#include "sched/scheduler.h"

namespace bw {

struct ModelRunnerConfig {
  int32_t kv_num_blocks = 0;
  int32_t kv_block_size = 16;
  DType kv_dtype = DType::kF32;
};

struct RunnerOutput {
  std::vector<RequestId> request_ids;  // the sequences with `sample` set, in output order
  int64_t vocab_size = 0;
  std::vector<float> logits;  // [request_ids.size(), vocab_size]

  std::span<float> row(size_t i) {
    return std::span<float>(logits).subspan(i * static_cast<size_t>(vocab_size), static_cast<size_t>(vocab_size));
  }
};

class ModelRunner {
 public:
  static Result<std::unique_ptr<ModelRunner>> create(CausalLM& model, Backend& backend,
                                                     const ModelRunnerConfig& config);

  Result<RunnerOutput> execute(const SchedulerOutput& output);

  const KvCacheStorage& kv_cache() const { return kv_cache_; }
  CausalLM& model() { return model_; }

 private:
  ModelRunner(CausalLM& model, Backend& backend, KvCacheStorage kv_cache)
      : model_(model), backend_(backend), kv_cache_(std::move(kv_cache)) {}

  CausalLM& model_;
  Backend& backend_;
  KvCacheStorage kv_cache_;
  BatchInputs inputs_;
  DeviceBuffer logits_buffer_;  // [rows, vocab], activation dtype
};

// Copies `rows` x vocab logits in the backend's activation dtype to f32 on the host.
Status read_logits(Backend& backend, const TensorView& logits, std::vector<float>* out);

}  // namespace bw
