// Internal to cuda_decoder_stack.cu: the attention step of the fused decoder stack (one
// query token, GQA, split-KV over the paged cache, RoPE and the KV write of the token),
// run by the consumer warps between the QKV and the o projection. Included by that file only.
#pragma once

#include <cmath>

#include "backend/cuda/cuda_decoder_stack_consumer.cuh"

namespace bw::cuda::decoder_stack {

#ifdef BW_WGMMA
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

#ifdef BW_STACK_TRACE
// Trace builds: each CTA's cycle stamps [0, 4] of layer 5's attention step, and at
// [kAttnTraceMerged] whether it merged the splits.
constexpr int kAttnTraceMerged = 5;
__device__ long long g_attn_trace[1024][kAttnTraceMerged + 1];
// ... and per CTA, over its item's tiles: the tiles, then the cycles issuing a tile
// (barriers, the next copies, the slots), waiting for its copies, and scoring it.
__device__ long long g_attn_tiles[1024][4];
#define ATTN_TRACE(i, v) \
  if (layer == 5 && c.tid == 0) g_attn_trace[blockIdx.x][i] = (v);
#define ATTN_CLOCK(t) const long long t = clock64();
// (Summed in registers, stored after the last tile: a read-modify-write of global memory
// per tile held thread 0, and so the next barrier, back by a round trip.)
#define ATTN_TILE(t0, t1, t2, t3) \
  ++tile_cycles[0], tile_cycles[1] += (t1) - (t0), tile_cycles[2] += (t2) - (t1), tile_cycles[3] += (t3) - (t2);
#else
#define ATTN_TRACE(i, v)
#define ATTN_CLOCK(t)
#define ATTN_TILE(t0, t1, t2, t3)
#endif
#define ATTN_STAMP(i) ATTN_TRACE(i, clock64())

// The attention op of layer l (see the file comment), in two parts: plan() before the
// wait for the QKV projection (what the CTA's item is, and the copies of its first tile of
// cached keys into shared memory, which this step does not write), run() after it.
//
// An item walks its keys in tiles of kTileKeys on tensor cores (attend_tile): the group's
// heads are the rows of an m16 tile, so a tile's scores are kSteps mma.sync on each of
// kScoreWarps warps (score_tile) and its weighted sum of the v rows 4-8 per warp.
// History (H200, layer 5 of the 1.5B): a chain of a key after another per warp took
// ~5,400 cycles for 16 keys; a warp per head with a lane per key ~2,400-4,000 for 32;
// tensor cores ~2,200 under the weight stream, every warp scoring all 32 keys; ~1,400-
// 1,800 with the scores split over four warps.
template <int D>
struct Attention {
  static constexpr int kChunks = D / 8;                     // 16-byte chunks of a k or v row
  static constexpr int kSteps = D / 16;                     // k-steps of a score's mma
  static constexpr int kOutTiles = D / kConsumerWarps / 8;  // n-tiles of the output per warp
  static constexpr int kQStride = D + 8;                    // q rows padded: A fragments without bank conflicts
  static_assert(kOutTiles == 1 || kOutTiles == 2, "head_dim 64 or 128");
  static_assert(kTileKeys == 32, "a lane per key: the live keys are one ballot");
  static constexpr int kMergeBatch = 4;  // splits whose partials a merging thread loads at once (x split groups)
  Consumer& c;
  int layer;
  int L = 0, splits = 0, g = 0, s = 0, p0 = 0, p1 = 0;
  bool valid = false, has_item = false;

  __device__ Attention(Consumer& consumer, int l) : c(consumer), layer(l) {}

  // Shared scratch (attention_scratch_bytes): q [kMaxGroup][kQStride] bf16 (rotated, rows
  // past the group zero; in the space of kMaxGroup f32 rows), this token's k and v (f32),
  // the tiles' k and v rows (bf16, tile_at's layout), whether each key's block id was good,
  // the next tile's slots and score_tile's exchange.
  __device__ bf16* q_s() const { return reinterpret_cast<bf16*>(c.scratch); }
  __device__ float* knew_s() const { return reinterpret_cast<float*>(c.scratch) + kMaxGroup * D; }
  __device__ float* vnew_s() const { return knew_s() + D; }
  __device__ bf16* ktile(int b) const { return reinterpret_cast<bf16*>(vnew_s() + D) + b * 2 * kTileKeys * D; }
  __device__ bf16* vtile(int b) const { return ktile(b) + kTileKeys * D; }
  __device__ int* key_ok(int b) const { return reinterpret_cast<int*>(ktile(c.p.tile_buffers)) + b * kTileKeys; }
  __device__ int* next_slots() const { return key_ok(c.p.tile_buffers); }
  __device__ float2* score_parts() const { return reinterpret_cast<float2*>(next_slots() + kTileKeys); }
  // Element (key r, dim d) of a tile (swz's layout: conflict-free ldmatrix).
  __device__ static int tile_at(int r, int d) { return swz<D>(r, d / 8) + d % 8; }

  // A tile's cache slots, in two halves: fetch_block reads the block id of key t0 + tid
  // of a tile of n keys (threads below n) from the block table, and store_slot turns it
  // into the key's slot where load_tile reads it. The loads of a tile's ids go out
  // together a tile ahead, and nothing uses them until store_slot, after this tile is
  // scored: the copies of a tile never wait for them, nor does the tile before. (Each copy
  // read its own block id first: ~6.8k cycles a tile at 32k tokens on the 1.5B; checking
  // the ids as they were fetched still stalled each tile for that round trip.)
  static constexpr int kNewKey = -2;  // the token's own key: fill_new writes it
  __device__ int32_t fetch_block(int t0, int n) const {
    const int key = t0 + c.tid;
    return c.tid < n && key != L - 1 ? c.a.block_tables[key / c.a.block_size] : 0;
  }
  __device__ void store_slot(int32_t blk, int t0, int n) const {
    const DecoderStackArgs& a = c.a;
    const int key = t0 + c.tid;
    if (c.tid >= n) return;
    int slot = kNewKey;
    if (key != L - 1) {
      const bool ok = blk >= 0 && blk < a.num_blocks;
      if (!ok) report_error(a.error_flag, kBadBlockId);
      slot = ok ? blk * a.block_size + key % a.block_size : -1;
    }
    next_slots()[c.tid] = slot;
  }
  // Copies of the cached k and v rows of keys [t0, t0 + n) into tile buffer b (cp.async,
  // one group) from the slots in next_slots(); the token's own key (L - 1, not in the
  // cache yet) is left to fill_new.
  __device__ void load_tile(int n, int b) const {
    const DecoderStackArgs& a = c.a;
    const DecoderStackLayer& w = a.layers[layer];
    const int per_key = 2 * kChunks;
    for (int i = c.tid; i < n * per_key; i += kConsumerThreads) {
      const int r = i / per_key, part = i % per_key, slot = next_slots()[r];
      if (slot == kNewKey) continue;
      const bool ok = slot >= 0;
      if (part == 0) key_ok(b)[r] = ok;
      const bool is_v = part >= kChunks;
      const int chunk = part % kChunks;
      const int64_t at = (static_cast<int64_t>(ok ? slot : 0) * a.num_kv_heads + g) * D;
      const bf16* src = static_cast<const bf16*>(is_v ? w.v_cache : w.k_cache) + at + chunk * 8;
      bf16* dst = (is_v ? vtile(b) : ktile(b)) + tile_at(r, chunk * 8);
      cp_async16(smem_addr(dst), src, ok);
    }
    // The v rows past the keys are zero: P v multiplies them by P = 0, and stale bits could
    // be NaN (0 x NaN = NaN).
    for (int i = c.tid; i < (kTileKeys - n) * kChunks; i += kConsumerThreads)
      *reinterpret_cast<uint4*>(vtile(b) + tile_at(n + i / kChunks, i % kChunks * 8)) = make_uint4(0u, 0u, 0u, 0u);
    cp_async_commit();
  }
  // The token's own k and v into row L - 1 - t0 of the tile, if the tile holds it.
  __device__ void fill_new(int t0, int n, int b) const {
    const int r = L - 1 - t0;
    if (r < 0 || r >= n) return;
    for (int d = c.tid; d < D; d += kConsumerThreads) {
      ktile(b)[tile_at(r, d)] = __float2bfloat16_rn(knew_s()[d]);
      vtile(b)[tile_at(r, d)] = __float2bfloat16_rn(vnew_s()[d]);
    }
    if (c.tid == 0) key_ok(b)[r] = 1;
  }

  // Splits: as many as give every item kTileKeys keys, at most p.max_splits per KV head
  // (so a CTA has one item at most).
  __device__ void plan() {
    const DecoderStackArgs& a = c.a;
    L = a.kv_lens[0];
    valid = L >= 1 && L <= static_cast<int64_t>(a.table_width) * a.block_size;
    if (!valid) return;
    splits = min(c.p.max_splits, (L + kTileKeys - 1) / kTileKeys);
    const int item = static_cast<int>(blockIdx.x);
    has_item = item < a.num_kv_heads * splits;
    if (!has_item) return;
    g = item / splits, s = item % splits;
    const int chunk = (L + splits - 1) / splits;
    p0 = min(L, s * chunk), p1 = min(L, p0 + chunk);
    const int n0 = min(kTileKeys, p1 - p0);
    store_slot(fetch_block(p0, n0), p0, n0);
    consumer_sync();
    load_tile(n0, 0);
    if (c.p.tile_buffers == 2 && p0 + kTileKeys < p1) {  // the second tile's slots (run() loads it first)
      const int t1 = p0 + kTileKeys, n1 = min(kTileKeys, p1 - t1);
      consumer_sync();  // every thread has read the first tile's
      store_slot(fetch_block(t1, n1), t1, n1);
    }
  }

  // The scores S = q k^T of a tile into sc (row r < 8 of the m16 tile is the group's head
  // r, in lanes 4 r .. 4 r + 3; rows 8-15 are zero): warp w < kScoreWarps computes keys
  // 8 w .. 8 w + 7 (two chains of k-steps), and every warp reads all of them back from
  // shared memory. (Every warp computing all the scores itself, no exchange, took 2.3-2.5k
  // cycles a tile, this 1.4-1.8k; 1.5B at 32k tokens 468.4 vs 420.9 tokens/s, H200.)
  __device__ void score_tile(uint32_t kbase, float (&sc)[kTileKeys / 8][2]) const {
    const int lane = c.lane, t = lane % 4, mi = lane / 8, ri = lane % 8;
    float2* parts = score_parts();
    if (c.warp < kScoreWarps) {
      float even[2] = {}, odd[2] = {};
#pragma unroll 2  // (fully unrolled: more spills)
      for (int ks = 0; ks < kSteps; ks += 2) {
        // Matrices: keys 8 warp + .., dims 16 (ks + mi / 2) + (mi % 2) * 8 + ..
        uint32_t b[4];
        ldmatrix_x4(b, kbase + 2 * tile_at(8 * c.warp + ri, 16 * (ks + mi / 2) + (mi % 2) * 8));
        const bf16* qrow = q_s() + (lane / 4) * kQStride + 16 * ks + 2 * t;
        const uint32_t a0 = *reinterpret_cast<const uint32_t*>(qrow), a2 = *reinterpret_cast<const uint32_t*>(qrow + 8);
        const uint32_t a4 = *reinterpret_cast<const uint32_t*>(qrow + 16),
                       a6 = *reinterpret_cast<const uint32_t*>(qrow + 24);
        mma_bf16_rows0_7(even, a0, a2, b[0], b[1]);
        mma_bf16_rows0_7(odd, a4, a6, b[2], b[3]);
      }
      parts[c.warp * 32 + lane] = make_float2(even[0] + odd[0], even[1] + odd[1]);
    }
    consumer_sync();
#pragma unroll
    for (int j = 0; j < kTileKeys / 8; ++j) {
      const float2 v = parts[j * 32 + lane];  // the C fragment of keys 8 j ..: the same lanes hold the same rows
      sc[j][0] = v.x, sc[j][1] = v.y;
    }
  }

  // One tile's n keys on tensor cores, every warp for every head of the group: the scores
  // (score_tile), the online softmax (m, l in the log2 domain, scaled by q_scale; the same
  // in every warp), then o += P v for the warp's kOutTiles * 8 dims.
  __device__ void attend_tile(int n, int buf, float q_scale, float& m, float& l, float (&o)[kOutTiles][2]) const {
    const int lane = c.lane, t = lane % 4, mi = lane / 8, ri = lane % 8;
    float sc[kTileKeys / 8][2];  // (score_tile sets every element)
    const uint32_t kbase = smem_addr(ktile(buf)), vbase = smem_addr(vtile(buf));
    score_tile(kbase, sc);
    const uint32_t live = __ballot_sync(0xffffffffu, lane < n && key_ok(buf)[lane] != 0);  // bit per key
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < kTileKeys / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        sc[j][e] = (live >> (8 * j + 2 * t + e)) & 1u ? sc[j][e] * q_scale : -INFINITY;
        mx = fmaxf(mx, sc[j][e]);
      }
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    // No early return for a row without a live key yet (its P is 0 anyway): the quads must
    // stay converged for the shuffles and mma.sync below, even if NaN scores (ignored by
    // fmaxf) leave one row at -inf.
    const float mn = fmaxf(m, mx), base = mn == -INFINITY ? 0.0f : mn;
    const float corr = exp2f(m - base);
    m = mn;
#pragma unroll
    for (int j = 0; j < kOutTiles; ++j)
      o[j][0] *= corr, o[j][1] *= corr;
    // o += P v, 16 keys at a time: P's A fragments (a0, a2; rows 8-15 are zero) as a bf16
    // pair hi + lo through two mma.sync keep P to ~16 bits (one bf16 P doubled the stack
    // test's error); v's B fragments transposed from the tile's rows, the warp's dims from
    // chunk kOutTiles * warp.
    float sum = 0.0f;
    uint32_t b[4];
#pragma unroll
    for (int kk = 0; kk < kTileKeys / 16; ++kk) {
      uint32_t hi[2], lo[2];
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const int j = 2 * kk + jj;
        const float p0 = exp2f(sc[j][0] - base), p1 = exp2f(sc[j][1] - base);
        sum += p0 + p1;
        hi[jj] = pack_bf16(p0, p1);
        lo[jj] = pack_bf16(p0 - round_bf16(p0), p1 - round_bf16(p1));
      }
      auto pv = [&](float(&acc)[2], uint32_t b0, uint32_t b1) {
        mma_bf16_rows0_7(acc, hi[0], hi[1], b0, b1);
        mma_bf16_rows0_7(acc, lo[0], lo[1], b0, b1);
      };
      if constexpr (kOutTiles == 2) {
        // Matrices: keys 16 kk + (mi % 2) * 8 + .., dim chunk 2 warp + mi / 2.
        ldmatrix_x4_trans(b, vbase + 2 * tile_at(16 * kk + (mi % 2) * 8 + ri, 8 * (2 * c.warp + mi / 2)));
        pv(o[0], b[0], b[1]);
        pv(o[kOutTiles - 1], b[2], b[3]);
      } else {
        // Matrices: keys 8 mi + .., dim chunk warp (both k-steps, loaded at the first).
        if (kk == 0) ldmatrix_x4_trans(b, vbase + 2 * tile_at(8 * mi + ri, 8 * c.warp));
        pv(o[0], b[2 * kk], b[2 * kk + 1]);
      }
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    l = fmaf(l, corr, sum);
  }

  // The items that merge a KV head's splits (each a head in turn): a merge is a round trip
  // through an L2 busy with the weight stream, so it goes wide, not deep (measured before:
  // one CTA merging all of a group's heads, two rounds of loads, ~3,500-5,900 cycles).
  __device__ int mergers(int Q) const { return min(Q, splits); }
  // What the o projection waits for: an arrival per merger, or (nothing to attend to) per
  // KV head.
  __device__ int arrivals() const {
    return valid ? c.a.num_kv_heads * mergers(c.a.num_heads / c.a.num_kv_heads) : c.a.num_kv_heads;
  }

  // Head h of group g from the splits' partials: a thread per (split group, four dims), an
  // online merge of its splits with every load in flight at once, then the kSplitGroups
  // results per four dims merged through shared memory (the tile's space: no tile is live).
  __device__ void merge_head(int h, int stride, bf16* attn_out) const {
    constexpr int kDimGroups = D / 4, kSplitGroups = kConsumerThreads / kDimGroups;
    static_assert(kConsumerThreads * (sizeof(float4) + sizeof(float2)) <= 2 * kTileKeys * D * sizeof(bf16));
    const int dg = c.tid % kDimGroups, sg = c.tid / kDimGroups, d = dg * 4;
    const float* part =
        c.a.partials + static_cast<int64_t>(g * (c.a.num_heads / c.a.num_kv_heads) + h) * c.p.max_splits * stride;
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float M = -INFINITY, Ls = 0.0f;
    auto merge_in = [&](float4 o4, float2 ml) {
      const float mn = fmaxf(M, ml.x);
      if (mn == -INFINITY) return;
      const float ca = exp2f(M - mn), cb = exp2f(ml.x - mn);
      sum.x = fmaf(sum.x, ca, o4.x * cb), sum.y = fmaf(sum.y, ca, o4.y * cb);
      sum.z = fmaf(sum.z, ca, o4.z * cb), sum.w = fmaf(sum.w, ca, o4.w * cb);
      Ls = fmaf(Ls, ca, ml.y * cb);
      M = mn;
    };
    for (int sp0 = sg; sp0 < splits; sp0 += kMergeBatch * kSplitGroups) {
      float4 o4[kMergeBatch];
      float2 ml[kMergeBatch];  // (max, sum)
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u) {
        const int sp = sp0 + u * kSplitGroups;
        const float* ps = part + sp * stride;
        const bool in = sp < splits;
        o4[u] = in ? __ldcg(reinterpret_cast<const float4*>(ps + d)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        ml[u] = in ? __ldcg(reinterpret_cast<const float2*>(ps + D)) : make_float2(-INFINITY, 0.0f);
      }
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u)
        merge_in(o4[u], ml[u]);
    }
    float4* sums = reinterpret_cast<float4*>(ktile(0));  // [kSplitGroups][kDimGroups]
    float2* mls = reinterpret_cast<float2*>(sums + kSplitGroups * kDimGroups);
    sums[c.tid] = sum, mls[c.tid] = make_float2(M, Ls);
    consumer_sync();
    if (sg == 0) {
      for (int j = 1; j < kSplitGroups; ++j)
        merge_in(sums[j * kDimGroups + dg], mls[j * kDimGroups + dg]);
      const float inv = Ls > 0.0f ? 1.0f / Ls : 0.0f;
      bf16* out = attn_out + static_cast<int64_t>(g * (c.a.num_heads / c.a.num_kv_heads) + h) * D + d;
      out[0] = __float2bfloat16_rn(sum.x * inv), out[1] = __float2bfloat16_rn(sum.y * inv);
      out[2] = __float2bfloat16_rn(sum.z * inv), out[3] = __float2bfloat16_rn(sum.w * inv);
    }
    consumer_sync();  // sums / mls are free again (the next head)
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
    ATTN_STAMP(0);
    ATTN_TRACE(kAttnTraceMerged, 0);
#ifdef BW_STACK_TRACE
    long long tile_cycles[4] = {};
#endif
    const int32_t pos = a.positions[0], slot = a.slots[0];
    const int64_t num_slots = a.num_blocks * a.block_size;
    const DecoderStackLayer& w = a.layers[layer];
    const int item = static_cast<int>(blockIdx.x);
    __shared__ int rank_s;

    const bf16* qkv = static_cast<const bf16*>(a.qkv);
    const float q_scale = a.scale * kLog2e;
    if (pos < 0 && item == 0 && c.tid == 0) report_error(a.error_flag, kBadPosition);
    // The item holding the last position also takes this token's k (rotated) and v from
    // the QKV row (into shared memory, for its tile) and writes them to the cache slot.
    // Every load first, then the math: one round trip through a busy L2, not four.
    const bool has_new = p0 <= L - 1 && L - 1 < p1;
    const bf16* kh = qkv + static_cast<int64_t>(Hq + g) * D;
    const bf16* vh = qkv + static_cast<int64_t>(Hq + Hkv + g) * D;
    // A thread rotates one dimension pair index: the first kRopeThreads threads (a multiple
    // of D / 2) take the query pairs.
    constexpr int kRopeThreads = kConsumerThreads / (D / 2) * (D / 2);
    constexpr int kQPairs = (kMaxGroup * D / 2 + kRopeThreads - 1) / kRopeThreads;
    const bool roper = c.tid < kRopeThreads;
    // (The call first, while few registers are live: it is out of line.)
    const float2 cs = pos >= 0 ? stack_cos_sin(__fmul_rn(static_cast<float>(pos), a.inv_freq[c.tid % (D / 2)]))
                               : make_float2(1.0f, 0.0f);
    bf16 q1[kQPairs], q2[kQPairs], k1 = {}, k2 = {}, vv = {};
#pragma unroll
    for (int j = 0; j < kQPairs; ++j) {
      const int i = c.tid + j * kRopeThreads;
      if (roper && i < Q * (D / 2)) {
        const bf16* qh = qkv + static_cast<int64_t>(g * Q + i / (D / 2)) * D + i % (D / 2);
        q1[j] = __ldcg(qh), q2[j] = __ldcg(qh + D / 2);
      }
    }
    if (has_new && c.tid < D / 2) k1 = __ldcg(kh + c.tid), k2 = __ldcg(kh + c.tid + D / 2);
    if (has_new && c.tid < D) vv = __ldcg(vh + c.tid);
    bf16* q_s = this->q_s();
    for (int i = c.tid; i < (kMaxGroup - Q) * D; i += kConsumerThreads)
      q_s[(Q + i / D) * kQStride + i % D] = __float2bfloat16_rn(0.0f);
#pragma unroll
    for (int j = 0; j < kQPairs; ++j) {
      const int i = c.tid + j * kRopeThreads;
      if (!roper || i >= Q * (D / 2)) break;
      const int h = i / (D / 2), jj = i % (D / 2);
      float2 y = make_float2(__bfloat162float(q1[j]), __bfloat162float(q2[j]));
      if (pos >= 0) y = rotate(y.x, y.y, cs);
      q_s[h * kQStride + jj] = __float2bfloat16_rn(y.x);  // (exact: y is rounded to bf16)
      q_s[h * kQStride + jj + D / 2] = __float2bfloat16_rn(y.y);
    }
    if (has_new) {
      const bool write = pos >= 0 && slot >= 0 && slot < num_slots;
      if (c.tid == 0 && (slot < -1 || slot >= num_slots)) report_error(a.error_flag, kBadSlot);
      bf16* kc = static_cast<bf16*>(w.k_cache) + (static_cast<int64_t>(slot) * Hkv + g) * D;
      bf16* vc = static_cast<bf16*>(w.v_cache) + (static_cast<int64_t>(slot) * Hkv + g) * D;
      if (c.tid < D / 2) {
        float2 y = make_float2(__bfloat162float(k1), __bfloat162float(k2));
        if (pos >= 0) y = rotate(y.x, y.y, cs);
        knew_s()[c.tid] = y.x, knew_s()[c.tid + D / 2] = y.y;
        if (write) kc[c.tid] = __float2bfloat16_rn(y.x), kc[c.tid + D / 2] = __float2bfloat16_rn(y.y);
      }
      if (c.tid < D) {
        vnew_s()[c.tid] = __bfloat162float(vv);
        if (write) vc[c.tid] = vv;
      }
    }

    float m = -INFINITY, l = 0.0f, o[kOutTiles][2] = {};
    // With two tile buffers the next tile's copies are in flight while this one is scored
    // (each tile's copies are one cp.async group); with one, each tile waits for its own.
    const bool two = c.p.tile_buffers == 2;
    int buf = 0;
    for (int t0 = p0; t0 < p1; t0 += kTileKeys) {
      ATTN_CLOCK(c_issue);
      const int n = min(kTileKeys, p1 - t0), t1 = t0 + kTileKeys;
      const bool next = two && t1 < p1;
      if (next) {
        consumer_sync();  // every warp is done with the other buffer (the last tile); the slots are stored
        load_tile(min(kTileKeys, p1 - t1), buf ^ 1);
      } else if (!two && t0 != p0) {
        consumer_sync();  // every warp is done with the last tile; the slots are stored
        load_tile(n, 0);
      }
      // The first tile: knew_s / vnew_s and q_s are written (later tiles need no barrier
      // here: the slots load_tile reads are rewritten only after the tile's scores).
      if (t0 == p0) consumer_sync();
      // The slots of the tile the next load_tile copies, in flight while this tile is scored.
      const int ts = two ? t1 + kTileKeys : t1, ns = min(kTileKeys, p1 - ts);
      const int32_t blk = ts < p1 ? fetch_block(ts, ns) : 0;
      fill_new(t0, n, buf);
      ATTN_CLOCK(c_wait);
      if (next)
        cp_async_wait<1>();
      else
        cp_async_wait<0>();
      consumer_sync();
      if (t0 == p0) ATTN_STAMP(1);
      ATTN_CLOCK(c_score);
      attend_tile(n, buf, q_scale, m, l, o);
      if (ts < p1) store_slot(blk, ts, ns);
      ATTN_CLOCK(c_done);
      ATTN_TILE(c_issue, c_wait, c_score, c_done);
      if (two) buf ^= 1;
    }
    ATTN_STAMP(2);
#ifdef BW_STACK_TRACE
    if (layer == 5 && c.tid == 0)
      for (int i = 0; i < 4; ++i)
        g_attn_tiles[blockIdx.x][i] = tile_cycles[i];
#endif
    // The item's partial result per head: (unnormalised output, max, sum); head lane / 4,
    // the warp's dims.
    const int stride = D + 4;  // (16-byte aligned rows: the merge reads float4)
    if (const int h = c.lane / 4; h < Q) {
      float* part = a.partials + (static_cast<int64_t>(g * Q + h) * c.p.max_splits + s) * stride;
#pragma unroll
      for (int j = 0; j < kOutTiles; ++j)
        *reinterpret_cast<float2*>(part + 8 * (kOutTiles * c.warp + j) + 2 * (c.lane % 4)) =
            make_float2(o[j][0], o[j][1]);
      if (c.warp == 0 && c.lane % 4 == 0) part[D] = m, part[D + 1] = l;
    }
    consumer_sync();
    if (c.tid == 0) {
      int before;
      asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;\n"
                   : "=r"(before)
                   : "l"(ctr + kFixedCounters + g)
                   : "memory");
      // The last mergers() items to arrive merge (one head in turn each); they wait for the
      // rest, which are already close behind.
      const int rank = before - (splits - mergers(Q));
      if (rank >= 0) {
        while (load_acquire(ctr + kFixedCounters + g) < splits) {
        }
      }
      rank_s = rank;
    }
    consumer_sync();
    ATTN_STAMP(3);
    const int rank = rank_s;
    if (rank < 0) return;
    for (int h = rank; h < Q; h += mergers(Q))
      merge_head(h, stride, attn_out);
    ATTN_STAMP(4);
    ATTN_TRACE(kAttnTraceMerged, 1);
    c.arrive(ctr + kAttnDone);
  }
};
#undef ATTN_STAMP
#undef ATTN_TRACE
#undef ATTN_CLOCK
#undef ATTN_TILE

#endif  // BW_WGMMA

}  // namespace bw::cuda::decoder_stack
