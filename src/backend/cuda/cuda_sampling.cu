// Token sampling on the device (Backend::sample): one thread block per logits row. (A call
// whose rows need no top-k, top-p or log-probabilities takes cuda_sampling_split.cu
// instead: the same tokens, many blocks a row.)
//
// The steps follow the host Sampler (runner/sampler.cc):
//   0. for a row that reports log-probabilities, from the raw row: its maximum, the
//      log-normaliser (sum of exp in float per thread, then double) and the top tokens
//      (the same radix select as top-k, then a sort of at most 20); a row that the next
//      steps modify is first copied to a work row, so the raw row stays for the sampled
//      token's log-probability at the end. Then the logit bias (distinct tokens, one writer
//      each);
//   1. penalties on the row's distinct history tokens (repetition: divide positive /
//      multiply negative logits; presence + frequency * count for tokens in the output);
//   2. one pass for the maximum and the argmax (lowest id on ties); greedy rows stop here,
//      and so does any row whose maximum is not finite (as the host does);
//   3. top-k: the k-th largest logit, ties at the boundary kept by lowest id: the logits
//      within a gap of the maximum that holds k of them, ranked in shared memory when at
//      most 1,024, else by radix select (8 bits a pass, 256-bin histograms of counts over
//      order-preserving keys);
//   4. one pass turning the row into probabilities relative to the top token's,
//      exp((x - max) / temperature), zero for tokens dropped by min-p or top-k; their total
//      in 2^-44 fixed point (integer sums: the same total in any order);
//   5. top-p: the probability threshold by the same radix select, with histograms of mass
//      instead of counts: the smallest set of best tokens whose mass reaches top_p * total,
//      ties at the boundary kept by lowest id;
//   6. one draw by inverse CDF: u, a 53-bit uniform from Philox4x32-10 keyed by the row's
//      seed and counted by its step, picks the kept token where the cumulative fixed-point
//      mass (in id order) passes u * the kept total. That is an exact draw from the
//      renormalised kept distribution (to 2^-44 of the top token's probability), and it
//      depends only on the row, its seed and its step (not on other rows or scheduling):
//      every sum is an integer and every other reduction a max with a total order.
// Histograms use warp-aggregated shared-memory atomics (lanes with the same bin add once).
//
// Cost (H200, V = 151,936, one sample() call with upload, kernel and read-back): greedy
// 22 / 42 / 77 us for 1 / 64 / 256 rows with the split argmax (38 / 62 / 80 in this
// kernel); temperature only ~125 / 155 / 270 us; top-p 0.9
// ~260-500 / 310-670 / 550-870 us (peaked vs flat N(0, 2) rows). One block per row makes
// a single row latency-bound: the radix passes (4 each for top-k and top-p) dominate.
// (Which is why calls that allow it take cuda_sampling_split.cu: temperature alone 33 /
// 66 / 157 us there.)
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/cuda_sampling_common.cuh"

namespace bw::cuda {

namespace {

using sampling::beats;
using sampling::draw_target;
using sampling::kMaxCandidates;
using sampling::kNumFloors;
using sampling::kNumGaps;
using sampling::mass_floor;
using sampling::order_key;
using sampling::relative_prob;
using sampling::to_fixed;
using sampling::top_k_gap;
using sampling::warp_best;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
// Row loops load this many values per thread before using them: one block reads the whole
// row, so it needs many loads in flight.
constexpr int kUnroll = 8;
constexpr int64_t kTile = int64_t{kThreads} * kUnroll;
constexpr int kBins = 256;
constexpr int kNoBin = kBins;   // a lane with nothing to add
constexpr int kSplitBits = 22;  // 44-bit fixed point = two 22-bit halves

// Rows that start on 16 bytes and hold a multiple of 4 logits (every vocabulary of the
// supported models) are read as float4: four times the bytes in flight per load, which is
// what bounds a pass of one block over a row.
constexpr int kUnroll4 = 4;
constexpr int64_t kTile4 = int64_t{kThreads} * kUnroll4;  // float4s per tile
__device__ __forceinline__ bool vector_row(const float* x, int64_t vocab) {
  return (reinterpret_cast<uintptr_t>(x) & 15u) == 0 && (vocab & 3) == 0;
}

// Calls fn(i, x[i]) for each id i of this thread's share of [0, vocab), in increasing order.
template <typename Fn>
__device__ __forceinline__ void for_each(const float* x, int64_t vocab, Fn&& fn) {
  if (vector_row(x, vocab)) {
    const auto* x4 = reinterpret_cast<const float4*>(x);
    const int64_t n4 = vocab / 4;
    for (int64_t base = threadIdx.x; base < n4; base += kTile4) {
      float4 v[kUnroll4];
#pragma unroll
      for (int u = 0; u < kUnroll4; ++u) {
        const int64_t j = base + int64_t{u} * kThreads;
        v[u] = j < n4 ? x4[j] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int u = 0; u < kUnroll4; ++u) {
        const int64_t j = base + int64_t{u} * kThreads;
        if (j < n4) {
          fn(4 * j, v[u].x);
          fn(4 * j + 1, v[u].y);
          fn(4 * j + 2, v[u].z);
          fn(4 * j + 3, v[u].w);
        }
      }
    }
    return;
  }
  for (int64_t base = threadIdx.x; base < vocab; base += kTile) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + int64_t{u} * kThreads;
      v[u] = i < vocab ? x[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + int64_t{u} * kThreads;
      if (i < vocab) fn(i, v[u]);
    }
  }
}

// As for_each, but every thread makes the same calls fn(i, v, valid), with valid false for
// ids past the row: for bodies with warp-wide intrinsics.
template <typename Fn>
__device__ __forceinline__ void for_each_uniform(const float* x, int64_t vocab, Fn&& fn) {
  if (vector_row(x, vocab)) {
    const auto* x4 = reinterpret_cast<const float4*>(x);
    const int64_t n4 = vocab / 4;
    for (int64_t tile = 0; tile < n4; tile += kTile4) {
      float4 v[kUnroll4];
#pragma unroll
      for (int u = 0; u < kUnroll4; ++u) {
        const int64_t j = tile + int64_t{u} * kThreads + threadIdx.x;
        v[u] = j < n4 ? x4[j] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int u = 0; u < kUnroll4; ++u) {
        const int64_t j = tile + int64_t{u} * kThreads + threadIdx.x;
        const bool valid = j < n4;
        fn(4 * j, v[u].x, valid);
        fn(4 * j + 1, v[u].y, valid);
        fn(4 * j + 2, v[u].z, valid);
        fn(4 * j + 3, v[u].w, valid);
      }
    }
    return;
  }
  for (int64_t tile = 0; tile < vocab; tile += kTile) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = tile + int64_t{u} * kThreads + threadIdx.x;
      v[u] = i < vocab ? x[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = tile + int64_t{u} * kThreads + threadIdx.x;
      fn(i, v[u], i < vocab);
    }
  }
}

// kth_largest ranks up to this many candidates in shared memory (beyond: radix select).
static_assert(kMaxCandidates == 2 * kThreads, "kth_largest's rank loops take two candidates a thread");

struct Shared {
  uint64_t segment_mass[kThreads];
  uint64_t mass[kBins];
  uint32_t count[kBins];
  float red_value[kWarps];
  int64_t red_id[kWarps];
  uint64_t red_sum[kWarps];
  uint32_t scan[kWarps];
  // Results broadcast to the block.
  float best_value;
  int64_t best_id;
  uint64_t total;
  int bin;
  uint64_t above;  // count or mass of the bins above `bin`
  int64_t id_cut;
  // kth_largest's candidates (the logits within a gap of the maximum), when they fit.
  int32_t candidate_ids[kMaxCandidates];
  float candidate_values[kMaxCandidates];
  uint64_t candidate_mass[kMaxCandidates];  // a draw among them: fixed-point mass, 0 if not kept
  int num_candidates;
  int64_t chosen;
  // The best few of them by rank (for a log-probabilities record), and the k-th.
  int32_t top_ids[kMaxTopLogprobs];
  float top_values[kMaxTopLogprobs];
  int top_count;
  int32_t kth_id;
  float kth_value;
};

// The block's best (value, id); every thread gets it.
__device__ void block_best(Shared& sh, float* value, int64_t* id) {
  float v = *value;
  int64_t i = *id;
  warp_best(v, i);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) {
    sh.red_value[warp] = v;
    sh.red_id[warp] = i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float bv = sh.red_value[0];
    int64_t bi = sh.red_id[0];
    for (int w = 1; w < kWarps; ++w) {
      if (beats(sh.red_value[w], sh.red_id[w], bv, bi)) {
        bv = sh.red_value[w];
        bi = sh.red_id[w];
      }
    }
    sh.best_value = bv;
    sh.best_id = bi;
  }
  __syncthreads();
  *value = sh.best_value;
  *id = sh.best_id;
  __syncthreads();
}

// The block's total of v (every thread gets it): a warp shuffle, then one thread over the
// warps' partials (kept as their 64 bits in shared memory).
template <typename T>
__device__ T block_reduce_sum(Shared& sh, T v) {
  static_assert(sizeof(T) == sizeof(uint64_t), "partials are stored as 64-bit words");
  const auto to_bits = [](T x) {
    uint64_t b;
    memcpy(&b, &x, sizeof(b));
    return b;
  };
  const auto from_bits = [](uint64_t b) {
    T x;
    memcpy(&x, &b, sizeof(x));
    return x;
  };
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) sh.red_sum[threadIdx.x / 32] = to_bits(v);
  __syncthreads();
  if (threadIdx.x == 0) {
    T total = 0;
    for (int w = 0; w < kWarps; ++w)
      total += from_bits(sh.red_sum[w]);
    sh.total = to_bits(total);
  }
  __syncthreads();
  const T total = from_bits(sh.total);
  __syncthreads();
  return total;
}

__device__ uint64_t block_sum(Shared& sh, uint64_t v) { return block_reduce_sum<uint64_t>(sh, v); }
__device__ double block_sum_double(Shared& sh, double v) { return block_reduce_sum<double>(sh, v); }

// Adds `amount` (a count, or 44-bit fixed-point mass) to histogram bin `bin` (kNoBin: none),
// once per group of lanes with the same bin. Called by all 32 lanes of each warp.
template <bool kMass>
__device__ __forceinline__ void histogram_add(Shared& sh, int bin, uint64_t amount) {
  const unsigned group = __match_any_sync(0xffffffffu, bin);
  const int leader = __ffs(group) - 1;
  if constexpr (kMass) {
    const uint32_t lo = __reduce_add_sync(group, static_cast<uint32_t>(amount & ((1u << kSplitBits) - 1)));
    const uint32_t hi = __reduce_add_sync(group, static_cast<uint32_t>(amount >> kSplitBits));
    if (bin != kNoBin && static_cast<int>(threadIdx.x % 32) == leader) {
      atomicAdd(reinterpret_cast<unsigned long long*>(&sh.mass[bin]),
                static_cast<unsigned long long>((static_cast<uint64_t>(hi) << kSplitBits) + lo));
    }
  } else {
    if (bin != kNoBin && static_cast<int>(threadIdx.x % 32) == leader) atomicAdd(&sh.count[bin], __popc(group));
  }
}

// After a histogram: the highest bin b where the amount in bins above b plus bin b
// reaches `target`, into sh.bin and sh.above (kBins - 1 down to 0; -1 when none does).
template <bool kMass>
__device__ void find_bin(Shared& sh, double target) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    // Lane l holds bins [8 * (31 - l), 8 * (31 - l) + 8): lane 0 the highest.
    const int first = 8 * (31 - lane);
    uint64_t local = 0;
    for (int j = 0; j < 8; ++j)
      local += kMass ? sh.mass[first + j] : sh.count[first + j];
    // Inclusive prefix over lanes (highest bins first).
    uint64_t inclusive = local;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint64_t other = __shfl_up_sync(0xffffffffu, inclusive, o);
      if (lane >= o) inclusive += other;
    }
    const uint64_t exclusive = inclusive - local;
    const bool reaches = static_cast<double>(inclusive) >= target;
    const unsigned reached = __ballot_sync(0xffffffffu, reaches);
    if (reached == 0) {
      if (lane == 0) {
        sh.bin = -1;
        sh.above = 0;
      }
    } else if (lane == __ffs(reached) - 1) {
      uint64_t above = exclusive;
      int bin = first;
      for (int j = 7; j >= 0; --j) {
        const uint64_t amount = kMass ? sh.mass[first + j] : sh.count[first + j];
        if (static_cast<double>(above + amount) >= target) {
          bin = first + j;
          break;
        }
        above += amount;
      }
      sh.bin = bin;
      sh.above = above;
    }
  }
  __syncthreads();
}

__device__ void clear_histograms(Shared& sh) {
  for (int b = threadIdx.x; b < kBins; b += kThreads) {
    sh.mass[b] = 0;
    sh.count[b] = 0;
  }
  __syncthreads();
}

// The id just past the `need`-th token (in id order) for which pred(i) holds (vocab when
// there are fewer). One block-wide scan per tile of kThreads ids.
template <typename Pred>
__device__ int64_t id_cut(Shared& sh, int64_t vocab, int64_t need, Pred pred) {
  if (threadIdx.x == 0) sh.id_cut = vocab;
  __syncthreads();
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  int64_t seen = 0;
  for (int64_t base = 0; base < vocab; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const bool hit = i < vocab && pred(i);
    const unsigned ballot = __ballot_sync(0xffffffffu, hit);
    if (lane == 0) sh.scan[warp] = __popc(ballot);
    __syncthreads();
    int64_t before = seen;
    int64_t tile = 0;
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) before += sh.scan[w];
      tile += sh.scan[w];
    }
    before += __popc(ballot & ((1u << lane) - 1u));
    if (hit && before == need - 1) sh.id_cut = i + 1;
    seen += tile;
    __syncthreads();
    if (seen >= need) break;
  }
  const int64_t cut = sh.id_cut;
  __syncthreads();
  return cut;
}

// The values of x at or above `floor` (NaN never), with their ids, into sh.candidate_ids /
// candidate_values in no particular order; returns how many (at most kMaxCandidates: the
// callers have counted them first).
__device__ int gather_candidates(Shared& sh, const float* x, int64_t vocab, float floor) {
  if (threadIdx.x == 0) sh.num_candidates = 0;
  __syncthreads();
  for_each(x, vocab, [&](int64_t i, float v) {
    if (v >= floor) {
      const int slot = atomicAdd(&sh.num_candidates, 1);
      if (slot < kMaxCandidates) {
        sh.candidate_ids[slot] = static_cast<int32_t>(i);
        sh.candidate_values[slot] = v;
      }
    }
  });
  __syncthreads();
  const int n = min(sh.num_candidates, kMaxCandidates);
  __syncthreads();
  return n;
}

// The k-th largest finite value of x by (value descending, id ascending): its order key
// (*key_k) and, when ties at that key cross the k-th place, the id below which the tied
// ones are kept (*cut_k, else vocab). False when x has k or fewer finite values (no cut).
// max_x: the row's maximum, for the prefilter. With top_n > 0, also leaves the best
// min(k, top_n) values (best first) in sh.top_ids / sh.top_values, sh.top_count of them.
// *in_shared: the candidates are in sh.candidate_ids / candidate_values (the first
// sh.num_candidates), for a draw among the kept ones (allow_shared false: never).
//
// The tightest max - gap with at least k logits at or above it bounds the k-th largest.
// When at most kMaxCandidates logits lie there (the usual case for a language model's
// row and k <= ~100), one more pass gathers them into shared memory, where each one's
// rank is the number of candidates that beat it (a strict order: every rank is unique).
// Otherwise a radix select over order keys, 8 bits a pass, finds the k-th key, and
// id_cut the ties' cut.
__device__ bool kth_largest(Shared& sh, const float* x, int64_t vocab, int64_t k, float max_x, bool allow_shared,
                            bool* in_shared, uint32_t* key_k, int64_t* cut_k, int top_n = 0) {
  *in_shared = false;
  uint32_t near[kNumGaps] = {};
  for_each(x, vocab, [&](int64_t, float v) {
#pragma unroll
    for (int j = 0; j < kNumGaps; ++j)
      near[j] += v >= max_x - top_k_gap(j) ? 1u : 0u;
  });
  float floor_x = -INFINITY;
  uint64_t num_near = 0;
  for (int j = 0; j < kNumGaps; ++j) {
    num_near = block_sum(sh, near[j]);
    if (num_near >= static_cast<uint64_t>(k)) {
      floor_x = max_x - top_k_gap(j);
      break;
    }
  }
  *cut_k = vocab;
  if (allow_shared && floor_x > -INFINITY && num_near <= static_cast<uint64_t>(kMaxCandidates)) {
    *in_shared = true;
    const int n = gather_candidates(sh, x, vocab, floor_x);  // (the count's test: num_near of them)
    for (int c = threadIdx.x; c < n; c += kThreads) {
      const float v = sh.candidate_values[c];
      const int32_t id = sh.candidate_ids[c];
      int rank = 0;
      for (int o = 0; o < n; ++o)
        rank += beats(sh.candidate_values[o], sh.candidate_ids[o], v, id) ? 1 : 0;
      if (rank < top_n && rank < kMaxTopLogprobs) {
        sh.top_ids[rank] = id;
        sh.top_values[rank] = v;
      }
      if (rank == k - 1) {
        sh.kth_id = id;
        sh.kth_value = v;
      }
    }
    if (threadIdx.x == 0) sh.top_count = static_cast<int>(min(k, static_cast<int64_t>(top_n)));
    __syncthreads();
    *key_k = order_key(sh.kth_value);
    *cut_k = static_cast<int64_t>(sh.kth_id) + 1;
    __syncthreads();
    return true;
  }
  uint32_t prefix = 0;
  uint32_t mask = 0;
  uint64_t remaining = static_cast<uint64_t>(k);
  bool cut = true;
  for (int shift = 24; shift >= 0; shift -= 8) {
    clear_histograms(sh);
    for_each_uniform(x, vocab, [&](int64_t, float v, bool valid) {
      int bin = kNoBin;
      if (valid) {
        const uint32_t key = order_key(v);
        if (v > -INFINITY && v >= floor_x && (key & mask) == prefix) bin = static_cast<int>((key >> shift) & 0xFFu);
      }
      if (__any_sync(0xffffffffu, bin != kNoBin)) histogram_add<false>(sh, bin, 1);
    });
    __syncthreads();
    find_bin<false>(sh, static_cast<double>(remaining));
    if (sh.bin < 0) {  // k or fewer finite logits
      cut = false;
      break;
    }
    prefix |= static_cast<uint32_t>(sh.bin) << shift;
    mask |= 0xFFu << shift;
    remaining -= sh.above;
    const uint64_t tied = sh.count[sh.bin];
    __syncthreads();
    if (shift == 0 && tied > remaining) {
      const uint32_t key = prefix;
      *cut_k = id_cut(sh, vocab, static_cast<int64_t>(remaining),
                      [&](int64_t i) { return order_key(x[i]) == key && x[i] > -INFINITY; });
    }
  }
  *key_k = prefix;
  if (top_n <= 0) return cut;
  // The kept set (at most k <= kMaxTopLogprobs tokens here), gathered and sorted.
  if (threadIdx.x == 0) sh.top_count = 0;
  __syncthreads();
  const uint32_t kk = prefix;
  const int64_t ck = *cut_k;
  for_each(x, vocab, [&](int64_t i, float v) {
    if (!(v > -INFINITY)) return;
    const uint32_t key = order_key(v);
    if (cut && (key < kk || (key == kk && i >= ck))) return;
    const int slot = atomicAdd(&sh.top_count, 1);
    if (slot < kMaxTopLogprobs) {
      sh.top_ids[slot] = static_cast<int32_t>(i);
      sh.top_values[slot] = v;
    }
  });
  __syncthreads();
  if (threadIdx.x == 0) {
    const int n = min(sh.top_count, top_n);
    for (int a = 1; a < n; ++a) {  // insertion sort: value descending, then id ascending
      const int32_t id = sh.top_ids[a];
      const float v = sh.top_values[a];
      int b = a;
      for (; b > 0 && beats(v, id, sh.top_values[b - 1], sh.top_ids[b - 1]); --b) {
        sh.top_ids[b] = sh.top_ids[b - 1];
        sh.top_values[b] = sh.top_values[b - 1];
      }
      sh.top_ids[b] = id;
      sh.top_values[b] = v;
    }
    sh.top_count = n;
  }
  __syncthreads();
  return cut;
}

// The raw row's log-probabilities: log p_i = x_i - log_normaliser when the maximum is finite;
// otherwise (no distribution) 0 for the maximum's value and -inf for others, as the host
// Sampler reports them.
struct RawDistribution {
  float max = -INFINITY;
  int64_t max_id = 0;  // lowest id on ties, as step 2
  double log_normaliser = 0.0;
  __device__ float logprob(float v) const {
    if (!isfinite(max)) return v == max ? 0.0f : -INFINITY;
    return static_cast<float>(static_cast<double>(v) - log_normaliser);
  }
};

// Before anything modifies the row: its maximum and log-normaliser (one pass: each thread
// keeps a running maximum and its sum of exp relative to it), a copy into `work` when
// non-null (the row sampling modifies), and the `top` most likely tokens into top_out[0,
// top) (best first, ties by lower id; token -1 past the finite ones; none at all when the
// maximum is not finite).
__device__ RawDistribution raw_distribution(Shared& sh, const float* x, int64_t vocab, int top, bool allow_shared,
                                            LogprobEntry* top_out, float* work) {
  RawDistribution d;
  float thread_max = -INFINITY;
  float thread_sum = 0.0f;  // of exp(v - thread_max)
  int64_t max_id = 0;
  for_each(x, vocab, [&](int64_t i, float v) {
    if (work != nullptr) work[i] = v;
    if (v > thread_max) {
      thread_sum = thread_sum * expf(thread_max - v) + 1.0f;  // (0 * 0 from -inf)
      thread_max = v;
      max_id = i;
    } else if (v > -INFINITY) {
      thread_sum += expf(v - thread_max);  // (NaN counts for nothing, as on the host)
    }
  });
  d.max = thread_max;
  block_best(sh, &d.max, &max_id);
  d.max_id = max_id;
  if (!isfinite(d.max)) {
    for (int j = threadIdx.x; j < top; j += kThreads)
      top_out[j] = LogprobEntry{-1, 0.0f};
    __syncthreads();  // (work fully written before the caller modifies it)
    return d;
  }
  const double part = thread_max > -INFINITY ? static_cast<double>(thread_sum) *
                                                   exp(static_cast<double>(thread_max) - static_cast<double>(d.max))
                                             : 0.0;
  d.log_normaliser = static_cast<double>(d.max) + log(block_sum_double(sh, part));
  if (top <= 0) return d;
  uint32_t key_k = 0;
  int64_t cut_k = vocab;
  bool in_shared = false;
  kth_largest(sh, x, vocab, top, d.max, allow_shared, &in_shared, &key_k, &cut_k, top);
  for (int j = threadIdx.x; j < top; j += kThreads) {
    top_out[j] = j < sh.top_count ? LogprobEntry{sh.top_ids[j], d.logprob(sh.top_values[j])} : LogprobEntry{-1, 0.0f};
  }
  __syncthreads();
  return d;
}

// The draw of step 6 when every kept token is among the first n shared candidates (mass in
// sh.candidate_mass, 0 for the others): the token where the kept mass, summed in id order,
// passes the target. The same sums as the row walk, so the same token; -1 if none is kept.
__device__ int64_t draw_in_shared(Shared& sh, int n, const SamplingRowArgs& a) {
  uint64_t local = 0;
  for (int c = threadIdx.x; c < n; c += kThreads)
    local += sh.candidate_mass[c];
  const uint64_t kept_total = block_sum(sh, local);
  if (threadIdx.x == 0) sh.chosen = -1;
  __syncthreads();
  if (kept_total == 0) return -1;
  const uint64_t target = draw_target(a, kept_total);
  for (int c = threadIdx.x; c < n; c += kThreads) {
    const uint64_t mass = sh.candidate_mass[c];
    if (mass == 0) continue;
    const int32_t id = sh.candidate_ids[c];
    uint64_t before = 0;  // the kept mass at lower ids
    for (int o = 0; o < n; ++o)
      before += sh.candidate_ids[o] < id ? sh.candidate_mass[o] : 0;
    if (before <= target && target - before < mass) sh.chosen = id;
  }
  __syncthreads();
  const int64_t chosen = sh.chosen;
  __syncthreads();
  return chosen;
}

// Two blocks an SM (64 registers): a call of 256 rows runs in one wave on 132 SMs.
__global__ void __launch_bounds__(kThreads, 2) sample_kernel(SampleKernelArgs args) {
  pdl_wait();
  __shared__ Shared sh;
  const int64_t row = blockIdx.x;
  if (args.done != nullptr && args.done[row] != 0) return;  // (sampled by the split path)
  const int64_t vocab = args.vocab;
  const SamplingRowArgs a = args.row_args[row];
  const float* raw = args.logits + row * vocab;
  float* x = a.work_row >= 0 ? args.work + a.work_row * vocab : args.logits + row * vocab;

  // 0. Log-probabilities of the raw row (before it changes).
  LogprobEntry* record = a.logprobs >= 0 ? args.logprobs_out + row * kLogprobsRecord : nullptr;
  RawDistribution dist;
  if (record != nullptr) {
    dist = raw_distribution(sh, raw, vocab, a.logprobs, args.shared_select, record + 1, a.work_row >= 0 ? x : nullptr);
  }
  // The one thread that knows the token writes it (and its log-probability).
  const auto emit = [&](int64_t token) {
    args.out[row] = static_cast<int32_t>(token);
    if (record != nullptr) record[0] = LogprobEntry{static_cast<int32_t>(token), dist.logprob(raw[token])};
  };
  // 1. The bias and the penalties.
  if (!args.bias_applied) sampling::apply_bias_and_penalties(args, a, x, vocab);

  // 2. The maximum and its lowest id (NaN never wins; 0 when nothing beats -inf): the raw
  // row's when nothing has changed it.
  float max_logit = dist.max;
  int64_t max_id = dist.max_id;
  if (record == nullptr || sampling_modifies_row(a)) {
    max_logit = -INFINITY;
    max_id = 0;
    for_each(x, vocab, [&](int64_t i, float v) {
      if (v > max_logit) {
        max_logit = v;
        max_id = i;
      }
    });
    block_best(sh, &max_logit, &max_id);
  }
  const float inv_temperature = 1.0f / a.temperature;
  if (sampling_is_greedy(a.temperature) || !isfinite(max_logit)) {
    if (threadIdx.x == 0) emit(max_id);
    return;
  }

  // 3. Top-k over the finite logits: key_k = the k-th largest key, ties below id_cut_k.
  uint32_t key_k = 0;
  int64_t cut_k = vocab;
  bool top_k_in_shared = false;
  const bool use_top_k =
      sampling_uses_top_k(a, vocab) &&
      kth_largest(sh, x, vocab, a.top_k, max_logit, args.shared_select, &top_k_in_shared, &key_k, &cut_k);
  const float min_p = sampling::clamped_min_p(a);
  const bool use_top_p = a.top_p < 1.0f;
  if (use_top_k && top_k_in_shared && !use_top_p) {
    // Every kept token is among the candidates: draw there, without steps 4 to 6's passes.
    const int n = min(sh.num_candidates, kMaxCandidates);
    for (int c = threadIdx.x; c < n; c += kThreads) {
      const float v = sh.candidate_values[c];
      const uint32_t key = order_key(v);
      const bool kept = key > key_k || (key == key_k && sh.candidate_ids[c] < cut_k);
      sh.candidate_mass[c] = kept ? to_fixed(relative_prob(v, max_logit, inv_temperature, min_p)) : 0;
    }
    __syncthreads();
    const int64_t token = draw_in_shared(sh, n, a);
    if (threadIdx.x == 0) emit(token >= 0 ? token : max_id);
    return;
  }

  // 4. Probabilities relative to the top token's; zero for tokens min-p or top-k drop.
  uint64_t mass = 0;
  uint64_t floor_mass[kNumFloors] = {};
  uint32_t floor_count[kNumFloors] = {};
  for_each(x, vocab, [&](int64_t i, float v) {
    float p = relative_prob(v, max_logit, inv_temperature, min_p);
    if (use_top_k) {
      const uint32_t key = order_key(v);
      if (!(v > -INFINITY) || key < key_k || (key == key_k && i >= cut_k)) p = 0.0f;
    }
    x[i] = p;
    const uint64_t fixed = to_fixed(p);
    mass += fixed;
    if (use_top_p) {
#pragma unroll
      for (int j = 0; j < kNumFloors; ++j) {
        floor_mass[j] += p >= mass_floor(j) ? fixed : 0;
        floor_count[j] += p >= mass_floor(j) ? 1u : 0u;
      }
    }
  });
  __syncthreads();  // the row is read back by other threads below
  const uint64_t total = block_sum(sh, mass);

  // 5. Top-p: the threshold probability p_t (as bits); ties at p_t below cut_p.
  uint32_t bits_p = 0;
  int64_t cut_p = vocab;
  if (use_top_p) {
    const double target = fmax(static_cast<double>(a.top_p) * static_cast<double>(total), 1.0);
    // The top-p set lies at or above the largest floor whose mass reaches the target.
    float floor_p = 0.0f;
    uint64_t num_above_floor = 0;
    for (int j = 0; j < kNumFloors; ++j) {
      if (static_cast<double>(block_sum(sh, floor_mass[j])) >= target) {
        floor_p = mass_floor(j);
        num_above_floor = block_sum(sh, floor_count[j]);
        break;
      }
    }
    if (args.shared_select && floor_p > 0.0f && num_above_floor <= static_cast<uint64_t>(kMaxCandidates)) {
      // Few enough tokens above the floor: gather them, keep each one whose better tokens
      // (probability, then lower id) have not reached the target yet, and draw among those:
      // the set and the token the radix select and the row walk below would give.
      const int n = gather_candidates(sh, x, vocab, floor_p);
      for (int c = threadIdx.x; c < n; c += kThreads) {
        const float q = sh.candidate_values[c];
        const int32_t id = sh.candidate_ids[c];
        uint64_t better = 0;
        for (int o = 0; o < n; ++o)
          better += beats(sh.candidate_values[o], sh.candidate_ids[o], q, id) ? to_fixed(sh.candidate_values[o]) : 0;
        sh.candidate_mass[c] = static_cast<double>(better) < target ? to_fixed(q) : 0;
      }
      __syncthreads();
      const int64_t token = draw_in_shared(sh, n, a);
      if (threadIdx.x == 0) emit(token >= 0 ? token : max_id);
      return;
    }
    uint32_t prefix = 0;
    uint32_t mask = 0;
    double remaining = target;
    for (int shift = 24; shift >= 0; shift -= 8) {
      clear_histograms(sh);
      for_each_uniform(x, vocab, [&](int64_t, float p, bool valid) {
        int bin = kNoBin;
        uint64_t amount = 0;
        if (valid) {
          const uint32_t key = __float_as_uint(p);
          if (p > 0.0f && p >= floor_p && (key & mask) == prefix) {
            bin = static_cast<int>((key >> shift) & 0xFFu);
            amount = to_fixed(p);
          }
        }
        if (__any_sync(0xffffffffu, bin != kNoBin)) histogram_add<true>(sh, bin, amount);
      });
      __syncthreads();
      find_bin<true>(sh, remaining);
      if (sh.bin < 0) {  // rounding: keep everything from here down
        prefix = 0;
        break;
      }
      prefix |= static_cast<uint32_t>(sh.bin) << shift;
      mask |= 0xFFu << shift;
      remaining -= static_cast<double>(sh.above);
      const uint64_t tied_mass = sh.mass[sh.bin];
      __syncthreads();
      if (shift == 0) {
        // Every tied token has the same fixed-point mass.
        const uint64_t unit = to_fixed(__uint_as_float(prefix));
        if (unit > 0) {
          const uint64_t tied = tied_mass / unit;
          const double needed = ceil(remaining / static_cast<double>(unit));
          const uint64_t keep = needed < 1.0 ? 1 : static_cast<uint64_t>(needed);
          if (keep < tied) {
            const uint32_t t = prefix;
            cut_p =
                id_cut(sh, vocab, static_cast<int64_t>(keep), [&](int64_t i) { return __float_as_uint(x[i]) == t; });
          }
        }
      }
    }
    bits_p = prefix;
  }

  // 6. One draw by inverse CDF over the kept tokens in id order, in fixed point. Thread t
  // owns the ids [t * segment, (t + 1) * segment): the segments' kept mass gives the one
  // that holds the target, whose thread then walks it.
  const auto kept_mass = [&](int64_t i) -> uint64_t {
    const float p = x[i];
    const uint32_t bits = __float_as_uint(p);
    if (!(p > 0.0f) || bits < bits_p || (bits == bits_p && i >= cut_p)) return 0;
    return to_fixed(p);
  };
  const int64_t segment = (vocab + kThreads - 1) / kThreads;
  const int64_t segment_begin = min(vocab, static_cast<int64_t>(threadIdx.x) * segment);
  const int64_t segment_end = min(vocab, segment_begin + segment);
  uint64_t segment_mass = 0;
#pragma unroll 8
  for (int64_t i = segment_begin; i < segment_end; ++i)
    segment_mass += kept_mass(i);
  sh.segment_mass[threadIdx.x] = segment_mass;
  __syncthreads();
  if (threadIdx.x < 32) {
    // Lane l holds segments [l * kPerLane, (l + 1) * kPerLane).
    constexpr int kPerLane = kThreads / 32;
    const int lane = static_cast<int>(threadIdx.x);
    uint64_t local = 0;
    for (int j = 0; j < kPerLane; ++j)
      local += sh.segment_mass[lane * kPerLane + j];
    uint64_t inclusive = local;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint64_t other = __shfl_up_sync(0xffffffffu, inclusive, o);
      if (lane >= o) inclusive += other;
    }
    const uint64_t kept_total = __shfl_sync(0xffffffffu, inclusive, 31);  // > 0: the top token is kept
    const uint64_t target = draw_target(a, kept_total);
    const unsigned crossed = __ballot_sync(0xffffffffu, inclusive > target);
    if (lane == 0) sh.bin = -1;
    __syncwarp();
    if (crossed != 0 && lane == __ffs(crossed) - 1) {
      uint64_t before = inclusive - local;
      for (int j = 0; j < kPerLane; ++j) {
        const uint64_t m = sh.segment_mass[lane * kPerLane + j];
        if (before + m > target) {
          sh.bin = lane * kPerLane + j;
          sh.above = target - before;  // the target's offset within that segment
          break;
        }
        before += m;
      }
    }
  }
  __syncthreads();
  const int chosen = sh.bin;
  if (chosen < 0) {
    if (threadIdx.x == 0) emit(max_id);  // (cannot happen: kept_total > 0)
  } else if (static_cast<int>(threadIdx.x) == chosen) {
    const uint64_t target = sh.above;
    int64_t token = max_id;
    uint64_t cumulative = 0;
#pragma unroll 8
    for (int64_t i = segment_begin; i < segment_end; ++i) {
      cumulative += kept_mass(i);
      if (cumulative > target) {
        token = i;
        break;
      }
    }
    emit(token);
  }
}

}  // namespace

cudaError_t launch_sample(const SampleKernelArgs& args, cudaStream_t stream) {
  if (args.rows <= 0) return cudaSuccess;
  launch_kernel(sample_kernel, static_cast<unsigned>(args.rows), kThreads, 0, stream, args);
  return cudaGetLastError();
}

namespace {

__global__ void select_tokens_kernel(int32_t* ids, const int32_t* src, int64_t src_rows, const int32_t* rows,
                                     int64_t n) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int32_t r = rows[i];
  if (r >= 0 && r < src_rows) ids[i] = src[r];
}

}  // namespace

cudaError_t launch_select_tokens(int32_t* ids, const int32_t* src, int64_t src_rows, const int32_t* rows, int64_t n,
                                 cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  constexpr int kThreads = 128;
  launch_kernel(select_tokens_kernel, blocks_for(n, kThreads), kThreads, 0, stream, ids, src, src_rows, rows, n);
  return cudaGetLastError();
}

}  // namespace bw::cuda
