// matmul: out[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]), w in f32/f16/bf16, f32 accumulation.
//
// Two paths, chosen by M:
//  - Dot products (M <= kGemvMaxM: decode and small batches). Tasks are fixed groups of
//    kGemvRowsPerTask w rows; a task passes over its w rows (converted from f16/bf16 in
//    registers) once per group of up to 4 x rows, so w streams from memory once and the
//    later passes hit L2. For M == 1 this is a GEMV reading w exactly once. Each output is
//    8 lane-wise partial sums over K (lane l takes k = l mod 8, in order) reduced in a
//    fixed order, plus the K % 8 tail in order: the same for every register tile shape,
//    so a row's result does not depend on M within this path.
//  - Packed GEMM (larger M: prefill). Tasks are [kMc x kNc] tiles of out. A task converts
//    a [kNc, kKc] panel of w to f32 once, transposed into kNr-wide micro-panels held in a
//    thread-local buffer, and reuses it for all of its x rows with a register-blocked
//    kMr x kNr FMA micro-kernel. Each output is one running f32 sum over k = 0..K-1 in
//    order (partial sums pass through `out` between K blocks without changing the order).
// Tile sizes are constants, so the split and every summation order are independent of
// the number of threads: results are bit-identical for any pool size.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace bw::cpu {

namespace {

constexpr int64_t kGemvMaxM = 16;
constexpr int64_t kGemvRowsPerTask = 32;
constexpr int64_t kMr = 6;    // micro-kernel rows (of x)
constexpr int64_t kNr = 16;   // micro-kernel columns (rows of w)
constexpr int64_t kKc = 256;  // K block: a [kKc, kNr] f32 micro-panel (16 KiB) stays in L1
constexpr int64_t kNc = 64;   // w rows per task (a multiple of kNr)
constexpr int64_t kMc = 192;  // x rows per task (a multiple of kMr)

// --- Dot-product path (GEMV and small M) ---------------------------------------------------

// out[m, n0 + j] = dot(x[m, :], w[n0 + j, :]) + bias for m < MR, j < NR.
template <DType kW, int MR, int NR>
void dot_tile(const float* x, const uint8_t* w, int64_t k_dim, int64_t n0, const float* bias, float* out,
              int64_t n_dim) {
  const int64_t w_row_bytes = k_dim * storage_bytes(kW);
  const void* w_rows[NR];
  for (int j = 0; j < NR; ++j)
    w_rows[j] = w + (n0 + j) * w_row_bytes;
  int64_t k = 0;
  float sums[MR][NR];
#if BW_CPU_AVX2
  __m256 acc[MR][NR];
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j)
      acc[m][j] = _mm256_setzero_ps();
  }
  for (; k + 8 <= k_dim; k += 8) {
    __m256 xv[MR];
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m)
      xv[m] = _mm256_loadu_ps(x + m * k_dim + k);
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      const __m256 wv = load8<kW>(w_rows[j], k);
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m)
        acc[m][j] = _mm256_fmadd_ps(xv[m], wv, acc[m][j]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int j = 0; j < NR; ++j)
      sums[m][j] = hsum8(acc[m][j]);
  }
#else
  for (int m = 0; m < MR; ++m) {
    for (int j = 0; j < NR; ++j)
      sums[m][j] = 0.0f;
  }
#endif
  for (; k < k_dim; ++k) {
    for (int j = 0; j < NR; ++j) {
      const float wk = load1<kW>(w_rows[j], k);
      for (int m = 0; m < MR; ++m)
        sums[m][j] = std::fma(x[m * k_dim + k], wk, sums[m][j]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int j = 0; j < NR; ++j) {
      out[m * n_dim + n0 + j] = bias != nullptr ? sums[m][j] + bias[n0 + j] : sums[m][j];
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

// --- GEMM path ----------------------------------------------------------------------------

// Converts w[n0 .. n0 + rows, k0 .. k0 + kc) to f32 micro-panels: panel p holds rows
// n0 + p*kNr + r at packed[p*kc*kNr + k*kNr + r]; rows past `rows` are zero.
template <DType kW>
void pack_w(const uint8_t* w, int64_t k_dim, int64_t n0, int64_t rows, int64_t k0, int64_t kc, float* packed) {
  const int64_t row_bytes = k_dim * storage_bytes(kW);
  const int64_t num_panels = (rows + kNr - 1) / kNr;
  for (int64_t p = 0; p < num_panels; ++p) {
    float* dst = packed + p * kc * kNr;
    const int64_t panel_rows = std::min(kNr, rows - p * kNr);
    int64_t k = 0;
#if BW_CPU_AVX2
    if (panel_rows == kNr) {
      // 8 x 8 transposes: rows r0..r0+7, columns k..k+7.
      for (; k + 8 <= kc; k += 8) {
        for (int64_t r0 = 0; r0 < kNr; r0 += 8) {
          __m256 v[8];
          for (int i = 0; i < 8; ++i)
            v[i] = load8<kW>(w + (n0 + p * kNr + r0 + i) * row_bytes, k0 + k);
          const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
          const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
          const __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
          const __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
          const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
          const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
          const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
          const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
          float* d = dst + k * kNr + r0;
          _mm256_storeu_ps(d + 0 * kNr, _mm256_permute2f128_ps(s0, s4, 0x20));
          _mm256_storeu_ps(d + 1 * kNr, _mm256_permute2f128_ps(s1, s5, 0x20));
          _mm256_storeu_ps(d + 2 * kNr, _mm256_permute2f128_ps(s2, s6, 0x20));
          _mm256_storeu_ps(d + 3 * kNr, _mm256_permute2f128_ps(s3, s7, 0x20));
          _mm256_storeu_ps(d + 4 * kNr, _mm256_permute2f128_ps(s0, s4, 0x31));
          _mm256_storeu_ps(d + 5 * kNr, _mm256_permute2f128_ps(s1, s5, 0x31));
          _mm256_storeu_ps(d + 6 * kNr, _mm256_permute2f128_ps(s2, s6, 0x31));
          _mm256_storeu_ps(d + 7 * kNr, _mm256_permute2f128_ps(s3, s7, 0x31));
        }
      }
    }
#endif
    for (int64_t r = 0; r < kNr; ++r) {
      if (r >= panel_rows) {
        for (int64_t kk = k; kk < kc; ++kk)
          dst[kk * kNr + r] = 0.0f;
        continue;
      }
      const uint8_t* row = w + (n0 + p * kNr + r) * row_bytes;
      for (int64_t kk = k; kk < kc; ++kk)
        dst[kk * kNr + r] = load1<kW>(row, k0 + kk);
    }
  }
}

// c[m, 0 .. cols) (+)= sum over k < kc of x[m, k] * panel[k, :], for m < MR, in k order.
template <int MR>
void gemm_kernel(const float* x, int64_t ldx, const float* panel, int64_t kc, float* c, int64_t ldc, int64_t cols,
                 bool accumulate) {
  float tile[MR][kNr];
  for (int m = 0; m < MR; ++m) {
    for (int64_t j = 0; j < kNr; ++j)
      tile[m][j] = accumulate && j < cols ? c[m * ldc + j] : 0.0f;
  }
#if BW_CPU_AVX2
  __m256 acc0[MR], acc1[MR];
#pragma GCC unroll 6
  for (int m = 0; m < MR; ++m) {
    acc0[m] = _mm256_loadu_ps(tile[m]);
    acc1[m] = _mm256_loadu_ps(tile[m] + 8);
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(panel + k * kNr);
    const __m256 b1 = _mm256_loadu_ps(panel + k * kNr + 8);
#pragma GCC unroll 6
    for (int m = 0; m < MR; ++m) {
      const __m256 a = _mm256_broadcast_ss(x + m * ldx + k);
      acc0[m] = _mm256_fmadd_ps(a, b0, acc0[m]);
      acc1[m] = _mm256_fmadd_ps(a, b1, acc1[m]);
    }
  }
#pragma GCC unroll 6
  for (int m = 0; m < MR; ++m) {
    _mm256_storeu_ps(tile[m], acc0[m]);
    _mm256_storeu_ps(tile[m] + 8, acc1[m]);
  }
#else
  for (int64_t k = 0; k < kc; ++k) {
    for (int m = 0; m < MR; ++m) {
      const float a = x[m * ldx + k];
      for (int64_t j = 0; j < kNr; ++j)
        tile[m][j] += a * panel[k * kNr + j];
    }
  }
#endif
  for (int m = 0; m < MR; ++m) {
    for (int64_t j = 0; j < cols; ++j)
      c[m * ldc + j] = tile[m][j];
  }
}

void gemm_kernel_rows(int64_t rows, const float* x, int64_t ldx, const float* panel, int64_t kc, float* c, int64_t ldc,
                      int64_t cols, bool accumulate) {
  switch (rows) {
    case 1:
      return gemm_kernel<1>(x, ldx, panel, kc, c, ldc, cols, accumulate);
    case 2:
      return gemm_kernel<2>(x, ldx, panel, kc, c, ldc, cols, accumulate);
    case 3:
      return gemm_kernel<3>(x, ldx, panel, kc, c, ldc, cols, accumulate);
    case 4:
      return gemm_kernel<4>(x, ldx, panel, kc, c, ldc, cols, accumulate);
    case 5:
      return gemm_kernel<5>(x, ldx, panel, kc, c, ldc, cols, accumulate);
    default:
      return gemm_kernel<6>(x, ldx, panel, kc, c, ldc, cols, accumulate);
  }
}

template <DType kW>
void gemm(ThreadPool& pool, const float* x, int64_t m_dim, const uint8_t* w, int64_t k_dim, int64_t n_dim,
          const float* bias, float* out) {
  const int64_t n_tiles = (n_dim + kNc - 1) / kNc;
  const int64_t m_tiles = (m_dim + kMc - 1) / kMc;
  pool.parallel_for(n_tiles * m_tiles, [&](int64_t task_begin, int64_t task_end) {
    thread_local std::vector<float> packed;
    packed.resize(static_cast<size_t>(kNc * kKc));
    for (int64_t task = task_begin; task < task_end; ++task) {
      // Tasks that share a w panel are adjacent, so a thread often repacks nothing new
      // from memory (the panel stays in its L2).
      const int64_t n0 = (task / m_tiles) * kNc;
      const int64_t m0 = (task % m_tiles) * kMc;
      const int64_t rows_n = std::min(kNc, n_dim - n0);
      const int64_t rows_m = std::min(kMc, m_dim - m0);
      for (int64_t k0 = 0; k0 < k_dim; k0 += kKc) {
        const int64_t kc = std::min(kKc, k_dim - k0);
        pack_w<kW>(w, k_dim, n0, rows_n, k0, kc, packed.data());
        for (int64_t p = 0; p * kNr < rows_n; ++p) {
          const float* panel = packed.data() + p * kc * kNr;
          const int64_t cols = std::min(kNr, rows_n - p * kNr);
          for (int64_t m = 0; m < rows_m; m += kMr) {
            gemm_kernel_rows(std::min(kMr, rows_m - m), x + (m0 + m) * k_dim + k0, k_dim, panel, kc,
                             out + (m0 + m) * n_dim + n0 + p * kNr, n_dim, cols, k0 > 0);
          }
        }
      }
      for (int64_t m = m0; m < m0 + rows_m; ++m) {
        float* o = out + m * n_dim + n0;
        if (k_dim == 0) std::fill(o, o + rows_n, 0.0f);
        if (bias != nullptr) {
          for (int64_t j = 0; j < rows_n; ++j)
            o[j] += bias[n0 + j];
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
