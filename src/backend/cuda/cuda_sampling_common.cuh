// Device helpers shared by the two ways of sampling on the device: one block per row
// (cuda_sampling.cu) and rows split over many blocks (cuda_sampling_split.cu). Both must
// give the same token for the same row, seed and step, so the definitions they share
// (the fixed-point mass of a logit, the draw's target, the order of (value, id) pairs, the
// bias and penalties) live here once. Included by those .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/cuda_kernels.h"

namespace bw::cuda {
namespace sampling {

constexpr float kFixedScale = 17592186044416.0f;  // 2^44: probabilities <= 1 in fixed point

__device__ __forceinline__ uint64_t to_fixed(float p) { return static_cast<uint64_t>(p * kFixedScale); }

// Prefilters that let a selection skip most of the row: top-k first counts the logits
// within max - top_k_gap(j) = max - 2^(j - 1), top-p first sums the mass at or above
// mass_floor(j) = 2^(-4 (j + 1)); the tightest bound that provably holds the kept set
// limits the candidates. At most kMaxCandidates of them are ranked in shared memory.
constexpr int kNumGaps = 7;
__device__ __forceinline__ float top_k_gap(int j) { return __uint_as_float(static_cast<uint32_t>(126 + j) << 23); }
constexpr int kNumFloors = 6;
__device__ __forceinline__ float mass_floor(int j) {
  return __uint_as_float(static_cast<uint32_t>(127 - 4 * (j + 1)) << 23);
}
constexpr int kMaxCandidates = 1024;

// Order-preserving unsigned key of a float (larger float, larger key; -0 and +0 equal, as
// the host compares them, so their ties go by id).
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t bits = __float_as_uint(x == 0.0f ? 0.0f : x);
  return (bits & 0x80000000u) != 0 ? ~bits : (bits | 0x80000000u);
}

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
__device__ __forceinline__ uint4 philox(uint4 c, uint2 k) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c.x);
    const uint32_t lo0 = 0xD2511F53u * c.x;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c.z);
    const uint32_t lo1 = 0xCD9E8D57u * c.z;
    c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    k.x += 0x9E3779B9u;
    k.y += 0xBB67AE85u;
  }
  return c;
}

// (value, id) pairs: the larger value wins, then the lower id.
__device__ __forceinline__ bool beats(float v, int64_t i, float best, int64_t best_id) {
  return v > best || (v == best && i < best_id);
}

// The warp's best (value, id) by beats; every lane gets it.
__device__ __forceinline__ void warp_best(float& v, int64_t& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (beats(ov, oi, v, i)) v = ov, i = oi;
  }
}

// A logit's probability relative to the top token's, zero under min-p (min_p already
// clamped to [0, 1]): one definition for every pass that sums or walks the mass, so all
// give the same bits.
__device__ __forceinline__ float relative_prob(float v, float max_logit, float inv_temperature, float min_p) {
  const float p = expf((v - max_logit) * inv_temperature);
  return !(p >= min_p) || !(p > 0.0f) ? 0.0f : p;
}
__device__ __forceinline__ float clamped_min_p(const SamplingRowArgs& a) {
  return a.min_p > 0.0f ? fminf(a.min_p, 1.0f) : 0.0f;
}

// The draw's position in [0, kept_total): u, a 53-bit uniform from Philox4x32-10 keyed by
// the row's seed and counted by its step, times the kept total.
__device__ __forceinline__ uint64_t draw_target(const SamplingRowArgs& a, uint64_t kept_total) {
  const uint4 r =
      philox(make_uint4(static_cast<uint32_t>(a.step), static_cast<uint32_t>(a.step >> 32), 0x53414D50u, 0x4C452D31u),
             make_uint2(static_cast<uint32_t>(a.seed), static_cast<uint32_t>(a.seed >> 32)));
  const double u = static_cast<double>((static_cast<uint64_t>(r.x) << 21) | (r.y >> 11)) * 0x1.0p-53;  // [0, 1)
  const uint64_t target = static_cast<uint64_t>(u * static_cast<double>(kept_total));
  return target >= kept_total ? kept_total - 1 : target;  // (rounding)
}

// The logit bias, then the penalties, on row x (the row's own copy: logits, or its work
// row). Every thread of the block calls it; the bias tokens and the history tokens are
// distinct, so each logit has one writer per step. The row's pending token (the newest
// output token, still on the device) counts as one more occurrence of a listed token, or
// as a token of its own.
__device__ __forceinline__ void apply_bias_and_penalties(const SampleKernelArgs& args, const SamplingRowArgs& a,
                                                         float* x, int64_t vocab) {
  const auto stride = static_cast<int32_t>(blockDim.x);
  if (a.bias_end > a.bias_begin) {
    for (int32_t j = a.bias_begin + static_cast<int32_t>(threadIdx.x); j < a.bias_end; j += stride)
      x[args.bias_tokens[j]] += args.bias_values[j];
    __syncthreads();
  }
  if (!sampling_has_penalty(a)) return;
  const bool use_repetition = a.repetition_penalty != 1.0f;
  const auto penalize = [&](float& logit, int32_t count) {
    float v = logit;
    if (use_repetition) v = v > 0.0f ? __fdiv_rn(v, a.repetition_penalty) : __fmul_rn(v, a.repetition_penalty);
    if (count > 0) {
      v = __fsub_rn(v, __fadd_rn(__fmul_rn(a.frequency_penalty, static_cast<float>(count)), a.presence_penalty));
    }
    logit = v;
  };
  int32_t pending = -1;
  if (a.pending_row >= 0) {
    pending = args.pending_ids[a.pending_row];
    if (pending >= vocab) pending = -1;
  }
  bool listed = false;
  for (int32_t j = a.penalty_begin + static_cast<int32_t>(threadIdx.x); j < a.penalty_end; j += stride) {
    const int32_t token = args.penalty_tokens[j];
    const bool is_pending = token == pending;
    listed |= is_pending;
    penalize(x[token], args.penalty_output_counts[j] + (is_pending ? 1 : 0));
  }
  if (__syncthreads_or(listed) == 0 && pending >= 0 && threadIdx.x == 0) penalize(x[pending], 1);
  __syncthreads();
}

}  // namespace sampling
}  // namespace bw::cuda
