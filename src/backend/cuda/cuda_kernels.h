// Internal to the CUDA backend: the kernel launchers (one .cu per op family) that
// CudaBackend (cuda_backend.cc) calls after validating shapes and dtypes. Plain C++ so
// that the host code compiles without nvcc.
//
// Every launcher enqueues work on `stream` and returns the launch error (cudaSuccess when
// the launch was accepted). Data-dependent errors (a token id outside the table, a block
// id outside the cache) cannot be checked on the host without a sync; kernels skip the
// bad element and record a code in `error_flag` (see KernelError), which
// CudaBackend::synchronize() turns into a Status. All arithmetic accumulates in f32.
#pragma once

#include <cmath>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace bw::cuda {

// Element types of tensors handed to kernels (the f32/f16/bf16 subset of DType).
enum class ElemType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// Codes kernels store in the error flag (the first one wins).
enum KernelError : int {
  kKernelOk = 0,
  kBadTokenId = 1,   // embedding: id outside [0, V)
  kBadSlot = 2,      // rope_write_kv: slot outside [-1, num_slots)
  kBadBlockId = 3,   // paged_attention: block id outside [0, num_blocks)
  kBadSequence = 4,  // paged_attention: kv_len < query length, or the table too narrow
  kBadPosition = 5,  // rope_write_kv: negative position
};

// --- cuda_elementwise.cu ---------------------------------------------------------------
// out[t, :] = table[ids[t], :]
cudaError_t launch_embedding(void* out, ElemType out_type, const void* table, ElemType table_type, int64_t vocab,
                             int64_t hidden, const int32_t* ids, int64_t num_tokens, int* error_flag,
                             cudaStream_t stream);
// out = a + b (n elements, all of one type)
cudaError_t launch_add(void* out, const void* a, const void* b, ElemType type, int64_t n, cudaStream_t stream);
// out[t, :F] = silu(gate_up[t, :F]) * gate_up[t, F:]
cudaError_t launch_silu_mul(void* out, const void* gate_up, ElemType type, int64_t rows, int64_t f,
                            cudaStream_t stream);
// dst[i] = float(src[i])
cudaError_t launch_to_f32(float* dst, const void* src, ElemType src_type, int64_t n, cudaStream_t stream);

// --- cuda_norm.cu ----------------------------------------------------------------------
// residual == nullptr: out = rms_norm(x) * weight. Otherwise residual += x first and the
// norm is taken of the (rounded) new residual. out may alias x.
cudaError_t launch_rms_norm(void* out, void* residual, const void* x, ElemType act_type, const void* weight,
                            ElemType weight_type, int64_t rows, int64_t hidden, float eps, cudaStream_t stream);

// --- cuda_rope_kv.cu -------------------------------------------------------------------
struct RopeKvArgs {
  void* qkv = nullptr;  // [T, (Hq + 2*Hkv) * D], act_type
  ElemType act_type = ElemType::kF32;
  int64_t num_tokens = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int rotary_dim = 0;
  const float* inv_freq = nullptr;     // [rotary_dim / 2], device
  const int32_t* positions = nullptr;  // [T]
  const int32_t* slots = nullptr;      // [T]
  void* k_cache = nullptr;             // [num_blocks, block_size, Hkv, D], cache_type
  void* v_cache = nullptr;
  ElemType cache_type = ElemType::kF32;
  int64_t num_slots = 0;
  int* error_flag = nullptr;
};
cudaError_t launch_rope_write_kv(const RopeKvArgs& args, cudaStream_t stream);

// --- cuda_attention.cu -----------------------------------------------------------------
struct AttentionArgs {
  void* out = nullptr;        // [T, Hq * D], act_type
  const void* qkv = nullptr;  // [T, (Hq + 2*Hkv) * D], act_type
  ElemType act_type = ElemType::kF32;
  int64_t num_tokens = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale = 1.0f;
  const void* k_cache = nullptr;  // [num_blocks, block_size, Hkv, D], cache_type
  const void* v_cache = nullptr;
  ElemType cache_type = ElemType::kF32;
  int64_t num_blocks = 0;
  int block_size = 0;
  const int32_t* query_start = nullptr;   // [S + 1]
  const int32_t* kv_lens = nullptr;       // [S]
  const int32_t* block_tables = nullptr;  // [S, table_width]
  int num_seqs = 0;
  int table_width = 0;
  int max_kv_len = 0;  // host hint: sizes the split-KV grid
  int* error_flag = nullptr;
};
// Scratch (f32) the split-KV path needs for `num_splits` partial results; 0 when it runs
// in one pass.
int attention_num_splits(const AttentionArgs& args, int num_sms);
int64_t attention_workspace_floats(const AttentionArgs& args, int num_splits);
cudaError_t launch_paged_attention(const AttentionArgs& args, int num_splits, float* workspace, cudaStream_t stream);
// Largest head_dim and query heads per KV head the attention kernel handles.
constexpr int kAttentionMaxHeadDim = 256;
// Merges the num_splits partial results in `workspace` into args.out (split-KV paths).
cudaError_t launch_attention_combine(const AttentionArgs& args, int num_splits, const float* workspace,
                                     cudaStream_t stream);

// --- cuda_attention_decode.cu ----------------------------------------------------------
// Decode batches (every sequence has one query token, meta.max_query_len == 1): same
// contract, error reporting and split-KV workspace as launch_paged_attention, for head_dim
// 16/32/64/128 with f32 activations and cache, or bf16 activations and a bf16/f16 cache.
bool decode_attention_supported(const AttentionArgs& args);
// Splits that fill the GPU at small batches; max_kv_len should bound every sequence's
// length (a longer one is still right, only slower).
int decode_attention_num_splits(const AttentionArgs& args, int num_sms);
// The split path's arrival counters (int32): zeroed once when allocated, the kernel
// leaves them zero after every call.
int64_t decode_attention_counters(const AttentionArgs& args, int num_sms);
cudaError_t launch_paged_attention_decode(const AttentionArgs& args, int num_splits, int num_sms, float* workspace,
                                          int* counters, cudaStream_t stream);

// --- cuda_attention_prefill.cu, cuda_attention_prefill_sm90.cu ------------------------
// The tensor-core prefill kernels: same contract and error reporting as
// launch_paged_attention, for bf16 activations and a bf16 cache with head_dim 64 or 128
// (and 16-byte aligned tensors). max_query_len (> 0) sizes the grid only. variant: the
// mma.sync kernel (sm_80+) with 64 query rows per CTA (4 warps x 16) or 128 (4 warps x 32),
// or the warp-specialised wgmma kernel (128 rows per CTA; sm_90a code on a compute
// capability 9.0 device only: prefill_attention_wgmma_available());
// prefill_attention_variant picks the wgmma kernel where it runs, else 64 rows (128
// measured slower on an H200). Any other value returns cudaErrorInvalidValue.
constexpr int kPrefillVariant64Rows = 1;
constexpr int kPrefillVariant128Rows = 2;
constexpr int kPrefillVariantWgmma = 3;
bool prefill_attention_supported(const AttentionArgs& args);
// Whether the current device runs the wgmma kernel (compute capability 9.0 and the binary
// holds sm_90a code). Launches a probe kernel and synchronises: call once, at start-up.
bool prefill_attention_wgmma_available();
int prefill_attention_variant(const AttentionArgs& args, bool wgmma_available);
// kv_splits > 1 (the wgmma variant only; others return cudaErrorInvalidValue): each query
// tile's keys are cut into that many pieces, each a CTA of its own writing f32 partials to
// `workspace` (attention_workspace_floats(args, kv_splits) floats), merged by
// launch_attention_combine.
cudaError_t launch_paged_attention_prefill(const AttentionArgs& args, int max_query_len, int variant,
                                           cudaStream_t stream, int kv_splits = 1, float* workspace = nullptr);
// The wgmma kernel itself (launch_paged_attention_prefill's kPrefillVariantWgmma).
cudaError_t launch_paged_attention_prefill_wgmma(const AttentionArgs& args, int max_query_len, int kv_splits,
                                                 float* workspace, cudaStream_t stream);
// The wgmma kernel's key splits for a batch (cuda_prefill_split_plan.cc): 1, or up to 4
// where splitting each query tile's keys evens out the last wave of a grid of few waves by
// more than the partials and the combine cost. Host code; max_kv_len bounds every
// sequence's keys, max_query_len its queries.
int prefill_kv_splits(int num_heads, int num_seqs, int max_query_len, int max_kv_len, int num_sms);
// The first of the 128-key tiles that piece `split` of `splits` takes of a query tile
// with n_tiles tiles (split == splits: n_tiles), so piece s takes [first(s), first(s + 1)).
// Every piece starts at or before last_start, the last tile whose first key every row of
// the query tile sees, so each row meets a key in its piece's first tile (pieces may be
// empty).
__host__ __device__ inline int prefill_split_first_tile(int split, int splits, int n_tiles, int last_start) {
  if (split >= splits) return n_tiles;
  const int first = split * n_tiles / splits;
  return first < last_start ? first : last_start;
}
// Launches of the prefill kernel so far (process-wide; tests check the dispatch with it).
int64_t prefill_attention_launches();
// The backend takes the prefill kernel for batches with max_query_len at least this.
constexpr int kPrefillAttentionMinQueryLen = 16;

// --- cuda_gemv.cu (the GEMV / fallback kernel; cuBLASLt is driven from cuda_backend.cc)
// out[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]) for any M (loops over M in groups of 16);
// reads w once per group, so it is bandwidth-bound for M <= 16.
// out is in act_type, or f32 (logits of bf16 activations). accumulate: out += the product
// instead (out in act_type), rounded as a separate add would round.
cudaError_t launch_gemv(void* out, ElemType out_type, const void* x, ElemType act_type, const void* w, ElemType w_type,
                        const void* bias, ElemType bias_type, int64_t m, int64_t n, int64_t k, bool accumulate,
                        cudaStream_t stream);

// --- cuda_gemv_rows.cu (M = 1 with bf16/f16 weights: launch_gemv's path, and the fused
// projections of a batch-1 decode step) ------------------------------------------------
// What the single-row kernel does with each output row.
enum class RowsEpilogue : int {
  kStore,        // out[N] = x @ w^T (+ bias)
  kAccumulate,   // out[N] += x @ w^T (out in the activation type; the residual stream)
  kSiluMul,      // out[F] = silu(gate) * up, w = [gate (F rows) | up (F rows)]
  kRopeWriteKv,  // out = the QKV row (+ bias) with q and k rotated; k and v also go to the
                 // cache slot of the one token (rope: as launch_rope_write_kv; qkv unused)
};
struct GemvRowsArgs {
  void* out = nullptr;
  ElemType out_type = ElemType::kF32;
  const void* x = nullptr;  // [1, K]
  ElemType act_type = ElemType::kF32;
  const void* w = nullptr;  // [N, K]
  ElemType w_type = ElemType::kBF16;
  const void* bias = nullptr;  // [N] or null
  ElemType bias_type = ElemType::kF32;
  int64_t n = 0;
  int64_t k = 0;
  RowsEpilogue epilogue = RowsEpilogue::kStore;
  RopeKvArgs rope;
  // Set by launch_gemv_rows: the owners (warps, or warp pairs) of the output units.
  int64_t units_per_owner = 0;
  int64_t owners = 0;
};
// Whether the single-row kernel takes this call: M = 1, 2-byte weights, K % 8 == 0,
// 16-byte aligned x and w, BW_GEMV_ROWS is not "0" in the environment, and for kStore /
// kAccumulate at least 16 rows per SM (launch_gemv's multi-row kernel does smaller N); the
// fused kinds need bf16 throughout and (RoPE) rotary_dim == head_dim and a bf16 cache.
bool gemv_rows_applies(const GemvRowsArgs& args, int64_t m, int num_sms);
cudaError_t launch_gemv_rows(const GemvRowsArgs& args, int num_sms, cudaStream_t stream);
// Launches of the fused kinds (kSiluMul, kRopeWriteKv) so far, process-wide (tests check
// the dispatch with it).
int64_t gemv_rows_fused_launches();

// out[r, :] += bias (rows x n, out in out_type, bias in bias_type).
cudaError_t launch_add_bias(void* out, ElemType out_type, const void* bias, ElemType bias_type, int64_t rows, int64_t n,
                            cudaStream_t stream);

// --- cuda_decoder_stack.cu (a whole batch-1 decode step of a dense decoder in one
// persistent kernel; Hopper: needs sm_90a code, see prefill_attention_wgmma_available) ---
struct DecoderStackLayer {
  const void* attn_norm = nullptr;  // [H]
  const void* qkv = nullptr;        // [(Hq + 2*Hkv) * D, H]
  const void* qkv_bias = nullptr;   // [(Hq + 2*Hkv) * D] or null
  const void* o_proj = nullptr;     // [H, Hq * D]
  const void* ffn_norm = nullptr;   // [H]
  const void* gate_up = nullptr;    // [2F, H]
  const void* down = nullptr;       // [H, F]
  void* k_cache = nullptr;          // [num_blocks, block_size, Hkv, D]
  void* v_cache = nullptr;
};
// Everything in bf16 but the f32 logits, frequencies and partials; all device memory.
struct DecoderStackArgs {
  const DecoderStackLayer* layers = nullptr;  // [num_layers]
  int num_layers = 0;
  int hidden = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int intermediate = 0;
  int64_t vocab = 0;
  float eps = 0.0f;
  float scale = 1.0f;
  const float* inv_freq = nullptr;  // [head_dim / 2]
  void* residual = nullptr;         // [H]: the token's embedding in, the last residual out
  void* qkv = nullptr;              // scratch [(Hq + 2*Hkv) * D]
  void* attn_out = nullptr;         // scratch [Hq * D]
  void* act = nullptr;              // scratch [F]
  const void* final_norm = nullptr;
  const void* lm_head = nullptr;          // [V, H]
  float* logits = nullptr;                // [V]
  const int32_t* positions = nullptr;     // [1]
  const int32_t* slots = nullptr;         // [1]
  const int32_t* kv_lens = nullptr;       // [1]
  const int32_t* block_tables = nullptr;  // [1, table_width]
  int table_width = 0;
  int block_size = 0;
  int64_t num_blocks = 0;
  float* partials = nullptr;  // decoder_stack_partial_floats
  int* counters = nullptr;    // decoder_stack_counters, zeroed once (the kernel leaves them zero)
  int* error_flag = nullptr;
  // Measurement aid (BW_CUDA_STACK_DEBUG; wrong results): 1 skips the attention, 2 also
  // every wait between ops (the pure weight stream).
  int debug = 0;
};
// Shapes the kernel takes (head_dim 64 / 128, <= 8 query heads per KV head, rows that
// keep 16-byte alignment, a plan that fits shared memory, a block table short enough that
// the kernel beats the op-by-op path: table_width * block_size bounds the context); the
// dtypes are the caller's to check, the launch also wants the layer table and 16-byte
// aligned buffers.
bool decoder_stack_supported(const DecoderStackArgs& args, int num_sms);
int64_t decoder_stack_counters(const DecoderStackArgs& args);
int64_t decoder_stack_partial_floats(const DecoderStackArgs& args, int num_sms);
// The plan's weight ring (pages in shared memory, each page_bytes) and attention tile
// buffers for these args (tests pin the shapes' plans; the ring's depth sets the speed).
struct DecoderStackRing {
  int pages = 0, page_bytes = 0, tile_buffers = 0;
};
DecoderStackRing decoder_stack_ring(const DecoderStackArgs& args, int num_sms);
// One CTA per SM (num_sms of them, all resident at once).
cudaError_t launch_decoder_stack(const DecoderStackArgs& args, int num_sms, cudaStream_t stream);
// Launches so far, process-wide (tests check the dispatch with it).
int64_t decoder_stack_launches();

// --- cuda_sampling.cu --------------------------------------------------------------------
// Whether a row with this temperature samples greedily: temperature <= 0, or 1 /
// temperature not finite. One definition for the kernel and for the host, which sends calls
// of greedy rows to the split argmax.
__host__ __device__ inline bool sampling_is_greedy(float temperature) {
  return !(temperature > 0.0f) || std::isinf(1.0f / temperature);
}
// One row's sampling parameters as the kernel reads them (Backend::sample's
// DeviceSamplingRow plus the row's range in the penalty arrays), validated on the host.
struct SamplingRowArgs {
  float temperature = 0.0f;  // <= 0 (or 1 / temperature not finite): greedy
  int32_t top_k = 0;         // <= 0 or >= V: off
  float top_p = 1.0f;        // (0, 1]
  float min_p = 0.0f;        // [0, 1]
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t penalty_begin = 0;  // [penalty_begin, penalty_end) of penalty_tokens / counts
  int32_t penalty_end = 0;
  int32_t pending_row = -1;  // >= 0: pending_ids[pending_row] is one more output token
  int32_t bias_begin = 0;    // [bias_begin, bias_end) of bias_tokens / bias_values
  int32_t bias_end = 0;
  int32_t logprobs = -1;  // -1: none; else the record's top entries (<= kMaxTopLogprobs)
  int32_t work_row = -1;  // >= 0: the row is modified in work[work_row] (logits keep the raw row)
  uint64_t seed = 0;
  uint64_t step = 0;
};
constexpr int kMaxTopLogprobs = 20;
constexpr int kLogprobsRecord = 1 + kMaxTopLogprobs;
struct LogprobEntry {  // the layout of bw::DeviceTokenLogprob
  int32_t token_id;
  float logprob;
};
// Whether the row sets any penalty (applied to its history tokens, if it has any). One
// definition for the kernel and for the host's argmax dispatch, as sampling_is_greedy.
__host__ __device__ inline bool sampling_has_penalty(const SamplingRowArgs& a) {
  return a.repetition_penalty != 1.0f || a.presence_penalty != 0.0f || a.frequency_penalty != 0.0f;
}
// Whether the row has a penalty and a history (listed or pending) to apply it to.
__host__ __device__ inline bool sampling_applies_penalty(const SamplingRowArgs& a) {
  return (a.penalty_end > a.penalty_begin || a.pending_row >= 0) && sampling_has_penalty(a);
}
// Whether top-k cuts the row (top-p cuts it when top_p < 1): one definition for the kernels
// and the host's dispatch.
__host__ __device__ inline bool sampling_uses_top_k(const SamplingRowArgs& a, int64_t vocab) {
  return a.top_k > 0 && a.top_k < vocab;
}
// Whether sampling the row changes its logits (bias, penalties, or probabilities for a
// draw): a row that also wants log-probabilities of the raw row works on a copy.
__host__ __device__ inline bool sampling_modifies_row(const SamplingRowArgs& a) {
  return !sampling_is_greedy(a.temperature) || a.bias_end > a.bias_begin || sampling_applies_penalty(a);
}
// Which selection a row's draw makes (top-k first, then top-p over it, as sample_kernel
// orders them); greedy rows make none.
enum class SamplingCut { kNone, kTopK, kTopP };
// What sampling a row selects: one definition for the split kernels and the host's choice
// of kernels.
struct SamplingRowPlan {
  bool draws = false;                    // a temperature draw (else the argmax)
  SamplingCut cut = SamplingCut::kNone;  // kNone unless draws
  int top_logprobs = -1;                 // -1: no record; else the record's top entries
  // The row counts the logits near its maximum (the top-k bound, top log-probabilities).
  __host__ __device__ bool near() const { return cut == SamplingCut::kTopK || top_logprobs > 0; }
  // The row gathers candidates near its maximum (a cut, or top log-probabilities).
  __host__ __device__ bool gathers() const { return cut != SamplingCut::kNone || top_logprobs > 0; }
};
__host__ __device__ inline SamplingRowPlan sampling_row_plan(const SamplingRowArgs& a, int64_t vocab) {
  SamplingRowPlan plan;
  plan.draws = !sampling_is_greedy(a.temperature);
  plan.cut = !plan.draws                     ? SamplingCut::kNone
             : sampling_uses_top_k(a, vocab) ? SamplingCut::kTopK
             : a.top_p < 1.0f                ? SamplingCut::kTopP
                                             : SamplingCut::kNone;
  plan.top_logprobs = a.logprobs;
  return plan;
}
// out[r] <- the token sampled from row r of logits [rows, vocab] f32 (modified: bias,
// penalties, then probabilities; in work[work_row] instead for a row with a work_row). One
// thread block per row; penalty_tokens and bias_tokens are distinct per row and in [0,
// vocab); a row's pending token (pending_ids[pending_row], ignored outside [0, vocab))
// counts as one more output occurrence. Rows with logprobs >= 0 write their record
// (Backend::sample) at logprobs_out[r * kLogprobsRecord]. All pointers are device memory.
struct SampleKernelArgs {
  int32_t* out = nullptr;
  float* logits = nullptr;
  int64_t rows = 0;
  int64_t vocab = 0;
  const SamplingRowArgs* row_args = nullptr;
  const int32_t* penalty_tokens = nullptr;
  const int32_t* penalty_output_counts = nullptr;
  const int32_t* pending_ids = nullptr;
  const int32_t* bias_tokens = nullptr;
  const float* bias_values = nullptr;
  LogprobEntry* logprobs_out = nullptr;
  float* work = nullptr;  // [rows with a work_row, vocab]
  // Selections among the logits near the maximum ranked in shared memory when they fit
  // (false: always the radix select and the row walk; the same tokens, for tests).
  bool shared_select = true;
  // The split path's rows that need this kernel after all (launch_split_sample): rows with
  // done[r] != 0 are sampled already, and the others' bias and penalties are applied.
  const int32_t* done = nullptr;
  bool bias_applied = false;
};
cudaError_t launch_sample(const SampleKernelArgs& args, cudaStream_t stream);
// --- cuda_sampling_split.cu: rows split over many blocks ---------------------------------
// The workspace launch_split_sample and launch_greedy_argmax need for `rows` rows of `vocab`
// logits.
int64_t split_sample_workspace_bytes(int64_t rows, int64_t vocab);
// What the host knows of a call's rows that saves work: whether some row has a bias or a
// penalty to apply; counts logits near its maximum (a top-k cut or top log-probabilities),
// counts probability floors (a top-p cut), or reports log-probabilities; whether some row
// gathers candidates (any cut, or top log-probabilities) and so may fall back to
// launch_sample; and whether some row draws from a cut set (whose bound may be refined).
struct SplitSampleCall {
  bool bias_or_penalties = false;
  bool near = false;
  bool floors = false;
  bool logprobs = false;
  bool gathers = false;
  bool cuts = false;
};
// launch_sample's tokens and records, each row over many blocks; a row that reports
// log-probabilities may not have a bias or penalties (its logits are modified in place).
// Rows whose candidates are too many take launch_sample after it.
cudaError_t launch_split_sample(const SampleKernelArgs& args, const SplitSampleCall& call, void* workspace, int num_sms,
                                cudaStream_t stream);
// Where launch_split_sample leaves, in `workspace`, which rows it sampled (1) and which it
// left to launch_sample (0): [rows] int32, valid once the call's kernels have run.
const int32_t* split_sample_done_flags(void* workspace, int64_t rows, int64_t vocab);
// Calls of launch_split_sample so far, process-wide (tests check the dispatch with it).
int64_t split_sample_launches();
// The same token for a call whose rows are all greedy without a bias or penalties (logits
// not modified): the argmax alone, the rows split over many blocks.
cudaError_t launch_greedy_argmax(int32_t* out, const float* logits, int64_t rows, int64_t vocab, void* workspace,
                                 int num_sms, cudaStream_t stream);
// ids[i] <- src[rows[i]] where 0 <= rows[i] < src_rows; other ids stay (Backend::select_tokens).
cudaError_t launch_select_tokens(int32_t* ids, const int32_t* src, int64_t src_rows, const int32_t* rows, int64_t n,
                                 cudaStream_t stream);

}  // namespace bw::cuda
