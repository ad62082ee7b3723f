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

#endif  // BW_WGMMA

}  // namespace bw::cuda::decoder_stack
