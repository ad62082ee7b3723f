// BatchInputs: lays out one step's flattened batch in backend memory — token ids,
// positions, the cache slot of each token, cumulative query starts, KV lengths, block
// tables and the rows whose logits are wanted — from the scheduler's plain description.
//
// All fields travel in one upload (one host-to-device copy a step instead of one per field:
// each copy costs the device a few microseconds, and an overlapped step must not make the
// host wait for the copy slots of the step still running). The buffer is kept and grown as
// needed, so a steady stream of steps allocates nothing. The views in input() stay valid
// until the next build(). Not thread-safe.
#pragma once

#include <span>
#include <vector>

#include "backend/backend.h"
#include "model/causal_lm.h"
#include "sched/scheduler.h"

namespace bw {

class BatchInputs {
 public:
  // Each sequence's block table must cover start_pos + token_ids.size() tokens.
  // Logits rows: the last token of every sequence with `sample` set, or, with
  // `all_logits`, every token of the batch.
  // source_rows (empty, or one per sequence): >= 0 when the sequence's last token is still
  // on the device, at that row of an earlier sample (its token id here is a placeholder);
  // token_sources() then lists them for Backend::select_tokens.
  Status build(Backend& backend, std::span<const ScheduledSequence> sequences, int32_t block_size,
               bool all_logits = false, std::span<const int32_t> source_rows = {});

  const ForwardInput& input() const { return input_; }
  int64_t num_tokens() const { return static_cast<int64_t>(num_tokens_); }
  int64_t num_logits_rows() const { return static_cast<int64_t>(logits_rows_.size()); }
  // [num_tokens] i32: the earlier sample's row each token is taken from, -1 for tokens
  // known on the host. Only after a build() with source_rows.
  const TensorView& token_sources() const { return token_sources_; }

 private:
  std::vector<int32_t> token_ids_, positions_, slots_, query_start_, kv_lens_, block_tables_, logits_rows_, sources_;
  std::vector<int32_t> packed_;  // every field, one after another, as uploaded
  size_t num_tokens_ = 0;
  DeviceBuffer buffer_;
  ForwardInput input_;
  TensorView token_sources_;
};

}  // namespace bw
