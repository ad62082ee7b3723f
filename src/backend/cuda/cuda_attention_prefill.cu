// paged_attention on tensor cores for prefill: a FlashAttention-2-style kernel for bf16
// activations and a bf16 KV cache (sm_80+: mma.sync m16n8k16, ldmatrix, cp.async).
//
// A CTA of 4 warps owns 64 query rows of one sequence and one query head (each warp 16
// rows). Q is staged in shared memory and kept in registers as A fragments; the CTA walks
// 64-key tiles of the sequence's cache up to the causal limit of its last row, loading
// tile n + 1 while it computes tile n: K and V rows are gathered through the block table
// with 16-byte cp.async (zero-filled past the end), each warp looking up its 16 rows'
// block once (one lane per row) and shuffling the offsets to the lanes that copy them.
// Per tile each warp does S = Q K^T (K via ldmatrix), the online-softmax update in
// registers (raw scores masked only on tiles that cross a row's limit, then one FFMA with
// the scale folded in and one ex2.approx per score; O rescaled only when a row of the warp
// raised its max; 1/l at the end), and O += P V with P kept in registers as bf16 A
// fragments and V read through ldmatrix.trans. Shared-memory rows are XOR-swizzled in
// 16-byte chunks so ldmatrix is free of bank conflicts. The output is staged through the
// (then unused) Q tile and written with 16-byte stores. Heaviest query tiles are
// scheduled first.
//
// A second variant gives each warp 32 rows (two m16 tiles, 128 per CTA, FlashAttention-2's
// shape), so every K/V fragment feeds two MMAs; Q is then read from shared memory per
// step to fit in registers (it still spills ~180 bytes at D = 128). It measured slower
// on an H200 (T = 2,048: 12/2 heads 123 vs 75 us, half the CTAs and twice the work on the
// causal critical path; 28/4 146 vs 145 us; chunks 1.5-1.9x), so the dispatch keeps 64
// rows (prefill_attention_variant); tests run both directly. Also measured slower there
// and dropped: 128 rows in 32-key compute steps (fewer scores in registers), 8 warps x
// 16 rows, 128 x 32 tiles, Q read straight from global into registers with three CTAs
// per SM (168 registers: spills), and one barrier per tile with the block-table reads
// issued a tile ahead (+3-4%).
//
// Same contract and error reporting as launch_paged_attention (cuda_attention.cu): a bad
// block id is reported as kBadBlockId and its key reads as zeros; a bad sequence
// (kv_len < q_len, a table too narrow, a query range outside the tokens) as kBadSequence
// and its rows are not written. Query tiles past a sequence's length exit; a CTA loops
// over further tiles when the grid is smaller than the longest sequence needs, so the
// max_query_len hint only sizes the grid.
#include <atomic>
#include <cmath>

#include "backend/cuda/cuda_attention_prefill_tiles.cuh"
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_mma.cuh"

namespace bw::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kQkUnroll = 1;   // unroll of the Q K^T loop when Q is read from shared memory
constexpr int kSubUnroll = 2;  // unroll of the compute steps of a tile

// The kernel variants (launch_paged_attention_prefill's `variant`): 4 warps of MT m16
// tiles of query rows each, so a CTA owns MT * 64 query rows of one head; K/V tiles of N
// keys, each computed in steps of SUB keys (SUB < N keeps fewer scores in registers but
// measured slower: both variants use SUB = N).
template <int D, int MT, int N, int SUB>
struct PrefillConfig {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kWarpRows = MT * 16;         // query rows per warp
  static constexpr int kRows = kWarps * kWarpRows;  // query rows per CTA
  static constexpr int kN = N;                      // keys per K/V tile
  static constexpr int kSub = SUB;                  // keys per compute step
  static constexpr bool kQInRegisters = MT == 1;    // else ldmatrix from shared memory per step
  static constexpr int kSmem = (kRows + 4 * kN) * D * static_cast<int>(sizeof(bf16));  // Q + 2 x (K, V)
  static_assert(N % SUB == 0 && SUB % 16 == 0, "keys per step must divide the tile");
};

std::atomic<int64_t> g_launches{0};

template <int D, int MT, int N, int SUB>
__global__ void __launch_bounds__(128, 2) prefill_attention_kernel(AttentionArgs a) {
  pdl_wait();
  static_assert(D % 16 == 0 && D >= 64 && D <= 128, "head_dim must be a multiple of 16 in [64, 128]");
  using Cfg = PrefillConfig<D, MT, N, SUB>;
  constexpr int kN = Cfg::kN;
  constexpr int kSub = Cfg::kSub;
  constexpr int kThreads = Cfg::kThreads;
  constexpr int kRows = Cfg::kRows;
  constexpr int kWarpQ = Cfg::kWarpRows;
  constexpr bool kQReg = Cfg::kQInRegisters;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sq = reinterpret_cast<bf16*>(smem_raw);  // [kRows][D]: the Q tile, then the output
  bf16* sk = sq + kRows * D;                     // [2][kN][D]
  bf16* sv = sk + 2 * kN * D;                    // [2][kN][D]

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t4 = lane % 4;  // mma fragment row group / column pair
  const PrefillHead<D> h(a);
  const float scale_log2 = h.scale_log2;
  auto dst = [](int r, int c) { return swz<D>(r, c); };
  const KvTileGather<D, kN, kThreads> gather(tid);

  for_each_prefill_tile<kRows, kN>(a, tid == 0, [&](const PrefillSeq& seq, int m0, int n_keys, int n_tiles) {
    const int ctx = seq.ctx;
    const int q_len = seq.q_len;
    // The Q tile (rows past the sequence zero-filled); K and V rows of tile n go to
    // buffer n & 1.
    load_query_rows(h, seq, sq, dst, m0, 0, kRows, tid, kThreads);
    auto load_kv = [&](int n) { gather(a, h, seq, n, n_keys, sk + (n & 1) * kN * D, sv + (n & 1) * kN * D, dst); };
    load_kv(0);
    cp_async_commit();

    // The warp's kWarpQ rows start at wrow; this thread's rows are g and g + 8 of each
    // of its m16 tiles.
    const int wrow = m0 + warp * kWarpQ;
    const bool warp_active = wrow < q_len;
    const int warp_first_lim = min(ctx + wrow, n_keys - 1);  // last key of the warp's first row
    const int warp_last_lim = min(ctx + wrow + kWarpQ - 1, n_keys - 1);
    const int lim_base = ctx + wrow + g;  // + mi * 16 (+ 8): a row's last key, capped at n_keys - 1

    // One m16 tile per warp: Q stays in registers. Two: read from shared memory per step.
    uint32_t qf[kQReg ? D / 16 : 1][4];
    float o[MT][D / 8][4];
    float m_r[MT][2], l_r[MT][2];  // running max (log2 domain, scaled) and partial sum
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        o[mi][j][0] = o[mi][j][1] = o[mi][j][2] = o[mi][j][3] = 0.0f;
      m_r[mi][0] = m_r[mi][1] = -INFINITY;
      l_r[mi][0] = l_r[mi][1] = 0.0f;
    }
    const int q_frag_row = warp * kWarpQ + (lane / 8 % 2) * 8 + lane % 8;

    for (int n = 0; n < n_tiles; ++n) {
      // Tile n + 1 into the buffer every warp finished with (barrier at the loop's end).
      if (n + 1 < n_tiles) {
        load_kv(n + 1);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      if constexpr (kQReg) {
        if (n == 0) {
#pragma unroll
          for (int kk = 0; kk < D / 16; ++kk)
            ldmatrix_x4(qf[kk], smem_addr(sq + swz<D>(q_frag_row, kk * 2 + lane / 16)));
        }
      }
      const bf16* tk = sk + (n & 1) * kN * D;
      const bf16* tv = sv + (n & 1) * kN * D;
#pragma unroll(kSubUnroll)
      for (int sub = 0; sub < kN / kSub; ++sub) {
        const int k0 = n * kN + sub * kSub;  // first key of this step
        if (!warp_active || k0 > warp_last_lim) break;
        float sc[MT][kSub / 8][4];
#pragma unroll
        for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
          for (int j = 0; j < kSub / 8; ++j)
            sc[mi][j][0] = sc[mi][j][1] = sc[mi][j][2] = sc[mi][j][3] = 0.0f;
        }
        // (Q from shared memory: a rolled loop keeps the fragments of later steps from
        // being hoisted into registers.)
#pragma unroll(kQReg ? D / 16 : kQkUnroll)
        for (int kk = 0; kk < D / 16; ++kk) {
          uint32_t qa[MT][4];
#pragma unroll
          for (int mi = 0; mi < MT; ++mi) {
            if constexpr (kQReg) {
#pragma unroll
              for (int e = 0; e < 4; ++e)
                qa[mi][e] = qf[kk][e];
            } else {
              ldmatrix_x4(qa[mi], smem_addr(sq + swz<D>(q_frag_row + mi * 16, kk * 2 + lane / 16)));
            }
          }
#pragma unroll
          for (int np = 0; np < kSub / 16; ++np) {
            uint32_t b[4];
            const int r = sub * kSub + np * 16 + (lane / 16) * 8 + lane % 8;
            ldmatrix_x4(b, smem_addr(tk + swz<D>(r, kk * 2 + lane / 8 % 2)));
#pragma unroll
            for (int mi = 0; mi < MT; ++mi) {
              mma_bf16(sc[mi][2 * np], qa[mi], b[0], b[1]);
              mma_bf16(sc[mi][2 * np + 1], qa[mi], b[2], b[3]);
            }
          }
        }
        // Mask keys past each row's limit (only on steps that cross one), online softmax
        // in the log2 domain with the scale folded into one FFMA per score.
        const bool need_mask = k0 + kSub - 1 > warp_first_lim;
        uint32_t pf[MT][kSub / 16][4];  // P as bf16 A fragments: keys 16kk.. are score tiles 2kk, 2kk+1
#pragma unroll
        for (int mi = 0; mi < MT; ++mi) {
          float corr[2];
          online_softmax_step<kSub>(sc[mi], pf[mi], m_r[mi], l_r[mi], corr, need_mask, k0,
                                    min(lim_base + mi * 16, n_keys - 1), min(lim_base + mi * 16 + 8, n_keys - 1),
                                    scale_log2, t4);
          rescale_rows(o[mi], corr);
        }
#pragma unroll
        for (int kk = 0; kk < kSub / 16; ++kk) {
#pragma unroll
          for (int dp = 0; dp < D / 16; ++dp) {
            uint32_t b[4];
            const int r = sub * kSub + kk * 16 + (lane / 8 % 2) * 8 + lane % 8;
            ldmatrix_x4_trans(b, smem_addr(tv + swz<D>(r, dp * 2 + lane / 16)));
#pragma unroll
            for (int mi = 0; mi < MT; ++mi) {
              mma_bf16(o[mi][2 * dp], pf[mi][kk], b[0], b[1]);
              mma_bf16(o[mi][2 * dp + 1], pf[mi][kk], b[2], b[3]);
            }
          }
        }
      }
      __syncthreads();  // the buffer of tile n is refilled in iteration n + 1
    }

    // Normalise, stage the warp's rows in its own rows of the Q tile, store.
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
      stage_output_rows<D>(sq, dst, warp * kWarpQ + mi * 16, o[mi], l_r[mi], lane);
    __syncwarp();
    store_output_rows(h, seq, sq, dst, m0, warp * kWarpQ, kWarpQ, lane);
    __syncthreads();  // the Q tile and K/V buffer 0 are reloaded for the next query tile
  });
}

template <int D, int MT, int N, int SUB>
cudaError_t launch_for(const AttentionArgs& args, int max_query_len, cudaStream_t stream) {
  using Cfg = PrefillConfig<D, MT, N, SUB>;
  const cudaError_t attr = cudaFuncSetAttribute(prefill_attention_kernel<D, MT, N, SUB>,
                                                cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmem);
  if (attr != cudaSuccess) return attr;
  launch_kernel(prefill_attention_kernel<D, MT, N, SUB>, prefill_grid(args, max_query_len, Cfg::kRows), Cfg::kThreads,
                Cfg::kSmem, stream, args);
  return cudaGetLastError();
}

template <int D>
cudaError_t launch_variant(const AttentionArgs& args, int max_query_len, int variant, cudaStream_t stream) {
  switch (variant) {
    case kPrefillVariant64Rows:
      return launch_for<D, 1, 64, 64>(args, max_query_len, stream);
    case kPrefillVariant128Rows:
      return launch_for<D, 2, 64, 64>(args, max_query_len, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

bool prefill_attention_supported(const AttentionArgs& args) {
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return args.act_type == ElemType::kBF16 && args.cache_type == ElemType::kBF16 &&
         (args.head_dim == 64 || args.head_dim == 128) && args.num_kv_heads > 0 &&
         args.num_heads % args.num_kv_heads == 0 && args.num_heads <= 65535 && aligned(args.qkv) && aligned(args.out) &&
         aligned(args.k_cache) && aligned(args.v_cache);
}

int prefill_attention_variant(const AttentionArgs& /*args*/, bool wgmma_available) {
  // 128 rows per CTA measured slower on an H200 in every benchmarked shape (see above).
  return wgmma_available ? kPrefillVariantWgmma : kPrefillVariant64Rows;
}

cudaError_t launch_paged_attention_prefill(const AttentionArgs& args, int max_query_len, int variant,
                                           cudaStream_t stream, int kv_splits, float* workspace) {
  if (variant < kPrefillVariant64Rows || variant > kPrefillVariantWgmma) return cudaErrorInvalidValue;
  if (kv_splits != 1 && variant != kPrefillVariantWgmma) return cudaErrorInvalidValue;
  if (args.num_tokens == 0 || args.num_seqs <= 0 || max_query_len <= 0) return cudaSuccess;
  g_launches.fetch_add(1, std::memory_order_relaxed);
  if (variant == kPrefillVariantWgmma) {
    return launch_paged_attention_prefill_wgmma(args, max_query_len, kv_splits, workspace, stream);
  }
  return args.head_dim == 64 ? launch_variant<64>(args, max_query_len, variant, stream)
                             : launch_variant<128>(args, max_query_len, variant, stream);
}

int64_t prefill_attention_launches() { return g_launches.load(std::memory_order_relaxed); }

}  // namespace bw::cuda
