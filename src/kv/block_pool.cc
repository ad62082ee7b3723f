#include "kv/block_pool.h"

#include <algorithm>
#include <cassert>

namespace bw {

BlockPool::BlockPool(int num_blocks, int block_size)
    : num_blocks_(num_blocks),
      block_size_(block_size),
      ref_counts_(num_blocks, 0),
      prev_(num_blocks, kNone),
      next_(num_blocks, kNone),
      hashes_(num_blocks),
      is_cached_(num_blocks, 0) {
  assert(num_blocks >= 0 && block_size >= 1);
  for (int32_t id = 0; id < num_blocks; ++id)
    push_free_back(id);
}

void BlockPool::push_free_back(int32_t block_id) {
  prev_[block_id] = tail_;
  next_[block_id] = kNone;
  if (tail_ != kNone) {
    next_[tail_] = block_id;
  } else {
    head_ = block_id;
  }
  tail_ = block_id;
  ++num_free_;
}

void BlockPool::remove_free(int32_t block_id) {
  const int32_t prev = prev_[block_id];
  const int32_t next = next_[block_id];
  if (prev != kNone) {
    next_[prev] = next;
  } else {
    head_ = next;
  }
  if (next != kNone) {
    prev_[next] = prev;
  } else {
    tail_ = prev;
  }
  prev_[block_id] = kNone;
  next_[block_id] = kNone;
  --num_free_;
}

void BlockPool::evict(int32_t block_id) {
  if (!is_cached_[block_id]) return;
  cached_.erase(hashes_[block_id]);
  is_cached_[block_id] = 0;
  ++num_evictions_;
}

std::optional<std::vector<int32_t>> BlockPool::allocate(int n) {
  assert(n >= 0);
  if (n < 0 || n > num_free_) return std::nullopt;
  std::vector<int32_t> ids;
  ids.reserve(n);
  for (int i = 0; i < n; ++i) {
    const int32_t id = head_;
    remove_free(id);
    evict(id);
    ref_counts_[id] = 1;
    ids.push_back(id);
  }
  // Which blocks are taken stays the queue's (least recently freed first); their order in
  // the caller's table is ascending: a request frees its blocks tail first, so a later
  // allocation of them would otherwise run backwards, and a 128-key tile of consecutive
  // blocks is one tensor copy on Hopper instead of one per block (docs/PERF.md).
  std::sort(ids.begin(), ids.end());
  return ids;
}

void BlockPool::touch(std::span<const int32_t> block_ids) {
  for (int32_t id : block_ids) {
    if (ref_counts_[id] == 0) remove_free(id);
    ++ref_counts_[id];
  }
}

void BlockPool::release(std::span<const int32_t> block_ids) {
  for (int32_t id : block_ids) {
    assert(ref_counts_[id] > 0 && "releasing a free block");
    if (ref_counts_[id] <= 0) continue;
    if (--ref_counts_[id] == 0) push_free_back(id);
  }
}

bool BlockPool::cache_block(int32_t block_id, const BlockHash& hash) {
  assert(ref_counts_[block_id] > 0 && "only a block in use can be cached");
  if (is_cached_[block_id]) {
    // A shared (prefix-hit or forked) block registered again: its content cannot change.
    assert(hashes_[block_id] == hash && "a cached block was given a different hash");
    return hashes_[block_id] == hash;
  }
  if (!cached_.try_emplace(hash, block_id).second) return false;
  hashes_[block_id] = hash;
  is_cached_[block_id] = 1;
  return true;
}

std::optional<int32_t> BlockPool::lookup(const BlockHash& hash) const {
  const auto it = cached_.find(hash);
  if (it == cached_.end()) return std::nullopt;
  return it->second;
}

std::optional<BlockHash> BlockPool::block_hash(int32_t block_id) const {
  if (!is_cached_[block_id]) return std::nullopt;
  return hashes_[block_id];
}

std::vector<int32_t> BlockPool::free_block_ids() const {
  std::vector<int32_t> ids;
  ids.reserve(num_free_);
  for (int32_t id = head_; id != kNone && ids.size() <= static_cast<size_t>(num_blocks_); id = next_[id])
    ids.push_back(id);
  return ids;
}

Status BlockPool::check_invariants() const {
  // Walk the free queue forwards, checking the back links.
  std::vector<uint8_t> in_queue(num_blocks_, 0);
  int count = 0;
  int32_t prev = kNone;
  for (int32_t id = head_; id != kNone; id = next_[id]) {
    if (id < 0 || id >= num_blocks_) return Internal("free queue: block id {} out of range", id);
    if (in_queue[id]) return Internal("free queue: block {} appears twice (cycle)", id);
    in_queue[id] = 1;
    if (prev_[id] != prev) return Internal("free queue: block {} has prev {}, expected {}", id, prev_[id], prev);
    if (ref_counts_[id] != 0) return Internal("free queue: block {} has ref count {}", id, ref_counts_[id]);
    prev = id;
    ++count;
  }
  if (tail_ != prev) return Internal("free queue: tail is {}, last block walked is {}", tail_, prev);
  if (count != num_free_) return Internal("free queue: {} blocks linked, num_free is {}", count, num_free_);
  int num_cached = 0;
  for (int32_t id = 0; id < num_blocks_; ++id) {
    if (ref_counts_[id] < 0) return Internal("block {} has negative ref count {}", id, ref_counts_[id]);
    if (ref_counts_[id] == 0 && !in_queue[id]) return Internal("block {} has ref count 0 but is not free", id);
    if (!in_queue[id] && (prev_[id] != kNone || next_[id] != kNone))
      return Internal("block {} is in use but still linked", id);
    if (is_cached_[id]) {
      ++num_cached;
      const auto it = cached_.find(hashes_[id]);
      if (it == cached_.end() || it->second != id)
        return Internal("block {} is cached under {} but the map disagrees", id, hashes_[id].to_hex());
    }
  }
  if (num_cached != static_cast<int>(cached_.size()))
    return Internal("{} blocks marked cached, hash map holds {}", num_cached, cached_.size());
  return OkStatus();
}

}  // namespace bw
