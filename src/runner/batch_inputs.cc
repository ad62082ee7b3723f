#include "runner/batch_inputs.h"

#include <algorithm>

namespace bw {

Status BatchInputs::build(Backend& backend, std::span<const ScheduledSequence> sequences, int32_t block_size,
                          bool all_logits, std::span<const int32_t> source_rows) {
  if (sequences.empty()) return InvalidArgument("an empty batch");
  if (block_size <= 0) return InvalidArgument("block size must be positive");
  if (!source_rows.empty() && source_rows.size() != sequences.size()) {
    return InvalidArgument("{} token source rows for {} sequences", source_rows.size(), sequences.size());
  }
  size_t width = 1;
  for (const ScheduledSequence& seq : sequences)
    width = std::max(width, seq.block_table.size());
  for (auto* v :
       {&token_ids_, &positions_, &slots_, &query_start_, &kv_lens_, &block_tables_, &logits_rows_, &sources_})
    v->clear();
  query_start_.push_back(0);
  int32_t max_query_len = 0;
  int32_t max_kv_len = 0;
  for (size_t s = 0; s < sequences.size(); ++s) {
    const ScheduledSequence& seq = sequences[s];
    const int32_t q_len = static_cast<int32_t>(seq.token_ids.size());
    const int32_t kv_len = seq.start_pos + q_len;
    if (q_len == 0) return InvalidArgument("sequence {} has no tokens this step", seq.request_id);
    if (static_cast<int64_t>(seq.block_table.size()) * block_size < kv_len) {
      return InvalidArgument("sequence {}: {} blocks do not cover {} tokens", seq.request_id, seq.block_table.size(),
                             kv_len);
    }
    const int32_t source = source_rows.empty() ? -1 : source_rows[s];
    for (int32_t i = 0; i < q_len; ++i) {
      const int32_t pos = seq.start_pos + i;
      const bool from_device = source >= 0 && i == q_len - 1;
      // A token still on the device is written by select_tokens (0 until then).
      token_ids_.push_back(from_device ? 0 : seq.token_ids[static_cast<size_t>(i)]);
      if (!source_rows.empty()) sources_.push_back(from_device ? source : -1);
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
  num_tokens_ = token_ids_.size();

  // One host array, one buffer, one copy; each field a view at its offset.
  const std::vector<int32_t>* fields[] = {&token_ids_, &positions_,    &slots_,       &query_start_,
                                          &kv_lens_,   &block_tables_, &logits_rows_, &sources_};
  size_t offsets[std::size(fields)];
  packed_.clear();
  for (size_t f = 0; f < std::size(fields); ++f) {
    packed_.resize((packed_.size() + 3) / 4 * 4, 0);  // 16-byte aligned fields
    offsets[f] = packed_.size();
    packed_.insert(packed_.end(), fields[f]->begin(), fields[f]->end());
  }
  const size_t bytes = std::max<size_t>(packed_.size() * sizeof(int32_t), sizeof(int32_t));
  if (buffer_.size() < bytes) {
    // Grow by half again so a slowly growing batch does not reallocate every step.
    ASSIGN_OR_RETURN(buffer_, backend.allocate(std::max(bytes, buffer_.size() + buffer_.size() / 2)));
  }
  RETURN_IF_ERROR(backend.copy_to_device(buffer_.data(), packed_.data(), packed_.size() * sizeof(int32_t)));
  auto* base = static_cast<int32_t*>(buffer_.data());
  const auto view = [&](size_t field, Shape shape) { return TensorView(base + offsets[field], DType::kI32, shape); };
  const auto n = static_cast<int64_t>(num_tokens_);
  const auto s = static_cast<int64_t>(sequences.size());
  input_.token_ids = view(0, {n});
  input_.attention.positions = view(1, {n});
  input_.attention.slot_mapping = view(2, {n});
  input_.attention.query_start = view(3, {s + 1});
  input_.attention.kv_lens = view(4, {s});
  input_.attention.block_tables = view(5, {s, static_cast<int64_t>(width)});
  input_.logits_indices = view(6, {num_logits_rows()});
  token_sources_ = source_rows.empty() ? TensorView() : view(7, {n});
  input_.attention.num_seqs = static_cast<int>(s);
  input_.attention.max_query_len = max_query_len;
  input_.attention.max_kv_len = max_kv_len;
  return OkStatus();
}

}  // namespace bw
