// The tile plumbing the prefill attention kernels share (cuda_attention_prefill.cu on
// mma.sync, cuda_attention_prefill_sm90.cu on wgmma): the CTA's view of its query head,
// the walk over query tiles with the sequence checks and error reports, the gather of a
// K/V tile through the block table with cp.async, and the output epilogue. The kernels
// differ in their shared-memory layouts, passed in as dst(row, chunk) element offsets.
// Included by .cu files only.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_mma.cuh"

namespace bw::cuda {

// One CTA's share of a prefill attention call: query head blockIdx.x, the cache rows of its
// KV head, Q rows inside the QKV rows and O rows.
template <int D>
struct PrefillHead {
  using bf16 = __nv_bfloat16;
  const bf16* q;   // query head's columns of token 0's QKV row
  const bf16* kc;  // the KV head's columns of cache row 0
  const bf16* vc;
  bf16* out;          // query head's columns of token 0's output row
  int64_t qkv_width;  // elements per QKV row
  int64_t out_width;
  int64_t cache_row;     // elements between consecutive cache rows (all KV heads)
  int64_t block_stride;  // elements per cache block
  int block_size;
  float scale_log2;  // softmax scale in the log2 domain

  __device__ explicit PrefillHead(const AttentionArgs& a) {
    const int head = static_cast<int>(blockIdx.x);
    const int kv_head = head / (a.num_heads / a.num_kv_heads);
    qkv_width = static_cast<int64_t>(a.num_heads + 2 * a.num_kv_heads) * D;
    out_width = static_cast<int64_t>(a.num_heads) * D;
    q = static_cast<const bf16*>(a.qkv) + static_cast<int64_t>(head) * D;
    out = static_cast<bf16*>(a.out) + static_cast<int64_t>(head) * D;
    kc = static_cast<const bf16*>(a.k_cache) + static_cast<int64_t>(kv_head) * D;
    vc = static_cast<const bf16*>(a.v_cache) + static_cast<int64_t>(kv_head) * D;
    block_size = a.block_size;
    cache_row = static_cast<int64_t>(a.num_kv_heads) * D;
    block_stride = static_cast<int64_t>(block_size) * cache_row;
    scale_log2 = a.scale * kLog2e;
  }
};

// A well-formed sequence's query chunk: tokens q_begin.., q_len queries after ctx cached
// positions, its block-table row.
struct PrefillSeq {
  int q_begin;
  int q_len;
  int ctx;
  const int32_t* table;
};

// Calls fn(seq, m0, n_keys, n_tiles) for every query tile of kRows rows this CTA owns:
// sequences blockIdx.y, + gridDim.y, ...; tiles gridDim.z - 1 - blockIdx.z, + gridDim.z, ...
// (the heaviest, last tile first); n_keys: keys the tile's last row sees, n_tiles: kN-key
// tiles covering them. A malformed sequence (kv_len < q_len, a table too narrow, a query
// range outside the tokens) is reported as kBadSequence and skipped, as are tokens no
// sequence covers; `reporter` is the one thread of the grid's CTAs that reports.
template <int kRows, int kN, typename Fn>
__device__ __forceinline__ void for_each_prefill_tile(const AttentionArgs& a, bool reporter, Fn&& fn) {
  const bool first_cta = blockIdx.x == 0 && blockIdx.z == 0;
  if (reporter && first_cta && blockIdx.y == 0) {
    if (a.query_start[0] > 0 || a.query_start[a.num_seqs] < a.num_tokens) report_error(a.error_flag, kBadSequence);
  }
  for (int s = static_cast<int>(blockIdx.y); s < a.num_seqs; s += static_cast<int>(gridDim.y)) {
    const int q_begin = a.query_start[s];
    const int q_end = a.query_start[s + 1];
    const int q_len = q_end - q_begin;
    const int kv_len = a.kv_lens[s];
    if (q_begin < 0 || q_len < 0 || q_end > a.num_tokens || kv_len < q_len ||
        (static_cast<int64_t>(kv_len) + a.block_size - 1) / a.block_size > a.table_width) {
      if (reporter && first_cta) report_error(a.error_flag, kBadSequence);
      continue;
    }
    const PrefillSeq seq{q_begin, q_len, kv_len - q_len, a.block_tables + static_cast<int64_t>(s) * a.table_width};
    const int num_q_tiles = (q_len + kRows - 1) / kRows;
    for (int mt = static_cast<int>(gridDim.z) - 1 - static_cast<int>(blockIdx.z); mt < num_q_tiles;
         mt += static_cast<int>(gridDim.z)) {
      const int m0 = mt * kRows;
      const int n_keys = seq.ctx + min(m0 + kRows, q_len);
      fn(seq, m0, n_keys, (n_keys + kN - 1) / kN);
    }
  }
}

// Copies Q rows [row0, row0 + rows) of the query tile starting at m0 into tile[dst(r, c)]
// with cp.async (rows past the sequence zero-filled); thread t of n threads.
template <int D, typename Dst>
__device__ __forceinline__ void load_query_rows(const PrefillHead<D>& h, const PrefillSeq& seq, __nv_bfloat16* tile,
                                                Dst dst, int m0, int row0, int rows, int t, int n) {
  constexpr int kChunks = D / 8;
  for (int i = t; i < rows * kChunks; i += n) {
    const int r = row0 + i / kChunks, c = i % kChunks;
    const bool ok = m0 + r < seq.q_len;
    const __nv_bfloat16* src = ok ? h.q + (seq.q_begin + m0 + r) * h.qkv_width + c * 8 : h.q;
    cp_async16(smem_addr(tile + dst(r, c)), src, ok);
  }
}

// Gathers K/V tiles of kN rows with kThreads threads (whole warps): lane l < kLookups of
// each warp looks one row's cache block up in the block table (a bad id is reported as
// kBadBlockId and reads as zeros) and the row offsets are shuffled to the lanes that copy
// the rows' 16-byte chunks; rows past n_keys are zero-filled.
template <int D, int kN, int kThreads>
struct KvTileGather {
  static constexpr int kChunks = D / 8;                    // 16-byte chunks per row
  static constexpr int kRowsPerPass = kThreads / kChunks;  // rows the threads copy per pass
  static constexpr int kPasses = kN / kRowsPerPass;
  static constexpr int kWarpRows = 32 / kChunks;        // rows one warp copies per pass
  static constexpr int kLookups = kWarpRows * kPasses;  // rows one warp copies per tile
  static_assert(kLookups * (kThreads / 32) == kN && kLookups <= 32, "the warps copy every row of a tile");

  int t;  // thread index among the kThreads
  int lane;
  int my_row;  // the row of a tile whose block this lane looks up (lanes < kLookups)

  __device__ explicit KvTileGather(int thread)
      : t(thread),
        lane(thread % 32),
        my_row((thread / 32) * kWarpRows + lane % kWarpRows + kRowsPerPass * (lane / kWarpRows)) {}

  // Tile n (keys n * kN..) into dk / dv at element offsets dst(row, chunk).
  template <typename Dst>
  __device__ __forceinline__ void operator()(const AttentionArgs& a, const PrefillHead<D>& h, const PrefillSeq& seq,
                                             int n, int n_keys, __nv_bfloat16* dk, __nv_bfloat16* dv, Dst dst) const {
    const int p = n * kN + my_row;
    int64_t my_off = -1;
    if (lane < kLookups && p < n_keys) {
      const int32_t block = seq.table[p / h.block_size];
      if (block < 0 || block >= a.num_blocks) {
        report_error(a.error_flag, kBadBlockId);
      } else {
        my_off = block * h.block_stride + static_cast<int64_t>(p % h.block_size) * h.cache_row;
      }
    }
    const int c = t % kChunks;
#pragma unroll
    for (int j = 0; j < kPasses; ++j) {
      const int r = t / kChunks + j * kRowsPerPass;
      const int64_t off = __shfl_sync(0xffffffffu, my_off, j * kWarpRows + lane / kChunks);
      const bool ok = off >= 0;
      const int64_t src = ok ? off + c * 8 : 0;
      cp_async16(smem_addr(dk + dst(r, c)), h.kc + src, ok);
      cp_async16(smem_addr(dv + dst(r, c)), h.vc + src, ok);
    }
  }
};

// Normalises one m16 tile of a warp's O accumulators (rows g and g + 8 from `row`, the
// partial sums l of this thread's quad) and stages it as bf16 at tile[dst(r, c)].
template <int D, typename Dst>
__device__ __forceinline__ void stage_output_rows(__nv_bfloat16* tile, Dst dst, int row, const float (&o)[D / 8][4],
                                                  const float (&l)[2], int lane) {
  float l0 = l[0], l1 = l[1];
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f;
  const float inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  const int r = row + lane / 4, t4 = lane % 4;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    *reinterpret_cast<uint32_t*>(tile + dst(r, j) + t4 * 2) = pack_bf16(o[j][0] * inv0, o[j][1] * inv0);
    *reinterpret_cast<uint32_t*>(tile + dst(r + 8, j) + t4 * 2) = pack_bf16(o[j][2] * inv1, o[j][3] * inv1);
  }
}

// One warp writes staged rows [row0, row0 + rows) of the query tile starting at m0 to the
// output with 16-byte stores (rows past the sequence skipped).
template <int D, typename Dst>
__device__ __forceinline__ void store_output_rows(const PrefillHead<D>& h, const PrefillSeq& seq,
                                                  const __nv_bfloat16* tile, Dst dst, int m0, int row0, int rows,
                                                  int lane) {
  constexpr int kChunks = D / 8;
  for (int i = lane; i < rows * kChunks; i += 32) {
    const int r = row0 + i / kChunks, c = i % kChunks;
    if (m0 + r < seq.q_len) {
      *reinterpret_cast<uint4*>(h.out + (seq.q_begin + m0 + r) * h.out_width + c * 8) =
          *reinterpret_cast<const uint4*>(tile + dst(r, c));
    }
  }
}

// The launch grid of a prefill kernel with kRows query rows per CTA: (query heads,
// sequences, query tiles of the longest chunk), each capped at 65,535 (the kernels loop).
inline dim3 prefill_grid(const AttentionArgs& args, int max_query_len, int rows) {
  const int q_tiles = (max_query_len + rows - 1) / rows;
  const int seqs = args.num_seqs < 65535 ? args.num_seqs : 65535;
  return dim3(static_cast<unsigned>(args.num_heads), static_cast<unsigned>(seqs),
              static_cast<unsigned>(q_tiles < 65535 ? q_tiles : 65535));
}

}  // namespace bw::cuda
