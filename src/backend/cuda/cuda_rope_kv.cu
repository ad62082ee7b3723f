// rope_write_kv: rotates q and k of each token in place (NeoX / HF rotate_half over the
// leading rotary_dim dims of every head) and writes the rotated k and the v to the
// token's paged KV cache slot. Angles as the CPU backend: angle = float(pos) * inv_freq
// (one f32 rounding), then cosf / sinf, and x1*c - x2*s without fused multiply-adds.
// One block per token; a thread takes one rotary pair index i (its cos/sin computed once)
// for a share of the heads, so a decode step's single block does few dependent steps.
#include "backend/cuda/cuda_common.cuh"

namespace bw::cuda {

namespace {

constexpr int kThreads = 256;

template <typename A, typename C>
__global__ void rope_write_kv_kernel(RopeKvArgs a) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t t = blockIdx.x;
  const int32_t pos = a.positions[t];
  const int32_t slot = a.slots[t];
  const int D = a.head_dim;
  const int half = a.rotary_dim / 2;
  const int64_t qkv_width = static_cast<int64_t>(a.num_heads + 2 * a.num_kv_heads) * D;
  A* row = static_cast<A*>(a.qkv) + t * qkv_width;
  if (pos < 0) {
    if (threadIdx.x == 0) report_error(a.error_flag, kBadPosition);
    return;
  }
  const bool write = slot >= 0 && slot < a.num_slots;
  if (threadIdx.x == 0 && (slot < -1 || slot >= a.num_slots)) report_error(a.error_flag, kBadSlot);

  // Rotate the q and k heads: thread (i, lane group) rotates pair i of heads g, g + groups, ...
  const int rot_heads = a.num_heads + a.num_kv_heads;
  const int groups = half >= kThreads ? 1 : kThreads / half;
  for (int p = threadIdx.x; p < groups * half; p += kThreads) {
    const int i = p % half, g = p / half;
    const float angle = __fmul_rn(static_cast<float>(pos), a.inv_freq[i]);
    const float c = cosf(angle), s = sinf(angle);
    for (int h = g; h < rot_heads; h += groups) {
      A* head = row + static_cast<int64_t>(h) * D;
      const float x1 = to_float(head[i]), x2 = to_float(head[i + half]);
      head[i] = from_float<A>(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
      head[i + half] = from_float<A>(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
    }
  }
  if (!write) return;
  __syncthreads();  // k is rotated by other threads
  const int64_t kv_width = static_cast<int64_t>(a.num_kv_heads) * D;
  const A* k = row + static_cast<int64_t>(a.num_heads) * D;
  const A* v = k + kv_width;
  C* kc = static_cast<C*>(a.k_cache) + static_cast<int64_t>(slot) * kv_width;
  C* vc = static_cast<C*>(a.v_cache) + static_cast<int64_t>(slot) * kv_width;
  for (int64_t i = threadIdx.x; i < kv_width; i += kThreads) {
    kc[i] = from_float<C>(to_float(k[i]));
    vc[i] = from_float<C>(to_float(v[i]));
  }
}

}  // namespace

cudaError_t launch_rope_write_kv(const RopeKvArgs& args, cudaStream_t stream) {
  if (args.num_tokens == 0) return cudaSuccess;
  dispatch_act(args.act_type, [&](auto atag) {
    using A = decltype(atag);
    dispatch_elem(args.cache_type, [&](auto ctag) {
      using C = decltype(ctag);
      launch_kernel(rope_write_kv_kernel<A, C>, static_cast<unsigned>(args.num_tokens), kThreads, 0, stream, args);
    });
  });
  return cudaGetLastError();
}

}  // namespace bw::cuda
