// Backend::sample with each row split over many blocks (the host picks this path or
// sample_kernel's one block a row: CudaBackend::sample_path).
//
// sample_kernel (cuda_sampling.cu) reads a row with one block, at one SM's pace: on an H200
// ~30 us a pass over a 152k-logit row, and a draw takes three passes or more (~100-180 us
// for one row, 8-14% of a 1.5B decode step). Here chunks of a row go to separate blocks:
//   0. (calls with a bias or penalties) one block a row applies them, as sample_kernel does
//      (in place: a row that reports log-probabilities may have neither);
//   1. split_max_kernel: each chunk's (maximum, lowest id) and, in calls that select, each
//      segment's maximum (kSegment: the passes of steps 3-5 skip the segments that hold no
//      logit their bounds take in);
//   2. split_stats_kernel: each warp's mass (fixed point, relative to the row's maximum) of
//      its contiguous part of the chunk, and the chunk's prefilter counts as sample_kernel
//      makes them (logits within each gap of the maximum for top-k and the top
//      log-probabilities, count and mass at or above each floor for top-p, the mass a
//      rounded-down float sum) and its sum of exp(logit - max) for the log-normaliser;
//   3. split_gather_kernel (calls that select): the tightest prefilter bounds that provably
//      hold the kept set and the top log-probabilities, as sample_kernel picks them (a
//      top-p floor may be one wider, by the rounding of its mass); when at most
//      kMaxCandidates logits pass each, the blocks append them to the row's lists. When a
//      top-k row's gap takes in more than that while the gap before it holds fewer than k
//      logits (its k-th logit far below the maximum with the bulk of the row farther
//      still, as in a trained model's confident rows), the blocks count the logits passing
//      kNumFineSteps bounds between the two instead; when a top-p row's floor takes in
//      more (a flat row: high temperature, uncertain text), they make the first histogram
//      of a radix select for its cut (below);
//   4. split_gather_refined_kernel (calls that draw from a cut set): for refined top-k
//      rows, the tightest of those bounds that holds k logits, and its candidates when they
//      fit; for radix rows, the histogram's bin that holds the cut, and its tokens when
//      they fit, else the second level's histogram of that bin;
//   5. split_radix_kernel (calls with top-p rows): the radix select's second level;
//   6. split_draw_kernel, one block a row: the top log-probabilities ranked in shared
//      memory; rows without a cut locate the draw's target among the parts' masses (in id
//      order) and walk that one part; rows with a cut rank their candidates (top-k by
//      logit, then top-p by probability) and draw among the kept ones; radix rows rank
//      their bin's tokens for the cut and walk one part. Rows whose candidates did not fit
//      (top-k beyond 1,024, a k-th logit more than 64 below the maximum, a cut among more
//      than 1,024 ties) are marked undone, and sample_kernel then samples just those.
// Every sum of the draw is an integer and every other reduction a max under a total order,
// so each token is sample_kernel's, bit for bit, and the records its own up to the
// rounding of the log-normaliser (CudaSamplingTest.SplitRowsSampleAsOneBlockARow). Greedy
// calls without a bias, penalties or records take step 1 and a per-row pick of the best
// chunk alone (launch_greedy_argmax).
#include <cuda_runtime.h>

#include <atomic>
#include <cfloat>
#include <climits>
#include <cstdint>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/cuda_sampling_common.cuh"

namespace bw::cuda {

namespace {

using sampling::beats;
using sampling::kMaxCandidates;
using sampling::kNumFloors;
using sampling::kNumGaps;
using sampling::mass_floor;
using sampling::relative_prob;
using sampling::to_fixed;
using sampling::top_k_gap;
using sampling::warp_best;

constexpr int kSplitThreads = 256;
constexpr int kSplitWarps = kSplitThreads / 32;  // the parts of a chunk
constexpr int kMaxChunks = 64;
constexpr int64_t kMinChunk = 2048;  // values a block scans at least
constexpr int kLoadsInFlight = 8;
// A segment: what a warp loads at once (kLoadsInFlight values a lane) from its part of a
// chunk. split_max_kernel records each segment's maximum, and the passes after the stats
// pass skip the segments that hold no logit their bounds take in: a sharp row (a trained
// model's, most of its mass in a few tokens) is then read in full twice, not four times.
constexpr int kSegment = 32 * kLoadsInFlight;
// The gather kernel's blocks resident on an SM for calls of top-p rows (at most 64
// registers a thread): a call's 2 x SMs blocks (split_chunking) then run in one wave, where
// 3 a SM took two.
constexpr int kGatherBlocksPerSm = 4;
constexpr int32_t kNoFit = 0x7fffffff;  // a row's candidate count when they do not fit
constexpr int kNumFineSteps = 16;       // a refined bound's steps between two gaps
// The radix select of a flat top-p row: two levels of 2^kRadixBits bins each (see
// "Radix select" below).
constexpr int kRadixBits = 10;
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int kRadixLevels = 2;
static_assert(kRadixBins % kSplitThreads == 0, "a radix pick gives each thread the same number of bins");
static_assert(kMaxChunks * kSplitWarps <= 2 * kSplitThreads, "step 4 scans two parts a thread");
static_assert(kMaxCandidates % kSplitThreads == 0, "step 4 gives each thread the same number of candidates");

std::atomic<int64_t> g_split_samples{0};

struct ChunkMax {
  float value;
  int32_t id;
};

// A chunk's prefilter counts: near[j] logits at or above max - top_k_gap(j) (for top-k and
// for the top log-probabilities); floor_count[j] of the probabilities at or above
// mass_floor(j) and floor_mass[j], their sum rounded down at every step (a lower bound:
// floor_lower_bound) (top-p); and the sum of exp(logit - max) (the log-normaliser).
struct ChunkStats {
  float floor_mass[kNumFloors];
  uint32_t floor_count[kNumFloors];
  uint32_t near[kNumGaps];
  double sum_exp;
};

// The workspace, [rows] of each (launch_split_sample lays it out).
struct SplitWorkspace {
  ChunkMax* partials;  // [kMaxChunks]: each chunk's (maximum, lowest id)
  // [segment_stride(vocab)]: each segment's maximum (NaN ignored; -inf when none), chunk c's
  // part w's segment s at (c * kSplitWarps + w) * Chunking::segments + s.
  float* segment_max;
  uint64_t* parts;       // [kMaxChunks * kSplitWarps]: each part's mass
  ChunkStats* stats;     // [kMaxChunks]
  uint32_t* fine_count;  // [kMaxChunks * kNumFineSteps]: each chunk's count within each step of a refined gap
  int32_t* num_candidates;
  int32_t* refined;  // the gap a top-k row's bound is refined below (kNumGaps: beyond the widest), or -1
  int32_t* radix;    // a flat top-p row's radix bracket (radix_code), or -1
  // [kRadixLevels * kRadixBins]: the radix select's histograms of each level: each bin's
  // count and excess (radix_excess below).
  uint32_t* radix_count;
  uint32_t* radix_excess;
  uint64_t* radix_above;  // [1]: the mass above the radix select's bracket
  // [kMaxChunks * kSplitWarps]: each part's mass above the radix select's last bin.
  uint64_t* kept_parts;
  int32_t* done;            // the row was sampled here (else sample_kernel samples it)
  int32_t* candidate_ids;   // [kMaxCandidates]
  float* candidate_logits;  // [kMaxCandidates]
  // The same for the top log-probabilities (the logits within a gap of the maximum).
  int32_t* num_top;
  int32_t* top_ids;   // [kMaxCandidates]
  float* top_logits;  // [kMaxCandidates]
};

// The chunks of a row: chunk c is [chunk * c, chunk * (c + 1)), part w of it [chunk * c +
// part * w, ...) (both cut at the row's end).
struct Chunking {
  int chunks;
  int64_t chunk;
  int64_t part;
  int segments;  // a part's
};

// A row's room for its segments' maxima, for any chunking of a row of `vocab` logits (each
// part's last segment may be short).
__host__ __device__ int64_t segment_stride(int64_t vocab) {
  return vocab / kSegment + 1 + int64_t{kMaxChunks} * (kSplitWarps + 1);
}

// The segments (the last one may be short) of len consecutive logits.
__host__ __device__ __forceinline__ int segments_in(int64_t len) {
  return static_cast<int>((len + kSegment - 1) / kSegment);
}

Chunking split_chunking(int64_t rows, int64_t vocab, int num_sms) {
  // About two blocks per SM in all, chunks of at least kMinChunk values.
  int64_t chunks = (2 * static_cast<int64_t>(num_sms) + rows - 1) / rows;
  const int64_t by_len = (vocab + kMinChunk - 1) / kMinChunk;
  if (chunks > by_len) chunks = by_len;
  if (chunks > kMaxChunks) chunks = kMaxChunks;
  if (chunks < 1) chunks = 1;
  const int64_t chunk = (vocab + chunks - 1) / chunks;
  const int64_t part = (chunk + kSplitWarps - 1) / kSplitWarps;
  return Chunking{static_cast<int>(chunks), chunk, part, segments_in(part)};
}

__device__ __forceinline__ int64_t chunk_end(const Chunking& ch, int64_t c, int64_t vocab) {
  return min(vocab, (c + 1) * ch.chunk);
}

// Warp w's part of chunk c: [begin, end) (empty past the row's end).
struct Part {
  int64_t begin, end;
};
__device__ __forceinline__ Part part_of(const Chunking& ch, int64_t c, int w, int64_t vocab) {
  const int64_t end_of_chunk = chunk_end(ch, c, vocab);
  const int64_t begin = min(end_of_chunk, c * ch.chunk + w * ch.part);
  return Part{begin, min(end_of_chunk, begin + ch.part)};
}

// Calls fn(i, x[i]) for i = first, first + kStride, ... below end, in increasing order,
// with kLoadsInFlight loads issued before their values are used (a block's or a warp's
// threads pass consecutive firsts and stride by their count).
template <int kStride, typename Fn>
__device__ __forceinline__ void for_each_strided(const float* x, int64_t first, int64_t end, Fn&& fn) {
  for (int64_t base = first; base < end; base += int64_t{kStride} * kLoadsInFlight) {
    float v[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int64_t i = base + int64_t{u} * kStride;
      v[u] = i < end ? x[i] : -INFINITY;
    }
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int64_t i = base + int64_t{u} * kStride;
      if (i < end) fn(i, v[u]);
    }
  }
}

// A bound on probabilities, for a segment's maximum: whether a logit at or below `max` may
// have a probability of at least `floor` (relative_prob of max without min-p, which only
// lowers it; expf, within 2 ulp, may put a lower logit's probability a few ulp above a
// higher one's, hence the margin).
__device__ __forceinline__ bool may_reach(float max, float max_logit, float inv_temperature, float floor) {
  return expf((max - max_logit) * inv_temperature) >= floor * (1.0f - 0x1.0p-20f);
}

// Calls fn(i, x[i]) for each i of the calling warp's part of the row whose segment's maximum
// passes keep(maximum) (the segments that fail hold no logit the caller counts), in
// increasing order within each lane. Every lane of the warp calls it.
template <typename Keep, typename Fn>
__device__ __forceinline__ void for_each_kept_segment(const float* x, const float* segment_max, Part part, Keep&& keep,
                                                      Fn&& fn) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int segments = segments_in(part.end - part.begin);
  for (int first = 0; first < segments; first += 32) {
    // (the maxima of 32 segments at once, then the kept ones one by one)
    const int s = first + lane;
    uint32_t kept = __ballot_sync(0xffffffffu, s < segments && keep(segment_max[s]));
    while (kept != 0) {
      const int64_t base = part.begin + static_cast<int64_t>(first + __ffs(kept) - 1) * kSegment;
      kept &= kept - 1;
      for_each_strided<32>(x, base + lane, min(part.end, base + kSegment), fn);
    }
  }
}

// Where the segment maxima of the calling warp's part of chunk blockIdx.x of the row start.
__device__ __forceinline__ int64_t part_segments_at(const Chunking& ch, int64_t row, int64_t vocab) {
  const int warp = static_cast<int>(threadIdx.x) / 32;
  return row * segment_stride(vocab) + (static_cast<int64_t>(blockIdx.x) * kSplitWarps + warp) * ch.segments;
}

// Each chunk's (maximum, lowest id) and, when segment_max is non-null, each segment's
// maximum. Also clears the row's counters (num_candidates: non-null when the call gathers)
// and radix select's sums (radix_count, radix_excess, radix_above: non-null when it has top-p
// rows).
// kBySegment: each warp reads its part's segments, last to first (the pass alone takes ~45
// us at 256 rows on an H200 against ~55 striding); else the block strides through its chunk,
// as calls that do not select take it: their sample() took 150-160 us at 256 rows this way
// against 165-170 last to first and 180-190 first to last (probably what each order leaves
// in L2 for the stats pass that follows; docs/PERF.md, twenty-third session).
template <bool kBySegment>
__global__ void __launch_bounds__(kSplitThreads)
    split_max_kernel(ChunkMax* partials, float* segment_max, int32_t* num_candidates, uint32_t* radix_count,
                     uint32_t* radix_excess, uint64_t* radix_above, const float* logits, int64_t vocab, Chunking ch) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row = blockIdx.y;
  const float* x = logits + row * vocab;
  if (num_candidates != nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
    num_candidates[row] = 0;
    num_candidates[gridDim.y + row] = 0;       // (num_top follows num_candidates,
    num_candidates[2 * gridDim.y + row] = -1;  // then refined,
    num_candidates[3 * gridDim.y + row] = -1;  // then radix)
  }
  if (radix_count != nullptr) {
    if (blockIdx.x == 0 && threadIdx.x == 0) radix_above[row] = 0;
    const int64_t at = row * kRadixLevels * kRadixBins;
    for (int b = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); b < kRadixLevels * kRadixBins;
         b += static_cast<int>(gridDim.x * blockDim.x)) {
      radix_count[at + b] = 0;
      radix_excess[at + b] = 0;
    }
  }
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  float best = -INFINITY;
  int64_t best_id = 0;
  if constexpr (kBySegment) {
    const Part part = part_of(ch, blockIdx.x, warp, vocab);
    float* segments = segment_max == nullptr ? nullptr : segment_max + part_segments_at(ch, row, vocab);
    for (int s = segments_in(part.end - part.begin) - 1; s >= 0; --s) {  // (uniform in the warp)
      const int64_t base = part.begin + static_cast<int64_t>(s) * kSegment;
      float v[kLoadsInFlight];
#pragma unroll
      for (int u = 0; u < kLoadsInFlight; ++u) {
        const int64_t i = base + lane + int64_t{u} * 32;
        v[u] = i < part.end ? x[i] : -INFINITY;
      }
      float m = -INFINITY;  // (fmaxf ignores NaN)
#pragma unroll
      for (int u = 0; u < kLoadsInFlight; ++u)
        m = fmaxf(m, v[u]);
      if (m > best || (m == best && m > -INFINITY)) {  // (the lane's ids fall: its first of the maximum)
        best = m;
#pragma unroll
        for (int u = kLoadsInFlight - 1; u >= 0; --u)
          if (v[u] == m) best_id = base + lane + int64_t{u} * 32;
      }
      if (segments != nullptr) {
        m = warp_max(m);
        if (lane == 0) segments[s] = m;
      }
    }
  } else {
    const int64_t begin = static_cast<int64_t>(blockIdx.x) * ch.chunk;
    for_each_strided<kSplitThreads>(x, begin + threadIdx.x, chunk_end(ch, blockIdx.x, vocab), [&](int64_t i, float v) {
      if (v > best) best = v, best_id = i;  // (ids rise)
    });
  }
  warp_best(best, best_id);
  __shared__ ChunkMax warps[kSplitWarps];
  if (lane == 0) warps[warp] = ChunkMax{best, static_cast<int32_t>(best_id)};
  __syncthreads();
  if (threadIdx.x == 0) {
    ChunkMax b = warps[0];
    for (int w = 1; w < kSplitWarps; ++w)
      if (beats(warps[w].value, warps[w].id, b.value, b.id)) b = warps[w];
    partials[row * gridDim.x + blockIdx.x] = b;
  }
}

// The row's (maximum, lowest id) from its chunks' (NaN never wins; id 0 when nothing beats
// -inf, as sample_kernel's step 2); every lane of the calling warp gets it.
__device__ __forceinline__ void row_max(const ChunkMax* partials, int chunks, float* value, int64_t* id) {
  float best = -INFINITY;
  int64_t best_id = 0;
  for (int c = static_cast<int>(threadIdx.x % 32); c < chunks; c += 32) {
    const ChunkMax p = partials[c];
    if (beats(p.value, p.id, best, best_id)) best = p.value, best_id = p.id;
  }
  warp_best(best, best_id);
  *value = best;
  *id = best_id;
}

// What steps 2-4 start from: the row's parameters, its plan and its maximum (step 1's).
struct RowStart {
  SamplingRowArgs a;
  SamplingRowPlan plan;
  float max_logit;
  int64_t max_id;
};
__device__ __forceinline__ RowStart row_start(const SampleKernelArgs& args, const SplitWorkspace& ws,
                                              const Chunking& ch, int64_t row) {
  RowStart r;
  r.a = args.row_args[row];
  r.plan = sampling_row_plan(r.a, args.vocab);
  row_max(ws.partials + row * ch.chunks, ch.chunks, &r.max_logit, &r.max_id);
  return r;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// The same for a floor's mass, rounded down at every step (so the sum stays a lower bound).
__device__ __forceinline__ float warp_sum_down(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v = __fadd_rd(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Exclusive prefix sum of v over the block's threads in thread order; *total gets the sum.
// warp_totals: kSplitWarps words of shared memory.
__device__ uint64_t block_exclusive_scan(uint64_t v, uint64_t* warp_totals, uint64_t* total) {
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  uint64_t inclusive = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint64_t other = __shfl_up_sync(0xffffffffu, inclusive, o);
    if (lane >= o) inclusive += other;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  uint64_t before = 0;
  uint64_t sum = 0;
  for (int w = 0; w < kSplitWarps; ++w) {
    before += w < warp ? warp_totals[w] : 0;
    sum += warp_totals[w];
  }
  __syncthreads();  // (warp_totals reused by the next scan)
  *total = sum;
  return before + inclusive - v;
}

// Greedy rows: one warp a row picks the best chunk.
__global__ void argmax_final_kernel(int32_t* out, const ChunkMax* partials, int chunks) {
  pdl_wait();
  float best;
  int64_t best_id;
  row_max(partials + static_cast<int64_t>(blockIdx.x) * chunks, chunks, &best, &best_id);
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<int32_t>(best_id);
}

__global__ void __launch_bounds__(kSplitThreads) split_modify_kernel(SampleKernelArgs args) {
  pdl_wait();
  const int64_t row = blockIdx.x;
  const SamplingRowArgs a = args.row_args[row];
  if (a.bias_end == a.bias_begin && !sampling_applies_penalty(a)) return;
  sampling::apply_bias_and_penalties(args, a, args.logits + row * args.vocab, args.vocab);
}

// The block's total of each thread's counts (t, and its float sum of exp) into *out.
__device__ void store_chunk_stats(ChunkStats t, float sum_exp, ChunkStats* out) {
  __shared__ ChunkStats warps[kSplitWarps];
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
#pragma unroll
  for (int j = 0; j < kNumFloors; ++j) {
    t.floor_mass[j] = warp_sum_down(t.floor_mass[j]);
    t.floor_count[j] = warp_sum(t.floor_count[j]);
  }
#pragma unroll
  for (int j = 0; j < kNumGaps; ++j)
    t.near[j] = warp_sum(t.near[j]);
  t.sum_exp = warp_sum(static_cast<double>(sum_exp));
  if (lane == 0) warps[warp] = t;
  __syncthreads();
  if (threadIdx.x == 0) {
    ChunkStats sum = warps[0];
    for (int w = 1; w < kSplitWarps; ++w) {
      for (int j = 0; j < kNumFloors; ++j) {
        sum.floor_mass[j] = __fadd_rd(sum.floor_mass[j], warps[w].floor_mass[j]);
        sum.floor_count[j] += warps[w].floor_count[j];
      }
      for (int j = 0; j < kNumGaps; ++j)
        sum.near[j] += warps[w].near[j];
      sum.sum_exp += warps[w].sum_exp;
    }
    *out = sum;
  }
}

// What split_stats_kernel counts besides the mass, for some row of the call (a kernel
// compiled for each combination: the counters take registers, and a call of plain
// temperature rows should not pay for them).
constexpr int kCountNear = 1;    // top-k or top log-probabilities
constexpr int kCountFloors = 2;  // top-p
constexpr int kSumExp = 4;       // log-probabilities
constexpr int kNumStatsKernels = 8;

template <int kCounts>
__global__ void __launch_bounds__(kSplitThreads)
    split_stats_kernel(SampleKernelArgs args, SplitWorkspace ws, Chunking ch) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row = blockIdx.y;
  const RowStart r = row_start(args, ws, ch, row);
  const SamplingRowArgs& a = r.a;
  const SamplingRowPlan& plan = r.plan;
  const float max_logit = r.max_logit;
  if ((!plan.draws && plan.top_logprobs < 0) || !isfinite(max_logit)) return;
  const int64_t vocab = args.vocab;
  const float inv_temperature = plan.draws ? 1.0f / a.temperature : 0.0f;
  const float min_p = sampling::clamped_min_p(a);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const Part part = part_of(ch, blockIdx.x, warp, vocab);
  const float* x = args.logits + row * vocab;
  uint64_t mass = 0;
  ChunkStats t = {};  // this thread's
  float sum_exp = 0.0f;
  for_each_strided<32>(x, part.begin + lane, part.end, [&](int64_t, float v) {
    if (plan.draws) {
      const float p = relative_prob(v, max_logit, inv_temperature, min_p);
      mass += to_fixed(p);
      if ((kCounts & kCountFloors) != 0 && plan.cut == SamplingCut::kTopP) {
        // (float sums rounded down: the 64-bit sums of the exact mass took half the pass's
        // instructions at 256 rows, and a bound only has to be provably wide enough)
#pragma unroll
        for (int j = 0; j < kNumFloors; ++j) {
          if (p >= mass_floor(j)) t.floor_mass[j] = __fadd_rd(t.floor_mass[j], p), ++t.floor_count[j];
        }
      }
    }
    if ((kCounts & kCountNear) != 0 && plan.near()) {
#pragma unroll
      for (int j = 0; j < kNumGaps; ++j)
        t.near[j] += v >= max_logit - top_k_gap(j) ? 1u : 0u;
    }
    if ((kCounts & kSumExp) != 0 && plan.top_logprobs >= 0 && v > -INFINITY) {
      sum_exp += expf(v - max_logit);  // (NaN: nothing)
    }
  });
  if (plan.draws) {
    mass = warp_sum(mass);
    if (lane == 0) ws.parts[(row * ch.chunks + blockIdx.x) * kSplitWarps + warp] = mass;
  }
  if constexpr (kCounts != 0) {
    if (plan.gathers() || plan.top_logprobs >= 0)
      store_chunk_stats(t, sum_exp, &ws.stats[row * ch.chunks + blockIdx.x]);
  }
}

// for_each_kept_segment over the calling warp's part of chunk blockIdx.x of the row.
template <typename Keep, typename Fn>
__device__ __forceinline__ void for_each_kept_in_part(const SampleKernelArgs& args, const SplitWorkspace& ws,
                                                      const Chunking& ch, int64_t row, Keep&& keep, Fn&& fn) {
  for_each_kept_segment(args.logits + row * args.vocab, ws.segment_max + part_segments_at(ch, row, args.vocab),
                        part_of(ch, blockIdx.x, static_cast<int>(threadIdx.x) / 32, args.vocab), keep, fn);
}

// The row's prefilter counts summed over its chunks; every lane of the calling warp gets
// them.
__device__ __forceinline__ ChunkStats sum_row_stats(const SplitWorkspace& ws, const Chunking& ch, int64_t row) {
  ChunkStats sum = {};
  for (int c = static_cast<int>(threadIdx.x % 32); c < ch.chunks; c += 32) {
    const ChunkStats& s = ws.stats[row * ch.chunks + c];
    for (int j = 0; j < kNumFloors; ++j) {
      sum.floor_mass[j] = __fadd_rd(sum.floor_mass[j], s.floor_mass[j]);
      sum.floor_count[j] += s.floor_count[j];
    }
    for (int j = 0; j < kNumGaps; ++j)
      sum.near[j] += s.near[j];
  }
  for (int j = 0; j < kNumFloors; ++j) {
    sum.floor_mass[j] = warp_sum_down(sum.floor_mass[j]);
    sum.floor_count[j] = warp_sum(sum.floor_count[j]);
  }
  for (int j = 0; j < kNumGaps; ++j)
    sum.near[j] = warp_sum(sum.near[j]);
  return sum;
}

// A lower bound of floor j's fixed-point mass (the sum of to_fixed(p) over its count
// tokens): each to_fixed truncates less than 1 below p * 2^44, and the float sum of the p
// was rounded down. The top-p prefilter takes a floor whose bound reaches the target, so
// the floor provably holds the kept set (it may be one floor wider than the exact masses
// would pick, when a floor's mass lies within the rounding of the target).
__device__ __forceinline__ double floor_lower_bound(const ChunkStats& sum, int j) {
  return __dsub_rd(__dmul_rd(static_cast<double>(sum.floor_mass[j]), 0x1.0p44),
                   static_cast<double>(sum.floor_count[j]));
}
// An upper bound of it: each rounding down lost less than 2^-23 of the sum it made, and a sum
// took fewer than 2^13 of them (a thread's values, then the reductions).
__device__ __forceinline__ double floor_upper_bound(const ChunkStats& sum, int j) {
  return __dmul_ru(static_cast<double>(sum.floor_mass[j]), 0x1.0p44 * (1.0 + 0x1.0p-9));
}

// Refined top-k bounds. The prefilter's gaps are coarse (a factor 2 apart): when the
// tightest one that holds a row's k logits takes in more than kMaxCandidates while the one
// before it holds fewer than k, split_gather_kernel counts the logits passing
// kNumFineSteps bounds between the two, and split_gather_refined_kernel takes the tightest
// of those that holds k. When even the widest gap holds fewer than k, the steps run from it
// to twice it (gap index kNumGaps). (Top-p rows whose floor takes in too many take the
// radix select below.)

// The tightest gap holding at least k logits (-1: none) and, in *count, how many it holds.
__device__ __forceinline__ int tightest_gap(const ChunkStats& sum, int64_t k, uint32_t* count) {
  int gap = -1;
  *count = 0;
#pragma unroll
  for (int j = kNumGaps - 1; j >= 0; --j) {  // (unrolled without exits, so the counts stay in registers)
    if (sum.near[j] >= static_cast<uint64_t>(k)) {
      gap = j;
      *count = sum.near[j];
    }
  }
  return gap;
}
// Step f of gap j's refinement (f = kNumFineSteps - 1 is gap j itself, or twice the widest
// gap for j = kNumGaps): exact in float, so every kernel computes the same bound.
__device__ __forceinline__ float fine_gap(int j, int f) {
  const float below = top_k_gap(j - 1);  // top_k_gap(j) = 2 * below
  return below + below * static_cast<float>(f + 1) / static_cast<float>(kNumFineSteps);
}

// Counts the logits of this block's chunk of the row that pass each step of the refined
// gap `j` into ws.fine_count (split_gather_refined_kernel sums the chunks').
__device__ void count_fine_steps(const SampleKernelArgs& args, const SplitWorkspace& ws, const Chunking& ch,
                                 int64_t row, const RowStart& r, int j) {
  float bounds[kNumFineSteps];
  uint32_t counts[kNumFineSteps];
#pragma unroll
  for (int f = 0; f < kNumFineSteps; ++f) {
    bounds[f] = r.max_logit - fine_gap(j, f);
    counts[f] = 0;
  }
  const float widest = bounds[kNumFineSteps - 1];
  for_each_kept_in_part(
      args, ws, ch, row, [&](float m) { return m >= widest; },
      [&](int64_t, float v) {
#pragma unroll
        for (int f = 0; f < kNumFineSteps; ++f)
          counts[f] += v >= bounds[f] ? 1u : 0u;
      });
  __shared__ uint32_t warp_counts[kSplitWarps][kNumFineSteps];
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
#pragma unroll
  for (int f = 0; f < kNumFineSteps; ++f) {
    const uint32_t c = warp_sum(counts[f]);
    if (lane == 0) warp_counts[warp][f] = c;
  }
  __syncthreads();
  if (threadIdx.x < kNumFineSteps) {
    uint32_t count = 0;
    for (int w = 0; w < kSplitWarps; ++w)
      count += warp_counts[w][threadIdx.x];
    ws.fine_count[(row * ch.chunks + blockIdx.x) * kNumFineSteps + threadIdx.x] = count;
  }
}

// The row's mass (fixed point), summed over its parts by one warp; every lane gets it.
__device__ __forceinline__ uint64_t row_mass(const SplitWorkspace& ws, const Chunking& ch, int64_t row) {
  uint64_t total = 0;
  for (int p = static_cast<int>(threadIdx.x % 32); p < ch.chunks * kSplitWarps; p += 32)
    total += ws.parts[row * ch.chunks * kSplitWarps + p];
  return warp_sum(total);
}
// The top-p target: top_p of the row's mass (at least 1), as sample_kernel compares it.
__device__ __forceinline__ double top_p_target(const SamplingRowArgs& a, uint64_t total) {
  return fmax(static_cast<double>(a.top_p) * static_cast<double>(total), 1.0);
}

// Appends (id, logit) to a row's candidate list (the count said they fit).
__device__ __forceinline__ void append_candidate(int32_t* count, int32_t* ids, float* logits, int64_t id, float v) {
  const int slot = atomicAdd(count, 1);
  if (slot < kMaxCandidates) {
    ids[slot] = static_cast<int32_t>(id);
    logits[slot] = v;
  }
}

// Radix select. A flat top-p row (high temperature, uncertain text) keeps thousands of
// tokens: even the bound before its tightest floor holds more than kMaxCandidates, so no
// bound gathers its kept set. What the draw needs is less: the kept set's last token in the
// order (probability, then lower id) — call it the cut — and each part's kept mass. The
// cut's probability lies in [mass_floor(j), mass_floor(j - 1)), j the tightest floor
// holding top_p of the mass (every token above that bracket is kept, none below it); the
// floors' masses are rounded-down float sums, so the bracket runs from the tightest floor
// whose lower bound reaches the target up to the floor above the tightest whose upper bound
// does (the same bracket but for a target within ~1e-4 of a floor's mass, when it spans
// two floors). A token of the bracket has a 20-bit key, its probability's bits above those
// of mass_floor(j) (4 binades, the last 5 mantissa bits dropped; one more for a bracket of
// two floors), and two levels of 1,024-bin histograms over those keys find the bin that holds
// the cut: the highest bin where the mass of the bins above it plus its own reaches the
// target. split_gather_kernel makes the first level's histogram, split_gather_refined_kernel
// picks its bin and, when that holds at most kMaxCandidates tokens, gathers them (else it
// makes the second level's histogram of that bin), split_radix_kernel does the same for the
// second level (more than kMaxCandidates tokens there share their probability to 2^-18:
// sample_kernel takes the row). The gathering pass also sums each part's exact mass above
// the bin. split_draw_kernel ranks the bin's tokens for the exact cut (each kept while the
// mass of the better tokens, all those above the bin included, is below the target, as
// sample_kernel keeps them), adds the kept ones to their parts' masses, and walks one part
// for the draw. Those sums are integers, so the kept set and the token are sample_kernel's.
//
// The pick itself only has to be right, not exact. A histogram bin holds a count and an
// excess (the sum of its tokens' offsets above the bin's lowest probability, in units of
// the float spacing there, the lowest bits dropped at the first level): two 32-bit
// shared-memory atomics a token, where an exact 64-bit mass took a compare-and-swap loop.
// The mass above the bracket is exact (the first level's pass sums it). The draw checks with
// the exact sums that the cut lies in the picked bin (the mass above it is below the target,
// the mass with it is not) and otherwise leaves the row to sample_kernel (a target within
// ~1e-6 of a bin's edge).

// The probabilities a row's radix select orders: [low, high) (high: infinite when the
// bracket reaches the top floor, whose bracket holds the top token's probability 1), and
// how many low bits of a probability's offset above low its 20-bit key drops.
struct RadixBracket {
  float low, high;
  int key_drop;
};
// A flat row's bracket, as split_gather_kernel encodes it in ws.radix: the floor below
// (whose rounded-down mass reaches the target) and the floor above, one floor apart unless
// the rounding leaves a floor in between that may hold the target too (radix_code).
constexpr int kFloorCodes = 8;  // a floor's field in the code
static_assert(kNumFloors <= kFloorCodes, "radix_code holds every floor");
__device__ __forceinline__ int radix_code(int low_floor, int high_floor) {
  return low_floor + kFloorCodes * (high_floor + 1);
}
__device__ __forceinline__ RadixBracket radix_bracket(int code) {
  const int low_floor = code % kFloorCodes, high_floor = code / kFloorCodes - 1;  // (-1: none above)
  const int floors = low_floor - high_floor;                                      // 4 binades each
  const int bits = 23 + 2 + (32 - __clz(floors - 1));  // ceil(log2(4 binades x floors x 2^23))
  return RadixBracket{mass_floor(low_floor), high_floor >= 0 ? mass_floor(high_floor) : INFINITY,
                      bits - kRadixLevels * kRadixBits};
}
// A probability's offset within the bracket (low <= p), in float spacings, at most
// 2^(key bits + key_drop) - 1 (order-preserving: a top token's p = 1 above a bracket that
// reaches it may lie at the limit, and shares the highest offset).
__device__ __forceinline__ uint32_t radix_offset(float p, const RadixBracket& b) {
  return min(__float_as_uint(p) - __float_as_uint(b.low), (1u << (kRadixLevels * kRadixBits + b.key_drop)) - 1);
}
// The keys whose bits from `shift` up equal `value` (shift kRadixLevels * kRadixBits: all of
// the bracket), with the mass of the tokens above them (those above the bracket included;
// fixed point, approximate: see above) and how many they are.
struct RadixBin {
  int shift;
  uint32_t value;
  uint64_t above;
  uint32_t count;
};
// A bin's tokens span 2^(shift + key_drop) offsets; its excess keeps their offsets' bits
// below that, less the lowest radix_excess_drop (so that a row's 2^19 tokens add up within
// 32 bits).
constexpr int kExcessBits = 13;
__device__ __forceinline__ int radix_excess_drop(const RadixBracket& b, int shift) {
  return max(0, shift + b.key_drop - kExcessBits);
}
// The approximate mass (fixed point) of a bin of `count` tokens with excess `excess`.
__device__ __forceinline__ uint64_t radix_bin_mass(const RadixBracket& b, int shift, uint32_t value, uint32_t count,
                                                   uint32_t excess) {
  if (count == 0) return 0;
  const uint32_t first = __float_as_uint(b.low) + (value << (shift + b.key_drop));  // (in one binade)
  const double lowest = __uint_as_float(first);
  const double spacing = static_cast<double>(__uint_as_float(first + 1)) - lowest;
  const double drop = static_cast<double>(1u << radix_excess_drop(b, shift));
  const double mass = static_cast<double>(count) * lowest +
                      spacing * (drop * static_cast<double>(excess) + 0.5 * (drop - 1.0) * static_cast<double>(count));
  return static_cast<uint64_t>(mass * 0x1.0p44);
}

// The bin of `level`'s histogram (of the keys in `from`) that holds the cut: the highest
// whose mass with the mass above it reaches `target`. Every thread gets it; count 0 when
// none does (rounding; the row is left to sample_kernel).
__device__ RadixBin radix_pick(const SplitWorkspace& ws, int64_t row, const RadixBracket& bracket, int level,
                               const RadixBin& from, double target) {
  constexpr int kPerThread = kRadixBins / kSplitThreads;
  __shared__ uint64_t warp_totals[kSplitWarps];
  __shared__ RadixBin picked;
  const uint32_t* counts = ws.radix_count + (row * kRadixLevels + level) * kRadixBins;
  const uint32_t* excess = ws.radix_excess + (row * kRadixLevels + level) * kRadixBins;
  const int shift = from.shift - kRadixBits;
  // Thread t holds bins [kRadixBins - kPerThread (t + 1), kRadixBins - kPerThread t): thread 0
  // the highest.
  const int first = kRadixBins - kPerThread * (static_cast<int>(threadIdx.x) + 1);
  uint64_t mass[kPerThread];
  uint64_t local = 0;
#pragma unroll
  for (int m = 0; m < kPerThread; ++m) {
    const uint32_t value = (from.value << kRadixBits) | static_cast<uint32_t>(first + m);
    mass[m] = radix_bin_mass(bracket, shift, value, counts[first + m], excess[first + m]);
    local += mass[m];
  }
  if (threadIdx.x == 0) picked = RadixBin{shift, 0, 0, 0};
  uint64_t total;
  uint64_t above = from.above + block_exclusive_scan(local, warp_totals, &total);  // (its barriers publish `picked`)
  if (static_cast<double>(above) < target && static_cast<double>(above + local) >= target) {
#pragma unroll
    for (int m = kPerThread - 1; m >= 0; --m) {
      if (static_cast<double>(above + mass[m]) >= target) {
        picked.value = (from.value << kRadixBits) | static_cast<uint32_t>(first + m);
        picked.above = above;
        picked.count = counts[first + m];
        break;
      }
      above += mass[m];
    }
  }
  __syncthreads();
  const RadixBin out = picked;
  __syncthreads();  // (the next pick rewrites it)
  return out;
}

// What a radix pass needs of the row: its probabilities and bracket.
struct RadixRow {
  float max_logit, inv_temperature, min_p;
  RadixBracket bracket;
  __device__ float prob(float v) const { return relative_prob(v, max_logit, inv_temperature, min_p); }
  // Whether a segment of maximum m may hold a token of the bracket or above it.
  __device__ bool may_reach(float m) const { return bw::cuda::may_reach(m, max_logit, inv_temperature, bracket.low); }
};
__device__ __forceinline__ RadixRow radix_row(const RowStart& r, int code) {
  return RadixRow{r.max_logit, 1.0f / r.a.temperature, sampling::clamped_min_p(r.a), radix_bracket(code)};
}

// Adds the block's chunk of the row to `level`'s histogram of the keys in bin `in` (and, at
// the first level, its mass above the bracket to ws.radix_above).
__device__ void radix_histogram(const SampleKernelArgs& args, const SplitWorkspace& ws, const Chunking& ch, int64_t row,
                                const RadixRow& rr, int level, const RadixBin& in) {
  __shared__ uint32_t counts[kRadixBins];
  __shared__ uint32_t excess[kRadixBins];
  for (int b = static_cast<int>(threadIdx.x); b < kRadixBins; b += kSplitThreads)
    counts[b] = 0, excess[b] = 0;
  __syncthreads();
  const int shift = in.shift - kRadixBits;  // this level's bins
  const uint32_t in_bin = (1u << (shift + rr.bracket.key_drop)) - 1;
  const int drop = radix_excess_drop(rr.bracket, shift);
  uint64_t above = 0;
  for_each_kept_in_part(
      args, ws, ch, row, [&](float m) { return rr.may_reach(m); },
      [&](int64_t, float v) {
        const float p = rr.prob(v);
        if (p >= rr.bracket.high && level == 0) above += to_fixed(p);
        if (p < rr.bracket.low || p >= rr.bracket.high) return;
        const uint32_t offset = radix_offset(p, rr.bracket);
        const uint32_t key = offset >> rr.bracket.key_drop;
        if ((key >> in.shift) != in.value) return;
        const int bin = static_cast<int>((key >> shift) & (kRadixBins - 1));
        atomicAdd(&counts[bin], 1u);
        atomicAdd(&excess[bin], (offset & in_bin) >> drop);
      });
  if (level == 0) {
    above = warp_sum(above);
    if (threadIdx.x % 32 == 0 && above > 0)
      atomicAdd(reinterpret_cast<unsigned long long*>(&ws.radix_above[row]), static_cast<unsigned long long>(above));
  }
  __syncthreads();
  uint32_t* row_counts = ws.radix_count + (row * kRadixLevels + level) * kRadixBins;
  uint32_t* row_excess = ws.radix_excess + (row * kRadixLevels + level) * kRadixBins;
  for (int b = static_cast<int>(threadIdx.x); b < kRadixBins; b += kSplitThreads) {
    if (counts[b] == 0) continue;
    atomicAdd(&row_counts[b], counts[b]);
    atomicAdd(&row_excess[b], excess[b]);
  }
}

// Gathers the tokens of bin `bin` from the block's chunk as the row's candidates, and each
// part's mass above the bin into ws.kept_parts (each warp walks its part).
__device__ void radix_gather(const SampleKernelArgs& args, const SplitWorkspace& ws, const Chunking& ch, int64_t row,
                             const RadixRow& rr, const RadixBin& bin) {
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  uint64_t above = 0;
  for_each_kept_in_part(
      args, ws, ch, row, [&](float m) { return rr.may_reach(m); },
      [&](int64_t i, float v) {
        const float p = rr.prob(v);
        if (p >= rr.bracket.high) {
          above += to_fixed(p);
        } else if (p >= rr.bracket.low) {
          const uint32_t key = (radix_offset(p, rr.bracket) >> rr.bracket.key_drop) >> bin.shift;
          if (key > bin.value) above += to_fixed(p);
          if (key == bin.value) {
            append_candidate(&ws.num_candidates[row], ws.candidate_ids + row * kMaxCandidates,
                             ws.candidate_logits + row * kMaxCandidates, i, v);
          }
        }
      });
  above = warp_sum(above);
  if (lane == 0) ws.kept_parts[(row * ch.chunks + blockIdx.x) * kSplitWarps + warp] = above;
}

// The radix select's step `level` (1 or 2) for a row that split_gather_kernel found flat:
// the bins of the levels before it, then this level's histogram or, when the last bin
// picked holds at most kMaxCandidates tokens, its gathering (nothing when an earlier
// step gathered them).
__device__ void radix_step(const SampleKernelArgs& args, const SplitWorkspace& ws, const Chunking& ch, int64_t row,
                           int code, int level) {
  const RowStart r = row_start(args, ws, ch, row);
  const RadixRow rr = radix_row(r, code);
  __shared__ double target;
  if (threadIdx.x < 32) {
    const uint64_t total = row_mass(ws, ch, row);
    if (threadIdx.x == 0) target = top_p_target(r.a, total);
  }
  __syncthreads();
  RadixBin bin{kRadixLevels * kRadixBits, 0, ws.radix_above[row], 0};
  for (int l = 0; l < level; ++l) {
    bin = radix_pick(ws, row, rr.bracket, l, bin, target);
    if (bin.count == 0) break;
    if (bin.count <= static_cast<uint32_t>(kMaxCandidates)) {
      if (l == level - 1) radix_gather(args, ws, ch, row, rr, bin);
      return;
    }
  }
  if (level < kRadixLevels && bin.count > 0) {
    radix_histogram(args, ws, ch, row, rr, level, bin);
  } else if (blockIdx.x == 0 && threadIdx.x == 0) {
    ws.num_candidates[row] = kNoFit;  // sample_kernel takes the row
  }
}

// kCounts as split_stats_kernel's: the top-k refinement is compiled in with kCountNear,
// the radix select with kCountFloors (a call of top-p rows alone then runs at 64 registers,
// kGatherBlocksPerSm blocks an SM, without spilling the refinement's counters).
template <int kCounts>
__global__ void __launch_bounds__(kSplitThreads, kCounts == kCountFloors ? kGatherBlocksPerSm : 1)
    split_gather_kernel(SampleKernelArgs args, SplitWorkspace ws, Chunking ch) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row = blockIdx.y;
  const RowStart r = row_start(args, ws, ch, row);
  if (!r.plan.gathers() || !isfinite(r.max_logit)) return;
  const float inv_temperature = r.plan.draws ? 1.0f / r.a.temperature : 0.0f;
  const float min_p = sampling::clamped_min_p(r.a);
  // The row's prefilter bounds, as sample_kernel picks them (every block the same): for the
  // draw's cut, and for the top log-probabilities (the tightest gap holding that many).
  __shared__ float bound, top_bound;
  __shared__ bool fits;
  __shared__ int refine;  // >= 0: the top-k bound is refined below this gap
  __shared__ int radix;   // >= 0: a flat top-p row's radix select, its bracket (radix_code)
  if (threadIdx.x < 32) {
    const int lane = static_cast<int>(threadIdx.x);
    const ChunkStats sum = sum_row_stats(ws, ch, row);
    const uint64_t total = r.plan.cut == SamplingCut::kTopP ? row_mass(ws, ch, row) : 0;
    if (lane == 0) {
      // The tightest gap with at least k logits: its bound, or false (none, or too many).
      const auto near_bound = [&](int64_t k, float* out) {
        uint32_t count;
        const int j = tightest_gap(sum, k, &count);
        if (j >= 0) *out = r.max_logit - top_k_gap(j);
        return j >= 0 && count <= static_cast<uint32_t>(kMaxCandidates);
      };
      bool ok = true;
      int gap = -1, flat = -1;
      if (r.plan.cut == SamplingCut::kTopK) {
        uint32_t count;
        const int j = tightest_gap(sum, r.a.top_k, &count);
        if (j >= 0) bound = r.max_logit - top_k_gap(j);
        ok = j >= 0 && count <= static_cast<uint32_t>(kMaxCandidates);
        // Too many: refined below the gap before it (which holds fewer than k). None holds k
        // (a confident row, its k-th logit more than the widest gap below the maximum):
        // refined beyond the widest gap, up to twice it.
        if (!ok && j != 0) ok = true, gap = j < 0 ? kNumGaps : j;
      }
      if (r.plan.cut == SamplingCut::kTopP) {
        // The highest floor whose mass reaches top_p of the row's. When it takes in too many,
        // the radix select finds the cut between it and the floor above it.
        // The floors' masses are rounded: the cut lies at or above the highest floor whose
        // lower bound reaches the target, below the highest whose upper bound does.
        const double target = top_p_target(r.a, total);
        int highest = -1, may_hold = kNumFloors;
        uint32_t count = 0;
#pragma unroll
        for (int j = kNumFloors - 1; j >= 0; --j) {
          if (floor_lower_bound(sum, j) >= target) {
            highest = j;
            count = sum.floor_count[j];
          }
          if (floor_upper_bound(sum, j) >= target) may_hold = j;
        }
        if (highest >= 0) bound = mass_floor(highest);
        ok = highest >= 0 && count <= static_cast<uint32_t>(kMaxCandidates);
        if (!ok && highest >= 0) ok = true, flat = radix_code(highest, min(may_hold, highest) - 1);
      }
      if (r.plan.top_logprobs > 0) ok = ok && near_bound(r.plan.top_logprobs, &top_bound);
      fits = ok;
      refine = gap;
      radix = ok ? flat : -1;
      if (blockIdx.x == 0) ws.refined[row] = ok ? gap : -1, ws.radix[row] = ok ? flat : -1;
    }
  }
  __syncthreads();
  if (!fits) {  // sample_kernel takes the row
    if (blockIdx.x == 0 && threadIdx.x == 0) ws.num_candidates[row] = kNoFit;
    return;
  }
  // A refined bound: the chunk's counts now, its candidates in split_gather_refined_kernel.
  if constexpr ((kCounts & kCountNear) != 0) {
    if (refine >= 0) count_fine_steps(args, ws, ch, row, r, refine);
  }
  // A radix select: the first level's histogram now.
  if constexpr ((kCounts & kCountFloors) != 0) {
    if (radix >= 0)
      radix_histogram(args, ws, ch, row, radix_row(r, radix), 0, RadixBin{kRadixLevels * kRadixBits, 0, 0, 0});
  }
  // (no pass when a refinement or the radix select takes the cut and the row reports no top
  // log-probabilities)
  const float floor = refine >= 0 || radix >= 0 ? INFINITY : bound;
  const float top_floor = r.plan.top_logprobs > 0 ? top_bound : INFINITY;
  if (floor == INFINITY && top_floor == INFINITY) return;
  const bool top_k = r.plan.cut == SamplingCut::kTopK, top_p = r.plan.cut == SamplingCut::kTopP;
  const auto may_pass = [&](float m) {
    return m >= top_floor || (top_k && m >= floor) ||
           (top_p && may_reach(m, r.max_logit, inv_temperature, floor));  // (false for an infinite floor)
  };
  for_each_kept_in_part(args, ws, ch, row, may_pass, [&](int64_t i, float v) {
    const bool pass = top_k   ? v >= floor
                      : top_p ? relative_prob(v, r.max_logit, inv_temperature, min_p) >= floor
                              : false;
    if (pass) {
      append_candidate(&ws.num_candidates[row], ws.candidate_ids + row * kMaxCandidates,
                       ws.candidate_logits + row * kMaxCandidates, i, v);
    }
    if (v >= top_floor) {
      append_candidate(&ws.num_top[row], ws.top_ids + row * kMaxCandidates, ws.top_logits + row * kMaxCandidates, i, v);
    }
  });
}

// Rows whose gap split_gather_kernel refined: the tightest step that holds at least k
// logits (the last step, the gap itself, does; beyond the widest gap none may) and, when at
// most kMaxCandidates logits pass it, those candidates. Radix rows: the select's first step.
__global__ void __launch_bounds__(kSplitThreads)
    split_gather_refined_kernel(SampleKernelArgs args, SplitWorkspace ws, Chunking ch) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row = blockIdx.y;
  if (const int code = ws.radix[row]; code >= 0) return radix_step(args, ws, ch, row, code, 1);
  const int j = ws.refined[row];
  if (j < 0) return;
  const RowStart r = row_start(args, ws, ch, row);
  __shared__ float bound;
  __shared__ bool fits;
  if (threadIdx.x < 32) {
    const int lane = static_cast<int>(threadIdx.x);
    uint32_t counts[kNumFineSteps] = {};
    for (int c = lane; c < ch.chunks; c += 32) {
#pragma unroll
      for (int f = 0; f < kNumFineSteps; ++f)
        counts[f] += ws.fine_count[(row * ch.chunks + c) * kNumFineSteps + f];
    }
    int step = kNumFineSteps - 1;
    uint32_t count = 0;
#pragma unroll
    for (int f = kNumFineSteps - 1; f >= 0; --f) {  // (unrolled, so the counts stay in registers)
      counts[f] = warp_sum(counts[f]);
      if (f == kNumFineSteps - 1 || counts[f] >= static_cast<uint32_t>(r.a.top_k)) {
        step = f;
        count = counts[f];
      }
    }
    if (lane == 0) {
      bound = r.max_logit - fine_gap(j, step);
      fits = count <= static_cast<uint32_t>(kMaxCandidates) && count >= static_cast<uint32_t>(r.a.top_k);
    }
  }
  __syncthreads();
  if (!fits) {  // sample_kernel takes the row
    if (blockIdx.x == 0 && threadIdx.x == 0) ws.num_candidates[row] = kNoFit;
    return;
  }
  const float floor = bound;
  for_each_kept_in_part(
      args, ws, ch, row, [&](float m) { return m >= floor; },
      [&](int64_t i, float v) {
        if (v >= floor) {
          append_candidate(&ws.num_candidates[row], ws.candidate_ids + row * kMaxCandidates,
                           ws.candidate_logits + row * kMaxCandidates, i, v);
        }
      });
}

// The radix select's second level (rows whose first level's bin held too many tokens).
__global__ void __launch_bounds__(kSplitThreads)
    split_radix_kernel(SampleKernelArgs args, SplitWorkspace ws, Chunking ch) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row = blockIdx.y;
  if (const int code = ws.radix[row]; code >= 0) radix_step(args, ws, ch, row, code, 2);
}

struct DrawShared {
  uint64_t warp_totals[kSplitWarps];
  int chosen_part;
  uint64_t part_target;
  int64_t token;
  // The row's candidates as gathered (no particular order).
  int32_t ids[kMaxCandidates];
  float logits[kMaxCandidates];
  // The ones top-k keeps (at their rank) or all of them: id, probability relative to the
  // top token's (0 when min-p drops it), fixed-point mass (0 unless top-p keeps it).
  int32_t kept_ids[kMaxCandidates];
  float probs[kMaxCandidates];
  uint64_t mass[kMaxCandidates];
  // A radix-selected row's parts' kept masses, and its cut.
  uint64_t part_mass[kMaxChunks * kSplitWarps];
  float cut_prob;
  int32_t cut_id;
  bool cut_short;  // a radix row's bin ran out before the target: the cut lies below it
};

// The draw among the kept tokens in id order, given each part's kept mass (row_parts, in
// id order) and each token's (kept_mass(i, p), p its probability relative to the top
// token's): the part that holds the draw's target (thread t sums parts 2t and 2t + 1), then
// a walk of that part: thread t owns a contiguous segment, the segments' masses locate the
// one whose thread walks it value by value.
template <typename KeptMass>
__device__ int64_t draw_from_parts(DrawShared& sh, const SampleKernelArgs& args, const Chunking& ch, int64_t row,
                                   const uint64_t* row_parts, float max_logit, int64_t max_id, KeptMass&& kept_mass) {
  const SamplingRowArgs& a = args.row_args[row];
  const int parts = ch.chunks * kSplitWarps;
  const int p0 = 2 * static_cast<int>(threadIdx.x);
  const uint64_t m0 = p0 < parts ? row_parts[p0] : 0;
  const uint64_t m1 = p0 + 1 < parts ? row_parts[p0 + 1] : 0;
  if (threadIdx.x == 0) {
    sh.chosen_part = -1;
    sh.token = max_id;  // (kept if no walk finds the target: cannot happen, the total is > 0)
  }
  uint64_t kept_total;
  const uint64_t before = block_exclusive_scan(m0 + m1, sh.warp_totals, &kept_total);
  const uint64_t target = sampling::draw_target(a, kept_total);  // (kept_total > 0: the top token's)
  if (before <= target && target - before < m0 + m1) {
    const bool first = target - before < m0;
    sh.chosen_part = first ? p0 : p0 + 1;
    sh.part_target = target - before - (first ? 0 : m0);
  }
  __syncthreads();
  const int part = sh.chosen_part;
  if (part < 0) return max_id;
  const int64_t vocab = args.vocab;
  const int64_t c = part / kSplitWarps;
  const int64_t end_of_chunk = chunk_end(ch, c, vocab);
  const int64_t begin = min(end_of_chunk, c * ch.chunk + (part % kSplitWarps) * ch.part);
  const int64_t end = min(end_of_chunk, begin + ch.part);
  const int64_t segment = (end - begin + kSplitThreads - 1) / kSplitThreads;
  const int64_t segment_begin = min(end, begin + static_cast<int64_t>(threadIdx.x) * segment);
  const int64_t segment_end = min(end, segment_begin + segment);
  const float* x = args.logits + row * vocab;
  const float inv_temperature = 1.0f / a.temperature;
  const float min_p = sampling::clamped_min_p(a);
  const auto mass_at = [&](int64_t i) { return kept_mass(i, relative_prob(x[i], max_logit, inv_temperature, min_p)); };
  uint64_t segment_mass = 0;
  for (int64_t i = segment_begin; i < segment_end; ++i)
    segment_mass += mass_at(i);
  uint64_t part_total;
  const uint64_t segment_before = block_exclusive_scan(segment_mass, sh.warp_totals, &part_total);
  const uint64_t t = sh.part_target;
  if (segment_before <= t && t - segment_before < segment_mass) {
    uint64_t cumulative = segment_before;
    for (int64_t i = segment_begin; i < segment_end; ++i) {
      cumulative += mass_at(i);
      if (cumulative > t) {
        sh.token = i;
        break;
      }
    }
  }
  __syncthreads();
  return sh.token;
}

// A flat top-p row after its radix select (see "Radix select"): its candidates are the
// tokens of the bin that holds the cut. Each is kept while the mass of the better ones
// (those above the bin and the bin's better candidates) is below the target; the kept
// ones join their parts' masses above the bin, and the draw walks one part with "kept:
// beats or equals the cut (the worst kept candidate)". -1 (every thread) when the exact
// masses show the cut outside the bin (the pick's approximate masses missed it).
__device__ int64_t draw_radix(DrawShared& sh, const SampleKernelArgs& args, const SplitWorkspace& ws,
                              const Chunking& ch, int64_t row, float max_logit, int64_t max_id) {
  constexpr int kPerThread = kMaxCandidates / kSplitThreads;
  const auto slot = [](int m) { return static_cast<int>(threadIdx.x) + m * kSplitThreads; };
  const SamplingRowArgs& a = args.row_args[row];
  const float inv_temperature = 1.0f / a.temperature;
  const float min_p = sampling::clamped_min_p(a);
  const int n = ws.num_candidates[row];  // (at most kMaxCandidates: the caller checked)
  for (int c = threadIdx.x; c < n; c += kSplitThreads) {
    sh.ids[c] = ws.candidate_ids[row * kMaxCandidates + c];
    sh.probs[c] = relative_prob(ws.candidate_logits[row * kMaxCandidates + c], max_logit, inv_temperature, min_p);
  }
  const int parts = ch.chunks * kSplitWarps;
  uint64_t local_total = 0, local_above = 0;
  for (int p = threadIdx.x; p < parts; p += kSplitThreads) {
    local_total += ws.parts[row * parts + p];
    sh.part_mass[p] = ws.kept_parts[row * parts + p];
    local_above += sh.part_mass[p];
  }
  uint64_t row_total, above;
  block_exclusive_scan(local_total, sh.warp_totals, &row_total);  // (its barrier publishes the candidates)
  block_exclusive_scan(local_above, sh.warp_totals, &above);
  const double target = top_p_target(a, row_total);
  float q[kPerThread];
  int32_t id[kPerThread];
  uint64_t better[kPerThread];
  int rank[kPerThread];
#pragma unroll
  for (int m = 0; m < kPerThread; ++m) {
    q[m] = slot(m) < n ? sh.probs[slot(m)] : 0.0f;
    id[m] = slot(m) < n ? sh.ids[slot(m)] : INT32_MAX;
    better[m] = above;
    rank[m] = 0;
  }
  for (int o = 0; o < n; ++o) {
    const float po = sh.probs[o];
    const int32_t io = sh.ids[o];
    const uint64_t fixed = to_fixed(po);
#pragma unroll
    for (int m = 0; m < kPerThread; ++m) {
      const bool beaten = beats(po, io, q[m], id[m]);
      better[m] += beaten ? fixed : 0;
      rank[m] += beaten ? 1 : 0;
    }
  }
  int kept_here = 0;
#pragma unroll
  for (int m = 0; m < kPerThread; ++m)
    kept_here += slot(m) < n && static_cast<double>(better[m]) < target ? 1 : 0;
  uint64_t kept;
  block_exclusive_scan(static_cast<uint64_t>(kept_here), sh.warp_totals, &kept);
  // The cut lies in the bin when the bin's best token is kept (kept > 0) and the token after
  // its worst is not (checked with the cut below when every token is kept).
  if (kept == 0) return -1;
#pragma unroll
  for (int m = 0; m < kPerThread; ++m) {
    if (slot(m) >= n || static_cast<double>(better[m]) >= target) continue;
    const int64_t c = id[m] / ch.chunk;
    const int64_t part = c * kSplitWarps + (id[m] - c * ch.chunk) / ch.part;
    const uint64_t fixed = to_fixed(q[m]);
    atomicAdd(reinterpret_cast<unsigned long long*>(&sh.part_mass[part]), static_cast<unsigned long long>(fixed));
    if (rank[m] == static_cast<int>(kept) - 1) {  // (kept ones rank first)
      sh.cut_prob = q[m], sh.cut_id = id[m];
      sh.cut_short = kept == static_cast<uint64_t>(n) && static_cast<double>(better[m] + fixed) < target;
    }
  }
  __syncthreads();
  if (sh.cut_short) return -1;
  const float cut_prob = sh.cut_prob;
  const int32_t cut_id = sh.cut_id;
  return draw_from_parts(sh, args, ch, row, sh.part_mass, max_logit, max_id, [&](int64_t i, float p) -> uint64_t {
    return p > 0.0f && (p > cut_prob || (p == cut_prob && i <= cut_id)) ? to_fixed(p) : 0;
  });
}

// Ranks the first n of (ids, values) in shared memory by (value, lower id), 0 the best (a
// strict order: every rank is unique), and calls fn(rank, id, value) for each. Each thread
// owns candidates threadIdx.x + m * kSplitThreads and compares them with every other in one
// sweep of shared memory.
template <typename Fn>
__device__ __forceinline__ void rank_candidates(const int32_t* ids, const float* values, int n, Fn&& fn) {
  constexpr int kPerThread = kMaxCandidates / kSplitThreads;
  const auto slot = [](int m) { return static_cast<int>(threadIdx.x) + m * kSplitThreads; };
  float v[kPerThread];
  int32_t id[kPerThread];
  int rank[kPerThread];
#pragma unroll
  for (int m = 0; m < kPerThread; ++m) {
    v[m] = slot(m) < n ? values[slot(m)] : -INFINITY;
    id[m] = slot(m) < n ? ids[slot(m)] : INT32_MAX;
    rank[m] = 0;
  }
  for (int o = 0; o < n; ++o) {
    const float vo = values[o];
    const int32_t io = ids[o];
#pragma unroll
    for (int m = 0; m < kPerThread; ++m)
      rank[m] += beats(vo, io, v[m], id[m]) ? 1 : 0;
  }
#pragma unroll
  for (int m = 0; m < kPerThread; ++m) {
    if (slot(m) < n) fn(rank[m], id[m], v[m]);
  }
}

// A row with a cut whose n candidates are in shared memory: top-k keeps the k best logits
// (rank by (logit, lower id)), min-p drops what it drops, top-p keeps each token whose
// better tokens (probability, then lower id) have not reached top_p of the kept mass yet
// (`row_total`: the row's whole mass for top-p alone; under top-k the kept candidates'
// mass), then one draw among the kept ones in id order: sample_kernel's sets and token.
// -1 when none is kept. (Threads own candidates as in rank_candidates.)
__device__ int64_t draw_from_candidates(DrawShared& sh, int n, const SamplingRowArgs& a, SamplingCut cut,
                                        float max_logit, uint64_t row_total) {
  constexpr int kPerThread = kMaxCandidates / kSplitThreads;
  const auto slot = [](int m) { return static_cast<int>(threadIdx.x) + m * kSplitThreads; };
  const float inv_temperature = 1.0f / a.temperature;
  const float min_p = sampling::clamped_min_p(a);
  if (cut == SamplingCut::kTopK) {
    rank_candidates(sh.ids, sh.logits, n, [&](int rank, int32_t id, float v) {
      if (rank < a.top_k) {  // (ranks are unique: one writer a place)
        sh.kept_ids[rank] = id;
        sh.probs[rank] = relative_prob(v, max_logit, inv_temperature, min_p);
      }
    });
    n = min(n, a.top_k);
  } else {
    for (int c = threadIdx.x; c < n; c += kSplitThreads) {
      sh.kept_ids[c] = sh.ids[c];
      sh.probs[c] = relative_prob(sh.logits[c], max_logit, inv_temperature, min_p);
    }
  }
  __syncthreads();
  const bool use_top_p = a.top_p < 1.0f;
  uint64_t total = row_total;
  if (use_top_p && cut == SamplingCut::kTopK) {
    uint64_t local = 0;
    for (int c = threadIdx.x; c < n; c += kSplitThreads)
      local += to_fixed(sh.probs[c]);
    block_exclusive_scan(local, sh.warp_totals, &total);
  }
  const double target = fmax(static_cast<double>(a.top_p) * static_cast<double>(total), 1.0);
  float q[kPerThread];
  int32_t id[kPerThread];
  uint64_t acc[kPerThread];
#pragma unroll
  for (int m = 0; m < kPerThread; ++m) {
    q[m] = slot(m) < n ? sh.probs[slot(m)] : 0.0f;
    id[m] = slot(m) < n ? sh.kept_ids[slot(m)] : INT32_MAX;
    acc[m] = 0;
  }
  if (use_top_p) {  // acc: the mass of the better tokens
    for (int o = 0; o < n; ++o) {
      const float po = sh.probs[o];
      const int32_t io = sh.kept_ids[o];
      const uint64_t fixed = to_fixed(po);
#pragma unroll
      for (int m = 0; m < kPerThread; ++m)
        acc[m] += beats(po, io, q[m], id[m]) ? fixed : 0;
    }
  }
  uint64_t local = 0;
#pragma unroll
  for (int m = 0; m < kPerThread; ++m) {
    if (slot(m) < n) {
      const uint64_t mass = !use_top_p || static_cast<double>(acc[m]) < target ? to_fixed(q[m]) : 0;
      sh.mass[slot(m)] = mass;
      local += mass;
    }
  }
  if (threadIdx.x == 0) sh.token = -1;
  uint64_t kept_total;
  block_exclusive_scan(local, sh.warp_totals, &kept_total);  // (its barrier also publishes the masses)
  if (kept_total == 0) return -1;
  const uint64_t draw = sampling::draw_target(a, kept_total);
#pragma unroll
  for (int m = 0; m < kPerThread; ++m)
    acc[m] = 0;  // now: the kept mass at lower ids
  for (int o = 0; o < n; ++o) {
    const uint64_t mass = sh.mass[o];
    const int32_t io = sh.kept_ids[o];
#pragma unroll
    for (int m = 0; m < kPerThread; ++m)
      acc[m] += io < id[m] ? mass : 0;
  }
#pragma unroll
  for (int m = 0; m < kPerThread; ++m) {
    if (slot(m) < n) {
      const uint64_t mass = sh.mass[slot(m)];
      if (mass > 0 && acc[m] <= draw && draw - acc[m] < mass) sh.token = id[m];
    }
  }
  __syncthreads();
  return sh.token;
}

// The top log-probabilities (the best plan.top_logprobs of the row's top candidates) into
// record[1...], and the log-normaliser for record[0]; sample_kernel's raw_distribution.
__device__ double write_top_logprobs(DrawShared& sh, const SplitWorkspace& ws, const Chunking& ch, int64_t row, int top,
                                     float max_logit, LogprobEntry* record) {
  __shared__ double log_normaliser;
  if (!isfinite(max_logit)) {
    for (int j = threadIdx.x; j < top; j += kSplitThreads)
      record[1 + j] = LogprobEntry{-1, 0.0f};
    return 0.0;
  }
  if (threadIdx.x < 32) {
    double sum = 0.0;
    for (int c = static_cast<int>(threadIdx.x); c < ch.chunks; c += 32)
      sum += ws.stats[row * ch.chunks + c].sum_exp;
    sum = warp_sum(sum);
    if (threadIdx.x == 0) log_normaliser = static_cast<double>(max_logit) + log(sum);
  }
  const int n = top > 0 ? ws.num_top[row] : 0;  // (>= top: the gather's count said so)
  for (int c = threadIdx.x; c < n; c += kSplitThreads) {
    sh.kept_ids[c] = ws.top_ids[row * kMaxCandidates + c];
    sh.probs[c] = ws.top_logits[row * kMaxCandidates + c];
  }
  __syncthreads();
  const double ln = log_normaliser;
  rank_candidates(sh.kept_ids, sh.probs, n, [&](int rank, int32_t id, float v) {
    if (rank < top) record[1 + rank] = LogprobEntry{id, static_cast<float>(static_cast<double>(v) - ln)};
  });
  __syncthreads();  // (the scratch arrays are the draw's next)
  return ln;
}

__global__ void __launch_bounds__(kSplitThreads)
    split_draw_kernel(SampleKernelArgs args, SplitWorkspace ws, Chunking ch) {
  pdl_wait();
  __shared__ DrawShared sh;
  const int64_t row = blockIdx.x;
  const RowStart r = row_start(args, ws, ch, row);
  const SamplingRowArgs& a = r.a;
  const SamplingRowPlan& plan = r.plan;
  const float max_logit = r.max_logit;
  const int64_t max_id = r.max_id;
  if (plan.gathers() && isfinite(max_logit) && ws.num_candidates[row] > kMaxCandidates) {
    if (threadIdx.x == 0) ws.done[row] = 0;  // kNoFit: sample_kernel takes the row
    return;
  }
  LogprobEntry* record = plan.top_logprobs >= 0 ? args.logprobs_out + row * kLogprobsRecord : nullptr;
  double log_normaliser = 0.0;
  if (record != nullptr) {
    log_normaliser = write_top_logprobs(sh, ws, ch, row, plan.top_logprobs, max_logit, record);
  }
  const float* x = args.logits + row * args.vocab;  // (unmodified when the row has a record)
  const auto emit = [&](int64_t token) {
    if (threadIdx.x != 0) return;
    args.out[row] = static_cast<int32_t>(token);
    ws.done[row] = 1;
    if (record != nullptr) {
      const float v = x[token];
      const float logprob = isfinite(max_logit) ? static_cast<float>(static_cast<double>(v) - log_normaliser)
                            : v == max_logit    ? 0.0f
                                                : -INFINITY;
      record[0] = LogprobEntry{static_cast<int32_t>(token), logprob};
    }
  };
  if (!plan.draws || !isfinite(max_logit)) return emit(max_id);
  if (plan.cut == SamplingCut::kNone) {
    return emit(draw_from_parts(sh, args, ch, row, ws.parts + row * ch.chunks * kSplitWarps, max_logit, max_id,
                                [](int64_t, float p) { return to_fixed(p); }));
  }
  if (ws.radix[row] >= 0) {
    const int64_t token = draw_radix(sh, args, ws, ch, row, max_logit, max_id);
    if (token < 0) {  // the pick missed the cut: sample_kernel takes the row
      if (threadIdx.x == 0) ws.done[row] = 0;
      return;
    }
    return emit(token);
  }
  const int n = ws.num_candidates[row];
  for (int c = threadIdx.x; c < n; c += kSplitThreads) {
    sh.ids[c] = ws.candidate_ids[row * kMaxCandidates + c];
    sh.logits[c] = ws.candidate_logits[row * kMaxCandidates + c];
  }
  uint64_t row_total = 0;
  if (plan.cut == SamplingCut::kTopP) {
    const int parts = ch.chunks * kSplitWarps;
    uint64_t local = 0;
    for (int p = threadIdx.x; p < parts; p += kSplitThreads)
      local += ws.parts[row * parts + p];
    block_exclusive_scan(local, sh.warp_totals, &row_total);  // (its barrier also publishes the candidates)
  } else {
    __syncthreads();
  }
  const int64_t token = draw_from_candidates(sh, n, a, plan.cut, max_logit, row_total);
  emit(token >= 0 ? token : max_id);
}

// The workspace's arrays from `base` on, for `rows` rows of `vocab` logits; *bytes (when
// given) gets their size (split_sample_workspace_bytes lays it out from base 0).
SplitWorkspace split_workspace(void* base, int64_t rows, int64_t vocab, int64_t* bytes = nullptr) {
  SplitWorkspace ws;
  const auto start = reinterpret_cast<std::uintptr_t>(base);
  std::uintptr_t at = start;
  const auto take = [&](int64_t n) {
    const std::uintptr_t p = at;
    at += static_cast<std::uintptr_t>((n + 255) / 256 * 256);
    return p;
  };
  ws.partials = reinterpret_cast<ChunkMax*>(take(rows * kMaxChunks * static_cast<int64_t>(sizeof(ChunkMax))));
  ws.segment_max = reinterpret_cast<float*>(take(rows * segment_stride(vocab) * static_cast<int64_t>(sizeof(float))));
  ws.parts =
      reinterpret_cast<uint64_t*>(take(rows * kMaxChunks * kSplitWarps * static_cast<int64_t>(sizeof(uint64_t))));
  ws.stats = reinterpret_cast<ChunkStats*>(take(rows * kMaxChunks * static_cast<int64_t>(sizeof(ChunkStats))));
  ws.fine_count =
      reinterpret_cast<uint32_t*>(take(rows * kMaxChunks * kNumFineSteps * static_cast<int64_t>(sizeof(uint32_t))));
  ws.num_candidates = reinterpret_cast<int32_t*>(take(4 * rows * static_cast<int64_t>(sizeof(int32_t))));
  ws.num_top = ws.num_candidates + rows;  // (split_max_kernel clears all four)
  ws.refined = ws.num_candidates + 2 * rows;
  ws.radix = ws.num_candidates + 3 * rows;
  ws.radix_count =
      reinterpret_cast<uint32_t*>(take(rows * kRadixLevels * kRadixBins * static_cast<int64_t>(sizeof(uint32_t))));
  ws.radix_excess =
      reinterpret_cast<uint32_t*>(take(rows * kRadixLevels * kRadixBins * static_cast<int64_t>(sizeof(uint32_t))));
  ws.radix_above = reinterpret_cast<uint64_t*>(take(rows * static_cast<int64_t>(sizeof(uint64_t))));
  ws.kept_parts =
      reinterpret_cast<uint64_t*>(take(rows * kMaxChunks * kSplitWarps * static_cast<int64_t>(sizeof(uint64_t))));
  ws.done = reinterpret_cast<int32_t*>(take(rows * static_cast<int64_t>(sizeof(int32_t))));
  ws.candidate_ids = reinterpret_cast<int32_t*>(take(rows * kMaxCandidates * static_cast<int64_t>(sizeof(int32_t))));
  ws.candidate_logits = reinterpret_cast<float*>(take(rows * kMaxCandidates * static_cast<int64_t>(sizeof(float))));
  ws.top_ids = reinterpret_cast<int32_t*>(take(rows * kMaxCandidates * static_cast<int64_t>(sizeof(int32_t))));
  ws.top_logits = reinterpret_cast<float*>(take(rows * kMaxCandidates * static_cast<int64_t>(sizeof(float))));
  if (bytes != nullptr) *bytes = static_cast<int64_t>(at - start);
  return ws;
}

}  // namespace

int64_t split_sample_workspace_bytes(int64_t rows, int64_t vocab) {
  int64_t bytes = 0;
  split_workspace(nullptr, rows, vocab, &bytes);
  return bytes;
}

cudaError_t launch_greedy_argmax(int32_t* out, const float* logits, int64_t rows, int64_t vocab, void* workspace,
                                 int num_sms, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  const Chunking ch = split_chunking(rows, vocab, num_sms);
  const SplitWorkspace ws = split_workspace(workspace, rows, vocab);
  launch_kernel(split_max_kernel<true>, dim3(static_cast<unsigned>(ch.chunks), static_cast<unsigned>(rows)),
                kSplitThreads, 0, stream, ws.partials, static_cast<float*>(nullptr), static_cast<int32_t*>(nullptr),
                static_cast<uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr), static_cast<uint64_t*>(nullptr),
                logits, vocab, ch);
  launch_kernel(argmax_final_kernel, static_cast<unsigned>(rows), 32, 0, stream, out,
                static_cast<const ChunkMax*>(ws.partials), ch.chunks);
  return cudaGetLastError();
}

cudaError_t launch_split_sample(const SampleKernelArgs& args, const SplitSampleCall& call, void* workspace, int num_sms,
                                cudaStream_t stream) {
  if (args.rows <= 0) return cudaSuccess;
  g_split_samples.fetch_add(1, std::memory_order_relaxed);
  const Chunking ch = split_chunking(args.rows, args.vocab, num_sms);
  if (int64_t{ch.chunks} * kSplitWarps * ch.segments > segment_stride(args.vocab)) return cudaErrorInvalidValue;
  const SplitWorkspace ws = split_workspace(workspace, args.rows, args.vocab);
  const auto rows = static_cast<unsigned>(args.rows);
  if (call.bias_or_penalties) launch_kernel(split_modify_kernel, rows, kSplitThreads, 0, stream, args);
  const dim3 grid(static_cast<unsigned>(ch.chunks), rows);
  launch_kernel(call.gathers ? split_max_kernel<true> : split_max_kernel<false>, grid, kSplitThreads, 0, stream,
                ws.partials, call.gathers ? ws.segment_max : nullptr, ws.num_candidates,
                call.floors ? ws.radix_count : nullptr, call.floors ? ws.radix_excess : nullptr,
                call.floors ? ws.radix_above : nullptr, static_cast<const float*>(args.logits), args.vocab, ch);
  using SplitKernel = void (*)(SampleKernelArgs, SplitWorkspace, Chunking);
  constexpr SplitKernel kStatsKernels[kNumStatsKernels] = {
      split_stats_kernel<0>, split_stats_kernel<1>, split_stats_kernel<2>, split_stats_kernel<3>,
      split_stats_kernel<4>, split_stats_kernel<5>, split_stats_kernel<6>, split_stats_kernel<7>};
  const int counts = (call.near ? kCountNear : 0) | (call.floors ? kCountFloors : 0) | (call.logprobs ? kSumExp : 0);
  launch_kernel(kStatsKernels[counts], grid, kSplitThreads, 0, stream, args, ws, ch);
  // (the gather kernel compiles its selections by the same bits: kCountNear, kCountFloors)
  constexpr SplitKernel kGatherKernels[] = {split_gather_kernel<0>, split_gather_kernel<1>, split_gather_kernel<2>,
                                            split_gather_kernel<3>};
  if (call.gathers) {
    launch_kernel(kGatherKernels[counts & (kCountNear | kCountFloors)], grid, kSplitThreads, 0, stream, args, ws, ch);
  }
  if (call.cuts) launch_kernel(split_gather_refined_kernel, grid, kSplitThreads, 0, stream, args, ws, ch);
  if (call.floors) launch_kernel(split_radix_kernel, grid, kSplitThreads, 0, stream, args, ws, ch);
  launch_kernel(split_draw_kernel, rows, kSplitThreads, 0, stream, args, ws, ch);
  if (call.gathers) {
    // The rows whose candidates did not fit, one block a row (the others return at once).
    SampleKernelArgs rest = args;
    rest.done = ws.done;
    rest.bias_applied = true;
    const cudaError_t err = launch_sample(rest, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaGetLastError();
}

const int32_t* split_sample_done_flags(void* workspace, int64_t rows, int64_t vocab) {
  return split_workspace(workspace, rows, vocab).done;
}

int64_t split_sample_launches() { return g_split_samples.load(std::memory_order_relaxed); }

}  // namespace bw::cuda
