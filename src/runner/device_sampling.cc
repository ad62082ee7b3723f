#include "runner/device_sampling.h"

#include <algorithm>
#include <bit>

namespace bw {

bool device_samplable(const SamplingParams& params) { return params.logit_bias.empty() && params.logprobs < 0; }

void DeviceSamplingBatchBuilder::clear() {
  rows_.clear();
  offsets_.assign(1, 0);
  tokens_.clear();
  counts_.clear();
}

void DeviceSamplingBatchBuilder::add_row(const SamplingParams& params, uint64_t seed, uint64_t step,
                                         std::span<const int32_t> prompt_ids, std::span<const int32_t> output_ids,
                                         int32_t pending_row) {
  DeviceSamplingRow row;
  row.temperature = params.temperature;
  row.top_k = params.top_k;
  row.top_p = params.top_p;
  row.min_p = params.min_p;
  row.repetition_penalty = params.repetition_penalty;
  row.presence_penalty = params.presence_penalty;
  row.frequency_penalty = params.frequency_penalty;
  row.seed = seed;
  row.step = step;
  const bool any_penalty = params.has_penalty();
  if (any_penalty) row.pending_row = pending_row;
  rows_.push_back(row);

  const bool use_repetition = params.repetition_penalty != 1.0f;
  const size_t num_ids = (use_repetition ? prompt_ids.size() : 0) + output_ids.size();
  if (any_penalty && num_ids > 0) {
    // Distinct tokens through a small open-addressing table (as Sampler::apply_penalties).
    const size_t capacity = std::bit_ceil(std::max<size_t>(16, 2 * num_ids));
    const int shift = 64 - std::countr_zero(capacity);
    const size_t mask = capacity - 1;
    slots_.assign(capacity, Slot{-1, 0});
    const auto find_or_insert = [&](int32_t token_id) -> int32_t {
      size_t h = static_cast<size_t>((static_cast<uint64_t>(token_id) * 0x9E3779B97F4A7C15ull) >> shift);
      while (slots_[h].token_id != -1 && slots_[h].token_id != token_id)
        h = (h + 1) & mask;
      if (slots_[h].token_id == -1) {
        slots_[h] = {token_id, static_cast<int32_t>(tokens_.size())};
        tokens_.push_back(token_id);
        counts_.push_back(0);
      }
      return slots_[h].index;
    };
    const auto valid = [&](int32_t token_id) { return token_id >= 0 && token_id < vocab_size_; };
    if (use_repetition) {
      for (const int32_t token_id : prompt_ids) {
        if (valid(token_id)) find_or_insert(token_id);
      }
    }
    for (const int32_t token_id : output_ids) {
      if (valid(token_id)) ++counts_[static_cast<size_t>(find_or_insert(token_id))];
    }
  }
  offsets_.push_back(static_cast<int32_t>(tokens_.size()));
}

DeviceSamplingBatch DeviceSamplingBatchBuilder::batch() const {
  DeviceSamplingBatch b;
  b.rows = rows_;
  b.penalty_offsets = offsets_;
  b.penalty_tokens = tokens_;
  b.penalty_output_counts = counts_;
  return b;
}

}  // namespace bw
