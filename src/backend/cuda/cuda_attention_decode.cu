// Decode attention: one query token per sequence (max_query_len == 1) over the paged KV
// cache, with grouped-query attention and split-KV (flash-decoding).
//
// The general kernel (cuda_attention.cu) gives one key to each lane and walks head dims
// with a dependent chain of loads, which leaves a decode step of one sequence latency-bound
// (two thread blocks for a 2-KV-head model). Here a key row is spread over D / E lanes (E =
// the elements in 16 bytes), so one 16-byte load per lane fetches 32 / (D / E) whole keys
// per warp, K and V of kUnroll rounds are loaded before any is used, and the context is
// split over enough thread blocks to fill the GPU even at batch 1. Partial results of a
// split use the general kernel's workspace layout and its combine kernel.
#include <cmath>

#include "backend/cuda/cuda_attention_merge.cuh"

namespace bw::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxG = 8;    // query heads per block (as in the general kernel)
constexpr int kUnroll = 2;  // key rounds whose K and V loads are in flight together
constexpr int kMinKeysPerSplit = 32;
constexpr float kNegInf = -INFINITY;

template <typename T, int N>
__device__ __forceinline__ void load16(const T* p, float* out) {
  static_assert(N * sizeof(T) == 16);
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < N; ++i)
    out[i] = to_float(v[i]);
}

template <typename A, typename C, int D>
__global__ void __launch_bounds__(kThreads) decode_kernel(AttentionArgs a, int head_groups, float* ws) {
  pdl_wait();
  pdl_launch_dependents();
  constexpr int E = 16 / static_cast<int>(sizeof(C));  // elements per lane of one row
  constexpr int kLanesPerKey = D / E;
  static_assert(D % E == 0 && kLanesPerKey <= 32 && 32 % kLanesPerKey == 0);
  constexpr int kKeysPerWarp = 32 / kLanesPerKey;
  constexpr int kKeysPerRound = kWarps * kKeysPerWarp;
  __shared__ float s_acc[kWarps][kMaxG][D];
  __shared__ float s_m[kWarps][kMaxG];
  __shared__ float s_l[kWarps][kMaxG];

  const int s = static_cast<int>(blockIdx.x);
  const int kv_head = static_cast<int>(blockIdx.y) / head_groups;
  const int group = static_cast<int>(blockIdx.y) % head_groups;
  const int G = a.num_heads / a.num_kv_heads;
  const int h0 = kv_head * G + group * kMaxG;
  const int ng = min(kMaxG, G - group * kMaxG);
  const int num_splits = static_cast<int>(gridDim.z);
  const int split = static_cast<int>(blockIdx.z);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int sub = lane / kLanesPerKey;   // which key of the warp's round
  const int part = lane % kLanesPerKey;  // which E-element slice of the row
  const int64_t qkv_width = static_cast<int64_t>(a.num_heads + 2 * a.num_kv_heads) * D;

  const int64_t t = a.query_start[s];
  const int q_len = a.query_start[s + 1] - a.query_start[s];
  const int kv_len = a.kv_lens[s];
  int n_keys = kv_len;
  if (q_len != 1 || kv_len < 1 || (kv_len + a.block_size - 1) / a.block_size > a.table_width || t < 0 ||
      t >= a.num_tokens) {
    if (threadIdx.x == 0) report_error(a.error_flag, kBadSequence);
    n_keys = 0;
  }
  const int chunk = (n_keys + num_splits - 1) / num_splits;
  const int key_begin = min(n_keys, split * chunk);
  const int key_end = min(n_keys, key_begin + chunk);

  // This lane's slice of each query head, pre-scaled.
  float q[kMaxG][E];
  const A* qp = static_cast<const A*>(a.qkv) + (n_keys > 0 ? t : 0) * qkv_width + static_cast<int64_t>(h0) * D;
  static_assert(sizeof(A) == sizeof(C), "q rows are read in the cache's 16-byte slices");
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    if (g < ng) {
      load16<A, E>(qp + g * D + part * E, q[g]);
#pragma unroll
      for (int e = 0; e < E; ++e)
        q[g][e] *= a.scale;
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e)
        q[g][e] = 0.0f;
    }
  }

  float m[kMaxG], l[kMaxG], acc[kMaxG][E];
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    m[g] = kNegInf;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e)
      acc[g][e] = 0.0f;
  }
  const int32_t* table = a.block_tables + static_cast<int64_t>(s) * a.table_width;
  const C* kc = static_cast<const C*>(a.k_cache);
  const C* vc = static_cast<const C*>(a.v_cache);

  // Warp-uniform loop: every lane runs the shuffles.
  for (int base = key_begin + warp * kKeysPerWarp; base < key_end; base += kKeysPerRound * kUnroll) {
    float kf[kUnroll][E], vf[kUnroll][E];
    bool valid[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int p = base + u * kKeysPerRound + sub;
      valid[u] = p < key_end;
      if (valid[u]) {
        const int32_t block = table[p / a.block_size];
        if (block < 0 || block >= a.num_blocks) {
          report_error(a.error_flag, kBadBlockId);
          valid[u] = false;
        }
        if (valid[u]) {
          const int64_t slot = static_cast<int64_t>(block) * a.block_size + p % a.block_size;
          const int64_t row = (slot * a.num_kv_heads + kv_head) * D + part * E;
          load16<C, E>(kc + row, kf[u]);
          load16<C, E>(vc + row, vf[u]);
        }
      }
      if (!valid[u]) {
#pragma unroll
        for (int e = 0; e < E; ++e)
          kf[u][e] = vf[u][e] = 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int g = 0; g < kMaxG; ++g) {
        if (g >= ng) continue;
        float sc = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e)
          sc = fmaf(q[g][e], kf[u][e], sc);
#pragma unroll
        for (int o = kLanesPerKey / 2; o > 0; o >>= 1)
          sc += __shfl_xor_sync(0xffffffffu, sc, o);
        const float score = valid[u] ? sc : kNegInf;
        float mx = score;
#pragma unroll
        for (int o = kLanesPerKey; o < 32; o <<= 1)
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        const float new_m = fmaxf(m[g], mx);
        if (new_m == kNegInf) continue;  // warp-uniform: no valid key yet
        const float corr = __expf(m[g] - new_m);
        const float p = valid[u] ? __expf(score - new_m) : 0.0f;
        float psum = p;
#pragma unroll
        for (int o = kLanesPerKey; o < 32; o <<= 1)
          psum += __shfl_xor_sync(0xffffffffu, psum, o);
        l[g] = l[g] * corr + psum;
#pragma unroll
        for (int e = 0; e < E; ++e)
          acc[g][e] = fmaf(p, vf[u][e], acc[g][e] * corr);
        m[g] = new_m;
      }
    }
  }

  // Sum the warp's keys (lanes of one slice), then merge the warps in shared memory.
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
#pragma unroll
    for (int e = 0; e < E; ++e) {
#pragma unroll
      for (int o = kLanesPerKey; o < 32; o <<= 1)
        acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
    }
    if (g < ng) {
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
  }
  __syncthreads();
  if (n_keys == 0) return;  // a bad sequence: nothing written
  merge_warps_and_store<A, kWarps, kMaxG, D, kThreads>(a, s_m, s_l, s_acc, ng, t, h0, split, num_splits, ws);
}

int head_groups_of(const AttentionArgs& a) {
  const int G = a.num_heads / a.num_kv_heads;
  return (G + kMaxG - 1) / kMaxG;
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
  const int64_t base = static_cast<int64_t>(args.num_seqs) * args.num_kv_heads * head_groups_of(args);
  if (base <= 0) return 1;
  const int64_t by_grid = (2 * static_cast<int64_t>(num_sms) + base - 1) / base;
  const int64_t by_len = (static_cast<int64_t>(args.max_kv_len) + kMinKeysPerSplit - 1) / kMinKeysPerSplit;
  int64_t splits = by_grid < by_len ? by_grid : by_len;
  if (splits > 64) splits = 64;
  return static_cast<int>(splits < 1 ? 1 : splits);
}

cudaError_t launch_paged_attention_decode(const AttentionArgs& args, int num_splits, float* workspace,
                                          cudaStream_t stream) {
  if (args.num_seqs == 0) return cudaSuccess;
  const int groups = head_groups_of(args);
  const dim3 grid(static_cast<unsigned>(args.num_seqs), static_cast<unsigned>(args.num_kv_heads * groups),
                  static_cast<unsigned>(num_splits));
  bool launched = false;
  dispatch_head_dim(args.head_dim, [&](auto dtag) {
    constexpr int D = decltype(dtag)::value;
    if (args.act_type == ElemType::kF32) {
      launch_kernel(decode_kernel<float, float, D>, grid, kThreads, 0, stream, args, groups, workspace);
    } else if (args.cache_type == ElemType::kF16) {
      launch_kernel(decode_kernel<__nv_bfloat16, __half, D>, grid, kThreads, 0, stream, args, groups, workspace);
    } else {
      launch_kernel(decode_kernel<__nv_bfloat16, __nv_bfloat16, D>, grid, kThreads, 0, stream, args, groups, workspace);
    }
    launched = true;
  });
  if (!launched) return cudaErrorInvalidValue;
  if (num_splits > 1) return launch_attention_combine(args, num_splits, workspace, stream);
  return cudaGetLastError();
}

}  // namespace bw::cuda
