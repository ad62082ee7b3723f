// What the CUDA sampling kernel does with a row's logit bias and penalty history
// (cuda_sampling.cu, steps 0 and 1) and the log-probabilities it reports, on the host:
// host tests check the builder's batches against the Sampler with it, and the recording
// backend's stand-in for device sampling applies it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "backend/backend.h"

namespace bw::test {

// Row r's repetition, presence and frequency penalties over its listed history plus its
// pending token (batch.pending.ids[pending_row], here in host memory), which counts as one
// more output occurrence; ids outside the vocabulary are ignored.
inline void apply_device_penalties(std::span<float> logits, const DeviceSamplingBatch& batch, size_t r) {
  const DeviceSamplingRow& row = batch.rows[r];
  if (row.repetition_penalty == 1.0f && row.presence_penalty == 0.0f && row.frequency_penalty == 0.0f) return;
  const auto penalize = [&](int32_t token, int32_t count) {
    float& v = logits[static_cast<size_t>(token)];
    if (row.repetition_penalty != 1.0f) v = v > 0.0f ? v / row.repetition_penalty : v * row.repetition_penalty;
    if (count > 0) v -= row.frequency_penalty * static_cast<float>(count) + row.presence_penalty;
  };
  int32_t pending = row.pending_row >= 0 ? batch.pending.ids[row.pending_row] : -1;
  if (pending >= static_cast<int64_t>(logits.size())) pending = -1;
  bool listed = false;
  if (!batch.penalty_offsets.empty()) {
    for (int32_t j = batch.penalty_offsets[r]; j < batch.penalty_offsets[r + 1]; ++j) {
      const int32_t token = batch.penalty_tokens[static_cast<size_t>(j)];
      listed |= token == pending;
      penalize(token, batch.penalty_output_counts[static_cast<size_t>(j)] + (token == pending ? 1 : 0));
    }
  }
  if (!listed && pending >= 0) penalize(pending, 1);
}

// Row r's logit bias.
inline void apply_device_bias(std::span<float> logits, const DeviceSamplingBatch& batch, size_t r) {
  if (batch.bias_offsets.empty()) return;
  for (int32_t j = batch.bias_offsets[r]; j < batch.bias_offsets[r + 1]; ++j)
    logits[static_cast<size_t>(batch.bias_tokens[static_cast<size_t>(j)])] += batch.bias_values[static_cast<size_t>(j)];
}

// The record Backend::sample writes for a row with logprobs >= 0 (raw: the row's logits
// before bias and penalties), in double.
inline void device_logprobs_record(std::span<const float> raw, int32_t token, int32_t num_top,
                                   std::span<DeviceTokenLogprob> record) {
  float max = -std::numeric_limits<float>::infinity();
  for (const float v : raw)
    max = v > max ? v : max;
  const bool finite = std::isfinite(max);
  double sum = 0.0;
  for (const float v : raw)
    sum += finite && v > -std::numeric_limits<float>::infinity() ? std::exp(static_cast<double>(v) - max) : 0.0;
  const double log_normaliser = finite ? max + std::log(sum) : 0.0;
  const auto logprob = [&](float v) {
    if (!finite) return v == max ? 0.0f : -std::numeric_limits<float>::infinity();
    return static_cast<float>(static_cast<double>(v) - log_normaliser);
  };
  record[0] = {token, logprob(raw[static_cast<size_t>(token)])};
  std::vector<int32_t> ids;
  for (size_t i = 0; i < raw.size() && finite; ++i) {
    if (raw[i] > -std::numeric_limits<float>::infinity()) ids.push_back(static_cast<int32_t>(i));
  }
  const auto better = [&](int32_t a, int32_t b) {
    return raw[static_cast<size_t>(a)] > raw[static_cast<size_t>(b)] ||
           (raw[static_cast<size_t>(a)] == raw[static_cast<size_t>(b)] && a < b);
  };
  const size_t n = std::min(ids.size(), static_cast<size_t>(num_top));
  std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(n), ids.end(), better);
  for (size_t j = 0; j < static_cast<size_t>(num_top); ++j)
    record[1 + j] =
        j < n ? DeviceTokenLogprob{ids[j], logprob(raw[static_cast<size_t>(ids[j])])} : DeviceTokenLogprob{};
}

}  // namespace bw::test
