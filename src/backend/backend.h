// The backend interface: device memory and the operations a dense decoder needs.
//
// model/ code describes a forward pass only through these calls, so the same architecture
// file runs on every backend. The CPU backend is the reference the others are tested
// against. Every op validates shapes and dtypes and returns InvalidArgument on a mismatch
// (never aborts); data-dependent checks (token ids in range) are done where cheap.
//
// Conventions (all tensors contiguous, row-major, outermost dimension first):
//   T = tokens in the flattened batch, H = hidden size, S = sequences in the batch,
//   Hq / Hkv = query / key-value heads, D = head_dim.
//   qkv rows hold [q (Hq*D) | k (Hkv*D) | v (Hkv*D)] for one token: the output of one fused
//   QKV projection.
//   A paged KV cache layer is k and v tensors of [num_blocks, block_size, Hkv, D]. Token
//   slot `s` lives in block s / block_size at offset s % block_size.
//
// Thread-safety: a Backend is used by one thread at a time (the engine's step loop);
// ops issued in order execute in order. Memory ops may be called from the same thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "tensor/tensor_view.h"

namespace bw {

class Backend;

// Owning handle to memory allocated by a backend. Move-only; frees on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend* backend, void* data, size_t size) : backend_(backend), data_(data), size_(size) {}
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return data_; }
  size_t size() const { return size_; }
  // A view of the whole buffer (or its prefix) as a tensor; the shape must fit.
  TensorView view(DType dtype, Shape shape) const;

 private:
  void reset();

  Backend* backend_ = nullptr;
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Rotary embedding parameters (HF `rope_theta`, `rope_scaling`), applied NeoX-style:
// dimension i of a head is paired with i + rotary_dim/2 (HF `rotate_half`). GGUF llama
// weights, whose Q/K rows llama.cpp permuted for adjacent pairs, are un-permuted at load.
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  float factor = 1.0f;
  // Llama 3 only.
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int64_t original_max_position = 8192;
};

struct RopeParams {
  float theta = 10000.0f;
  int rotary_dim = 0;  // <= head_dim; the leading rotary_dim dims of each head rotate
  RopeScaling scaling;
  // Optional per-frequency divisors (rotary_dim / 2 of them) applied after `scaling`:
  // how GGUF llama files carry Llama-3 scaling (the `rope_freqs.weight` tensor).
  std::vector<float> freq_factors;
};

struct AttentionParams {
  int num_heads = 0;     // Hq
  int num_kv_heads = 0;  // Hkv; Hq % Hkv == 0 (grouped-query attention)
  int head_dim = 0;      // D
  float scale = 1.0f;    // usually 1/sqrt(D)
};

// One layer's paged KV cache: k and v are [num_blocks, block_size, Hkv, D].
struct KvCacheLayer {
  TensorView k;
  TensorView v;
};

// Per-step batch layout, shared by every layer. All tensors are i32 in backend memory.
// Sequence s owns query tokens [query_start[s], query_start[s+1]); after this step it
// has kv_lens[s] tokens in the cache, so its new tokens sit at positions
// kv_lens[s] - q_len(s) ... kv_lens[s] - 1, and query j of the chunk attends causally to
// cache positions [0, kv_lens[s] - q_len(s) + j].
struct AttentionMetadata {
  TensorView positions;     // [T] rotary position of each token
  TensorView slot_mapping;  // [T] cache slot written for each token; -1 skips the write
  TensorView query_start;   // [S + 1] cumulative query lengths, query_start[0] = 0
  TensorView kv_lens;       // [S]
  TensorView block_tables;  // [S, max_blocks_per_seq] block ids of each sequence's cache
  int num_seqs = 0;
  int max_query_len = 0;  // host-side hints for launch sizing
  int max_kv_len = 0;
};

// A recorded sequence of backend ops (a CUDA graph) that replays on the same buffers.
class CapturedGraph {
 public:
  virtual ~CapturedGraph() = default;
  // Enqueues the recorded ops again; they read the buffers' current contents.
  // FailedPrecondition when backend scratch memory the graph uses has been reallocated since
  // the capture (capture again).
  virtual Status replay() = 0;
};

// Per-row parameters of Backend::sample: SamplingParams (sched/sampling_params.h); the
// logit bias is in DeviceSamplingBatch (runner/device_sampling.h builds both).
struct DeviceSamplingRow {
  float temperature = 0.0f;         // <= 0, or so small that 1 / temperature overflows: greedy
  int32_t top_k = 0;                // <= 0: off
  float top_p = 1.0f;               // (0, 1]
  float min_p = 0.0f;               // [0, 1]
  float repetition_penalty = 1.0f;  // > 0; 1 = off
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;  // with `step`, selects the random draw
  uint64_t step = 0;  // the output index of the token being sampled
  // >= 0: the row's newest output token is not in its penalty history yet (an overlapped
  // step samples before the host has seen it): it is DeviceSamplingBatch::pending's
  // ids[pending_row], and the penalties count it as one more output occurrence.
  int32_t pending_row = -1;
  // -1: none; 0: the sampled token's log-probability; k in [1, kMaxDeviceTopLogprobs]: and
  // the k most likely tokens'. Of the raw distribution (before bias, penalties and
  // temperature), as the host Sampler reports them.
  int32_t logprobs = -1;
};

// The most top log-probabilities a row may ask for (OpenAI's top_logprobs limit).
constexpr int32_t kMaxDeviceTopLogprobs = 20;
struct DeviceTokenLogprob {
  int32_t token_id = -1;  // -1: no token (a row with fewer finite logits than asked for)
  float logprob = 0.0f;
};
// Backend::sample writes each row's log-probabilities as one record of this many entries:
// [0] the sampled token, [1 + j] the j-th most likely token (value descending, ties by
// lower id; finite logits only), up to the row's `logprobs`. Rows that asked for none are
// left as they were.
constexpr size_t kLogprobsRecord = 1 + kMaxDeviceTopLogprobs;

// A sample_async in flight: its ids [rows] i32 in backend memory, and the staging slot
// they came through.
struct AsyncSample {
  const int32_t* ids = nullptr;
  int64_t rows = 0;
  int slot = -1;
  bool logprobs = false;  // some row asked for log-probabilities
};

// A batch for Backend::sample, all in host memory. The penalty history is CSR: row r's
// distinct token ids are penalty_tokens[penalty_offsets[r], penalty_offsets[r + 1]), each
// with its count in the output so far (penalty_output_counts; 0 = in the prompt only).
// The offsets may be empty when no row has any history. The logit bias is CSR too: row
// r adds bias_values[j] to the logit of bias_tokens[j] for j in [bias_offsets[r],
// bias_offsets[r + 1]), before its penalties. `pending`: the earlier sample_async whose ids
// the rows' pending_row index (set when any row has one).
struct DeviceSamplingBatch {
  std::span<const DeviceSamplingRow> rows;
  std::span<const int32_t> penalty_offsets;        // [rows + 1] or empty
  std::span<const int32_t> penalty_tokens;         // distinct per row, in [0, V)
  std::span<const int32_t> penalty_output_counts;  // [penalty_tokens.size()], >= 0
  std::span<const int32_t> bias_offsets;           // [rows + 1] or empty
  std::span<const int32_t> bias_tokens;            // distinct per row, in [0, V)
  std::span<const float> bias_values;              // [bias_tokens.size()], finite
  AsyncSample pending;
};

// Whether some row of the batch asks for log-probabilities (Backend::sample's records).
inline bool wants_logprobs(const DeviceSamplingBatch& batch) {
  for (const DeviceSamplingRow& row : batch.rows) {
    if (row.logprobs >= 0) return true;
  }
  return false;
}

// The input of a projection that starts with an RMS norm: the projection reads
// rms_norm(x) * norm_weight (x [T, K], norm_weight [K]). scratch [T, K] (activation dtype)
// is where a backend that does not fuse the norm into the projection writes it.
struct NormedInput {
  TensorView x;
  TensorView norm_weight;
  float eps = 0.0f;
  TensorView scratch;
};

// One decoder layer's weights (model/arch/dense_decoder.h builds them): what
// Backend::decoder_stack reads.
struct DecoderLayerWeights {
  TensorView attn_norm;  // [H]
  TensorView qkv;        // [(Hq + 2*Hkv) * D, H]
  TensorView qkv_bias;   // [(Hq + 2*Hkv) * D], or empty
  TensorView o_proj;     // [H, Hq * D]
  TensorView ffn_norm;   // [H]
  TensorView gate_up;    // [2 * F, H]
  TensorView down;       // [H, F]
};

// A whole decode step of a dense decoder for one token (Backend::decoder_stack): the
// layers, the final norm and the LM head. residual holds the token's embedding and is
// clobbered; qkv, attn_out and act are scratch.
struct DecoderStack {
  std::span<const DecoderLayerWeights> layers;
  std::span<const KvCacheLayer> cache;  // one per layer
  TensorView final_norm;                // [H]
  TensorView lm_head;                   // [V, H]
  float eps = 0.0f;
  AttentionParams attn;
  RopeParams rope;
  const AttentionMetadata* meta = nullptr;  // one sequence, one query token
  TensorView residual;                      // [1, H]
  TensorView qkv;                           // [1, (Hq + 2*Hkv) * D]
  TensorView attn_out;                      // [1, Hq * D]
  TensorView act;                           // [1, F]
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string name() const = 0;
  // The dtype activations are computed in (f32 on CPU).
  virtual DType activation_dtype() const = 0;
  // True when device memory is plain host memory (the loader may then fill it directly).
  virtual bool is_host_memory() const = 0;

  // --- Memory ---------------------------------------------------------------------------
  virtual Result<DeviceBuffer> allocate(size_t bytes) = 0;
  virtual Status copy_to_device(void* device_dst, const void* host_src, size_t bytes) = 0;
  virtual Status copy_to_host(void* host_dst, const void* device_src, size_t bytes) = 0;
  // Within backend memory (KV block copies); the ranges must not overlap.
  virtual Status copy_on_device(void* device_dst, const void* device_src, size_t bytes) = 0;
  // Waits for all issued work; returns a sticky device error if one happened.
  virtual Status synchronize() = 0;

  // Free and total bytes of the device's memory (Unimplemented for host-memory backends,
  // whose budget is the host's).
  virtual Status memory_info(uint64_t* free_bytes, uint64_t* total_bytes) const;

  // Row counts (tokens per step, up to max_rows) whose first matmuls cost more than later
  // ones, so that a server runs one step of each before it serves (ModelRunner::warm_up):
  // the CUDA backend chooses a GEMM algorithm per bucket of row counts and loads each
  // kernel at its first launch. Empty where first steps cost what later ones do (CPU).
  virtual std::vector<int64_t> warm_up_rows(int64_t /*max_rows*/) const { return {}; }

  // --- Graphs (optional) ----------------------------------------------------------------
  // Whether capture() works now (CUDA graphs; off while profiling).
  virtual bool supports_graphs() const { return false; }
  // Records the ops `body` issues instead of running them. Inside body nothing may
  // allocate, copy from or to the host, or synchronize: run the same ops once eagerly first
  // so that every scratch buffer has its size (such a call fails the capture with
  // FailedPrecondition). Unimplemented unless supports_graphs().
  virtual Result<std::unique_ptr<CapturedGraph>> capture(const std::function<Status()>& body);

  // --- Ops --------------------------------------------------------------------------------
  // out[t, :] = table[ids[t], :]. table [V, H] (f32/f16/bf16), ids [T] i32, out [T, H]
  // activation dtype. An id outside [0, V) is InvalidArgument. Also gathers rows of
  // activations (e.g. the last position of each sequence before the LM head).
  virtual Status embedding(TensorView out, const TensorView& table, const TensorView& ids) = 0;

  // out = x @ w^T (+ bias). x [M, K] activations, w [N, K] (f32/f16/bf16), bias [N] or empty
  // view, out [M, N] in the activation dtype or f32 (the LM head writes f32 logits).
  // Accumulates in f32.
  virtual Status matmul(TensorView out, const TensorView& x, const TensorView& w, const TensorView& bias) = 0;

  // out = x / sqrt(mean(x^2) + eps) * weight, per row. x, out [T, H]; weight [H].
  // out may alias x.
  virtual Status rms_norm(TensorView out, const TensorView& x, const TensorView& weight, float eps) = 0;

  // Fused residual step: residual += x; out = rms_norm(residual) * weight.
  // residual, x, out [T, H].
  virtual Status add_rms_norm(TensorView out, TensorView residual, const TensorView& x, const TensorView& weight,
                              float eps) = 0;

  // out = a + b, elementwise, same shapes; out may alias a or b.
  virtual Status add(TensorView out, const TensorView& a, const TensorView& b) = 0;

  // Rotates the q and k parts of qkv [T, (Hq + 2*Hkv) * D] in place at meta.positions, then
  // writes the rotated k and the v of each token to cache slot meta.slot_mapping[t].
  virtual Status rope_write_kv(TensorView qkv, const AttentionParams& attn, const RopeParams& rope,
                               const AttentionMetadata& meta, const KvCacheLayer& cache) = 0;

  // Causal paged attention for a mixed batch of prefill chunks and decode tokens.
  // q is read from qkv [T, (Hq + 2*Hkv) * D]; keys/values come from the cache (including
  // this step's, written by rope_write_kv). out [T, Hq * D].
  virtual Status paged_attention(TensorView out, const TensorView& qkv, const AttentionParams& attn,
                                 const AttentionMetadata& meta, const KvCacheLayer& cache) = 0;

  // out = silu(gate) * up, where gate_up [T, 2F] holds [gate (F) | up (F)] per row (the
  // output of one fused gate/up projection); out [T, F].
  virtual Status silu_mul(TensorView out, const TensorView& gate_up) = 0;

  // --- Fused steps of a decoder layer -----------------------------------------------------
  // Each is one call so that a backend may fuse it (CUDA does at batch 1: the projection's
  // kernel finishes its rows with the next op, or adds them into the residual). The
  // defaults run the separate ops above through the scratch tensors; a fused path may
  // leave a scratch tensor unwritten, so callers must not read them afterwards.

  // qkv = rms_norm(in) @ w^T (+ bias), then rope_write_kv(qkv, attn, rope, meta, cache).
  virtual Status norm_qkv_rope_write_kv(TensorView qkv, const NormedInput& in, const TensorView& w,
                                        const TensorView& bias, const AttentionParams& attn, const RopeParams& rope,
                                        const AttentionMetadata& meta, const KvCacheLayer& cache);

  // out = silu_mul(rms_norm(in) @ w^T) for w = [gate | up] [2F, K]; gate_up [T, 2F] scratch.
  virtual Status norm_gate_up_silu_mul(TensorView out, TensorView gate_up, const NormedInput& in, const TensorView& w);

  // residual += x @ w^T (the residual stream after an output projection); scratch [M, N]
  // in the activation dtype.
  virtual Status matmul_add(TensorView residual, TensorView scratch, const TensorView& x, const TensorView& w);

  // --- The whole decoder stack (optional) ---------------------------------------------------
  // Whether decoder_stack() runs this step (CUDA: one bf16 token on a Hopper GPU, where
  // the step is one persistent kernel). Otherwise the caller runs the layers op by op.
  virtual bool fuses_decoder_stack(const DecoderStack& stack) const {
    (void)stack;
    return false;
  }
  // logits [1, V] f32 = lm_head(rms_norm(the layers applied to stack.residual)), writing
  // each layer's k and v of the token to its cache, as the per-op forward pass would.
  virtual Status decoder_stack(TensorView logits, const DecoderStack& stack) {
    (void)logits;
    (void)stack;
    return Unimplemented("decoder_stack is not supported by {}", name());
  }

  // --- Sampling (optional) ------------------------------------------------------------------
  // Whether sample() works (the runner otherwise copies logits to the host Sampler).
  virtual bool supports_device_sampling() const { return false; }
  // tokens[i] <- the token sampled from row i of logits [rows, V] f32 (backend memory; used
  // as scratch, modified) under batch.rows[i]: logit bias, penalties, then greedy argmax
  // (lowest id on ties) or temperature, min-p, top-k, top-p and one draw that depends only
  // on the row's logits, seed and step. Blocks until the ids are on the host. InvalidArgument
  // on bad shapes or parameters. Rows with a pending_row read batch.pending's ids, which
  // must still be in backend memory (see sample_async). `logprobs`: empty, or [rows *
  // kLogprobsRecord] for the records of the rows that ask for log-probabilities.
  virtual Status sample(std::span<int32_t> tokens, TensorView logits, const DeviceSamplingBatch& batch,
                        std::span<DeviceTokenLogprob> logprobs = {}) {
    (void)tokens;
    (void)logits;
    (void)batch;
    (void)logprobs;
    return Unimplemented("device sampling is not supported by {}", name());
  }

  // Overlapped steps (optional): sample() in two halves, so the host can enqueue the next
  // step before this one's ids are back. sample_async enqueues the sampling and the ids'
  // read-back and returns at once; the ids stay in backend memory (AsyncSample::ids, for
  // select_tokens) until the second sample_async after it; wait_sampled blocks until they
  // are on the host. At most two may be outstanding, waited for in order.
  virtual bool supports_async_sampling() const { return false; }
  virtual Result<AsyncSample> sample_async(TensorView logits, const DeviceSamplingBatch& batch) {
    (void)logits;
    (void)batch;
    return Unimplemented("asynchronous sampling is not supported by {}", name());
  }
  // `logprobs` as in sample(); it may stay empty when sample.logprobs is false.
  virtual Status wait_sampled(const AsyncSample& sample, std::span<int32_t> tokens,
                              std::span<DeviceTokenLogprob> logprobs = {}) {
    (void)sample;
    (void)tokens;
    (void)logprobs;
    return Unimplemented("asynchronous sampling is not supported by {}", name());
  }
  // ids[i] <- from.ids[rows[i]] for every i with 0 <= rows[i] < from.rows (ids, rows: [n] i32
  // in backend memory): a step's input tokens taken from the ids an earlier step sampled,
  // before the host has seen them.
  virtual Status select_tokens(TensorView ids, const AsyncSample& from, const TensorView& rows) {
    (void)ids;
    (void)from;
    (void)rows;
    return Unimplemented("select_tokens is not supported by {}", name());
  }

 protected:
  friend class DeviceBuffer;
  virtual void free(void* data, size_t bytes) = 0;
};

}  // namespace bw
