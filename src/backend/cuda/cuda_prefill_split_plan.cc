// How many pieces the Hopper prefill attention kernel cuts each query tile's keys into
// (prefill_kv_splits in cuda_kernels.h). Host code only.
//
// The kernel runs one CTA per SM, so a grid of a few waves loses the idle SMs of its last
// one: a chunk of 2,048 queries of the 1.5B shape (12 heads x 16 query tiles = 192 CTAs on
// 132 SMs) takes two waves of equal tiles where 1.45 would do, a third of its time when the
// chunk comes late in a long prompt and every tile reads thousands of keys. Splitting each
// tile's keys evens the waves out at the price of an f32 partial result per piece and a
// combine kernel; this plan weighs the two by simulating how the SMs take the pieces.
// Measured on an H200 (docs/PERF.md): that chunk's kernel 396 us in two pieces against
// 461 whole, the 28-head shape's 910 against 927 (a last wave that shares L2's bandwidth
// among fewer SMs runs faster than the simulation assumes), so a split must win by
// kMargin.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <queue>
#include <vector>

#include "backend/cuda/cuda_kernels.h"

namespace bw::cuda {

namespace {

constexpr int kRows = 128;  // the kernel's query rows per CTA and keys per tile
constexpr int kMaxSplits = 4;
// Cost of splitting, in units of one 128 x 128 tile step (~1.9 us on an H200): a piece's
// 128 rows of f32 partials written and read back by the combine kernel (64 KiB each way,
// ~0.025 units per piece at ~3 TB/s), plus the combine kernel's launch and tail.
constexpr double kPieceCost = 0.025;
constexpr double kCombineCost = 2.0;
// What a CTA spends beside its steps (Q load, the ring's fill and drain, the epilogue).
constexpr int kPieceFill = 2;
constexpr double kMargin = 0.9;

// Tile steps of query tile mt (m0 = mt * kRows) of a sequence with `ctx` cached keys and
// q_len queries, and the index of the last step every row of the tile sees a key of.
struct TileSteps {
  int steps;
  int last_start;
};
TileSteps tile_steps(int mt, int q_len, int ctx) {
  const int m0 = mt * kRows;
  const int n_keys = ctx + std::min(m0 + kRows, q_len);
  return {(n_keys + kRows - 1) / kRows, (ctx + m0) / kRows};
}

// The longest time any SM works when the pieces go, heaviest first, to whichever SM is
// free first (how the hardware hands out a grid ordered heaviest first).
double makespan(std::vector<int>& pieces, int num_sms) {
  std::sort(pieces.begin(), pieces.end(), std::greater<>());
  std::priority_queue<int64_t, std::vector<int64_t>, std::greater<>> free_at;
  for (int i = 0; i < num_sms; ++i)
    free_at.push(0);
  int64_t end = 0;
  for (int steps : pieces) {
    const int64_t start = free_at.top();
    free_at.pop();
    free_at.push(start + steps);
    end = std::max(end, start + steps);
  }
  return static_cast<double>(end);
}

}  // namespace

int prefill_kv_splits(int num_heads, int num_seqs, int max_query_len, int max_kv_len, int num_sms) {
  if (num_heads <= 0 || num_seqs <= 0 || num_sms <= 0 || max_query_len <= 0 || max_kv_len < max_query_len) return 1;
  const int q_tiles = (max_query_len + kRows - 1) / kRows;
  const int64_t ctas = static_cast<int64_t>(num_heads) * num_seqs * q_tiles;
  // Past eight waves the last one's idle SMs cost at most an eighth.
  if (ctas >= 8 * static_cast<int64_t>(num_sms)) return 1;
  // Every sequence taken as the longest: the plan sees only the batch's maxima.
  const int ctx = max_kv_len - max_query_len;
  int best = 1;
  double best_cost = 0.0;
  std::vector<int> pieces;
  for (int splits = 1; splits <= kMaxSplits; ++splits) {
    pieces.clear();
    for (int mt = 0; mt < q_tiles; ++mt) {
      const TileSteps t = tile_steps(mt, max_query_len, ctx);
      for (int s = 0; s < splits; ++s) {
        const int n = prefill_split_first_tile(s + 1, splits, t.steps, t.last_start) -
                      prefill_split_first_tile(s, splits, t.steps, t.last_start);
        for (int64_t copies = 0; copies < static_cast<int64_t>(num_heads) * num_seqs; ++copies)
          pieces.push_back(n + kPieceFill);
      }
    }
    const auto count = static_cast<double>(pieces.size());
    const double cost = makespan(pieces, num_sms) + (splits > 1 ? kCombineCost + kPieceCost * count : 0.0);
    if (splits == 1 || cost < best_cost * (best == 1 ? kMargin : 1.0)) {
      best = splits;
      best_cost = cost;
    }
  }
  return best;
}

}  // namespace bw::cuda
