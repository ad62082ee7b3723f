// paged_attention: causal attention over the paged KV cache for a mixed batch of prefill
// chunks and decode tokens, with grouped-query attention.
//
// One kernel for both: a block owns one query token, one KV head and up to kMaxG of the
// query heads that share it (so K/V are read once for the group), and one split of the
// token's causal window. Its 4 warps take 32-key tiles in turn; in a tile lane j scores
// key j against every head of the group (q staged in shared memory, K rows read through
// the block table with 16-byte loads), then the warp runs the online-softmax (flash)
// update in f32 and accumulates p * V with lanes over head dims. The warps' partial
// states merge in shared memory. When the window is long and the grid small (decode),
// the window is split over gridDim.z blocks (flash-decoding) whose partials (max, sum,
// accumulator) a second kernel combines.
#include <cmath>

#include "backend/cuda/cuda_attention_merge.cuh"

namespace bw::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxG = 8;                           // query heads per block
constexpr int kMaxDL = kAttentionMaxHeadDim / 32;  // head dims per lane
constexpr float kNegInf = -INFINITY;

// 8 consecutive elements as f32 (p 16-byte aligned for 2-byte types, 32 for f32).
__device__ __forceinline__ void load8(const float* p, float* o) {
  const float4 a = reinterpret_cast<const float4*>(p)[0];
  const float4 b = reinterpret_cast<const float4*>(p)[1];
  o[0] = a.x, o[1] = a.y, o[2] = a.z, o[3] = a.w, o[4] = b.x, o[5] = b.y, o[6] = b.z, o[7] = b.w;
}
template <typename T>
__device__ __forceinline__ void load8(const T* p, float* o) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i)
    o[i] = to_float(h[i]);
}

__device__ __forceinline__ int find_sequence(const int32_t* qs, int num_seqs, int64_t t) {
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (qs[mid] <= t) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

template <typename A, typename C>
__global__ void __launch_bounds__(kThreads) attention_kernel(AttentionArgs a, int head_groups, float* ws) {
  pdl_wait();
  __shared__ float sq[kMaxG][kAttentionMaxHeadDim];
  __shared__ float s_acc[kWarps][kMaxG][kAttentionMaxHeadDim];
  __shared__ float s_m[kWarps][kMaxG];
  __shared__ float s_l[kWarps][kMaxG];

  const int64_t t = blockIdx.x;
  const int kv_head = static_cast<int>(blockIdx.y) / head_groups;
  const int group = static_cast<int>(blockIdx.y) % head_groups;
  const int G = a.num_heads / a.num_kv_heads;
  const int h0 = kv_head * G + group * kMaxG;
  const int ng = min(kMaxG, G - group * kMaxG);
  const int D = a.head_dim;
  const int num_splits = static_cast<int>(gridDim.z);
  const int split = static_cast<int>(blockIdx.z);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t qkv_width = static_cast<int64_t>(a.num_heads + 2 * a.num_kv_heads) * D;

  const int s = find_sequence(a.query_start, a.num_seqs, t);
  const int q_begin = a.query_start[s];
  const int q_len = a.query_start[s + 1] - q_begin;
  const int kv_len = a.kv_lens[s];
  int n_keys = kv_len - q_len + static_cast<int>(t - q_begin) + 1;
  if (kv_len < q_len || (kv_len + a.block_size - 1) / a.block_size > a.table_width || t < q_begin ||
      t >= q_begin + q_len) {
    if (threadIdx.x == 0) report_error(a.error_flag, kBadSequence);
    n_keys = 0;
  }
  int chunk = (n_keys + num_splits - 1) / num_splits;
  chunk = (chunk + 31) / 32 * 32;
  const int key_begin = split * chunk;
  const int key_end = min(n_keys, key_begin + chunk);

  const A* q = static_cast<const A*>(a.qkv) + t * qkv_width + static_cast<int64_t>(h0) * D;
  for (int i = threadIdx.x; i < ng * D; i += kThreads)
    sq[i / D][i % D] = to_float(q[i]);
  __syncthreads();

  float m[kMaxG], l[kMaxG], acc[kMaxG][kMaxDL];
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    m[g] = kNegInf;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxDL; ++i)
      acc[g][i] = 0.0f;
  }
  const int32_t* table = a.block_tables + static_cast<int64_t>(s) * a.table_width;
  const C* kc = static_cast<const C*>(a.k_cache);
  const C* vc = static_cast<const C*>(a.v_cache);
  const bool vec = D % 8 == 0 && reinterpret_cast<uintptr_t>(kc) % 16 == 0;

  for (int k0 = key_begin + warp * 32; k0 < key_end; k0 += kWarps * 32) {
    const int p = k0 + lane;
    bool valid = p < key_end;
    int64_t row = 0;
    if (valid) {
      const int32_t block = table[p / a.block_size];
      if (block < 0 || block >= a.num_blocks) {
        report_error(a.error_flag, kBadBlockId);
        valid = false;
      } else {
        const int64_t slot = static_cast<int64_t>(block) * a.block_size + p % a.block_size;
        row = (slot * a.num_kv_heads + kv_head) * D;
      }
    }
    float sc[kMaxG];
#pragma unroll
    for (int g = 0; g < kMaxG; ++g)
      sc[g] = 0.0f;
    if (valid) {
      const C* krow = kc + row;
      if (vec) {
        for (int d = 0; d < D; d += 8) {
          float kf[8];
          load8(krow + d, kf);
#pragma unroll
          for (int g = 0; g < kMaxG; ++g) {
            if (g < ng) {
#pragma unroll
              for (int e = 0; e < 8; ++e)
                sc[g] = fmaf(sq[g][d + e], kf[e], sc[g]);
            }
          }
        }
      } else {
        for (int d = 0; d < D; ++d) {
          const float kf = to_float(krow[d]);
#pragma unroll
          for (int g = 0; g < kMaxG; ++g)
            if (g < ng) sc[g] = fmaf(sq[g][d], kf, sc[g]);
        }
      }
    }
    float pw[kMaxG];
#pragma unroll
    for (int g = 0; g < kMaxG; ++g) {
      pw[g] = 0.0f;
      if (g >= ng) continue;
      const float score = valid ? sc[g] * a.scale : kNegInf;
      const float new_m = fmaxf(m[g], warp_max(score));
      if (new_m == kNegInf) continue;  // nothing valid yet
      const float corr = __expf(m[g] - new_m);
      pw[g] = valid ? __expf(score - new_m) : 0.0f;
      l[g] = l[g] * corr + warp_sum(pw[g]);
#pragma unroll
      for (int i = 0; i < kMaxDL; ++i)
        acc[g][i] *= corr;
      m[g] = new_m;
    }
    // Keys k0 .. k0 + n - 1 exist; one with a bad block id (reported above) has weight 0
    // and reads row 0 instead.
    const int n = min(32, key_end - k0);
    for (int j = 0; j < n; ++j) {
      const int64_t vrow = __shfl_sync(0xffffffffu, row, j);
      float w[kMaxG];
#pragma unroll
      for (int g = 0; g < kMaxG; ++g)
        w[g] = __shfl_sync(0xffffffffu, pw[g], j);
      const C* vr = vc + vrow;
#pragma unroll
      for (int i = 0; i < kMaxDL; ++i) {
        const int d = lane + 32 * i;
        if (d < D) {
          const float vf = to_float(vr[d]);
#pragma unroll
          for (int g = 0; g < kMaxG; ++g)
            if (g < ng) acc[g][i] = fmaf(w[g], vf, acc[g][i]);
        }
      }
    }
  }

  // Merge the warps.
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    if (g >= ng) continue;
    if (lane == 0) {
      s_m[warp][g] = m[g];
      s_l[warp][g] = l[g];
    }
#pragma unroll
    for (int i = 0; i < kMaxDL; ++i) {
      const int d = lane + 32 * i;
      if (d < D) s_acc[warp][g][d] = acc[g][i];
    }
  }
  __syncthreads();
  merge_warps_and_store<A, kWarps, kMaxG, kAttentionMaxHeadDim, kThreads>(a, s_m, s_l, s_acc, ng, t, h0, split,
                                                                          num_splits, ws);
}

// One block per (token, head): the split weights are computed once into shared memory,
// then each thread sums its head dims over the splits with independent loads.
constexpr int kMaxSplits = 64;

template <typename A>
__global__ void combine_kernel(AttentionArgs a, int num_splits, const float* ws) {
  pdl_wait();
  pdl_launch_dependents();
  __shared__ float weight[kMaxSplits];
  __shared__ float total;
  const int64_t t = blockIdx.x;
  const int h = static_cast<int>(blockIdx.y);
  const int D = a.head_dim;
  const float* ml = split_max_sum(a, ws, t, h, 0, num_splits);
  const float* pacc = split_output(a, ws, t, h, 0, num_splits);
  if (threadIdx.x < 32) {
    float M = kNegInf;
    for (int s = static_cast<int>(threadIdx.x); s < num_splits; s += 32)
      M = fmaxf(M, ml[2 * s]);
    M = warp_max(M);
    float L = 0.0f;
    for (int s = static_cast<int>(threadIdx.x); s < num_splits; s += 32) {
      const float ms = ml[2 * s];
      const float f = (ms == kNegInf || M == kNegInf) ? 0.0f : __expf(ms - M);
      weight[s] = f;
      L += ml[2 * s + 1] * f;
    }
    L = warp_sum(L);
    if (threadIdx.x == 0) total = L;
  }
  __syncthreads();
  const float L = total;
  A* out = static_cast<A*>(a.out) + (t * a.num_heads + h) * D;
  for (int d = static_cast<int>(threadIdx.x); d < D; d += static_cast<int>(blockDim.x)) {
    float O = 0.0f;
#pragma unroll 8
    for (int s = 0; s < num_splits; ++s)
      O = fmaf(pacc[static_cast<int64_t>(s) * D + d], weight[s], O);
    out[d] = from_float<A>(L > 0.0f ? O / L : 0.0f);
  }
}

int head_groups_of(const AttentionArgs& a) {
  const int G = a.num_heads / a.num_kv_heads;
  return (G + kMaxG - 1) / kMaxG;
}

}  // namespace

int attention_num_splits(const AttentionArgs& args, int num_sms) {
  const int64_t base = args.num_tokens * args.num_kv_heads * head_groups_of(args);
  if (base <= 0 || base >= 2 * static_cast<int64_t>(num_sms) || args.max_kv_len <= 128) return 1;
  const int64_t by_len = (args.max_kv_len + 127) / 128;
  const int64_t by_grid = (4 * static_cast<int64_t>(num_sms) + base - 1) / base;
  int64_t splits = by_len < by_grid ? by_len : by_grid;
  if (splits > 64) splits = 64;
  return static_cast<int>(splits < 1 ? 1 : splits);
}

int64_t attention_workspace_floats(const AttentionArgs& args, int num_splits) {
  if (num_splits <= 1) return 0;
  return args.num_tokens * args.num_heads * num_splits * (2 + static_cast<int64_t>(args.head_dim));
}

cudaError_t launch_paged_attention(const AttentionArgs& args, int num_splits, float* workspace, cudaStream_t stream) {
  if (args.num_tokens == 0) return cudaSuccess;
  const int groups = head_groups_of(args);
  const dim3 grid(static_cast<unsigned>(args.num_tokens), static_cast<unsigned>(args.num_kv_heads * groups),
                  static_cast<unsigned>(num_splits));
  dispatch_act(args.act_type, [&](auto atag) {
    using A = decltype(atag);
    dispatch_elem(args.cache_type, [&](auto ctag) {
      using C = decltype(ctag);
      launch_kernel(attention_kernel<A, C>, grid, kThreads, 0, stream, args, groups, workspace);
    });
  });
  if (num_splits > 1) return launch_attention_combine(args, num_splits, workspace, stream);
  return cudaGetLastError();
}

cudaError_t launch_attention_combine(const AttentionArgs& args, int num_splits, const float* workspace,
                                     cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(args.num_tokens), static_cast<unsigned>(args.num_heads));
  dispatch_act(args.act_type, [&](auto atag) {
    using A = decltype(atag);
    launch_kernel(combine_kernel<A>, grid, 128, 0, stream, args, num_splits, workspace);
  });
  return cudaGetLastError();
}

}  // namespace bw::cuda
