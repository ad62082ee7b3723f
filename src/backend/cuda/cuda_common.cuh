// Device helpers shared by the CUDA kernels: element loads/stores in f32 and the
// dispatch from ElemType to a C++ element type. Included by .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/cuda_kernels.h"

namespace bw::cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Element i of an array of runtime type `t`, as f32 (for small, cached operands such as
// norm weights and biases).
__device__ __forceinline__ float load_any(const void* p, int64_t i, ElemType t) {
  switch (t) {
    case ElemType::kF16:
      return __half2float(static_cast<const __half*>(p)[i]);
    case ElemType::kBF16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

// Records the first error code; later ones are dropped.
__device__ __forceinline__ void report_error(int* flag, int code) {
  if (flag != nullptr) atomicCAS(flag, 0, code);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Calls fn(T{}) with T the element type of `t`.
template <typename Fn>
void dispatch_elem(ElemType t, Fn&& fn) {
  switch (t) {
    case ElemType::kF16:
      fn(__half{});
      break;
    case ElemType::kBF16:
      fn(__nv_bfloat16{});
      break;
    default:
      fn(float{});
      break;
  }
}

// Activations are f32 or bf16 only (fewer instantiations).
template <typename Fn>
void dispatch_act(ElemType t, Fn&& fn) {
  if (t == ElemType::kBF16) {
    fn(__nv_bfloat16{});
  } else {
    fn(float{});
  }
}

inline unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace bw::cuda
