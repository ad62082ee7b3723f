// Host side of device sampling (Backend::sample): which requests it can take, and the
// DeviceSamplingBatch it reads, built from each row's SamplingParams and token history.
//
// The logit bias follows Sampler::apply_logit_bias: ids outside [0, vocab_size) are
// ignored and a token listed twice gets the sum of its biases (the device adds each
// token's once).
//
// The penalty history follows Sampler::apply_penalties: the distinct tokens of the output
// (with their counts) when any penalty is on, plus the prompt's tokens (count 0 unless also
// in the output) when repetition_penalty != 1; ids outside [0, vocab_size) are ignored. A
// row with no penalty has no history. Tokens appear in order of first occurrence (prompt,
// then output), so the batch depends only on its inputs.
//
// DeviceSamplingBatchBuilder owns the arrays the batch views; reuse it across steps to keep
// its memory. Not thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "runner/sampler.h"
#include "sched/sampling_params.h"

namespace bw {

// Whether Backend::sample can take a request with these params: any that passed
// validate() (logprobs at most kMaxDeviceTopLogprobs).
bool device_samplable(const SamplingParams& params);

// A row's sampled token with the log-probabilities of its record (Backend::sample) as
// the host Sampler reports them: `num_top` (the row's logprobs) top entries at most, fewer
// when the row had fewer finite logits.
SampledToken device_logprobs(int32_t token_id, int32_t num_top, std::span<const DeviceTokenLogprob> record);

class DeviceSamplingBatchBuilder {
 public:
  explicit DeviceSamplingBatchBuilder(int64_t vocab_size) : vocab_size_(vocab_size) {}

  // Starts a new batch (keeps the memory).
  void clear();

  // Appends one row. `seed` is the row's resolved seed (params.seed, or the one the engine
  // drew for the request), `step` the output index of the token being sampled (usually
  // output_ids.size()).
  // pending_row >= 0: the newest output token is still on the device, at that row of the
  // batch's `pending` sample (output_ids holds a placeholder outside the vocabulary for
  // it); the row keeps it only when it has a penalty to apply.
  void add_row(const SamplingParams& params, uint64_t seed, uint64_t step, std::span<const int32_t> prompt_ids,
               std::span<const int32_t> output_ids, int32_t pending_row = -1);

  size_t num_rows() const { return rows_.size(); }

  // Views of the rows added since clear(); valid until the next add_row or clear.
  DeviceSamplingBatch batch() const;

 private:
  struct Slot {
    int32_t token_id;  // -1: empty
    int32_t index;     // into tokens_ / counts_
  };

  int64_t vocab_size_;
  std::vector<DeviceSamplingRow> rows_;
  std::vector<int32_t> offsets_{0};  // [rows + 1]
  std::vector<int32_t> tokens_;
  std::vector<int32_t> counts_;
  std::vector<int32_t> bias_offsets_{0};  // [rows + 1]
  std::vector<int32_t> bias_tokens_;
  std::vector<float> bias_values_;
  // A table of distinct tokens (scratch) for num_ids ids, then the slot of a token (empty:
  // token_id -1) in it.
  void reset_slots(size_t num_ids);
  Slot& find_slot(int32_t token_id);

  std::vector<Slot> slots_;
  int slot_shift_ = 0;
};

}  // namespace bw
