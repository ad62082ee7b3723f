// KvCacheManager: per-request block tables over a BlockPool, with a hash-chained prefix
// cache (the design of vLLM v1's KVCacheManager). Bookkeeping only: block ids, no tensors.
//
// The life of a request, as the scheduler drives it:
//   1. prefix = find_cached_prefix(req)        // leading full blocks already cached
//   2. allocate_slots(req, n, &prefix)         // first allocation: takes the prefix blocks
//                                              // and new ones; nullopt = out of blocks
//   3. (the runner computes the tokens)  commit_computed(req)   // caches newly full blocks
//   4. allocate_slots(req, n) ... commit_computed(req) ...       // each later step
//   5. free(req.request_id)                    // finished or preempted; cached blocks stay
//                                              // reusable until evicted
// Only full blocks whose tokens are computed are cached; a partial block never is.
// Out of blocks is a normal outcome (the scheduler preempts), never an error, and a
// failed call changes nothing. Misuse (an unknown id, a second first allocation) is a
// programmer bug caught by assert.
//
// Ownership: the manager owns the pool and every request's block table; RequestTokens is a
// view whose data the scheduler's Request owns. Not thread-safe: owned by the engine's
// step-loop thread, like the scheduler.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "kv/block_hash.h"
#include "kv/block_pool.h"

namespace bw {

using RequestId = int64_t;

struct KvCacheConfig {
  int num_blocks = 0;
  int block_size = 16;  // tokens per block
  bool enable_prefix_caching = true;

  // InvalidArgument unless num_blocks >= 1 and 1 <= block_size <= 65536.
  Status validate() const;
};

// What the manager needs of a request, filled by the scheduler for each call (a view: the
// scheduler's Request owns the tokens and the extra key).
struct RequestTokens {
  RequestId request_id = 0;
  std::span<const int32_t> token_ids;  // prompt + generated so far
  int num_computed_tokens = 0;         // leading tokens whose KV is in the cache
  std::string_view extra_key;          // LoRA adapter, multimodal inputs, cache salt; "" by default
};

// Leading full blocks of a request found in the prefix cache.
struct ComputedPrefix {
  std::vector<int32_t> block_ids;
  std::vector<BlockHash> block_hashes;  // one per block, checked again by allocate_slots
  int num_tokens = 0;                   // block_ids.size() * block_size
};

// The runner copies block `src` to block `dst` (all slots) before the next forward.
struct BlockCopy {
  int32_t src_block_id = 0;
  int32_t dst_block_id = 0;
  friend bool operator==(const BlockCopy&, const BlockCopy&) = default;
};

struct KvCacheStats {
  int num_blocks = 0;
  int num_free_blocks = 0;
  int num_used_blocks = 0;    // ref count > 0
  int num_cached_blocks = 0;  // hashed, in use or free
  int64_t num_evictions = 0;
  // Counted once per first allocation (a new or resumed request): its tokens, and those of
  // them that came from the prefix cache.
  int64_t num_prefix_queried_tokens = 0;
  int64_t num_prefix_hit_tokens = 0;

  double prefix_hit_rate() const {
    return num_prefix_queried_tokens == 0 ? 0.0
                                          : static_cast<double>(num_prefix_hit_tokens) / num_prefix_queried_tokens;
  }
};

class KvCacheManager {
 public:
  // `config` must pass validate().
  explicit KvCacheManager(const KvCacheConfig& config);

  int block_size() const { return config_.block_size; }
  int num_free_blocks() const { return pool_.num_free_blocks(); }
  KvCacheStats stats() const;
  const BlockPool& pool() const { return pool_; }

  // The longest run of leading full blocks of `req` found in the cache, stopping at the
  // first miss. Never the whole sequence: at least one token must be computed to get
  // logits, so the hit is capped at (num tokens - 1) rounded down to a block boundary (a
  // fully cached 32-token prompt with 16-token blocks hits 16 tokens, not 32). Empty when
  // prefix caching is off. Hashes only blocks it looks up (a miss at block 0 costs one).
  // Valid until the next call that changes the cache.
  ComputedPrefix find_cached_prefix(const RequestTokens& req) const;

  // Ensures the request's block table covers req.num_computed_tokens (+ prefix->num_tokens
  // on the first allocation) + num_new_tokens tokens. The first call for a request creates
  // its table (req.num_computed_tokens must then be 0) and takes a reference on the prefix
  // blocks, which count as computed; `prefix` must be nullptr on later calls. Returns the
  // block ids newly taken from the pool (not the prefix blocks), in table order; nullopt,
  // changing nothing, when too few blocks are free (reviving free prefix blocks counts) or
  // when a prefix block was evicted since find_cached_prefix (find it again).
  std::optional<std::vector<int32_t>> allocate_slots(const RequestTokens& req, int num_new_tokens,
                                                     const ComputedPrefix* prefix = nullptr);

  // After a step: req.num_computed_tokens tokens of the request now have their KV written.
  // Hashes the blocks that became full and caches them for later requests. Must not exceed
  // the table's coverage or the number of tokens; never decreases.
  void commit_computed(const RequestTokens& req);

  // n > 1 completions sharing a prompt: gives `child_id` the parent's blocks covering its
  // committed (computed) tokens. Full blocks are shared (ref count + 1; they are immutable,
  // so no copy-on-write is needed); a partially filled last block gets a fresh block for the
  // child, returned as a copy pair the runner must apply before the child's next forward.
  // The child starts with num_computed_tokens = the parent's; the parent's blocks past its
  // computed tokens are not shared. nullopt (nothing changes) when no block is free for
  // the partial tail. `child_id` must be new.
  std::optional<std::vector<BlockCopy>> fork(RequestId parent_id, RequestId child_id);

  // Releases the request's blocks, last block first, so a sequence's tail is evicted before
  // its head (a head is shared by more prefixes). A no-op for an id without blocks.
  void free(RequestId request_id);

  bool has_request(RequestId request_id) const { return requests_.count(request_id) != 0; }
  // Empty for an unknown id; the view is valid until the next call that changes the table.
  std::span<const int32_t> block_table(RequestId request_id) const;
  // Tokens committed by commit_computed (or taken from the prefix); 0 for an unknown id.
  int num_committed_tokens(RequestId request_id) const;

  // Pool invariants, plus: each block's ref count equals the number of tables holding it;
  // every request's hashed blocks are cached under its own hash or not at all. O(total
  // table size); for tests and debug builds.
  Status check_invariants() const;

 private:
  struct RequestBlocks {
    std::vector<int32_t> block_ids;
    // Hashes of the leading full computed blocks (empty with prefix caching off).
    std::vector<BlockHash> block_hashes;
    int num_committed_tokens = 0;
  };

  KvCacheConfig config_;
  BlockPool pool_;
  std::unordered_map<RequestId, RequestBlocks> requests_;
  int64_t num_prefix_queried_tokens_ = 0;
  int64_t num_prefix_hit_tokens_ = 0;
};

}  // namespace bw
