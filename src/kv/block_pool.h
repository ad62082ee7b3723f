// BlockPool: the bookkeeping of a paged KV cache's blocks (ids 0..num_blocks-1), with no
// tensors: the model runner maps a block id to memory.
//
// Each block has a ref count (how many block tables hold it) and, once it is full and its
// tokens are final, optionally a content hash (kv/block_hash.h) under which it is cached.
// Blocks with ref count 0 live in a free queue ordered least to most recently freed (an
// intrusive doubly linked list over block ids, so a block leaves it from anywhere in O(1)):
// - allocate() takes blocks from the head; a cached block taken there is evicted (its hash
//   forgotten) because it is about to be overwritten with new content; it returns them in
//   ascending id order, so the blocks of a freed request (released tail first) come back
//   as the consecutive runs the GPU's prefill attention copies in one piece;
// - release() appends blocks whose ref count drops to 0 to the tail, in the given order;
// - touch() takes a reference, reviving a cached block from the middle of the queue when
//   a prefix hit finds it before it is evicted.
// A hash maps to at most one block: when two requests computed the same block, the second
// copy is simply not cached (cache_block returns false) and is freed as a plain block.
//
// The pool owns all its state. Not thread-safe: owned by the engine's step-loop thread
// (through KvCacheManager).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "kv/block_hash.h"

namespace bw {

class BlockPool {
 public:
  // num_blocks >= 0, block_size >= 1 (checked by KvCacheConfig::validate()).
  BlockPool(int num_blocks, int block_size);

  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  int num_free_blocks() const { return num_free_; }
  int num_used_blocks() const { return num_blocks_ - num_free_; }
  // Blocks with a hash, in use or free.
  int num_cached_blocks() const { return static_cast<int>(cached_.size()); }
  // Cached blocks whose hash was dropped to reuse them for new content.
  int64_t num_evictions() const { return num_evictions_; }

  // Takes `n` blocks from the head of the free queue, each with ref count 1, evicting the
  // cached ones; returned in ascending id order. nullopt (and nothing changes) when fewer
  // than `n` blocks are free.
  std::optional<std::vector<int32_t>> allocate(int n);
  // Takes one more reference on each block; a free (ref 0) block leaves the free queue
  // with its hash intact.
  void touch(std::span<const int32_t> block_ids);
  // Drops one reference on each block, in order; blocks reaching 0 go to the free queue's
  // tail in that order (cached ones stay cached until allocate() reuses them).
  void release(std::span<const int32_t> block_ids);

  // Registers an in-use, full block under `hash`. Returns false (nothing changes) when
  // another block is already cached under that hash; true when cached (or already was).
  bool cache_block(int32_t block_id, const BlockHash& hash);
  // The cached block holding `hash`, if any (in use or free).
  std::optional<int32_t> lookup(const BlockHash& hash) const;

  int ref_count(int32_t block_id) const { return ref_counts_[block_id]; }
  bool is_free(int32_t block_id) const { return ref_counts_[block_id] == 0; }
  // The block's hash when it is cached.
  std::optional<BlockHash> block_hash(int32_t block_id) const;
  // The free queue from head (next to allocate) to tail (most recently freed). O(n).
  std::vector<int32_t> free_block_ids() const;

  // Checks the links of the free queue, the ref counts and the hash map against each other.
  // O(num_blocks); for tests and debug builds.
  Status check_invariants() const;

 private:
  static constexpr int32_t kNone = -1;

  void push_free_back(int32_t block_id);
  void remove_free(int32_t block_id);
  void evict(int32_t block_id);

  int num_blocks_ = 0;
  int block_size_ = 0;
  std::vector<int32_t> ref_counts_;
  // Free queue links (kNone at the ends and for blocks not in the queue).
  std::vector<int32_t> prev_;
  std::vector<int32_t> next_;
  int32_t head_ = kNone;
  int32_t tail_ = kNone;
  int num_free_ = 0;
  std::vector<BlockHash> hashes_;
  std::vector<uint8_t> is_cached_;
  std::unordered_map<BlockHash, int32_t> cached_;
  int64_t num_evictions_ = 0;
};

}  // namespace bw
