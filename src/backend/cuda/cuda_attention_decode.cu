// Decode attention: one query token per sequence (max_query_len == 1) over the paged KV
// cache, with grouped-query attention and split-KV (flash-decoding), in one kernel.
//
// A block owns one sequence, 2 or 4 query heads of one KV head, and one split of the
// context. A key row is spread over D / E lanes (E = the elements in 16 bytes), so one
// 16-byte load per lane fetches 32 / (D / E) whole keys per warp, and the K and V rows of
// kUnroll rounds are loaded before any is used.
//
// At batch 1 the op is a chain of dependent steps and a block's scoring work (4 warps, one
// per scheduler) is a large part of it, so: blocks take 2 heads when the grid is small and
// the context short (4 otherwise, measured best at larger batches), a split's keys are a
// whole number of loop steps (32 keys for bf16 / head_dim 128) and splits past a
// sequence's end exit at once; a decode batch has query token s for sequence s (checked),
// so q, kv_lens and the block ids of the split's first keys (assuming the chunk a sequence
// of max_kv_len keys would get, which is right whenever it rounds the same) load together
// right after the previous kernel ends; block ids of the next step load while the current
// one is scored.
//
// Split partials (max, sum, unnormalised output) go to the workspace (layout in
// cuda_attention_merge.cuh); each block then bumps a per-(sequence, KV head, head group)
// counter and the last one to arrive merges the partials into the output and resets the
// counter to 0, so there is no second kernel and no memset per call (the backend zeroes
// the counters once when it allocates them). A sequence that fits one split writes the
// output directly.
//
// bf16 activations with a bf16 cache (head_dim 64 or 128, at most 8 query heads per KV head)
// take decode_tc_kernel instead (cuda_attention_decode_tc.cuh): the same grid with one
// head group, the same splits and merge, scores and outputs on tensor cores.
#include <cmath>
#include <cstdlib>

#include "backend/cuda/cuda_attention_merge.cuh"

namespace bw::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kUnroll = 4;  // key rounds whose K and V loads are in flight together
// Keys a split takes at least: a few tiles, so that short contexts at small batches do not
// spend more on merging many one-tile splits than the tiles take (H200, tensor-core kernel,
// us per call in a graph, at least 32 / 128 / 256 keys: 1 x 2,048 keys 11.6 / 8.7 / 10.1,
// 8 x 576 11.3 / 10.0 / 9.9, 8 x 2,048 11.8 / 11.7 / 10.7, 64 x 576 14.4 at all three).
constexpr int kMinKeysPerSplit = 128;
constexpr int kMaxSplits = 64;  // the merge gives each lane two splits
constexpr float kNegInf = -INFINITY;

// A split's keys are a multiple of this: one round of the loop's keys, at least 32 (one
// whole step for a 2-byte cache with head_dim 128).
template <typename C, int D>
constexpr int chunk_granule() {
  constexpr int keys_per_round = kWarps * 32 / (D * static_cast<int>(sizeof(C)) / 16);
  return keys_per_round > 32 ? keys_per_round : 32;
}
__host__ __device__ constexpr int round_up(int x, int to) { return (x + to - 1) / to * to; }

// Element i of 16 bytes of C, as f32.
template <typename C>
__device__ __forceinline__ float elem_of(const uint4& raw, int i) {
  return to_float(reinterpret_cast<const C*>(&raw)[i]);
}

// The last block of a split (sequence, KV head, head group): merges the `active` splits'
// partials in `ws` into the output rows of query heads h0 .. h0 + ng - 1 of token t.
template <typename A, int D, int HG>
__device__ void merge_splits(const AttentionArgs& a, const float* ws, int64_t t, int h0, int ng, int active,
                             int num_splits, float (&s_w)[HG][kMaxSplits]) {
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  // Each warp weighs the splits of its heads: w = exp(m_split - M) / L.
  for (int g = warp; g < ng; g += kWarps) {
    const float* ml = split_max_sum(a, ws, t, h0 + g, 0, num_splits);
    const bool in0 = lane < active, in1 = lane + 32 < active;
    const float m0 = in0 ? __ldcg(ml + 2 * lane) : kNegInf;
    const float l0 = in0 ? __ldcg(ml + 2 * lane + 1) : 0.0f;
    const float m1 = in1 ? __ldcg(ml + 2 * lane + 64) : kNegInf;
    const float l1 = in1 ? __ldcg(ml + 2 * lane + 65) : 0.0f;
    const float M = warp_max(fmaxf(m0, m1));
    const float w0 = (m0 == kNegInf) ? 0.0f : __expf(m0 - M);
    const float w1 = (m1 == kNegInf) ? 0.0f : __expf(m1 - M);
    const float L = warp_sum(l0 * w0 + l1 * w1);
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    if (in0) s_w[g][lane] = w0 * inv;
    if (in1) s_w[g][lane + 32] = w1 * inv;
  }
  __syncthreads();
  // Then every thread sums 4 head dims over the splits (float4 reads, all in flight).
  constexpr int kVecs = D / 4;
  for (int i = static_cast<int>(threadIdx.x); i < ng * kVecs; i += kThreads) {
    const int g = i / kVecs, d = (i % kVecs) * 4;
    const float* o = split_output(a, ws, t, h0 + g, 0, num_splits) + d;
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 8
    for (int sp = 0; sp < active; ++sp) {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(o + static_cast<int64_t>(sp) * D));
      const float w = s_w[g][sp];
      sum.x = fmaf(w, v.x, sum.x);
      sum.y = fmaf(w, v.y, sum.y);
      sum.z = fmaf(w, v.z, sum.z);
      sum.w = fmaf(w, v.w, sum.w);
    }
    A* out = static_cast<A*>(a.out) + (t * a.num_heads + h0 + g) * D + d;
    out[0] = from_float<A>(sum.x);
    out[1] = from_float<A>(sum.y);
    out[2] = from_float<A>(sum.z);
    out[3] = from_float<A>(sum.w);
  }
}

// The tail of both decode kernels, after the block's warps left their states in shared
// memory (and a __syncthreads): the merged output when the sequence fits this block's
// split, else the split's partial; the last split of a (sequence, head group) to arrive
// merges them all and resets the counter for the next call.
template <typename A, int D, int HG>
__device__ void store_or_merge_splits(const AttentionArgs& a, const float (&s_m)[kWarps][HG],
                                      const float (&s_l)[kWarps][HG], const float (&s_acc)[kWarps][HG][D], int ng,
                                      int s, int h0, int split, int active, int num_splits, float* ws, int* counters,
                                      float (&s_w)[HG][kMaxSplits]) {
  __shared__ int s_last;
  if (active == 1) {  // the whole sequence in this block: the output directly
    merge_warps_and_store<A, kWarps, HG, D, kThreads>(a, s_m, s_l, s_acc, ng, s, h0, 0, 1, ws);
    return;
  }
  merge_warps_and_store<A, kWarps, HG, D, kThreads>(a, s_m, s_l, s_acc, ng, s, h0, split, num_splits, ws);
  // Publish the partial, then count arrivals; the last block merges every split.
  __threadfence();
  __syncthreads();
  int* counter = counters + static_cast<int64_t>(s) * gridDim.y + blockIdx.y;
  if (threadIdx.x == 0) s_last = atomicAdd(counter, 1) == active - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  merge_splits<A, D, HG>(a, ws, s, h0, ng, active, num_splits, s_w);
  if (threadIdx.x == 0) *counter = 0;  // every split has arrived: ready for the next call
}

template <typename A, typename C, int D, int HG>
__global__ void __launch_bounds__(kThreads)
    decode_kernel(AttentionArgs a, int head_groups, int chunk_guess, float* ws, int* counters) {
  pdl_wait();
  pdl_launch_dependents();
  constexpr int E = 16 / static_cast<int>(sizeof(C));  // elements per lane of one row
  constexpr int kLanesPerKey = D / E;
  static_assert(D % E == 0 && kLanesPerKey <= 32 && 32 % kLanesPerKey == 0);
  static_assert(sizeof(A) == sizeof(C), "q rows are read in the cache's 16-byte slices");
  constexpr int kKeysPerWarp = 32 / kLanesPerKey;
  constexpr int kKeysPerRound = kWarps * kKeysPerWarp;
  constexpr int kKeysPerStep = kKeysPerRound * kUnroll;
  constexpr int kChunkGranule = chunk_granule<C, D>();
  __shared__ float s_acc[kWarps][HG][D];
  __shared__ float s_m[kWarps][HG];
  __shared__ float s_l[kWarps][HG];
  __shared__ float s_w[HG][kMaxSplits];

  const int s = static_cast<int>(blockIdx.x);
  const int kv_head = static_cast<int>(blockIdx.y) / head_groups;
  const int group = static_cast<int>(blockIdx.y) % head_groups;
  const int G = a.num_heads / a.num_kv_heads;
  const int h0 = kv_head * G + group * HG;
  const int ng = min(HG, G - group * HG);
  const int num_splits = static_cast<int>(gridDim.z);
  const int split = static_cast<int>(blockIdx.z);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int sub = lane / kLanesPerKey;   // which key of the warp's round
  const int part = lane % kLanesPerKey;  // which E-element slice of the row
  const int bs = a.block_size;
  const int64_t qkv_width = static_cast<int64_t>(a.num_heads + 2 * a.num_kv_heads) * D;
  const int32_t* table = a.block_tables + static_cast<int64_t>(s) * a.table_width;

  // Loads that need nothing but the arguments, issued together: the sequence's metadata,
  // the block ids of this lane's first keys if the split's chunk is chunk_guess (the chunk
  // for a sequence of max_kv_len keys), and q (token s).
  const int q_first = a.query_start[s], q_end = a.query_start[s + 1];
  const int kv_len = a.kv_lens[s];
  const int first_key = split * chunk_guess + warp * kKeysPerWarp + sub;
  int blk[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u)
    blk[u] = a.table_width > 0 ? table[min((first_key + u * kKeysPerRound) / bs, a.table_width - 1)] : 0;
  uint4 q_raw[HG];
  const bool token_ok = s < a.num_tokens;
  const A* qp = static_cast<const A*>(a.qkv) + (token_ok ? s : 0) * qkv_width + static_cast<int64_t>(h0) * D + part * E;
#pragma unroll
  for (int g = 0; g < HG; ++g)
    q_raw[g] = g < ng ? *reinterpret_cast<const uint4*>(qp + g * D) : make_uint4(0, 0, 0, 0);

  // A decode batch has one query token per sequence, so token s belongs to sequence s.
  int n_keys = kv_len;
  if (!token_ok || q_first != s || q_end != s + 1 || kv_len < 1 || (kv_len + bs - 1) / bs > a.table_width) {
    if (threadIdx.x == 0 && split == 0) report_error(a.error_flag, kBadSequence);
    n_keys = 0;
  }
  // Whole steps of keys per split, so that no block runs a partial step it could avoid.
  const int chunk = round_up((n_keys + num_splits - 1) / num_splits, kChunkGranule);
  const bool guessed = chunk == chunk_guess;
  const int key_begin = min(n_keys, split * chunk);
  const int key_end = min(n_keys, key_begin + chunk);
  if (key_begin >= key_end) return;                 // past the sequence's end (or a bad sequence): no output
  const int active = (n_keys + chunk - 1) / chunk;  // splits with keys (>= 1)
  if (!guessed) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int p = key_begin + warp * kKeysPerWarp + u * kKeysPerRound + sub;
      blk[u] = p < key_end ? table[p / bs] : 0;
    }
  }

  // This lane's slice of each query head, pre-scaled.
  float q[HG][E];
#pragma unroll
  for (int g = 0; g < HG; ++g) {
#pragma unroll
    for (int e = 0; e < E; ++e)
      q[g][e] = elem_of<A>(q_raw[g], e) * a.scale;
  }

  float m[HG], l[HG], acc[HG][E];
#pragma unroll
  for (int g = 0; g < HG; ++g) {
    m[g] = kNegInf;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e)
      acc[g][e] = 0.0f;
  }
  const C* kc = static_cast<const C*>(a.k_cache);
  const C* vc = static_cast<const C*>(a.v_cache);

  // Warp-uniform loop: every lane runs the shuffles. l stays per lane (summed at the end).
  for (int base = key_begin + warp * kKeysPerWarp; base < key_end; base += kKeysPerStep) {
    uint4 kr[kUnroll], vr[kUnroll];
    bool valid[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int p = base + u * kKeysPerRound + sub;
      valid[u] = p < key_end;
      if (valid[u] && (blk[u] < 0 || blk[u] >= a.num_blocks)) {
        report_error(a.error_flag, kBadBlockId);
        valid[u] = false;
      }
      if (valid[u]) {
        const int64_t slot = static_cast<int64_t>(blk[u]) * bs + p % bs;
        const int64_t row = (slot * a.num_kv_heads + kv_head) * D + part * E;
        kr[u] = *reinterpret_cast<const uint4*>(kc + row);
        vr[u] = *reinterpret_cast<const uint4*>(vc + row);
      } else {
        kr[u] = vr[u] = make_uint4(0, 0, 0, 0);
      }
    }
    // The next step's block ids, in flight while this step is scored.
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int p = base + kKeysPerStep + u * kKeysPerRound + sub;
      blk[u] = p < key_end ? table[p / bs] : 0;
    }
    // Rounds with no key of this warp (warp-uniform) are skipped.
    bool live[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      live[u] = base + u * kKeysPerRound < key_end;
    float sc[kUnroll][HG];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (!live[u]) continue;
      float kf[E];
#pragma unroll
      for (int e = 0; e < E; ++e)
        kf[e] = elem_of<C>(kr[u], e);
#pragma unroll
      for (int g = 0; g < HG; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e)
          dot = fmaf(q[g][e], kf[e], dot);
        sc[u][g] = dot;
      }
    }
#pragma unroll
    for (int g = 0; g < HG; ++g) {
      if (g >= ng) continue;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (!live[u]) continue;
#pragma unroll
        for (int o = kLanesPerKey / 2; o > 0; o >>= 1)
          sc[u][g] += __shfl_xor_sync(0xffffffffu, sc[u][g], o);
      }
    }
#pragma unroll
    for (int g = 0; g < HG; ++g) {
      if (g >= ng) continue;
      float mx = kNegInf;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        mx = fmaxf(mx, live[u] && valid[u] ? sc[u][g] : kNegInf);
#pragma unroll
      for (int o = kLanesPerKey; o < 32; o <<= 1)
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float new_m = fmaxf(m[g], mx);
      if (new_m == kNegInf) continue;  // warp-uniform: no valid key yet
      const float corr = __expf(m[g] - new_m);
      float p[kUnroll];
      float psum = 0.0f;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        p[u] = live[u] && valid[u] ? __expf(sc[u][g] - new_m) : 0.0f;
        psum += p[u];
      }
      l[g] = l[g] * corr + psum;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        float v = acc[g][e] * corr;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (live[u]) v = fmaf(p[u], elem_of<C>(vr[u], e), v);
        }
        acc[g][e] = v;
      }
      m[g] = new_m;
    }
  }

  // Sum the warp's keys (lanes of one slice), then merge the warps in shared memory.
#pragma unroll
  for (int g = 0; g < HG; ++g) {
    if (g >= ng) continue;
#pragma unroll
    for (int o = kLanesPerKey; o < 32; o <<= 1)
      l[g] += __shfl_xor_sync(0xffffffffu, l[g], o);
#pragma unroll
    for (int e = 0; e < E; ++e) {
#pragma unroll
      for (int o = kLanesPerKey; o < 32; o <<= 1)
        acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
    }
    if (sub == 0) {
#pragma unroll
      for (int e = 0; e < E; ++e)
        s_acc[warp][g][part * E + e] = acc[g][e];
    }
    if (lane == 0) {
      s_m[warp][g] = m[g];
      s_l[warp][g] = l[g];
    }
  }
  __syncthreads();
  store_or_merge_splits<A, D, HG>(a, s_m, s_l, s_acc, ng, s, h0, split, active, num_splits, ws, counters, s_w);
}

}  // namespace
}  // namespace bw::cuda

#include "backend/cuda/cuda_attention_decode_tc.cuh"

namespace bw::cuda {
namespace {

// Whether decode_tc_kernel takes this call (BW_DECODE_TC=0: never, a measurement switch).
bool use_tensor_cores(const AttentionArgs& a) {
  static const bool enabled = [] {
    const char* env = std::getenv("BW_DECODE_TC");
    return env == nullptr || std::atoi(env) != 0;
  }();
  return enabled && a.act_type == ElemType::kBF16 && a.cache_type == ElemType::kBF16 &&
         (a.head_dim == 64 || a.head_dim == 128) && a.num_heads / a.num_kv_heads <= kTcMaxGroup;
}

int head_groups_of(const AttentionArgs& a, int hg) {
  const int G = a.num_heads / a.num_kv_heads;
  return (G + hg - 1) / hg;
}

// Query heads per block: 4 (of a KV head's group) share each K/V load; when the grid is
// small and the context short (batch 1), 2, so that twice the blocks each score half as
// much (their scoring is the latency then). Measured on an H200 against 1 and 8 too.
int heads_per_block(const AttentionArgs& a, int num_sms) {
  if (use_tensor_cores(a)) return a.num_heads / a.num_kv_heads;  // the whole group
  const int64_t keys = (static_cast<int64_t>(a.max_kv_len > 0 ? a.max_kv_len : 0) + 31) / 32;
  return static_cast<int64_t>(a.num_seqs) * a.num_kv_heads * keys <= 2 * static_cast<int64_t>(num_sms) ? 2 : 4;
}

// Calls fn(std::integral_constant<int, D>) for the head dims the kernel is built for.
template <typename Fn>
bool dispatch_head_dim(int d, Fn&& fn) {
  switch (d) {
    case 16:
      fn(std::integral_constant<int, 16>{});
      return true;
    case 32:
      fn(std::integral_constant<int, 32>{});
      return true;
    case 64:
      fn(std::integral_constant<int, 64>{});
      return true;
    case 128:
      fn(std::integral_constant<int, 128>{});
      return true;
    default:
      return false;
  }
}

// Calls fn(std::integral_constant<int, HG>) for the heads-per-block counts built.
template <typename Fn>
bool dispatch_heads_per_block(int hg, Fn&& fn) {
  switch (hg) {
    case 2:
      fn(std::integral_constant<int, 2>{});
      return true;
    case 4:
      fn(std::integral_constant<int, 4>{});
      return true;
    default:
      return false;
  }
}

// The tensor-core kernel takes more than 48 KB of shared memory, which needs the opt-in
// attribute; it is per device, so it is set at every launch (as cheap as a launch).
template <int D>
cudaError_t launch_decode_tc(dim3 grid, const AttentionArgs& args, float* workspace, int* counters,
                             cudaStream_t stream) {
  constexpr int kSmem = decode_tc_smem_bytes<D>();
  const cudaError_t attr =
      cudaFuncSetAttribute(decode_tc_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (attr != cudaSuccess) return attr;
  launch_kernel(decode_tc_kernel<D>, grid, kThreads, kSmem, stream, args, workspace, counters);
  return cudaGetLastError();
}

}  // namespace

bool decode_attention_supported(const AttentionArgs& args) {
  const bool dims = args.head_dim == 16 || args.head_dim == 32 || args.head_dim == 64 || args.head_dim == 128;
  // Built pairs: f32 activations with an f32 cache (f32 mode), bf16 activations with a
  // bf16 or f16 cache.
  const bool types = (args.act_type == ElemType::kF32 && args.cache_type == ElemType::kF32) ||
                     (args.act_type == ElemType::kBF16 && args.cache_type != ElemType::kF32);
  // 16-byte loads need aligned caches and qkv.
  const bool aligned = reinterpret_cast<uintptr_t>(args.k_cache) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(args.v_cache) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(args.qkv) % 16 == 0;
  return dims && types && aligned && args.num_heads % args.num_kv_heads == 0;
}

int decode_attention_num_splits(const AttentionArgs& args, int num_sms) {
  const int hg = heads_per_block(args, num_sms);
  const int64_t base = static_cast<int64_t>(args.num_seqs) * args.num_kv_heads * head_groups_of(args, hg);
  if (base <= 0) return 1;
  // Blocks per SM to aim for: registers let 4 blocks of 2 heads stay resident (at batch 1
  // many exit at once when max_kv_len is a loose bound); blocks of 4 heads fit 3, but 3 per
  // SM looked slower than 2 in one H200 run (a partial second wave).
  const int64_t per_sm = hg == 2 ? 4 : 2;
  const int64_t by_grid = (per_sm * num_sms + base - 1) / base;
  const int64_t by_len = (static_cast<int64_t>(args.max_kv_len) + kMinKeysPerSplit - 1) / kMinKeysPerSplit;
  int64_t splits = by_grid < by_len ? by_grid : by_len;
  if (splits > kMaxSplits) splits = kMaxSplits;
  return static_cast<int>(splits < 1 ? 1 : splits);
}

int64_t decode_attention_counters(const AttentionArgs& args, int num_sms) {
  return static_cast<int64_t>(args.num_seqs) * args.num_kv_heads * head_groups_of(args, heads_per_block(args, num_sms));
}

cudaError_t launch_paged_attention_decode(const AttentionArgs& args, int num_splits, int num_sms, float* workspace,
                                          int* counters, cudaStream_t stream) {
  if (args.num_seqs == 0) return cudaSuccess;
  if (num_splits < 1 || num_splits > kMaxSplits || (num_splits > 1 && (workspace == nullptr || counters == nullptr))) {
    return cudaErrorInvalidValue;
  }
  const int hg = heads_per_block(args, num_sms);
  const int groups = head_groups_of(args, hg);
  const dim3 grid(static_cast<unsigned>(args.num_seqs), static_cast<unsigned>(args.num_kv_heads * groups),
                  static_cast<unsigned>(num_splits));
  const int max_kv = args.max_kv_len > 0 ? args.max_kv_len : 0;
  if (use_tensor_cores(args)) {
    return args.head_dim == 64 ? launch_decode_tc<64>(grid, args, workspace, counters, stream)
                               : launch_decode_tc<128>(grid, args, workspace, counters, stream);
  }
  bool launched = false;
  dispatch_head_dim(args.head_dim, [&](auto dtag) {
    constexpr int D = decltype(dtag)::value;
    launched = dispatch_heads_per_block(hg, [&](auto htag) {
      constexpr int HG = decltype(htag)::value;
      if (args.act_type == ElemType::kF32) {
        const int guess = round_up((max_kv + num_splits - 1) / num_splits, chunk_granule<float, D>());
        launch_kernel(decode_kernel<float, float, D, HG>, grid, kThreads, 0, stream, args, groups, guess, workspace,
                      counters);
      } else if (args.cache_type == ElemType::kF16) {
        const int guess = round_up((max_kv + num_splits - 1) / num_splits, chunk_granule<__half, D>());
        launch_kernel(decode_kernel<__nv_bfloat16, __half, D, HG>, grid, kThreads, 0, stream, args, groups, guess,
                      workspace, counters);
      } else {
        const int guess = round_up((max_kv + num_splits - 1) / num_splits, chunk_granule<__nv_bfloat16, D>());
        launch_kernel(decode_kernel<__nv_bfloat16, __nv_bfloat16, D, HG>, grid, kThreads, 0, stream, args, groups,
                      guess, workspace, counters);
      }
    });
  });
  if (!launched) return cudaErrorInvalidValue;
  return cudaGetLastError();
}

}  // namespace bw::cuda
