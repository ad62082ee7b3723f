#include "backend/cuda/cuda_backend.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <tuple>
#include <utility>

#include "backend/cuda/cuda_env.h"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/cuda_step_timing.h"
#include "backend/rope.h"

namespace bw {

namespace {

using cuda::ElemType;

// Matmuls of up to this many rows run on the own GEMV (cuda_gemv.cu), larger ones on
// cuBLASLt (BW_GEMV_MAX_M overrides it, for A/B runs). From M = 3 cuBLASLt's kernels read
// the weights faster than the GEMV's tensor-core path: H200, decode tokens/s, 512-token
// prompts, cuBLASLt vs the GEMV in one run: 1.5B batch 4 2,051-2,075 vs 1,747-1,754, 8
// 3,937-4,004 vs 3,427-3,462, 16 7,628-7,849 vs 6,170-6,277; 7B batch 4 831 vs 627, 8
// 1,636 vs 1,253, 16 3,207 vs 2,252. At M = 2 the GEMV's FMA path is ahead (1.5B 1,016
// vs 835-888), at M = 1 its single-row kernel.
int64_t gemv_max_m() {
  static const int64_t max_m = [] {
    const char* env = std::getenv("BW_GEMV_MAX_M");
    return env != nullptr ? std::atoll(env) : int64_t{2};
  }();
  return max_m;
}
constexpr size_t kLtWorkspaceBytes = size_t{32} << 20;
constexpr size_t kMinAllocation = 256;

std::string describe(const TensorView& t) { return t.shape.to_string() + " " + std::string(dtype_name(t.dtype)); }

bool is_act(DType t) { return t == DType::kF32 || t == DType::kBF16; }

ElemType elem(DType t) {
  switch (t) {
    case DType::kF16:
      return ElemType::kF16;
    case DType::kBF16:
      return ElemType::kBF16;
    default:
      return ElemType::kF32;
  }
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kBF16:
      return CUDA_R_16BF;
    default:
      return CUDA_R_32F;
  }
}

Status expect_act(std::string_view op, std::string_view name, const TensorView& t, int rank) {
  if (!is_act(t.dtype)) return InvalidArgument("{}: {} {} must be f32 or bf16", op, name, describe(t));
  if (t.rank() != rank) return InvalidArgument("{}: {} {} must have rank {}", op, name, describe(t), rank);
  for (int i = 0; i < rank; ++i) {
    if (t.dim(i) < 0) return InvalidArgument("{}: {} {} has a negative dimension", op, name, describe(t));
  }
  if (t.data == nullptr && t.numel() > 0) return InvalidArgument("{}: {} {} has no data", op, name, describe(t));
  return OkStatus();
}

Status expect_storage(std::string_view op, std::string_view name, const TensorView& t, int rank) {
  if (!is_float(t.dtype)) return InvalidArgument("{}: {} {} must be f32, f16 or bf16", op, name, describe(t));
  if (t.rank() != rank) return InvalidArgument("{}: {} {} must have rank {}", op, name, describe(t), rank);
  for (int i = 0; i < rank; ++i) {
    if (t.dim(i) < 0) return InvalidArgument("{}: {} {} has a negative dimension", op, name, describe(t));
  }
  if (t.data == nullptr && t.numel() > 0) return InvalidArgument("{}: {} {} has no data", op, name, describe(t));
  return OkStatus();
}

Status expect_i32(std::string_view op, std::string_view name, const TensorView& t, int64_t n) {
  if (t.dtype != DType::kI32 || t.rank() != 1 || t.dim(0) != n) {
    return InvalidArgument("{}: {} {} must be [{}] i32", op, name, describe(t), n);
  }
  if (t.data == nullptr && n > 0) return InvalidArgument("{}: {} has no data", op, name);
  return OkStatus();
}

bool overlaps(const TensorView& a, const TensorView& b) {
  if (a.data == nullptr || b.data == nullptr) return false;
  const auto a0 = reinterpret_cast<uintptr_t>(a.data);
  const auto b0 = reinterpret_cast<uintptr_t>(b.data);
  const uint64_t an = a.nbytes(), bn = b.nbytes();
  if (an == 0 || bn == 0) return false;
  return a0 < b0 + bn && b0 < a0 + an;
}

// The checks rope_write_kv and paged_attention share.
struct AttnDims {
  int64_t num_tokens = 0;
  int64_t qkv_width = 0;
  int64_t num_blocks = 0;
  int64_t block_size = 0;
};

Status check_attention(std::string_view op, const TensorView& qkv, const AttentionParams& attn,
                       const KvCacheLayer& cache, AttnDims* d) {
  if (attn.num_heads <= 0 || attn.num_kv_heads <= 0 || attn.head_dim <= 0) {
    return InvalidArgument("{}: num_heads {}, num_kv_heads {} and head_dim {} must be positive", op, attn.num_heads,
                           attn.num_kv_heads, attn.head_dim);
  }
  if (attn.num_heads % attn.num_kv_heads != 0) {
    return InvalidArgument("{}: num_heads {} is not a multiple of num_kv_heads {}", op, attn.num_heads,
                           attn.num_kv_heads);
  }
  if (attn.head_dim > cuda::kAttentionMaxHeadDim) {
    return InvalidArgument("{}: head_dim {} is larger than the CUDA kernels' {}", op, attn.head_dim,
                           cuda::kAttentionMaxHeadDim);
  }
  RETURN_IF_ERROR(expect_act(op, "qkv", qkv, 2));
  d->qkv_width = static_cast<int64_t>(attn.num_heads + 2 * attn.num_kv_heads) * attn.head_dim;
  if (qkv.dim(1) != d->qkv_width) {
    return InvalidArgument("{}: qkv {} must have (num_heads {} + 2 * num_kv_heads {}) * head_dim {} = {} columns", op,
                           qkv.shape.to_string(), attn.num_heads, attn.num_kv_heads, attn.head_dim, d->qkv_width);
  }
  d->num_tokens = qkv.dim(0);
  RETURN_IF_ERROR(expect_storage(op, "cache.k", cache.k, 4));
  RETURN_IF_ERROR(expect_storage(op, "cache.v", cache.v, 4));
  if (cache.v.dtype != cache.k.dtype || !(cache.v.shape == cache.k.shape)) {
    return InvalidArgument("{}: cache.k {} and cache.v {} must have the same shape and dtype", op, describe(cache.k),
                           describe(cache.v));
  }
  if (cache.k.dim(2) != attn.num_kv_heads || cache.k.dim(3) != attn.head_dim || cache.k.dim(1) <= 0) {
    return InvalidArgument("{}: cache.k {} must be [num_blocks, block_size > 0, num_kv_heads {}, head_dim {}]", op,
                           cache.k.shape.to_string(), attn.num_kv_heads, attn.head_dim);
  }
  d->num_blocks = cache.k.dim(0);
  d->block_size = cache.k.dim(1);
  if (overlaps(qkv, cache.k) || overlaps(qkv, cache.v)) {
    return InvalidArgument("{}: qkv {} must not overlap the cache", op, describe(qkv));
  }
  return OkStatus();
}

Status check_norm(std::string_view op, const TensorView& out, const TensorView& x, const TensorView& weight) {
  RETURN_IF_ERROR(expect_act(op, "x", x, 2));
  if (out.dtype != x.dtype || !(out.shape == x.shape)) {
    return InvalidArgument("{}: out {} and x {} must have the same shape and dtype", op, describe(out), describe(x));
  }
  if (out.data == nullptr && out.numel() > 0) return InvalidArgument("{}: out has no data", op);
  RETURN_IF_ERROR(expect_storage(op, "weight", weight, 1));
  if (weight.dim(0) != x.dim(1)) {
    return InvalidArgument("{}: weight {} must be [{}] for x {}", op, weight.shape.to_string(), x.dim(1),
                           x.shape.to_string());
  }
  return OkStatus();
}

// out [M, N] = x [M, K] @ w [N, K]^T (+ bias [N]).
Status check_matmul(std::string_view op, const TensorView& out, const TensorView& x, const TensorView& w,
                    const TensorView& bias) {
  RETURN_IF_ERROR(expect_act(op, "x", x, 2));
  RETURN_IF_ERROR(expect_storage(op, "w", w, 2));
  RETURN_IF_ERROR(expect_act(op, "out", out, 2));
  const int64_t m = x.dim(0), k = x.dim(1), n = w.dim(0);
  if (w.dim(1) != k || out.dim(0) != m || out.dim(1) != n) {
    return InvalidArgument("{}: x {}, w {} and out {} do not fit out [M, N] = x [M, K] @ w [N, K]^T", op, describe(x),
                           describe(w), describe(out));
  }
  if (out.dtype != x.dtype && out.dtype != DType::kF32) {
    return InvalidArgument("{}: out {} must be in x's dtype or f32 (x {})", op, describe(out), describe(x));
  }
  if (!bias.empty()) {
    RETURN_IF_ERROR(expect_storage(op, "bias", bias, 1));
    if (bias.dim(0) != n) return InvalidArgument("{}: bias {} must be [{}]", op, describe(bias), n);
  }
  if (overlaps(out, x) || overlaps(out, w)) return InvalidArgument("{}: out must not overlap x or w", op);
  return OkStatus();
}

const char* kernel_error_text(int code) {
  switch (code) {
    case cuda::kBadTokenId:
      return "embedding: an id is outside the table's rows";
    case cuda::kBadSlot:
      return "rope_write_kv: a meta.slot_mapping entry is outside [-1, num_slots)";
    case cuda::kBadBlockId:
      return "paged_attention: a block_tables entry is outside the cache's blocks";
    case cuda::kBadSequence:
      return "paged_attention: a sequence has kv_lens < its query tokens, or more blocks than block_tables has "
             "columns, or query_start does not cover the tokens";
    case cuda::kBadPosition:
      return "rope_write_kv: a meta.positions entry is negative";
    default:
      return "a kernel reported an unknown error";
  }
}

}  // namespace

// One cuBLASLt plan (descriptors + an algorithm) per problem shape. The heuristic costs
// ~0.2-0.3 ms a call on an H200 (measured: ~1,100 new plans, 316 ms, in a server's first
// surge of 400 requests), and mixed prefill/decode steps bring new row counts M for a long
// time, so above 128 rows a plan borrows the algorithm chosen for its bucket (M rounded up
// to a multiple of 64): at most ~60 heuristic calls per weight shape instead of ~2,000.
struct CudaBackend::LtCache {
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;
    bool borrowed = false;  // algo was chosen for the bucket's M
  };
  using Key = std::tuple<int64_t, int64_t, int64_t, int, int>;  // M, N, K, x/w dtype, out dtype
  cublasLtHandle_t lt = nullptr;
  size_t workspace_bytes = 0;
  std::map<Key, Plan> plans;
  std::map<Key, std::optional<cublasLtMatmulAlgo_t>> bucket_algos;  // nullopt: the heuristic found none
  mutable int64_t heuristic_calls = 0;                              // for BW_CUDA_LOG_FIRST_USE

  LtCache(cublasLtHandle_t handle, size_t workspace) : lt(handle), workspace_bytes(workspace) {}
  LtCache(const LtCache&) = delete;
  LtCache& operator=(const LtCache&) = delete;
  ~LtCache() {
    for (auto& [key, p] : plans)
      destroy(&p);
  }

  static constexpr int64_t kExactRows = 128;
  static constexpr int64_t kBucketRows = 64;
  static int64_t bucket_of(int64_t m) {
    return m <= kExactRows ? m : (m + kBucketRows - 1) / kBucketRows * kBucketRows;
  }

  static void destroy(Plan* p) {
    if (p->op != nullptr) cublasLtMatmulDescDestroy(p->op);
    if (p->a != nullptr) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b != nullptr) cublasLtMatrixLayoutDestroy(p->b);
    if (p->c != nullptr) cublasLtMatrixLayoutDestroy(p->c);
    *p = Plan{};
  }

  // Descriptors of out = x @ w^T in a column-major view: out^T [N, M] = w [K, N]^T @ x^T [K, M].
  static bool describe(const Key& key, Plan* p) {
    const auto [m, n, k, x_dtype, out_dtype] = key;
    const cudaDataType_t t = cuda_type(static_cast<DType>(x_dtype));
    bool ok = cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS;
    const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
    ok = ok && cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)) ==
                   CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)) ==
                   CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatrixLayoutCreate(&p->a, t, static_cast<uint64_t>(k), static_cast<uint64_t>(n), k) ==
                   CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatrixLayoutCreate(&p->b, t, static_cast<uint64_t>(k), static_cast<uint64_t>(m), k) ==
                   CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatrixLayoutCreate(&p->c, cuda_type(static_cast<DType>(out_dtype)), static_cast<uint64_t>(n),
                                          static_cast<uint64_t>(m), n) == CUBLAS_STATUS_SUCCESS;
    return ok;
  }

  std::optional<cublasLtMatmulAlgo_t> heuristic(const Plan& p) const {
    ++heuristic_calls;
    cublasLtMatmulPreference_t pref = nullptr;
    bool ok = cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                                    sizeof(workspace_bytes)) == CUBLAS_STATUS_SUCCESS;
    cublasLtMatmulHeuristicResult_t result{};
    int count = 0;
    ok = ok &&
         cublasLtMatmulAlgoGetHeuristic(lt, p.op, p.a, p.b, p.c, p.c, pref, 1, &result, &count) ==
             CUBLAS_STATUS_SUCCESS &&
         count > 0;
    if (pref != nullptr) cublasLtMatmulPreferenceDestroy(pref);
    if (!ok) return std::nullopt;
    return result.algo;
  }

  // The bucket's algorithm, asked of the heuristic once per bucket.
  const std::optional<cublasLtMatmulAlgo_t>& bucket_algo(const Key& key) {
    Key bucket = key;
    std::get<0>(bucket) = bucket_of(std::get<0>(key));
    auto it = bucket_algos.find(bucket);
    if (it == bucket_algos.end()) {
      Plan rep;
      std::optional<cublasLtMatmulAlgo_t> algo;
      if (describe(bucket, &rep)) algo = heuristic(rep);
      destroy(&rep);
      it = bucket_algos.emplace(bucket, algo).first;
    }
    return it->second;
  }

  // The plan of `key`, made at its first use.
  Plan& get(const Key& key) {
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    Plan p;
    p.ok = describe(key, &p);
    if (p.ok) {
      // (An M that is itself a bucket's edge takes the bucket's algorithm too: one heuristic
      // call for both.)
      const int64_t m = std::get<0>(key);
      std::optional<cublasLtMatmulAlgo_t> algo;
      if (m <= kExactRows) {
        algo = heuristic(p);
      } else {
        algo = bucket_algo(key);
        p.borrowed = algo.has_value() && bucket_of(m) != m;
        if (!algo && bucket_of(m) != m) algo = heuristic(p);  // none for the bucket's M: this M's
      }
      p.ok = algo.has_value();
      if (p.ok) p.algo = *algo;
    }
    return plans.emplace(key, p).first->second;
  }

  // After cuBLASLt refused a borrowed algorithm: the heuristic's choice for the plan's own M.
  void unborrow(Plan* p) const {
    const std::optional<cublasLtMatmulAlgo_t> algo = heuristic(*p);
    p->borrowed = false;
    p->ok = algo.has_value();
    if (p->ok) p->algo = *algo;
  }
};

// Per-op GPU time from events recorded around each op (the stream is not synchronized, so
// launches overlap as in a normal run); resolved when the host next waits for the stream.
struct CudaBackend::Profile {
  struct Pending {
    std::string name;
    cudaEvent_t start, end;
  };
  std::map<std::string, std::pair<double, int64_t>> ops;  // name -> GPU seconds, calls
  std::vector<Pending> pending;
  std::vector<cudaEvent_t> free_events;

  cudaEvent_t take_event() {
    if (!free_events.empty()) {
      cudaEvent_t e = free_events.back();
      free_events.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    cudaEventCreate(&e);
    return e;
  }
  // Call after the stream is idle.
  void resolve() {
    for (const Pending& p : pending) {
      float ms = 0.0f;
      if (cudaEventElapsedTime(&ms, p.start, p.end) == cudaSuccess) {
        auto& entry = ops[p.name];
        entry.first += ms * 1e-3;
        entry.second += 1;
      }
      free_events.push_back(p.start);
      free_events.push_back(p.end);
    }
    pending.clear();
    cudaGetLastError();
  }
  ~Profile() {
    for (cudaEvent_t e : free_events)
      cudaEventDestroy(e);
  }

  void print() const {
    std::vector<std::pair<std::string, std::pair<double, int64_t>>> rows(ops.begin(), ops.end());
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
    double total = 0.0;
    for (const auto& r : rows)
      total += r.second.first;
    std::fprintf(stderr, "cuda profile (GPU time per op, from events): %.3f s in ops\n", total);
    for (const auto& [name, v] : rows) {
      std::fprintf(stderr, "  %10.3f ms  %5.1f%%  %8lld  %-40s %9.1f us/call\n", v.first * 1e3,
                   total > 0 ? 100.0 * v.first / total : 0.0, static_cast<long long>(v.second), name.c_str(),
                   v.first * 1e6 / static_cast<double>(v.second));
    }
  }
};

// Brackets one op with events when profiling (a no-op otherwise).
class ProfiledOp {
 public:
  template <typename NameFn>
  ProfiledOp(CudaBackend* backend, NameFn&& name) {
    if (backend->profile_ == nullptr) return;
    backend_ = backend;
    name_ = name();
    start_ = backend_->profile_->take_event();
    cudaEventRecord(start_, backend_->stream_);
  }
  ~ProfiledOp() {
    if (backend_ == nullptr) return;
    cudaEvent_t end = backend_->profile_->take_event();
    cudaEventRecord(end, backend_->stream_);
    backend_->profile_->pending.push_back({std::move(name_), start_, end});
  }
  ProfiledOp(const ProfiledOp&) = delete;
  ProfiledOp& operator=(const ProfiledOp&) = delete;

 private:
  CudaBackend* backend_ = nullptr;
  std::string name_;
  cudaEvent_t start_ = nullptr;
};

namespace {

// "1", "2-16", "17-256", ... : row counts grouped for the profile.
std::string rows_bucket(int64_t m) {
  if (m <= 1) return "1";
  int64_t hi = 16;
  while (hi < m)
    hi *= 16;
  return fmt::format("{}-{}", hi == 16 ? 2 : hi / 16 + 1, hi);
}

}  // namespace

CudaBackend::CudaBackend(const CudaBackendOptions& options) : options_(options) {
  const char* env = std::getenv("BW_CUDA_PROFILE");
  if (env != nullptr && std::string(env) == "1") profile_ = std::make_unique<Profile>();
  const char* timing = std::getenv("BW_CUDA_STEP_TIMING");
  if (timing != nullptr && std::string(timing) == "1") step_timing_ = std::make_unique<CudaStepTiming>();
  const char* first_use = std::getenv("BW_CUDA_LOG_FIRST_USE");
  log_first_use_ = first_use != nullptr && std::string(first_use) == "1";
}

void CudaBackend::log_first_use(const std::string& what, std::chrono::steady_clock::time_point since) const {
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since).count();
  std::fprintf(stderr, "cuda first use: %s (%.2f ms)\n", what.c_str(), ms);
}

CudaBackend::~CudaBackend() {
  step_timing_.reset();  // prints; its events go before the stream
  if (profile_ != nullptr) {
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    profile_->resolve();
    profile_->print();
  }
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  lt_cache_.reset();
  if (lt_ != nullptr) cublasLtDestroy(lt_);
  if (lt_workspace_ != nullptr) cudaFree(lt_workspace_);
  if (inv_freq_dev_ != nullptr) cudaFreeAsync(inv_freq_dev_, stream_);
  if (attn_ws_ != nullptr) cudaFreeAsync(attn_ws_, stream_);
  if (attn_general_ws_ != nullptr) cudaFreeAsync(attn_general_ws_, stream_);
  if (attn_counters_ != nullptr) cudaFreeAsync(attn_counters_, stream_);
  for (void* p : {stack_layers_, stack_partials_, stack_counters_, sample_work_})
    if (p != nullptr) cudaFreeAsync(p, stream_);
  for (void* p : retired_scratch_)
    cudaFreeAsync(p, stream_);
  for (SampleStaging& slot : sample_staging_)
    if (slot.dev != nullptr) cudaFreeAsync(slot.dev, stream_);
  if (stream_ != nullptr) {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
  if (error_flag_ != nullptr) cudaFreeHost(error_flag_);
  for (SampleStaging& slot : sample_staging_) {
    if (slot.host != nullptr) cudaFreeHost(slot.host);
    if (slot.done != nullptr) cudaEventDestroy(slot.done);
  }
  for (UploadSlot& slot : upload_slots_) {
    if (slot.host != nullptr) cudaFreeHost(slot.host);
    if (slot.done != nullptr) cudaEventDestroy(slot.done);
  }
}

Result<std::unique_ptr<CudaBackend>> CudaBackend::create(const CudaBackendOptions& options) {
  if (options.activation_dtype != DType::kF32 && options.activation_dtype != DType::kBF16) {
    return InvalidArgument("cuda: activation dtype must be f32 or bf16, got {}", dtype_name(options.activation_dtype));
  }
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    return Unavailable("cuda: no CUDA device is available ({}); use --device cpu",
                       err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
  }
  if (options.device < 0 || options.device >= count) {
    return Unavailable("cuda: device {} does not exist ({} device{} visible); use --device cpu or cuda:0",
                       options.device, count, count == 1 ? "" : "s");
  }
  std::unique_ptr<CudaBackend> backend(new CudaBackend(options));
  RETURN_IF_ERROR(backend->init());
  return backend;
}

Status CudaBackend::init() {
  BW_CUDA_TRY(cudaSetDevice(options_.device));
  cudaDeviceProp prop{};
  BW_CUDA_TRY(cudaGetDeviceProperties(&prop, options_.device));
  device_name_ = prop.name;
  num_sms_ = prop.multiProcessorCount;
  // BW_CUDA_WGMMA=0 keeps the mma.sync prefill attention on Hopper too (for A/B runs).
  const bool hopper_kernels = cuda::prefill_attention_wgmma_available();  // also the decoder stack's condition
  wgmma_prefill_ = cuda::env_switch_on("BW_CUDA_WGMMA") && hopper_kernels;
  // BW_CUDA_STACK=0 runs batch-1 decode steps op by op (A/B runs).
  decoder_stack_ = cuda::env_switch_on("BW_CUDA_STACK") && hopper_kernels;
  // BW_CUDA_SAMPLE_RADIX=1 keeps sampling's selections off shared memory (tests, A/B runs).
  const char* radix = std::getenv("BW_CUDA_SAMPLE_RADIX");
  sample_shared_select_ = radix == nullptr || std::string_view(radix) != "1";
  // BW_CUDA_SAMPLE_SPLIT=0 samples every call one block a row, =all splits the rows of any
  // call it can (tests, A/B runs).
  const char* split = std::getenv("BW_CUDA_SAMPLE_SPLIT");
  const std::string_view split_mode = split == nullptr ? "" : split;
  sample_split_rows_with_candidates_ = split_mode == "0"     ? -1
                                       : split_mode == "all" ? std::numeric_limits<int64_t>::max()
                                                             : kSplitRowsWithCandidates;
  cudaStream_t stream = nullptr;
  BW_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  stream_ = stream;
  // Keep freed memory in the pool instead of returning it to the driver at each sync.
  cudaMemPool_t pool = nullptr;
  BW_CUDA_TRY(cudaDeviceGetDefaultMemPool(&pool, options_.device));
  uint64_t threshold = UINT64_MAX;
  BW_CUDA_TRY(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  void* flag = nullptr;
  BW_CUDA_TRY(cudaHostAlloc(&flag, sizeof(int), cudaHostAllocMapped));
  error_flag_ = static_cast<int*>(flag);
  *error_flag_ = 0;
  cublasLtHandle_t lt = nullptr;
  if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) return Unavailable("cuda: cublasLtCreate failed");
  lt_ = lt;
  BW_CUDA_TRY(cudaMalloc(&lt_workspace_, kLtWorkspaceBytes));
  lt_workspace_bytes_ = kLtWorkspaceBytes;
  lt_cache_ = std::make_unique<LtCache>(lt_, lt_workspace_bytes_);
  return OkStatus();
}

Status CudaBackend::fail(int cuda_error, const char* what, const char* file, int line) {
  const auto err = static_cast<cudaError_t>(cuda_error);
  Status s = err == cudaErrorMemoryAllocation
                 ? ResourceExhausted("cuda: out of device memory in {} at {}:{}", what, file, line)
                 : Internal("cuda: {} failed at {}:{}: {}", what, file, line, cudaGetErrorString(err));
  // Allocation failures leave the context usable; anything else poisons it.
  if (err != cudaErrorMemoryAllocation) {
    cudaGetLastError();
    if (sticky_.ok()) sticky_ = s;
  }
  return s;
}

Status CudaBackend::check_launch(int cuda_error, const char* op) {
  if (cuda_error == cudaSuccess) return OkStatus();
  return fail(cuda_error, op, __FILE__, __LINE__);
}

Status CudaBackend::take_kernel_error() {
  const int code = __atomic_load_n(error_flag_, __ATOMIC_ACQUIRE);
  if (code == cuda::kKernelOk) return OkStatus();
  *error_flag_ = 0;
  return InvalidArgument("cuda: {}", kernel_error_text(code));
}

Status CudaBackend::memory_info(uint64_t* free_bytes, uint64_t* total_bytes) const {
  size_t f = 0, t = 0;
  const cudaError_t err = cudaMemGetInfo(&f, &t);
  if (err != cudaSuccess) return Internal("cuda: cudaMemGetInfo failed: {}", cudaGetErrorString(err));
  *free_bytes = f;
  *total_bytes = t;
  return OkStatus();
}

// --- Memory --------------------------------------------------------------------------------

Result<DeviceBuffer> CudaBackend::allocate(size_t bytes) {
  RETURN_IF_ERROR(sticky_);
  RETURN_IF_ERROR(not_while_capturing("allocate"));
  const size_t rounded = std::max(kMinAllocation, (bytes + kMinAllocation - 1) / kMinAllocation * kMinAllocation);
  if (rounded < bytes) return ResourceExhausted("cuda: cannot allocate {} bytes", bytes);
  void* data = nullptr;
  const cudaError_t err = cudaMallocAsync(&data, rounded, stream_);
  if (err != cudaSuccess) {
    cudaGetLastError();
    uint64_t free_bytes = 0, total_bytes = 0;
    (void)memory_info(&free_bytes, &total_bytes);
    return ResourceExhausted("cuda: out of device memory allocating {} bytes ({} of {} bytes free): {}", bytes,
                             free_bytes, total_bytes, cudaGetErrorString(err));
  }
  return DeviceBuffer(this, data, bytes);
}

void CudaBackend::free(void* data, size_t /*bytes*/) {
  if (data != nullptr) cudaFreeAsync(data, stream_);
}

// The checks every copy shares, then the asynchronous copy on the stream. Copies from or to
// the host cannot be recorded in a graph; device-to-device ones can.
Status CudaBackend::copy(void* dst, const void* src, size_t bytes, int kind, const char* what) {
  RETURN_IF_ERROR(sticky_);
  if (kind != cudaMemcpyDeviceToDevice) RETURN_IF_ERROR(not_while_capturing(what));
  if (bytes == 0) return OkStatus();
  if (dst == nullptr || src == nullptr) return InvalidArgument("cuda: {} of {} bytes with a null pointer", what, bytes);
  BW_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, static_cast<cudaMemcpyKind>(kind), stream_));
  return OkStatus();
}

Status CudaBackend::copy_to_device(void* device_dst, const void* host_src, size_t bytes) {
  constexpr size_t kMaxStagedBytes = size_t{8} << 20;  // a step's inputs; weights go directly
  if (bytes > 0 && bytes <= kMaxStagedBytes && !capturing_ && device_dst != nullptr && host_src != nullptr)
    return staged_upload(device_dst, host_src, bytes);
  return copy(device_dst, host_src, bytes, cudaMemcpyHostToDevice, "copy_to_device");
}

Status CudaBackend::staged_upload(void* device_dst, const void* host_src, size_t bytes) {
  RETURN_IF_ERROR(sticky_);
  UploadSlot& slot = upload_slots_[next_upload_slot_];
  next_upload_slot_ = (next_upload_slot_ + 1) % 3;
  if (slot.done == nullptr) BW_CUDA_TRY(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming));
  BW_CUDA_TRY(cudaEventSynchronize(slot.done));  // its last copy has left the slot
  if (slot.capacity < bytes) {
    if (slot.host != nullptr) BW_CUDA_TRY(cudaFreeHost(slot.host));
    slot.host = nullptr;
    slot.capacity = 0;
    const size_t want = std::max(bytes, size_t{256} << 10);
    const auto since = first_use_start();
    if (cudaHostAlloc(&slot.host, want, cudaHostAllocDefault) != cudaSuccess) {
      slot.host = nullptr;
      cudaGetLastError();  // no pinned memory to spare: copy from pageable memory
      return copy(device_dst, host_src, bytes, cudaMemcpyHostToDevice, "copy_to_device");
    }
    slot.capacity = want;
    if (log_first_use_) log_first_use(fmt::format("upload staging grown to {} bytes", want), since);
  }
  std::memcpy(slot.host, host_src, bytes);
  BW_CUDA_TRY(cudaMemcpyAsync(device_dst, slot.host, bytes, cudaMemcpyHostToDevice, stream_));
  BW_CUDA_TRY(cudaEventRecord(slot.done, stream_));
  return OkStatus();
}

Status CudaBackend::copy_to_host(void* host_dst, const void* device_src, size_t bytes) {
  RETURN_IF_ERROR(copy(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, "copy_to_host"));
  return bytes == 0 ? OkStatus() : synchronize();
}

Status CudaBackend::copy_on_device(void* device_dst, const void* device_src, size_t bytes) {
  return copy(device_dst, device_src, bytes, cudaMemcpyDeviceToDevice, "copy_on_device");
}

Status CudaBackend::synchronize() {
  RETURN_IF_ERROR(sticky_);
  RETURN_IF_ERROR(not_while_capturing("synchronize"));
  BW_CUDA_TRY(cudaStreamSynchronize(stream_));
  if (profile_ != nullptr) profile_->resolve();
  return take_kernel_error();
}

Status CudaBackend::ensure_scratch(void** buf, size_t* capacity, size_t bytes) {
  const bool in_graphs = std::find(graph_scratch_.begin(), graph_scratch_.end(), buf) != graph_scratch_.end();
  if (capturing_ && !in_graphs) graph_scratch_.push_back(buf);
  if (*capacity >= bytes) return OkStatus();
  RETURN_IF_ERROR(not_while_capturing("growing a scratch buffer"));
  const size_t want = std::max(bytes, *capacity * 2);
  if (*buf != nullptr && in_graphs) {
    // Recorded graphs keep the old buffer (large enough for them) until the backend goes:
    // freeing it would make every one of them stale, to be recorded again one by one.
    retired_scratch_.push_back(*buf);
  } else if (*buf != nullptr) {
    BW_CUDA_TRY(cudaFreeAsync(*buf, stream_));
  }
  *buf = nullptr;
  *capacity = 0;
  const auto since = first_use_start();
  BW_CUDA_TRY(cudaMallocAsync(buf, want, stream_));
  *capacity = want;
  if (log_first_use_) log_first_use(fmt::format("scratch buffer grown to {} bytes", want), since);
  return OkStatus();
}

Status CudaBackend::not_while_capturing(const char* what) const {
  if (!capturing_) return OkStatus();
  return FailedPrecondition("cuda: {} cannot be recorded in a graph; run the ops once without capture first", what);
}

// --- Graphs --------------------------------------------------------------------------------

class CudaBackend::Graph final : public CapturedGraph {
 public:
  Graph(CudaBackend* backend, cudaGraphExec_t exec, uint64_t epoch) : backend_(backend), exec_(exec), epoch_(epoch) {}
  ~Graph() override { cudaGraphExecDestroy(exec_); }
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  Status replay() override {
    RETURN_IF_ERROR(backend_->sticky_);
    if (backend_->scratch_epoch_ != epoch_) {
      return FailedPrecondition("cuda: the decoder stack's layer table changed since the graph's capture");
    }
    if (backend_->step_timing_ != nullptr) backend_->step_timing_->on_replay(backend_->stream_);
    return backend_->check_launch(static_cast<int>(cudaGraphLaunch(exec_, backend_->stream_)), "cudaGraphLaunch");
  }

 private:
  CudaBackend* backend_;
  cudaGraphExec_t exec_;
  uint64_t epoch_;
};

Result<std::unique_ptr<CapturedGraph>> CudaBackend::capture(const std::function<Status()>& body) {
  RETURN_IF_ERROR(sticky_);
  if (!supports_graphs()) return Unimplemented("cuda: graphs are off while BW_CUDA_PROFILE=1");
  if (capturing_) return FailedPrecondition("cuda: a graph capture is already in progress");
  // Thread-local mode: other threads' unrelated CUDA calls (none today) cannot break it.
  BW_CUDA_TRY(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
  const Status body_status = body();
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
  if (!body_status.ok() || end != cudaSuccess) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();  // a capture error does not poison the context
    RETURN_IF_ERROR(body_status);
    return Internal("cuda: graph capture failed: {}", cudaGetErrorString(end));
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (inst != cudaSuccess) {
    cudaGetLastError();
    return Internal("cuda: cudaGraphInstantiate failed: {}", cudaGetErrorString(inst));
  }
  return std::unique_ptr<CapturedGraph>(new Graph(this, exec, scratch_epoch_));
}

// --- Ops ---------------------------------------------------------------------------------------

Status CudaBackend::embedding(TensorView out, const TensorView& table, const TensorView& ids) {
  ProfiledOp prof(this, [&] { return fmt::format("embedding m{}", rows_bucket(ids.numel())); });
  constexpr std::string_view kOp = "embedding";
  RETURN_IF_ERROR(sticky_);
  RETURN_IF_ERROR(expect_storage(kOp, "table", table, 2));
  if (ids.dtype != DType::kI32 || ids.rank() != 1) {
    return InvalidArgument("embedding: ids {} must be [T] i32", describe(ids));
  }
  RETURN_IF_ERROR(expect_act(kOp, "out", out, 2));
  const int64_t vocab = table.dim(0), h = table.dim(1), n = ids.dim(0);
  if (out.dim(0) != n || out.dim(1) != h) {
    return InvalidArgument("embedding: out {} must be [{}, {}] for ids {} and table {}", out.shape.to_string(), n, h,
                           ids.shape.to_string(), table.shape.to_string());
  }
  if (ids.data == nullptr && n > 0) return InvalidArgument("embedding: ids has no data");
  if (overlaps(out, table)) return InvalidArgument("embedding: out {} must not overlap table", describe(out));
  return check_launch(cuda::launch_embedding(out.data, elem(out.dtype), table.data, elem(table.dtype), vocab, h,
                                             ids.as<const int32_t>(), n, error_flag_, stream_),
                      "embedding");
}

Status CudaBackend::select_tokens(TensorView ids, const AsyncSample& from, const TensorView& rows) {
  RETURN_IF_ERROR(sticky_);
  if (ids.dtype != DType::kI32 || ids.rank() != 1 || rows.dtype != DType::kI32 || rows.rank() != 1 ||
      rows.dim(0) != ids.dim(0)) {
    return InvalidArgument("select_tokens: ids {} and rows {} must both be [n] i32", describe(ids), describe(rows));
  }
  if (from.ids == nullptr || from.rows <= 0) return InvalidArgument("select_tokens: no sampled ids to take from");
  if (ids.dim(0) == 0) return OkStatus();
  if (ids.data == nullptr || rows.data == nullptr) return InvalidArgument("select_tokens: ids or rows has no data");
  return check_launch(
      cuda::launch_select_tokens(ids.as<int32_t>(), from.ids, from.rows, rows.as<const int32_t>(), ids.dim(0), stream_),
      "select_tokens");
}

std::vector<int64_t> CudaBackend::warm_up_rows(int64_t max_rows) const {
  std::vector<int64_t> rows;
  for (int64_t m = 1; m <= max_rows; m = m < LtCache::kExactRows ? m + 1 : m + LtCache::kBucketRows)
    rows.push_back(m);
  // The last bucket's rows up to max_rows (the bucket's own M may lie above it).
  if (!rows.empty() && LtCache::bucket_of(rows.back()) < LtCache::bucket_of(max_rows)) rows.push_back(max_rows);
  return rows;
}

Status CudaBackend::matmul_lt(TensorView out, const TensorView& x, const TensorView& w, const TensorView& bias,
                              bool accumulate, bool* done) {
  *done = false;
  const int64_t m = x.dim(0), k = x.dim(1), n = w.dim(0);
  // The bias is added by a separate kernel: cuBLASLt's bias epilogue ran 7x slower than
  // the plain GEMM for the QKV shapes on an H200.
  const bool has_bias = !bias.empty();
  if (x.dtype != w.dtype) return OkStatus();
  const auto since = first_use_start();
  const int64_t heuristic_calls = lt_cache_->heuristic_calls;
  LtCache::Plan& p = lt_cache_->get({m, n, k, static_cast<int>(x.dtype), static_cast<int>(out.dtype)});
  // (A plan that borrows its bucket's algorithm costs only its descriptors: ~10 us.)
  if (log_first_use_ && lt_cache_->heuristic_calls != heuristic_calls)
    log_first_use(fmt::format("cuBLASLt heuristic for M={} N={} K={}", m, n, k), since);
  if (!p.ok) return OkStatus();  // no cuBLASLt algorithm: the caller falls back to GEMV
  // accumulate: out = x @ w^T + out (C and D the same matrix, which cuBLASLt allows).
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  auto launch = [&] {
    return cublasLtMatmul(lt_, p.op, &alpha, w.data, p.a, x.data, p.b, &beta, out.data, p.c, out.data, p.c, &p.algo,
                          lt_workspace_, lt_workspace_bytes_, stream_);
  };
  cublasStatus_t st = launch();
  if (st != CUBLAS_STATUS_SUCCESS && p.borrowed) {
    // The bucket's algorithm does not take this M (cuBLASLt checks before it launches).
    const auto refused = first_use_start();
    lt_cache_->unborrow(&p);
    if (log_first_use_)
      log_first_use(fmt::format("cuBLASLt heuristic for M={} N={} K={} (refused the bucket's)", m, n, k), refused);
    if (!p.ok) return OkStatus();
    st = launch();
  }
  if (st != CUBLAS_STATUS_SUCCESS) {
    return fail(static_cast<int>(cudaErrorLaunchFailure), "cublasLtMatmul", __FILE__, __LINE__);
  }
  *done = true;
  RETURN_IF_ERROR(check_launch(static_cast<int>(cudaGetLastError()), "cublasLtMatmul"));
  if (!has_bias) return OkStatus();
  return check_launch(cuda::launch_add_bias(out.data, elem(out.dtype), bias.data, elem(bias.dtype), m, n, stream_),
                      "matmul bias");
}

Status CudaBackend::matmul(TensorView out, const TensorView& x, const TensorView& w, const TensorView& bias) {
  ProfiledOp prof(this, [&] {
    const bool gemv = force_gemv_ || x.shape.rows() <= gemv_max_m();
    return fmt::format("matmul{} m{} n{} k{}", gemv ? "" : "(lt)", rows_bucket(x.shape.rows()), w.shape.rows(),
                       w.shape.cols());
  });
  return matmul_impl("matmul", out, x, w, bias, /*accumulate=*/false);
}

Status CudaBackend::matmul_impl(std::string_view op, TensorView out, const TensorView& x, const TensorView& w,
                                const TensorView& bias, bool accumulate) {
  RETURN_IF_ERROR(sticky_);
  RETURN_IF_ERROR(check_matmul(op, out, x, w, bias));
  if (accumulate && (out.dtype != x.dtype || !bias.empty())) {
    return InvalidArgument("{}: out {} must be in x's dtype (x {}), without a bias", op, describe(out), describe(x));
  }
  const int64_t m = x.dim(0), k = x.dim(1), n = w.dim(0);
  if (m == 0 || n == 0) return OkStatus();
  if (m > gemv_max_m() && k > 0 && !force_gemv_) {
    bool done = false;
    RETURN_IF_ERROR(matmul_lt(out, x, w, bias, accumulate, &done));
    if (done) return OkStatus();
  }
  return check_launch(
      cuda::launch_gemv(out.data, elem(out.dtype), x.data, elem(x.dtype), w.data, elem(w.dtype),
                        bias.empty() ? nullptr : bias.data, elem(bias.dtype), m, n, k, accumulate, stream_),
      "matmul (gemv)");
}

// --- Fused decoder steps: at batch 1 in bf16 the norm runs as its own kernel and the
// projection's single-row GEMV (cuda_gemv_rows.cu) ends with the next op (RoPE and the KV
// write, or SiLU-and-multiply); otherwise Backend's composition of the separate ops.
// (Folding the norm into the GEMV, every warp scaling x by the norm weight as it streams,
// made the 7B gate/up projection 100 us instead of 65 on an H200: that kernel is
// instruction-bound at its margin, so the norm stays a kernel of its own.)

namespace {

// BW_CUDA_FUSE=0 in the environment runs the separate ops instead (for A/B runs).
bool fusion_enabled() {
  static const bool enabled = cuda::env_switch_on("BW_CUDA_FUSE");
  return enabled;
}

bool fusable(const NormedInput& in) { return fusion_enabled() && in.x.rank() == 2 && in.x.dim(0) == 1; }

// The projection of the normed input (in.scratch) by w.
cuda::GemvRowsArgs rows_args(const TensorView& out, const NormedInput& in, const TensorView& w, const TensorView& bias,
                             cuda::RowsEpilogue epilogue) {
  cuda::GemvRowsArgs g;
  g.out = out.data, g.out_type = elem(out.dtype);
  g.x = in.scratch.data, g.act_type = elem(in.scratch.dtype);
  g.w = w.data, g.w_type = elem(w.dtype);
  g.bias = bias.empty() ? nullptr : bias.data, g.bias_type = elem(bias.dtype);
  g.n = w.dim(0), g.k = w.dim(1);
  g.epilogue = epilogue;
  return g;
}

}  // namespace

Status CudaBackend::norm_qkv_rope_write_kv(TensorView qkv, const NormedInput& in, const TensorView& w,
                                           const TensorView& bias, const AttentionParams& attn, const RopeParams& rope,
                                           const AttentionMetadata& meta, const KvCacheLayer& cache) {
  static constexpr const char* kOp = "norm_qkv_rope_write_kv";
  if (fusable(in)) {
    RETURN_IF_ERROR(sticky_);
    RETURN_IF_ERROR(check_matmul(kOp, qkv, in.scratch, w, bias));
    cuda::GemvRowsArgs g = rows_args(qkv, in, w, bias, cuda::RowsEpilogue::kRopeWriteKv);
    RETURN_IF_ERROR(rope_args(kOp, qkv, attn, rope, meta, cache, &g.rope));
    if (cuda::gemv_rows_applies(g, 1, num_sms_)) {
      RETURN_IF_ERROR(rms_norm(in.scratch, in.x, in.norm_weight, in.eps));
      ProfiledOp prof(this, [] { return std::string("matmul_rope_write_kv m1 (fused)"); });
      return check_launch(cuda::launch_gemv_rows(g, num_sms_, stream_), kOp);
    }
  }
  return Backend::norm_qkv_rope_write_kv(qkv, in, w, bias, attn, rope, meta, cache);
}

Status CudaBackend::norm_gate_up_silu_mul(TensorView out, TensorView gate_up, const NormedInput& in,
                                          const TensorView& w) {
  static constexpr const char* kOp = "norm_gate_up_silu_mul";
  if (fusable(in)) {
    RETURN_IF_ERROR(sticky_);
    RETURN_IF_ERROR(check_matmul(kOp, gate_up, in.scratch, w, TensorView()));
    RETURN_IF_ERROR(expect_act(kOp, "out", out, 2));
    if (out.dim(0) != 1 || 2 * out.dim(1) != w.dim(0) || out.dtype != in.scratch.dtype) {
      return InvalidArgument("{}: out {} must be [1, {}] in x's dtype (x {})", kOp, describe(out), w.dim(0) / 2,
                             describe(in.scratch));
    }
    if (overlaps(out, in.scratch) || overlaps(out, w)) return InvalidArgument("{}: out must not overlap x or w", kOp);
    const cuda::GemvRowsArgs g = rows_args(out, in, w, TensorView(), cuda::RowsEpilogue::kSiluMul);
    if (cuda::gemv_rows_applies(g, 1, num_sms_)) {
      RETURN_IF_ERROR(rms_norm(in.scratch, in.x, in.norm_weight, in.eps));
      ProfiledOp prof(this, [] { return std::string("matmul_silu_mul m1 (fused)"); });
      return check_launch(cuda::launch_gemv_rows(g, num_sms_, stream_), kOp);
    }
  }
  return Backend::norm_gate_up_silu_mul(out, gate_up, in, w);
}

Status CudaBackend::matmul_add(TensorView residual, TensorView /*scratch*/, const TensorView& x, const TensorView& w) {
  ProfiledOp prof(this, [&] {
    return fmt::format("matmul_add m{} n{} k{}", rows_bucket(x.shape.rows()), w.shape.rows(), w.shape.cols());
  });
  return matmul_impl("matmul_add", residual, x, w, TensorView(), /*accumulate=*/true);
}

Status CudaBackend::rms_norm(TensorView out, const TensorView& x, const TensorView& weight, float eps) {
  ProfiledOp prof(this, [&] { return fmt::format("rms_norm m{}", rows_bucket(x.shape.rows())); });
  RETURN_IF_ERROR(sticky_);
  RETURN_IF_ERROR(check_norm("rms_norm", out, x, weight));
  return check_launch(cuda::launch_rms_norm(out.data, nullptr, x.data, elem(x.dtype), weight.data, elem(weight.dtype),
                                            x.dim(0), x.dim(1), eps, stream_),
                      "rms_norm");
}

Status CudaBackend::add_rms_norm(TensorView out, TensorView residual, const TensorView& x, const TensorView& weight,
                                 float eps) {
  ProfiledOp prof(this, [&] { return fmt::format("add_rms_norm m{}", rows_bucket(x.shape.rows())); });
  RETURN_IF_ERROR(sticky_);
  RETURN_IF_ERROR(check_norm("add_rms_norm", out, x, weight));
  if (residual.dtype != x.dtype || !(residual.shape == x.shape) || (residual.data == nullptr && x.numel() > 0)) {
    return InvalidArgument("add_rms_norm: residual {} must match x {}", describe(residual), describe(x));
  }
  if (overlaps(out, residual)) return InvalidArgument("add_rms_norm: out must not overlap residual");
  return check_launch(cuda::launch_rms_norm(out.data, residual.data, x.data, elem(x.dtype), weight.data,
                                            elem(weight.dtype), x.dim(0), x.dim(1), eps, stream_),
                      "add_rms_norm");
}

Status CudaBackend::add(TensorView out, const TensorView& a, const TensorView& b) {
  ProfiledOp prof(this, [] { return std::string("add"); });
  RETURN_IF_ERROR(sticky_);
  if (!is_act(a.dtype) || a.dtype != b.dtype || a.dtype != out.dtype || !(a.shape == b.shape) ||
      !(out.shape == a.shape)) {
    return InvalidArgument("add: out {}, a {} and b {} must have the same shape and an f32 or bf16 dtype",
                           describe(out), describe(a), describe(b));
  }
  if (a.numel() > 0 && (a.data == nullptr || b.data == nullptr || out.data == nullptr)) {
    return InvalidArgument("add: a tensor has no data");
  }
  return check_launch(cuda::launch_add(out.data, a.data, b.data, elem(a.dtype), a.numel(), stream_), "add");
}

Status CudaBackend::silu_mul(TensorView out, const TensorView& gate_up) {
  ProfiledOp prof(this, [&] { return fmt::format("silu_mul m{}", rows_bucket(gate_up.shape.rows())); });
  constexpr std::string_view kOp = "silu_mul";
  RETURN_IF_ERROR(sticky_);
  RETURN_IF_ERROR(expect_act(kOp, "gate_up", gate_up, 2));
  RETURN_IF_ERROR(expect_act(kOp, "out", out, 2));
  const int64_t rows = gate_up.dim(0), f = out.dim(1);
  if (gate_up.dim(1) != 2 * f || out.dim(0) != rows || out.dtype != gate_up.dtype) {
    return InvalidArgument("silu_mul: gate_up {} must be [T, 2F] for out {} = [T, F]", describe(gate_up),
                           describe(out));
  }
  if (overlaps(out, gate_up)) return InvalidArgument("silu_mul: out must not overlap gate_up");
  return check_launch(cuda::launch_silu_mul(out.data, gate_up.data, elem(out.dtype), rows, f, stream_), "silu_mul");
}

Status CudaBackend::rope_write_kv(TensorView qkv, const AttentionParams& attn, const RopeParams& rope,
                                  const AttentionMetadata& meta, const KvCacheLayer& cache) {
  ProfiledOp prof(this, [&] { return fmt::format("rope_write_kv m{}", rows_bucket(qkv.shape.rows())); });
  RETURN_IF_ERROR(sticky_);
  cuda::RopeKvArgs a;
  RETURN_IF_ERROR(rope_args("rope_write_kv", qkv, attn, rope, meta, cache, &a));
  return check_launch(cuda::launch_rope_write_kv(a, stream_), "rope_write_kv");
}

Status CudaBackend::rope_args(std::string_view op, const TensorView& qkv, const AttentionParams& attn,
                              const RopeParams& rope, const AttentionMetadata& meta, const KvCacheLayer& cache,
                              cuda::RopeKvArgs* args) {
  AttnDims d;
  RETURN_IF_ERROR(check_attention(op, qkv, attn, cache, &d));
  RETURN_IF_ERROR(check_rope_params(op, rope, attn.head_dim));
  RETURN_IF_ERROR(expect_i32(op, "meta.positions", meta.positions, d.num_tokens));
  RETURN_IF_ERROR(expect_i32(op, "meta.slot_mapping", meta.slot_mapping, d.num_tokens));
  if (d.num_tokens == 0) return OkStatus();

  RETURN_IF_ERROR(upload_inv_freq(rope));
  cuda::RopeKvArgs& a = *args;
  a.qkv = qkv.data;
  a.act_type = elem(qkv.dtype);
  a.num_tokens = d.num_tokens;
  a.num_heads = attn.num_heads;
  a.num_kv_heads = attn.num_kv_heads;
  a.head_dim = attn.head_dim;
  a.rotary_dim = rope.rotary_dim;
  a.inv_freq = static_cast<const float*>(inv_freq_dev_);
  a.positions = meta.positions.as<const int32_t>();
  a.slots = meta.slot_mapping.as<const int32_t>();
  a.k_cache = cache.k.data;
  a.v_cache = cache.v.data;
  a.cache_type = elem(cache.k.dtype);
  a.num_slots = d.num_blocks * d.block_size;
  a.error_flag = error_flag_;
  return OkStatus();
}

Status CudaBackend::upload_inv_freq(const RopeParams& rope) {
  std::vector<float> inv_freq = rope_inv_freq(rope);
  if (inv_freq == inv_freq_host_) return OkStatus();
  RETURN_IF_ERROR(not_while_capturing("uploading RoPE frequencies"));
  RETURN_IF_ERROR(ensure_scratch(&inv_freq_dev_, &inv_freq_capacity_, inv_freq.size() * sizeof(float)));
  BW_CUDA_TRY(cudaMemcpyAsync(inv_freq_dev_, inv_freq.data(), inv_freq.size() * sizeof(float), cudaMemcpyHostToDevice,
                              stream_));
  // Pageable source: the copy has been staged when cudaMemcpyAsync returns, but keep the
  // vector anyway (it is the cache key).
  inv_freq_host_ = std::move(inv_freq);
  return OkStatus();
}

namespace {

// Key pieces per query tile of the wgmma prefill kernel: the plan (cuda::prefill_kv_splits)
// for the batch's shape, kept for its other layers, which ask the same;
// BW_CUDA_PREFILL_SPLITS=N forces N (A/B runs; 1 never splits).
int prefill_splits_for(const cuda::AttentionArgs& a, int max_query_len, int num_sms) {
  static const int forced = cuda::env_int("BW_CUDA_PREFILL_SPLITS", 0);
  if (forced > 0) return std::min(forced, 64);
  thread_local std::tuple<int, int, int, int, int> last_shape{-1, -1, -1, -1, -1};
  thread_local int last_splits = 1;
  const std::tuple<int, int, int, int, int> shape{a.num_heads, a.num_seqs, max_query_len, a.max_kv_len, num_sms};
  if (shape != last_shape) {
    last_shape = shape;
    last_splits = cuda::prefill_kv_splits(a.num_heads, a.num_seqs, max_query_len, a.max_kv_len, num_sms);
  }
  return last_splits;
}

}  // namespace

Status CudaBackend::paged_attention(TensorView out, const TensorView& qkv, const AttentionParams& attn,
                                    const AttentionMetadata& meta, const KvCacheLayer& cache) {
  ProfiledOp prof(this, [&] { return fmt::format("paged_attention m{}", rows_bucket(qkv.shape.rows())); });
  constexpr std::string_view kOp = "paged_attention";
  RETURN_IF_ERROR(sticky_);
  AttnDims d;
  RETURN_IF_ERROR(check_attention(kOp, qkv, attn, cache, &d));
  RETURN_IF_ERROR(expect_act(kOp, "out", out, 2));
  if (out.dtype != qkv.dtype || out.dim(0) != d.num_tokens ||
      out.dim(1) != static_cast<int64_t>(attn.num_heads) * attn.head_dim) {
    return InvalidArgument("paged_attention: out {} must be [{}, num_heads {} * head_dim {}] of qkv's dtype",
                           describe(out), d.num_tokens, attn.num_heads, attn.head_dim);
  }
  if (overlaps(out, qkv) || overlaps(out, cache.k) || overlaps(out, cache.v)) {
    return InvalidArgument("paged_attention: out {} must not overlap qkv or the cache", describe(out));
  }
  const int64_t num_seqs = meta.num_seqs;
  if (num_seqs < 0) return InvalidArgument("paged_attention: meta.num_seqs {} is negative", num_seqs);
  RETURN_IF_ERROR(expect_i32(kOp, "meta.query_start", meta.query_start, num_seqs + 1));
  RETURN_IF_ERROR(expect_i32(kOp, "meta.kv_lens", meta.kv_lens, num_seqs));
  if (meta.block_tables.dtype != DType::kI32 || meta.block_tables.rank() != 2 || meta.block_tables.dim(0) != num_seqs ||
      (meta.block_tables.data == nullptr && meta.block_tables.numel() > 0)) {
    return InvalidArgument("paged_attention: meta.block_tables {} must be [num_seqs = {}, W] i32",
                           describe(meta.block_tables), num_seqs);
  }
  if (d.num_tokens == 0) return OkStatus();
  if (num_seqs == 0) return InvalidArgument("paged_attention: {} tokens but no sequences", d.num_tokens);

  cuda::AttentionArgs a;
  a.out = out.data;
  a.qkv = qkv.data;
  a.act_type = elem(qkv.dtype);
  a.num_tokens = d.num_tokens;
  a.num_heads = attn.num_heads;
  a.num_kv_heads = attn.num_kv_heads;
  a.head_dim = attn.head_dim;
  a.scale = attn.scale;
  a.k_cache = cache.k.data;
  a.v_cache = cache.v.data;
  a.cache_type = elem(cache.k.dtype);
  a.num_blocks = d.num_blocks;
  a.block_size = static_cast<int>(d.block_size);
  a.query_start = meta.query_start.as<const int32_t>();
  a.kv_lens = meta.kv_lens.as<const int32_t>();
  a.block_tables = meta.block_tables.as<const int32_t>();
  a.num_seqs = static_cast<int>(num_seqs);
  a.table_width = static_cast<int>(meta.block_tables.dim(1));
  a.max_kv_len = meta.max_kv_len;
  a.error_flag = error_flag_;
  if (meta.max_query_len >= cuda::kPrefillAttentionMinQueryLen && cuda::prefill_attention_supported(a)) {
    const int variant = cuda::prefill_attention_variant(a, wgmma_prefill_);
    int splits = variant == cuda::kPrefillVariantWgmma ? prefill_splits_for(a, meta.max_query_len, num_sms_) : 1;
    if (splits > 1) {
      const auto bytes = static_cast<size_t>(cuda::attention_workspace_floats(a, splits)) * sizeof(float);
      if (!ensure_scratch(&attn_general_ws_, &attn_general_ws_capacity_, bytes).ok()) {
        cudaGetLastError();  // out of memory for the partials: one pass instead
        splits = 1;
      }
    }
    return check_launch(cuda::launch_paged_attention_prefill(a, meta.max_query_len, variant, stream_, splits,
                                                             static_cast<float*>(attn_general_ws_)),
                        "paged_attention");
  }
  const bool decode = meta.max_query_len == 1 && d.num_tokens == num_seqs && cuda::decode_attention_supported(a);
  const int splits = decode ? cuda::decode_attention_num_splits(a, num_sms_) : cuda::attention_num_splits(a, num_sms_);
  const int64_t ws_floats = cuda::attention_workspace_floats(a, splits);
  void** ws_buf = decode ? &attn_ws_ : &attn_general_ws_;
  if (ws_floats > 0) {
    RETURN_IF_ERROR(ensure_scratch(ws_buf, decode ? &attn_ws_capacity_ : &attn_general_ws_capacity_,
                                   static_cast<size_t>(ws_floats) * sizeof(float)));
  }
  auto* ws = static_cast<float*>(*ws_buf);
  if (!decode) return check_launch(cuda::launch_paged_attention(a, splits, ws, stream_), "paged_attention");
  if (splits > 1) {
    const auto bytes = static_cast<size_t>(cuda::decode_attention_counters(a, num_sms_)) * sizeof(int32_t);
    if (attn_counters_capacity_ < bytes) {
      RETURN_IF_ERROR(ensure_scratch(&attn_counters_, &attn_counters_capacity_, std::max<size_t>(bytes, 4096)));
      BW_CUDA_TRY(cudaMemsetAsync(attn_counters_, 0, attn_counters_capacity_, stream_));
    }
  }
  return check_launch(
      cuda::launch_paged_attention_decode(a, splits, num_sms_, ws, static_cast<int*>(attn_counters_), stream_),
      "paged_attention");
}

}  // namespace bw
