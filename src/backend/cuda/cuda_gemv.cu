// The GEMV-shaped matmul (and the fallback for dtype pairs cuBLASLt does not take):
// out[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]), f32 accumulation; out is in x's dtype or f32. One warp per w row and
// up to kMaxM rows of x (grid.y covers larger M), so w streams from memory once per 16
// rows of x with 16-byte loads: bandwidth-bound for decode batches.
#include <type_traits>

#include "backend/cuda/cuda_common.cuh"

namespace bw::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kMaxM = 16;

__device__ __forceinline__ void load8f(const float* p, float* o) {
  const float4 a = reinterpret_cast<const float4*>(p)[0];
  const float4 b = reinterpret_cast<const float4*>(p)[1];
  o[0] = a.x, o[1] = a.y, o[2] = a.z, o[3] = a.w, o[4] = b.x, o[5] = b.y, o[6] = b.z, o[7] = b.w;
}
template <typename T>
__device__ __forceinline__ void load8f(const T* p, float* o) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i)
    o[i] = to_float(h[i]);
}

template <typename A, typename W, typename O>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(O* out, const A* x, const W* w, const void* bias, ElemType bias_type, int64_t m, int64_t n, int64_t k,
                bool vec) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= n) return;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kMaxM;
  const int mc = static_cast<int>(m - m0 < kMaxM ? m - m0 : kMaxM);
  const W* wr = w + row * k;
  const A* xb = x + m0 * k;
  float acc[kMaxM];
#pragma unroll
  for (int i = 0; i < kMaxM; ++i)
    acc[i] = 0.0f;
  int64_t kk = 0;
  if (vec) {
    // kUnroll 8-element chunks of w per lane in flight before any is used.
    constexpr int kUnroll = 4;
    constexpr int64_t kStep = 32 * 8 * kUnroll;
    for (; kk + kStep <= k; kk += kStep) {
      float wf[kUnroll][8];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        load8f(wr + kk + (u * 32 + lane) * 8, wf[u]);
#pragma unroll
      for (int i = 0; i < kMaxM; ++i) {
        if (i < mc) {
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            float xf[8];
            load8f(xb + i * k + kk + (u * 32 + lane) * 8, xf);
#pragma unroll
            for (int e = 0; e < 8; ++e)
              acc[i] = fmaf(xf[e], wf[u][e], acc[i]);
          }
        }
      }
    }
    for (; kk + 8 * 32 <= k; kk += 8 * 32) {
      float wf[8];
      load8f(wr + kk + lane * 8, wf);
#pragma unroll
      for (int i = 0; i < kMaxM; ++i) {
        if (i < mc) {
          float xf[8];
          load8f(xb + i * k + kk + lane * 8, xf);
#pragma unroll
          for (int e = 0; e < 8; ++e)
            acc[i] = fmaf(xf[e], wf[e], acc[i]);
        }
      }
    }
  }
  // The rest (or everything when 16-byte loads do not apply), one element per lane.
  for (int64_t kr = kk + lane; kr < k; kr += 32) {
    const float wf = to_float(wr[kr]);
#pragma unroll
    for (int i = 0; i < kMaxM; ++i)
      if (i < mc) acc[i] = fmaf(to_float(xb[i * k + kr]), wf, acc[i]);
  }
  const float b = bias != nullptr ? load_any(bias, row, bias_type) : 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxM; ++i) {
    if (i < mc) {
      const float s = warp_sum(acc[i]);
      if (lane == 0) out[(m0 + i) * n + row] = from_float<O>(s + b);
    }
  }
}

}  // namespace

cudaError_t launch_gemv(void* out, ElemType out_type, const void* x, ElemType act_type, const void* w, ElemType w_type,
                        const void* bias, ElemType bias_type, int64_t m, int64_t n, int64_t k, cudaStream_t stream) {
  if (m == 0 || n == 0) return cudaSuccess;
  // 16-byte loads need K % 8 == 0 and 16-byte aligned bases (rows then stay aligned).
  const bool vec = k % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  const dim3 grid(static_cast<unsigned>((n + kWarps - 1) / kWarps), static_cast<unsigned>((m + kMaxM - 1) / kMaxM));
  dispatch_act(act_type, [&](auto atag) {
    using A = decltype(atag);
    dispatch_elem(w_type, [&](auto wtag) {
      using W = decltype(wtag);
      if (std::is_same_v<A, float> || out_type != ElemType::kF32) {
        gemv_kernel<A, W, A><<<grid, kWarps * 32, 0, stream>>>(static_cast<A*>(out), static_cast<const A*>(x),
                                                               static_cast<const W*>(w), bias, bias_type, m, n, k, vec);
      } else {  // bf16 activations, f32 output (logits)
        gemv_kernel<A, W, float><<<grid, kWarps * 32, 0, stream>>>(static_cast<float*>(out), static_cast<const A*>(x),
                                                                   static_cast<const W*>(w), bias, bias_type, m, n, k,
                                                                   vec);
      }
    });
  });
  return cudaGetLastError();
}

}  // namespace bw::cuda
