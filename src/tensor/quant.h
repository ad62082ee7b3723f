// Block-quantised tensors: dequantisation of the GGUF block types to float32, and
// reference quantisers for Q8_0 and Q4_0 (used to write small quantised test models).
//
// The dequantisers reproduce ggml's reference dequantize_row_* bit for bit in float32 (the
// shared test data checks this with a SHA-256 over every value of real files). Block
// layouts (all little-endian, f16 scales):
//   Q8_0 {f16 d; i8 qs[32]}                         x = q * d
//   Q4_0 {f16 d; u8 qs[16]}                         x = (q - 8) * d
//   Q4_1 {f16 d, m; u8 qs[16]}                      x = q * d + m
//   Q5_0 {f16 d; u8 qh[4]; u8 qs[16]}               x = (q - 16) * d
//   Q5_1 {f16 d, m; u8 qh[4]; u8 qs[16]}            x = q * d + m
//   Q4_K {f16 d, dmin; u8 scales[12]; u8 qs[128]}   256 values, 8 sub-blocks of 32
//   Q5_K {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}
//   Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}  16 sub-blocks of 16
// In the 32-value types the low nibbles of qs hold elements 0..15, the high ones 16..31.
//
// Every function takes raw pointers with explicit sizes and checks them; none of them
// reads or writes outside [src, src + src_bytes) or [dst, dst + n). Thread-safe: pure
// functions (the optional pool is used, not owned).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/status.h"
#include "tensor/dtype.h"

namespace bw {

class ThreadPool;

// Dequantises `n` values of the block type `type` (one of the GGUF block types) from
// `src` into dst[0, n). `n` must be a whole number of blocks and `src_bytes` exactly the
// bytes of n values (dtype_bytes(type, n)); InvalidArgument otherwise.
Status dequantize_to_f32(DType type, const void* src, uint64_t src_bytes, float* dst, int64_t n);

// Like dequantize_to_f32, but also accepts F32, F16 and BF16 sources, and spreads the work
// over `pool` (by whole blocks) when one is given. Integer types are InvalidArgument.
Status convert_to_f32(DType type, const void* src, uint64_t src_bytes, float* dst, int64_t n,
                      ThreadPool* pool = nullptr);

// Round-to-nearest reference quantisers, as ggml's quantize_row_q8_0_ref /
// quantize_row_q4_0_ref: `n` (a multiple of 32) floats into `dst`, which must hold exactly
// dtype_bytes(type, n) bytes. Non-finite inputs give unspecified (but in-range) codes.
Status quantize_q8_0(const float* src, int64_t n, void* dst, uint64_t dst_bytes);
Status quantize_q4_0(const float* src, int64_t n, void* dst, uint64_t dst_bytes);

// Encodes `src` as `type` into a new buffer: F32, F16, BF16 (round to nearest even), Q8_0 and
// Q4_0. Other types are Unimplemented; a length that is not a whole number of blocks is
// InvalidArgument.
Result<std::vector<uint8_t>> quantize(DType type, std::span<const float> src);

}  // namespace bw
