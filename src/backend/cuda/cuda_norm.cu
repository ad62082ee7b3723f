// rms_norm and the fused add_rms_norm, in HF's order (LlamaRMSNorm): variance = mean(x^2)
// in f32, out = weight * (x * rsqrt-free 1/sqrt(variance + eps)). One block per row.
#include "backend/cuda/cuda_common.cuh"

namespace bw::cuda {

namespace {

constexpr int kThreads = 256;

template <typename A>
__global__ void rms_norm_kernel(A* out, A* residual, const A* x, const void* weight, ElemType weight_type,
                                int64_t hidden, float eps) {
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

}  // namespace

cudaError_t launch_rms_norm(void* out, void* residual, const void* x, ElemType act_type, const void* weight,
                            ElemType weight_type, int64_t rows, int64_t hidden, float eps, cudaStream_t stream) {
  if (rows == 0 || hidden == 0) return cudaSuccess;
  dispatch_act(act_type, [&](auto tag) {
    using A = decltype(tag);
    rms_norm_kernel<A><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        static_cast<A*>(out), static_cast<A*>(residual), static_cast<const A*>(x), weight, weight_type, hidden, eps);
  });
  return cudaGetLastError();
}

}  // namespace bw::cuda
