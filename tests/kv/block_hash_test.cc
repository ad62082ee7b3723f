#include "kv/block_hash.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <unordered_set>
#include <vector>

namespace bw {
namespace {

std::vector<int32_t> iota_tokens(int n, int32_t start = 0) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

TEST(BlockHashTest, DeterministicAndSixteenBytes) {
  const std::vector<int32_t> block = {1, 2, 3, 4};
  const BlockHash a = hash_block(nullptr, block, "");
  const BlockHash b = hash_block(nullptr, block, "");
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.to_hex().size(), 32u);
  EXPECT_EQ(std::hash<BlockHash>{}(a), std::hash<BlockHash>{}(b));
  EXPECT_NE(a, hash_block(nullptr, std::vector<int32_t>{1, 2, 3, 5}, ""));
  EXPECT_NE(a, hash_block(nullptr, std::vector<int32_t>{2, 1, 3, 4}, ""));
}

TEST(BlockHashTest, ChainedOverEveryEarlierToken) {
  // The same block contents after different prefixes hash differently.
  const std::vector<int32_t> shared = {7, 7, 7, 7};
  const BlockHash p1 = hash_block(nullptr, std::vector<int32_t>{1, 2, 3, 4}, "");
  const BlockHash p2 = hash_block(nullptr, std::vector<int32_t>{1, 2, 3, 5}, "");
  EXPECT_NE(hash_block(&p1, shared, ""), hash_block(&p2, shared, ""));
  // A first block and a chained block with the same tokens differ, even after an all-zero parent.
  const BlockHash zero{};
  EXPECT_NE(hash_block(nullptr, shared, ""), hash_block(&zero, shared, ""));
  EXPECT_NE(hash_block(&p1, shared, ""), hash_block(nullptr, shared, ""));
}

TEST(BlockHashTest, ExtraKeySeparatesPrefixes) {
  const std::vector<int32_t> block = {1, 2, 3, 4};
  const BlockHash base = hash_block(nullptr, block, "");
  const BlockHash lora_a = hash_block(nullptr, block, "lora:a");
  const BlockHash lora_b = hash_block(nullptr, block, "lora:b");
  EXPECT_NE(base, lora_a);
  EXPECT_NE(lora_a, lora_b);
  // The encoding is length-prefixed: token bytes cannot slide into the extra key.
  const std::vector<int32_t> three = {1, 2, 3};
  const char four_le[4] = {4, 0, 0, 0};
  EXPECT_NE(base, hash_block(nullptr, three, std::string_view(four_le, 4)));
}

TEST(BlockHashTest, NegativeAndLargeTokenIdsAreDistinct) {
  const BlockHash a = hash_block(nullptr, std::vector<int32_t>{-1}, "");
  const BlockHash b = hash_block(nullptr, std::vector<int32_t>{INT32_MAX}, "");
  const BlockHash c = hash_block(nullptr, std::vector<int32_t>{INT32_MIN}, "");
  EXPECT_NE(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(b, c);
}

TEST(BlockHashTest, IncrementalMatchesOneShotAndSkipsPartialBlocks) {
  const int block_size = 4;
  const std::vector<int32_t> tokens = iota_tokens(23, 100);  // 5 full blocks + 3 tokens

  std::vector<BlockHash> one_shot;
  EXPECT_EQ(extend_block_hashes(tokens, block_size, "k", &one_shot), 5);
  ASSERT_EQ(one_shot.size(), 5u);
  EXPECT_EQ(one_shot[0], hash_block(nullptr, std::span(tokens).first(4), "k"));
  EXPECT_EQ(one_shot[1], hash_block(&one_shot[0], std::span(tokens).subspan(4, 4), "k"));

  // The sequence grows one token at a time; only newly full blocks are hashed.
  std::vector<BlockHash> grown;
  for (size_t n = 0; n <= tokens.size(); ++n) {
    const int added = extend_block_hashes(std::span(tokens).first(n), block_size, "k", &grown);
    EXPECT_EQ(added, n > 0 && n % block_size == 0 ? 1 : 0) << n;
    EXPECT_EQ(grown.size(), n / block_size) << n;
  }
  EXPECT_EQ(grown, one_shot);
  // Nothing new: nothing appended.
  EXPECT_EQ(extend_block_hashes(tokens, block_size, "k", &grown), 0);
}

TEST(BlockHashTest, ManyBlocksNoCollisions) {
  // Every block of many similar sequences gets its own hash (a sanity check of the chain).
  std::unordered_set<BlockHash> seen;
  size_t total = 0;
  for (int32_t first = 0; first < 64; ++first) {
    std::vector<int32_t> tokens(64, 5);
    tokens[0] = first;
    std::vector<BlockHash> hashes;
    extend_block_hashes(tokens, 4, "", &hashes);
    total += hashes.size();
    seen.insert(hashes.begin(), hashes.end());
  }
  EXPECT_EQ(seen.size(), total);
}

}  // namespace
}  // namespace bw
