// Internal to cuda_decoder_stack.cu: a ring page's GEMV on the tensor cores by one warp,
// which the gate/up projection takes where its page shape allows (BW_CUDA_STACK_GU_TC).
// Included by that file only.
//
// Why: the CUDA-core pages (Consumer::page) consume a page at about the rate HBM delivers
// it, so after a wait the ring never drains faster than it refills. These are ~2.4x
// faster per page, yet the step is not (H200, 1.5B, 2026-11-29, tokens/s, default 24 KiB
// pages): consumers alone (BW_CUDA_STACK_DEBUG=4) 1,236 (gate/up) / 1,272 (+ LM head) vs
// 1,116; the chain without copies (=5) 945 / 973 vs 883; the full step 766-771 / 771-773
// vs 794-796. Why the copies cost these pages more is the open question (a warp holds its
// page's slot for a whole page, so eight warps can hold all eight slots: with 12 KiB pages,
// 16 slots, they win, 722 vs 701, but small pages lose more elsewhere). Off by default.
//
// A page holds `rows` rows of K (1, 2, 4, 8 or 16) seen as 16 pseudo-rows: each row splits
// into segs = 16 / rows segments of lp = K / segs (one row: 8 segments, and pseudo-rows
// 8-15 repeat 0-7). Each 16-wide k-step of a pseudo-row is one mma.sync m16n8k16 whose A
// operand is the 16 pseudo-rows (one ldmatrix x4 straight from the landed page) and whose
// B columns are x (in shared memory): column n holds the x segment of pseudo-rows n and
// n + 8 (the same segment: segs divides 8), so D[n][n] and D[n + 8][n] are their dot
// products. Only those are used, so each column may walk its k-steps in its own order:
// column n starts n half-steps (16 bytes) later, which spreads an ldmatrix's 8 rows over
// all banks although K * 2 bytes is a multiple of 128.
#pragma once

#include <cstdint>
#include <utility>

#include "backend/cuda/cuda_decoder_stack_consumer.cuh"

namespace bw::cuda::decoder_stack {

constexpr int kPageBatch = 8;  // k-steps a page's warp loads before their mma.sync chain

// Whether pages of `rows` rows of K map onto tensor-core k-steps (see PageGeom): rows a
// power of two up to 16, whole 16-wide k-steps per pseudo-row, an even count of them.
__host__ __device__ constexpr int segments_for(int rows) { return rows == 1 ? 8 : 16 / rows; }
__host__ __device__ constexpr bool tc_page_fits(int64_t k, int rows) {
  return rows >= 1 && rows <= 16 && (rows & (rows - 1)) == 0 && k % (32 * segments_for(rows)) == 0 &&
         k / segments_for(rows) >= 32;
}

#ifdef BW_WGMMA

// This lane's view of a page of a given shape (computed once per op).
struct PageGeom {
  uint32_t a_offset = 0;  // byte offset in a page of this lane's ldmatrix row
  uint32_t x_offset = 0;  // byte offset in x of this lane's B column: its segment, + 4 (lane % 4)
  int halves = 2;         // 16-byte chunks in a pseudo-row
  int steps = 2;          // k-steps of a pseudo-row (even)
  int a_chunk = 0;        // this lane's ldmatrix chunk at step 0 (rotated)
  int x_chunk = 0;        // this lane's B column's chunk at step 0 (rotated as its row)
  int segs = 1;

  // For pages of `rows` rows of k (tc_page_fits).
  __device__ void init(int64_t k, int rows, int lane) {
    const bool repeat = rows == 1;
    segs = segments_for(rows);
    const int lp = static_cast<int>(k / segs);
    steps = lp / 16, halves = lp / 8;
    const int g = lane / 4, q = lane % 4;
    x_offset = static_cast<uint32_t>(((g % segs) * lp + 2 * q) * 2);
    x_chunk = g % halves;
    // ldmatrix x4: lane l gives row l % 8 of matrix l / 8 = (pseudo-rows 0-7 | 8-15) x (half 0 | 1).
    const int r = lane % 8, i = lane / 8;
    const int m = repeat ? r : r + 8 * (i & 1);
    a_offset = static_cast<uint32_t>(((m / segs) * k + (m % segs) * lp) * 2);
    a_chunk = ((i >> 1) + r) % halves;
  }
};

__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr));
  return v;
}
// The same at an immediate offset from addr (no address arithmetic in the loop).
template <int kOffset>
__device__ __forceinline__ uint32_t lds32_at(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1+%2];\n" : "=r"(v) : "r"(addr), "n"(kOffset));
  return v;
}
template <int kOffset>
__device__ __forceinline__ void ldmatrix_x4_at(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4+%5];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr), "n"(kOffset));
}
// k-steps U... of a page from a (this lane's ldmatrix row) and x (its B column), each 32
// bytes on: every load first, then the mma.sync chains (accumulator U % 4).
template <int... U>
__device__ __forceinline__ void page_batch(float (&d)[4][4], uint32_t a, uint32_t x, std::integer_sequence<int, U...>) {
  uint32_t w[sizeof...(U)][4], b[sizeof...(U)][2];
  ((ldmatrix_x4_at<32 * U>(w[U], a), b[U][0] = lds32_at<32 * U>(x), b[U][1] = lds32_at<32 * U + 16>(x)), ...);
  (mma_bf16(d[U % 4], w[U], b[U][0], b[U][1]), ...);
}

// The next ring page, x (the op's input, bf16) in the scratch: the warps take turns (turn:
// whose page this is, advanced here), dst[row] <- the page's rows' dot products by that
// warp. Every warp waits for every page and releases it (the others right away): a parity
// wait is only unambiguous if the waiter saw the slot's previous use land, and the slot is
// not refilled before every warp is past it. No barrier: the op's epilogue (finish, S = 1)
// runs once per op, after every page.
__device__ __forceinline__ void tc_page(Consumer& c, const PageGeom& pg, int rows, float* dst, int& turn) {
  const bool mine = turn == c.warp;
  turn = turn + 1 == kConsumerWarps ? 0 : turn + 1;
  const uint32_t slot = c.cur.slot;
  mbar_wait(c.full + 8 * slot, c.cur.phase);
  c.cur.advance(c.p.pages);
  if (!mine) {
    __syncwarp();
    if (c.lane == 0) mbar_arrive(c.empty + 8 * slot);
    return;
  }
  float d[4][4] = {};  // four accumulator chains
  if (!debug_skips_arithmetic(c.a.debug)) {
    const uint32_t row = smem_addr(c.ring) + slot * c.p.page_bytes + pg.a_offset;
    const uint32_t xrow = smem_addr(c.scratch) + pg.x_offset;
    // Step s reads chunk 2 s + (rotation <= 8) of a pseudo-row of 2 steps chunks: before
    // the last 4 steps no lane wraps, so those steps run in batches whose addresses are
    // immediate offsets from one pointer per operand (ldmatrix, two lds, mma: no index
    // arithmetic per step); the last 4 steps wrap per lane.
    const int plain = max(pg.steps - 4, 0);
    uint32_t a_ptr = row + pg.a_chunk * 16, x_ptr = xrow + pg.x_chunk * 16;
    int s = 0;
    for (; s + kPageBatch <= plain; s += kPageBatch, a_ptr += 32 * kPageBatch, x_ptr += 32 * kPageBatch)
      page_batch(d, a_ptr, x_ptr, std::make_integer_sequence<int, kPageBatch>{});
    for (; s + 2 <= plain; s += 2, a_ptr += 64, x_ptr += 64)
      page_batch(d, a_ptr, x_ptr, std::make_integer_sequence<int, 2>{});
    if (s < plain) page_batch(d, a_ptr, x_ptr, std::make_integer_sequence<int, 1>{}), ++s;
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // (s >= steps - 4 now: at most 4 steps are left)
      if (s + j >= pg.steps) break;
      const int ca = pg.a_chunk + 2 * (s + j), cx = pg.x_chunk + 2 * (s + j);
      const int c0 = ca >= pg.halves ? ca - pg.halves : ca;
      const int x0 = cx >= pg.halves ? cx - pg.halves : cx, x1 = x0 + 1 == pg.halves ? 0 : x0 + 1;
      uint32_t w[4];
      ldmatrix_x4(w, row + c0 * 16);
      mma_bf16(d[j], w, lds32(xrow + x0 * 16), lds32(xrow + x1 * 16));
    }
  }
  // D[n][n] and D[n + 8][n] sit in lane 4 n + n / 2, elements n % 2 and 2 + n % 2.
  const int g = c.lane / 4;
  const bool odd = (g & 1) != 0;
  float sums[4];
#pragma unroll
  for (int e = 0; e < 4; ++e)
    sums[e] = (d[0][e] + d[1][e]) + (d[2][e] + d[3][e]);
  const float lo = odd ? sums[1] : sums[0];  // pseudo-row g
  const float hi = odd ? sums[3] : sums[2];  // pseudo-row g + 8
  if (pg.segs == 1) {
    if (c.lane % 4 == g / 2) {
      if (g < rows) dst[g] = lo;
      if (g + 8 < rows) dst[g + 8] = hi;
    }
  } else {
    // Lane r < rows sums its row's segments (pseudo-rows r segs ... r segs + segs - 1).
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int m = (c.lane % 16) * pg.segs + j, n = m % 8, src = 4 * n + n / 2;
      const float vlo = __shfl_sync(0xffffffffu, lo, src), vhi = __shfl_sync(0xffffffffu, hi, src);
      if (j < pg.segs) sum += m < 8 ? vlo : vhi;
    }
    if (c.lane < rows) dst[c.lane] = sum;
  }
  __syncwarp();
  if (c.lane == 0) mbar_arrive(c.empty + 8 * slot);
}

#endif  // BW_WGMMA

}  // namespace bw::cuda::decoder_stack
