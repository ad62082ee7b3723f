// rms_norm and the fused add_rms_norm, in HF's order (LlamaRMSNorm): variance = mean(x^2)
// in f32, out = weight * (x * rsqrt-free 1/sqrt(variance + eps)). One block per row.
// Rows of up to kVecThreads * kMaxChunks 16-byte chunks take the vector kernel, which keeps
// the row in registers between the two passes (a decode step's norm is latency-bound:
// one row, so few dependent loads matter more than bandwidth).
#include "backend/cuda/cuda_common.cuh"

namespace bw::cuda {

namespace {

constexpr int kThreads = 256;

template <typename A>
__global__ void rms_norm_kernel(A* out, A* residual, const A* x, const void* weight, ElemType weight_type,
                                int64_t hidden, float eps) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;
  const A* xr = x + row * hidden;
  A* rr = residual != nullptr ? residual + row * hidden : nullptr;
  A* orow = out + row * hidden;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += kThreads) {
    float v = to_float(xr[i]);
    if (rr != nullptr) {
      const A sum = from_float<A>(to_float(rr[i]) + v);  // the residual stream keeps A's precision
      rr[i] = sum;
      v = to_float(sum);
    }
    ss = fmaf(v, v, ss);
  }
  __shared__ float partial[kThreads / 32];
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < kThreads / 32 ? partial[threadIdx.x] : 0.0f;
    v = warp_sum(v);
    if (threadIdx.x == 0) partial[0] = v;
  }
  __syncthreads();
  const float inv_rms = 1.0f / sqrtf(partial[0] / static_cast<float>(hidden) + eps);
  const A* src = rr != nullptr ? rr : xr;
  for (int64_t i = threadIdx.x; i < hidden; i += kThreads) {
    orow[i] = from_float<A>(load_any(weight, i, weight_type) * (to_float(src[i]) * inv_rms));
  }
}

constexpr int kVecThreads = 256;
constexpr int kMaxChunks = 4;

template <typename A>
__global__ void __launch_bounds__(kVecThreads) rms_norm_vec_kernel(A* out, A* residual, const A* x, const void* weight,
                                                                   ElemType weight_type, int64_t hidden, float eps) {
  pdl_wait();
  pdl_launch_dependents();
  constexpr int E = 16 / static_cast<int>(sizeof(A));
  const int64_t row = blockIdx.x;
  const int64_t chunks = hidden / E;
  const A* xr = x + row * hidden;
  A* rr = residual != nullptr ? residual + row * hidden : nullptr;
  A* orow = out + row * hidden;
  float v[kMaxChunks][E];
  float ss = 0.0f;
#pragma unroll
  for (int c = 0; c < kMaxChunks; ++c) {
    const int64_t chunk = threadIdx.x + static_cast<int64_t>(c) * kVecThreads;
    if (chunk >= chunks) break;
    uint4 xraw = reinterpret_cast<const uint4*>(xr)[chunk];
    const A* xe = reinterpret_cast<const A*>(&xraw);
    if (rr != nullptr) {
      uint4 rraw = reinterpret_cast<const uint4*>(rr)[chunk];
      A* re = reinterpret_cast<A*>(&rraw);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        re[e] = from_float<A>(to_float(re[e]) + to_float(xe[e]));  // the residual keeps A's precision
        v[c][e] = to_float(re[e]);
      }
      reinterpret_cast<uint4*>(rr)[chunk] = rraw;
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e)
        v[c][e] = to_float(xe[e]);
    }
#pragma unroll
    for (int e = 0; e < E; ++e)
      ss = fmaf(v[c][e], v[c][e], ss);
  }
  __shared__ float partial[kVecThreads / 32];
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kVecThreads / 32; ++w)
    total += partial[w];
  const float inv_rms = 1.0f / sqrtf(total / static_cast<float>(hidden) + eps);
#pragma unroll
  for (int c = 0; c < kMaxChunks; ++c) {
    const int64_t chunk = threadIdx.x + static_cast<int64_t>(c) * kVecThreads;
    if (chunk >= chunks) break;
    uint4 oraw;
    A* oe = reinterpret_cast<A*>(&oraw);
#pragma unroll
    for (int e = 0; e < E; ++e)
      oe[e] = from_float<A>(load_any(weight, chunk * E + e, weight_type) * (v[c][e] * inv_rms));
    reinterpret_cast<uint4*>(orow)[chunk] = oraw;
  }
}

}  // namespace

cudaError_t launch_rms_norm(void* out, void* residual, const void* x, ElemType act_type, const void* weight,
                            ElemType weight_type, int64_t rows, int64_t hidden, float eps, cudaStream_t stream) {
  if (rows == 0 || hidden == 0) return cudaSuccess;
  dispatch_act(act_type, [&](auto tag) {
    using A = decltype(tag);
    constexpr int E = 16 / static_cast<int>(sizeof(A));
    const auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    if (hidden % E == 0 && hidden / E <= int64_t{kVecThreads} * kMaxChunks && aligned(out) && aligned(residual) &&
        aligned(x)) {
      launch_kernel(rms_norm_vec_kernel<A>, static_cast<unsigned>(rows), kVecThreads, 0, stream, static_cast<A*>(out),
                    static_cast<A*>(residual), static_cast<const A*>(x), weight, weight_type, hidden, eps);
      return;
    }
    launch_kernel(rms_norm_kernel<A>, static_cast<unsigned>(rows), kThreads, 0, stream, static_cast<A*>(out),
                  static_cast<A*>(residual), static_cast<const A*>(x), weight, weight_type, hidden, eps);
  });
  return cudaGetLastError();
}

}  // namespace bw::cuda
