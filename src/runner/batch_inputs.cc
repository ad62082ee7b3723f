#include "runner/batch_inputs.h"

#include <algorithm>

namespace bw {

Result<TensorView> BatchInputs::Field::upload(Backend& backend, std::span<const int32_t> values, Shape shape) {
  const size_t bytes = std::max<size_t>(values.size_bytes(), sizeof(int32_t));
  if (buffer.size() < bytes) {
    // Grow by half again so a slowly growing batch does not reallocate every step.
    ASSIGN_OR_RETURN(buffer, backend.allocate(std::max(bytes, buffer.size() + buffer.size() / 2)));
  }
  if (!values.empty()) RETURN_IF_ERROR(backend.copy_to_device(buffer.data(), values.data(), values.size_bytes()));
  return buffer.view(DType::kI32, shape);
}

Status BatchInputs::build(Backend& backend, std::span<const ScheduledSequence> sequences, int32_t block_size,
                          bool all_logits) {
  if (sequences.empty()) return InvalidArgument("an empty batch");
  if (block_size <= 0) return InvalidArgument("block size must be positive");
  size_t width = 1;
  for (const ScheduledSequence& seq : sequences)
    width = std::max(width, seq.block_table.size());
  for (auto* v : {&token_ids_, &positions_, &slots_, &query_start_, &kv_lens_, &block_tables_, &logits_rows_})
    v->clear();
  query_start_.push_back(0);
  int32_t max_query_len = 0;
  int32_t max_kv_len = 0;
  for (const ScheduledSequence& seq : sequences) {
    const int32_t q_len = static_cast<int32_t>(seq.token_ids.size());
    const int32_t kv_len = seq.start_pos + q_len;
    if (q_len == 0) return InvalidArgument("sequence {} has no tokens this step", seq.request_id);
    if (static_cast<int64_t>(seq.block_table.size()) * block_size < kv_len) {
      return InvalidArgument("sequence {}: {} blocks do not cover {} tokens", seq.request_id, seq.block_table.size(),
                             kv_len);
    }
    for (int32_t i = 0; i < q_len; ++i) {
      const int32_t pos = seq.start_pos + i;
      token_ids_.push_back(seq.token_ids[static_cast<size_t>(i)]);
      positions_.push_back(pos);
      slots_.push_back(seq.block_table[static_cast<size_t>(pos / block_size)] * block_size + pos % block_size);
      if (all_logits) logits_rows_.push_back(static_cast<int32_t>(token_ids_.size()) - 1);
    }
    if (seq.sample && !all_logits) logits_rows_.push_back(static_cast<int32_t>(token_ids_.size()) - 1);
    query_start_.push_back(static_cast<int32_t>(token_ids_.size()));
    kv_lens_.push_back(kv_len);
    block_tables_.insert(block_tables_.end(), seq.block_table.begin(), seq.block_table.end());
    block_tables_.resize(block_tables_.size() + (width - seq.block_table.size()), 0);  // padding is never read
    max_query_len = std::max(max_query_len, q_len);
    max_kv_len = std::max(max_kv_len, kv_len);
  }
  const int64_t n = num_tokens();
  const int64_t s = static_cast<int64_t>(sequences.size());
  ASSIGN_OR_RETURN(input_.token_ids, f_token_ids_.upload(backend, token_ids_, {n}));
  ASSIGN_OR_RETURN(input_.attention.positions, f_positions_.upload(backend, positions_, {n}));
  ASSIGN_OR_RETURN(input_.attention.slot_mapping, f_slots_.upload(backend, slots_, {n}));
  ASSIGN_OR_RETURN(input_.attention.query_start, f_query_start_.upload(backend, query_start_, {s + 1}));
  ASSIGN_OR_RETURN(input_.attention.kv_lens, f_kv_lens_.upload(backend, kv_lens_, {s}));
  ASSIGN_OR_RETURN(input_.attention.block_tables,
                   f_block_tables_.upload(backend, block_tables_, {s, static_cast<int64_t>(width)}));
  ASSIGN_OR_RETURN(input_.logits_indices, f_logits_rows_.upload(backend, logits_rows_, {num_logits_rows()}));
  input_.attention.num_seqs = static_cast<int>(s);
  input_.attention.max_query_len = max_query_len;
  input_.attention.max_kv_len = max_kv_len;
  return OkStatus();
}

}  // namespace bw
