// BatchInputs: lays out one step's flattened batch in backend memory — token ids,
// positions, the cache slot of each token, cumulative query starts, KV lengths, block
// tables and the rows whose logits are wanted — from the scheduler's plain description.
//
// Buffers are kept and grown as needed, so a steady stream of steps allocates nothing.
// The views in input() stay valid until the next build(). Not thread-safe.
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
  Status build(Backend& backend, std::span<const ScheduledSequence> sequences, int32_t block_size,
               bool all_logits = false);

  const ForwardInput& input() const { return input_; }
  int64_t num_tokens() const { return static_cast<int64_t>(token_ids_.size()); }
  int64_t num_logits_rows() const { return static_cast<int64_t>(logits_rows_.size()); }

 private:
  // One reusable device buffer per field.
  struct Field {
    DeviceBuffer buffer;
    Result<TensorView> upload(Backend& backend, std::span<const int32_t> values, Shape shape);
  };

  std::vector<int32_t> token_ids_, positions_, slots_, query_start_, kv_lens_, block_tables_, logits_rows_;
  Field f_token_ids_, f_positions_, f_slots_, f_query_start_, f_kv_lens_, f_block_tables_, f_logits_rows_;
  ForwardInput input_;
};

}  // namespace bw
