// Shared by the general and the decode attention kernels (cuda_attention.cu,
// cuda_attention_decode.cu): merging the online-softmax states of a block's warps, and the
// split-KV workspace layout that launch_attention_combine reads. Included by .cu files only.
#pragma once

#include <cmath>

#include "backend/cuda/cuda_common.cuh"

namespace bw::cuda {

// Workspace of num_splits partial results per (token, head): [T, Hq, splits, D]
// unnormalised outputs first (so a row starts 16-byte aligned for float4 reads), then
// [T, Hq, splits] x (max, sum) pairs.
template <typename F>  // float or const float
__device__ __forceinline__ F* split_output(const AttentionArgs& a, F* ws, int64_t t, int h, int split, int num_splits) {
  return ws + ((t * a.num_heads + h) * num_splits + split) * a.head_dim;
}
template <typename F>
__device__ __forceinline__ F* split_max_sum(const AttentionArgs& a, F* ws, int64_t t, int h, int split,
                                            int num_splits) {
  return ws + a.num_tokens * a.num_heads * num_splits * a.head_dim + ((t * a.num_heads + h) * num_splits + split) * 2;
}

// After __syncthreads(): the block's kWarps warps left their running max (s_m), sum (s_l)
// and unnormalised output (s_acc) for ng query heads h0.. of token t. Writes the merged
// output, or this split's partial result when the context is split.
template <typename A, int kWarps, int kMaxG, int kMaxD, int kThreads>
__device__ void merge_warps_and_store(const AttentionArgs& a, const float (&s_m)[kWarps][kMaxG],
                                      const float (&s_l)[kWarps][kMaxG], const float (&s_acc)[kWarps][kMaxG][kMaxD],
                                      int ng, int64_t t, int h0, int split, int num_splits, float* ws) {
  const int D = a.head_dim;
  for (int i = static_cast<int>(threadIdx.x); i < ng * D; i += kThreads) {
    const int g = i / D, d = i % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w)
      M = fmaxf(M, s_m[w][g]);
    float L = 0.0f, O = 0.0f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = s_m[w][g] == -INFINITY ? 0.0f : __expf(s_m[w][g] - M);
        L += s_l[w][g] * f;
        O += s_acc[w][g][d] * f;
      }
    }
    const int h = h0 + g;
    if (num_splits == 1) {
      A* out = static_cast<A*>(a.out) + (t * a.num_heads + h) * D;
      out[d] = from_float<A>(L > 0.0f ? O / L : 0.0f);
    } else {
      split_output(a, ws, t, h, split, num_splits)[d] = O;
      if (d == 0) {
        float* ml = split_max_sum(a, ws, t, h, split, num_splits);
        ml[0] = M;
        ml[1] = L;
      }
    }
  }
}

}  // namespace bw::cuda
