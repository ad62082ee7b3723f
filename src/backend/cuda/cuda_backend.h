// CudaBackend: the Backend interface on one NVIDIA GPU.
//
// Memory is device memory from the stream-ordered allocator (cudaMallocAsync on the
// backend's one stream, with a pool that keeps freed memory cached), so a buffer freed
// while kernels still use it is reused only after they finish. Every op and copy is
// enqueued on that one stream in call order; copy_to_host and synchronize() wait for it.
//
// Activations are f32 or bf16: CudaBackendOptions::activation_dtype says which the model
// should allocate (f32 for f32 weights, "f32 mode", matching the CPU reference; bf16
// otherwise), and every op also accepts the other one, dispatching on the tensor dtype.
// Weights, tables and KV caches may be f32, f16 or bf16. Matmuls run through cuBLASLt
// (f32 accumulation; the bias added by a small kernel) when x and w share a dtype and
// M > 16, else through the backend's own GEMV kernel. A matmul may write f32 from bf16
// activations (the LM head: logits keep f32 precision and need no conversion).
//
// Errors: shape and dtype errors are InvalidArgument at the call, before anything is
// enqueued. Data-dependent errors (a token id outside the table, a bad block id or slot)
// are detected by the kernels, which skip the element and raise a flag; the next
// copy_to_host or synchronize() returns it as InvalidArgument. A CUDA error (illegal
// address, launch failure) is sticky: every later call returns it.
//
// Profiling: with BW_CUDA_PROFILE=1 in the environment every op is bracketed by CUDA
// events (GPU time per op, launches still asynchronous; graphs are off), and the per-op
// totals are printed to stderr when the backend is destroyed.
//
// Thread-safety: like every Backend, used by one thread at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "backend/backend.h"
#include "common/status.h"

struct CUstream_st;
struct CUevent_st;
struct cublasLtContext;

// Inside CudaBackend's members (its .cc files include cuda_runtime_api.h): returns the
// failed call as a Status through fail().
#define BW_CUDA_TRY(call)                                                                          \
  do {                                                                                             \
    const cudaError_t bw_err_ = (call);                                                            \
    if (bw_err_ != cudaSuccess) return fail(static_cast<int>(bw_err_), #call, __FILE__, __LINE__); \
  } while (0)

namespace bw {

namespace cuda {
struct RopeKvArgs;
struct DecoderStackArgs;
struct DecoderStackLayer;
struct SamplingRowArgs;
}  // namespace cuda
class CudaStepTiming;

struct CudaBackendOptions {
  int device = 0;
  DType activation_dtype = DType::kF32;  // f32 or bf16
};

class CudaBackend final : public Backend {
 public:
  // Unavailable when there is no such device (or no driver); InvalidArgument for an
  // activation dtype other than f32 / bf16.
  static Result<std::unique_ptr<CudaBackend>> create(const CudaBackendOptions& options);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override { return "cuda:" + std::to_string(options_.device); }
  DType activation_dtype() const override { return options_.activation_dtype; }
  bool is_host_memory() const override { return false; }
  std::string device_name() const { return device_name_; }
  // Free and total device memory now (cudaMemGetInfo).
  Status memory_info(uint64_t* free_bytes, uint64_t* total_bytes) const override;
  // 1-128 rows (decode batches and small mixed steps, a plan each) and one row count per
  // cuBLASLt bucket above (LtCache).
  std::vector<int64_t> warm_up_rows(int64_t max_rows) const override;

  // CUDA graphs through stream capture (off with BW_CUDA_PROFILE=1, whose syncs cannot be
  // captured). While capturing, scratch growth, host copies and syncs fail with
  // FailedPrecondition. Scratch a graph recorded outlives its growth (retired_scratch_); a
  // new decoder-stack layer table marks every earlier graph stale.
  bool supports_graphs() const override { return profile_ == nullptr; }
  Result<std::unique_ptr<CapturedGraph>> capture(const std::function<Status()>& body) override;

  Result<DeviceBuffer> allocate(size_t bytes) override;
  Status copy_to_device(void* device_dst, const void* host_src, size_t bytes) override;
  Status copy_to_host(void* host_dst, const void* device_src, size_t bytes) override;
  Status copy_on_device(void* device_dst, const void* device_src, size_t bytes) override;
  Status synchronize() override;

  Status embedding(TensorView out, const TensorView& table, const TensorView& ids) override;
  Status matmul(TensorView out, const TensorView& x, const TensorView& w, const TensorView& bias) override;
  Status rms_norm(TensorView out, const TensorView& x, const TensorView& weight, float eps) override;
  Status add_rms_norm(TensorView out, TensorView residual, const TensorView& x, const TensorView& weight,
                      float eps) override;
  Status add(TensorView out, const TensorView& a, const TensorView& b) override;
  Status rope_write_kv(TensorView qkv, const AttentionParams& attn, const RopeParams& rope,
                       const AttentionMetadata& meta, const KvCacheLayer& cache) override;
  Status paged_attention(TensorView out, const TensorView& qkv, const AttentionParams& attn,
                         const AttentionMetadata& meta, const KvCacheLayer& cache) override;
  Status silu_mul(TensorView out, const TensorView& gate_up) override;

  // Fused decoder steps: at batch 1 in bf16, the norm kernel then one single-row GEMV
  // (cuda_gemv_rows.cu) that ends with RoPE + the KV write or SiLU-and-multiply; otherwise
  // the separate ops. matmul_add always accumulates into the residual (GEMV epilogue or
  // cuBLASLt with beta = 1) and never touches its scratch.
  Status norm_qkv_rope_write_kv(TensorView qkv, const NormedInput& in, const TensorView& w, const TensorView& bias,
                                const AttentionParams& attn, const RopeParams& rope, const AttentionMetadata& meta,
                                const KvCacheLayer& cache) override;
  Status norm_gate_up_silu_mul(TensorView out, TensorView gate_up, const NormedInput& in, const TensorView& w) override;
  Status matmul_add(TensorView residual, TensorView scratch, const TensorView& x, const TensorView& w) override;

  // Device sampling (cuda_backend_sample.cc, kernel in cuda_sampling.cu): one upload of
  // the rows and the penalty history through pinned memory, one kernel, one download of
  // the ids.
  bool supports_device_sampling() const override { return true; }
  Status sample(std::span<int32_t> tokens, TensorView logits, const DeviceSamplingBatch& batch,
                std::span<DeviceTokenLogprob> logprobs = {}) override;
  bool supports_async_sampling() const override { return true; }
  Result<AsyncSample> sample_async(TensorView logits, const DeviceSamplingBatch& batch) override;
  Status wait_sampled(const AsyncSample& sample, std::span<int32_t> tokens,
                      std::span<DeviceTokenLogprob> logprobs = {}) override;
  Status select_tokens(TensorView ids, const AsyncSample& from, const TensorView& rows) override;

  // The whole decode step of one bf16 token as one persistent kernel on Hopper
  // (cuda_backend_decoder_stack.cc, kernel in cuda_decoder_stack.cu). BW_CUDA_STACK=0 in
  // the environment keeps the op-by-op path (A/B runs).
  bool fuses_decoder_stack(const DecoderStack& stack) const override;
  Status decoder_stack(TensorView logits, const DecoderStack& stack) override;

  // Testing aid: after a sample() call that took the split path, which of its rows that
  // path sampled (1) and which it left to one block a row (0); empty after any other call.
  Result<std::vector<int32_t>> last_split_rows_done();

  // Testing aid: forces every matmul through the GEMV kernel (true) or lets M decide.
  void set_force_gemv(bool force) { force_gemv_ = force; }
  // Testing aid: turns the fused decoder stack off (false), or on where the device runs it.
  void set_decoder_stack(bool on) { decoder_stack_on_ = on; }

 protected:
  void free(void* data, size_t bytes) override;

 private:
  struct LtCache;
  struct Profile;
  class Graph;
  friend class ProfiledOp;
  explicit CudaBackend(const CudaBackendOptions& options);
  Status init();
  // Records a CUDA error as the sticky status and returns it.
  Status fail(int cuda_error, const char* what, const char* file, int line);
  Status check_launch(int cuda_error, const char* op);
  Status take_kernel_error();
  // matmul's checks and dispatch; accumulate: out += x @ w^T (out in x's dtype, no bias).
  Status matmul_impl(std::string_view op, TensorView out, const TensorView& x, const TensorView& w,
                     const TensorView& bias, bool accumulate);
  Status matmul_lt(TensorView out, const TensorView& x, const TensorView& w, const TensorView& bias, bool accumulate,
                   bool* done);
  // rope_write_kv's checks and kernel arguments (uploads the frequencies when they change).
  Status rope_args(std::string_view op, const TensorView& qkv, const AttentionParams& attn, const RopeParams& rope,
                   const AttentionMetadata& meta, const KvCacheLayer& cache, cuda::RopeKvArgs* args);
  // Uploads the RoPE inverse frequencies of `rope` unless they are the ones on the device.
  Status upload_inv_freq(const RopeParams& rope);
  // The fused stack's kernel arguments without the device-side tables; false when this
  // step's shapes, dtypes or layout are not what the kernel takes.
  bool stack_args(const DecoderStack& stack, cuda::DecoderStackArgs* args) const;
  Status ensure_scratch(void** buf, size_t* capacity, size_t bytes);
  Status not_while_capturing(const char* what) const;
  // kind: a cudaMemcpyKind.
  Status copy(void* dst, const void* src, size_t bytes, int kind, const char* what);
  // Small host-to-device copies (a step's inputs) go through pinned staging slots taken in
  // turn: the copy is then truly asynchronous, where one from pageable memory may first wait
  // for the stream to drain (which would stall a step enqueued while another runs).
  Status staged_upload(void* device_dst, const void* host_src, size_t bytes);

  CudaBackendOptions options_;
  std::string device_name_;
  int num_sms_ = 0;
  bool wgmma_prefill_ = false;  // prefill attention on the wgmma kernel (Hopper)
  bool decoder_stack_ = false;  // the device runs the fused decoder stack (Hopper)
  bool decoder_stack_on_ = true;
  CUstream_st* stream_ = nullptr;
  cublasLtContext* lt_ = nullptr;
  std::unique_ptr<LtCache> lt_cache_;
  void* lt_workspace_ = nullptr;
  size_t lt_workspace_bytes_ = 0;
  int* error_flag_ = nullptr;  // pinned, mapped host memory kernels write
  Status sticky_;
  bool force_gemv_ = false;
  bool capturing_ = false;
  // Bumped when scratch contents recorded graphs read change (the decoder stack's table).
  uint64_t scratch_epoch_ = 0;
  // The scratch buffers (ensure_scratch's `buf`) some capture has used. When one must grow,
  // its old allocation moves to retired_scratch_ (freed with the backend) instead of being
  // freed, so a larger eager step never makes the recorded graphs stale.
  std::vector<void**> graph_scratch_;
  std::vector<void*> retired_scratch_;
  // Set when the environment has BW_CUDA_PROFILE=1: every op is bracketed by stream
  // syncs and timed; the per-op totals go to stderr when the backend is destroyed.
  std::unique_ptr<Profile> profile_;
  // BW_CUDA_STEP_TIMING=1: the GPU's idle time between decode steps (cuda_step_timing.h).
  std::unique_ptr<CudaStepTiming> step_timing_;
  // BW_CUDA_LOG_FIRST_USE=1: each first-use cost of a serving step (a cuBLASLt heuristic
  // call, a scratch or staging buffer grown) goes to stderr with its host time, to find what
  // makes the first steps of some size slower than later ones.
  bool log_first_use_ = false;
  // When the cost being logged began (only read with BW_CUDA_LOG_FIRST_USE: no clock read
  // on a step's path otherwise).
  std::chrono::steady_clock::time_point first_use_start() const {
    return log_first_use_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
  }
  void log_first_use(const std::string& what, std::chrono::steady_clock::time_point since) const;
  // rope_write_kv: the inverse frequencies last uploaded.
  std::vector<float> inv_freq_host_;
  void* inv_freq_dev_ = nullptr;
  size_t inv_freq_capacity_ = 0;
  // paged_attention: split-KV partial results of the decode kernel, and of the general
  // kernel and the wgmma prefill kernel (steps with queries of several tokens, which graphs
  // do not record).
  void* attn_ws_ = nullptr;
  size_t attn_ws_capacity_ = 0;
  void* attn_general_ws_ = nullptr;
  size_t attn_general_ws_capacity_ = 0;
  // paged_attention (decode kernel): the splits' arrival counters, zeroed when allocated.
  void* attn_counters_ = nullptr;
  size_t attn_counters_capacity_ = 0;
  // decoder_stack: the layer table (host copy: the last upload), split partials, and
  // arrival counters (zeroed when allocated; the kernel leaves them zero).
  std::vector<cuda::DecoderStackLayer> stack_layers_host_;
  void* stack_layers_ = nullptr;
  size_t stack_layers_capacity_ = 0;
  void* stack_partials_ = nullptr;
  size_t stack_partials_capacity_ = 0;
  void* stack_counters_ = nullptr;
  size_t stack_counters_capacity_ = 0;
  // sample() / sample_async(): two staging slots taken in turn, so that one step's
  // sampling can be in flight while the next one's is staged. Each: pinned host memory (row
  // args, penalty tokens and counts, then the ids read back) and its device copy, both
  // grown as needed and kept between calls, and an event recorded after the read-back.
  struct SampleStaging {
    void* host = nullptr;
    size_t host_capacity = 0;
    void* dev = nullptr;
    size_t dev_capacity = 0;
    CUevent_st* done = nullptr;
    size_t ids_offset = 0;       // where the ids are, in both
    size_t logprobs_offset = 0;  // where the log-probability records are (0: none asked)
  };
  // Makes `slot` hold host_bytes of pinned memory and dev_bytes of device memory, once its
  // last use is complete.
  Status reserve_sample_staging(SampleStaging& slot, size_t host_bytes, size_t dev_bytes);
  enum class SamplePath { kArgmax, kSplit, kPerRow };
  SamplePath sample_path(std::span<const cuda::SamplingRowArgs> rows, int64_t vocab) const;
  SampleStaging sample_staging_[2];
  int next_sample_slot_ = 0;
  // The rows that sampling modifies while their raw logits must stay for log-probabilities
  // work on copies here ([rows, V] f32; grown as needed, in stream order).
  void* sample_work_ = nullptr;
  size_t sample_work_capacity_ = 0;
  bool sample_shared_select_ = true;          // BW_CUDA_SAMPLE_RADIX=1: false
  const int32_t* last_split_done_ = nullptr;  // the last call's done flags (split path), device
  int64_t last_split_rows_ = 0;
  // Calls of at most this many rows split them over many blocks whatever they select: one
  // block a row then takes ~100 us. With more rows, one block a row is parallel enough for
  // greedy top log-probabilities, and the split's extra passes cost as much as they save
  // (docs/PERF.md, nineteenth session); draws from a top-k or top-p set split up to larger
  // counts (cuda_backend_sample.cc: per_row_competes); other calls always split. -1: never.
  static constexpr int64_t kSplitRowsWithCandidates = 16;
  int64_t sample_split_rows_with_candidates_ = kSplitRowsWithCandidates;
  // staged_upload(): pinned slots (each with the event after its last copy).
  struct UploadSlot {
    void* host = nullptr;
    size_t capacity = 0;
    CUevent_st* done = nullptr;
  };
  UploadSlot upload_slots_[3];
  int next_upload_slot_ = 0;
};

}  // namespace bw
