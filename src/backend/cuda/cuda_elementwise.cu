// Row gathers and elementwise kernels: embedding, add, silu_mul, to_f32.
#include <climits>
#include <cstdint>
#include <cstdlib>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_env.h"

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

// Row-wise elementwise kernels: blockIdx.y walks the rows and x the columns, so no thread
// divides a flat index by the row length (a 64-bit division, which cost silu_mul two thirds
// of its time on a 2,048-token prefill), and rows whose length is a multiple of a 16-byte
// vector move 16 bytes per load and store.
template <typename A>
constexpr int kVec = 16 / static_cast<int>(sizeof(A));
template <typename A>
struct alignas(16) Vec {
  A v[kVec<A>];
};

__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// out [rows, f] = silu(gate) * up of gate_up [rows, 2f]; VEC: f % kVec == 0, 16-byte
// aligned rows (in vectors of kVec elements: `cols` = f / kVec).
template <typename A, bool VEC>
__global__ void silu_mul_kernel(A* out, const A* gate_up, int64_t rows, int32_t f) {
  pdl_wait();
  pdl_launch_dependents();
  const int32_t cols = VEC ? f / kVec<A> : f;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const A* gate = gate_up + r * 2 * f;
    const A* up = gate + f;
    A* o = out + r * f;
    for (int32_t c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
      if constexpr (VEC) {
        const Vec<A> g = reinterpret_cast<const Vec<A>*>(gate)[c];
        const Vec<A> u = reinterpret_cast<const Vec<A>*>(up)[c];
        Vec<A> y;
#pragma unroll
        for (int k = 0; k < kVec<A>; ++k)
          y.v[k] = from_float<A>(silu_times(to_float(g.v[k]), to_float(u.v[k])));
        reinterpret_cast<Vec<A>*>(o)[c] = y;
      } else {
        o[c] = from_float<A>(silu_times(to_float(gate[c]), to_float(up[c])));
      }
    }
  }
}

// out [rows, n] += bias [n] (any type); VEC as above, for out.
template <typename A, bool VEC>
__global__ void add_bias_kernel(A* out, const void* bias, ElemType bias_type, int64_t rows, int32_t n) {
  pdl_wait();
  const int32_t cols = VEC ? n / kVec<A> : n;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    A* o = out + r * n;
    for (int32_t c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
      if constexpr (VEC) {
        Vec<A> y = reinterpret_cast<Vec<A>*>(o)[c];
#pragma unroll
        for (int k = 0; k < kVec<A>; ++k)
          y.v[k] = from_float<A>(to_float(y.v[k]) + load_any(bias, c * kVec<A> + k, bias_type));
        reinterpret_cast<Vec<A>*>(o)[c] = y;
      } else {
        o[c] = from_float<A>(to_float(o[c]) + load_any(bias, c, bias_type));
      }
    }
  }
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

// A row-wise kernel's grid: enough blocks of `threads` for one row's `cols` in x, the rows
// (at most 65,535 at once; the kernels loop over the rest) in y.
dim3 rows_grid(int64_t rows, int64_t cols, int threads) {
  const int64_t x = (cols + threads - 1) / threads;
  return dim3(static_cast<unsigned>(x < 1 ? 1 : x), static_cast<unsigned>(rows < 65535 ? rows : 65535));
}

// Whether rows of `n` elements of A starting at each pointer move as 16-byte vectors.
template <typename A>
bool vectorizable(int64_t n, const void* a, const void* b = nullptr) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return n % kVec<A> == 0 && aligned(a) && (b == nullptr || aligned(b));
}

}  // namespace

bool pdl_enabled() {
  static const bool enabled = [] {
    if (!env_switch_on("BW_CUDA_PDL")) return false;
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
  if (f > INT32_MAX / 2) return cudaErrorInvalidValue;
  dispatch_act(type, [&](auto tag) {
    using A = decltype(tag);
    auto* o = static_cast<A*>(out);
    const auto* gu = static_cast<const A*>(gate_up);
    const auto n = static_cast<int32_t>(f);
    if (vectorizable<A>(f, out, gate_up)) {
      launch_kernel(silu_mul_kernel<A, true>, rows_grid(rows, f / kVec<A>, 256), 256, 0, stream, o, gu, rows, n);
    } else {
      launch_kernel(silu_mul_kernel<A, false>, rows_grid(rows, f, 256), 256, 0, stream, o, gu, rows, n);
    }
  });
  return cudaGetLastError();
}

cudaError_t launch_add_bias(void* out, ElemType out_type, const void* bias, ElemType bias_type, int64_t rows, int64_t n,
                            cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  if (n > INT32_MAX) return cudaErrorInvalidValue;
  dispatch_act(out_type, [&](auto tag) {
    using A = decltype(tag);
    auto* o = static_cast<A*>(out);
    const auto cols = static_cast<int32_t>(n);
    if (vectorizable<A>(n, out)) {
      launch_kernel(add_bias_kernel<A, true>, rows_grid(rows, n / kVec<A>, 256), 256, 0, stream, o, bias, bias_type,
                    rows, cols);
    } else {
      launch_kernel(add_bias_kernel<A, false>, rows_grid(rows, n, 256), 256, 0, stream, o, bias, bias_type, rows, cols);
    }
  });
  return cudaGetLastError();
}

cudaError_t launch_to_f32(float* dst, const void* src, ElemType src_type, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  launch_kernel(to_f32_kernel, grid_for(n, 256), 256, 0, stream, dst, src, src_type, n);
  return cudaGetLastError();
}

}  // namespace bw::cuda
