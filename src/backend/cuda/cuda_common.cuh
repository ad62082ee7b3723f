// Device helpers shared by the CUDA kernels: element loads/stores in f32 and the
// dispatch from ElemType to a C++ element type. Included by .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

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

// Programmatic dependent launch (sm_90+): a kernel launched with launch_kernel may be
// scheduled while the previous kernel on the stream is still finishing (its launch latency
// hides behind that kernel's tail, which adds up over the ~300 small kernels of a decode
// step). So every kernel calls pdl_wait() before it touches memory: it returns once the
// previous grid has completed and its writes are visible (a no-op without PDL and before
// sm_90). BW_CUDA_PDL=0 in the environment turns it off.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel's blocks launch (and run up to their pdl_wait) before this one ends:
// small latency-bound kernels call it first thing so that the GEMV after them can start
// pulling its weights into L2 (pdl_prefetch_l2) while they run.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// Starts moving up to `bytes` (capped at 64 KiB) from `p` into L2, one 128-byte line per
// thread step; for data no earlier kernel writes (weights), so it may run before pdl_wait.
__device__ __forceinline__ void pdl_prefetch_l2(const void* p, int64_t bytes) {
  constexpr int64_t kMaxBytes = int64_t{64} << 10;
  const int64_t n = bytes < kMaxBytes ? bytes : kMaxBytes;
  const char* base = static_cast<const char*>(p);
  for (int64_t off = static_cast<int64_t>(threadIdx.x) * 128; off < n; off += static_cast<int64_t>(blockDim.x) * 128)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(base + off));
}

bool pdl_enabled();  // cuda_elementwise.cu: the current device is sm_90+ and BW_CUDA_PDL != 0

template <typename... KernelArgs, typename... Args>
void launch_kernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                   Args&&... args) {
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = pdl_enabled() ? 1 : 0;
  // Errors surface through cudaGetLastError(), which every launcher returns.
  (void)cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

inline unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace bw::cuda
