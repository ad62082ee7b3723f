#include "kv/kv_cache_manager.h"

#include <gtest/gtest.h>

#include <numeric>
#include <string>
#include <utility>
#include <vector>

namespace bw {
namespace {

using Ids = std::vector<int32_t>;

std::vector<int32_t> iota_tokens(int n, int32_t start) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

Ids table(const KvCacheManager& m, RequestId id) {
  const auto t = m.block_table(id);
  return Ids(t.begin(), t.end());
}

// A request as the scheduler would hold it, with the view the manager reads.
struct Seq {
  Seq(RequestId id, std::vector<int32_t> tokens, std::string extra_key = "")
      : id(id), tokens(std::move(tokens)), extra_key(std::move(extra_key)) {}

  RequestId id = 0;
  std::vector<int32_t> tokens;
  int num_computed = 0;
  std::string extra_key;

  RequestTokens view() const { return {id, tokens, num_computed, extra_key}; }
};

class KvCacheManagerTest : public ::testing::Test {
 protected:
  static constexpr int kBlockSize = 4;

  explicit KvCacheManagerTest(int num_blocks = 8) : m_(KvCacheConfig{num_blocks, kBlockSize, true}) {}

  // Admits `s`: prefix lookup + first allocation of the rest of its tokens; then "computes"
  // them and commits. Returns the newly allocated block ids.
  std::optional<Ids> run_prefill(Seq& s) {
    const ComputedPrefix prefix = m_.find_cached_prefix(s.view());
    const int num_new = static_cast<int>(s.tokens.size()) - prefix.num_tokens;
    auto ids = m_.allocate_slots(s.view(), num_new, &prefix);
    if (!ids) return std::nullopt;
    s.num_computed = static_cast<int>(s.tokens.size());
    m_.commit_computed(s.view());
    EXPECT_TRUE(m_.check_invariants().ok()) << m_.check_invariants().to_string();
    return ids;
  }

  void expect_all_free() {
    EXPECT_EQ(m_.num_free_blocks(), m_.pool().num_blocks());
    for (int32_t b = 0; b < m_.pool().num_blocks(); ++b)
      EXPECT_EQ(m_.pool().ref_count(b), 0) << b;
    EXPECT_TRUE(m_.check_invariants().ok()) << m_.check_invariants().to_string();
  }

  KvCacheManager m_;
};

TEST_F(KvCacheManagerTest, ConfigValidation) {
  EXPECT_TRUE((KvCacheConfig{8, 16, true}).validate().ok());
  EXPECT_EQ((KvCacheConfig{0, 16, true}).validate().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((KvCacheConfig{8, 0, true}).validate().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((KvCacheConfig{8, 1 << 20, true}).validate().code(), StatusCode::kInvalidArgument);
}

TEST_F(KvCacheManagerTest, AllocatesFromTheFreeListHeadAndGrowsByBlocks) {
  Seq a{1, iota_tokens(10, 100)};
  EXPECT_EQ(m_.allocate_slots(a.view(), 10), (Ids{0, 1, 2}));
  EXPECT_EQ(table(m_, 1), (Ids{0, 1, 2}));
  a.num_computed = 10;
  m_.commit_computed(a.view());
  // Decode: token 11 and 12 fit in block 2, token 13 needs a new block.
  a.tokens.push_back(500);
  EXPECT_EQ(m_.allocate_slots(a.view(), 1), Ids{});
  a.num_computed = 11;
  a.tokens.push_back(501);
  EXPECT_EQ(m_.allocate_slots(a.view(), 1), Ids{});
  a.num_computed = 12;
  a.tokens.push_back(502);
  EXPECT_EQ(m_.allocate_slots(a.view(), 1), (Ids{3}));
  EXPECT_EQ(table(m_, 1), (Ids{0, 1, 2, 3}));
  // A second request continues from the head of the free list.
  Seq b{2, iota_tokens(5, 900)};
  EXPECT_EQ(m_.allocate_slots(b.view(), 5), (Ids{4, 5}));
  EXPECT_EQ(m_.num_free_blocks(), 2);
  EXPECT_TRUE(m_.check_invariants().ok());
  m_.free(1);
  m_.free(2);
  expect_all_free();
}

TEST_F(KvCacheManagerTest, FreeReleasesBlocksInReverseOrder) {
  Seq a{1, iota_tokens(12, 100)};
  ASSERT_EQ(run_prefill(a), (Ids{0, 1, 2}));
  m_.free(1);
  EXPECT_FALSE(m_.has_request(1));
  EXPECT_TRUE(m_.block_table(1).empty());
  // Tail first: block 2 is the next to be reused, block 0 (the head of the prefix) the last.
  EXPECT_EQ(m_.pool().free_block_ids(), (Ids{3, 4, 5, 6, 7, 2, 1, 0}));
  m_.free(1);  // a no-op
  expect_all_free();
}

TEST_F(KvCacheManagerTest, PrefixHitAfterTheFirstRequestFinishes) {
  const std::vector<int32_t> system_prompt = iota_tokens(8, 100);  // two full blocks
  Seq a{1, concat(system_prompt, {1, 2})};
  ASSERT_EQ(run_prefill(a), (Ids{0, 1, 2}));
  EXPECT_EQ(m_.stats().num_cached_blocks, 2);  // block 2 holds 2 of 4 tokens: not cached
  m_.free(1);
  EXPECT_EQ(m_.stats().num_cached_blocks, 2);

  Seq b{2, concat(system_prompt, {7, 8, 9})};
  const ComputedPrefix prefix = m_.find_cached_prefix(b.view());
  EXPECT_EQ(prefix.block_ids, (Ids{0, 1}));
  EXPECT_EQ(prefix.num_tokens, 8);
  ASSERT_EQ(m_.allocate_slots(b.view(), 3, &prefix), (Ids{3}));
  EXPECT_EQ(table(m_, 2), (Ids{0, 1, 3}));
  EXPECT_EQ(m_.num_committed_tokens(2), 8);
  // Revived from the free queue, which was [3..7, 2, 1, 0].
  EXPECT_EQ(m_.pool().free_block_ids(), (Ids{4, 5, 6, 7, 2}));
  EXPECT_EQ(m_.pool().ref_count(0), 1);

  const KvCacheStats s = m_.stats();
  EXPECT_EQ(s.num_prefix_queried_tokens, 10 + 11);
  EXPECT_EQ(s.num_prefix_hit_tokens, 8);
  EXPECT_DOUBLE_EQ(s.prefix_hit_rate(), 8.0 / 21.0);
  EXPECT_EQ(s.num_evictions, 0);
  EXPECT_TRUE(m_.check_invariants().ok());
  m_.free(2);
  expect_all_free();
}

TEST_F(KvCacheManagerTest, PrefixSharedWhileBothRequestsRun) {
  const std::vector<int32_t> shared = iota_tokens(4, 100);
  Seq a{1, concat(shared, {1, 2, 3})};
  Seq b{2, concat(shared, {4, 5})};
  ASSERT_EQ(run_prefill(a), (Ids{0, 1}));
  ASSERT_EQ(run_prefill(b), (Ids{2}));
  EXPECT_EQ(table(m_, 2), (Ids{0, 2}));
  EXPECT_EQ(m_.pool().ref_count(0), 2);
  m_.free(1);
  EXPECT_EQ(m_.pool().ref_count(0), 1);
  EXPECT_EQ(m_.pool().free_block_ids(), (Ids{3, 4, 5, 6, 7, 1}));
  m_.free(2);
  EXPECT_EQ(m_.pool().free_block_ids(), (Ids{3, 4, 5, 6, 7, 1, 2, 0}));
  expect_all_free();
}

TEST_F(KvCacheManagerTest, HitStopsAtTheFirstDifferentBlock) {
  Seq a{1, iota_tokens(13, 100)};  // three full blocks
  ASSERT_TRUE(run_prefill(a));
  std::vector<int32_t> tokens = a.tokens;
  tokens[5] = 0;  // block 1 differs, so block 2 (same tokens, other prefix) must miss too
  Seq b{2, tokens};
  const ComputedPrefix prefix = m_.find_cached_prefix(b.view());
  EXPECT_EQ(prefix.block_ids, (Ids{0}));
  EXPECT_EQ(prefix.num_tokens, 4);
}

TEST_F(KvCacheManagerTest, HitIsCappedSoAtLeastOneTokenIsComputed) {
  Seq a{1, iota_tokens(8, 100)};  // exactly two full blocks
  ASSERT_EQ(run_prefill(a), (Ids{0, 1}));
  EXPECT_EQ(m_.stats().num_cached_blocks, 2);

  // The same 8 tokens: (8 - 1) / 4 = 1 block, not 2; the last block is recomputed.
  Seq b{2, a.tokens};
  ComputedPrefix prefix = m_.find_cached_prefix(b.view());
  EXPECT_EQ(prefix.block_ids, (Ids{0}));
  EXPECT_EQ(prefix.num_tokens, 4);
  // One more token: both blocks hit, the 9th token is computed.
  Seq c{3, concat(a.tokens, {42})};
  prefix = m_.find_cached_prefix(c.view());
  EXPECT_EQ(prefix.block_ids, (Ids{0, 1}));
  EXPECT_EQ(prefix.num_tokens, 8);
  // Degenerate sequences.
  Seq one{4, {100}};
  EXPECT_EQ(m_.find_cached_prefix(one.view()).num_tokens, 0);
  Seq none{5, {}};
  EXPECT_EQ(m_.find_cached_prefix(none.view()).num_tokens, 0);

  // B recomputes block 1's content in a new block, which stays private (one block per hash).
  prefix = m_.find_cached_prefix(b.view());
  ASSERT_EQ(m_.allocate_slots(b.view(), 4, &prefix), (Ids{2}));
  b.num_computed = 8;
  m_.commit_computed(b.view());
  EXPECT_EQ(m_.pool().block_hash(2), std::nullopt);
  EXPECT_EQ(m_.stats().num_cached_blocks, 2);
  EXPECT_TRUE(m_.check_invariants().ok());
  m_.free(1);
  m_.free(2);
  expect_all_free();
}

TEST_F(KvCacheManagerTest, NoHitAcrossDifferentExtraKeys) {
  Seq a{1, iota_tokens(9, 100), "lora:a"};
  ASSERT_TRUE(run_prefill(a));
  m_.free(1);
  Seq b{2, a.tokens, "lora:b"};
  EXPECT_EQ(m_.find_cached_prefix(b.view()).num_tokens, 0);
  Seq c{3, a.tokens, ""};
  EXPECT_EQ(m_.find_cached_prefix(c.view()).num_tokens, 0);
  Seq d{4, a.tokens, "lora:a"};
  EXPECT_EQ(m_.find_cached_prefix(d.view()).num_tokens, 8);
}

TEST_F(KvCacheManagerTest, PartialAndUncomputedBlocksAreNeverCached) {
  Seq a{1, iota_tokens(6, 100)};
  ASSERT_TRUE(m_.allocate_slots(a.view(), 6));
  // Allocated but not computed yet: nothing cached.
  EXPECT_EQ(m_.stats().num_cached_blocks, 0);
  // Chunked prefill: 3 tokens computed, block 0 not full.
  a.num_computed = 3;
  m_.commit_computed(a.view());
  EXPECT_EQ(m_.stats().num_cached_blocks, 0);
  a.num_computed = 6;
  m_.commit_computed(a.view());
  EXPECT_EQ(m_.stats().num_cached_blocks, 1);
  EXPECT_TRUE(m_.pool().block_hash(0).has_value());
  EXPECT_FALSE(m_.pool().block_hash(1).has_value());
  m_.free(1);
  Seq b{2, concat(a.tokens, {1, 2, 3})};  // a's partial block 1 grown to full here
  EXPECT_EQ(m_.find_cached_prefix(b.view()).block_ids, (Ids{0}));
}

TEST_F(KvCacheManagerTest, EvictsTheLeastRecentlyFreedTailFirst) {
  // 8 blocks. A: 2 cached blocks [0, 1], freed -> queue [2..7, 1, 0].
  Seq a{1, iota_tokens(9, 100)};
  ASSERT_EQ(run_prefill(a), (Ids{0, 1, 2}));
  m_.free(1);
  EXPECT_EQ(m_.pool().free_block_ids(), (Ids{3, 4, 5, 6, 7, 2, 1, 0}));
  // B takes 6 blocks of unrelated content: 3..7 and the uncached 2.
  Seq b{2, iota_tokens(24, 5000)};
  ASSERT_EQ(m_.allocate_slots(b.view(), 24), (Ids{2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(m_.stats().num_evictions, 0);
  // C needs one block: A's tail block 1 is evicted, its head block 0 stays cached.
  Seq c{3, iota_tokens(3, 7000)};
  ASSERT_EQ(m_.allocate_slots(c.view(), 3), (Ids{1}));
  EXPECT_EQ(m_.stats().num_evictions, 1);
  EXPECT_EQ(m_.stats().num_cached_blocks, 1);
  Seq d{4, a.tokens};
  const ComputedPrefix prefix = m_.find_cached_prefix(d.view());
  EXPECT_EQ(prefix.block_ids, (Ids{0}));
  EXPECT_EQ(prefix.num_tokens, 4);
  m_.free(2);
  m_.free(3);
  expect_all_free();
}

TEST_F(KvCacheManagerTest, AllocateSlotsFailsWithoutSideEffects) {
  Seq a{1, iota_tokens(24, 100)};
  ASSERT_EQ(m_.allocate_slots(a.view(), 24), (Ids{0, 1, 2, 3, 4, 5}));
  const Ids free_before = m_.pool().free_block_ids();
  const KvCacheStats stats_before = m_.stats();

  // A new request that does not fit: no table, no counted query.
  Seq b{2, iota_tokens(9, 900)};
  EXPECT_EQ(m_.allocate_slots(b.view(), 9), std::nullopt);
  EXPECT_FALSE(m_.has_request(2));
  // A running request that cannot grow keeps its table.
  a.num_computed = 24;
  m_.commit_computed(a.view());
  EXPECT_EQ(m_.allocate_slots(a.view(), 9), std::nullopt);
  EXPECT_EQ(table(m_, 1), (Ids{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(m_.pool().free_block_ids(), free_before);
  EXPECT_EQ(m_.stats().num_prefix_queried_tokens, stats_before.num_prefix_queried_tokens);
  // Exactly the free blocks still fits.
  EXPECT_EQ(m_.allocate_slots(a.view(), 8), (Ids{6, 7}));
  EXPECT_EQ(m_.num_free_blocks(), 0);
  EXPECT_TRUE(m_.check_invariants().ok());
  m_.free(1);
  expect_all_free();
}

TEST_F(KvCacheManagerTest, RevivedPrefixBlocksCountAgainstFreeBlocks) {
  // A caches [0, 1] and frees them; C then holds every other block.
  Seq a{1, iota_tokens(8, 100)};
  ASSERT_EQ(run_prefill(a), (Ids{0, 1}));
  m_.free(1);
  Seq c{3, iota_tokens(24, 5000)};
  ASSERT_EQ(m_.allocate_slots(c.view(), 24), (Ids{2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(m_.pool().free_block_ids(), (Ids{1, 0}));

  // B hits both free cached blocks and needs one more: 3 blocks from a queue of 2.
  Seq b{2, concat(a.tokens, {1})};
  const ComputedPrefix prefix = m_.find_cached_prefix(b.view());
  ASSERT_EQ(prefix.block_ids, (Ids{0, 1}));
  EXPECT_EQ(m_.allocate_slots(b.view(), 1, &prefix), std::nullopt);
  EXPECT_FALSE(m_.has_request(2));
  EXPECT_EQ(m_.pool().free_block_ids(), (Ids{1, 0}));
  EXPECT_EQ(m_.stats().num_cached_blocks, 2);
  EXPECT_EQ(m_.stats().num_evictions, 0);
  // Once C finishes, it fits: the prefix is revived, the new block comes from the head.
  m_.free(3);
  EXPECT_EQ(m_.pool().free_block_ids(), (Ids{1, 0, 7, 6, 5, 4, 3, 2}));
  EXPECT_EQ(m_.allocate_slots(b.view(), 1, &prefix), (Ids{7}));
  EXPECT_EQ(table(m_, 2), (Ids{0, 1, 7}));
  EXPECT_EQ(m_.stats().num_evictions, 0);
  m_.free(2);
  expect_all_free();
}

TEST_F(KvCacheManagerTest, StalePrefixIsRefused) {
  Seq a{1, iota_tokens(5, 100)};
  ASSERT_EQ(run_prefill(a), (Ids{0, 1}));
  m_.free(1);  // queue [2..7, 1, 0]
  Seq b{2, a.tokens};
  const ComputedPrefix prefix = m_.find_cached_prefix(b.view());
  ASSERT_EQ(prefix.block_ids, (Ids{0}));
  // Another request takes every free block, evicting block 0 and reusing it.
  Seq c{3, iota_tokens(32, 5000)};
  ASSERT_TRUE(m_.allocate_slots(c.view(), 32));
  m_.free(3);
  EXPECT_EQ(m_.allocate_slots(b.view(), 1, &prefix), std::nullopt);
  EXPECT_FALSE(m_.has_request(2));
  // Found again: a miss, and the request is allocated from scratch.
  const ComputedPrefix fresh = m_.find_cached_prefix(b.view());
  EXPECT_EQ(fresh.num_tokens, 0);
  EXPECT_TRUE(m_.allocate_slots(b.view(), 5, &fresh));
  m_.free(2);
  expect_all_free();
}

TEST_F(KvCacheManagerTest, PreemptedRequestResumesFromItsCachedBlocks) {
  Seq a{1, iota_tokens(10, 100)};
  ASSERT_EQ(run_prefill(a), (Ids{0, 1, 2}));
  a.tokens.push_back(77);  // sampled
  m_.free(1);              // preempted: recompute later
  a.num_computed = 0;
  const ComputedPrefix prefix = m_.find_cached_prefix(a.view());
  EXPECT_EQ(prefix.block_ids, (Ids{0, 1}));
  // The uncached partial block 2 went back to the queue before the cached ones: the new
  // last block comes from the head.
  EXPECT_EQ(m_.allocate_slots(a.view(), 3, &prefix), (Ids{3}));
  EXPECT_EQ(table(m_, 1), (Ids{0, 1, 3}));
  m_.free(1);
  expect_all_free();
}

TEST_F(KvCacheManagerTest, ForkSharesFullBlocksAndCopiesThePartialTail) {
  Seq parent{1, iota_tokens(10, 100)};
  ASSERT_EQ(run_prefill(parent), (Ids{0, 1, 2}));  // block 2 holds 2 computed tokens
  const auto copies = m_.fork(1, 2);
  ASSERT_TRUE(copies);
  EXPECT_EQ(*copies, (std::vector<BlockCopy>{{2, 3}}));
  EXPECT_EQ(table(m_, 2), (Ids{0, 1, 3}));
  EXPECT_EQ(m_.num_committed_tokens(2), 10);
  EXPECT_EQ(m_.pool().ref_count(0), 2);
  EXPECT_EQ(m_.pool().ref_count(1), 2);
  EXPECT_EQ(m_.pool().ref_count(2), 1);
  EXPECT_EQ(m_.pool().ref_count(3), 1);
  EXPECT_TRUE(m_.check_invariants().ok()) << m_.check_invariants().to_string();

  // Each sequence samples its own token and grows into its own blocks.
  Seq child{2, parent.tokens};
  child.num_computed = 10;
  parent.tokens.push_back(1);
  child.tokens.push_back(2);
  EXPECT_EQ(m_.allocate_slots(parent.view(), 1), Ids{});
  EXPECT_EQ(m_.allocate_slots(child.view(), 1), Ids{});
  parent.num_computed = child.num_computed = 11;
  m_.commit_computed(parent.view());
  m_.commit_computed(child.view());
  parent.tokens.push_back(1);
  child.tokens.push_back(2);
  parent.num_computed = child.num_computed = 12;
  m_.commit_computed(parent.view());
  m_.commit_computed(child.view());
  // Both third blocks are full now, with different contents: both cached.
  EXPECT_EQ(m_.stats().num_cached_blocks, 4);
  EXPECT_NE(m_.pool().block_hash(2), m_.pool().block_hash(3));
  EXPECT_TRUE(m_.check_invariants().ok()) << m_.check_invariants().to_string();

  m_.free(1);
  EXPECT_EQ(m_.pool().ref_count(0), 1);
  EXPECT_EQ(m_.pool().free_block_ids(), (Ids{4, 5, 6, 7, 2}));
  m_.free(2);
  expect_all_free();
}

TEST_F(KvCacheManagerTest, ForkAtABlockBoundaryCopiesNothing) {
  Seq parent{1, iota_tokens(8, 100)};
  ASSERT_EQ(m_.allocate_slots(parent.view(), 9), (Ids{0, 1, 2}));  // one slot ahead
  parent.num_computed = 8;
  m_.commit_computed(parent.view());
  const auto copies = m_.fork(1, 2);
  ASSERT_TRUE(copies);
  EXPECT_TRUE(copies->empty());
  EXPECT_EQ(table(m_, 2), (Ids{0, 1}));  // the parent's uncomputed block 2 is its own
  m_.free(1);
  m_.free(2);
  expect_all_free();
}

class KvCacheManagerTinyTest : public KvCacheManagerTest {
 protected:
  KvCacheManagerTinyTest() : KvCacheManagerTest(3) {}
};

TEST_F(KvCacheManagerTinyTest, ForkFailsWithoutABlockForTheTail) {
  Seq parent{1, iota_tokens(10, 100)};
  ASSERT_EQ(run_prefill(parent), (Ids{0, 1, 2}));
  EXPECT_EQ(m_.fork(1, 2), std::nullopt);
  EXPECT_FALSE(m_.has_request(2));
  EXPECT_EQ(m_.pool().ref_count(0), 1);
  EXPECT_TRUE(m_.check_invariants().ok());
  m_.free(1);
  expect_all_free();
}

TEST(KvCacheManagerConfigTest, PrefixCachingOff) {
  KvCacheManager m(KvCacheConfig{4, 4, false});
  std::vector<int32_t> tokens = iota_tokens(9, 100);
  RequestTokens a{1, tokens, 0, ""};
  ASSERT_EQ(m.allocate_slots(a, 9), (Ids{0, 1, 2}));
  a.num_computed_tokens = 9;
  m.commit_computed(a);
  EXPECT_EQ(m.stats().num_cached_blocks, 0);
  m.free(1);
  RequestTokens b{2, tokens, 0, ""};
  EXPECT_EQ(m.find_cached_prefix(b).num_tokens, 0);
  // Forking still works from the committed token count.
  ASSERT_TRUE(m.allocate_slots(b, 9));
  b.num_computed_tokens = 9;
  m.commit_computed(b);
  EXPECT_EQ(table(m, 2), (Ids{1, 2, 3}));  // the queue's head three (3, 2, 1), ascending
  EXPECT_EQ(m.fork(2, 3), (std::vector<BlockCopy>{{3, 0}}));
  EXPECT_TRUE(m.check_invariants().ok()) << m.check_invariants().to_string();
  m.free(2);
  m.free(3);
  EXPECT_EQ(m.num_free_blocks(), 4);
  EXPECT_EQ(m.stats().prefix_hit_rate(), 0.0);
}

}  // namespace
}  // namespace bw
