#include "tensor/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/thread_pool.h"

namespace bw {

namespace {

constexpr int kQK = 32;  // values per block of the 32-value types

inline uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (static_cast<uint16_t>(p[1]) << 8)); }
inline float load_f16(const uint8_t* p) { return f16_to_f32(load_u16(p)); }
inline void store_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}

// --- One block each: `b` points at block_bytes(type) bytes, `y` at block_elements(type) floats.

void dequant_block_q8_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const auto* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < kQK; ++j)
    y[j] = static_cast<float>(qs[j]) * d;
}

void dequant_block_q4_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0f) - 8) * d;
    y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

void dequant_block_q4_1(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float m = load_f16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>(qs[j] & 0x0f) * d + m;
    y[j + kQK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

// The fifth bit of element j (0..31) is bit j of the little-endian u32 qh.
void dequant_block_q5_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint32_t qh = static_cast<uint32_t>(b[2]) | static_cast<uint32_t>(b[3]) << 8 |
                      static_cast<uint32_t>(b[4]) << 16 | static_cast<uint32_t>(b[5]) << 24;
  const uint8_t* qs = b + 6;
  for (int j = 0; j < kQK / 2; ++j) {
    const int hi0 = static_cast<int>((qh >> j) & 1u) << 4;
    const int hi1 = static_cast<int>((qh >> (j + 16)) & 1u) << 4;
    y[j] = static_cast<float>(((qs[j] & 0x0f) | hi0) - 16) * d;
    y[j + kQK / 2] = static_cast<float>(((qs[j] >> 4) | hi1) - 16) * d;
  }
}

void dequant_block_q5_1(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float m = load_f16(b + 2);
  const uint32_t qh = static_cast<uint32_t>(b[4]) | static_cast<uint32_t>(b[5]) << 8 |
                      static_cast<uint32_t>(b[6]) << 16 | static_cast<uint32_t>(b[7]) << 24;
  const uint8_t* qs = b + 8;
  for (int j = 0; j < kQK / 2; ++j) {
    const int hi0 = static_cast<int>((qh >> j) & 1u) << 4;
    const int hi1 = static_cast<int>((qh >> (j + 16)) & 1u) << 4;
    y[j] = static_cast<float>((qs[j] & 0x0f) | hi0) * d + m;
    y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) | hi1) * d + m;
  }
}

// K-quant 6-bit scale and min of sub-block j (0..7), packed into 12 bytes: sub-blocks 0..3
// use the low 6 bits of bytes j and j+4; 4..7 take their low 4 bits from byte j+4 and their
// top 2 bits from the spare top bits of bytes j-4 (scale) and j (min).
inline void k_scale_min(int j, const uint8_t* s, int* scale, int* min) {
  if (j < 4) {
    *scale = s[j] & 63;
    *min = s[j + 4] & 63;
  } else {
    *scale = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    *min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Scales and mins of the two 32-value sub-blocks (2c, 2c + 1) of 64-value chunk c.
struct KChunkScales {
  float d1, m1, d2, m2;
};

KChunkScales k_chunk_scales(int c, const uint8_t* scales, float d, float dmin) {
  int sc1, mn1, sc2, mn2;
  k_scale_min(2 * c, scales, &sc1, &mn1);
  k_scale_min(2 * c + 1, scales, &sc2, &mn2);
  return {d * static_cast<float>(sc1), dmin * static_cast<float>(mn1), d * static_cast<float>(sc2),
          dmin * static_cast<float>(mn2)};
}

void dequant_block_q4_k(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 16;
  // Each 64-value chunk: 32 low nibbles (sub-block 2c) then 32 high nibbles (2c + 1).
  for (int c = 0; c < 4; ++c) {
    const KChunkScales k = k_chunk_scales(c, scales, d, dmin);
    const float d1 = k.d1, m1 = k.m1, d2 = k.d2, m2 = k.m2;
    const uint8_t* q = qs + 32 * c;
    float* out = y + 64 * c;
    for (int l = 0; l < 32; ++l)
      out[l] = d1 * static_cast<float>(q[l] & 0x0f) - m1;
    for (int l = 0; l < 32; ++l)
      out[32 + l] = d2 * static_cast<float>(q[l] >> 4) - m2;
  }
}

void dequant_block_q5_k(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  // As Q4_K; the fifth bit of value l of sub-block s is bit s of qh[l].
  for (int c = 0; c < 4; ++c) {
    const KChunkScales k = k_chunk_scales(c, scales, d, dmin);
    const float d1 = k.d1, m1 = k.m1, d2 = k.d2, m2 = k.m2;
    const uint8_t* q = qs + 32 * c;
    const int bit_lo = 2 * c;
    const int bit_hi = 2 * c + 1;
    float* out = y + 64 * c;
    for (int l = 0; l < 32; ++l) {
      const int v = (q[l] & 0x0f) | (((qh[l] >> bit_lo) & 1) << 4);
      out[l] = d1 * static_cast<float>(v) - m1;
    }
    for (int l = 0; l < 32; ++l) {
      const int v = (q[l] >> 4) | (((qh[l] >> bit_hi) & 1) << 4);
      out[32 + l] = d2 * static_cast<float>(v) - m2;
    }
  }
}

void dequant_block_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = load_f16(b + 208);
  // Two halves of 128 values; in each, value l + 32k (k = 0..3) takes 4 low bits from ql
  // (nibble k / 2 of byte l + 32 (k % 2)) and 2 high bits from bits 2k..2k+1 of qh[l].
  for (int half = 0; half < 2; ++half) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn block_fn(DType type) {
  switch (type) {
    case DType::kQ8_0:
      return dequant_block_q8_0;
    case DType::kQ4_0:
      return dequant_block_q4_0;
    case DType::kQ4_1:
      return dequant_block_q4_1;
    case DType::kQ5_0:
      return dequant_block_q5_0;
    case DType::kQ5_1:
      return dequant_block_q5_1;
    case DType::kQ4_K:
      return dequant_block_q4_k;
    case DType::kQ5_K:
      return dequant_block_q5_k;
    case DType::kQ6_K:
      return dequant_block_q6_k;
    default:
      return nullptr;
  }
}

// Checks n, the pointers and that src_bytes is exactly the size of n values of `type`.
Status check_sizes(const char* what, DType type, const void* src, uint64_t src_bytes, const void* dst, int64_t n) {
  if (n < 0) return InvalidArgument("{}: negative element count {}", what, n);
  const auto needed = dtype_bytes(type, static_cast<uint64_t>(n));
  if (!needed) {
    return InvalidArgument("{}: {} values of {} are not a whole number of {}-value blocks", what, n, dtype_name(type),
                           block_elements(type));
  }
  if (src_bytes != *needed) {
    return InvalidArgument("{}: {} values of {} take {} bytes, got {}", what, n, dtype_name(type), *needed, src_bytes);
  }
  if (n > 0 && (src == nullptr || dst == nullptr)) return InvalidArgument("{}: null buffer", what);
  return OkStatus();
}

// Converts units [begin, end) (blocks, or elements for plain types).
void convert_range(DType type, const uint8_t* src, float* dst, int64_t begin, int64_t end) {
  switch (type) {
    case DType::kF32:
      std::memcpy(dst + begin, src + 4 * begin, static_cast<size_t>(end - begin) * 4);
      return;
    case DType::kF16:
    case DType::kBF16: {
      const uint8_t* p = src + 2 * begin;
      float* y = dst + begin;
      const int64_t count = end - begin;
      const bool aligned = reinterpret_cast<uintptr_t>(p) % alignof(uint16_t) == 0;
      if (aligned) {
        const auto* h = reinterpret_cast<const uint16_t*>(p);
        if (type == DType::kF16) {
          convert_f16_to_f32(h, y, count);
        } else {
          convert_bf16_to_f32(h, y, count);
        }
      } else if (type == DType::kF16) {
        for (int64_t i = 0; i < count; ++i)
          y[i] = f16_to_f32(load_u16(p + 2 * i));
      } else {
        for (int64_t i = 0; i < count; ++i)
          y[i] = bf16_to_f32(load_u16(p + 2 * i));
      }
      return;
    }
    default: {
      const BlockFn fn = block_fn(type);
      const int64_t bb = block_bytes(type);
      const int64_t be = block_elements(type);
      for (int64_t i = begin; i < end; ++i)
        fn(src + i * bb, dst + i * be);
      return;
    }
  }
}

}  // namespace

Status dequantize_to_f32(DType type, const void* src, uint64_t src_bytes, float* dst, int64_t n) {
  if (block_fn(type) == nullptr) {
    return InvalidArgument("dequantize_to_f32: {} is not a block-quantised type", dtype_name(type));
  }
  RETURN_IF_ERROR(check_sizes("dequantize_to_f32", type, src, src_bytes, dst, n));
  convert_range(type, static_cast<const uint8_t*>(src), dst, 0, n / block_elements(type));
  return OkStatus();
}

Status convert_to_f32(DType type, const void* src, uint64_t src_bytes, float* dst, int64_t n, ThreadPool* pool) {
  if (!is_float(type) && block_fn(type) == nullptr) {
    return InvalidArgument("convert_to_f32: cannot convert {} to f32", dtype_name(type));
  }
  RETURN_IF_ERROR(check_sizes("convert_to_f32", type, src, src_bytes, dst, n));
  const int64_t units = n / block_elements(type);
  const auto* bytes = static_cast<const uint8_t*>(src);
  if (pool == nullptr || pool->num_threads() <= 1) {
    convert_range(type, bytes, dst, 0, units);
    return OkStatus();
  }
  // Chunks of at least ~64 K values, so small tensors stay on the calling thread.
  const int64_t min_chunk = std::max<int64_t>(1, (int64_t{1} << 16) / block_elements(type));
  pool->parallel_for(
      units, [&](int64_t begin, int64_t end) { convert_range(type, bytes, dst, begin, end); }, min_chunk);
  return OkStatus();
}

Status quantize_q8_0(const float* src, int64_t n, void* dst, uint64_t dst_bytes) {
  RETURN_IF_ERROR(check_sizes("quantize_q8_0", DType::kQ8_0, dst, dst_bytes, src, n));
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t block = 0; block < n / kQK; ++block) {
    const float* x = src + block * kQK;
    uint8_t* b = out + block * block_bytes(DType::kQ8_0);
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j)
      amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_u16(b, f32_to_f16(d));
    for (int j = 0; j < kQK; ++j) {
      float q = std::round(x[j] * id);
      if (std::isnan(q)) q = 0.0f;
      q = std::clamp(q, -128.0f, 127.0f);
      b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(q));
    }
  }
  return OkStatus();
}

Status quantize_q4_0(const float* src, int64_t n, void* dst, uint64_t dst_bytes) {
  RETURN_IF_ERROR(check_sizes("quantize_q4_0", DType::kQ4_0, dst, dst_bytes, src, n));
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t block = 0; block < n / kQK; ++block) {
    const float* x = src + block * kQK;
    uint8_t* b = out + block * block_bytes(DType::kQ4_0);
    // The value of largest magnitude maps to -8 (its sign kept), so the range [-8, 7]
    // is used in full on the side of that value.
    float amax = 0.0f;
    float max = 0.0f;
    for (int j = 0; j < kQK; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_u16(b, f32_to_f16(d));
    auto code = [&](float v) {
      float t = v * id + 8.5f;
      if (!(t >= 0.0f)) t = 0.0f;  // also NaN
      t = std::min(t, 15.0f);
      return static_cast<uint8_t>(t);  // truncation, as ggml
    };
    for (int j = 0; j < kQK / 2; ++j) {
      b[2 + j] = static_cast<uint8_t>(code(x[j]) | (code(x[j + kQK / 2]) << 4));
    }
  }
  return OkStatus();
}

Result<std::vector<uint8_t>> quantize(DType type, std::span<const float> src) {
  const auto n = static_cast<int64_t>(src.size());
  const auto bytes = dtype_bytes(type, src.size());
  if (!bytes) {
    return InvalidArgument("quantize: {} values are not a whole number of {}-value {} blocks", n, block_elements(type),
                           dtype_name(type));
  }
  std::vector<uint8_t> out(*bytes);
  switch (type) {
    case DType::kF32:
      if (n > 0) std::memcpy(out.data(), src.data(), *bytes);
      break;
    case DType::kF16:
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        store_u16(out.data() + 2 * i, type == DType::kF16 ? f32_to_f16(src[i]) : f32_to_bf16(src[i]));
      }
      break;
    case DType::kQ8_0:
      RETURN_IF_ERROR(quantize_q8_0(src.data(), n, out.data(), *bytes));
      break;
    case DType::kQ4_0:
      RETURN_IF_ERROR(quantize_q4_0(src.data(), n, out.data(), *bytes));
      break;
    default:
      return Unimplemented("quantize: no quantiser for {}", dtype_name(type));
  }
  return out;
}

}  // namespace bw
