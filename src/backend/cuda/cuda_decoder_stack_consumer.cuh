// Internal to cuda_decoder_stack.cu (the fused decoder stack): its sizes, the page walk
// shared by the producer and the consumers, the ring and barrier primitives, and the
// consumer warps' GEMV machinery. Included by that file only.
#pragma once

#include <cstdint>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_mma.cuh"  // kLog2e, smem_addr, cp.async
#include "backend/cuda/cuda_wgmma.cuh"

namespace bw::cuda::decoder_stack {

using bf16 = __nv_bfloat16;

constexpr int kConsumerWarps = 8;
constexpr int kConsumerThreads = kConsumerWarps * 32;
constexpr int kThreads = kConsumerThreads + 32;  // + the producer warp
constexpr int kMaxGroup = 8;                     // query heads per KV head
constexpr int kMaxNormChunks = 4;                // 16-byte chunks per thread of a normed row
constexpr int kMaxSharedBytes = 226 * 1024;      // of the 227 KiB a CTA may have, 1 KiB left for static shared memory
constexpr int kTargetPageBytes = 24 * 1024;      // measured: 24 KiB 720 tokens/s (1.5B), 36 KiB 642
constexpr int kMaxPages = 16;                    // mbarrier pairs reserved in shared memory
constexpr int kTileKeys = 32;                    // keys of an attention item's tile: a lane per key
constexpr int kScoreWarps = kTileKeys / 8;       // warps computing a tile's scores (8 keys each)
constexpr int kTwoBufferTiles = 3;               // tiles per item from which a ring page goes to a second tile buffer
// Tiles per item (counted over the block table's width) beyond which the step runs op by
// op. H200, single stream, tokens/s, stack vs op by op, by context: 1.5B 16,384 (8 tiles)
// 615.5 vs 539.2, 24,576 (12) 530.3 vs 510.2, 32,768 (16) 476.6 vs 495.7; 7B 12,288 (12)
// 231.6 vs 215.1, 32,768 (32) 178.5 vs 203.2: the lines cross near 14 tiles of the real
// context. A decode graph's table is a power of two of blocks, up to twice the context it
// replays, so its limit sits at 16: a graph of 16 tiles replays 8-16 tiles of context,
// where the stack wins on average.
constexpr int kMaxTilesPerItem = 16;

// Shared scratch of the attention step (head_dim d): q of the group's heads and this
// token's k and v (f32), `buffers` tiles of k and v rows (bf16), a flag per key of each,
// the cache slots of the next tile to load, and the score exchange (kScoreWarps C
// fragments of f32 pairs).
__host__ __device__ constexpr int64_t attention_scratch_bytes(int64_t d, int buffers) {
  return (kMaxGroup * d + 2 * d) * 4 + buffers * (2 * kTileKeys * d * 2 + kTileKeys * 4) + kTileKeys * 4 +
         kScoreWarps * 32 * 8;
}

// Arrival counters of a layer: how many CTAs finished each op (kAttnDone: KV heads merged),
// then one per KV head counting its finished attention items.
enum Counter : int { kQkvDone, kAttnDone, kODone, kGateUpDone, kDownDone, kFixedCounters };

enum TcOps : int { kTcGateUp = 1, kTcLmHead = 2 };

// Sizes the launcher derives from the shapes and the kernel re-reads (passed by value).
struct Plan {
  int pages = 0, page_bytes = 0;
  int rows_h = 0, rows_q = 0, rows_f = 0;  // rows of one page for K = hidden, Hq * D, F
  int scratch_bytes = 0;                   // activations (bf16) or attention scratch (f32)
  int acc_floats = 0;                      // an op's row sums: [2][most rows a CTA owns][8 slices]
  int max_splits = 0;                      // attention items per KV head at most
  int counters_per_layer = 0;
  int own_floats = 0;             // the CTA's rows of the residual stream (even, for alignment)
  bool pause_between_ops = true;  // the producer pauses between an op's pages and the next op's (BW_CUDA_STACK_PAUSE)
  int tc_ops = 0;                 // ops whose pages go to the tensor cores, a warp per page (tc_page): TcOps
  int tile_buffers = 1;           // attention tiles in shared memory: 2 loads an item's next tile during this one
};

// Slices of a row that the warps share: pages of few long rows give every warp a part,
// and rows that do not divide among the warps are halved. Always 1, 2, 4 or 8: a divisor
// of the warp count, so each warp takes the same slice of every row (see OpUnits).
__host__ __device__ constexpr int slices_for(int rows) {
  if (rows < kConsumerWarps) return kConsumerWarps / rows;
  return rows % kConsumerWarps == 0 ? 1 : 2;  // 12 rows: 24 units, 3 per warp
}
constexpr bool slices_divide_the_warps() {  // (rows past 16 take the same branches)
  for (int rows = 1; rows <= 16; ++rows)
    if (kConsumerWarps % slices_for(rows) != 0) return false;
  return true;
}
static_assert(slices_divide_the_warps(), "OpUnits: a warp takes the same slice of every row");

// The measurement aids (BW_CUDA_STACK_DEBUG, see cuda_decoder_stack.cu; wrong results):
// which part of the step each mode leaves out.
__host__ __device__ constexpr bool debug_skips_attention(int mode) { return mode >= 1 && mode <= 4; }
__host__ __device__ constexpr bool debug_skips_waits(int mode) { return mode >= 2 && mode <= 4; }
__host__ __device__ constexpr bool debug_skips_arithmetic(int mode) { return mode == 3; }
__host__ __device__ constexpr bool debug_skips_copies(int mode) { return mode == 4 || mode == 5; }

inline int64_t counters_per_layer(const DecoderStackArgs& a) { return kFixedCounters + a.num_kv_heads; }

#ifdef BW_WGMMA

__device__ __forceinline__ float bf16_lo(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t v) { return __uint_as_float(v & 0xffff0000u); }
__device__ __forceinline__ float round_bf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

// acc{0,1} += the dot product of 8 bf16 pairs (two chains: half the FMA latency).
__device__ __forceinline__ void dot8(const uint4& w, const uint4& x, float& acc0, float& acc1) {
  acc0 = fmaf(bf16_lo(w.x), bf16_lo(x.x), acc0);
  acc1 = fmaf(bf16_hi(w.x), bf16_hi(x.x), acc1);
  acc0 = fmaf(bf16_lo(w.y), bf16_lo(x.y), acc0);
  acc1 = fmaf(bf16_hi(w.y), bf16_hi(x.y), acc1);
  acc0 = fmaf(bf16_lo(w.z), bf16_lo(x.z), acc0);
  acc1 = fmaf(bf16_hi(w.z), bf16_hi(x.z), acc1);
  acc0 = fmaf(bf16_lo(w.w), bf16_lo(x.w), acc0);
  acc1 = fmaf(bf16_hi(w.w), bf16_hi(x.w), acc1);
}

// Rows [r0, r1) of n that CTA c of g owns.
__device__ __forceinline__ void cta_rows(int64_t n, int64_t* r0, int64_t* r1) {
  const int64_t c = blockIdx.x, g = gridDim.x;
  *r0 = c * n / g;
  *r1 = (c + 1) * n / g;
}

// The pages of one projection, in ring order (the producer walks the same): fn(row - r0,
// rows) for each page of the CTA's rows [r0, r1) (R per page). Returns r0.
template <typename Fn>
__device__ __forceinline__ int64_t walk_rows(int64_t n, int R, Fn&& fn) {
  int64_t r0 = 0, r1 = 0;
  cta_rows(n, &r0, &r1);
  for (int64_t r = r0; r < r1; r += R)
    fn(r - r0, static_cast<int>(min(static_cast<int64_t>(R), r1 - r)));
  return r0;
}
// Gate/up ([gate (F rows) | up (F rows)]): a page of gate rows, then the up rows of the
// same units: fn(unit - u0, rows, is_up). Returns u0.
template <typename Fn>
__device__ __forceinline__ int64_t walk_gate_up(int64_t f, int R, Fn&& fn) {
  int64_t u0 = 0, u1 = 0;
  cta_rows(f, &u0, &u1);
  for (int64_t u = u0; u < u1; u += R) {
    const int rows = static_cast<int>(min(static_cast<int64_t>(R), u1 - u));
    fn(u - u0, rows, false);
    fn(u - u0, rows, true);
  }
  return u0;
}
// The first row of n the CTA owns, and how many.
__device__ __forceinline__ int64_t cta_first(int64_t n) { return blockIdx.x * n / gridDim.x; }
__device__ __forceinline__ int64_t cta_count(int64_t n) {
  int64_t r0 = 0, r1 = 0;
  cta_rows(n, &r0, &r1);
  return r1 - r0;
}

__device__ __forceinline__ const bf16* as_bf16(const void* p) { return static_cast<const bf16*>(p); }

__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// bytes (a multiple of 16) from global to shared memory; completes on `bar`'s transaction
// count. Weights are read once per step, so they go through L2 marked evict-first and
// leave the activations and the KV cache there.
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar,
                                          uint64_t policy) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;\n" ::
          "r"(dst),
      "l"(src), "r"(bytes), "r"(bar), "l"(policy)
      : "memory");
}
__device__ __forceinline__ int load_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
// Barrier of the eight consumer warps (id 1; the producer never joins).
__device__ __forceinline__ void consumer_sync() { asm volatile("bar.sync 1, 256;\n" ::: "memory"); }

// Set while the consumers are between two ops' pages (waiting for the other CTAs,
// reloading activations, the attention step): the producer issues no copy then. Why: one
// grid-wide wait (arrive, poll, reload a row) measured 1.35 us with no copies in flight
// and 2.5 / 4.0 / 9.9 / 27 us with 1 / 2 / 4 / 8 pages (24 KiB) in flight per SM, the
// SM's own bulk copies ahead of its loads (H200, bench/cuda_exchange_bench.cu); between
// ops the ring is nearly full anyway, so the few copies held back cost the stream less
// than they cost the chain (1.5B 819-828 vs 789-794 tokens/s, 7B 276 vs 271; keeping 1-3
// copies in flight through the pause, or prefetching into L2 instead, measured slower).
__shared__ int g_stream_paused;
__device__ __forceinline__ void set_stream_paused(int paused) {
  *static_cast<volatile int*>(&g_stream_paused) = paused;
}
__device__ __forceinline__ bool stream_paused() { return *static_cast<volatile int*>(&g_stream_paused) != 0; }

#ifdef BW_STACK_TRACE
// Trace builds: each warp's cycles in the projections of the traced layer (lane 0 of each
// warp of CTA 0 records; cuda_decoder_stack.cu sets the warp's g_trace_op around them):
// waiting for a page to land, working on it until it is released, between one page and
// the next (this bookkeeping included: ~300 cycles a page), and when its last page ended.
enum TraceOp : int { kTraceNone, kTraceQkv, kTraceO, kTraceGateUp, kTraceDown, kTraceOps };
__shared__ int g_trace_op[kConsumerWarps];
__shared__ long long g_page_wait[kTraceOps][kConsumerWarps], g_page_work[kTraceOps][kConsumerWarps];
__shared__ long long g_page_gap[kTraceOps][kConsumerWarps], g_op_end[kTraceOps][kConsumerWarps];
__shared__ int g_page_count[kTraceOps][kConsumerWarps];
// The producer's side of the same ops (CTA 0, the traced layer's pages): pages pushed,
// cycles spent waiting for a free slot (every slot held by pages not yet released) and
// paused (the consumers between ops) before them, and the clock at its first and last
// push (clock64 of the same SM as the consumers' stamps). Whether an op's pages wait on
// the consumers or on HBM: a producer that neither waits nor pauses has them in flight.
__shared__ long long g_push_slot_wait[kTraceOps], g_push_paused[kTraceOps];
__shared__ long long g_push_first[kTraceOps], g_push_last[kTraceOps];
__shared__ int g_push_count[kTraceOps];
#endif

// The ring position of a page: its slot and the parity of the slot's current use.
// Advanced incrementally (a division per page costs the single producer thread more
// than the page's copy takes to issue).
struct RingCursor {
  uint32_t slot = 0, phase = 0;
  __device__ void advance(int pages) {
    if (++slot == static_cast<uint32_t>(pages)) slot = 0, phase ^= 1;
  }
};

// A warp's share of every page of an op (rows of k, S slices each): the units (row,
// slice) of a page go to the warps in turn, u = row * S + slice = warp + 8 i, so with S
// dividing the warp count a warp always takes slice warp % S, of rows warp / S + i 8 / S.
// Set once per op: no division per page.
struct OpUnits {
  int chunks = 0;                 // 16-byte chunks of a row
  int S = 1;                      // slices per row
  int slice = 0, c0 = 0, c1 = 0;  // this warp's slice: chunks [c0, c1)
  int row0 = 0, row_step = 1;     // its first row of a page, and the rows between its units

  __device__ OpUnits(int64_t k, int slices, int warp) : chunks(static_cast<int>(k / 8)), S(slices) {
    slice = warp % S;
    c0 = slice * chunks / S;
    c1 = (slice + 1) * chunks / S;
    row0 = warp / S;
    row_step = kConsumerWarps / S;
  }
};

// The consumer warps' state: the ring cursor and the shared buffers.
struct Consumer {
  const DecoderStackArgs& a;
  const Plan& p;
  const unsigned char* ring;
  uint32_t full, empty;  // mbarrier arrays (shared addresses)
  unsigned char* scratch;
  float* acc;  // [acc_floats]: the current op's row sums, one per (row, slice)
  float* red;  // [kConsumerWarps]
  float* own;  // [own_floats]: the CTA's rows of the residual stream
  int* counters;
  RingCursor cur;
  int tid, warp, lane;

  // Around an op's pages (thread 0; see g_stream_paused).
  __device__ void resume_stream() const {
    if (p.pause_between_ops && tid == 0) set_stream_paused(0);
  }
  __device__ void pause_stream() const {
    if (p.pause_between_ops && tid == 0) set_stream_paused(1);
  }

  __device__ int* layer_counters(int l) const { return counters + static_cast<int64_t>(l) * p.counters_per_layer; }

  // Every CTA has bumped *ctr to target (thread 0 spins, then the others pass the barrier).
  __device__ void wait_for(const int* ctr, int target) const {
    if (debug_skips_waits(a.debug)) return;
    if (tid == 0) {
      while (load_acquire(ctr) < target) {
      }
    }
    consumer_sync();
  }
  // This CTA's writes are done (all consumer threads): bump *ctr. (The barrier orders the
  // other threads' writes before thread 0's release, as CUTLASS's grid barrier does; a
  // release reduction costs one round trip, a fence and an atomic two.)
  __device__ void arrive(int* ctr) const {
    consumer_sync();
    if (tid == 0) asm volatile("red.release.gpu.global.add.s32 [%0], 1;\n" ::"l"(ctr) : "memory");
  }

  // x = src[0, n) (bf16, written by other CTAs: read through L2).
  __device__ void load_x(const void* src, int64_t n) const {
    const uint4* from = static_cast<const uint4*>(src);
    uint4* to = reinterpret_cast<uint4*>(scratch);
    for (int64_t i = tid; i < n / 8; i += kConsumerThreads)
      to[i] = __ldcg(from + i);
    consumer_sync();
  }

  // x = rms_norm(src[0, n)) * weight, rounded as the norm kernel rounds (n <= 8 * 4 *
  // 256): the row and the weights load together, one 16-byte chunk of each per thread
  // and pass, so the op after a wait starts one round trip later.
  __device__ void load_normed_x(const void* src, int64_t n, const void* weight, float eps) const {
    const uint4* from = static_cast<const uint4*>(src);
    const uint4* wn = static_cast<const uint4*>(weight);
    uint4* to = reinterpret_cast<uint4*>(scratch);
    const int64_t chunks = n / 8;
    uint4 xv[kMaxNormChunks], wv[kMaxNormChunks];
#pragma unroll
    for (int j = 0; j < kMaxNormChunks; ++j) {
      const int64_t i = tid + j * kConsumerThreads;
      if (i < chunks) xv[j] = __ldcg(from + i), wv[j] = __ldg(wn + i);
    }
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < kMaxNormChunks; ++j) {
      if (tid + j * kConsumerThreads >= chunks) break;
      const uint32_t* u = &xv[j].x;
#pragma unroll
      for (int e = 0; e < 4; ++e)
        ss = fmaf(bf16_lo(u[e]), bf16_lo(u[e]), fmaf(bf16_hi(u[e]), bf16_hi(u[e]), ss));
    }
    ss = warp_sum(ss);
    if (lane == 0) red[warp] = ss;
    consumer_sync();
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < kConsumerWarps; ++i)
      total += red[i];
    const float inv_rms = 1.0f / sqrtf(total / static_cast<float>(n) + eps);
#pragma unroll
    for (int j = 0; j < kMaxNormChunks; ++j) {
      const int64_t i = tid + j * kConsumerThreads;
      if (i >= chunks) break;
      uint32_t* u = &xv[j].x;
      const uint32_t* wu = &wv[j].x;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const __nv_bfloat162 r = __floats2bfloat162_rn(bf16_lo(wu[e]) * (bf16_lo(u[e]) * inv_rms),
                                                       bf16_hi(wu[e]) * (bf16_hi(u[e]) * inv_rms));
        u[e] = *reinterpret_cast<const uint32_t*>(&r);
      }
      to[i] = xv[j];
    }
    consumer_sync();  // also: every thread has read red[] before the next norm writes it
  }

  // The next ring page: `rows` rows of K dotted with x, each split into S slices (warps
  // take (row, slice) units: OpUnits); dst[row * S + slice] <- the slice's sum (lane 0 of
  // the warp). No barrier: a warp releases the page when its units are done, and the op's
  // epilogue (finish) runs once per op, after every page. (Tried: a warp walking four
  // units at once, loads and reductions interleaved: slower, 448 vs 720 tokens/s.)
  __device__ void page(const OpUnits& ou, int rows, float* dst) {
    const uint32_t slot = cur.slot;
#ifdef BW_STACK_TRACE
    const long long t0 = clock64();
#endif
    mbar_wait(full + 8 * slot, cur.phase);
#ifdef BW_STACK_TRACE
    const long long t1 = clock64();
#endif
    const uint4* pg = reinterpret_cast<const uint4*>(ring + static_cast<int64_t>(slot) * p.page_bytes);
    const uint4* xv = reinterpret_cast<const uint4*>(scratch);
    const int last = debug_skips_arithmetic(a.debug) ? 0 : rows;
    for (int row = ou.row0; row < last; row += ou.row_step) {
      const uint4* wr = pg + static_cast<int64_t>(row) * ou.chunks;
      float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll 4
      for (int c = ou.c0 + lane; c < ou.c1; c += 32)
        dot8(wr[c], xv[c], sum0, sum1);
      const float sum = warp_sum(sum0 + sum1);
      if (lane == 0) dst[row * ou.S + ou.slice] = sum;
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(empty + 8 * slot);
    cur.advance(p.pages);
#ifdef BW_STACK_TRACE
    if (blockIdx.x == 0 && lane == 0 && g_trace_op[warp] != kTraceNone) {
      const int op = g_trace_op[warp];
      const long long t2 = clock64();
      if (g_page_count[op][warp] > 0) g_page_gap[op][warp] += t0 - g_op_end[op][warp];  // since the op's last page
      g_page_wait[op][warp] += t1 - t0;
      g_page_work[op][warp] += t2 - t1;
      ++g_page_count[op][warp];
      g_op_end[op][warp] = t2;
    }
#endif
  }

  // After an op's pages: epi(i, sum of row i) for the CTA's `count` rows.
  template <typename Epi>
  __device__ void finish(int64_t count, int S, Epi&& epi) const {
    consumer_sync();
    for (int64_t i = tid; i < count; i += kConsumerThreads) {
      float sum = 0.0f;
      for (int j = 0; j < S; ++j)
        sum += acc[i * S + j];
      epi(i, sum);
    }
  }
};

#endif  // BW_WGMMA

}  // namespace bw::cuda::decoder_stack
