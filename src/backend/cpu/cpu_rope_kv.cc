// rope_write_kv: rotates q and k of each token in place (NeoX / HF rotate_half over the
// leading rotary_dim dims of every head) and writes the rotated k and the v of the token
// to its paged KV cache slot, converting to the cache dtype.
//
// Angles follow HF in float32: angle = float(position) * inv_freq[i] (one rounding), then
// std::cos / std::sin of that float. Every argument, position and slot is checked before
// anything is written, so a rejected call leaves qkv and the cache untouched. Tokens are
// independent tasks; two tokens mapped to the same slot are a caller bug (last writer
// wins, unspecified which).
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/rope.h"

namespace bw::cpu {

namespace {

constexpr std::string_view kOp = "rope_write_kv";
constexpr int64_t kMinTokensPerTask = 4;

// Rotates the leading rotary_dim dims of `num_heads` heads of `head_dim` starting at x.
void rotate_heads(float* x, int64_t num_heads, int64_t head_dim, int64_t half, const float* cos_v, const float* sin_v) {
  for (int64_t h = 0; h < num_heads; ++h) {
    float* head = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i)
      rope_rotate_pair(head[i], head[i + half], cos_v[i], sin_v[i]);
  }
}

}  // namespace

Status rope_write_kv(ThreadPool& pool, TensorView qkv, const AttentionParams& attn, const RopeParams& rope,
                     const AttentionMetadata& meta, const KvCacheLayer& cache) {
  AttentionDims d;
  RETURN_IF_ERROR(check_attention_inputs(kOp, qkv, attn, cache, &d));
  RETURN_IF_ERROR(check_rope_params(kOp, rope, d.head_dim));
  const int64_t num_tokens = d.num_tokens;
  RETURN_IF_ERROR(expect_i32_vector(kOp, "meta.positions", meta.positions, num_tokens));
  RETURN_IF_ERROR(expect_i32_vector(kOp, "meta.slot_mapping", meta.slot_mapping, num_tokens));
  const int32_t* positions = meta.positions.as<const int32_t>();
  const int32_t* slots = meta.slot_mapping.as<const int32_t>();
  const int64_t num_slots = d.num_blocks * d.block_size;
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (positions[t] < 0) {
      return InvalidArgument("rope_write_kv: meta.positions[{}] = {} is negative", t, positions[t]);
    }
    if (slots[t] < -1 || slots[t] >= num_slots) {
      return InvalidArgument("rope_write_kv: meta.slot_mapping[{}] = {} is outside [-1, {}) ({} blocks of {})", t,
                             slots[t], num_slots, d.num_blocks, d.block_size);
    }
  }
  if (overlaps(qkv, cache.k) || overlaps(qkv, cache.v)) {
    return InvalidArgument("rope_write_kv: qkv {} must not overlap the cache", describe(qkv));
  }

  const std::vector<float> inv_freq = rope_inv_freq(rope);
  const int64_t half = rope.rotary_dim / 2;
  const int64_t kv_width = d.num_kv_heads * d.head_dim;
  const int64_t slot_bytes = kv_width * storage_bytes(d.cache_dtype);
  auto* k_cache = static_cast<uint8_t*>(cache.k.data);
  auto* v_cache = static_cast<uint8_t*>(cache.v.data);
  float* base = qkv.as<float>();
  pool.parallel_for(
      num_tokens,
      [&](int64_t begin, int64_t end) {
        std::vector<float> cos_v(static_cast<size_t>(half)), sin_v(static_cast<size_t>(half));
        for (int64_t t = begin; t < end; ++t) {
          for (int64_t i = 0; i < half; ++i) {
            const float angle = rope_angle(positions[t], inv_freq[i]);
            cos_v[i] = std::cos(angle);
            sin_v[i] = std::sin(angle);
          }
          float* q = base + t * d.qkv_width;
          float* k = q + d.num_heads * d.head_dim;
          const float* v = k + kv_width;
          rotate_heads(q, d.num_heads, d.head_dim, half, cos_v.data(), sin_v.data());
          rotate_heads(k, d.num_kv_heads, d.head_dim, half, cos_v.data(), sin_v.data());
          if (slots[t] < 0) continue;
          from_f32(k, d.cache_dtype, kv_width, k_cache + slots[t] * slot_bytes);
          from_f32(v, d.cache_dtype, kv_width, v_cache + slots[t] * slot_bytes);
        }
      },
      kMinTokensPerTask);
  return OkStatus();
}

}  // namespace bw::cpu
