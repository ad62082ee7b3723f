// KvCacheStorage: the tensors of a paged KV cache, one k and one v tensor per layer, each
// [num_blocks, block_size, Hkv, D] in backend memory. Which blocks belong to which
// sequence is bookkeeping kept elsewhere (kv/ later, the Generator for now).
#pragma once

#include <vector>

#include "backend/backend.h"
#include "model/model_config.h"

namespace bw {

class KvCacheStorage {
 public:
  static Result<KvCacheStorage> create(Backend& backend, const ModelConfig& config, int64_t num_blocks,
                                       int64_t block_size, DType dtype);

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
