// The Hopper prefill attention kernel's key pieces (cuda::prefill_kv_splits and
// cuda::prefill_split_first_tile: host code, no device needed): the plan splits the grids
// of a few waves whose tiles read many keys (a chunk late in a long prompt) and leaves
// short prompts and large batches whole, and the pieces of a query tile cover its key
// tiles in order, each starting where every row of the tile sees a key. Built where the
// CUDA backend is.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#ifdef BW_HAVE_CUDA
#include "backend/cuda/cuda_kernels.h"
#endif

namespace bw {
namespace {

#ifdef BW_HAVE_CUDA

constexpr int kH100Sms = 132;

TEST(PrefillSplitPlanTest, SplitsChunksLateInALongPrompt) {
  // 2,048 queries after 14,336 cached (a 16k prompt's last chunk under the default
  // 2,048-token steps): 12 heads make 192 CTAs of ~120 key tiles each, two waves where
  // 1.45 would do (measured 14% faster in two pieces); 512 after 1,536 likewise.
  EXPECT_EQ(cuda::prefill_kv_splits(12, 1, 2048, 16384, kH100Sms), 2);
  EXPECT_EQ(cuda::prefill_kv_splits(12, 1, 512, 2048, kH100Sms), 2);
  // 28 heads make 448 CTAs, 3.4 waves: two pieces measured 2% faster, within the margin.
  EXPECT_EQ(cuda::prefill_kv_splits(28, 1, 2048, 16384, kH100Sms), 1);
  // A few CTAs with long key walks: the whole GPU would otherwise wait on them.
  EXPECT_EQ(cuda::prefill_kv_splits(4, 1, 256, 3000, kH100Sms), 4);
}

TEST(PrefillSplitPlanTest, KeepsShortPromptsAndLargeBatchesWhole) {
  // One 2,048-token prompt: the heaviest tile reads only 16 key tiles, so the partials
  // and the combine cost more than the last wave's idle SMs.
  EXPECT_EQ(cuda::prefill_kv_splits(12, 1, 2048, 2048, kH100Sms), 1);
  EXPECT_EQ(cuda::prefill_kv_splits(28, 1, 2048, 2048, kH100Sms), 1);
  // Eight waves or more.
  EXPECT_EQ(cuda::prefill_kv_splits(28, 64, 512, 16384, kH100Sms), 1);
  EXPECT_EQ(cuda::prefill_kv_splits(12, 1, 16384, 16384, kH100Sms), 1);
}

TEST(PrefillSplitPlanTest, BadShapesRunInOnePass) {
  EXPECT_EQ(cuda::prefill_kv_splits(0, 1, 2048, 16384, kH100Sms), 1);
  EXPECT_EQ(cuda::prefill_kv_splits(12, 0, 2048, 16384, kH100Sms), 1);
  EXPECT_EQ(cuda::prefill_kv_splits(12, 1, 0, 16384, kH100Sms), 1);
  EXPECT_EQ(cuda::prefill_kv_splits(12, 1, 2048, 100, kH100Sms), 1);  // fewer keys than queries
  EXPECT_EQ(cuda::prefill_kv_splits(12, 1, 2048, 16384, 0), 1);
}

TEST(PrefillSplitPlanTest, PiecesCoverTheKeyTilesInOrder) {
  // A query tile of 128 rows sees its first row's keys plus at most 128 more, so its
  // last key tile is last_start or the one after.
  std::mt19937 rng(7);
  for (int i = 0; i < 2000; ++i) {
    const int n_tiles = 1 + static_cast<int>(rng() % 300);
    const int last_start = std::max(0, n_tiles - 1 - static_cast<int>(rng() % 2));
    const int splits = 1 + static_cast<int>(rng() % 8);
    EXPECT_EQ(cuda::prefill_split_first_tile(0, splits, n_tiles, last_start), 0);
    EXPECT_EQ(cuda::prefill_split_first_tile(splits, splits, n_tiles, last_start), n_tiles);
    int nonempty = 0;
    for (int s = 0; s < splits; ++s) {
      const int first = cuda::prefill_split_first_tile(s, splits, n_tiles, last_start);
      const int next = cuda::prefill_split_first_tile(s + 1, splits, n_tiles, last_start);
      ASSERT_LE(first, next) << n_tiles << " " << last_start << " " << splits << " " << s;
      ASSERT_LE(first, last_start) << n_tiles << " " << last_start << " " << splits << " " << s;
      nonempty += next > first ? 1 : 0;
    }
    // As many pieces as there are tiles to start them on, up to `splits`.
    EXPECT_EQ(nonempty, std::min(splits, last_start + 1)) << n_tiles << " " << last_start << " " << splits;
  }
}

#else

TEST(PrefillSplitPlanTest, NeedsTheCudaBackend) { GTEST_SKIP() << "built without the CUDA backend"; }

#endif

}  // namespace
}  // namespace bw
