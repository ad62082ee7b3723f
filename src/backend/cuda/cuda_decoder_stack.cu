// A whole batch-1 decode step of a dense decoder (every layer, the final norm and the LM
// head) in one persistent kernel: the Hopper path of Backend::decoder_stack.
//
// Why: at batch 1 each layer is a chain of small ops. Run as separate kernels (even fused
// and graph-replayed), every op boundary drains the GPU's loads and refills them, and the
// latency-bound ops between the projections (attention, norms) leave HBM idle: the 1.5B
// step reached 47% of the weight-streaming roofline that way, its small projections at
// 1.0-2.3 TB/s. Here one CTA per SM lives for the whole step, and its weights never wait
// for its data: a producer thread streams the CTA's share of every weight matrix, in the
// order the step uses them, into a ring of shared-memory pages with bulk copies (TMA, one
// per page, L2 evict-first), while eight consumer warps wait for the activations the next
// op needs and then compute from whatever pages have landed. The ring (8 pages of 24 KiB
// per SM for the 1.5B shape, 5 of 37 KiB for the 7B: ~25 MB on the GPU) keeps HBM busy
// for ~6 us across a wait.
//
// Measured on an H200 (docs/PERF.md): 1.5B 719 vs 642 tokens/s op by op, 7B 255 vs 240.
// The weight stream alone (BW_CUDA_STACK_DEBUG=3) runs the 1.5B step at 1,284 tokens/s
// (94% of the roofline); what is left is latency the ring does not cover: each op waits
// for every CTA (a release, an acquire poll and a reload of the activations: ~3 us under
// a saturated L2), the attention step ~10 us, and pages of many short rows cost the
// consumers about as long as HBM takes to deliver them. Measurement aids (wrong results):
// BW_CUDA_STACK_DEBUG=1 skips the attention, 2 also every wait, 3 also the arithmetic;
// BW_CUDA_STACK_PAGE_KB sets the page size; building with BW_STACK_TRACE defined and
// running with BW_CUDA_STACK_DEBUG=9 prints the cycles between the steps of a layer.
//
// The work of each op is split statically: CTA c owns rows [c N / G, (c + 1) N / G) of
// every projection (G CTAs), so its share of a matrix is one contiguous byte range and a
// page holds whole rows. Ops that need all of the previous op's output wait on per-layer
// arrival counters in global memory (release / acquire), which the last CTA to leave the
// kernel zeroes again (no memset per step):
//   QKV  rms_norm(residual) (each CTA normalises the whole row itself) @ Wqkv + bias
//   ATTN one work item per (KV head, split of the context): RoPE on q (and on the new k,
//        written to its cache slot with v by the item holding the last position), online
//        softmax over the item's keys, a partial result; the last item of a KV head to
//        arrive merges the partials into the attention output.
//   O    residual += attn @ Wo
//   GU   act = silu(rms_norm(residual) @ Wgate) * (... @ Wup); gate and up pages of the
//        same rows alternate in the ring
//   DOWN residual += act @ Wdown
//   then rms_norm(residual) @ Wlm_head -> f32 logits.
// Each value is rounded where the separate ops round it (every op's output is stored in
// bf16), so the step computes what the per-op path computes, up to the order of f32 sums.
//
// Requirements (decoder_stack_supported): bf16 weights, activations and cache, head_dim 64
// or 128, at most 8 query heads per KV head, sizes that keep rows 16-byte aligned, and a
// device that runs sm_90a code (bulk copies and mbarrier transaction counts).
#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_wgmma.cuh"

namespace bw::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kConsumerWarps = 8;
constexpr int kConsumerThreads = kConsumerWarps * 32;
constexpr int kThreads = kConsumerThreads + 32;  // + the producer warp
constexpr int kMaxGroup = 8;                     // query heads per KV head
constexpr int kMaxNormChunks = 4;                // 16-byte chunks per thread of a normed row
constexpr int kMaxSharedBytes = 226 * 1024;      // of the 227 KiB a CTA may have, 1 KiB left for static shared memory
constexpr int kTargetPageBytes = 24 * 1024;      // measured: 24 KiB 720 tokens/s (1.5B), 36 KiB 642
constexpr int kMaxPages = 16;                    // mbarrier pairs reserved in shared memory

// Arrival counters of a layer: how many CTAs finished each op (kAttnDone: KV heads merged),
// then one per KV head counting its finished attention items.
enum Counter : int { kQkvDone, kAttnDone, kODone, kGateUpDone, kDownDone, kFixedCounters };

// Sizes the launcher derives from the shapes and the kernel re-reads (passed by value).
struct Plan {
  int pages = 0, page_bytes = 0;
  int rows_h = 0, rows_q = 0, rows_f = 0;  // rows of one page for K = hidden, Hq * D, F
  int scratch_bytes = 0;                   // activations (bf16) or attention scratch (f32)
  int acc_floats = 0;                      // an op's row sums: [2][most rows a CTA owns][8 slices]
  int max_splits = 0;                      // attention items per KV head at most
  int counters_per_layer = 0;
  int own_floats = 0;  // the CTA's rows of the residual stream (even, for alignment)
};

// Slices of a row that the warps share: pages of few long rows give every warp a part,
// and rows that do not divide among the warps are halved.
__host__ __device__ constexpr int slices_for(int rows) {
  if (rows < kConsumerWarps) return kConsumerWarps / rows;
  return rows % kConsumerWarps == 0 ? 1 : 2;  // 12 rows: 24 units, 3 per warp
}

int64_t counters_per_layer(const DecoderStackArgs& a) { return kFixedCounters + a.num_kv_heads; }

#ifdef BW_WGMMA
constexpr int kKeysPerItem = 16;  // the fewest keys an attention work item takes
constexpr float kLog2e = 1.4426950408889634f;

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

// The pages of one projection, in ring order (PageWalk's): fn(row - r0, rows) for each
// page of the CTA's rows [r0, r1) (R per page). Returns r0.
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

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The ring position of a page: its slot and the parity of the slot's current use.
// Advanced incrementally (a division per page costs the single producer thread more
// than the page's copy takes to issue).
struct RingCursor {
  uint32_t slot = 0, phase = 0;
  __device__ void advance(int pages) {
    if (++slot == static_cast<uint32_t>(pages)) slot = 0, phase ^= 1;
  }
};

// The producer (one thread): every page of the step, in the consumers' order (consume()
// walks the same pages with walk_rows / walk_gate_up), as one bulk copy each. The index
// arithmetic stays out of the per-page path: it runs at the rate of HBM, alone.
__device__ void produce(const DecoderStackArgs& a, const Plan& p, uint32_t ring, uint32_t full, uint32_t empty) {
  uint64_t policy = 0;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  RingCursor cur;
  uint32_t issued = 0;
  auto push = [&](const char* src, uint32_t bytes) {
    if (issued >= static_cast<uint32_t>(p.pages)) mbar_wait(empty + 8 * cur.slot, cur.phase ^ 1);
    mbar_expect_tx(full + 8 * cur.slot, bytes);
    bulk_load(ring + cur.slot * p.page_bytes, src, bytes, full + 8 * cur.slot, policy);
    cur.advance(p.pages);
    ++issued;
  };
  // The CTA's rows of a [n, k] matrix, R rows per page.
  auto push_rows = [&](const void* w, int64_t n, int64_t k, int R) {
    int64_t r0 = 0, r1 = 0;
    cta_rows(n, &r0, &r1);
    const char* src = reinterpret_cast<const char*>(as_bf16(w) + r0 * k);
    const int64_t page = static_cast<int64_t>(R) * k * 2;
    for (int64_t left = (r1 - r0) * k * 2; left > 0; left -= page, src += page)
      push(src, static_cast<uint32_t>(min(page, left)));
  };
  const int64_t H = a.hidden, F = a.intermediate, HqD = static_cast<int64_t>(a.num_heads) * a.head_dim;
  const int64_t qkv_rows = static_cast<int64_t>(a.num_heads + 2 * a.num_kv_heads) * a.head_dim;
  int64_t u0 = 0, u1 = 0;
  cta_rows(F, &u0, &u1);
  const int64_t gu_page = static_cast<int64_t>(p.rows_h) * H * 2, up_offset = F * H * 2;
  for (int l = 0; l < a.num_layers; ++l) {
    const DecoderStackLayer& w = a.layers[l];
    push_rows(w.qkv, qkv_rows, H, p.rows_h);
    push_rows(w.o_proj, H, HqD, p.rows_q);
    const char* gate = reinterpret_cast<const char*>(as_bf16(w.gate_up) + u0 * H);
    for (int64_t left = (u1 - u0) * H * 2; left > 0; left -= gu_page, gate += gu_page) {
      const auto bytes = static_cast<uint32_t>(min(gu_page, left));
      push(gate, bytes);
      push(gate + up_offset, bytes);
    }
    push_rows(w.down, H, F, p.rows_f);
  }
  push_rows(a.lm_head, a.vocab, H, p.rows_h);
}

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

  __device__ int* layer_counters(int l) const { return counters + static_cast<int64_t>(l) * p.counters_per_layer; }

  // Every CTA has bumped *ctr to target (thread 0 spins, then the others pass the barrier).
  __device__ void wait_for(const int* ctr, int target) const {
    if (a.debug == 2 || a.debug == 3) return;
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

  // The next ring page: `rows` rows of K = k dotted with x, each split into S slices
  // (warps take (row, slice) units); dst[row * S + slice] <- the slice's sum (lane 0 of
  // the warp). No barrier: a warp releases the page when its units are done, and the op's
  // epilogue (finish) runs once per op, after every page. (Tried: a warp walking four
  // units at once, loads and reductions interleaved: slower, 448 vs 720 tokens/s.)
  __device__ void page(int64_t k, int rows, int S, float* dst) {
    const uint32_t slot = cur.slot;
    mbar_wait(full + 8 * slot, cur.phase);
    const uint4* pg = reinterpret_cast<const uint4*>(ring + static_cast<int64_t>(slot) * p.page_bytes);
    const uint4* xv = reinterpret_cast<const uint4*>(scratch);
    const int units = a.debug == 3 ? 0 : rows * S;
    const int chunks = static_cast<int>(k / 8);
    for (int u = warp; u < units; u += kConsumerWarps) {
      const int row = u / S, slice = u % S;
      const int c0 = slice * chunks / S, c1 = (slice + 1) * chunks / S;
      const uint4* wr = pg + static_cast<int64_t>(row) * chunks;
      float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll 4
      for (int c = c0 + lane; c < c1; c += 32)
        dot8(wr[c], xv[c], sum0, sum1);
      const float sum = warp_sum(sum0 + sum1);
      if (lane == 0) dst[u] = sum;
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(empty + 8 * slot);
    cur.advance(p.pages);
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

// cosf / sinf out of line, as the rope kernels compute them (inlined, their large-angle
// path's local array spills).
__device__ __noinline__ float2 stack_cos_sin(float angle) { return make_float2(cosf(angle), sinf(angle)); }

// RoPE of the pair x1 = v[j], x2 = v[j + D/2] by the angle whose cos and sin are cs,
// rounded to bf16 as rope_write_kv rounds.
__device__ __forceinline__ float2 rotate(float x1, float x2, float2 cs) {
  const float y1 = __fsub_rn(__fmul_rn(x1, cs.x), __fmul_rn(x2, cs.y));
  const float y2 = __fadd_rn(__fmul_rn(x2, cs.x), __fmul_rn(x1, cs.y));
  return make_float2(round_bf16(y1), round_bf16(y2));
}

// The attention op of layer l (see the file comment), in two parts: plan() before the
// wait for the QKV projection (what the CTA's item is, and the loads of its first cached
// keys, which this step does not write), run() after it.
template <int D>
struct Attention {
  static constexpr int E = D / 32;      // head dims per lane
  static constexpr int kEarlyKeys = 2;  // keys per warp loaded before the wait
  Consumer& c;
  int layer;
  int L = 0, splits = 0, g = 0, s = 0, p0 = 0, p1 = 0;
  bool valid = false, has_item = false;
  uint32_t kraw[kEarlyKeys][E / 2], vraw[kEarlyKeys][E / 2];  // bf16 pairs: fewer registers
  bool early_ok[kEarlyKeys];

  __device__ Attention(Consumer& consumer, int l) : c(consumer), layer(l) {}

  // The raw K and V rows (this lane's E dims, as bf16 pairs) of cached key `key`; false
  // for a bad block id.
  __device__ bool load_key(int key, uint32_t (&k)[E / 2], uint32_t (&v)[E / 2]) const {
    const DecoderStackArgs& a = c.a;
    const DecoderStackLayer& w = a.layers[layer];
    const int32_t blk = a.block_tables[key / a.block_size];
    if (blk < 0 || blk >= a.num_blocks) return false;
    const int64_t at =
        ((static_cast<int64_t>(blk) * a.block_size + key % a.block_size) * a.num_kv_heads + g) * D + c.lane * E;
    const bf16* kc = static_cast<const bf16*>(w.k_cache) + at;
    const bf16* vc = static_cast<const bf16*>(w.v_cache) + at;
    if constexpr (E == 4) {
      const uint2 kr = __ldcg(reinterpret_cast<const uint2*>(kc));
      const uint2 vr = __ldcg(reinterpret_cast<const uint2*>(vc));
      k[0] = kr.x, k[1] = kr.y, v[0] = vr.x, v[1] = vr.y;
    } else {
      k[0] = __ldcg(reinterpret_cast<const unsigned int*>(kc));
      v[0] = __ldcg(reinterpret_cast<const unsigned int*>(vc));
    }
    return true;
  }
  static __device__ void unpack(const uint32_t (&raw)[E / 2], float (&f)[E]) {
#pragma unroll
    for (int i = 0; i < E / 2; ++i)
      f[2 * i] = bf16_lo(raw[i]), f[2 * i + 1] = bf16_hi(raw[i]);
  }

  // Splits: as many as give every item kKeysPerItem keys, at most p.max_splits per KV
  // head (so a CTA has one item at most).
  __device__ void plan() {
    const DecoderStackArgs& a = c.a;
    L = a.kv_lens[0];
    valid = L >= 1 && L <= static_cast<int64_t>(a.table_width) * a.block_size;
    if (!valid) return;
    splits = min(c.p.max_splits, (L + kKeysPerItem - 1) / kKeysPerItem);
    const int item = static_cast<int>(blockIdx.x);
    has_item = item < a.num_kv_heads * splits;
    if (!has_item) return;
    g = item / splits, s = item % splits;
    const int chunk = (L + splits - 1) / splits;
    p0 = s * chunk, p1 = min(L, p0 + chunk);
#pragma unroll
    for (int j = 0; j < kEarlyKeys; ++j) {
      const int key = p0 + c.warp + j * kConsumerWarps;
      early_ok[j] = key < p1 && key != L - 1 && load_key(key, kraw[j], vraw[j]);
    }
  }

  __device__ void run() {
    const DecoderStackArgs& a = c.a;
    const int Hq = a.num_heads, Hkv = a.num_kv_heads, Q = Hq / Hkv;
    int* ctr = c.layer_counters(layer);
    bf16* attn_out = static_cast<bf16*>(a.attn_out);
    if (!valid) {
      // Nothing to attend to: zeros, and the step goes on (the backend reports the error).
      if (blockIdx.x == 0 && c.tid == 0) report_error(a.error_flag, kBadSequence);
      if (static_cast<int>(blockIdx.x) < Hkv) {
        for (int i = c.tid; i < Q * D; i += kConsumerThreads)
          attn_out[static_cast<int64_t>(blockIdx.x) * Q * D + i] = __float2bfloat16_rn(0.0f);
        c.arrive(ctr + kAttnDone);
      }
      return;
    }
    if (!has_item) return;
    const int32_t pos = a.positions[0], slot = a.slots[0];
    const int64_t num_slots = a.num_blocks * a.block_size;
    const DecoderStackLayer& w = a.layers[layer];
    const int item = static_cast<int>(blockIdx.x);

    // Shared scratch: q [Q][D] (scaled), this token's k and v, the warps' states, the
    // split weights.
    float* q_s = reinterpret_cast<float*>(c.scratch);
    float* knew_s = q_s + Q * D;
    float* vnew_s = knew_s + D;
    float* m_s = vnew_s + D;                     // [warps][Q]
    float* l_s = m_s + kConsumerWarps * Q;       // [warps][Q]
    float* o_s = l_s + kConsumerWarps * Q;       // [warps][Q][D]
    float* wt_s = o_s + kConsumerWarps * Q * D;  // [Q][max_splits]
    __shared__ int last_s;

    const bf16* qkv = static_cast<const bf16*>(a.qkv);
    const float q_scale = a.scale * kLog2e;
    if (pos < 0 && item == 0 && c.tid == 0) report_error(a.error_flag, kBadPosition);
    // The item holding the last position also takes this token's k (rotated) and v from
    // the QKV row (into shared memory, for its own loop) and writes them to the cache
    // slot. Every load first, then the math: one round trip through a busy L2, not four.
    const bool has_new = p0 <= L - 1 && L - 1 < p1;
    const bf16* kh = qkv + static_cast<int64_t>(Hq + g) * D;
    const bf16* vh = qkv + static_cast<int64_t>(Hq + Hkv + g) * D;
    constexpr int kQPairs = (kMaxGroup * D / 2 + kConsumerThreads - 1) / kConsumerThreads;
    static_assert(kConsumerThreads % (D / 2) == 0, "a thread rotates one dimension pair index");
    // (The call first, while few registers are live: it is out of line.)
    const float2 cs = pos >= 0 ? stack_cos_sin(__fmul_rn(static_cast<float>(pos), a.inv_freq[c.tid % (D / 2)]))
                               : make_float2(1.0f, 0.0f);
    bf16 q1[kQPairs], q2[kQPairs], k1 = {}, k2 = {}, vv = {};
#pragma unroll
    for (int j = 0; j < kQPairs; ++j) {
      const int i = c.tid + j * kConsumerThreads;
      if (i < Q * (D / 2)) {
        const bf16* qh = qkv + static_cast<int64_t>(g * Q + i / (D / 2)) * D + i % (D / 2);
        q1[j] = __ldcg(qh), q2[j] = __ldcg(qh + D / 2);
      }
    }
    if (has_new && c.tid < D / 2) k1 = __ldcg(kh + c.tid), k2 = __ldcg(kh + c.tid + D / 2);
    if (has_new && c.tid < D) vv = __ldcg(vh + c.tid);
#pragma unroll
    for (int j = 0; j < kQPairs; ++j) {
      const int i = c.tid + j * kConsumerThreads;
      if (i >= Q * (D / 2)) break;
      const int h = i / (D / 2), jj = i % (D / 2);
      float2 y = make_float2(__bfloat162float(q1[j]), __bfloat162float(q2[j]));
      if (pos >= 0) y = rotate(y.x, y.y, cs);
      q_s[h * D + jj] = y.x * q_scale;
      q_s[h * D + jj + D / 2] = y.y * q_scale;
    }
    if (has_new) {
      const bool write = pos >= 0 && slot >= 0 && slot < num_slots;
      if (c.tid == 0 && (slot < -1 || slot >= num_slots)) report_error(a.error_flag, kBadSlot);
      bf16* kc = static_cast<bf16*>(w.k_cache) + (static_cast<int64_t>(slot) * Hkv + g) * D;
      bf16* vc = static_cast<bf16*>(w.v_cache) + (static_cast<int64_t>(slot) * Hkv + g) * D;
      if (c.tid < D / 2) {
        float2 y = make_float2(__bfloat162float(k1), __bfloat162float(k2));
        if (pos >= 0) y = rotate(y.x, y.y, cs);
        knew_s[c.tid] = y.x, knew_s[c.tid + D / 2] = y.y;
        if (write) kc[c.tid] = __float2bfloat16_rn(y.x), kc[c.tid + D / 2] = __float2bfloat16_rn(y.y);
      }
      if (c.tid < D) {
        vnew_s[c.tid] = __bfloat162float(vv);
        if (write) vc[c.tid] = vv;
      }
    }
    consumer_sync();

    // Each warp: keys p0 + warp, p0 + warp + 8, ...; a lane holds E dims of every row.
    float q[kMaxGroup][E], o[kMaxGroup][E], m[kMaxGroup], lsum[kMaxGroup];
#pragma unroll
    for (int h = 0; h < kMaxGroup; ++h) {
      m[h] = -INFINITY, lsum[h] = 0.0f;
#pragma unroll
      for (int e = 0; e < E; ++e)
        q[h][e] = h < Q ? q_s[h * D + c.lane * E + e] : 0.0f, o[h][e] = 0.0f;
    }
    auto score = [&](const float(&k)[E], const float(&v)[E]) {
#pragma unroll
      for (int h = 0; h < kMaxGroup; ++h) {
        if (h >= Q) break;
        float sc = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e)
          sc = fmaf(q[h][e], k[e], sc);
        sc = warp_sum(sc);
        const float mn = fmaxf(m[h], sc);
        const float corr = exp2f(m[h] - mn), pr = exp2f(sc - mn);
        lsum[h] = fmaf(lsum[h], corr, pr);
#pragma unroll
        for (int e = 0; e < E; ++e)
          o[h][e] = fmaf(o[h][e], corr, pr * v[e]);
        m[h] = mn;
      }
    };
    auto new_key = [&]() {
      float k[E], v[E];
#pragma unroll
      for (int e = 0; e < E; ++e)
        k[e] = knew_s[c.lane * E + e], v[e] = vnew_s[c.lane * E + e];
      score(k, v);
    };
    // The keys loaded before the wait (static indices: they stay in registers), then the rest.
#pragma unroll
    for (int j = 0; j < kEarlyKeys; ++j) {
      const int key = p0 + c.warp + j * kConsumerWarps;
      if (key >= p1) break;
      if (key == L - 1) {
        new_key();
      } else if (early_ok[j]) {
        float k[E], v[E];
        unpack(kraw[j], k);
        unpack(vraw[j], v);
        score(k, v);
      } else if (c.lane == 0) {
        report_error(a.error_flag, kBadBlockId);
      }
    }
    for (int key = p0 + c.warp + kEarlyKeys * kConsumerWarps; key < p1; key += kConsumerWarps) {
      uint32_t kr[E / 2], vr[E / 2];
      if (key == L - 1) {
        new_key();
      } else if (load_key(key, kr, vr)) {
        float k[E], v[E];
        unpack(kr, k);
        unpack(vr, v);
        score(k, v);
      } else if (c.lane == 0) {
        report_error(a.error_flag, kBadBlockId);
      }
    }
#pragma unroll
    for (int h = 0; h < kMaxGroup; ++h) {
      if (h >= Q) break;
      if (c.lane == 0) m_s[c.warp * Q + h] = m[h], l_s[c.warp * Q + h] = lsum[h];
#pragma unroll
      for (int e = 0; e < E; ++e)
        o_s[(c.warp * Q + h) * D + c.lane * E + e] = o[h][e];
    }
    consumer_sync();
    // The item's partial result per head: (unnormalised output, max, sum).
    const int stride = D + 4;  // (16-byte aligned rows: the merge reads float4)
    for (int i = c.tid; i < Q * D; i += kConsumerThreads) {
      const int h = i / D, d = i % D;
      float M = -INFINITY;
#pragma unroll
      for (int wi = 0; wi < kConsumerWarps; ++wi)
        M = fmaxf(M, m_s[wi * Q + h]);
      float O = 0.0f, Ls = 0.0f;
      if (M != -INFINITY) {
#pragma unroll
        for (int wi = 0; wi < kConsumerWarps; ++wi) {
          const float f = exp2f(m_s[wi * Q + h] - M);
          O = fmaf(o_s[(wi * Q + h) * D + d], f, O);
          Ls = fmaf(l_s[wi * Q + h], f, Ls);
        }
      }
      float* part = a.partials + (static_cast<int64_t>(g * Q + h) * c.p.max_splits + s) * stride;
      part[d] = O;
      if (d == 0) part[D] = M, part[D + 1] = Ls;
    }
    consumer_sync();
    if (c.tid == 0) {
      int before;
      asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;\n"
                   : "=r"(before)
                   : "l"(ctr + kFixedCounters + g)
                   : "memory");
      last_s = before == splits - 1;
    }
    consumer_sync();
    if (!last_s) return;

    // The last item of KV head g: weigh the splits (a warp per head: one pass over the
    // partials' (max, sum) into shared memory), then sum the outputs.
    for (int h = c.warp; h < Q; h += kConsumerWarps) {
      const float* part = a.partials + static_cast<int64_t>(g * Q + h) * c.p.max_splits * stride;
      float* wt = wt_s + h * c.p.max_splits;
      float M = -INFINITY;
      for (int sp = c.lane; sp < splits; sp += 32) {
        const float ms = __ldcg(part + sp * stride + D), ls = __ldcg(part + sp * stride + D + 1);
        wt[sp] = ms;
        o_s[h * c.p.max_splits + sp] = ls;  // the warps' states are merged: reuse their space
        M = fmaxf(M, ms);
      }
      M = warp_max(M);
      float Ls = 0.0f;
      for (int sp = c.lane; sp < splits; sp += 32) {
        const float f = wt[sp] == -INFINITY ? 0.0f : exp2f(wt[sp] - M);
        wt[sp] = f;
        Ls = fmaf(o_s[h * c.p.max_splits + sp], f, Ls);
      }
      Ls = warp_sum(Ls);
      const float inv = Ls > 0.0f ? 1.0f / Ls : 0.0f;
      for (int sp = c.lane; sp < splits; sp += 32)
        wt[sp] *= inv;
    }
    consumer_sync();
    // Four dims per thread; four splits' loads in flight at a time (each is a round trip
    // through an L2 busy with the weight stream).
    for (int i = c.tid; i < Q * D / 4; i += kConsumerThreads) {
      const int h = i / (D / 4), d = i % (D / 4) * 4;
      const float* part = a.partials + static_cast<int64_t>(g * Q + h) * c.p.max_splits * stride + d;
      float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
      for (int sp = 0; sp < splits; ++sp) {
        const float4 o4 = __ldcg(reinterpret_cast<const float4*>(part + sp * stride));
        const float wgt = wt_s[h * c.p.max_splits + sp];
        sum.x = fmaf(wgt, o4.x, sum.x), sum.y = fmaf(wgt, o4.y, sum.y);
        sum.z = fmaf(wgt, o4.z, sum.z), sum.w = fmaf(wgt, o4.w, sum.w);
      }
      bf16* out = attn_out + static_cast<int64_t>(g * Q + h) * D + d;
      out[0] = __float2bfloat16_rn(sum.x), out[1] = __float2bfloat16_rn(sum.y);
      out[2] = __float2bfloat16_rn(sum.z), out[3] = __float2bfloat16_rn(sum.w);
    }
    c.arrive(ctr + kAttnDone);
  }
};

template <int D>
__device__ void consume(Consumer& c) {
  const DecoderStackArgs& a = c.a;
  const Plan& p = c.p;
  const int G = static_cast<int>(gridDim.x);
  const int64_t H = a.hidden, F = a.intermediate, HqD = static_cast<int64_t>(a.num_heads) * D;
  const int64_t qkv_rows = static_cast<int64_t>(a.num_heads + 2 * a.num_kv_heads) * D;
  bf16* residual = static_cast<bf16*>(a.residual);
  bf16* qkv = static_cast<bf16*>(a.qkv);
  bf16* act = static_cast<bf16*>(a.act);
  // Slices per row of each op (from its rows per page; a short last page keeps them).
  const int s_h = slices_for(p.rows_h), s_q = slices_for(p.rows_q), s_f = slices_for(p.rows_f);
  // The CTA's rows of the residual stream (the o and down projections own the same rows)
  // live in shared memory too: their epilogue adds to them without a round trip to L2,
  // and stores the new values for the other CTAs' norms.
  const int64_t r0 = cta_first(H), owned = cta_count(H);
  for (int64_t i = c.tid; i < owned; i += kConsumerThreads)
    c.own[i] = __bfloat162float(__ldcg(residual + r0 + i));
  auto add_to_residual = [&](int64_t i, float s) {
    const float v = round_bf16(c.own[i] + round_bf16(s));
    c.own[i] = v;
    residual[r0 + i] = __float2bfloat16_rn(v);
  };
  // residual += x @ W^T for the CTA's rows (the o and down projections; the producer
  // streams W), x = src[0, k) once *ready reaches target; then *done is bumped.
  auto residual_projection = [&](const int* ready, int target, const void* src, int64_t k, int R, int S, int* done) {
    c.wait_for(ready, target);
    c.load_x(src, k);
    walk_rows(H, R, [&](int64_t i, int rows) { c.page(k, rows, S, c.acc + i * S); });
    c.finish(owned, S, add_to_residual);
    c.arrive(done);
  };
  float* second_half = c.acc + p.acc_floats / 2;  // QKV: the biases; gate/up: the up sums
  // BW_STACK_TRACE builds (a measurement aid; it costs registers): cycles between the
  // steps of layer 5 on CTA 0, printed at the end of every step with BW_CUDA_STACK_DEBUG=9.
#ifdef BW_STACK_TRACE
  const bool trace_cta = a.debug == 9 && blockIdx.x == 0 && c.tid == 0;
  __shared__ long long t[12];
#define STAMP(i) \
  if (trace_cta && l == 5) t[i] = clock64();
#else
#define STAMP(i)
#endif
  for (int l = 0; l < a.num_layers; ++l) {
    const DecoderStackLayer& w = a.layers[l];
    int* ctr = c.layer_counters(l);
    STAMP(0);
    const int64_t q0 = cta_first(qkv_rows), q_count = cta_count(qkv_rows);
    const bf16* bias = as_bf16(w.qkv_bias);
    for (int64_t i = c.tid; i < q_count; i += kConsumerThreads)
      second_half[i] = bias != nullptr ? __bfloat162float(bias[q0 + i]) : 0.0f;
    if (l > 0) c.wait_for(c.layer_counters(l - 1) + kDownDone, G);
    STAMP(1);
    c.load_normed_x(a.residual, H, w.attn_norm, a.eps);
    STAMP(2);
    walk_rows(qkv_rows, p.rows_h, [&](int64_t i, int rows) { c.page(H, rows, s_h, c.acc + i * s_h); });
    STAMP(3);
    c.finish(q_count, s_h, [&](int64_t i, float s) { qkv[q0 + i] = __float2bfloat16_rn(s + second_half[i]); });
    c.arrive(ctr + kQkvDone);
    STAMP(4);

    Attention<D> attn(c, l);
    const bool skip_attention = a.debug >= 1 && a.debug <= 3;
    if (!skip_attention) attn.plan();
    c.wait_for(ctr + kQkvDone, G);
    STAMP(5);
    if (!skip_attention) {
      attn.run();
    } else if (static_cast<int>(blockIdx.x) < a.num_kv_heads) {
      c.arrive(ctr + kAttnDone);
    }
    STAMP(6);

    residual_projection(ctr + kAttnDone, a.num_kv_heads, a.attn_out, HqD, p.rows_q, s_q, ctr + kODone);
    STAMP(7);

    c.wait_for(ctr + kODone, G);
    c.load_normed_x(a.residual, H, w.ffn_norm, a.eps);
    STAMP(8);
    const int64_t u0 = walk_gate_up(F, p.rows_h, [&](int64_t i, int rows, bool is_up) {
      c.page(H, rows, s_h, (is_up ? second_half : c.acc) + i * s_h);
    });
    STAMP(9);
    c.finish(cta_count(F), s_h, [&](int64_t i, float g) {
      float u = 0.0f;
      for (int j = 0; j < s_h; ++j)
        u += second_half[i * s_h + j];
      g = round_bf16(g);
      act[u0 + i] = __float2bfloat16_rn(g / (1.0f + expf(-g)) * round_bf16(u));
    });
    c.arrive(ctr + kGateUpDone);
    STAMP(10);
    residual_projection(ctr + kGateUpDone, G, a.act, F, p.rows_f, s_f, ctr + kDownDone);
    STAMP(11);
  }
  c.wait_for(c.layer_counters(a.num_layers - 1) + kDownDone, G);
  c.load_normed_x(a.residual, H, a.final_norm, a.eps);
  // The LM head's rows are many: each warp sums whole rows straight into the logits.
  int64_t v0 = 0, v1 = 0;
  cta_rows(a.vocab, &v0, &v1);
  walk_rows(a.vocab, p.rows_h, [&](int64_t i, int rows) { c.page(H, rows, 1, a.logits + v0 + i); });

#ifdef BW_STACK_TRACE
  if (trace_cta) {
    printf("stack trace (cycles, layer 5, CTA 0):");
    for (int i = 1; i < 12; ++i)
      printf(" %lld", t[i] - t[i - 1]);
    printf("\n");
  }
#endif
#undef STAMP
  // The last CTA out zeroes the counters for the next step (every other CTA has passed
  // all of its waits by the time it arrives here).
  consumer_sync();
  if (c.tid == 0) {
    int* exit_ctr = c.counters + static_cast<int64_t>(a.num_layers) * p.counters_per_layer;
    __threadfence();
    if (atomicAdd(exit_ctr, 1) == G - 1) {
      for (int64_t i = 0; i <= static_cast<int64_t>(a.num_layers) * p.counters_per_layer; ++i)
        c.counters[i] = 0;
      __threadfence();
    }
  }
}
#endif  // BW_WGMMA

// Nine warps: one SM sub-partition runs three of them, which caps registers at 168 (the
// attention step spills a few bytes at head_dim 128).
template <int D>
__global__ void __launch_bounds__(kThreads, 1) decoder_stack_kernel(DecoderStackArgs a, Plan p) {
#ifdef BW_WGMMA
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* ring = smem;
  unsigned char* scratch = ring + static_cast<int64_t>(p.pages) * p.page_bytes;
  float* acc = reinterpret_cast<float*>(scratch + p.scratch_bytes);
  float* red = acc + p.acc_floats;
  auto* bars = reinterpret_cast<uint64_t*>(red + kConsumerWarps + p.own_floats);
  const uint32_t full = smem_addr(bars), empty = smem_addr(bars + p.pages);
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  if (tid == 0) {
    for (int i = 0; i < p.pages; ++i) {
      mbar_init(full + 8 * i, 1);
      mbar_init(empty + 8 * i, kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;\n" ::: "memory");
  }
  __syncthreads();
  if (warp == kConsumerWarps) {
    // Weights: no earlier kernel writes them, so the stream starts before pdl_wait.
    if (lane == 0) produce(a, p, smem_addr(ring), full, empty);
    return;
  }
  pdl_wait();  // the residual (the embedding) comes from the previous kernel
  Consumer c{a,   p,    ring, full, empty, scratch, acc, red, red + kConsumerWarps, a.counters, RingCursor{},
             tid, warp, lane};
  consume<D>(c);
#else
  (void)a;
  (void)p;
#endif
}

std::atomic<int64_t> g_launches{0};

Plan make_plan(const DecoderStackArgs& a, int num_sms) {
  Plan p;
  const int64_t H = a.hidden, F = a.intermediate, HqD = static_cast<int64_t>(a.num_heads) * a.head_dim;
  const int64_t longest = std::max({H, F, HqD});
  const char* page_kb = std::getenv("BW_CUDA_STACK_PAGE_KB");
  const int64_t target = page_kb != nullptr ? std::atoi(page_kb) * 1024 : kTargetPageBytes;
  p.page_bytes = static_cast<int>(std::max<int64_t>(target, 2 * longest));
  auto rows_for = [&](int64_t k) { return static_cast<int>(std::max<int64_t>(1, p.page_bytes / (2 * k))); };
  p.rows_h = rows_for(H), p.rows_q = rows_for(HqD), p.rows_f = rows_for(F);
  // Row sums of an op: the most rows a CTA owns times the slices per row; the gate/up op
  // keeps its up sums in the second half.
  const int64_t qkv_rows = static_cast<int64_t>(a.num_heads + 2 * a.num_kv_heads) * a.head_dim;
  auto per_cta = [&](int64_t n) { return (n + num_sms - 1) / num_sms; };
  p.own_floats = static_cast<int>((per_cta(H) + 1) / 2 * 2);
  const int64_t half = std::max({per_cta(qkv_rows) * slices_for(p.rows_h), per_cta(H) * slices_for(p.rows_q),
                                 per_cta(F) * slices_for(p.rows_h), per_cta(H) * slices_for(p.rows_f)});
  p.acc_floats = static_cast<int>(2 * half);
  p.max_splits = std::max(1, num_sms / std::max(1, a.num_kv_heads));
  const int64_t Q = a.num_kv_heads > 0 ? a.num_heads / a.num_kv_heads : 0;
  const int64_t attn_floats =
      Q * a.head_dim * (1 + kConsumerWarps) + 2 * a.head_dim + 2 * kConsumerWarps * Q + Q * p.max_splits;
  p.scratch_bytes = static_cast<int>((std::max(2 * longest, attn_floats * 4) + 15) / 16 * 16);
  p.counters_per_layer = static_cast<int>(counters_per_layer(a));
  const int64_t fixed = p.scratch_bytes + 4 * (p.acc_floats + kConsumerWarps + p.own_floats) + 16 * kMaxPages;
  p.pages = static_cast<int>(std::min<int64_t>(kMaxPages, (kMaxSharedBytes - fixed) / p.page_bytes));
  return p;
}

int64_t shared_bytes(const Plan& p) {
  return static_cast<int64_t>(p.pages) * p.page_bytes + p.scratch_bytes +
         4 * (p.acc_floats + kConsumerWarps + p.own_floats) + 16 * p.pages;
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <int D>
cudaError_t launch_for(const DecoderStackArgs& a, const Plan& p, int num_sms, cudaStream_t stream) {
  const auto bytes = static_cast<int>(shared_bytes(p));
  const cudaError_t attr =
      cudaFuncSetAttribute(decoder_stack_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (attr != cudaSuccess) return attr;
  launch_kernel(decoder_stack_kernel<D>, dim3(num_sms), dim3(kThreads), bytes, stream, a, p);
  g_launches.fetch_add(1, std::memory_order_relaxed);
  return cudaGetLastError();
}

}  // namespace

bool decoder_stack_supported(const DecoderStackArgs& a, int num_sms) {
  if (a.num_layers < 1 || a.layers == nullptr || num_sms < 1) return false;
  if (a.head_dim != 64 && a.head_dim != 128) return false;
  if (a.num_kv_heads < 1 || a.num_heads % a.num_kv_heads != 0 || a.num_heads / a.num_kv_heads > kMaxGroup) return false;
  if (a.num_kv_heads > num_sms) return false;
  if (a.hidden % 8 != 0 || a.intermediate % 8 != 0 || a.vocab < 1) return false;
  if (a.hidden > 8 * kMaxNormChunks * kConsumerThreads) return false;
  const void* buffers[] = {a.residual, a.qkv, a.attn_out, a.act, a.final_norm, a.lm_head, a.logits};
  for (const void* ptr : buffers)
    if (ptr == nullptr || !aligned16(ptr)) return false;
  const Plan p = make_plan(a, num_sms);
  return p.pages >= 2;
}

int64_t decoder_stack_counters(const DecoderStackArgs& a) { return a.num_layers * counters_per_layer(a) + 1; }

int64_t decoder_stack_partial_floats(const DecoderStackArgs& a, int num_sms) {
  const Plan p = make_plan(a, num_sms);
  return static_cast<int64_t>(a.num_heads) * p.max_splits * (a.head_dim + 4);
}

cudaError_t launch_decoder_stack(const DecoderStackArgs& a, int num_sms, cudaStream_t stream) {
  if (!decoder_stack_supported(a, num_sms)) return cudaErrorInvalidValue;
  const Plan p = make_plan(a, num_sms);
  return a.head_dim == 64 ? launch_for<64>(a, p, num_sms, stream) : launch_for<128>(a, p, num_sms, stream);
}

int64_t decoder_stack_launches() { return g_launches.load(std::memory_order_relaxed); }

}  // namespace bw::cuda
