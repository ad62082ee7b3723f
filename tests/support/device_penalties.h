// What the CUDA sampling kernel does with a row's penalty history (cuda_sampling.cu, step
// 1), on the host: host tests check the builder's batches against the Sampler with it, and
// the recording backend's stand-in for device sampling applies it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

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

}  // namespace bw::test
