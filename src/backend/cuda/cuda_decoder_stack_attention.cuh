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
#define ATTN_TRACE(i, v) \
  if (layer == 5 && c.tid == 0) g_attn_trace[blockIdx.x][i] = (v);
#else
#define ATTN_TRACE(i, v)
#endif
#define ATTN_STAMP(i) ATTN_TRACE(i, clock64())

// The attention op of layer l (see the file comment), in two parts: plan() before the
// wait for the QKV projection (what the CTA's item is, and the copies of its first tile of
// cached keys into shared memory, which this step does not write), run() after it.
//
// An item walks its keys in tiles of kTileKeys: a warp per query head, a lane per key for
// the scores (the k rows read from shared memory in a rotated chunk order: no bank
// conflicts), then a lane per E head dims for the weighted sum of the v rows. So a tile
// is one parallel pass, not a chain of a key after another (measured before: an item of
// 16 keys took ~5,400 cycles that way, its merge of 34 splits another ~7,800).
template <int D>
struct Attention {
  static constexpr int E = D / 32;       // head dims per lane in the weighted sum
  static constexpr int kChunks = D / 8;  // 16-byte chunks of a k or v row
  static constexpr int kHeadsPerWarp = (kMaxGroup + kConsumerWarps - 1) / kConsumerWarps;
  static constexpr int kMergeBatch = 4;  // splits whose partials a merging thread loads at once (x split groups)
  Consumer& c;
  int layer;
  int L = 0, splits = 0, g = 0, s = 0, p0 = 0, p1 = 0;
  bool valid = false, has_item = false;

  __device__ Attention(Consumer& consumer, int l) : c(consumer), layer(l) {}

  // Shared scratch (attention_scratch_bytes): q [Q][D] f32 (scaled), this token's k and v
  // (f32), the tile's k and v rows (bf16) and whether each key's block id was good.
  __device__ float* q_s() const { return reinterpret_cast<float*>(c.scratch); }
  __device__ float* knew_s() const { return q_s() + kMaxGroup * D; }
  __device__ float* vnew_s() const { return knew_s() + D; }
  __device__ bf16* ktile() const { return reinterpret_cast<bf16*>(vnew_s() + D); }
  __device__ bf16* vtile() const { return ktile() + kTileKeys * D; }
  __device__ int* key_ok() const { return reinterpret_cast<int*>(vtile() + kTileKeys * D); }

  // Copies of the cached k and v rows of keys [t0, t0 + n) into the tile (cp.async, one
  // group); the token's own key (L - 1, not in the cache yet) is left to fill_new.
  __device__ void load_tile(int t0, int n) const {
    const DecoderStackArgs& a = c.a;
    const DecoderStackLayer& w = a.layers[layer];
    const int per_key = 2 * kChunks;
    for (int i = c.tid; i < n * per_key; i += kConsumerThreads) {
      const int r = i / per_key, part = i % per_key, key = t0 + r;
      if (key == L - 1) continue;
      const int32_t blk = a.block_tables[key / a.block_size];
      const bool ok = blk >= 0 && blk < a.num_blocks;
      if (part == 0) {
        key_ok()[r] = ok;
        if (!ok) report_error(a.error_flag, kBadBlockId);
      }
      const bool is_v = part >= kChunks;
      const int chunk = part % kChunks;
      const int64_t at =
          ((static_cast<int64_t>(ok ? blk : 0) * a.block_size + key % a.block_size) * a.num_kv_heads + g) * D;
      const bf16* src = static_cast<const bf16*>(is_v ? w.v_cache : w.k_cache) + at + chunk * 8;
      bf16* dst = (is_v ? vtile() : ktile()) + r * D + chunk * 8;
      cp_async16(smem_addr(dst), src, ok);
    }
    cp_async_commit();
  }
  // The token's own k and v into row L - 1 - t0 of the tile, if the tile holds it.
  __device__ void fill_new(int t0, int n) const {
    const int r = L - 1 - t0;
    if (r < 0 || r >= n) return;
    for (int d = c.tid; d < D; d += kConsumerThreads) {
      ktile()[r * D + d] = __float2bfloat16_rn(knew_s()[d]);
      vtile()[r * D + d] = __float2bfloat16_rn(vnew_s()[d]);
    }
    if (c.tid == 0) key_ok()[r] = 1;
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
    load_tile(p0, min(kTileKeys, p1 - p0));
  }

  // One tile's keys [t0, t0 + n) for the warp's heads: the online-softmax state (m, l, o)
  // is the same in every lane but o, whose lane holds E dims.
  __device__ void attend_tile(int t0, int n, int Q, float (&m)[kHeadsPerWarp], float (&l)[kHeadsPerWarp],
                              float (&o)[kHeadsPerWarp][E]) const {
    const uint4* kt = reinterpret_cast<const uint4*>(ktile());
    const int j = c.lane;
    const bool live = j < n && key_ok()[j] != 0;
#pragma unroll
    for (int hw = 0; hw < kHeadsPerWarp; ++hw) {
      const int h = c.warp + hw * kConsumerWarps;
      if (h >= Q) break;
      const float4* q4 = reinterpret_cast<const float4*>(q_s() + h * D);
      float sc = -INFINITY;
      if (live) {
        float acc0 = 0.0f, acc1 = 0.0f;
#pragma unroll
        for (int step = 0; step < kChunks; ++step) {
          const int cc = (step + j) % kChunks;  // rotated: lanes of a phase hit different banks
          const uint4 k8 = kt[j * kChunks + cc];
          const float4 qa = q4[2 * cc], qb = q4[2 * cc + 1];
          acc0 = fmaf(qa.x, bf16_lo(k8.x), acc0), acc1 = fmaf(qa.y, bf16_hi(k8.x), acc1);
          acc0 = fmaf(qa.z, bf16_lo(k8.y), acc0), acc1 = fmaf(qa.w, bf16_hi(k8.y), acc1);
          acc0 = fmaf(qb.x, bf16_lo(k8.z), acc0), acc1 = fmaf(qb.y, bf16_hi(k8.z), acc1);
          acc0 = fmaf(qb.z, bf16_lo(k8.w), acc0), acc1 = fmaf(qb.w, bf16_hi(k8.w), acc1);
        }
        sc = acc0 + acc1;
      }
      const float mn = fmaxf(m[hw], warp_max(sc));
      if (mn == -INFINITY) continue;  // no live key yet
      const float corr = exp2f(m[hw] - mn), pr = live ? exp2f(sc - mn) : 0.0f;
      l[hw] = fmaf(l[hw], corr, warp_sum(pr));
      m[hw] = mn;
#pragma unroll
      for (int e = 0; e < E; ++e)
        o[hw][e] *= corr;
      for (int r = 0; r < n; ++r) {
        const float pj = __shfl_sync(0xffffffffu, pr, r);
        const bf16* vr = vtile() + r * D + c.lane * E;
        if constexpr (E == 4) {
          const uint2 v = *reinterpret_cast<const uint2*>(vr);
          o[hw][0] = fmaf(pj, bf16_lo(v.x), o[hw][0]), o[hw][1] = fmaf(pj, bf16_hi(v.x), o[hw][1]);
          o[hw][2] = fmaf(pj, bf16_lo(v.y), o[hw][2]), o[hw][3] = fmaf(pj, bf16_hi(v.y), o[hw][3]);
        } else {
          const uint32_t v = *reinterpret_cast<const uint32_t*>(vr);
          o[hw][0] = fmaf(pj, bf16_lo(v), o[hw][0]), o[hw][1] = fmaf(pj, bf16_hi(v), o[hw][1]);
        }
      }
    }
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
    float4* sums = reinterpret_cast<float4*>(ktile());  // [kSplitGroups][kDimGroups]
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
    float* q_s = this->q_s();
#pragma unroll
    for (int j = 0; j < kQPairs; ++j) {
      const int i = c.tid + j * kRopeThreads;
      if (!roper || i >= Q * (D / 2)) break;
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
        knew_s()[c.tid] = y.x, knew_s()[c.tid + D / 2] = y.y;
        if (write) kc[c.tid] = __float2bfloat16_rn(y.x), kc[c.tid + D / 2] = __float2bfloat16_rn(y.y);
      }
      if (c.tid < D) {
        vnew_s()[c.tid] = __bfloat162float(vv);
        if (write) vc[c.tid] = vv;
      }
    }

    float m[kHeadsPerWarp], l[kHeadsPerWarp], o[kHeadsPerWarp][E];
#pragma unroll
    for (int hw = 0; hw < kHeadsPerWarp; ++hw) {
      m[hw] = -INFINITY, l[hw] = 0.0f;
#pragma unroll
      for (int e = 0; e < E; ++e)
        o[hw][e] = 0.0f;
    }
    for (int t0 = p0; t0 < p1; t0 += kTileKeys) {
      const int n = min(kTileKeys, p1 - t0);
      if (t0 != p0) {
        consumer_sync();  // every warp is done with the last tile
        load_tile(t0, n);
      }
      consumer_sync();  // knew_s / vnew_s (the first tile: q_s too) are written
      fill_new(t0, n);
      cp_async_wait<0>();
      consumer_sync();
      if (t0 == p0) ATTN_STAMP(1);
      attend_tile(t0, n, Q, m, l, o);
    }
    ATTN_STAMP(2);
    // The item's partial result per head: (unnormalised output, max, sum).
    const int stride = D + 4;  // (16-byte aligned rows: the merge reads float4)
#pragma unroll
    for (int hw = 0; hw < kHeadsPerWarp; ++hw) {
      const int h = c.warp + hw * kConsumerWarps;
      if (h >= Q) break;
      float* part = a.partials + (static_cast<int64_t>(g * Q + h) * c.p.max_splits + s) * stride;
#pragma unroll
      for (int e = 0; e < E; ++e)
        part[c.lane * E + e] = o[hw][e];
      if (c.lane == 0) part[D] = m[hw], part[D + 1] = l[hw];
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

#endif  // BW_WGMMA

}  // namespace bw::cuda::decoder_stack
