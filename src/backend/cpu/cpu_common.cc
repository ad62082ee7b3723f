// Argument checks and dtype conversion shared by the CPU ops.
#include <cstdint>

#include "backend/cpu/cpu_ops.h"

namespace bw::cpu {

std::string describe(const TensorView& t) { return t.shape.to_string() + " " + std::string(dtype_name(t.dtype)); }

Status expect_dtype(std::string_view op, std::string_view name, const TensorView& t, DType want) {
  if (t.dtype != want) {
    return InvalidArgument("{}: {} {} must be {}", op, name, describe(t), dtype_name(want));
  }
  return OkStatus();
}

Status expect_storage_dtype(std::string_view op, std::string_view name, const TensorView& t) {
  if (!is_float(t.dtype)) {
    return InvalidArgument("{}: {} {} must be f32, f16 or bf16", op, name, describe(t));
  }
  return OkStatus();
}

Status expect_rank(std::string_view op, std::string_view name, const TensorView& t, int rank) {
  if (t.rank() != rank) {
    return InvalidArgument("{}: {} {} must have rank {}", op, name, describe(t), rank);
  }
  for (int i = 0; i < rank; ++i) {
    if (t.dim(i) < 0) return InvalidArgument("{}: {} {} has a negative dimension", op, name, describe(t));
  }
  return OkStatus();
}

Status expect_data(std::string_view op, std::string_view name, const TensorView& t) {
  if (t.data == nullptr && t.numel() > 0) {
    return InvalidArgument("{}: {} {} has no data", op, name, describe(t));
  }
  return OkStatus();
}

bool overlaps(const TensorView& a, const TensorView& b) {
  if (a.data == nullptr || b.data == nullptr) return false;
  const auto a0 = reinterpret_cast<uintptr_t>(a.data);
  const auto b0 = reinterpret_cast<uintptr_t>(b.data);
  const uint64_t a_bytes = a.nbytes();
  const uint64_t b_bytes = b.nbytes();
  if (a_bytes == 0 || b_bytes == 0) return false;
  return a0 < b0 + b_bytes && b0 < a0 + a_bytes;
}

Status expect_i32_vector(std::string_view op, std::string_view name, const TensorView& t, int64_t n) {
  RETURN_IF_ERROR(expect_dtype(op, name, t, DType::kI32));
  if (t.rank() != 1 || t.dim(0) != n) {
    return InvalidArgument("{}: {} {} must be [{}]", op, name, describe(t), n);
  }
  return expect_data(op, name, t);
}

Status check_attention_inputs(std::string_view op, const TensorView& qkv, const AttentionParams& attn,
                              const KvCacheLayer& cache, AttentionDims* dims) {
  if (attn.num_heads <= 0 || attn.num_kv_heads <= 0 || attn.head_dim <= 0) {
    return InvalidArgument("{}: num_heads {}, num_kv_heads {} and head_dim {} must be positive", op, attn.num_heads,
                           attn.num_kv_heads, attn.head_dim);
  }
  if (attn.num_heads % attn.num_kv_heads != 0) {
    return InvalidArgument("{}: num_heads {} is not a multiple of num_kv_heads {}", op, attn.num_heads,
                           attn.num_kv_heads);
  }
  AttentionDims d;
  d.num_heads = attn.num_heads;
  d.num_kv_heads = attn.num_kv_heads;
  d.head_dim = attn.head_dim;
  d.qkv_width = (d.num_heads + 2 * d.num_kv_heads) * d.head_dim;

  RETURN_IF_ERROR(expect_dtype(op, "qkv", qkv, DType::kF32));
  RETURN_IF_ERROR(expect_rank(op, "qkv", qkv, 2));
  RETURN_IF_ERROR(expect_data(op, "qkv", qkv));
  if (qkv.dim(1) != d.qkv_width) {
    return InvalidArgument("{}: qkv {} must have (num_heads {} + 2 * num_kv_heads {}) * head_dim {} = {} columns", op,
                           qkv.shape.to_string(), d.num_heads, d.num_kv_heads, d.head_dim, d.qkv_width);
  }
  d.num_tokens = qkv.dim(0);

  RETURN_IF_ERROR(expect_storage_dtype(op, "cache.k", cache.k));
  RETURN_IF_ERROR(expect_rank(op, "cache.k", cache.k, 4));
  RETURN_IF_ERROR(expect_data(op, "cache.k", cache.k));
  RETURN_IF_ERROR(expect_data(op, "cache.v", cache.v));
  if (cache.v.dtype != cache.k.dtype || !(cache.v.shape == cache.k.shape)) {
    return InvalidArgument("{}: cache.k {} and cache.v {} must have the same shape and dtype", op, describe(cache.k),
                           describe(cache.v));
  }
  if (cache.k.dim(2) != d.num_kv_heads || cache.k.dim(3) != d.head_dim) {
    return InvalidArgument("{}: cache.k {} must be [num_blocks, block_size, num_kv_heads {}, head_dim {}]", op,
                           cache.k.shape.to_string(), d.num_kv_heads, d.head_dim);
  }
  if (cache.k.dim(1) <= 0) {
    return InvalidArgument("{}: cache.k {} has block_size 0", op, cache.k.shape.to_string());
  }
  d.num_blocks = cache.k.dim(0);
  d.block_size = cache.k.dim(1);
  d.cache_dtype = cache.k.dtype;
  *dims = d;
  return OkStatus();
}

void to_f32(const void* src, DType dtype, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::kF16:
    case DType::kBF16: {
      int64_t i = 0;
#if BW_CPU_AVX2
      if (dtype == DType::kF16) {
        for (; i + 8 <= n; i += 8)
          _mm256_storeu_ps(dst + i, load8<DType::kF16>(src, i));
      } else {
        for (; i + 8 <= n; i += 8)
          _mm256_storeu_ps(dst + i, load8<DType::kBF16>(src, i));
      }
#endif
      const auto* s = static_cast<const uint16_t*>(src);
      for (; i < n; ++i)
        dst[i] = dtype == DType::kF16 ? f16_to_f32(s[i]) : bf16_to_f32(s[i]);
      return;
    }
    default:
      return;  // callers check dtypes first
  }
}

void from_f32(const float* src, DType dtype, int64_t n, void* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::kF16: {
      auto* d = static_cast<uint16_t*>(dst);
      int64_t i = 0;
#if BW_CPU_AVX2
      for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), h);
      }
#endif
      for (; i < n; ++i)
        d[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::kBF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i)
        d[i] = f32_to_bf16(src[i]);
      return;
    }
    default:
      return;
  }
}

}  // namespace bw::cpu
