#include "kv/kv_cache_manager.h"

#include <algorithm>
#include <cassert>

namespace bw {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

Status KvCacheConfig::validate() const {
  if (num_blocks < 1) return InvalidArgument("kv_num_blocks must be at least 1, got {}", num_blocks);
  if (block_size < 1 || block_size > 65536)
    return InvalidArgument("kv_block_size must be in [1, 65536], got {}", block_size);
  return OkStatus();
}

KvCacheManager::KvCacheManager(const KvCacheConfig& config)
    : config_(config), pool_(config.num_blocks, config.block_size) {
  assert(config.validate().ok());
}

KvCacheStats KvCacheManager::stats() const {
  KvCacheStats s;
  s.num_blocks = pool_.num_blocks();
  s.num_free_blocks = pool_.num_free_blocks();
  s.num_used_blocks = pool_.num_used_blocks();
  s.num_cached_blocks = pool_.num_cached_blocks();
  s.num_evictions = pool_.num_evictions();
  s.num_prefix_queried_tokens = num_prefix_queried_tokens_;
  s.num_prefix_hit_tokens = num_prefix_hit_tokens_;
  return s;
}

ComputedPrefix KvCacheManager::find_cached_prefix(const RequestTokens& req) const {
  ComputedPrefix prefix;
  if (!config_.enable_prefix_caching || req.token_ids.empty()) return prefix;
  const int block_size = config_.block_size;
  // At least the last token is left to compute, so its logits come out of the forward.
  const size_t max_blocks = (req.token_ids.size() - 1) / block_size;
  for (size_t i = 0; i < max_blocks; ++i) {
    const BlockHash* parent = i == 0 ? nullptr : &prefix.block_hashes.back();
    const BlockHash hash = hash_block(parent, req.token_ids.subspan(i * block_size, block_size), req.extra_key);
    const std::optional<int32_t> block_id = pool_.lookup(hash);
    if (!block_id) break;
    prefix.block_ids.push_back(*block_id);
    prefix.block_hashes.push_back(hash);
  }
  prefix.num_tokens = static_cast<int>(prefix.block_ids.size()) * block_size;
  return prefix;
}

std::optional<std::vector<int32_t>> KvCacheManager::allocate_slots(const RequestTokens& req, int num_new_tokens,
                                                                   const ComputedPrefix* prefix) {
  assert(num_new_tokens >= 0);
  const auto it = requests_.find(req.request_id);
  const bool is_first = it == requests_.end();
  assert((is_first || prefix == nullptr) && "a prefix is only taken on the first allocation");
  assert((!is_first || req.num_computed_tokens == 0) && "the first allocation starts from 0 computed tokens");
  if (!is_first) prefix = nullptr;

  const int num_prefix_blocks = prefix != nullptr ? static_cast<int>(prefix->block_ids.size()) : 0;
  const int num_prefix_tokens = prefix != nullptr ? prefix->num_tokens : 0;
  assert(prefix == nullptr || (prefix->block_hashes.size() == prefix->block_ids.size() &&
                               num_prefix_tokens == num_prefix_blocks * config_.block_size));

  // Reviving free prefix blocks takes them out of the free queue: they count against it.
  int num_revived = 0;
  for (int i = 0; i < num_prefix_blocks; ++i) {
    const int32_t id = prefix->block_ids[i];
    // Still holding the same content? (Another allocation may have evicted it since.)
    const std::optional<BlockHash> hash = pool_.block_hash(id);
    if (!hash || *hash != prefix->block_hashes[i]) return std::nullopt;
    if (pool_.is_free(id)) ++num_revived;
  }

  const int64_t num_tokens = int64_t{is_first ? 0 : req.num_computed_tokens} + num_prefix_tokens + num_new_tokens;
  const int64_t num_held = is_first ? num_prefix_blocks : static_cast<int64_t>(it->second.block_ids.size());
  const int64_t num_new_blocks = std::max<int64_t>(0, ceil_div(num_tokens, config_.block_size) - num_held);
  if (num_new_blocks + num_revived > pool_.num_free_blocks()) return std::nullopt;

  // From here on nothing can fail.
  RequestBlocks& blocks = is_first ? requests_[req.request_id] : it->second;
  if (prefix != nullptr) {
    pool_.touch(prefix->block_ids);  // before allocating, so the new blocks cannot evict them
    blocks.block_ids = prefix->block_ids;
    blocks.block_hashes = prefix->block_hashes;
    blocks.num_committed_tokens = num_prefix_tokens;
  }
  std::optional<std::vector<int32_t>> new_ids = pool_.allocate(static_cast<int>(num_new_blocks));
  assert(new_ids.has_value());
  blocks.block_ids.insert(blocks.block_ids.end(), new_ids->begin(), new_ids->end());
  if (is_first) {
    num_prefix_queried_tokens_ += static_cast<int64_t>(req.token_ids.size());
    num_prefix_hit_tokens_ += num_prefix_tokens;
  }
  return new_ids;
}

void KvCacheManager::commit_computed(const RequestTokens& req) {
  const auto it = requests_.find(req.request_id);
  assert(it != requests_.end() && "commit_computed for a request without blocks");
  if (it == requests_.end()) return;
  RequestBlocks& blocks = it->second;
  const int64_t capacity = static_cast<int64_t>(blocks.block_ids.size()) * config_.block_size;
  assert(req.num_computed_tokens >= blocks.num_committed_tokens);
  assert(req.num_computed_tokens <= capacity);
  assert(static_cast<size_t>(req.num_computed_tokens) <= req.token_ids.size());
  // Clamped so a caller bug in a release build cannot read past the tokens.
  const int num_computed = static_cast<int>(
      std::min<int64_t>({int64_t{req.num_computed_tokens}, capacity, static_cast<int64_t>(req.token_ids.size())}));
  if (num_computed <= blocks.num_committed_tokens) return;
  blocks.num_committed_tokens = num_computed;
  if (!config_.enable_prefix_caching) return;

  const size_t first = blocks.block_hashes.size();
  extend_block_hashes(req.token_ids.first(num_computed), config_.block_size, req.extra_key, &blocks.block_hashes);
  for (size_t i = first; i < blocks.block_hashes.size(); ++i) {
    // False when another request already cached the same content: this copy stays private.
    (void)pool_.cache_block(blocks.block_ids[i], blocks.block_hashes[i]);
  }
}

std::optional<std::vector<BlockCopy>> KvCacheManager::fork(RequestId parent_id, RequestId child_id) {
  assert(parent_id != child_id && requests_.count(child_id) == 0 && "fork into an existing request");
  if (parent_id == child_id || requests_.count(child_id) != 0) return std::nullopt;
  const auto it = requests_.find(parent_id);
  assert(it != requests_.end() && "fork of a request without blocks");
  if (it == requests_.end()) return std::nullopt;
  const RequestBlocks& parent = it->second;

  const int num_full = parent.num_committed_tokens / config_.block_size;
  const bool has_partial = parent.num_committed_tokens % config_.block_size != 0;
  std::vector<BlockCopy> copies;
  std::optional<std::vector<int32_t>> tail;
  if (has_partial) {
    tail = pool_.allocate(1);
    if (!tail) return std::nullopt;
    copies.push_back({parent.block_ids[num_full], tail->front()});
  }
  RequestBlocks child;
  child.block_ids.assign(parent.block_ids.begin(), parent.block_ids.begin() + num_full);
  pool_.touch(child.block_ids);
  if (tail) child.block_ids.push_back(tail->front());
  child.block_hashes = parent.block_hashes;  // exactly the full committed blocks
  child.num_committed_tokens = parent.num_committed_tokens;
  requests_.emplace(child_id, std::move(child));  // invalidates `parent`
  return copies;
}

void KvCacheManager::free(RequestId request_id) {
  const auto it = requests_.find(request_id);
  if (it == requests_.end()) return;
  std::vector<int32_t>& ids = it->second.block_ids;
  std::reverse(ids.begin(), ids.end());
  pool_.release(ids);
  requests_.erase(it);
}

std::span<const int32_t> KvCacheManager::block_table(RequestId request_id) const {
  const auto it = requests_.find(request_id);
  if (it == requests_.end()) return {};
  return it->second.block_ids;
}

int KvCacheManager::num_committed_tokens(RequestId request_id) const {
  const auto it = requests_.find(request_id);
  return it == requests_.end() ? 0 : it->second.num_committed_tokens;
}

Status KvCacheManager::check_invariants() const {
  RETURN_IF_ERROR(pool_.check_invariants());
  std::vector<int> expected_refs(pool_.num_blocks(), 0);
  for (const auto& [id, blocks] : requests_) {
    const int64_t capacity = static_cast<int64_t>(blocks.block_ids.size()) * config_.block_size;
    if (blocks.num_committed_tokens > capacity)
      return Internal("request {}: {} committed tokens but {} slots", id, blocks.num_committed_tokens, capacity);
    const size_t num_full = static_cast<size_t>(blocks.num_committed_tokens / config_.block_size);
    if (config_.enable_prefix_caching ? blocks.block_hashes.size() != num_full : !blocks.block_hashes.empty())
      return Internal("request {}: {} block hashes for {} full computed blocks", id, blocks.block_hashes.size(),
                      num_full);
    for (size_t i = 0; i < blocks.block_ids.size(); ++i) {
      const int32_t block_id = blocks.block_ids[i];
      if (block_id < 0 || block_id >= pool_.num_blocks())
        return Internal("request {}: block id {} out of range", id, block_id);
      ++expected_refs[block_id];
      const std::optional<BlockHash> hash = pool_.block_hash(block_id);
      if (hash && (i >= blocks.block_hashes.size() || *hash != blocks.block_hashes[i]))
        return Internal("request {}: block {} (position {}) is cached under another content", id, block_id, i);
    }
  }
  for (int32_t b = 0; b < pool_.num_blocks(); ++b) {
    if (pool_.ref_count(b) != expected_refs[b])
      return Internal("block {} has ref count {} but {} tables hold it", b, pool_.ref_count(b), expected_refs[b]);
  }
  return OkStatus();
}

}  // namespace bw
