#include "runner/kv_cache_storage.h"

#include "common/checked_math.h"

namespace bw {

Result<KvCacheStorage> KvCacheStorage::create(Backend& backend, const ModelConfig& config, int64_t num_blocks,
                                              int64_t block_size, DType dtype) {
  if (num_blocks <= 0 || block_size <= 0) {
    return InvalidArgument("KV cache: need positive num_blocks and block_size, got {} and {}", num_blocks, block_size);
  }
  if (!is_float(dtype)) return InvalidArgument("KV cache: dtype must be f32, f16 or bf16, got {}", dtype_name(dtype));
  const Shape shape{num_blocks, block_size, config.num_kv_heads, config.head_dim};
  auto elems = checked_mul(static_cast<uint64_t>(num_blocks) * static_cast<uint64_t>(block_size),
                           static_cast<uint64_t>(config.num_kv_heads * config.head_dim));
  auto layer_bytes = elems ? dtype_bytes(dtype, *elems) : std::nullopt;
  if (!layer_bytes) return InvalidArgument("KV cache: {} blocks of {} tokens overflow", num_blocks, block_size);
  KvCacheStorage s;
  s.num_blocks_ = num_blocks;
  s.block_size_ = block_size;
  for (int64_t l = 0; l < config.num_layers; ++l) {
    ASSIGN_OR_RETURN(DeviceBuffer k, backend.allocate(*layer_bytes));
    ASSIGN_OR_RETURN(DeviceBuffer v, backend.allocate(*layer_bytes));
    s.layers_.push_back({k.view(dtype, shape), v.view(dtype, shape)});
    s.buffers_.push_back(std::move(k));
    s.buffers_.push_back(std::move(v));
    s.bytes_ += 2 * *layer_bytes;
  }
  return s;
}

}  // namespace bw
