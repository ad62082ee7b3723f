// Row gathers and elementwise kernels: embedding, add, silu_mul, to_f32.
#include <cstdlib>
#include <string_view>

#include "backend/cuda/cuda_common.cuh"

namespace bw::cuda {

namespace {

template <typename A>
__global__ void embedding_kernel(A* out, const void* table, ElemType table_type, int64_t vocab, int64_t hidden,
                                 const int32_t* ids, int* error_flag) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  A* o = out + t * hidden;
  if (id < 0 || id >= vocab) {
    if (threadIdx.x == 0) report_error(error_flag, kBadTokenId);
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x)
      o[i] = from_float<A>(0.0f);
    return;
  }
  const int64_t base = static_cast<int64_t>(id) * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x)
    o[i] = from_float<A>(load_any(table, base + i, table_type));
}

template <typename A>
__global__ void add_kernel(A* out, const A* a, const A* b, int64_t n) {
  pdl_wait();
  pdl_launch_dependents();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_float<A>(to_float(a[i]) + to_float(b[i]));
}

template <typename A>
__global__ void silu_mul_kernel(A* out, const A* gate_up, int64_t rows, int64_t f) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t n = rows * f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / f, c = i - r * f;
    const float g = to_float(gate_up[r * 2 * f + c]);
    const float u = to_float(gate_up[r * 2 * f + f + c]);
    out[i] = from_float<A>(g / (1.0f + expf(-g)) * u);
  }
}

template <typename A>
__global__ void add_bias_kernel(A* out, const void* bias, ElemType bias_type, int64_t rows, int64_t n) {
  pdl_wait();
  const int64_t total = rows * n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_float<A>(to_float(out[i]) + load_any(bias, i % n, bias_type));
}

__global__ void to_f32_kernel(float* dst, const void* src, ElemType t, int64_t n) {
  pdl_wait();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = load_any(src, i, t);
}

unsigned grid_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 65535 * 8 ? (b < 1 ? 1 : b) : 65535 * 8);
}

}  // namespace

bool pdl_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("BW_CUDA_PDL");
    if (env != nullptr && std::string_view(env) == "0") return false;
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return major >= 9;
  }();
  return enabled;
}

cudaError_t launch_embedding(void* out, ElemType out_type, const void* table, ElemType table_type, int64_t vocab,
                             int64_t hidden, const int32_t* ids, int64_t num_tokens, int* error_flag,
                             cudaStream_t stream) {
  if (num_tokens == 0 || hidden == 0) return cudaSuccess;
  const int threads = hidden >= 512 ? 256 : 64;
  dispatch_act(out_type, [&](auto tag) {
    using A = decltype(tag);
    launch_kernel(embedding_kernel<A>, static_cast<unsigned>(num_tokens), threads, 0, stream, static_cast<A*>(out),
                  table, table_type, vocab, hidden, ids, error_flag);
  });
  return cudaGetLastError();
}

cudaError_t launch_add(void* out, const void* a, const void* b, ElemType type, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  dispatch_act(type, [&](auto tag) {
    using A = decltype(tag);
    launch_kernel(add_kernel<A>, grid_for(n, 256), 256, 0, stream, static_cast<A*>(out), static_cast<const A*>(a),
                  static_cast<const A*>(b), n);
  });
  return cudaGetLastError();
}

cudaError_t launch_silu_mul(void* out, const void* gate_up, ElemType type, int64_t rows, int64_t f,
                            cudaStream_t stream) {
  if (rows == 0 || f == 0) return cudaSuccess;
  dispatch_act(type, [&](auto tag) {
    using A = decltype(tag);
    launch_kernel(silu_mul_kernel<A>, grid_for(rows * f, 256), 256, 0, stream, static_cast<A*>(out),
                  static_cast<const A*>(gate_up), rows, f);
  });
  return cudaGetLastError();
}

cudaError_t launch_add_bias(void* out, ElemType out_type, const void* bias, ElemType bias_type, int64_t rows, int64_t n,
                            cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  dispatch_act(out_type, [&](auto tag) {
    using A = decltype(tag);
    launch_kernel(add_bias_kernel<A>, grid_for(rows * n, 256), 256, 0, stream, static_cast<A*>(out), bias, bias_type,
                  rows, n);
  });
  return cudaGetLastError();
}

cudaError_t launch_to_f32(float* dst, const void* src, ElemType src_type, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  launch_kernel(to_f32_kernel, grid_for(n, 256), 256, 0, stream, dst, src, src_type, n);
  return cudaGetLastError();
}

}  // namespace bw::cuda
