// CudaBackend::sample: validation, the staging of the rows and the penalty history, the
// kernel launch (cuda_sampling.cu) and the read-back of the ids.
//
// Staging layout (the same in the pinned host buffer and its device copy):
//   [rows x SamplingRowArgs][penalty tokens, i32][penalty output counts, i32]
//   [bias tokens, i32][bias values, f32][ids out, i32][log-probability records out]
// The first five parts go up in one copy; the ids and records come back in one copy (the
// records only when some row asks for them).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <span>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/cuda_step_timing.h"

namespace bw {

namespace {

constexpr size_t kAlign = 256;
static_assert(sizeof(DeviceTokenLogprob) == sizeof(cuda::LogprobEntry) && cuda::kLogprobsRecord == kLogprobsRecord,
              "the kernel writes the records Backend::sample returns");

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

Status check_row(size_t r, const DeviceSamplingRow& row, const AsyncSample& pending) {
  if (std::isnan(row.temperature) || std::isinf(row.temperature)) {
    return InvalidArgument("sample: rows[{}].temperature {} must be a finite number", r, row.temperature);
  }
  if (!(row.top_p > 0.0f && row.top_p <= 1.0f)) {
    return InvalidArgument("sample: rows[{}].top_p {} must be in (0, 1]", r, row.top_p);
  }
  if (!(row.min_p >= 0.0f && row.min_p <= 1.0f)) {
    return InvalidArgument("sample: rows[{}].min_p {} must be in [0, 1]", r, row.min_p);
  }
  if (!(row.repetition_penalty > 0.0f) || std::isinf(row.repetition_penalty)) {
    return InvalidArgument("sample: rows[{}].repetition_penalty {} must be positive and finite", r,
                           row.repetition_penalty);
  }
  if (!std::isfinite(row.presence_penalty) || !std::isfinite(row.frequency_penalty)) {
    return InvalidArgument("sample: rows[{}] presence_penalty {} and frequency_penalty {} must be finite", r,
                           row.presence_penalty, row.frequency_penalty);
  }
  if (row.logprobs < -1 || row.logprobs > kMaxDeviceTopLogprobs) {
    return InvalidArgument("sample: rows[{}].logprobs {} must be in [-1, {}]", r, row.logprobs, kMaxDeviceTopLogprobs);
  }
  if (row.pending_row >= 0 && (pending.ids == nullptr || row.pending_row >= pending.rows)) {
    return InvalidArgument("sample: rows[{}].pending_row {} is not a row of the pending sample ({} rows)", r,
                           row.pending_row, pending.ids == nullptr ? 0 : pending.rows);
  }
  return OkStatus();
}

// A CSR list's offsets: empty (then no entries), or rows + 1 of them, non-decreasing, from
// 0 to num_entries. `what` names the list in the messages ("penalty", "bias").
Status check_offsets(std::string_view what, std::span<const int32_t> offsets, size_t num_entries, size_t rows) {
  if (num_entries > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return InvalidArgument("sample: {} {}_tokens are too many", num_entries, what);
  }
  if (offsets.empty()) {
    if (num_entries != 0) return InvalidArgument("sample: {}_tokens without {}_offsets", what, what);
    return OkStatus();
  }
  if (offsets.size() != rows + 1) {
    return InvalidArgument("sample: {}_offsets has {} entries; it must be empty or have rows + 1 = {}", what,
                           offsets.size(), rows + 1);
  }
  if (offsets.front() != 0 || static_cast<size_t>(offsets.back()) != num_entries) {
    return InvalidArgument("sample: {}_offsets must run from 0 to {} (the {}_tokens), got {} to {}", what, num_entries,
                           what, offsets.front(), offsets.back());
  }
  for (size_t r = 0; r < rows; ++r) {
    if (offsets[r + 1] < offsets[r]) {
      return InvalidArgument("sample: {}_offsets decreases at row {} ({} > {})", what, r, offsets[r], offsets[r + 1]);
    }
  }
  return OkStatus();
}

Status check_history(const DeviceSamplingBatch& batch, size_t rows, int64_t vocab) {
  const size_t num_tokens = batch.penalty_tokens.size();
  if (batch.penalty_output_counts.size() != num_tokens) {
    return InvalidArgument("sample: penalty_output_counts has {} entries for {} penalty_tokens",
                           batch.penalty_output_counts.size(), num_tokens);
  }
  RETURN_IF_ERROR(check_offsets("penalty", batch.penalty_offsets, num_tokens, rows));
  for (size_t j = 0; j < num_tokens; ++j) {
    if (batch.penalty_tokens[j] < 0 || batch.penalty_tokens[j] >= vocab) {
      return InvalidArgument("sample: penalty_tokens[{}] = {} is outside [0, {})", j, batch.penalty_tokens[j], vocab);
    }
    if (batch.penalty_output_counts[j] < 0) {
      return InvalidArgument("sample: penalty_output_counts[{}] = {} is negative", j, batch.penalty_output_counts[j]);
    }
  }
  return OkStatus();
}

// The logit bias: CSR as the penalty history, tokens distinct per row (each logit has
// one writer in the kernel), values finite.
Status check_bias(const DeviceSamplingBatch& batch, size_t rows, int64_t vocab) {
  const auto& offsets = batch.bias_offsets;
  const size_t num_tokens = batch.bias_tokens.size();
  if (batch.bias_values.size() != num_tokens) {
    return InvalidArgument("sample: bias_values has {} entries for {} bias_tokens", batch.bias_values.size(),
                           num_tokens);
  }
  RETURN_IF_ERROR(check_offsets("bias", offsets, num_tokens, rows));
  std::vector<int32_t> sorted;
  for (size_t r = 0; r + 1 < offsets.size(); ++r) {
    sorted.assign(batch.bias_tokens.begin() + offsets[r], batch.bias_tokens.begin() + offsets[r + 1]);
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
      return InvalidArgument("sample: row {} lists a bias token twice", r);
    }
    if (!sorted.empty() && (sorted.front() < 0 || sorted.back() >= vocab)) {
      return InvalidArgument("sample: row {} has a bias token outside [0, {})", r, vocab);
    }
  }
  for (size_t j = 0; j < num_tokens; ++j) {
    if (!std::isfinite(batch.bias_values[j])) {
      return InvalidArgument("sample: bias_values[{}] = {} is not finite", j, batch.bias_values[j]);
    }
  }
  return OkStatus();
}

// Calls of up to this many rows split their top-k and top-p draws: refined bounds and the
// radix select let the split path gather a top-k set, and cut a flat row's top-p set, that
// one block a row selects by radix passes; and one block a row takes as long as its slowest
// row, so one uncertain top-p row costs the whole call ~500-800 us there (docs/PERF.md,
// twentieth to twenty-third sessions; 256 rows, top-k 316-431 us against 463-506; top-p
// 325-335 against 725-784 when every 16th row is flat, 195-541 against 208-840 for sharp,
// peaked, flat or tail rows; at 128 rows only peaked top-p rows lose, 216-219 against
// 178-180).
constexpr int64_t kSplitRowsWithCut = 256;

// Whether one block a row samples the row about as fast as the split path once a call has
// more than kSplitRowsWithCandidates rows: a draw from a top-k or top-p set in a call of
// more than kSplitRowsWithCut rows, or a greedy row's top log-probabilities (a draw with
// log-probabilities costs one block a row a copy of the row and more passes: the split
// path is faster at any count).
bool per_row_competes(const cuda::SamplingRowArgs& a, int64_t vocab, int64_t rows) {
  const cuda::SamplingRowPlan plan = cuda::sampling_row_plan(a, vocab);
  return (plan.cut != cuda::SamplingCut::kNone && rows > kSplitRowsWithCut) || (!plan.draws && plan.top_logprobs > 0);
}

bool has_bias_or_penalties(const cuda::SamplingRowArgs& a) {
  return a.bias_end > a.bias_begin || cuda::sampling_applies_penalty(a);
}

}  // namespace

// Which kernels sample a call: the argmax alone when every row is greedy with nothing to
// change its logits or report; else each row split over many blocks (for calls of more than
// kSplitRowsWithCandidates rows only when no row is one that one block a row samples about
// as fast: per_row_competes), unless a row that reports log-probabilities also has a bias or
// penalties (the split path modifies rows in place); else one block a row.
CudaBackend::SamplePath CudaBackend::sample_path(std::span<const cuda::SamplingRowArgs> rows, int64_t vocab) const {
  if (rows.size() > 65535) return SamplePath::kPerRow;  // the split grids' y dimension holds the rows
  if (std::none_of(rows.begin(), rows.end(),
                   [](const cuda::SamplingRowArgs& a) { return cuda::sampling_modifies_row(a) || a.logprobs >= 0; })) {
    return SamplePath::kArgmax;
  }
  if (sample_split_rows_with_candidates_ < 0) return SamplePath::kPerRow;
  if (std::any_of(rows.begin(), rows.end(),
                  [](const cuda::SamplingRowArgs& a) { return a.logprobs >= 0 && has_bias_or_penalties(a); })) {
    return SamplePath::kPerRow;
  }
  if (static_cast<int64_t>(rows.size()) <= sample_split_rows_with_candidates_) return SamplePath::kSplit;
  const auto num_rows = static_cast<int64_t>(rows.size());
  const bool competes = std::any_of(
      rows.begin(), rows.end(), [&](const cuda::SamplingRowArgs& a) { return per_row_competes(a, vocab, num_rows); });
  return competes ? SamplePath::kPerRow : SamplePath::kSplit;
}

Status CudaBackend::sample(std::span<int32_t> tokens, TensorView logits, const DeviceSamplingBatch& batch,
                           std::span<DeviceTokenLogprob> logprobs) {
  if (logits.dtype == DType::kF32 && logits.rank() == 2 && logits.dim(0) == 0) {
    if (!tokens.empty() || !batch.rows.empty()) {
      return InvalidArgument("sample: {} tokens and {} rows of parameters for 0 logits rows", tokens.size(),
                             batch.rows.size());
    }
    RETURN_IF_ERROR(sticky_);
    return OkStatus();
  }
  if (logits.rank() == 2 && tokens.size() != static_cast<size_t>(std::max<int64_t>(logits.dim(0), 0))) {
    return InvalidArgument("sample: {} tokens and {} rows of parameters for logits {}: each must be {}", tokens.size(),
                           batch.rows.size(), logits.shape.to_string(), logits.dim(0));
  }
  ASSIGN_OR_RETURN(AsyncSample pending, sample_async(logits, batch));
  return wait_sampled(pending, tokens, logprobs);
}

Status CudaBackend::reserve_sample_staging(SampleStaging& slot, size_t host_bytes, size_t dev_bytes) {
  if (slot.done == nullptr) BW_CUDA_TRY(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming));
  // The slot's last sampling (two calls ago) must be done with its host memory.
  BW_CUDA_TRY(cudaEventSynchronize(slot.done));
  if (slot.host_capacity < host_bytes) {
    if (slot.host != nullptr) {
      const cudaError_t err = cudaFreeHost(slot.host);
      slot.host = nullptr;
      slot.host_capacity = 0;
      if (err != cudaSuccess) return fail(static_cast<int>(err), "cudaFreeHost", __FILE__, __LINE__);
    }
    const size_t want = std::max(host_bytes, size_t{64} << 10);
    const auto since = first_use_start();
    const cudaError_t err = cudaHostAlloc(&slot.host, want, cudaHostAllocDefault);
    if (err != cudaSuccess) {
      slot.host = nullptr;
      cudaGetLastError();
      return ResourceExhausted("sample: cannot allocate {} bytes of pinned host memory: {}", want,
                               cudaGetErrorString(err));
    }
    slot.host_capacity = want;
    if (log_first_use_) log_first_use(fmt::format("sample staging grown to {} bytes", want), since);
  }
  if (slot.dev_capacity < dev_bytes) {
    if (slot.dev != nullptr) {
      const cudaError_t err = cudaFreeAsync(slot.dev, stream_);
      slot.dev = nullptr;
      slot.dev_capacity = 0;
      if (err != cudaSuccess) return fail(static_cast<int>(err), "cudaFreeAsync", __FILE__, __LINE__);
    }
    const size_t want = std::max(dev_bytes, slot.host_capacity);
    const cudaError_t err = cudaMallocAsync(&slot.dev, want, stream_);
    if (err != cudaSuccess) {
      slot.dev = nullptr;
      return fail(static_cast<int>(err), "cudaMallocAsync (sample staging)", __FILE__, __LINE__);
    }
    slot.dev_capacity = want;
  }
  return OkStatus();
}

Result<AsyncSample> CudaBackend::sample_async(TensorView logits, const DeviceSamplingBatch& batch) {
  RETURN_IF_ERROR(sticky_);
  RETURN_IF_ERROR(not_while_capturing("sample"));
  if (logits.dtype != DType::kF32 || logits.rank() != 2 || logits.dim(0) < 0 || logits.dim(1) < 0) {
    return InvalidArgument("sample: logits {} {} must be [rows, V] f32", logits.shape.to_string(),
                           dtype_name(logits.dtype));
  }
  const int64_t rows = logits.dim(0);
  const int64_t vocab = logits.dim(1);
  if (rows == 0) return InvalidArgument("sample: logits {} has no rows", logits.shape.to_string());
  if (vocab <= 0 || vocab > std::numeric_limits<int32_t>::max()) {
    return InvalidArgument("sample: logits {} must have between 1 and 2^31 - 1 columns", logits.shape.to_string());
  }
  if (rows > std::numeric_limits<int32_t>::max()) {
    return InvalidArgument("sample: logits {} has too many rows", logits.shape.to_string());
  }
  if (logits.data == nullptr) return InvalidArgument("sample: logits has no data");
  const auto num_rows = static_cast<size_t>(rows);
  if (batch.rows.size() != num_rows) {
    return InvalidArgument("sample: {} rows of parameters for logits {}: it must be {}", batch.rows.size(),
                           logits.shape.to_string(), rows);
  }
  for (size_t r = 0; r < num_rows; ++r)
    RETURN_IF_ERROR(check_row(r, batch.rows[r], batch.pending));
  RETURN_IF_ERROR(check_history(batch, num_rows, vocab));
  RETURN_IF_ERROR(check_bias(batch, num_rows, vocab));

  // Staging: the same layout on both sides.
  const size_t num_history = batch.penalty_tokens.size();
  const size_t num_bias = batch.bias_tokens.size();
  const bool any_logprobs = wants_logprobs(batch);
  const size_t args_bytes = align_up(num_rows * sizeof(cuda::SamplingRowArgs));
  const size_t history_bytes = align_up(2 * num_history * sizeof(int32_t));
  const size_t bias_bytes = align_up(num_bias * (sizeof(int32_t) + sizeof(float)));
  const size_t upload_bytes = args_bytes + history_bytes + bias_bytes;
  const size_t ids_bytes = align_up(num_rows * sizeof(int32_t));
  const size_t records_bytes = any_logprobs ? align_up(num_rows * kLogprobsRecord * sizeof(DeviceTokenLogprob)) : 0;
  // Device only, after the ids and records: the split paths' workspace.
  const size_t host_bytes = upload_bytes + ids_bytes + records_bytes;
  const size_t dev_bytes = host_bytes + align_up(static_cast<size_t>(cuda::split_sample_workspace_bytes(rows, vocab)));
  const int slot_index = next_sample_slot_;
  SampleStaging& slot = sample_staging_[slot_index];
  RETURN_IF_ERROR(reserve_sample_staging(slot, host_bytes, dev_bytes));
  next_sample_slot_ ^= 1;

  auto* host = static_cast<char*>(slot.host);
  auto* args = reinterpret_cast<cuda::SamplingRowArgs*>(host);
  int32_t work_rows = 0;
  for (size_t r = 0; r < num_rows; ++r) {
    const DeviceSamplingRow& row = batch.rows[r];
    cuda::SamplingRowArgs& a = args[r];
    a = cuda::SamplingRowArgs{};
    a.temperature = row.temperature;
    a.top_k = row.top_k;
    a.top_p = row.top_p;
    a.min_p = row.min_p;
    a.repetition_penalty = row.repetition_penalty;
    a.presence_penalty = row.presence_penalty;
    a.frequency_penalty = row.frequency_penalty;
    a.penalty_begin = batch.penalty_offsets.empty() ? 0 : batch.penalty_offsets[r];
    a.penalty_end = batch.penalty_offsets.empty() ? 0 : batch.penalty_offsets[r + 1];
    a.pending_row = row.pending_row;
    a.bias_begin = batch.bias_offsets.empty() ? 0 : batch.bias_offsets[r];
    a.bias_end = batch.bias_offsets.empty() ? 0 : batch.bias_offsets[r + 1];
    a.logprobs = row.logprobs;
    a.work_row = row.logprobs >= 0 && cuda::sampling_modifies_row(a) ? work_rows++ : -1;
    a.seed = row.seed;
    a.step = row.step;
  }
  char* history = host + args_bytes;
  if (num_history > 0) {
    std::memcpy(history, batch.penalty_tokens.data(), num_history * sizeof(int32_t));
    std::memcpy(history + num_history * sizeof(int32_t), batch.penalty_output_counts.data(),
                num_history * sizeof(int32_t));
  }
  char* bias = history + history_bytes;
  if (num_bias > 0) {
    std::memcpy(bias, batch.bias_tokens.data(), num_bias * sizeof(int32_t));
    std::memcpy(bias + num_bias * sizeof(int32_t), batch.bias_values.data(), num_bias * sizeof(float));
  }
  // Copies of the raw rows that sampling modifies but log-probabilities still read: in
  // stream order, so one buffer serves every call (a smaller one is freed after its last
  // kernel).
  const size_t work_bytes = static_cast<size_t>(work_rows) * static_cast<size_t>(vocab) * sizeof(float);
  if (sample_work_capacity_ < work_bytes) {
    if (sample_work_ != nullptr) BW_CUDA_TRY(cudaFreeAsync(sample_work_, stream_));
    sample_work_ = nullptr;
    sample_work_capacity_ = 0;
    const cudaError_t err = cudaMallocAsync(&sample_work_, work_bytes, stream_);
    if (err != cudaSuccess) {
      sample_work_ = nullptr;
      cudaGetLastError();
      return ResourceExhausted("sample: cannot allocate {} bytes of GPU memory for {} rows with log-probabilities: {}",
                               work_bytes, work_rows, cudaGetErrorString(err));
    }
    sample_work_capacity_ = work_bytes;
  }
  auto* dev = static_cast<char*>(slot.dev);
  const cudaError_t up = cudaMemcpyAsync(dev, host, upload_bytes, cudaMemcpyHostToDevice, stream_);
  if (up != cudaSuccess) return fail(static_cast<int>(up), "cudaMemcpyAsync (sample upload)", __FILE__, __LINE__);
  const auto* dev_history = reinterpret_cast<const int32_t*>(dev + args_bytes);
  const char* dev_bias = dev + args_bytes + history_bytes;
  auto* dev_out = reinterpret_cast<int32_t*>(dev + upload_bytes);
  cuda::SampleKernelArgs k;
  k.out = dev_out;
  k.logits = static_cast<float*>(logits.data);
  k.rows = rows;
  k.vocab = vocab;
  k.row_args = reinterpret_cast<const cuda::SamplingRowArgs*>(dev);
  k.penalty_tokens = dev_history;
  k.penalty_output_counts = dev_history + num_history;
  k.pending_ids = batch.pending.ids;
  k.bias_tokens = reinterpret_cast<const int32_t*>(dev_bias);
  k.bias_values = reinterpret_cast<const float*>(dev_bias + num_bias * sizeof(int32_t));
  k.logprobs_out = any_logprobs ? reinterpret_cast<cuda::LogprobEntry*>(dev + upload_bytes + ids_bytes) : nullptr;
  k.work = static_cast<float*>(sample_work_);
  k.shared_select = sample_shared_select_;
  void* split_workspace = dev + upload_bytes + ids_bytes + records_bytes;
  cudaError_t launched = cudaSuccess;
  last_split_done_ = nullptr;
  switch (sample_path(std::span(args, num_rows), vocab)) {
    case SamplePath::kArgmax:
      launched = cuda::launch_greedy_argmax(dev_out, k.logits, rows, vocab, split_workspace, num_sms_, stream_);
      break;
    case SamplePath::kSplit: {
      cuda::SplitSampleCall call;
      for (size_t r = 0; r < num_rows; ++r) {
        const cuda::SamplingRowArgs& a = args[r];
        const cuda::SamplingRowPlan plan = cuda::sampling_row_plan(a, vocab);
        call.bias_or_penalties |= has_bias_or_penalties(a);
        call.near |= plan.near();
        call.floors |= plan.cut == cuda::SamplingCut::kTopP;
        call.logprobs |= plan.top_logprobs >= 0;
        call.gathers |= plan.gathers();
        call.cuts |= plan.cut != cuda::SamplingCut::kNone;
      }
      launched = cuda::launch_split_sample(k, call, split_workspace, num_sms_, stream_);
      last_split_done_ = cuda::split_sample_done_flags(split_workspace, rows, vocab);
      last_split_rows_ = rows;
      break;
    }
    case SamplePath::kPerRow:
      launched = cuda::launch_sample(k, stream_);
      break;
  }
  RETURN_IF_ERROR(check_launch(static_cast<int>(launched), "sample"));
  // The ids and the records after them come back in one copy.
  const size_t down_bytes =
      any_logprobs ? ids_bytes + num_rows * kLogprobsRecord * sizeof(DeviceTokenLogprob) : num_rows * sizeof(int32_t);
  const cudaError_t down = cudaMemcpyAsync(host + upload_bytes, dev_out, down_bytes, cudaMemcpyDeviceToHost, stream_);
  if (down != cudaSuccess) return fail(static_cast<int>(down), "cudaMemcpyAsync (sample ids)", __FILE__, __LINE__);
  BW_CUDA_TRY(cudaEventRecord(slot.done, stream_));
  slot.ids_offset = upload_bytes;
  slot.logprobs_offset = any_logprobs ? upload_bytes + ids_bytes : 0;
  if (step_timing_ != nullptr) step_timing_->on_sample_enqueued(stream_);
  return AsyncSample{dev_out, rows, slot_index, any_logprobs};
}

Result<std::vector<int32_t>> CudaBackend::last_split_rows_done() {
  std::vector<int32_t> done;
  if (last_split_done_ == nullptr) return done;
  done.resize(static_cast<size_t>(last_split_rows_));
  BW_CUDA_TRY(cudaStreamSynchronize(stream_));
  BW_CUDA_TRY(cudaMemcpy(done.data(), last_split_done_, done.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
  return done;
}

Status CudaBackend::wait_sampled(const AsyncSample& sample, std::span<int32_t> tokens,
                                 std::span<DeviceTokenLogprob> logprobs) {
  RETURN_IF_ERROR(sticky_);
  if (sample.slot < 0 || sample.slot > 1 || sample.rows <= 0) {
    return InvalidArgument("wait_sampled: not a pending sample (slot {}, {} rows)", sample.slot, sample.rows);
  }
  if (tokens.size() != static_cast<size_t>(sample.rows)) {
    return InvalidArgument("wait_sampled: {} tokens for {} sampled rows", tokens.size(), sample.rows);
  }
  const size_t num_records = static_cast<size_t>(sample.rows) * kLogprobsRecord;
  if (sample.logprobs && logprobs.size() != num_records) {
    return InvalidArgument("wait_sampled: {} log-probability entries for {} rows; it must be {}", logprobs.size(),
                           sample.rows, num_records);
  }
  const SampleStaging& slot = sample_staging_[sample.slot];
  BW_CUDA_TRY(cudaEventSynchronize(slot.done));
  if (step_timing_ != nullptr) step_timing_->on_sample_done();
  RETURN_IF_ERROR(take_kernel_error());
  std::memcpy(tokens.data(), static_cast<const char*>(slot.host) + slot.ids_offset, tokens.size() * sizeof(int32_t));
  if (sample.logprobs) {
    // Only what the rows asked for is written: other entries keep what the caller had.
    const auto* records =
        reinterpret_cast<const DeviceTokenLogprob*>(static_cast<const char*>(slot.host) + slot.logprobs_offset);
    const auto* args = static_cast<const cuda::SamplingRowArgs*>(slot.host);
    for (size_t r = 0; r < static_cast<size_t>(sample.rows); ++r) {
      if (args[r].logprobs >= 0) {
        std::copy_n(records + r * kLogprobsRecord, 1 + args[r].logprobs, logprobs.begin() + r * kLogprobsRecord);
      }
    }
  }
  return OkStatus();
}

}  // namespace bw
