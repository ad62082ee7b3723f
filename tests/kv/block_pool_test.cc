#include "kv/block_pool.h"

#include <gtest/gtest.h>

#include <vector>

namespace bw {
namespace {

using Ids = std::vector<int32_t>;

BlockHash h(int32_t n) { return hash_block(nullptr, std::vector<int32_t>{n}, ""); }

TEST(BlockPoolTest, AllocatesFromTheHeadInIdOrder) {
  BlockPool pool(4, 16);
  EXPECT_EQ(pool.num_blocks(), 4);
  EXPECT_EQ(pool.block_size(), 16);
  EXPECT_EQ(pool.free_block_ids(), (Ids{0, 1, 2, 3}));
  EXPECT_EQ(pool.allocate(2), (Ids{0, 1}));
  EXPECT_EQ(pool.allocate(1), (Ids{2}));
  EXPECT_EQ(pool.num_free_blocks(), 1);
  EXPECT_EQ(pool.num_used_blocks(), 3);
  EXPECT_EQ(pool.ref_count(0), 1);
  EXPECT_EQ(pool.allocate(0), Ids{});
  EXPECT_TRUE(pool.check_invariants().ok());
}

TEST(BlockPoolTest, ReleaseAppendsToTheTailInOrder) {
  BlockPool pool(4, 16);
  ASSERT_TRUE(pool.allocate(3));
  pool.release(Ids{1, 0});
  EXPECT_EQ(pool.free_block_ids(), (Ids{3, 1, 0}));
  pool.release(Ids{2});
  EXPECT_EQ(pool.free_block_ids(), (Ids{3, 1, 0, 2}));
  EXPECT_EQ(pool.allocate(2), (Ids{1, 3}));  // the head two, in ascending order
  EXPECT_EQ(pool.free_block_ids(), (Ids{0, 2}));
  EXPECT_TRUE(pool.check_invariants().ok());
}

// The queue picks which blocks are taken; they come back in ascending order, so a request's
// blocks freed tail first (as KvCacheManager frees them) return as one consecutive run.
TEST(BlockPoolTest, AllocateReturnsAscendingIds) {
  BlockPool pool(10, 16);
  ASSERT_EQ(pool.allocate(8), (Ids{0, 1, 2, 3, 4, 5, 6, 7}));
  pool.release(Ids{7, 6, 5, 4, 3, 2, 1, 0});
  EXPECT_EQ(pool.free_block_ids(), (Ids{8, 9, 7, 6, 5, 4, 3, 2, 1, 0}));
  ASSERT_EQ(pool.allocate(2), (Ids{8, 9}));
  EXPECT_EQ(pool.allocate(8), (Ids{0, 1, 2, 3, 4, 5, 6, 7}));
  pool.release(Ids{5, 4});
  pool.release(Ids{9, 8});
  pool.release(Ids{1, 0});
  EXPECT_EQ(pool.allocate(3), (Ids{4, 5, 9}));  // the three least recently freed
  EXPECT_EQ(pool.free_block_ids(), (Ids{8, 1, 0}));
  EXPECT_TRUE(pool.check_invariants().ok());
}

TEST(BlockPoolTest, AllocateFailsWithoutSideEffects) {
  BlockPool pool(4, 16);
  ASSERT_TRUE(pool.allocate(1));
  EXPECT_EQ(pool.allocate(4), std::nullopt);
  EXPECT_EQ(pool.free_block_ids(), (Ids{1, 2, 3}));
  EXPECT_EQ(pool.num_free_blocks(), 3);
  BlockPool empty(0, 16);
  EXPECT_EQ(empty.allocate(1), std::nullopt);
  EXPECT_EQ(empty.allocate(0), Ids{});
  EXPECT_TRUE(empty.check_invariants().ok());
}

TEST(BlockPoolTest, SharedBlocksReturnWhenTheLastReferenceGoes) {
  BlockPool pool(2, 16);
  ASSERT_TRUE(pool.allocate(1));
  pool.touch(Ids{0});
  EXPECT_EQ(pool.ref_count(0), 2);
  pool.release(Ids{0});
  EXPECT_EQ(pool.ref_count(0), 1);
  EXPECT_EQ(pool.free_block_ids(), (Ids{1}));
  pool.release(Ids{0});
  EXPECT_EQ(pool.free_block_ids(), (Ids{1, 0}));
  EXPECT_TRUE(pool.check_invariants().ok());
}

TEST(BlockPoolTest, CachedFreeBlockIsRevivedFromTheMiddleOfTheQueue) {
  BlockPool pool(4, 16);
  ASSERT_EQ(pool.allocate(3), (Ids{0, 1, 2}));
  EXPECT_TRUE(pool.cache_block(1, h(1)));
  EXPECT_EQ(pool.num_cached_blocks(), 1);
  pool.release(Ids{2, 1, 0});
  EXPECT_EQ(pool.free_block_ids(), (Ids{3, 2, 1, 0}));
  EXPECT_EQ(pool.num_cached_blocks(), 1);  // free, still cached
  ASSERT_EQ(pool.lookup(h(1)), 1);

  pool.touch(Ids{1});  // a prefix hit
  EXPECT_EQ(pool.ref_count(1), 1);
  EXPECT_EQ(pool.free_block_ids(), (Ids{3, 2, 0}));
  EXPECT_EQ(pool.num_free_blocks(), 3);
  EXPECT_EQ(pool.block_hash(1), h(1));
  EXPECT_EQ(pool.num_evictions(), 0);
  EXPECT_TRUE(pool.check_invariants().ok());

  // Released again, it becomes the most recently used free block.
  pool.release(Ids{1});
  EXPECT_EQ(pool.free_block_ids(), (Ids{3, 2, 0, 1}));
  EXPECT_TRUE(pool.check_invariants().ok());
}

TEST(BlockPoolTest, EvictsTheLeastRecentlyFreedCachedBlock) {
  BlockPool pool(3, 16);
  ASSERT_EQ(pool.allocate(3), (Ids{0, 1, 2}));
  for (int32_t id : {0, 1, 2})
    ASSERT_TRUE(pool.cache_block(id, h(id)));
  pool.release(Ids{2, 0, 1});
  EXPECT_EQ(pool.num_cached_blocks(), 3);

  EXPECT_EQ(pool.allocate(1), (Ids{2}));
  EXPECT_EQ(pool.num_evictions(), 1);
  EXPECT_EQ(pool.lookup(h(2)), std::nullopt);
  EXPECT_EQ(pool.block_hash(2), std::nullopt);
  EXPECT_EQ(pool.lookup(h(0)), 0);
  EXPECT_EQ(pool.lookup(h(1)), 1);
  EXPECT_EQ(pool.num_cached_blocks(), 2);

  EXPECT_EQ(pool.allocate(1), (Ids{0}));
  EXPECT_EQ(pool.num_evictions(), 2);
  EXPECT_EQ(pool.lookup(h(1)), 1);
  EXPECT_TRUE(pool.check_invariants().ok());
}

TEST(BlockPoolTest, OneBlockPerHash) {
  BlockPool pool(3, 16);
  ASSERT_TRUE(pool.allocate(3));
  EXPECT_TRUE(pool.cache_block(0, h(7)));
  EXPECT_TRUE(pool.cache_block(0, h(7)));   // again: already cached
  EXPECT_FALSE(pool.cache_block(1, h(7)));  // the same content in another block stays private
  EXPECT_EQ(pool.block_hash(1), std::nullopt);
  EXPECT_EQ(pool.lookup(h(7)), 0);
  EXPECT_EQ(pool.num_cached_blocks(), 1);
  // Once the first copy is evicted, the hash is free to take again.
  pool.release(Ids{0});
  ASSERT_EQ(pool.allocate(1), (Ids{0}));
  EXPECT_EQ(pool.lookup(h(7)), std::nullopt);
  EXPECT_TRUE(pool.cache_block(1, h(7)));
  EXPECT_EQ(pool.lookup(h(7)), 1);
  EXPECT_TRUE(pool.check_invariants().ok());
}

TEST(BlockPoolTest, UncachedFreeBlocksAreNotEvictions) {
  BlockPool pool(2, 16);
  ASSERT_TRUE(pool.allocate(2));
  pool.release(Ids{0, 1});
  ASSERT_TRUE(pool.allocate(2));
  EXPECT_EQ(pool.num_evictions(), 0);
}

}  // namespace
}  // namespace bw
