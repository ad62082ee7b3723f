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
//
// Fused epilogues (RowsEpilogue): what "owns" work is a unit of output, not a row. kStore
// and kAccumulate have one row per unit; kSiluMul pairs a gate row with its up row (one
// warp walks both); kRopeWriteKv pairs rotary dimension i of a head with i + D/2, the two
// rows walked by a pair of warps of one CTA that meet at a named barrier. So "rows per
// warp" above reads "units per owner" in the code (an owner: a warp or a warp pair).
#include <atomic>
#include <cstdlib>
#include <type_traits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_env.h"
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

// Rows of w whose sums one epilogue needs: a gate row and its up row (SiLU-and-multiply),
// a rotary dimension and its partner half a head further on (RoPE); one row otherwise.
template <RowsEpilogue E>
constexpr int kRowsPerUnit = E == RowsEpilogue::kSiluMul || E == RowsEpilogue::kRopeWriteKv ? 2 : 1;
// RoPE units go to a pair of warps of one CTA, each walking one of the two rows: QKV
// projections have few rows, and one warp walking both rows of a unit would run a chain
// twice as long with half the warps (measured slower than the separate rope kernel).
// SiLU's units are many (a warp walks several anyway), so one warp takes both rows.
template <RowsEpilogue E>
constexpr bool kPairedWarps = E == RowsEpilogue::kRopeWriteKv;

// Row r of unit u.
template <RowsEpilogue E>
__device__ __forceinline__ int64_t unit_row(const GemvRowsArgs& a, int64_t u, int r) {
  if constexpr (E == RowsEpilogue::kSiluMul) {
    return u + r * (a.n / 2);
  } else if constexpr (E == RowsEpilogue::kRopeWriteKv) {
    const int half = a.rope.head_dim / 2;
    return (u / half) * a.rope.head_dim + u % half + r * half;
  } else {
    return u;
  }
}

// cosf / sinf as the rope kernel computes them, out of line: their slow path for large
// angles keeps an array in local memory, which inlined made the whole kernel spill.
__device__ __noinline__ float2 rope_cos_sin(float angle) { return make_float2(cosf(angle), sinf(angle)); }

// Lane 0's work once the rows of unit u are summed (s0, s1), rounded the way the separate
// ops round (each op's output is stored in A), so that a fused step computes what the
// unfused ops would from the same projection.
template <typename A, typename O, RowsEpilogue E>
__device__ __forceinline__ void finish_unit(const GemvRowsArgs& a, int64_t u, float s0, float s1) {
  O* out = static_cast<O*>(a.out);
  if constexpr (E == RowsEpilogue::kStore || E == RowsEpilogue::kAccumulate) {
    constexpr bool kAdd = E == RowsEpilogue::kAccumulate;  // (never with a bias)
    if (!kAdd && a.bias != nullptr) s0 += load_any(a.bias, u, a.bias_type);
    store_product(out + u, s0, kAdd);
  } else if constexpr (E == RowsEpilogue::kSiluMul) {
    const float g = to_float(from_float<A>(s0)), up = to_float(from_float<A>(s1));
    out[u] = from_float<O>(g / (1.0f + expf(-g)) * up);
  } else {
    static_assert(E == RowsEpilogue::kRopeWriteKv);
    const RopeKvArgs& r = a.rope;
    const int D = r.head_dim, half = D / 2;
    const int head = static_cast<int>(u / half), i = static_cast<int>(u % half);
    const int64_t row0 = static_cast<int64_t>(head) * D + i, row1 = row0 + half;
    if (a.bias != nullptr) s0 += load_any(a.bias, row0, a.bias_type), s1 += load_any(a.bias, row1, a.bias_type);
    const int32_t pos = r.positions[0], slot = r.slots[0];
    float x1 = to_float(from_float<A>(s0)), x2 = to_float(from_float<A>(s1));
    if (u == 0 && pos < 0) report_error(r.error_flag, kBadPosition);
    if (u == 0 && (slot < -1 || slot >= r.num_slots)) report_error(r.error_flag, kBadSlot);
    if (head < r.num_heads + r.num_kv_heads && pos >= 0) {  // q and k rotate, v does not
      const float2 cs = rope_cos_sin(__fmul_rn(static_cast<float>(pos), r.inv_freq[i]));
      const float c = cs.x, s = cs.y;
      const float y1 = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
      const float y2 = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
      x1 = to_float(from_float<A>(y1)), x2 = to_float(from_float<A>(y2));
    }
    out[row0] = from_float<O>(x1), out[row1] = from_float<O>(x2);
    if (head >= r.num_heads && pos >= 0 && slot >= 0 && slot < r.num_slots) {
      const int kv_head = head - r.num_heads;  // k heads, then v heads
      const bool is_v = kv_head >= r.num_kv_heads;
      const int64_t at = static_cast<int64_t>(slot) * r.num_kv_heads * D +
                         static_cast<int64_t>(is_v ? kv_head - r.num_kv_heads : kv_head) * D + i;
      A* cache = static_cast<A*>(is_v ? r.v_cache : r.k_cache);  // the cache is in A (checked on the host)
      cache[at] = from_float<A>(x1), cache[at + half] = from_float<A>(x2);
    }
  }
}

// Barrier of warp pair p (warps 2p and 2p + 1) of a CTA: ids 1-4 (0 is __syncthreads),
// written as constants so that the CTA reserves five barriers, not all sixteen.
static_assert(kWarps == 8);
__device__ __forceinline__ void pair_barrier(int p) {
  switch (p) {
    case 0:
      asm volatile("bar.sync 1, 64;" ::: "memory");
      break;
    case 1:
      asm volatile("bar.sync 2, 64;" ::: "memory");
      break;
    case 2:
      asm volatile("bar.sync 3, 64;" ::: "memory");
      break;
    default:
      asm volatile("bar.sync 4, 64;" ::: "memory");
      break;
  }
}

// W: a 2-byte weight type (8 per chunk).
template <typename A, typename W, typename O, RowsEpilogue E>
__global__ void __launch_bounds__(kThreads, kMinCtas) gemv_rows_kernel(GemvRowsArgs a) {
  constexpr bool kPaired = kPairedWarps<E>;
  constexpr int R = kPaired ? 1 : kRowsPerUnit<E>;  // rows of a unit this warp walks
  const A* __restrict__ x = static_cast<const A*>(a.x);
  const W* __restrict__ w = static_cast<const W*>(a.w);
  const int64_t k = a.k, owners = a.owners;
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int64_t gw = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  // Units belong to owners (a warp, or a pair of warps each walking row `side`).
  const int64_t owner = kPaired ? gw / 2 : gw;
  const int side = kPaired ? warp % 2 : 0;
  const int64_t units = a.n / kRowsPerUnit<E>;
  const int64_t chunks = k / 8;                            // 16-byte chunks per row
  const int steps = static_cast<int>((chunks + 31) / 32);  // per row, one chunk per lane each
  int64_t my_units = 0;
  if (owner < owners && owner < units) {
    my_units = (units - 1 - owner) / owners + 1;
    if (my_units > a.units_per_owner) my_units = a.units_per_owner;
  }
  const int64_t total = my_units * R * steps;  // steps of this warp

  // Three loads per lane in flight, each in its own register (so waiting for one does not
  // wait for the others): one is consumed while the others load, then refilled with the
  // step three ahead.
  int64_t issued = 0, issue_unit = owner;
  int issue_r = 0, issue_step = 0;
  const W* wp = w + (total > 0 ? unit_row<E>(a, owner, side) * k : 0) + lane * 8;  // the next step's chunk
  auto issue = [&](uint4& slot) {
    const bool ok = issued < total && static_cast<int64_t>(issue_step) * 32 + lane < chunks;
    slot = ok ? load_stream(wp) : make_uint4(0, 0, 0, 0);
    ++issued, wp += 256;
    if (++issue_step == steps) {
      issue_step = 0;
      if (++issue_r == R) issue_r = 0, issue_unit += owners;
      wp = w + unit_row<E>(a, issue_unit, kPaired ? side : issue_r) * k + lane * 8;
    }
  };
  uint4 b0, b1, b2;
  issue(b0);
  issue(b1);
  issue(b2);
  pdl_wait();

  int64_t unit = owner;
  int r = 0, step = 0, parity = 0;
  float acc = 0.0f, first = 0.0f;
  const bool finisher = lane == 0 && side == 0;               // the lane that runs the epilogue
  __shared__ float partner_sum[kPaired ? kWarps / 2 : 1][2];  // paired: side 1's row sums
  const A* xp = x + lane * 8;
  auto consume = [&](const uint4& chunk, int64_t p) {
    if (p < total) {  // warp-uniform
      if (static_cast<int64_t>(step) * 32 + lane < chunks) {
        float wf[8], xf[8];
        unpack(chunk, wf, W{});
        load_x<8>(xp, xf);
#pragma unroll
        for (int e = 0; e < 8; ++e)
          acc = fmaf(xf[e], wf[e], acc);
      }
      xp += 256;
      if (++step == steps) {
        const float s = warp_sum(acc);
        acc = 0.0f, step = 0, xp = x + lane * 8;
        if constexpr (kPaired) {
          // Side 1 hands its sum over; double-buffered by unit, so one barrier per unit.
          if (side == 1 && lane == 0) partner_sum[warp / 2][parity] = s;
          pair_barrier(warp / 2);
          if (finisher) finish_unit<A, O, E>(a, unit, s, partner_sum[warp / 2][parity]);
          parity ^= 1;
          unit += owners;
        } else {
          if (r + 1 < R) {
            first = s;
          } else if (lane == 0) {
            finish_unit<A, O, E>(a, unit, R == 1 ? s : first, s);
          }
          if (++r == R) r = 0, unit += owners;
        }
      }
    }
  };
  for (int64_t p = 0; p < total; p += 3) {
    consume(b0, p);
    issue(b0);
    consume(b1, p + 1);
    issue(b1);
    consume(b2, p + 2);
    issue(b2);
  }
}

std::atomic<int64_t> g_fused_launches{0};

// BW_GEMV_ROWS=0 in the environment leaves M = 1 to the multi-row kernel (for A/B runs).
bool rows_kernel_enabled() {
  static const bool enabled = env_switch_on("BW_GEMV_ROWS");
  return enabled;
}

template <typename A, typename W, typename O, RowsEpilogue E>
cudaError_t launch_typed(GemvRowsArgs a, int num_sms, cudaStream_t stream) {
  static const int ctas_per_sm = [] {
    int v = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, gemv_rows_kernel<A, W, O, E>, kThreads, 0) != cudaSuccess ||
        v <= 0) {
      cudaGetLastError();
      v = 2;
    }
    return v;
  }();
  // As many warps as fit, then as few owners as give every owner the same number of units.
  constexpr int kWarpsPerOwner = kPairedWarps<E> ? 2 : 1;
  const int64_t units = a.n / kRowsPerUnit<E>;
  const int64_t max_owners = static_cast<int64_t>(num_sms) * ctas_per_sm * kWarps / kWarpsPerOwner;
  a.units_per_owner = (units + max_owners - 1) / max_owners;
  a.owners = (units + a.units_per_owner - 1) / a.units_per_owner;
  const dim3 grid(static_cast<unsigned>((a.owners * kWarpsPerOwner + kWarps - 1) / kWarps));
  launch_kernel(gemv_rows_kernel<A, W, O, E>, grid, kThreads, 0, stream, a);
  return cudaGetLastError();
}

}  // namespace

bool gemv_rows_applies(const GemvRowsArgs& a, int64_t m, int num_sms) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  // x is read 16 bytes at a time whatever its type (8 bf16s, or 4 floats twice).
  const bool two_byte_w = a.w_type == ElemType::kBF16 || a.w_type == ElemType::kF16;
  if (!rows_kernel_enabled() || m != 1 || !two_byte_w || a.k % 8 != 0 || a.k <= 0 || !aligned(a.w) || !aligned(a.x))
    return false;
  const bool bf16 = a.act_type == ElemType::kBF16 && a.w_type == ElemType::kBF16 && a.out_type == ElemType::kBF16;
  switch (a.epilogue) {
    case RowsEpilogue::kStore:
    case RowsEpilogue::kAccumulate:
      // Fewer rows than 16 per SM: see the top of the file. (The fused kinds below replace
      // a separate kernel, which costs more than this kernel's short rows.)
      return a.n >= int64_t{16} * num_sms && (a.epilogue == RowsEpilogue::kStore || a.out_type == a.act_type);
    case RowsEpilogue::kSiluMul:
      return bf16 && a.bias == nullptr && a.n % 2 == 0;
    case RowsEpilogue::kRopeWriteKv: {
      const RopeKvArgs& r = a.rope;
      return bf16 && r.rotary_dim == r.head_dim && r.head_dim % 2 == 0 && r.head_dim > 0 &&
             r.cache_type == ElemType::kBF16 &&
             a.n == static_cast<int64_t>(r.num_heads + 2 * r.num_kv_heads) * r.head_dim;
    }
  }
  return false;
}

cudaError_t launch_gemv_rows(const GemvRowsArgs& a, int num_sms, cudaStream_t stream) {
  if (a.n == 0) return cudaSuccess;
  using BF = __nv_bfloat16;
  if (a.epilogue == RowsEpilogue::kSiluMul || a.epilogue == RowsEpilogue::kRopeWriteKv)
    g_fused_launches.fetch_add(1, std::memory_order_relaxed);
  if (a.epilogue == RowsEpilogue::kSiluMul) return launch_typed<BF, BF, BF, RowsEpilogue::kSiluMul>(a, num_sms, stream);
  if (a.epilogue == RowsEpilogue::kRopeWriteKv)
    return launch_typed<BF, BF, BF, RowsEpilogue::kRopeWriteKv>(a, num_sms, stream);
  cudaError_t result = cudaSuccess;
  dispatch_act(a.act_type, [&](auto atag) {
    using A = decltype(atag);
    auto with_w = [&](auto wtag) {
      using W = decltype(wtag);
      if (a.epilogue == RowsEpilogue::kAccumulate) {
        result = launch_typed<A, W, A, RowsEpilogue::kAccumulate>(a, num_sms, stream);
      } else if (std::is_same_v<A, float> || a.out_type != ElemType::kF32) {
        result = launch_typed<A, W, A, RowsEpilogue::kStore>(a, num_sms, stream);
      } else {  // 2-byte activations, f32 output (logits)
        result = launch_typed<A, W, float, RowsEpilogue::kStore>(a, num_sms, stream);
      }
    };
    if (a.w_type == ElemType::kBF16) {
      with_w(__nv_bfloat16{});
    } else {
      with_w(__half{});
    }
  });
  return result;
}

int64_t gemv_rows_fused_launches() { return g_fused_launches.load(std::memory_order_relaxed); }

}  // namespace bw::cuda
