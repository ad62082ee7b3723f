#include "runner/decode_graphs.h"

#include <algorithm>
#include <bit>

namespace bw {

namespace {

constexpr int32_t kMinWidth = 8;

// Fields of the packed input buffer, in order; all i32.
struct Offsets {
  int64_t ids, positions, slots, query_start, kv_lens, logits_rows, tables, source_rows, total;
};

Offsets offsets_of(int64_t padded, int64_t width) {
  Offsets o{};
  o.ids = 0;
  o.positions = padded;
  o.slots = 2 * padded;
  o.query_start = 3 * padded;
  o.kv_lens = 4 * padded + 1;
  o.logits_rows = 5 * padded + 1;
  o.tables = 6 * padded + 1;
  o.source_rows = o.tables + padded * width;
  o.total = o.source_rows + padded;
  return o;
}

int32_t width_for(int64_t blocks) {
  return static_cast<int32_t>(std::bit_ceil(static_cast<uint64_t>(std::max<int64_t>(blocks, kMinWidth))));
}

// 1, 2, 4, 8, 16, 24, 32, 48, 64, ... up to the first size that holds max_batch.
std::vector<int32_t> padded_sizes(int32_t max_batch) {
  std::vector<int32_t> sizes;
  for (int32_t s : {1, 2, 4, 8, 16, 24, 32}) {
    sizes.push_back(s);
    if (s >= max_batch) break;
  }
  while (sizes.back() < max_batch)
    sizes.push_back(sizes.back() + 16);
  return sizes;
}

int32_t max_width_for(int32_t block_size, int32_t max_model_len) {
  const int64_t blocks = (static_cast<int64_t>(std::max(max_model_len, 1)) + block_size - 1) / block_size;
  return width_for(blocks);
}

}  // namespace

DecodeGraphs::DecodeGraphs(CausalLM& model, Backend& backend, int32_t block_size, int32_t max_batch,
                           int32_t max_model_len)
    : model_(model),
      backend_(backend),
      block_size_(std::max(block_size, 1)),
      max_width_(max_width_for(block_size_, max_model_len)),
      sizes_(padded_sizes(max_batch)) {
  max_batch_ = max_batch > 0 ? sizes_.back() : 0;
}

int64_t DecodeGraphs::num_shapes(int32_t block_size, int32_t max_batch, int32_t max_model_len) {
  if (max_batch <= 0) return 0;
  const int32_t max_width = max_width_for(std::max(block_size, 1), max_model_len);
  const int64_t widths = std::countr_zero(static_cast<uint32_t>(max_width / kMinWidth)) + 1;
  return static_cast<int64_t>(padded_sizes(max_batch).size()) * widths;
}

int32_t DecodeGraphs::padded_size(int32_t b) const {
  for (int32_t s : sizes_) {
    if (s >= b) return s;
  }
  return 0;
}

bool DecodeGraphs::accepts(std::span<const ScheduledSequence> sequences) const {
  if (!disabled_.ok() || max_batch_ <= 0 || !backend_.supports_graphs()) return false;
  if (sequences.empty() || sequences.size() > static_cast<size_t>(max_batch_)) return false;
  for (const ScheduledSequence& seq : sequences) {
    if (seq.token_ids.size() != 1 || !seq.sample) return false;
    const int64_t blocks = (static_cast<int64_t>(seq.start_pos) + 1 + block_size_ - 1) / block_size_;
    if (blocks > max_width_ || static_cast<int64_t>(seq.block_table.size()) < blocks) return false;
  }
  return true;
}

ForwardInput DecodeGraphs::layout(int32_t padded, int32_t width) const {
  const Offsets o = offsets_of(padded, width);
  auto* base = static_cast<int32_t*>(inputs_.data());
  auto view = [&](int64_t offset, Shape shape) { return TensorView(base + offset, DType::kI32, shape); };
  ForwardInput in;
  in.token_ids = view(o.ids, {padded});
  in.attention.positions = view(o.positions, {padded});
  in.attention.slot_mapping = view(o.slots, {padded});
  in.attention.query_start = view(o.query_start, {padded + 1});
  in.attention.kv_lens = view(o.kv_lens, {padded});
  in.attention.block_tables = view(o.tables, {padded, width});
  in.logits_indices = view(o.logits_rows, {padded});
  in.attention.num_seqs = padded;
  in.attention.max_query_len = 1;
  // An upper bound for every step this graph replays: it sizes the split-KV grid.
  in.attention.max_kv_len = width * block_size_;
  return in;
}

Status DecodeGraphs::ensure_buffers() {
  if (inputs_.data() != nullptr) return OkStatus();
  const uint64_t bytes = static_cast<uint64_t>(offsets_of(max_batch_, max_width_).total) * sizeof(int32_t);
  ASSIGN_OR_RETURN(inputs_, backend_.allocate(bytes));
  const auto vocab = static_cast<uint64_t>(model_.config().vocab_size);
  ASSIGN_OR_RETURN(logits_, backend_.allocate(static_cast<uint64_t>(max_batch_) * vocab * sizeof(float)));
  return OkStatus();
}

Status DecodeGraphs::upload_inputs(std::span<const ScheduledSequence> sequences, const TokenSource* source,
                                   int32_t padded, int32_t width) {
  // Host copy of the packed inputs; padding rows write nothing and read key 0 of block 0.
  const auto b = static_cast<int32_t>(sequences.size());
  const Offsets o = offsets_of(padded, width);
  host_.assign(static_cast<size_t>(o.total), 0);
  for (int32_t i = 0; i < padded; ++i) {
    const bool real = i < b;
    const ScheduledSequence* seq = real ? &sequences[static_cast<size_t>(i)] : nullptr;
    const int32_t pos = real ? seq->start_pos : 0;
    const int32_t source_row = real && source != nullptr ? source->rows[static_cast<size_t>(i)] : -1;
    // A token still on the device is written by select_tokens below (0 until then).
    host_[static_cast<size_t>(o.ids + i)] = real && source_row < 0 ? seq->token_ids[0] : 0;
    host_[static_cast<size_t>(o.source_rows + i)] = source_row;
    host_[static_cast<size_t>(o.positions + i)] = pos;
    host_[static_cast<size_t>(o.slots + i)] =
        real ? seq->block_table[static_cast<size_t>(pos / block_size_)] * block_size_ + pos % block_size_ : -1;
    host_[static_cast<size_t>(o.query_start + i)] = i;
    host_[static_cast<size_t>(o.kv_lens + i)] = pos + 1;
    host_[static_cast<size_t>(o.logits_rows + i)] = i;
    if (real) {
      const int64_t blocks = (pos + block_size_) / block_size_;
      std::copy_n(seq->block_table.begin(), blocks, host_.begin() + o.tables + static_cast<int64_t>(i) * width);
    }
  }
  host_[static_cast<size_t>(o.query_start + padded)] = padded;
  RETURN_IF_ERROR(backend_.copy_to_device(inputs_.data(), host_.data(), host_.size() * sizeof(int32_t)));
  if (source != nullptr) {
    auto* base = static_cast<int32_t*>(inputs_.data());
    RETURN_IF_ERROR(backend_.select_tokens(TensorView(base + o.ids, DType::kI32, {padded}), source->from,
                                           TensorView(base + o.source_rows, DType::kI32, {padded})));
  }
  return OkStatus();
}

TensorView DecodeGraphs::padded_logits(int32_t padded) const {
  return logits_.view(DType::kF32, {padded, model_.config().vocab_size});
}

Status DecodeGraphs::record(int32_t padded, int32_t width, std::span<const KvCacheLayer> kv_cache) {
  const ForwardInput input = layout(padded, width);
  const TensorView all_logits = padded_logits(padded);
  const uint64_t epoch = model_.workspace_epoch();
  ASSIGN_OR_RETURN(std::unique_ptr<CapturedGraph> graph,
                   backend_.capture([&] { return model_.forward(input, kv_cache, all_logits); }));
  ++captures_;
  graphs_[std::make_pair(padded, width)] = Graph{std::move(graph), epoch};
  return OkStatus();
}

Result<int64_t> DecodeGraphs::capture_all(std::span<const KvCacheLayer> kv_cache) {
  if (!disabled_.ok() || max_batch_ <= 0 || !backend_.supports_graphs()) return int64_t{0};
  RETURN_IF_ERROR(ensure_buffers());
  int64_t recorded = 0;
  // Widest tables first (scratch buffers reach their size early), and batch 1 first at
  // each width: a device's first single-sequence step may set up state that makes the
  // graphs recorded before it stale (CUDA: the fused decoder stack's layer table, uploaded
  // at its first use), so it comes before any recording.
  for (int32_t width = max_width_; width >= kMinWidth; width /= 2) {
    for (const int32_t size : sizes_) {
      // As at a shape's first step: an eager forward sizes the scratch, then the recording.
      Status status = upload_inputs({}, nullptr, size, width);
      if (status.ok()) status = model_.forward(layout(size, width), kv_cache, padded_logits(size));
      if (status.ok()) status = record(size, width, kv_cache);
      if (!status.ok()) {
        graphs_.clear();  // frees what the graphs recorded so far hold
        disabled_ = status;
        return status;
      }
      ++recorded;
    }
  }
  return recorded;
}

Result<TensorView> DecodeGraphs::run(std::span<const ScheduledSequence> sequences,
                                     std::span<const KvCacheLayer> kv_cache, const TokenSource* source) {
  if (!accepts(sequences)) return FailedPrecondition("decode graphs: this step is not a decode-only batch");
  if (source != nullptr && source->rows.size() != sequences.size()) {
    return InvalidArgument("decode graphs: {} token source rows for {} sequences", source->rows.size(),
                           sequences.size());
  }
  const auto b = static_cast<int32_t>(sequences.size());
  const int32_t padded = padded_size(b);
  int64_t max_blocks = 1;
  for (const ScheduledSequence& seq : sequences)
    max_blocks = std::max<int64_t>(max_blocks, (seq.start_pos + block_size_) / block_size_);
  const int32_t width = width_for(max_blocks);
  RETURN_IF_ERROR(ensure_buffers());
  RETURN_IF_ERROR(upload_inputs(sequences, source, padded, width));

  const TensorView logits = logits_.view(DType::kF32, {b, model_.config().vocab_size});
  const auto key = std::make_pair(padded, width);
  auto it = graphs_.find(key);
  if (it != graphs_.end() && it->second.model_epoch == model_.workspace_epoch()) {
    const Status replayed = it->second.graph->replay();
    if (replayed.ok()) {
      ++replays_;
      return logits;
    }
    if (replayed.code() != StatusCode::kFailedPrecondition) return replayed;
  }
  if (it != graphs_.end()) graphs_.erase(it);

  // First step of this shape (or its buffers moved): run it, then record it.
  RETURN_IF_ERROR(model_.forward(layout(padded, width), kv_cache, padded_logits(padded)));
  const Status recorded = record(padded, width, kv_cache);
  if (!recorded.ok()) disabled_ = recorded;  // later steps run eagerly; this one already ran
  return logits;
}

}  // namespace bw
