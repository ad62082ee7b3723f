// The GEMV-shaped matmul (and the fallback for dtype pairs cuBLASLt does not take):
// out[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]), f32 accumulation; out is in x's dtype or f32.
//
// Bandwidth-bound for decode: w streams from memory once per pass over up to 16 rows of x
// (grid.y covers larger M). Two kernels:
// - gemv_kernel (FMA, every dtype pair): a CTA of 8 warps handles groups of R rows of w,
//   S warps splitting K of a group (S chosen on the host so that small-N shapes still
//   fill every SM and no warp runs long); each lane keeps several 16-byte loads of w in
//   flight (ld.global.nc, no L1 allocation) and reads x through the read-only cache. The
//   x row count is a template parameter (1, 2, 4, 8, 16) so that M = 1 carries no unused
//   accumulators.
// - gemv_mma_kernel (bf16 x and w, M >= 3): mma.sync with 8 rows of w per warp, where
//   the FMA kernel would be compute-bound.
// Partial sums of the S warps meet in shared memory. The vector paths need 16-byte
// chunks of w and x rows (K a multiple of the chunk, aligned bases); otherwise a scalar
// loop (correct, slower) takes over. No host sync or allocation: graph-capturable.
// M = 1 with 2-byte weights and at least 16 rows per SM goes to the single-row kernel of
// cuda_gemv_rows.cu instead (a decode step's projections and LM head at batch 1).
#include <type_traits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_gemv_chunk.cuh"

namespace bw::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxM = 16;

// 16 bytes of w, streamed: read-only path, not kept in L1 (w is read exactly once).
__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

// R rows of w per warp (the x chunks loaded once serve all R; R = 1 at M = 1, where x
// costs one load per w load anyway) and U chunks of each row in flight per lane before
// any is used (fewer when accumulators need the registers): chosen in launch_typed.

// CTAs per SM the register budget is set for (enough warps to keep w loads in flight).
template <int MT>
constexpr int min_ctas() {
  return MT <= 2 ? 4 : (MT <= 8 ? 3 : 2);
}

template <typename A, typename W, typename O, int MT, int R, int U>
__global__ void __launch_bounds__(kThreads, min_ctas<MT>())
    gemv_kernel(O* __restrict__ out, const A* __restrict__ x, const W* __restrict__ w, const void* bias,
                ElemType bias_type, int64_t m, int64_t n, int64_t k, int split, bool vec, bool accumulate) {
  {  // this CTA's rows of w, before waiting for x (weights are never written by a kernel)
    const int64_t first = static_cast<int64_t>(blockIdx.x) * (kWarps / split * R);
    if (blockIdx.y == 0 && first < n) {
      const int64_t rows = n - first < kWarps / split * R ? n - first : kWarps / split * R;
      pdl_prefetch_l2(w + first * k, rows * k * static_cast<int64_t>(sizeof(W)));
    }
  }
  pdl_wait();
  __shared__ float partial[kWarps][R][MT];
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int rows_per_cta = kWarps / split * R;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows_per_cta + static_cast<int64_t>(warp / split) * R;
  const int slice = warp % split;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kMaxM;
  const int mc = static_cast<int>(m - m0 < MT ? m - m0 : MT);
  const A* xb = x + m0 * k;
  float acc[R][MT];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int i = 0; i < MT; ++i)
      acc[r][i] = 0.0f;

  if (row0 < n) {
    // Rows past N (in the last group) re-read row N - 1; their sums are dropped.
    const W* wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r)
      wr[r] = w + (row0 + r < n ? row0 + r : n - 1) * k;
    const int group = split * 32;        // threads on these rows
    const int gtid = slice * 32 + lane;  // this thread's place among them
    if (vec) {
      constexpr int E = WChunk<W>::kElems;  // elements per 16-byte chunk of w
      const int64_t chunks = k / E;
      for (int64_t base = gtid; base < chunks; base += static_cast<int64_t>(group) * U) {
        uint4 wv[U][R];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int64_t c = base + static_cast<int64_t>(u) * group;
#pragma unroll
          for (int r = 0; r < R; ++r)
            wv[u][r] = c < chunks ? load_stream(wr[r] + c * E) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int64_t c = base + static_cast<int64_t>(u) * group;
          if (c < chunks) {
            float wf[R][E];
#pragma unroll
            for (int r = 0; r < R; ++r)
              unpack(wv[u][r], wf[r], W{});
#pragma unroll
            for (int i = 0; i < MT; ++i) {
              if (i < mc) {
                float xf[E];
                load_x<E>(xb + i * k + c * E, xf);
#pragma unroll
                for (int r = 0; r < R; ++r)
#pragma unroll
                  for (int e = 0; e < E; ++e)
                    acc[r][i] = fmaf(xf[e], wf[r][e], acc[r][i]);
              }
            }
          }
        }
      }
    } else {
      for (int64_t kr = gtid; kr < k; kr += group) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const float wf = to_float(wr[r][kr]);
#pragma unroll
          for (int i = 0; i < MT; ++i)
            if (i < mc) acc[r][i] = fmaf(to_float(xb[i * k + kr]), wf, acc[r][i]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      const float s = warp_sum(acc[r][i]);
      if (lane == 0) partial[warp][r][i] = s;
    }
  }
  __syncthreads();
  // Thread t < rows_per_cta * MT finishes (CTA row t / MT, x row t % MT).
  for (int t = static_cast<int>(threadIdx.x); t < rows_per_cta * MT; t += kThreads) {
    const int cr = t / MT, i = t % MT;
    const int g = cr / R, r = cr % R;
    const int64_t orow = static_cast<int64_t>(blockIdx.x) * rows_per_cta + cr;
    if (orow < n && i < mc) {
      float s = 0.0f;
      for (int q = 0; q < split; ++q)
        s += partial[g * split + q][r][i];
      if (bias != nullptr) s += load_any(bias, orow, bias_type);
      store_product(out + (m0 + i) * n + orow, s, accumulate);
    }
  }
}

// --- Tensor-core path: bf16 x and w, 3 <= M <= 16 per pass --------------------------
// mma.sync m16n8k16 with the x rows as the 16-row A operand (rows past M are zero) and 8
// rows of w as the B operand, so one warp covers 8 rows of w. The order of k inside a dot
// product is free, so each lane loads 16 contiguous bytes (8 values of k) of its w row
// and of its x rows and feeds them to two mma steps: lane (g = lane / 4, q = lane % 4)
// holds real k [8q, 8q + 8) of a 32-wide tile, which both operands map to the logical
// columns {2q, 2q + 1, 2q + 8, 2q + 9} of step 1 (real 8q + 0..3) and of step 2 (real
// 8q + 4..7). Needs K % 8 == 0 and 16-byte aligned x and w.

__device__ __forceinline__ void mma_bf16(float* d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

// One CTA: kWarps / S groups of 8 rows of w; warp (g * S + s) takes every S-th 32-wide k
// tile of its group, starting at s. kM16: x rows 8..15 of the pass may be present.
template <typename O, bool kM16, int U>
__global__ void __launch_bounds__(kThreads, 3)
    gemv_mma_kernel(O* __restrict__ out, const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                    const void* bias, ElemType bias_type, int64_t m, int64_t n, int64_t k, int split, bool accumulate) {
  {  // this CTA's rows of w, before waiting for x (weights are never written by a kernel)
    const int64_t first = static_cast<int64_t>(blockIdx.x) * (kWarps / split * 8);
    if (blockIdx.y == 0 && first < n) {
      const int64_t rows = n - first < kWarps / split * 8 ? n - first : kWarps / split * 8;
      pdl_prefetch_l2(w + first * k, rows * k * static_cast<int64_t>(sizeof(__nv_bfloat16)));
    }
  }
  pdl_wait();
  __shared__ float partial[kWarps][32][4];
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, q = lane % 4;
  const int rows_per_cta = kWarps / split * 8;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows_per_cta + static_cast<int64_t>(warp / split) * 8;
  const int slice = warp % split;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kMaxM;
  const int mc = static_cast<int>(m - m0 < kMaxM ? m - m0 : kMaxM);
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (row0 < n) {
    // Rows of w past N re-read row N - 1, x rows past M read row 0 of the pass; both are
    // dropped (x ones are zeroed before the mma).
    const __nv_bfloat16* wp = w + (row0 + g < n ? row0 + g : n - 1) * k + 8 * q;
    const bool xa_ok = g < mc, xb_ok = kM16 && g + 8 < mc;
    const __nv_bfloat16* xa = x + (m0 + (xa_ok ? g : 0)) * k + 8 * q;
    const __nv_bfloat16* xb = x + (m0 + (xb_ok ? g + 8 : 0)) * k + 8 * q;
    const int64_t tiles = (k + 31) / 32;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    for (int64_t t0 = slice; t0 < tiles; t0 += static_cast<int64_t>(split) * U) {
      uint4 wv[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t t = t0 + static_cast<int64_t>(u) * split;
        wv[u] = t < tiles && t * 32 + 8 * q < k ? load_stream(wp + t * 32) : zero;
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t t = t0 + static_cast<int64_t>(u) * split;
        if (t < tiles) {  // warp-uniform: every lane takes part in the mma
          const bool in_k = t * 32 + 8 * q < k;
          const uint4 va = in_k && xa_ok ? __ldg(reinterpret_cast<const uint4*>(xa + t * 32)) : zero;
          const uint4 vb = in_k && xb_ok ? __ldg(reinterpret_cast<const uint4*>(xb + t * 32)) : zero;
          mma_bf16(acc, va.x, vb.x, va.y, vb.y, wv[u].x, wv[u].y);
          mma_bf16(acc, va.z, vb.z, va.w, vb.w, wv[u].z, wv[u].w);
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < 4; ++j)
    partial[warp][lane][j] = acc[j];
  __syncthreads();
  if (slice != 0 || row0 >= n) return;
    // acc[j]: x row g + 8 * (j / 2), w row row0 + 2q + j % 2.
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int mi = g + 8 * (j / 2);
    const int64_t row = row0 + 2 * q + j % 2;
    if (mi < mc && row < n) {
      float s = 0.0f;
      for (int p = 0; p < split; ++p)
        s += partial[warp + p][lane][j];
      if (bias != nullptr) s += load_any(bias, row, bias_type);
      store_product(out + (m0 + mi) * n + row, s, accumulate);
    }
  }
}

int sm_count() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 132;
  thread_local int cached_dev = -1;
  thread_local int cached = 0;
  if (dev != cached_dev) {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || v <= 0) v = 132;
    cached = v;
    cached_dev = dev;
  }
  return cached;
}

// Warps per row group (1, 2, 4 or 8): enough warps in all to fill the SMs (48 per SM),
// and rows short enough per warp (at most two rounds of U chunks per lane) that the last
// CTAs leave no long tail, but at least two chunks per lane. (Tuned on an H200: 24 or 96
// warps per SM, or one or four rounds, were no better.)
constexpr int kWarpsPerSm = 48;
constexpr int kRounds = 2;
int choose_split(int64_t groups, int64_t chunks_per_row, int unroll) {
  const int64_t want_warps = static_cast<int64_t>(sm_count()) * kWarpsPerSm;
  int s = 1;
  while (s < kWarps && (groups * s < want_warps || chunks_per_row > int64_t{32} * s * unroll * kRounds) &&
         chunks_per_row >= int64_t{32} * (2 * s) * 2)
    s *= 2;
  return s;
}

// The same for the tensor-core path: warps per group of 8 rows; tiles: 32-wide k tiles
// per row, at least two per warp.
int choose_split_mma(int64_t groups, int64_t tiles, int unroll) {
  const int64_t want_warps = static_cast<int64_t>(sm_count()) * kWarpsPerSm;
  int s = 1;
  while (s < kWarps && (groups * s < want_warps || tiles > int64_t{s} * unroll * kRounds) && tiles >= int64_t{4} * s)
    s *= 2;
  return s;
}

template <typename A, typename W, typename O>
void launch_typed(O* out, const A* x, const W* w, const void* bias, ElemType bias_type, int64_t m, int64_t n, int64_t k,
                  bool accumulate, cudaStream_t stream) {
  constexpr int E = WChunk<W>::kElems;
  constexpr int64_t x_align = E * sizeof(A) < 16 ? E * sizeof(A) : 16;
  const bool vec =
      k % E == 0 && reinterpret_cast<uintptr_t>(x) % x_align == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  const unsigned passes = static_cast<unsigned>((m + kMaxM - 1) / kMaxM);
  if constexpr (std::is_same_v<A, __nv_bfloat16> && std::is_same_v<W, __nv_bfloat16>) {
    // bf16 with M >= 3: tensor cores (the FMA path is compute-bound from M = 4 on).
    if (vec && m >= 3) {
      constexpr int U = 4;  // 6 and 8 (fewer CTAs per SM) were slower on an H200
      const int split = choose_split_mma((n + 7) / 8, (k + 31) / 32, U);
      const int rows_per_cta = kWarps / split * 8;
      const dim3 grid(static_cast<unsigned>((n + rows_per_cta - 1) / rows_per_cta), passes);
      if (m > 8) {
        launch_kernel(gemv_mma_kernel<O, true, U>, grid, kThreads, 0, stream, out, x, w, bias, bias_type, m, n, k,
                      split, accumulate);
      } else {
        launch_kernel(gemv_mma_kernel<O, false, U>, grid, kThreads, 0, stream, out, x, w, bias, bias_type, m, n, k,
                      split, accumulate);
      }
      return;
    }
  }
  // MT x rows per pass, R rows of w per warp, U chunks per row in flight per lane. M = 1:
  // U = 4 beat 8 and 16 on an H200 (more CTAs per SM).
  auto go = [&](auto mt, auto rows, auto unroll) {
    constexpr int MT = decltype(mt)::value;
    constexpr int R = decltype(rows)::value;
    constexpr int U = decltype(unroll)::value;
    const int split = choose_split((n + R - 1) / R, vec ? k / E : k / 8, U);
    const int rows_per_cta = kWarps / split * R;
    const dim3 grid(static_cast<unsigned>((n + rows_per_cta - 1) / rows_per_cta), passes);
    launch_kernel(gemv_kernel<A, W, O, MT, R, U>, grid, kThreads, 0, stream, out, x, w, bias, bias_type, m, n, k, split,
                  vec, accumulate);
  };
  using std::integral_constant;
  using I1 = integral_constant<int, 1>;
  using I2 = integral_constant<int, 2>;
  using I4 = integral_constant<int, 4>;
  using I8 = integral_constant<int, 8>;
  using I16 = integral_constant<int, 16>;
  if (m <= 1) {
    go(I1{}, I1{}, I4{});
  } else if (m <= 2) {
    go(I2{}, I2{}, I4{});
  } else if (m <= 4) {
    go(I4{}, I4{}, I2{});
  } else if (m <= 8) {
    go(I8{}, I2{}, I4{});
  } else {
    go(I16{}, I2{}, I4{});
  }
}

}  // namespace

cudaError_t launch_gemv(void* out, ElemType out_type, const void* x, ElemType act_type, const void* w, ElemType w_type,
                        const void* bias, ElemType bias_type, int64_t m, int64_t n, int64_t k, bool accumulate,
                        cudaStream_t stream) {
  if (m == 0 || n == 0) return cudaSuccess;
  const int sms = sm_count();
  GemvRowsArgs rows;
  rows.out = out, rows.out_type = out_type, rows.x = x, rows.act_type = act_type, rows.w = w, rows.w_type = w_type;
  rows.bias = bias, rows.bias_type = bias_type, rows.n = n, rows.k = k;
  rows.epilogue = accumulate ? RowsEpilogue::kAccumulate : RowsEpilogue::kStore;
  if (gemv_rows_applies(rows, m, sms)) return launch_gemv_rows(rows, sms, stream);
  dispatch_act(act_type, [&](auto atag) {
    using A = decltype(atag);
    dispatch_elem(w_type, [&](auto wtag) {
      using W = decltype(wtag);
      if (std::is_same_v<A, float> || out_type != ElemType::kF32) {
        launch_typed<A, W, A>(static_cast<A*>(out), static_cast<const A*>(x), static_cast<const W*>(w), bias, bias_type,
                              m, n, k, accumulate, stream);
      } else {  // bf16 activations, f32 output (logits)
        launch_typed<A, W, float>(static_cast<float*>(out), static_cast<const A*>(x), static_cast<const W*>(w), bias,
                                  bias_type, m, n, k, accumulate, stream);
      }
    });
  });
  return cudaGetLastError();
}

}  // namespace bw::cuda
