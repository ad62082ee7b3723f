// Internal to cuda_attention_decode.cu (included after its helpers): decode attention on
// tensor cores for bf16 activations and a bf16 cache, at most 8 query heads per KV head
// (head_dim 64 or 128).
//
// Why: the CUDA-core kernel scores a key with a 16-lane dot product and shuffle
// reductions per query head, and takes 2 or 4 of a KV head's query heads per block, so a
// KV head's rows are read once per head group; at a decode batch of 32 sequences of ~520
// tokens it spent 46 us a layer reading 14.4 MB (0.31 TB/s, H200). Here a block takes all
// of a KV head's query heads as the rows of mma.sync m16n8k16 tiles (rows 8-15 are zero:
// mma_bf16_rows0_7), so each K and V row is read once and a 16-key step is 8 + 8
// ldmatrix and 16 + 16 MMAs. Measured (H200, 1.5B shape, 512-token prompts, decode
// tokens/s against the CUDA-core kernel in the same run): batch 8 3,290 vs 3,190, 32
// 13,065 vs 9,944, 128 31,818 vs 19,585, 256 53,967 vs 35,708.
//
// A block owns one sequence, one KV head and one split of the context (grid as the
// CUDA-core kernel's with one head group); its 4 warps take the split's 16-key tiles in
// turn, each with its own online softmax (FlashAttention-2's register layout: P stays in
// registers as the A operand of P V), each copying its next tile's K and V rows into its
// own double buffer with cp.async while it computes the current one. Rows are XOR-swizzled
// in 16-byte chunks (swz) so ldmatrix is free of bank conflicts. The warps' states merge,
// and splits publish and merge, exactly as in decode_kernel (store_or_merge_splits), with
// the same error reports: a bad sequence writes nothing, a bad block id is reported and
// its keys are skipped.
#pragma once

#include "backend/cuda/cuda_mma.cuh"

namespace bw::cuda {
namespace {

constexpr int kTcMaxGroup = 8;   // query heads per KV head: the MMA rows 0-7
constexpr int kTcTileKeys = 16;  // keys per warp step (one MMA k-step of P V)

// Dynamic shared memory: per warp two buffers of a K and a V tile; after the loop the
// same bytes hold the warps' unnormalised outputs (s_acc of merge_warps_and_store).
template <int D>
constexpr int decode_tc_smem_bytes() {
  constexpr int tiles = kWarps * 2 * 2 * kTcTileKeys * D * 2;
  constexpr int acc = kWarps * kTcMaxGroup * D * 4;
  return tiles > acc ? tiles : acc;
}

template <int D>
__global__ void __launch_bounds__(kThreads) decode_tc_kernel(AttentionArgs a, float* ws, int* counters) {
  pdl_wait();
  pdl_launch_dependents();
  using bf16 = __nv_bfloat16;
  constexpr int kChunks = D / 8;  // 16-byte chunks of a row
  constexpr int kKSteps = D / 16;
  constexpr int kTileElems = kTcTileKeys * D;
  constexpr int kCopies = kTcTileKeys * kChunks / 32;  // 16-byte copies per lane per tile, K (and V)
  static_assert(kCopies * 32 == kTcTileKeys * kChunks, "a tile's chunks divide among the lanes");
  extern __shared__ __align__(128) unsigned char dyn[];
  __shared__ float s_m[kWarps][kTcMaxGroup];
  __shared__ float s_l[kWarps][kTcMaxGroup];
  __shared__ float s_w[kTcMaxGroup][kMaxSplits];

  const int s = static_cast<int>(blockIdx.x), kv_head = static_cast<int>(blockIdx.y);
  const int G = a.num_heads / a.num_kv_heads, h0 = kv_head * G;
  const int num_splits = static_cast<int>(gridDim.z), split = static_cast<int>(blockIdx.z);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t4 = lane % 4;  // the MMA fragment's row (query head) and column pair
  const int bs = a.block_size;
  const int64_t qkv_width = static_cast<int64_t>(a.num_heads + 2 * a.num_kv_heads) * D;
  const int32_t* table = a.block_tables + static_cast<int64_t>(s) * a.table_width;

  // A decode batch has one query token per sequence, so token s belongs to sequence s.
  const int q_first = a.query_start[s], q_end = a.query_start[s + 1];
  const int kv_len = a.kv_lens[s];
  const bool token_ok = s < a.num_tokens;
  int n_keys = kv_len;
  if (!token_ok || q_first != s || q_end != s + 1 || kv_len < 1 || (kv_len + bs - 1) / bs > a.table_width) {
    if (threadIdx.x == 0 && split == 0) report_error(a.error_flag, kBadSequence);
    n_keys = 0;
  }
  const int chunk = round_up((n_keys + num_splits - 1) / num_splits, kTcTileKeys);
  const int key_begin = min(n_keys, split * chunk);
  const int key_end = min(n_keys, key_begin + chunk);
  if (key_begin >= key_end) return;
  const int active = (n_keys + chunk - 1) / chunk;

  // q of this lane's row (query head h0 + g; rows past the group are zero) as A fragments.
  uint32_t qa[kKSteps][2];
  {
    const bf16* qp = static_cast<const bf16*>(a.qkv) + s * qkv_width + static_cast<int64_t>(h0 + g) * D + 2 * t4;
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      qa[ks][0] = g < G ? *reinterpret_cast<const uint32_t*>(qp + 16 * ks) : 0u;
      qa[ks][1] = g < G ? *reinterpret_cast<const uint32_t*>(qp + 16 * ks + 8) : 0u;
    }
  }

  bf16* tiles = reinterpret_cast<bf16*>(dyn) + static_cast<int64_t>(warp) * 2 * 2 * kTileElems;
  const bf16* kc = static_cast<const bf16*>(a.k_cache);
  const bf16* vc = static_cast<const bf16*>(a.v_cache);
  // Tile i of this warp starts at key key_begin + (4 i + warp) 16.
  const int tiles_total = (key_end - key_begin + kTcTileKeys - 1) / kTcTileKeys;
  const int my_tiles = tiles_total > warp ? (tiles_total - warp + kWarps - 1) / kWarps : 0;
  auto tile_start = [&](int i) { return key_begin + (i * kWarps + warp) * kTcTileKeys; };
  // Lane r < 16 looks up key r of a tile: the cache row offset of its KV head, or -1.
  auto lookup = [&](int i) -> int64_t {
    const int p = tile_start(i) + (lane & 15);
    if (i >= my_tiles || p >= key_end) return -1;
    const int blk = table[p / bs];
    if (blk < 0 || blk >= a.num_blocks) {
      report_error(a.error_flag, kBadBlockId);
      return -1;
    }
    return ((static_cast<int64_t>(blk) * bs + p % bs) * a.num_kv_heads + kv_head) * D;
  };
  // cp.async of tile i's K and V rows into buffer b (missing keys zero-filled); returns the
  // tile's mask of present keys (bit r: key r).
  auto load_tile = [&](int64_t row_of_lane, int b) -> uint32_t {
    bf16* kt = tiles + b * 2 * kTileElems;
    bf16* vt = kt + kTileElems;
#pragma unroll
    for (int j = 0; j < kCopies; ++j) {
      const int q = lane + 32 * j, r = q / kChunks, c = q % kChunks;
      const int64_t row = __shfl_sync(0xffffffffu, row_of_lane, r);
      const bool ok = row >= 0;
      const int64_t at = ok ? row + c * 8 : 0;
      cp_async16(smem_addr(kt + swz<D>(r, c)), kc + at, ok);
      cp_async16(smem_addr(vt + swz<D>(r, c)), vc + at, ok);
    }
    cp_async_commit();
    return __ballot_sync(0xffffffffu, row_of_lane >= 0) & 0xffffu;
  };

  constexpr float kLn2 = 0.6931471805599453f;
  const float scale_log2 = a.scale * kLog2e;
  float m = -INFINITY, l = 0.0f;  // this lane's row: running max (log2 units), partial sum
  float o[D / 8][2];              // output, dims 8 j + 2 t4 + {0, 1}
#pragma unroll
  for (int j = 0; j < D / 8; ++j)
    o[j][0] = o[j][1] = 0.0f;

  uint32_t present = my_tiles > 0 ? load_tile(lookup(0), 0) : 0u;
  int64_t next_row = lookup(1);
  for (int i = 0; i < my_tiles; ++i) {
    const int b = i & 1;
    uint32_t next_present = 0;
    if (i + 1 < my_tiles) {
      next_present = load_tile(next_row, b ^ 1);
      next_row = lookup(i + 2);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncwarp();
    const bf16* kt = tiles + b * 2 * kTileElems;
    const bf16* vt = kt + kTileElems;

    // S = q K^T: n-tile 0 keys 0-7, n-tile 1 keys 8-15 (row g, keys 8 n + 2 t4 + e).
    float sc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    {
      const int mi = lane / 8, rr = lane % 8;
      const int key = (mi / 2) * 8 + rr;
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) {
        uint32_t kb[4];
        ldmatrix_x4(kb, smem_addr(kt + swz<D>(key, 2 * ks + (mi & 1))));
        mma_bf16_rows0_7(sc[0], qa[ks][0], qa[ks][1], kb[0], kb[1]);
        mma_bf16_rows0_7(sc[1], qa[ks][0], qa[ks][1], kb[2], kb[3]);
      }
    }
    // Online softmax of row g over the tile (a row's 16 scores sit in the lane quad).
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (((present >> (8 * n + 2 * t4 + e)) & 1u) == 0) sc[n][e] = -INFINITY;
        mx = fmaxf(mx, sc[n][e]);
      }
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float new_m = fmaxf(m, mx * scale_log2);
    uint32_t pa[2] = {0u, 0u};
    if (new_m != -INFINITY) {  // (quad-uniform) else no present key yet: P = 0, state unchanged
      const float corr = fast_exp2(m - new_m);
      float p[2][2];
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          p[n][e] = fast_exp2(fmaf(sc[n][e], scale_log2, -new_m));
          sum += p[n][e];
        }
      }
      l = l * corr + sum;
      m = new_m;
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        o[j][0] *= corr, o[j][1] *= corr;
      pa[0] = pack_bf16(p[0][0], p[0][1]);  // keys 2 t4 + {0, 1}
      pa[1] = pack_bf16(p[1][0], p[1][1]);  // keys 8 + 2 t4 + {0, 1}
    }
    // O += P V: V through ldmatrix.trans, 16 dims (two n-tiles) per x4.
    {
      const int mi = lane / 8, rr = lane % 8;
      const int key = (mi & 1) * 8 + rr;
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, smem_addr(vt + swz<D>(key, 2 * np + (mi / 2))));
        mma_bf16_rows0_7(o[2 * np], pa[0], pa[1], vb[0], vb[1]);
        mma_bf16_rows0_7(o[2 * np + 1], pa[0], pa[1], vb[2], vb[3]);
      }
    }
    __syncwarp();  // every lane has read buffer b before the next iteration refills it
    present = next_present;
  }

  // The warps' states (natural-log max as decode_kernel keeps it), then the shared tail.
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  __syncthreads();  // every warp is done with its tiles: their bytes become s_acc
  auto& s_acc = *reinterpret_cast<float(*)[kWarps][kTcMaxGroup][D]>(dyn);
  if (g < G) {
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      s_acc[warp][g][8 * j + 2 * t4] = o[j][0];
      s_acc[warp][g][8 * j + 2 * t4 + 1] = o[j][1];
    }
    if (t4 == 0) {
      s_m[warp][g] = m == -INFINITY ? m : m * kLn2;
      s_l[warp][g] = l;
    }
  }
  __syncthreads();
  store_or_merge_splits<bf16, D, kTcMaxGroup>(a, s_m, s_l, s_acc, G, s, h0, split, active, num_splits, ws, counters,
                                              s_w);
}

}  // namespace
}  // namespace bw::cuda
