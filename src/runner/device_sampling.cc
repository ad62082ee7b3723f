#include "runner/device_sampling.h"

#include <algorithm>
#include <bit>

namespace bw {

bool device_samplable(const SamplingParams& params) { return params.logprobs <= kMaxDeviceTopLogprobs; }

SampledToken device_logprobs(int32_t token_id, int32_t num_top, std::span<const DeviceTokenLogprob> record) {
  SampledToken out;
  out.token_id = token_id;
  if (record.empty()) return out;
  out.logprob = record[0].logprob;
  const size_t n = std::min(static_cast<size_t>(std::max(num_top, 0)), record.size() - 1);
  for (size_t j = 1; j <= n && record[j].token_id >= 0; ++j)
    out.top.push_back({record[j].token_id, record[j].logprob});
  return out;
}

void DeviceSamplingBatchBuilder::clear() {
  rows_.clear();
  offsets_.assign(1, 0);
  tokens_.clear();
  counts_.clear();
  bias_offsets_.assign(1, 0);
  bias_tokens_.clear();
  bias_values_.clear();
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
  row.logprobs = params.logprobs;
  const bool any_penalty = params.has_penalty();
  if (any_penalty) row.pending_row = pending_row;
  rows_.push_back(row);

  const bool use_repetition = params.repetition_penalty != 1.0f;
  const size_t num_ids = (use_repetition ? prompt_ids.size() : 0) + output_ids.size();
  if (any_penalty && num_ids > 0) {
    reset_slots(num_ids);
    const auto index_of = [&](int32_t token_id) -> int32_t {
      Slot& slot = find_slot(token_id);
      if (slot.token_id == -1) {
        slot = {token_id, static_cast<int32_t>(tokens_.size())};
        tokens_.push_back(token_id);
        counts_.push_back(0);
      }
      return slot.index;
    };
    const auto valid = [&](int32_t token_id) { return token_id >= 0 && token_id < vocab_size_; };
    if (use_repetition) {
      for (const int32_t token_id : prompt_ids) {
        if (valid(token_id)) index_of(token_id);
      }
    }
    for (const int32_t token_id : output_ids) {
      if (valid(token_id)) ++counts_[static_cast<size_t>(index_of(token_id))];
    }
  }
  offsets_.push_back(static_cast<int32_t>(tokens_.size()));

  // The bias, one entry per distinct token (in order of first listing).
  if (!params.logit_bias.empty()) {
    reset_slots(params.logit_bias.size());
    for (const auto& [token_id, bias] : params.logit_bias) {
      if (token_id < 0 || token_id >= vocab_size_) continue;
      Slot& slot = find_slot(token_id);
      if (slot.token_id == -1) {
        slot = {token_id, static_cast<int32_t>(bias_tokens_.size())};
        bias_tokens_.push_back(token_id);
        bias_values_.push_back(bias);
      } else {
        bias_values_[static_cast<size_t>(slot.index)] += bias;
      }
    }
  }
  bias_offsets_.push_back(static_cast<int32_t>(bias_tokens_.size()));
}

void DeviceSamplingBatchBuilder::reset_slots(size_t num_ids) {
  const size_t capacity = std::bit_ceil(std::max<size_t>(16, 2 * num_ids));
  slot_shift_ = 64 - std::countr_zero(capacity);
  slots_.assign(capacity, Slot{-1, 0});
}

// Open addressing with a multiplicative hash, as Sampler::apply_penalties.
DeviceSamplingBatchBuilder::Slot& DeviceSamplingBatchBuilder::find_slot(int32_t token_id) {
  const size_t mask = slots_.size() - 1;
  size_t h = static_cast<size_t>((static_cast<uint64_t>(token_id) * 0x9E3779B97F4A7C15ull) >> slot_shift_);
  while (slots_[h].token_id != -1 && slots_[h].token_id != token_id)
    h = (h + 1) & mask;
  return slots_[h];
}

DeviceSamplingBatch DeviceSamplingBatchBuilder::batch() const {
  DeviceSamplingBatch b;
  b.rows = rows_;
  b.penalty_offsets = offsets_;
  b.penalty_tokens = tokens_;
  b.penalty_output_counts = counts_;
  b.bias_offsets = bias_offsets_;
  b.bias_tokens = bias_tokens_;
  b.bias_values = bias_values_;
  return b;
}

}  // namespace bw
