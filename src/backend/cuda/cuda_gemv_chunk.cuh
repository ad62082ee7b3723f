// 16-byte chunks of a GEMV's weights (and activations) as floats, and the store of an
// output, for the two GEMV kernels (cuda_gemv.cu, cuda_gemv_rows.cu).
#pragma once

#include "backend/cuda/cuda_common.cuh"

namespace bw::cuda {

// Elements of W in one 16-byte chunk: 8 halves / bf16s or 4 floats.
template <typename W>
struct WChunk {
  static constexpr int kElems = 16 / static_cast<int>(sizeof(W));
};

__device__ __forceinline__ void unpack(const uint4& raw, float* o, float /*tag*/) {
  o[0] = __uint_as_float(raw.x), o[1] = __uint_as_float(raw.y), o[2] = __uint_as_float(raw.z);
  o[3] = __uint_as_float(raw.w);
}
__device__ __forceinline__ void unpack_bf16x2(uint32_t u, float* o) {
  o[0] = __uint_as_float(u << 16);
  o[1] = __uint_as_float(u & 0xffff0000u);
}
__device__ __forceinline__ void unpack(const uint4& raw, float* o, __nv_bfloat16 /*tag*/) {
  unpack_bf16x2(raw.x, o), unpack_bf16x2(raw.y, o + 2), unpack_bf16x2(raw.z, o + 4), unpack_bf16x2(raw.w, o + 6);
}
__device__ __forceinline__ void unpack(const uint4& raw, float* o, __half /*tag*/) {
  const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __half22float2(h[i]);
    o[2 * i] = f.x, o[2 * i + 1] = f.y;
  }
}

// E consecutive elements of x (aligned to min(16, E * sizeof(A)) bytes) as floats.
template <int E>
__device__ __forceinline__ void load_x(const float* p, float* o) {
#pragma unroll
  for (int j = 0; j < E; j += 4) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p + j));
    o[j] = v.x, o[j + 1] = v.y, o[j + 2] = v.z, o[j + 3] = v.w;
  }
}
template <int E>
__device__ __forceinline__ void load_x(const __nv_bfloat16* p, float* o) {
  if constexpr (E == 8) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    unpack_bf16x2(v.x, o), unpack_bf16x2(v.y, o + 2), unpack_bf16x2(v.z, o + 4), unpack_bf16x2(v.w, o + 6);
  } else {
    static_assert(E == 4);
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    unpack_bf16x2(v.x, o), unpack_bf16x2(v.y, o + 2);
  }
}

// One GEMV output: *out = s, or with accumulate *out += s rounded as a separate add of the
// stored product would round (the residual stream after an output projection).
template <typename O>
__device__ __forceinline__ void store_product(O* out, float s, bool accumulate) {
  *out = accumulate ? from_float<O>(to_float(*out) + to_float(from_float<O>(s))) : from_float<O>(s);
}

}  // namespace bw::cuda
