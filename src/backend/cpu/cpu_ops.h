// Internal to the CPU backend: the op implementations (one .cc per op family) and the
// helpers they share (argument checks, f32/f16/bf16 row conversion, AVX2 loads).
// Include backend/cpu/cpu_backend.h from outside this folder, not this header.
//
// Every op takes the backend's ThreadPool and splits its work into tasks whose
// boundaries depend only on the shapes, never on the number of threads, and computes
// each output element inside exactly one task with a fixed summation order. Results are
// therefore bit-identical for any thread count.
//
// Batch invariance: every op computes a token's row from that token's inputs alone, in an
// order that does not depend on the number of tokens in the call, on the other tokens, or
// on which kernel path runs: embedding, add, silu_mul and rope_write_kv are elementwise per
// row; rms_norm and add_rms_norm reduce within the row; matmul sums each output in one
// fixed lane order on both of its paths (cpu_matmul.cc); paged_attention walks a row's
// causal window in fixed tiles from position 0 (cpu_attention.cc). So a sequence's
// outputs are bit-identical whatever else is batched with it, however its prompt is
// chunked, and whether a token's KV was computed in a decode step or recomputed in a
// prefill: the continuous-batching engine's exactness tests rely on it, and
// tests/backend/cpu_batch_invariance_test.cc checks it bit for bit. Keep it so when
// changing a kernel (new paths must share the summation order).
//
// Vector code is compiled when the target has AVX2, FMA and F16C (x86-64-v3, our x86
// baseline); otherwise a portable scalar path is used (ARM builds).
// Thread-safety: the functions are reentrant; each op call uses the pool it is given.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>

#include "backend/backend.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "tensor/dtype.h"
#include "tensor/tensor_view.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define BW_CPU_AVX2 1
#include <immintrin.h>
#else
#define BW_CPU_AVX2 0
#endif

namespace bw::cpu {

// --- Argument checks (each returns InvalidArgument naming `op` and the tensor) ----------

// "[4, 64] f32"
std::string describe(const TensorView& t);
Status expect_dtype(std::string_view op, std::string_view name, const TensorView& t, DType want);
// f32, f16 or bf16: the dtypes weights, tables and KV caches are stored in.
Status expect_storage_dtype(std::string_view op, std::string_view name, const TensorView& t);
Status expect_rank(std::string_view op, std::string_view name, const TensorView& t, int rank);
// A view with elements must point somewhere.
Status expect_data(std::string_view op, std::string_view name, const TensorView& t);
// True when the byte ranges of a and b overlap.
bool overlaps(const TensorView& a, const TensorView& b);

// Checks shared by rope_write_kv and paged_attention: qkv f32 [T, (Hq + 2*Hkv) * D], the
// head counts, and the cache layer (k and v alike, [num_blocks, block_size, Hkv, D],
// f32/f16/bf16).
struct AttentionDims {
  int64_t num_tokens = 0;  // T
  int64_t num_heads = 0;   // Hq
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t qkv_width = 0;  // (Hq + 2*Hkv) * D
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  DType cache_dtype = DType::kF32;
};
Status check_attention_inputs(std::string_view op, const TensorView& qkv, const AttentionParams& attn,
                              const KvCacheLayer& cache, AttentionDims* dims);
// An i32 metadata tensor of shape [n].
Status expect_i32_vector(std::string_view op, std::string_view name, const TensorView& t, int64_t n);

// --- Element conversion ---------------------------------------------------------------

// Bytes per element of a storage dtype (f32 4, f16/bf16 2).
inline int64_t storage_bytes(DType t) { return t == DType::kF32 ? 4 : 2; }

// dst[i] = float(src[i]) for i < n; src holds f32, f16 or bf16.
void to_f32(const void* src, DType dtype, int64_t n, float* dst);
// dst[i] = src[i] rounded to `dtype` (f32, f16 or bf16; nearest even).
void from_f32(const float* src, DType dtype, int64_t n, void* dst);

// Calls fn(std::integral_constant<DType, d>{}) with d the (f32, f16 or bf16) dtype t,
// so kernels can be instantiated per storage dtype.
template <typename Fn>
void with_storage_dtype(DType t, Fn&& fn) {
  switch (t) {
    case DType::kF16:
      fn(std::integral_constant<DType, DType::kF16>{});
      break;
    case DType::kBF16:
      fn(std::integral_constant<DType, DType::kBF16>{});
      break;
    default:
      fn(std::integral_constant<DType, DType::kF32>{});
      break;
  }
}

// Element i of a row stored as kType.
template <DType kType>
inline float load1(const void* row, int64_t i) {
  if constexpr (kType == DType::kF32) {
    return static_cast<const float*>(row)[i];
  } else if constexpr (kType == DType::kF16) {
    return f16_to_f32(static_cast<const uint16_t*>(row)[i]);
  } else {
    return bf16_to_f32(static_cast<const uint16_t*>(row)[i]);
  }
}

#if BW_CPU_AVX2
// Elements [i, i + 8) of a row stored as kType, as f32.
template <DType kType>
inline __m256 load8(const void* row, int64_t i) {
  if constexpr (kType == DType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(row) + i);
  } else if constexpr (kType == DType::kF16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + i)));
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

// Sum of the 8 lanes, always in the same order.
inline float hsum8(__m256 v) {
  const __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 sh = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  return _mm_cvtss_f32(_mm_add_ss(sh, _mm_shuffle_ps(sh, sh, 1)));
}
#endif

// --- Ops (see backend.h for their contracts) --------------------------------------------

// cpu_elementwise.cc
Status embedding(ThreadPool& pool, TensorView out, const TensorView& table, const TensorView& ids);
Status add(ThreadPool& pool, TensorView out, const TensorView& a, const TensorView& b);
Status silu_mul(ThreadPool& pool, TensorView out, const TensorView& gate_up);
// cpu_matmul.cc
Status matmul(ThreadPool& pool, TensorView out, const TensorView& x, const TensorView& w, const TensorView& bias);
// cpu_norm.cc
Status rms_norm(ThreadPool& pool, TensorView out, const TensorView& x, const TensorView& weight, float eps);
Status add_rms_norm(ThreadPool& pool, TensorView out, TensorView residual, const TensorView& x,
                    const TensorView& weight, float eps);
// cpu_rope_kv.cc
Status rope_write_kv(ThreadPool& pool, TensorView qkv, const AttentionParams& attn, const RopeParams& rope,
                     const AttentionMetadata& meta, const KvCacheLayer& cache);
// cpu_attention.cc
Status paged_attention(ThreadPool& pool, TensorView out, const TensorView& qkv, const AttentionParams& attn,
                       const AttentionMetadata& meta, const KvCacheLayer& cache);

}  // namespace bw::cpu
