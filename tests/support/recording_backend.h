// RecordingBackend: a Backend that stands in for CUDA graphs (and, optionally, for device
// sampling) on top of another backend, so CPU tests reach the code paths that only a GPU
// takes otherwise: capture() records each op with its arguments instead of running it, and
// the replay runs the list again (reading the buffers' current contents, as a graph does).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "support/device_penalties.h"

namespace bw::test {

// Forwards to `inner`; inside capture() it records each op (arguments by value) instead.
class RecordingBackend final : public Backend {
 public:
  // kEmulated adds a stand-in for device sampling, synchronous and asynchronous, on
  // host-memory logits: the bias and penalties as the CUDA kernel applies them (a row's
  // pending token read from the earlier sample's ids) and its log-probability records of
  // the raw rows, then greedy rows take the argmax (lowest id
  // on ties), others the Gumbel-max draw of logits / temperature seeded by (seed, step,
  // id); top-k, top-p and min-p are ignored. Not the real distribution: enough for the
  // engine's overlapped steps (which need asynchronous sampling) to run in CPU tests.
  enum class Sampling { kNone, kEmulated };
  explicit RecordingBackend(Backend& inner, Sampling sampling = Sampling::kNone)
      : inner_(inner), emulate_sampling_(sampling == Sampling::kEmulated) {}

  std::string name() const override { return "recording(" + inner_.name() + ")"; }
  DType activation_dtype() const override { return inner_.activation_dtype(); }
  bool is_host_memory() const override { return inner_.is_host_memory(); }

  Result<DeviceBuffer> allocate(size_t bytes) override {
    RETURN_IF_ERROR(not_recording("allocate"));
    return inner_.allocate(bytes);
  }
  Status copy_to_device(void* dst, const void* src, size_t bytes) override {
    RETURN_IF_ERROR(not_recording("copy_to_device"));
    return inner_.copy_to_device(dst, src, bytes);
  }
  Status copy_to_host(void* dst, const void* src, size_t bytes) override {
    RETURN_IF_ERROR(not_recording("copy_to_host"));
    return inner_.copy_to_host(dst, src, bytes);
  }
  Status copy_on_device(void* dst, const void* src, size_t bytes) override {
    RETURN_IF_ERROR(not_recording("copy_on_device"));
    return inner_.copy_on_device(dst, src, bytes);
  }
  Status synchronize() override {
    RETURN_IF_ERROR(not_recording("synchronize"));
    return inner_.synchronize();
  }

  Status embedding(TensorView out, const TensorView& table, const TensorView& ids) override {
    return op([=, this] { return inner_.embedding(out, table, ids); });
  }
  Status matmul(TensorView out, const TensorView& x, const TensorView& w, const TensorView& bias) override {
    return op([=, this] { return inner_.matmul(out, x, w, bias); });
  }
  Status rms_norm(TensorView out, const TensorView& x, const TensorView& weight, float eps) override {
    return op([=, this] { return inner_.rms_norm(out, x, weight, eps); });
  }
  Status add_rms_norm(TensorView out, TensorView residual, const TensorView& x, const TensorView& weight,
                      float eps) override {
    return op([=, this] { return inner_.add_rms_norm(out, residual, x, weight, eps); });
  }
  Status add(TensorView out, const TensorView& a, const TensorView& b) override {
    return op([=, this] { return inner_.add(out, a, b); });
  }
  Status rope_write_kv(TensorView qkv, const AttentionParams& attn, const RopeParams& rope,
                       const AttentionMetadata& meta, const KvCacheLayer& cache) override {
    return op([=, this] { return inner_.rope_write_kv(qkv, attn, rope, meta, cache); });
  }
  Status paged_attention(TensorView out, const TensorView& qkv, const AttentionParams& attn,
                         const AttentionMetadata& meta, const KvCacheLayer& cache) override {
    return op([=, this] { return inner_.paged_attention(out, qkv, attn, meta, cache); });
  }
  Status silu_mul(TensorView out, const TensorView& gate_up) override {
    return op([=, this] { return inner_.silu_mul(out, gate_up); });
  }

  bool supports_graphs() const override { return true; }
  Result<std::unique_ptr<CapturedGraph>> capture(const std::function<Status()>& body) override {
    recording_ = true;
    ops_.clear();
    const Status status = body();
    recording_ = false;
    RETURN_IF_ERROR(status);
    ++captures;
    return std::unique_ptr<CapturedGraph>(new Replay(this, std::move(ops_)));
  }

  bool supports_device_sampling() const override { return emulate_sampling_; }
  Status sample(std::span<int32_t> tokens, TensorView logits, const DeviceSamplingBatch& batch,
                std::span<DeviceTokenLogprob> logprobs = {}) override {
    ASSIGN_OR_RETURN(AsyncSample pending, sample_async(logits, batch));
    return wait_sampled(pending, tokens, logprobs);
  }
  bool supports_async_sampling() const override { return emulate_sampling_; }
  Result<AsyncSample> sample_async(TensorView logits, const DeviceSamplingBatch& batch) override {
    if (!emulate_sampling_) return Backend::sample_async(logits, batch);
    RETURN_IF_ERROR(not_recording("sample"));
    const int64_t rows = logits.dim(0), vocab = logits.dim(1);
    if (logits.dtype != DType::kF32 || static_cast<int64_t>(batch.rows.size()) != rows || rows == 0) {
      return InvalidArgument("recording: sample of {} rows with {} rows of parameters", rows, batch.rows.size());
    }
    const int slot = next_slot_;
    next_slot_ ^= 1;
    std::vector<int32_t>& ids = sampled_[slot];
    ids.resize(static_cast<size_t>(rows));
    std::vector<DeviceTokenLogprob>& records = records_[slot];
    records.assign(static_cast<size_t>(rows) * kLogprobsRecord, DeviceTokenLogprob{});
    record_sizes_[slot].assign(static_cast<size_t>(rows), 0);
    bool any_logprobs = false;
    for (int64_t r = 0; r < rows; ++r) {
      const size_t i = static_cast<size_t>(r);
      const float* row_logits = logits.as<const float>() + r * vocab;
      penalized_.assign(row_logits, row_logits + vocab);
      apply_device_bias(penalized_, batch, i);
      apply_device_penalties(penalized_, batch, i);
      ids[i] = pick(penalized_.data(), vocab, batch.rows[i]);
      if (batch.rows[i].logprobs >= 0) {
        any_logprobs = true;
        record_sizes_[slot][i] = 1 + batch.rows[i].logprobs;
        device_logprobs_record(std::span(row_logits, static_cast<size_t>(vocab)), ids[i], batch.rows[i].logprobs,
                               std::span(records).subspan(i * kLogprobsRecord, kLogprobsRecord));
      }
    }
    ++async_samples;
    return AsyncSample{ids.data(), rows, slot, any_logprobs};
  }
  Status wait_sampled(const AsyncSample& pending, std::span<int32_t> tokens,
                      std::span<DeviceTokenLogprob> logprobs = {}) override {
    if (!emulate_sampling_) return Backend::wait_sampled(pending, tokens, logprobs);
    if (pending.slot < 0 || pending.slot > 1 || tokens.size() != static_cast<size_t>(pending.rows))
      return InvalidArgument("recording: wait_sampled of {} rows into {} tokens", pending.rows, tokens.size());
    std::copy_n(sampled_[pending.slot].begin(), tokens.size(), tokens.begin());
    if (pending.logprobs) {
      const std::vector<DeviceTokenLogprob>& records = records_[pending.slot];
      if (logprobs.size() != records.size())
        return InvalidArgument("recording: {} log-probability entries for {} rows", logprobs.size(), pending.rows);
      // As the CUDA backend: only the entries each row asked for.
      for (size_t r = 0; r < static_cast<size_t>(pending.rows); ++r) {
        const int32_t n = record_sizes_[pending.slot][r];
        std::copy_n(records.begin() + r * kLogprobsRecord, n, logprobs.begin() + r * kLogprobsRecord);
      }
    }
    return OkStatus();
  }
  Status select_tokens(TensorView ids, const AsyncSample& from, const TensorView& rows) override {
    if (!emulate_sampling_) return Backend::select_tokens(ids, from, rows);
    RETURN_IF_ERROR(not_recording("select_tokens"));
    if (from.ids == nullptr || from.rows <= 0) return InvalidArgument("recording: select_tokens from no sampled ids");
    for (int64_t i = 0; i < ids.dim(0); ++i) {
      const int32_t r = rows.as<const int32_t>()[i];
      if (r >= 0 && r < from.rows) ids.as<int32_t>()[i] = from.ids[r];
    }
    ++selects;
    return OkStatus();
  }

  int64_t captures = 0;
  int64_t replays = 0;
  int64_t recorded_ops = 0;
  int64_t async_samples = 0;
  int64_t selects = 0;

 protected:
  void free(void* /*data*/, size_t /*bytes*/) override {}  // buffers belong to inner_

 private:
  class Replay final : public CapturedGraph {
   public:
    Replay(RecordingBackend* owner, std::vector<std::function<Status()>> ops) : owner_(owner), ops_(std::move(ops)) {}
    Status replay() override {
      ++owner_->replays;
      for (const auto& f : ops_)
        RETURN_IF_ERROR(f());
      return OkStatus();
    }

   private:
    RecordingBackend* owner_;
    std::vector<std::function<Status()>> ops_;
  };

  Status not_recording(const char* what) const {
    if (!recording_) return OkStatus();
    return FailedPrecondition("recording: {} inside a capture", what);
  }
  Status op(std::function<Status()> f) {
    if (!recording_) return f();
    ops_.push_back(std::move(f));
    ++recorded_ops;
    return OkStatus();
  }

  static int32_t pick(const float* logits, int64_t vocab, const DeviceSamplingRow& row) {
    int32_t best = 0;
    double best_score = -std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < vocab; ++i) {
      double score = logits[i];
      if (row.temperature > 0.0f) {
        // A uniform in (0, 1) from (seed, step, id): splitmix64.
        uint64_t z = row.seed * 0x9E3779B97F4A7C15ull + row.step * 0xBF58476D1CE4E5B9ull + static_cast<uint64_t>(i);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const double u = (static_cast<double>(z >> 11) + 0.5) / 9007199254740992.0;
        score = score / row.temperature - std::log(-std::log(u));
      }
      if (score > best_score) {
        best_score = score;
        best = static_cast<int32_t>(i);
      }
    }
    return best;
  }

  Backend& inner_;
  bool emulate_sampling_ = false;
  bool recording_ = false;
  std::vector<std::function<Status()>> ops_;
  std::vector<int32_t> sampled_[2];             // the ids of the last two sample_async calls
  std::vector<DeviceTokenLogprob> records_[2];  // and their log-probability records
  std::vector<int32_t> record_sizes_[2];        // entries written per row
  std::vector<float> penalized_;                // scratch: one row's logits with its penalties
  int next_slot_ = 0;
};

}  // namespace bw::test
