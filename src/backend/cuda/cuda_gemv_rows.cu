// The single-row GEMV of a decode step: out[N] = x[K] @ w[N, K]^T (+ bias), f32
// accumulation, one whole row of w per warp at a time.
//
// Why a kernel of its own: at M = 1 every byte of w is used once, so the kernel is a stream
// from HBM and its speed is how steadily every SM keeps loads in flight. The multi-row
// kernel (cuda_gemv.cu) gives each warp a short slice of a row group, then reduces across
// warps, syncs and exits: its loads come in bursts, and the last wave of CTAs runs part
// full (the 7B down projection: 5.4 waves). Here the grid is what fits on the GPU at once,
// each warp owns the rows gw, gw + W, gw + 2W, ... (W warps in all, as few as give every
// warp the same number of rows) and walks them as one flat sequence of 512-byte steps
// (one 16-byte load per lane), three steps in flight: one is consumed while the others
// load, and refilled from three steps on, across row boundaries, so a warp's pipeline
// never drains until its last row. Rows end with a warp reduction: no shared memory, no
// barrier. The first loads go out before pdl_wait (no kernel writes weights), overlapping
// the previous kernel's tail.
//
// Measured on an H200 (bw_cuda_gemv_bench, M = 1): 7B gate_up 65.5 us (4.1 TB/s) vs 74
// with the multi-row kernel, down 35 vs 43, LM head 248 vs 276; 7B single-stream decode
// 206 -> 238 tokens/s, 1.5B 595 -> 640. Tried and slower: more loads per lane in flight
// (4, 8 or 16) with fewer warps per SM; 6 CTAs per SM (registers capped at 40, spills);
// a ring refilled one load at a time (a warp has few scoreboards, so waiting for the
// oldest load ends up waiting for newer ones too); CTAs owning contiguous rows whose
// warps split the steps evenly, partial rows meeting in shared memory (better balance on
// paper, 231 vs 236 tokens/s).
//
// Fewer rows than about 16 per SM stay on the multi-row kernel, which splits K across
// warps: one row per warp is then a chain of round trips while most of the GPU idles.
#include <cstdlib>
#include <string_view>
#include <type_traits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_gemv_chunk.cuh"
#include "backend/cuda/cuda_kernels.h"

namespace bw::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMinCtas = 5;  // CTAs per SM the registers are budgeted for (40 warps)

// 16 bytes of w, streamed (read-only path, no L1 allocation). volatile: the loads must
// stay where the pipeline issues them, ahead of their use.
__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// W: a 2-byte weight type (8 per chunk). rows_per_warp and warps (W above) from the host.
template <typename A, typename W, typename O>
__global__ void __launch_bounds__(kThreads, kMinCtas)
    gemv_rows_kernel(O* __restrict__ out, const A* __restrict__ x, const W* __restrict__ w, const void* bias,
                     ElemType bias_type, int64_t n, int64_t k, int rows_per_warp, int64_t warps) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t gw = static_cast<int64_t>(blockIdx.x) * kWarps + static_cast<int64_t>(threadIdx.x) / 32;
  const int64_t chunks = k / 8;                            // 16-byte chunks per row
  const int steps = static_cast<int>((chunks + 31) / 32);  // per row, one chunk per lane each
  int64_t my_rows = 0;
  if (gw < warps && gw < n) {
    my_rows = (n - 1 - gw) / warps + 1;
    if (my_rows > rows_per_warp) my_rows = rows_per_warp;
  }
  const int64_t total = my_rows * steps;  // steps of this warp

  // Three loads per lane in flight, each in its own register (so waiting for one does not
  // wait for the others): one is consumed while the others load, then refilled with the
  // step three ahead.
  int64_t issued = 0, issue_row = gw;
  int issue_step = 0;
  const W* wp = w + (total > 0 ? gw * k : 0) + lane * 8;  // this lane's chunk of the next step
  auto issue = [&](uint4& slot) {
    const bool ok = issued < total && static_cast<int64_t>(issue_step) * 32 + lane < chunks;
    slot = ok ? load_stream(wp) : make_uint4(0, 0, 0, 0);
    ++issued, wp += 256;
    if (++issue_step == steps) issue_step = 0, issue_row += warps, wp = w + issue_row * k + lane * 8;
  };
  int64_t row = gw;
  int step = 0;
  float acc = 0.0f;
  const A* xp = x + lane * 8;
  auto consume = [&](const uint4& slot, int64_t p) {
    if (p < total) {  // warp-uniform
      if (static_cast<int64_t>(step) * 32 + lane < chunks) {
        float wf[8], xf[8];
        unpack(slot, wf, W{});
        load_x<8>(xp, xf);
#pragma unroll
        for (int e = 0; e < 8; ++e)
          acc = fmaf(xf[e], wf[e], acc);
      }
      xp += 256;
      if (++step == steps) {
        const float s = warp_sum(acc);
        if (lane == 0) out[row] = from_float<O>(bias != nullptr ? s + load_any(bias, row, bias_type) : s);
        acc = 0.0f, step = 0, row += warps, xp = x + lane * 8;
      }
    }
  };
  uint4 a, b, c;
  issue(a);
  issue(b);
  issue(c);
  pdl_wait();
  for (int64_t p = 0; p < total; p += 3) {
    consume(a, p);
    issue(a);
    consume(b, p + 1);
    issue(b);
    consume(c, p + 2);
    issue(c);
  }
}

// BW_GEMV_ROWS=0 in the environment leaves M = 1 to the multi-row kernel (for A/B runs).
bool rows_kernel_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("BW_GEMV_ROWS");
    return env == nullptr || std::string_view(env) != "0";
  }();
  return enabled;
}

template <typename A, typename W, typename O>
cudaError_t launch_typed(O* out, const A* x, const W* w, const void* bias, ElemType bias_type, int64_t n, int64_t k,
                         int num_sms, cudaStream_t stream) {
  static const int ctas_per_sm = [] {
    int v = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, gemv_rows_kernel<A, W, O>, kThreads, 0) != cudaSuccess ||
        v <= 0) {
      cudaGetLastError();
      v = 2;
    }
    return v;
  }();
  // As many warps as fit, then as few as give every warp the same number of rows.
  const int64_t max_warps = static_cast<int64_t>(num_sms) * ctas_per_sm * kWarps;
  const int64_t rows_per_warp = (n + max_warps - 1) / max_warps;
  const int64_t warps = (n + rows_per_warp - 1) / rows_per_warp;
  const dim3 grid(static_cast<unsigned>((warps + kWarps - 1) / kWarps));
  launch_kernel(gemv_rows_kernel<A, W, O>, grid, kThreads, 0, stream, out, x, w, bias, bias_type, n, k,
                static_cast<int>(rows_per_warp), warps);
  return cudaGetLastError();
}

}  // namespace

bool gemv_rows_applies(ElemType w_type, const void* x, const void* w, int64_t m, int64_t n, int64_t k, int num_sms) {
  // x is read 16 bytes at a time whatever its type (8 bf16s, or 4 floats twice).
  const bool two_byte_w = w_type == ElemType::kBF16 || w_type == ElemType::kF16;
  // Fewer rows than 16 per SM: see the top of the file.
  const bool enough_rows = n >= int64_t{16} * num_sms;
  return rows_kernel_enabled() && m == 1 && two_byte_w && enough_rows && k % 8 == 0 && k > 0 &&
         reinterpret_cast<uintptr_t>(w) % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

cudaError_t launch_gemv_rows(void* out, ElemType out_type, const void* x, ElemType act_type, const void* w,
                             ElemType w_type, const void* bias, ElemType bias_type, int64_t n, int64_t k, int num_sms,
                             cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  cudaError_t result = cudaSuccess;
  dispatch_act(act_type, [&](auto atag) {
    using A = decltype(atag);
    auto with_w = [&](auto wtag) {
      using W = decltype(wtag);
      if (std::is_same_v<A, float> || out_type != ElemType::kF32) {
        result = launch_typed<A, W, A>(static_cast<A*>(out), static_cast<const A*>(x), static_cast<const W*>(w), bias,
                                       bias_type, n, k, num_sms, stream);
      } else {  // 2-byte activations, f32 output (logits)
        result = launch_typed<A, W, float>(static_cast<float*>(out), static_cast<const A*>(x), static_cast<const W*>(w),
                                           bias, bias_type, n, k, num_sms, stream);
      }
    };
    if (w_type == ElemType::kBF16) {
      with_w(__nv_bfloat16{});
    } else {
      with_w(__half{});
    }
  });
  return result;
}

}  // namespace bw::cuda
