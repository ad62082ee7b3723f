// KvCacheStorage: the tensors of a paged KV cache, one k and one v tensor per layer, each
// [num_blocks, block_size, Hkv, D] in backend memory. Which blocks belong to which
// sequence is bookkeeping kept elsewhere (kv/KvCacheManager; the Generator's own table).
#pragma once

#include <vector>

#include <span>

#include "backend/backend.h"
#include "kv/kv_cache_manager.h"
#include "model/model_config.h"

namespace bw {

class KvCacheStorage {
 public:
  static Result<KvCacheStorage> create(Backend& backend, const ModelConfig& config, int64_t num_blocks,
                                       int64_t block_size, DType dtype);

  // Bytes one block takes over all layers (k and v): what the pool size is divided by.
  static Result<uint64_t> bytes_per_block(const ModelConfig& config, int64_t block_size, DType dtype);

  // Copies every slot of each source block to its destination block, in every layer.
  Status copy_blocks(Backend& backend, std::span<const BlockCopy> copies) const;

  const std::vector<KvCacheLayer>& layers() const { return layers_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  uint64_t bytes() const { return bytes_; }

 private:
  std::vector<DeviceBuffer> buffers_;
  std::vector<KvCacheLayer> layers_;
  int64_t num_blocks_ = 0;
  int64_t block_size_ = 0;
  uint64_t bytes_ = 0;
};

}  // namespace bw
