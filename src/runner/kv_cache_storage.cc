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

Result<uint64_t> KvCacheStorage::bytes_per_block(const ModelConfig& config, int64_t block_size, DType dtype) {
  auto elems = checked_mul(static_cast<uint64_t>(block_size),
                           static_cast<uint64_t>(2 * config.num_layers * config.num_kv_heads * config.head_dim));
  auto bytes = elems ? dtype_bytes(dtype, *elems) : std::nullopt;
  if (!bytes || *bytes == 0) return InvalidArgument("KV cache: a block of {} tokens has no valid size", block_size);
  return *bytes;
}

Status KvCacheStorage::copy_blocks(Backend& backend, std::span<const BlockCopy> copies) const {
  for (const BlockCopy& copy : copies) {
    if (copy.src_block_id < 0 || copy.src_block_id >= num_blocks_ || copy.dst_block_id < 0 ||
        copy.dst_block_id >= num_blocks_ || copy.src_block_id == copy.dst_block_id) {
      return InvalidArgument("KV cache: bad block copy {} -> {} ({} blocks)", copy.src_block_id, copy.dst_block_id,
                             num_blocks_);
    }
    for (const KvCacheLayer& layer : layers_) {
      for (const TensorView* t : {&layer.k, &layer.v}) {
        const size_t block_bytes = t->nbytes() / static_cast<size_t>(num_blocks_);
        auto* base = static_cast<uint8_t*>(t->data);
        RETURN_IF_ERROR(backend.copy_on_device(base + block_bytes * static_cast<size_t>(copy.dst_block_id),
                                               base + block_bytes * static_cast<size_t>(copy.src_block_id),
                                               block_bytes));
      }
    }
  }
  return OkStatus();
}

}  // namespace bw
