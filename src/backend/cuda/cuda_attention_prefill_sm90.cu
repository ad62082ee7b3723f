// paged_attention on Hopper's warpgroup tensor cores (wgmma, sm_90a) for prefill: the
// kernel the backend picks on an H100/H200 (cuda_attention_prefill.cu keeps the mma.sync
// kernel for sm_80/89, for other GPUs and as the fallback).
//
// A CTA owns 128 query rows of one sequence and one query head and is warp-specialised
// (FlashAttention-3's structure): warpgroup 2 is a producer that loads 128-key K/V tiles
// of the paged cache into a ring of three stages: a tile wholly inside the keys as
// tensor-map (TMA) boxes, one per cache block (lane j of its first warp copies box j, so
// its issue slots and registers go to the consumers' work) or one for the whole tile when
// its blocks are consecutive in the cache; the tile with the sequence's end, tiles with a
// bad block id and caches of other block sizes with a cp.async gather (each row's block
// looked up in the block table; rows past the keys zero-filled, since a V row of NaNs
// times P = 0 would still poison O). Each stage is announced on a "full" mbarrier as its
// copies land and reused once both consumers released it on an "empty" mbarrier;
// warpgroups 0 and 1 are consumers of 64 rows each, and each K/V tile is read from L2
// once for 128 rows.
// setmaxnreg moves registers from the producer (56) to the consumers (224).
//
// A consumer computes S = Q K^T with 8 wgmma m64n128k16 reading both Q and K from shared
// memory (K-major descriptors), the online softmax on the accumulators in registers
// (online_softmax_exps; same fragment layout as mma.sync), then O += P V with 8 wgmma
// m64n{D}k16, P in registers and V through an MN-major (transposed) descriptor. All tiles
// use the canonical 128-byte-swizzle layout (sw128). The GEMMs are pipelined as in
// FlashAttention-3: S_n = Q K_n^T and O += P_{n-1} V_{n-1} are issued together and the
// softmax of S_n runs while the tensor cores finish P_{n-1} V_{n-1} (hence the third
// stage: tile n-1 stays in use while tile n is consumed and n+1 lands); and the two
// warpgroups take turns issuing (pingpong, on two named barriers), so one's softmax runs
// beside the other's GEMMs. Both warpgroups walk every tile the CTA's last row sees (the
// first one's last tile may be all masked) so their turns pair up.
//
// With kv_splits > 1 a query tile's keys are cut into pieces, side by side in the grid's
// z dimension, each CTA walking one piece and writing f32 partials (unnormalised O, max,
// sum) that launch_attention_combine merges: a grid of a few waves, e.g. a chunk of a long
// prompt on a model with few heads, otherwise leaves most SMs idle in its last wave
// (cuda_prefill_split_plan.cc decides; 14-15% on such chunks of the 1.5B shape).
//
// Measured on an H200 (docs/PERF.md): one warpgroup per CTA with Q in registers 113 us at
// T = 2,048 with 28/4 heads, + Q from shared memory and three stages 108, + a producer
// warpgroup and two free-running consumers 91 (64-key tiles) and 87 (128-key tiles); the
// pipelined GEMMs with turns and three stages 84-86 (and 990-999 against 1,025-1,035 us
// on one 8,192-token prompt). The overlap without the turns, or with two stages, was 20-50%
// slower; so was a producer whose copy loop is not unrolled (7-8%: its issue rate is on the
// critical path). Loading Q's A fragments into registers once before the tile loop let
// ptxas clobber them across iterations at head_dim 64 (wrong results); Q is read from
// shared memory instead.
//
// Built only into sm_90a code (wgmma is not part of sm_90's portable PTX); elsewhere the
// kernel body is empty and prefill_attention_wgmma_available() reports false, so the
// dispatch never picks it. Same contract and error reporting as the mma.sync kernel.
#include "backend/cuda/cuda_attention_merge.cuh"
#include "backend/cuda/cuda_attention_prefill_tiles.cuh"
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_env.h"
#include "backend/cuda/cuda_mma.cuh"
#include "backend/cuda/cuda_wgmma.cuh"

#include <cuda.h>  // CUtensorMap (the encoder comes through the runtime's driver entry point)
#include <cudaTypedefs.h>

#include <type_traits>
#include <vector>

namespace bw::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kRows = 128;         // query rows per CTA: two consumer warpgroups of 64
constexpr int kN = 128;            // keys per K/V tile
constexpr int kStages = 3;         // K/V tiles in the ring
constexpr int kThreads = 3 * 128;  // consumer warpgroups 0 and 1, producer warpgroup 2

template <int D>
constexpr int smem_bytes() {  // Q, kStages x (K, V), alignment slack, 2 x kStages mbarriers
  return (kRows + 2 * kStages * kN) * D * static_cast<int>(sizeof(bf16)) + 1024 + 2 * kStages * 8;
}

// One warp's 16 query rows (row0.. of the sequence) of a key piece as the split-KV
// partials launch_attention_combine merges (cuda_attention_merge.cuh's layout): the
// unnormalised O in f32, the running max (natural log domain, as the combine reads it)
// and the row sum; rows past the sequence skipped. o, m, l: the warp's mma-layout state
// (row g in o[j][0..1], m[0], l[0]; row g + 8 in o[j][2..3], m[1], l[1]; l per thread).
template <int D>
__device__ __forceinline__ void store_split_partials(const AttentionArgs& a, float* ws, int split, int splits,
                                                     int q_begin, int q_len, int row0, const float (&o)[D / 8][4],
                                                     const float (&m)[2], const float (&l)[2], int lane) {
  constexpr float kLn2 = 0.6931471805599453f;
  const int g = lane / 4, t4 = lane % 4;
  const int head = static_cast<int>(blockIdx.x);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = l[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int r = row0 + g + 8 * half;
    if (r >= q_len) continue;
    const int64_t t = q_begin + r;
    float* out = split_output(a, ws, t, head, split, splits);
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
      *reinterpret_cast<float2*>(out + j * 8 + t4 * 2) = make_float2(o[j][2 * half], o[j][2 * half + 1]);
    if (t4 == 0) {
      float* ml = split_max_sum(a, ws, t, head, split, splits);
      ml[0] = m[half] * kLn2;  // -inf for an empty piece
      ml[1] = sum;
    }
  }
}

// box_rows > 0: K/V tiles that lie wholly inside the keys arrive as tensor-map boxes of
// box_rows cache rows x 64 columns (k_map / v_map: [rows][Hkv][D], one box per cache block
// or per 128-row piece of one), or, when the tile's blocks are consecutive in the cache,
// as one box of kN rows (k_tile_map / v_tile_map: the same tensors, kN-row boxes); 0:
// every tile through the cp.async gather.
template <int D>
__global__ void __launch_bounds__(kThreads, 1)
    prefill_attention_wgmma_kernel(AttentionArgs a, const __grid_constant__ CUtensorMap k_map,
                                   const __grid_constant__ CUtensorMap v_map,
                                   const __grid_constant__ CUtensorMap k_tile_map,
                                   const __grid_constant__ CUtensorMap v_tile_map, int box_rows, int kv_splits,
                                   float* ws) {
#ifdef BW_WGMMA
  pdl_wait();
  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  constexpr int kChunks = D / 8;                 // 16-byte chunks per row
  constexpr int kRowsPerPass = 128 / kChunks;    // K/V rows the producer copies per pass
  constexpr int kPasses = kN / kRowsPerPass;     // passes per tile
  constexpr int kWarpRows = 32 / kChunks;        // rows one warp copies per pass
  constexpr int kLookups = kWarpRows * kPasses;  // rows one warp copies per tile
  static_assert(kLookups * 4 == kN && kLookups <= 32, "the producer's warps copy every row of a tile");
  constexpr uint32_t kHalfBytes = kN * 128;  // one 64-column half of a K/V tile
  constexpr uint32_t kQHalfBytes = kRows * 128;
  // Named barriers of the consumers' turns (0 is __syncthreads, 1 and 2 the warpgroups'):
  // warpgroup w waits at kTurnBarrier + w.
  constexpr int kTurnBarrier = 3;
  extern __shared__ unsigned char smem_raw[];
  // wgmma's swizzle is a function of address bits, so tiles start on 1,024-byte boundaries.
  const uint32_t raw_addr = smem_addr(smem_raw);
  bf16* sq = reinterpret_cast<bf16*>(smem_raw + ((1024 - raw_addr % 1024) % 1024));  // [kRows][D]: Q, then O
  bf16* sk = sq + kRows * D;                                                         // [kStages][kN][D]
  bf16* sv = sk + kStages * kN * D;                                                  // [kStages][kN][D]
  const uint32_t bars = smem_addr(sv + kStages * kN * D);  // full[kStages], then empty[kStages]
  auto full_bar = [&](int stage) { return bars + 8u * stage; };
  auto empty_bar = [&](int stage) { return bars + 8u * (kStages + stage); };

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const bool producer = warp >= 8;
  const PrefillHead<D> h(a);
  // The tile walk below and the producer's gather stay the kernel's own rather than
  // for_each_prefill_tile / KvTileGather: with those shared too the kernel measured 6%
  // slower (92.8 vs 87.5 us at T = 2,048 with 28/4 heads, same run); with only the Q load
  // and the epilogue shared it measured the same (85.4 vs 85.3). Which of the two costs
  // the time was not narrowed down (likely the gather's state in the 56-register producer).
  const int kv_head = static_cast<int>(blockIdx.x) / (a.num_heads / a.num_kv_heads);
  const bf16* kc = static_cast<const bf16*>(a.k_cache) + static_cast<int64_t>(kv_head) * D;
  const bf16* vc = static_cast<const bf16*>(a.v_cache) + static_cast<int64_t>(kv_head) * D;
  const int bs = a.block_size;
  const int64_t block_stride = static_cast<int64_t>(bs) * a.num_kv_heads * D;
  const float scale_log2 = h.scale_log2;
  auto q_dst = [](int r, int c) { return sw128<kRows>(r, c); };

  if (tid == 0) {
    for (int st = 0; st < kStages; ++st) {
      mbar_init(full_bar(st), 128);  // the producer's threads, as their copies land
      mbar_init(empty_bar(st), 8);   // the consumer warps
    }
    if (blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) {
      if (a.query_start[0] > 0 || a.query_start[a.num_seqs] < a.num_tokens) report_error(a.error_flag, kBadSequence);
    }
  }
  __syncthreads();
  // Every query tile of the grid's share: fn(q_begin, q_len, ctx, table, m0, n_keys,
  // n_lo, n_hi), the CTA's piece of the tile's keys being K/V tiles [n_lo, n_hi) (all of
  // them unless kv_splits > 1: then blockIdx.z % kv_splits picks the piece). The producer
  // and the consumers walk the same tiles in the same order, each in its own copy of the
  // loop (setmaxnreg needs the two roles' code apart).
  const int split = static_cast<int>(blockIdx.z) % kv_splits;
  const int z_slot = static_cast<int>(blockIdx.z) / kv_splits, z_slots = static_cast<int>(gridDim.z) / kv_splits;
  auto for_each_query_tile = [&](auto&& fn) {
    for (int s = static_cast<int>(blockIdx.y); s < a.num_seqs; s += static_cast<int>(gridDim.y)) {
      const int q_begin = a.query_start[s];
      const int q_end = a.query_start[s + 1];
      const int q_len = q_end - q_begin;
      const int kv_len = a.kv_lens[s];
      if (q_begin < 0 || q_len < 0 || q_end > a.num_tokens || kv_len < q_len ||
          (static_cast<int64_t>(kv_len) + bs - 1) / bs > a.table_width) {
        if (blockIdx.x == 0 && blockIdx.z == 0 && tid == 0) report_error(a.error_flag, kBadSequence);
        continue;
      }
      const int ctx = kv_len - q_len;
      const int32_t* table = a.block_tables + static_cast<int64_t>(s) * a.table_width;
      const int num_q_tiles = (q_len + kRows - 1) / kRows;
      // Heaviest (last) query tiles first: z slot 0 takes the last tile.
      for (int mt = z_slots - 1 - z_slot; mt < num_q_tiles; mt += z_slots) {
        const int m0 = mt * kRows;
        const int n_keys = ctx + min(m0 + kRows, q_len);  // keys the CTA's last row sees
        const int n_tiles = (n_keys + kN - 1) / kN;
        const int last_start = (ctx + m0) / kN;
        fn(q_begin, q_len, ctx, table, m0, n_keys, prefill_split_first_tile(split, kv_splits, n_tiles, last_start),
           prefill_split_first_tile(split + 1, kv_splits, n_tiles, last_start));
      }
    }
  };

  int it = 0;  // tiles through the ring so far: stage it % kStages, use it / kStages
  if (producer) {
    // Registers move from the producer warpgroup (address arithmetic only) to the
    // consumers (O, S and P in registers): 2 x 128 x 224 + 128 x 56 = 64,512 of 65,536.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n" ::: "memory");
    for_each_query_tile([&](int /*q_begin*/, int /*q_len*/, int /*ctx*/, const int32_t* table, int /*m0*/, int n_keys,
                            int n_lo, int n_hi) {
      const int ptid = tid - 256, pwarp = ptid / 32;
      const int my_row = pwarp * kWarpRows + lane % kWarpRows + kRowsPerPass * (lane / kWarpRows);
      const int boxes = box_rows > 0 ? kN / box_rows : 0;  // <= 32: box_rows >= 8
      for (int n = n_lo; n < n_hi; ++n, ++it) {
        const int stage = it % kStages;
        // A tile wholly inside the keys whose blocks are all valid comes as boxes, lane
        // j of warp 0 copying box j of K and of V; every producer warp looks the blocks
        // up itself (a few cached loads) so all four agree without a barrier.
        const int k_begin = n * kN;
        bool boxed = boxes > 0 && k_begin + kN <= n_keys;
        int32_t box_block = 0;
        if (boxed && lane < boxes) box_block = table[(k_begin + lane * box_rows) / bs];
        boxed =
            __all_sync(0xffffffffu, !boxed || lane >= boxes || (box_block >= 0 && box_block < a.num_blocks)) && boxed;
        // Blocks that follow each other in the cache (as a long prompt's usually do: the
        // pool hands out its free blocks in order) make one box of the whole tile: at block
        // size 16 a tile's 32 small copies cost 11-14% of the kernel's time (docs/PERF.md).
        const int row = box_block * bs + (k_begin + lane * box_rows) % bs;
        const int row0 = __shfl_sync(0xffffffffu, row, 0);
        const bool whole = __all_sync(0xffffffffu, lane >= boxes || row == row0 + lane * box_rows);
        if (it >= kStages) mbar_wait(empty_bar(stage), (it / kStages - 1) & 1);
        if (boxed) {
          if (pwarp == 0) {
            // Lane j < n_boxes copies box j of K and of V, each box `rows` cache rows
            // (the maps' box height). Called with each pair of maps' fixed addresses
            // rather than with a chosen pointer: the tensor copy wants its map's address
            // uniform, and the per-block path measured 4-6% slower with a chosen one.
            auto copy_boxes = [&](const CUtensorMap* km, const CUtensorMap* vm, int n_boxes, int rows) {
              constexpr uint32_t kHalves = D / 64;
              const uint32_t box_bytes = static_cast<uint32_t>(rows) * 128;
              mbar_arrive_expect_tx(full_bar(stage), lane < n_boxes ? 2 * kHalves * box_bytes : 0);
              if (lane < n_boxes) {
                const uint32_t dk = smem_addr(sk + stage * kN * D) + lane * box_bytes;
                const uint32_t dv = smem_addr(sv + stage * kN * D) + lane * box_bytes;
#pragma unroll
                for (uint32_t h = 0; h < kHalves; ++h) {
                  tma_load_3d(dk + h * kHalfBytes, km, static_cast<int>(h) * 64, kv_head, row, full_bar(stage));
                  tma_load_3d(dv + h * kHalfBytes, vm, static_cast<int>(h) * 64, kv_head, row, full_bar(stage));
                }
              }
            };
            if (whole) {
              copy_boxes(&k_tile_map, &v_tile_map, 1, kN);
            } else {
              copy_boxes(&k_map, &v_map, boxes, box_rows);
            }
          } else {
            mbar_arrive(full_bar(stage));
          }
          continue;
        }
        const int p = n * kN + my_row;
        int64_t my_off = -1;
        if (lane < kLookups && p < n_keys) {
          const int32_t block = table[p / bs];
          if (block < 0 || block >= a.num_blocks) {
            report_error(a.error_flag, kBadBlockId);
          } else {
            my_off = block * block_stride + static_cast<int64_t>(p % bs) * a.num_kv_heads * D;
          }
        }
        bf16* dk = sk + stage * kN * D;
        bf16* dv = sv + stage * kN * D;
        const int c = ptid % kChunks;
#pragma unroll 8  // not all 16 passes at D = 128: so unrolled the producer spills beside the boxes' code
        for (int j = 0; j < kPasses; ++j) {
          const int r = ptid / kChunks + j * kRowsPerPass;
          const int64_t off = __shfl_sync(0xffffffffu, my_off, j * kWarpRows + lane / kChunks);
          const bool ok = off >= 0;
          const int64_t src = ok ? off + c * 8 : 0;
          cp_async16(smem_addr(dk + sw128<kN>(r, c)), kc + src, ok);
          cp_async16(smem_addr(dv + sw128<kN>(r, c)), vc + src, ok);
        }
        mbar_arrive_on_cp_async(full_bar(stage));
      }
    });
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");
    // Warpgroup 0 takes the first turn. (Warpgroup 1's last turn leaves one arrival at
    // warpgroup 0's barrier when the CTA exits; nothing waits for it.)
    if (warp >= 4) named_barrier_arrive(kTurnBarrier, 256);
    for_each_query_tile([&](int q_begin, int q_len, int ctx, const int32_t*, int m0, int n_keys, int n_lo, int n_hi) {
      // Consumer warpgroup wg: rows wg_row0.. (64), its own Q rows loaded by its threads.
      const int wg = warp / 4, wtid = tid % 128;
      const int g = lane / 4, t4 = lane % 4;
      const int wg_row0 = m0 + wg * 64;
      const PrefillSeq seq{q_begin, q_len, ctx, nullptr};
      load_query_rows(h, seq, sq, q_dst, m0, wg * 64, 64, wtid, 128);
      cp_async_commit();
      cp_async_wait<0>();
      fence_proxy_async();
      warpgroup_barrier(1 + wg);
      const uint32_t q_addr = smem_addr(sq) + wg * 64 * 128;

      const int wrow = wg_row0 + (warp % 4) * 16;
      const int warp_first_lim = min(ctx + wrow, n_keys - 1);
      const int lim0 = min(ctx + wrow + g, n_keys - 1);
      const int lim1 = min(ctx + wrow + g + 8, n_keys - 1);
      float o[D / 8][4];
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
      float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.0f, 0.0f};

      const int it0 = it - n_lo;  // tile n went through the ring as the CTA's (it0 + n)-th
      it += n_hi - n_lo;
      auto stage_of = [&](int n) { return (it0 + n) % kStages; };
      auto parity_of = [&](int n) { return static_cast<uint32_t>(((it0 + n) / kStages) & 1); };
      auto release = [&](uint32_t bar) {
        __syncwarp();
        if (lane == 0) mbar_arrive(bar);
      };
      float sc[kN / 8][4];
      uint32_t pf[kN / 16][4];
      float corr[2];
      auto issue_s = [&](int n) {  // S = Q K_n^T
        const uint32_t tk = smem_addr(sk + stage_of(n) * kN * D);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          const uint32_t k_off = (kk % 4) * 32;
          wgmma_m64n128k16_ss(sc, sw128_desc(q_addr + (kk / 4) * kQHalfBytes + k_off, 16, 1024),
                              sw128_desc(tk + (kk / 4) * kHalfBytes + k_off, 16, 1024), kk > 0);
        }
        wgmma_commit();
      };
      auto issue_pv = [&](int n) {  // O += P V_n
        const uint32_t tv = smem_addr(sv + stage_of(n) * kN * D);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kN / 16; ++kk) {
          if constexpr (D == 128) {
            wgmma_m64n128k16_rs_mn(o, pf[kk], sw128_desc(tv + kk * 16 * 128, kHalfBytes, 1024), 1);
          } else {
            wgmma_m64n64k16_rs_mn(o, pf[kk], sw128_desc(tv + kk * 16 * 128, kHalfBytes, 1024), 1);
          }
        }
        wgmma_commit();
      };
      // may_mask: std::true_type for the tiles that may cross a row's causal limit.
      auto softmax = [&](int n, auto may_mask) {
        const int k0 = n * kN;
        online_softmax_exps<kN, decltype(may_mask)::value>(sc, m_r, l_r, corr, k0 + kN - 1 > warp_first_lim, k0, lim0,
                                                           lim1, scale_log2, t4);
      };
      // One step of the pipelined loop: S_n and P_{n-1} V_{n-1} issued on the warpgroup's
      // turn, the softmax of S_n while P V runs.
      auto step = [&](int n, auto may_mask) {
        mbar_wait(full_bar(stage_of(n)), parity_of(n));
        fence_proxy_async();
        named_barrier_sync(kTurnBarrier + wg, 256);
        issue_s(n);
        issue_pv(n - 1);
        named_barrier_arrive(kTurnBarrier + 1 - wg, 256);
        wgmma_wait<1>();  // S_n is done; P_{n-1} V_{n-1} may still run
        fence_accumulators(sc);
        softmax(n, may_mask);
        wgmma_wait<0>();
        fence_accumulators(o);
        fence_fragments(pf);
        release(empty_bar(stage_of(n - 1)));
        rescale_rows(o, corr);
        pack_probabilities<kN>(sc, pf);
      };
      // The tiles below every row's causal limit of the warpgroup (a wgmma needs all four
      // warps on one path) run without the mask's compares in a loop of their own.
      const int n_unmasked = min((min(ctx + wg_row0, n_keys - 1) + 1) / kN, n_hi);
      if (n_hi > n_lo) {
        mbar_wait(full_bar(stage_of(n_lo)), parity_of(n_lo));
        fence_proxy_async();
        named_barrier_sync(kTurnBarrier + wg, 256);
        issue_s(n_lo);
        named_barrier_arrive(kTurnBarrier + 1 - wg, 256);
        wgmma_wait<0>();
        fence_accumulators(sc);
        softmax(n_lo, std::true_type{});
        pack_probabilities<kN>(sc, pf);
        int n = n_lo + 1;
        for (; n < n_unmasked; ++n)
          step(n, std::false_type{});
        for (; n < n_hi; ++n)
          step(n, std::true_type{});
        issue_pv(n_hi - 1);
        wgmma_wait<0>();
        fence_accumulators(o);
        release(empty_bar(stage_of(n_hi - 1)));
      }

      // Every warp of the warpgroup is done reading its Q rows; stage O there and store
      // (or store this piece's partials: an empty piece's are O = 0, max -inf, sum 0).
      warpgroup_barrier(1 + wg);
      if (kv_splits > 1) {
        store_split_partials<D>(a, ws, split, kv_splits, q_begin, q_len, m0 + warp * 16, o, m_r, l_r, lane);
      } else {
        stage_output_rows<D>(sq, q_dst, warp * 16, o, l_r, lane);
        __syncwarp();
        store_output_rows(h, seq, sq, q_dst, m0, warp * 16, 16, lane);
      }
      warpgroup_barrier(1 + wg);  // the warpgroup's Q rows are reloaded for its next query tile
    });
  }
#else
  (void)a;
  (void)k_map;
  (void)v_map;
  (void)k_tile_map;
  (void)v_tile_map;
  (void)box_rows;
  (void)kv_splits;
  (void)ws;
#endif  // BW_WGMMA
}

__global__ void wgmma_probe_kernel(int* built) {
#ifdef BW_WGMMA
  *built = 1;
#else
  *built = 0;
#endif
}

// The tensor map of one cache ([num_blocks * block_size][Hkv][D] bf16) with boxes of
// box_rows x 64 columns in the 128-byte swizzle the K/V tiles use; maps are kept per
// cache, shape and box (a model has two caches per layer, each with two boxes), so a
// launch encodes none after the first step. False when the driver has no encoder or
// rejects the shape.
bool cache_tensor_map(const void* cache, int64_t num_blocks, int block_size, int num_kv_heads, int head_dim,
                      int box_rows, CUtensorMap* map) {
  struct Entry {
    const void* cache;
    int64_t num_blocks;
    int block_size, num_kv_heads, head_dim, box_rows;
    CUtensorMap map;
  };
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (encode == nullptr) return false;
  thread_local std::vector<Entry> maps;
  for (const Entry& e : maps) {
    if (e.cache == cache && e.num_blocks == num_blocks && e.block_size == block_size &&
        e.num_kv_heads == num_kv_heads && e.head_dim == head_dim && e.box_rows == box_rows) {
      *map = e.map;
      return true;
    }
  }
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(num_kv_heads),
                              static_cast<cuuint64_t>(num_blocks) * static_cast<cuuint64_t>(block_size)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(head_dim) * sizeof(bf16),
                                 static_cast<cuuint64_t>(num_kv_heads) * head_dim * sizeof(bf16)};
  const cuuint32_t box[3] = {64, 1, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  Entry e{cache, num_blocks, block_size, num_kv_heads, head_dim, box_rows, {}};
  if (encode(&e.map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(cache), dims, strides, box, element_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
    return false;
  }
  if (maps.size() >= 512) maps.erase(maps.begin());
  maps.push_back(e);
  *map = e.map;
  return true;
}

// Rows per tensor-map box for this cache, or 0 to gather every tile with cp.async: the
// block size must be a power of two of at least 8 (a box per block, or per 128-row piece
// of a larger block, starts on a 1,024-byte boundary of the tile); BW_CUDA_PREFILL_TMA=0
// turns the boxes off.
int box_rows_for(const AttentionArgs& args) {
  static const bool enabled = env_switch_on("BW_CUDA_PREFILL_TMA");
  const int bs = args.block_size;
  if (!enabled || bs < 8 || (bs & (bs - 1)) != 0) return 0;
  return bs < kN ? bs : kN;
}

template <int D>
cudaError_t launch_for(const AttentionArgs& args, int max_query_len, int kv_splits, float* ws, cudaStream_t stream) {
  const cudaError_t attr = cudaFuncSetAttribute(prefill_attention_wgmma_kernel<D>,
                                                cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes<D>());
  if (attr != cudaSuccess) return attr;
  CUtensorMap k_map{}, v_map{}, k_tile_map{}, v_tile_map{};
  int box_rows = box_rows_for(args);
  auto maps = [&](int rows, CUtensorMap* k, CUtensorMap* v) {
    return cache_tensor_map(args.k_cache, args.num_blocks, args.block_size, args.num_kv_heads, D, rows, k) &&
           cache_tensor_map(args.v_cache, args.num_blocks, args.block_size, args.num_kv_heads, D, rows, v);
  };
  if (box_rows > 0 && (!maps(box_rows, &k_map, &v_map) || !maps(kN, &k_tile_map, &v_tile_map))) box_rows = 0;
  dim3 grid = prefill_grid(args, max_query_len, kRows);
  grid.z = min(grid.z, 65535u / kv_splits) * kv_splits;  // the pieces of a query tile side by side
  launch_kernel(prefill_attention_wgmma_kernel<D>, grid, kThreads, smem_bytes<D>(), stream, args, k_map, v_map,
                k_tile_map, v_tile_map, box_rows, kv_splits, ws);
  if (kv_splits > 1) return launch_attention_combine(args, kv_splits, ws, stream);
  return cudaGetLastError();
}

}  // namespace

bool prefill_attention_wgmma_available() {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  if (major != 9 || minor != 0) return false;
  // Whether the code the driver loaded for this device is sm_90a (a build without it, or
  // the portable PTX, leaves the kernel empty).
  int* flag = nullptr;
  int built = 0;
  bool ok = cudaMalloc(&flag, sizeof(int)) == cudaSuccess;
  if (ok) {
    wgmma_probe_kernel<<<1, 1>>>(flag);
    ok = cudaMemcpy(&built, flag, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess;
  }
  if (flag != nullptr) cudaFree(flag);
  cudaGetLastError();
  return ok && built == 1;
}

cudaError_t launch_paged_attention_prefill_wgmma(const AttentionArgs& args, int max_query_len, int kv_splits,
                                                 float* workspace, cudaStream_t stream) {
  if (kv_splits < 1 || kv_splits > 64 || (kv_splits > 1 && workspace == nullptr)) return cudaErrorInvalidValue;
  return args.head_dim == 64 ? launch_for<64>(args, max_query_len, kv_splits, workspace, stream)
                             : launch_for<128>(args, max_query_len, kv_splits, workspace, stream);
}

}  // namespace bw::cuda
