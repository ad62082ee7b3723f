// Rotary position embedding (RoPE) frequencies, shared by every backend so that all of
// them rotate by exactly the same angles.
//
// The math mirrors Hugging Face transformers in float32: `rope_inv_freq` reproduces
// `_compute_default_rope_parameters` (plus the linear and `_compute_llama3_parameters`
// scalings) and `rope_angle` reproduces `freqs = inv_freq[None] @ position[..., None]`
// in float32. Backends then take std::cos / std::sin of that float angle and rotate
// NeoX-style (HF `rotate_half`): dim i pairs with dim i + rotary_dim/2.
//
// Float32 semantics, in detail (what "mirrors HF" means here):
//   exponent = float(2i) / float(rotary_dim)      (float32 division, as torch)
//   inv_freq = 1.0f / powf(theta, exponent)         (glibc powf is correctly rounded in
//                                                    practice; torch's vectorised pow may
//                                                    differ by 1 ulp on some entries)
//   llama3: wavelen = float(2*pi) / inv_freq; the regime tests compare in float32
//           against the float32-rounded wavelength limits; the smooth blend is evaluated
//           left to right in float32 with no fused multiply-add, like torch's eager ops.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "backend/backend.h"

namespace bw {

// InvalidArgument (for op `op`) unless p can rotate heads of head_dim: rotary_dim even
// in [2, head_dim], theta positive and finite, scaling factors positive, llama3 factors
// ordered. Every backend's rope_write_kv checks its parameters with it.
Status check_rope_params(std::string_view op, const RopeParams& p, int64_t head_dim);

// The rotary_dim/2 inverse frequencies of `p` (empty when rotary_dim < 2).
// inv_freq[i] = 1 / theta^(2i / rotary_dim), then the scaling of p.scaling.
std::vector<float> rope_inv_freq(const RopeParams& p);

// The rotation angle of frequency `inv_freq` at `position`: one float32 product, as HF.
inline float rope_angle(int64_t position, float inv_freq) { return static_cast<float>(position) * inv_freq; }

// Rotates one NeoX pair in place: x1 = x[i], x2 = x[i + rotary_dim/2], c = cos(angle),
// s = sin(angle). HF computes q * cos + rotate_half(q) * sin, i.e.
//   x1' = x1*c - x2*s,  x2' = x2*c + x1*s,
// with one float32 rounding per product and sum; the products go through memory so the
// compiler cannot fuse them into a multiply-add (GCC contracts by default in C++).
inline void rope_rotate_pair(float& x1, float& x2, float c, float s) {
  volatile float p[4] = {x1 * c, x2 * s, x2 * c, x1 * s};
  x1 = p[0] - p[1];
  x2 = p[2] + p[3];
}

}  // namespace bw
