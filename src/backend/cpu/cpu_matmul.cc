// matmul: out[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]), w in f32/f16/bf16, f32 accumulation.
//
// Batch invariance: every output is computed in ONE summation order, whatever M, the other
// rows of x, the kernel path, the tile shape or the number of threads:
//   lane l (l = 0..7) = fma chain over k = l, l + 8, l + 16, ... < K8 (K8 = K rounded down
//                       to a multiple of 8), in increasing k, starting from +0;
//   s = ((lane0 + lane4) + (lane2 + lane6)) + ((lane1 + lane5) + (lane3 + lane7))  (hsum8);
//   s = fma chain over the tail k = K8 .. K-1 in order;  out = s + bias[n] (if any).
// So row r of out is bit-identical whether x has 1 row or many, and whichever rows share
// the call: the engine's acceptance tests rely on this (a sequence's tokens must not
// depend on what else is batched with it, nor on how its prompt was chunked). The order is
// built into two shared functions, accumulate_lanes (the only code that sums products) and
// finish_dot (the only code that reduces lanes, adds the tail and the bias); both paths
// below call them, so the equality holds by construction. Portable (non-AVX2) builds run
// the same order on 8 scalar lanes, so they agree with AVX2 builds bit for bit.
//
// Two paths, chosen by M for speed only:
//  - Dot products (M <= kGemvMaxM: decode and small batches). Tasks are fixed groups of
//    kGemvRowsPerTask w rows; a task passes over its w rows (converted from f16/bf16 in
//    registers) once per group of up to 4 x rows, so w streams from memory once and the
//    later passes hit L2. For M == 1 this is a GEMV reading w exactly once.
//  - Blocked dot products (larger M: prefill). Tasks are [kMc x-rows] x [kNc w-rows] tiles
//    of out. Per K block of kKc (a multiple of 8, so lane l keeps taking k = l mod 8 in
//    order), a task converts its [kNc, kKc] block of f16/bf16 w to f32 once into a
//    thread-local row-major buffer (f32 w is read in place) and runs kMr x kNr register
//    tiles of accumulate_lanes over it, keeping each output's 8 lanes in a thread-local
//    [kMc, kNc, 8] buffer between K blocks; after the last block finish_dot writes out.
// Tile sizes are constants and no output's order depends on them anyway, so results are
// also bit-identical for any pool size.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace bw::cpu {

namespace {

constexpr int64_t kLanes = 8;
constexpr int64_t kGemvMaxM = 16;
constexpr int64_t kGemvRowsPerTask = 32;
constexpr int kMr = 3;        // register tile rows (of x) of the blocked path
constexpr int kNr = 4;        // register tile columns (rows of w)
constexpr int64_t kKc = 512;  // K block, a multiple of kLanes
constexpr int64_t kNc = 32;   // w rows per task (a multiple of kNr)
constexpr int64_t kMc = 48;   // x rows per task (a multiple of kMr)
static_assert(kKc % kLanes == 0 && kNc % kNr == 0 && kMc % kMr == 0);

// --- The one summation order -------------------------------------------------------------

// 8 f32 lanes: an AVX2 register, or 8 scalars in the portable build (same arithmetic).
#if BW_CPU_AVX2
using Lanes = __m256;
inline Lanes lanes_zero() { return _mm256_setzero_ps(); }
inline Lanes lanes_load(const float* p) { return _mm256_loadu_ps(p); }
inline void lanes_store(float* p, Lanes v) { _mm256_storeu_ps(p, v); }
template <DType kW>
inline Lanes lanes_load_w(const void* row, int64_t k) {
  return load8<kW>(row, k);
}
inline Lanes lanes_fma(Lanes a, Lanes b, Lanes c) { return _mm256_fmadd_ps(a, b, c); }
inline float lanes_sum(Lanes v) { return hsum8(v); }
#else
struct Lanes {
  float v[kLanes];
};
inline Lanes lanes_zero() { return Lanes{}; }
inline Lanes lanes_load(const float* p) {
  Lanes r;
  std::memcpy(r.v, p, sizeof(r.v));
  return r;
}
inline void lanes_store(float* p, Lanes v) { std::memcpy(p, v.v, sizeof(v.v)); }
template <DType kW>
inline Lanes lanes_load_w(const void* row, int64_t k) {
  Lanes r;
  for (int64_t l = 0; l < kLanes; ++l)
    r.v[l] = load1<kW>(row, k + l);
  return r;
}
inline Lanes lanes_fma(Lanes a, Lanes b, Lanes c) {
  for (int64_t l = 0; l < kLanes; ++l)
    c.v[l] = std::fma(a.v[l], b.v[l], c.v[l]);
  return c;
}
// hsum8's order.
inline float lanes_sum(Lanes v) {
  const float lo0 = v.v[0] + v.v[4], lo1 = v.v[1] + v.v[5], lo2 = v.v[2] + v.v[6], lo3 = v.v[3] + v.v[7];
  return (lo0 + lo2) + (lo1 + lo3);
}
#endif

// The accumulation kernel of both paths. For m < MR, j < NR and lane l:
//   lanes[(m * lanes_ld + j) * 8 + l] (+)= sum over k = l, l + 8, ... < kc, in order, of
//   x[m * ldx + k] * w_j[k],   w_j = w + j * w_row_bytes (stored as kW).
// kResume: start from the saved lanes (a later K block) instead of zero. kc % 8 == 0.
template <DType kW, int MR, int NR, bool kResume>
void accumulate_lanes(const float* x, int64_t ldx, const uint8_t* w, int64_t w_row_bytes, int64_t kc, float* lanes,
                      int64_t lanes_ld) {
  Lanes acc[MR][NR];
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      if constexpr (kResume) {
        acc[m][j] = lanes_load(lanes + (m * lanes_ld + j) * kLanes);
      } else {
        acc[m][j] = lanes_zero();
      }
    }
  }
  for (int64_t k = 0; k < kc; k += kLanes) {
    Lanes xv[MR];
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m)
      xv[m] = lanes_load(x + m * ldx + k);
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      const Lanes wv = lanes_load_w<kW>(w + j * w_row_bytes, k);
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m)
        acc[m][j] = lanes_fma(xv[m], wv, acc[m][j]);
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j)
      lanes_store(lanes + (m * lanes_ld + j) * kLanes, acc[m][j]);
  }
}

// The reduction of both paths: the lanes of one output summed in hsum8's order, then the
// K % 8 tail k = k8 .. k_dim - 1 of x_row . w_row in order, then the bias (nullable).
template <DType kW>
inline float finish_dot(const float* lanes, const float* x_row, const uint8_t* w_row, int64_t k8, int64_t k_dim,
                        const float* bias) {
  float s = lanes_sum(lanes_load(lanes));
  for (int64_t k = k8; k < k_dim; ++k)
    s = std::fma(x_row[k], load1<kW>(w_row, k), s);
  return bias != nullptr ? s + *bias : s;
}

// --- Dot-product path (GEMV and small M) ---------------------------------------------------

// out[m, n0 + j] = dot(x[m, :], w[n0 + j, :]) + bias for m < MR, j < NR. Kept out of line:
// inlined into the task loop, its k loop loses registers to the loop around it.
template <DType kW, int MR, int NR>
[[gnu::noinline]] void dot_tile(const float* x, const uint8_t* w, int64_t k_dim, int64_t n0, const float* bias,
                                float* out, int64_t n_dim) {
  const int64_t w_row_bytes = k_dim * storage_bytes(kW);
  const int64_t k8 = k_dim - k_dim % kLanes;
  const uint8_t* w0 = w + n0 * w_row_bytes;
  float lanes[MR * NR * kLanes];
  accumulate_lanes<kW, MR, NR, false>(x, k_dim, w0, w_row_bytes, k8, lanes, NR);
  for (int m = 0; m < MR; ++m) {
    for (int j = 0; j < NR; ++j) {
      out[m * n_dim + n0 + j] = finish_dot<kW>(lanes + (m * NR + j) * kLanes, x + m * k_dim, w0 + j * w_row_bytes, k8,
                                               k_dim, bias != nullptr ? bias + n0 + j : nullptr);
    }
  }
}

// Register tiles: MR x rows by NR w rows, at most 12 accumulators.
template <int MR>
constexpr int kGemvNr = MR == 1   ? 8
                        : MR == 2 ? 6
                        : MR == 3 ? 4
                                  : 3;

template <DType kW, int MR>
void gemv_rows(const float* x, const uint8_t* w, int64_t k_dim, int64_t n_begin, int64_t n_end, const float* bias,
               float* out, int64_t n_dim) {
  constexpr int kNrGemv = kGemvNr<MR>;
  int64_t n = n_begin;
  for (; n + kNrGemv <= n_end; n += kNrGemv)
    dot_tile<kW, MR, kNrGemv>(x, w, k_dim, n, bias, out, n_dim);
  for (; n < n_end; ++n)
    dot_tile<kW, MR, 1>(x, w, k_dim, n, bias, out, n_dim);
}

// dot_tile with a run-time number of x rows (1..4).
template <DType kW, int NR>
void dot_tile_rows(int64_t rows, const float* x, const uint8_t* w, int64_t k_dim, int64_t n0, const float* bias,
                   float* out, int64_t n_dim) {
  switch (rows) {
    case 1:
      return dot_tile<kW, 1, NR>(x, w, k_dim, n0, bias, out, n_dim);
    case 2:
      return dot_tile<kW, 2, NR>(x, w, k_dim, n0, bias, out, n_dim);
    case 3:
      return dot_tile<kW, 3, NR>(x, w, k_dim, n0, bias, out, n_dim);
    default:
      return dot_tile<kW, 4, NR>(x, w, k_dim, n0, bias, out, n_dim);
  }
}

template <DType kW>
void gemv(ThreadPool& pool, const float* x, int64_t m_dim, const uint8_t* w, int64_t k_dim, int64_t n_dim,
          const float* bias, float* out) {
  const int64_t num_tasks = (n_dim + kGemvRowsPerTask - 1) / kGemvRowsPerTask;
  pool.parallel_for(num_tasks, [&](int64_t task_begin, int64_t task_end) {
    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t n_begin = task * kGemvRowsPerTask;
      const int64_t n_end = std::min(n_dim, n_begin + kGemvRowsPerTask);
      switch (m_dim) {
        case 1:
          gemv_rows<kW, 1>(x, w, k_dim, n_begin, n_end, bias, out, n_dim);
          continue;
        case 2:
          gemv_rows<kW, 2>(x, w, k_dim, n_begin, n_end, bias, out, n_dim);
          continue;
        case 3:
          gemv_rows<kW, 3>(x, w, k_dim, n_begin, n_end, bias, out, n_dim);
          continue;
        default:
          break;
      }
      // Several x rows: 3 w rows at a time stay in L1 while every group of up to 4 x
      // rows passes over them, so w streams from memory once.
      constexpr int kNrMulti = kGemvNr<4>;
      int64_t n = n_begin;
      for (; n + kNrMulti <= n_end; n += kNrMulti) {
        for (int64_t m = 0; m < m_dim; m += 4) {
          dot_tile_rows<kW, kNrMulti>(std::min<int64_t>(4, m_dim - m), x + m * k_dim, w, k_dim, n, bias,
                                      out + m * n_dim, n_dim);
        }
      }
      for (; n < n_end; ++n) {
        for (int64_t m = 0; m < m_dim; m += 4) {
          dot_tile_rows<kW, 1>(std::min<int64_t>(4, m_dim - m), x + m * k_dim, w, k_dim, n, bias, out + m * n_dim,
                               n_dim);
        }
      }
    }
  });
}

// --- Blocked path (prefill) ----------------------------------------------------------------

// One K block of a task: accumulate_lanes over every kMr x kNr register tile of the
// [rows_m, rows_n] task, x rows ldx apart starting at the block's first k, w_block rows
// w_row_bytes apart (f32), lanes [rows_m, kNc, 8].
template <bool kResume>
void block_pass(const float* x, int64_t ldx, int64_t rows_m, const uint8_t* w_block, int64_t w_row_bytes,
                int64_t rows_n, int64_t kc, float* lanes) {
  constexpr DType kF = DType::kF32;
  int64_t n = 0;
  for (; n + kNr <= rows_n; n += kNr) {
    const uint8_t* wn = w_block + n * w_row_bytes;
    int64_t m = 0;
    for (; m + kMr <= rows_m; m += kMr)
      accumulate_lanes<kF, kMr, kNr, kResume>(x + m * ldx, ldx, wn, w_row_bytes, kc, lanes + (m * kNc + n) * kLanes,
                                              kNc);
    for (; m < rows_m; ++m)
      accumulate_lanes<kF, 1, kNr, kResume>(x + m * ldx, ldx, wn, w_row_bytes, kc, lanes + (m * kNc + n) * kLanes, kNc);
  }
  for (; n < rows_n; ++n) {
    const uint8_t* wn = w_block + n * w_row_bytes;
    int64_t m = 0;
    for (; m + kMr <= rows_m; m += kMr)
      accumulate_lanes<kF, kMr, 1, kResume>(x + m * ldx, ldx, wn, w_row_bytes, kc, lanes + (m * kNc + n) * kLanes, kNc);
    for (; m < rows_m; ++m)
      accumulate_lanes<kF, 1, 1, kResume>(x + m * ldx, ldx, wn, w_row_bytes, kc, lanes + (m * kNc + n) * kLanes, kNc);
  }
}

template <DType kW>
void gemm(ThreadPool& pool, const float* x, int64_t m_dim, const uint8_t* w, int64_t k_dim, int64_t n_dim,
          const float* bias, float* out) {
  const int64_t k8 = k_dim - k_dim % kLanes;
  const int64_t w_row_bytes = k_dim * storage_bytes(kW);
  const int64_t n_tiles = (n_dim + kNc - 1) / kNc;
  const int64_t m_tiles = (m_dim + kMc - 1) / kMc;
  pool.parallel_for(n_tiles * m_tiles, [&](int64_t task_begin, int64_t task_end) {
    thread_local std::vector<float> w_f32;  // [kNc, kKc]: a K block of w converted to f32
    thread_local std::vector<float> lanes;  // [kMc, kNc, 8]: each output's lanes between K blocks
    w_f32.resize(static_cast<size_t>(kNc * kKc));
    lanes.resize(static_cast<size_t>(kMc * kNc * kLanes));
    for (int64_t task = task_begin; task < task_end; ++task) {
      // Tasks that share w rows are adjacent, so a thread often finds them in its L2.
      const int64_t n0 = (task / m_tiles) * kNc;
      const int64_t m0 = (task % m_tiles) * kMc;
      const int64_t rows_n = std::min(kNc, n_dim - n0);
      const int64_t rows_m = std::min(kMc, m_dim - m0);
      const float* xt = x + m0 * k_dim;
      if (k8 == 0) std::fill(lanes.begin(), lanes.end(), 0.0f);
      for (int64_t k0 = 0; k0 < k8; k0 += kKc) {
        const int64_t kc = std::min(kKc, k8 - k0);
        const uint8_t* w_block = nullptr;
        int64_t block_row_bytes = 0;
        if constexpr (kW == DType::kF32) {
          w_block = w + n0 * w_row_bytes + k0 * static_cast<int64_t>(sizeof(float));
          block_row_bytes = w_row_bytes;
        } else {
          for (int64_t j = 0; j < rows_n; ++j)
            to_f32(w + (n0 + j) * w_row_bytes + k0 * storage_bytes(kW), kW, kc, w_f32.data() + j * kKc);
          w_block = reinterpret_cast<const uint8_t*>(w_f32.data());
          block_row_bytes = kKc * static_cast<int64_t>(sizeof(float));
        }
        if (k0 == 0) {
          block_pass<false>(xt + k0, k_dim, rows_m, w_block, block_row_bytes, rows_n, kc, lanes.data());
        } else {
          block_pass<true>(xt + k0, k_dim, rows_m, w_block, block_row_bytes, rows_n, kc, lanes.data());
        }
      }
      for (int64_t m = 0; m < rows_m; ++m) {
        for (int64_t j = 0; j < rows_n; ++j) {
          const int64_t n = n0 + j;
          out[(m0 + m) * n_dim + n] =
              finish_dot<kW>(lanes.data() + (m * kNc + j) * kLanes, xt + m * k_dim, w + n * w_row_bytes, k8, k_dim,
                             bias != nullptr ? bias + n : nullptr);
        }
      }
    }
  });
}

}  // namespace

Status matmul(ThreadPool& pool, TensorView out, const TensorView& x, const TensorView& w, const TensorView& bias) {
  constexpr std::string_view kOp = "matmul";
  RETURN_IF_ERROR(expect_dtype(kOp, "x", x, DType::kF32));
  RETURN_IF_ERROR(expect_rank(kOp, "x", x, 2));
  RETURN_IF_ERROR(expect_storage_dtype(kOp, "w", w));
  RETURN_IF_ERROR(expect_rank(kOp, "w", w, 2));
  RETURN_IF_ERROR(expect_dtype(kOp, "out", out, DType::kF32));
  RETURN_IF_ERROR(expect_rank(kOp, "out", out, 2));
  const int64_t m_dim = x.dim(0), k_dim = x.dim(1), n_dim = w.dim(0);
  if (w.dim(1) != k_dim) {
    return InvalidArgument("matmul: x {} and w {} disagree on K", x.shape.to_string(), w.shape.to_string());
  }
  if (out.dim(0) != m_dim || out.dim(1) != n_dim) {
    return InvalidArgument("matmul: out {} must be [{}, {}] for x {} and w {}", out.shape.to_string(), m_dim, n_dim,
                           x.shape.to_string(), w.shape.to_string());
  }
  if (!bias.empty()) {
    RETURN_IF_ERROR(expect_storage_dtype(kOp, "bias", bias));
    if (bias.rank() != 1 || bias.dim(0) != n_dim) {
      return InvalidArgument("matmul: bias {} must be [{}] for w {}", bias.shape.to_string(), n_dim,
                             w.shape.to_string());
    }
  }
  RETURN_IF_ERROR(expect_data(kOp, "x", x));
  RETURN_IF_ERROR(expect_data(kOp, "w", w));
  RETURN_IF_ERROR(expect_data(kOp, "out", out));
  if (overlaps(out, x) || overlaps(out, w)) {
    return InvalidArgument("matmul: out {} must not overlap x or w", out.shape.to_string());
  }
  if (m_dim == 0 || n_dim == 0) return OkStatus();

  std::vector<float> bias_f32;
  if (!bias.empty()) {
    bias_f32.resize(static_cast<size_t>(n_dim));
    to_f32(bias.data, bias.dtype, n_dim, bias_f32.data());
  }
  const float* b = bias.empty() ? nullptr : bias_f32.data();
  const float* xp = x.as<const float>();
  const auto* wp = static_cast<const uint8_t*>(w.data);
  float* op = out.as<float>();
  with_storage_dtype(w.dtype, [&](auto tag) {
    constexpr DType kW = decltype(tag)::value;
    if (m_dim <= kGemvMaxM) {
      gemv<kW>(pool, xp, m_dim, wp, k_dim, n_dim, b, op);
    } else {
      gemm<kW>(pool, xp, m_dim, wp, k_dim, n_dim, b, op);
    }
  });
  return OkStatus();
}

}  // namespace bw::cpu
