#include "runner/model_runner.h"

#include <algorithm>

namespace bw {

Status read_logits(Backend& backend, const TensorView& logits, std::vector<float>* out) {
  const int64_t n = logits.numel();
  out->resize(static_cast<size_t>(n));
  if (n == 0) return OkStatus();
  if (logits.dtype == DType::kF32) return backend.copy_to_host(out->data(), logits.data, out->size() * sizeof(float));
  std::vector<uint16_t> raw(static_cast<size_t>(n));
  RETURN_IF_ERROR(backend.copy_to_host(raw.data(), logits.data, raw.size() * sizeof(uint16_t)));
  if (logits.dtype == DType::kBF16) {
    convert_bf16_to_f32(raw.data(), out->data(), n);
  } else {
    convert_f16_to_f32(raw.data(), out->data(), n);
  }
  return OkStatus();
}

Result<std::unique_ptr<ModelRunner>> ModelRunner::create(CausalLM& model, Backend& backend,
                                                         const ModelRunnerConfig& config) {
  ASSIGN_OR_RETURN(KvCacheStorage storage, KvCacheStorage::create(backend, model.config(), config.kv_num_blocks,
                                                                  config.kv_block_size, config.kv_dtype));
  std::unique_ptr<DecodeGraphs> graphs;
  if (config.max_graph_batch > 0 && backend.supports_graphs()) {
    graphs = std::make_unique<DecodeGraphs>(model, backend, config.kv_block_size, config.max_graph_batch,
                                            config.max_model_len);
  }
  return std::unique_ptr<ModelRunner>(new ModelRunner(model, backend, std::move(storage), std::move(graphs)));
}

Status ModelRunner::finish(const TensorView& logits, const DeviceSamplingBatch* sampling,
                           std::span<const int32_t> host_rows, std::span<const int32_t> choice_sources,
                           RunnerOutput* result) {
  if (sampling == nullptr || !backend_.supports_device_sampling()) {
    if (!choice_sources.empty()) return InvalidArgument("runner: extra choices need device sampling");
    return read_logits(backend_, logits, &result->logits);
  }
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  ASSIGN_OR_RETURN(TensorView sampled, sampled_logits(logits, *sampling, choice_sources));
  // Rows for the host Sampler: their logits (always f32) come back before sampling uses
  // them as scratch.
  const size_t row_bytes = static_cast<size_t>(vocab) * sizeof(float);
  result->logits.resize(host_rows.size() * static_cast<size_t>(vocab));
  for (size_t k = 0; k < host_rows.size(); ++k) {
    const int32_t r = host_rows[k];
    if (r < 0 || r >= rows || (k > 0 && r <= host_rows[k - 1]))
      return InvalidArgument("runner: host row {} out of order or outside {} rows", r, rows);
    RETURN_IF_ERROR(backend_.copy_to_host(result->row(k).data(), logits.slice_rows(r, r + 1).data, row_bytes));
  }
  result->host_rows.assign(host_rows.begin(), host_rows.end());
  result->sampled.resize(sampling->rows.size());
  if (wants_logprobs(*sampling)) result->logprobs.resize(sampling->rows.size() * kLogprobsRecord);
  return backend_.sample(result->sampled, sampled, *sampling, result->logprobs);
}

Result<TensorView> ModelRunner::sampled_logits(const TensorView& logits, const DeviceSamplingBatch& sampling,
                                               std::span<const int32_t> choice_sources) {
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  const int64_t total = rows + static_cast<int64_t>(choice_sources.size());
  if (sampling.rows.size() != static_cast<size_t>(total)) {
    return InvalidArgument("runner: {} sampling rows for {} logits rows and {} extra choices", sampling.rows.size(),
                           rows, choice_sources.size());
  }
  if (choice_sources.empty()) return logits;
  for (size_t k = 0; k < choice_sources.size(); ++k) {
    const int32_t source = choice_sources[k];
    if (source < 0 || source >= rows || (k > 0 && source < choice_sources[k - 1]))
      return InvalidArgument("runner: choice source {} out of order or outside {} rows", source, rows);
  }
  if (logits.dtype != DType::kF32) return InvalidArgument("runner: logits must be f32");
  // A separate buffer: the decode graphs' logits have no room for more rows. The copies
  // are stream-ordered after the forward pass, and a fork happens once per request.
  const size_t row_bytes = static_cast<size_t>(vocab) * sizeof(float);
  const size_t bytes = static_cast<size_t>(total) * row_bytes;
  if (choices_buffer_.size() < bytes) {
    ASSIGN_OR_RETURN(choices_buffer_, backend_.allocate(bytes));
  }
  TensorView out = choices_buffer_.view(DType::kF32, {total, vocab});
  RETURN_IF_ERROR(backend_.copy_on_device(out.data, logits.data, static_cast<size_t>(rows) * row_bytes));
  int64_t row = rows;
  for (const int32_t source : choice_sources) {
    RETURN_IF_ERROR(backend_.copy_on_device(out.slice_rows(row, row + 1).data,
                                            logits.slice_rows(source, source + 1).data, row_bytes));
    ++row;
  }
  return out;
}

Status ModelRunner::warm_up(std::span<const int64_t> token_counts, int32_t max_len) {
  if (max_len <= 0) return InvalidArgument("runner: warm-up sequences need max_len > 0");
  const int64_t block = kv_cache_.block_size();
  for (const int64_t count : token_counts) {
    SchedulerOutput output;
    for (int64_t done = 0; done < count; done += max_len) {
      ScheduledSequence seq;
      seq.request_id = static_cast<RequestId>(output.sequences.size());
      seq.token_ids.assign(static_cast<size_t>(std::min<int64_t>(max_len, count - done)), 0);
      seq.block_table.assign(static_cast<size_t>((static_cast<int64_t>(seq.token_ids.size()) + block - 1) / block), 0);
      seq.sample = true;
      output.sequences.push_back(std::move(seq));
    }
    output.num_tokens = static_cast<int32_t>(count);
    RETURN_IF_ERROR(forward_eagerly(output, nullptr).status());
  }
  return backend_.synchronize();
}

bool ModelRunner::can_launch(const SchedulerOutput& output) const {
  return backend_.supports_async_sampling() && !output.empty();
}

Result<TensorView> ModelRunner::forward(const SchedulerOutput& output, const TokenSource* source) {
  if (graphs_ != nullptr && graphs_->accepts(output.sequences))
    return graphs_->run(output.sequences, kv_cache_.layers(), source);
  return forward_eagerly(output, source);
}

Result<TensorView> ModelRunner::forward_eagerly(const SchedulerOutput& output, const TokenSource* source) {
  const std::span<const int32_t> source_rows = source != nullptr ? source->rows : std::span<const int32_t>();
  RETURN_IF_ERROR(inputs_.build(backend_, output.sequences, static_cast<int32_t>(kv_cache_.block_size()),
                                /*all_logits=*/false, source_rows));
  if (source != nullptr) {
    RETURN_IF_ERROR(backend_.select_tokens(inputs_.input().token_ids, source->from, inputs_.token_sources()));
  }
  const int64_t rows = inputs_.num_logits_rows();
  const int64_t vocab = model_.config().vocab_size;
  // Logits are always f32 (the LM head writes f32 even from bf16 activations).
  const uint64_t bytes = *dtype_bytes(DType::kF32, static_cast<uint64_t>(std::max<int64_t>(rows, 1) * vocab));
  if (logits_buffer_.size() < bytes) {
    ASSIGN_OR_RETURN(logits_buffer_, backend_.allocate(bytes));
  }
  TensorView logits = logits_buffer_.view(DType::kF32, {rows, vocab});
  RETURN_IF_ERROR(model_.forward(inputs_.input(), kv_cache_.layers(), logits));
  return logits;
}

Result<ModelRunner::PendingStep> ModelRunner::launch(const SchedulerOutput& output, const DeviceSamplingBatch& sampling,
                                                     const TokenSource* source,
                                                     std::span<const int32_t> choice_sources) {
  if (!can_launch(output)) return FailedPrecondition("runner: this step cannot be launched asynchronously");
  PendingStep step;
  step.output.vocab_size = model_.config().vocab_size;
  for (const ScheduledSequence& seq : output.sequences) {
    if (seq.sample) step.output.request_ids.push_back(seq.request_id);
  }
  if (sampling.rows.size() != step.output.request_ids.size() + choice_sources.size()) {
    return InvalidArgument("runner: {} sampling rows for {} sampled sequences and {} extra choices",
                           sampling.rows.size(), step.output.request_ids.size(), choice_sources.size());
  }
  if (source != nullptr && source->rows.size() != output.sequences.size()) {
    return InvalidArgument("runner: {} token source rows for {} sequences", source->rows.size(),
                           output.sequences.size());
  }
  if (!output.block_copies.empty()) RETURN_IF_ERROR(kv_cache_.copy_blocks(backend_, output.block_copies));
  ASSIGN_OR_RETURN(TensorView logits, forward(output, source));
  // A step that samples nothing (a prompt chunk) has nothing to wait for.
  if (!sampling.rows.empty()) {
    ASSIGN_OR_RETURN(TensorView sampled, sampled_logits(logits, sampling, choice_sources));
    ASSIGN_OR_RETURN(step.sample, backend_.sample_async(sampled, sampling));
    step.output.choice_sources.assign(choice_sources.begin(), choice_sources.end());
  }
  return step;
}

Result<RunnerOutput> ModelRunner::wait(PendingStep step) {
  RunnerOutput& out = step.output;
  out.sampled.resize(out.request_ids.size() + out.choice_sources.size());
  if (step.sample.logprobs) out.logprobs.resize(out.sampled.size() * kLogprobsRecord);
  if (!out.sampled.empty()) RETURN_IF_ERROR(backend_.wait_sampled(step.sample, out.sampled, out.logprobs));
  return std::move(step.output);
}

Result<RunnerOutput> ModelRunner::execute(const SchedulerOutput& output, const DeviceSamplingBatch* sampling,
                                          std::span<const int32_t> host_rows, std::span<const int32_t> choice_sources) {
  RunnerOutput result;
  result.vocab_size = model_.config().vocab_size;
  if (!output.block_copies.empty()) RETURN_IF_ERROR(kv_cache_.copy_blocks(backend_, output.block_copies));
  if (output.empty()) return result;
  for (const ScheduledSequence& seq : output.sequences) {
    if (seq.sample) result.request_ids.push_back(seq.request_id);
  }
  ASSIGN_OR_RETURN(TensorView logits, forward(output, nullptr));
  RETURN_IF_ERROR(finish(logits, sampling, host_rows, choice_sources, &result));
  result.choice_sources.assign(choice_sources.begin(), choice_sources.end());
  return result;
}

}  // namespace bw
