// CUDA prefill attention benchmark: CudaBackend::paged_attention (bf16 activations and
// cache, block size 16, D = 128) on the shapes scripts/cuda_peer.py times PyTorch's SDPA
// on (one sequence of 2,048 tokens, empty prior context, Hq/Hkv 12/2 and 28/4), plus a
// chunked case (512 new queries after 1,536 cached). Never pass/fail on time.
//
//   build/bench/bw_cuda_attention_bench [device] [long]
//
// `long` times long prompts instead: a chunk of 2,048 queries after 14,336 cached tokens
// (the last full chunk of a 16k prompt under --max-batched-tokens 2048) and one sequence of
// 8,192 tokens, on both head shapes. BW_BENCH_CASE=N runs only the N-th case (from 0), e.g.
// to profile one kernel launch with Nsight Compute; BW_BENCH_BLOCK_SIZE=N sets the cache
// block size (default 16), BW_BENCH_CONSECUTIVE=1 numbers the blocks in order (default:
// shuffled).
//
// Per case it prints the median of 20 timed runs after 3 warm-ups of
//   - kernel: the prefill launcher on a stream of the bench's own, timed with cudaEvents
//     (kernel time only), for each variant (64 or 128 query rows per CTA, wgmma on Hopper:
//     with the backend's key pieces where its plan splits, "in N key pieces", the combine
//     kernel included; BW_CUDA_PREFILL_SPLITS=N forces N);
//   - backend: CudaBackend::paged_attention between two synchronize() calls, host-timed
//     (includes the checks, the launch and the sync round trip; the variant it picks);
//   - general: the same call with the max_query_len hint 0, which keeps the general
//     (CUDA-core) kernel, for comparison;
// with TFLOP/s from FLOPs = 4 * (query, key) pairs * Hq * D (4 * T*T/2 * Hq * D causal).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include <cuda_runtime_api.h>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_env.h"
#include "backend/cuda/cuda_kernels.h"

namespace {

using bw::AttentionMetadata;
using bw::AttentionParams;
using bw::CudaBackend;
using bw::DeviceBuffer;
using bw::DType;
using bw::KvCacheLayer;
using bw::TensorView;

constexpr int kWarmups = 3;
constexpr int kRuns = 20;
// The cache's block size: 16 (vLLM's default and the engine's) unless BW_BENCH_BLOCK_SIZE
// names another.
int cache_block_size() {
  static const int bs = [] {
    const int v = bw::cuda::env_int("BW_BENCH_BLOCK_SIZE", 16);
    return v > 0 ? v : 16;
  }();
  return bs;
}
constexpr int kHeadDim = 128;

uint16_t to_bf16(float f) {
  uint32_t u = 0;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Case {
  int hq, hkv, q_len, ctx;
};

// A device copy of `host` (bytes), kept alive in `keep`.
void* upload(CudaBackend& gpu, const void* host, size_t bytes, std::vector<DeviceBuffer>* keep) {
  auto buf = gpu.allocate(bytes);
  if (!buf.ok()) {
    std::fprintf(stderr, "allocate: %s\n", buf.status().to_string().c_str());
    std::exit(1);
  }
  const bw::Status st = gpu.copy_to_device(buf->data(), host, bytes);
  if (!st.ok()) {
    std::fprintf(stderr, "copy: %s\n", st.to_string().c_str());
    std::exit(1);
  }
  void* p = buf->data();
  keep->push_back(std::move(*buf));
  return p;
}

std::vector<uint16_t> random_bf16(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<uint16_t> v(n);
  for (auto& x : v)
    x = to_bf16(dist(rng));
  return v;
}

template <typename Fn>
double time_host(CudaBackend& gpu, Fn&& fn) {
  std::vector<double> us;
  for (int i = 0; i < kWarmups + kRuns; ++i) {
    if (!gpu.synchronize().ok()) std::exit(1);
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    if (!gpu.synchronize().ok()) std::exit(1);
    const auto t1 = std::chrono::steady_clock::now();
    if (i >= kWarmups) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  return median(us);
}

void run_case(CudaBackend& gpu, const Case& c) {
  std::vector<DeviceBuffer> keep;
  const int block_size = cache_block_size();
  const int kv_len = c.ctx + c.q_len;
  const int64_t width = static_cast<int64_t>(c.hq + 2 * c.hkv) * kHeadDim;
  const int num_blocks = (kv_len + block_size - 1) / block_size;
  const auto qkv_h = random_bf16(static_cast<size_t>(c.q_len * width), 1);
  const size_t cache_elems = static_cast<size_t>(num_blocks) * block_size * c.hkv * kHeadDim;
  const auto k_h = random_bf16(cache_elems, 2);
  const auto v_h = random_bf16(cache_elems, 3);
  std::vector<int32_t> table(static_cast<size_t>(num_blocks));
  std::iota(table.begin(), table.end(), 0);
  // Shuffled (every block apart from its neighbours, the copies' worst case) unless
  // BW_BENCH_CONSECUTIVE=1 (as a fresh pool hands them out).
  static const bool consecutive = bw::cuda::env_int("BW_BENCH_CONSECUTIVE", 0) == 1;
  if (!consecutive) std::shuffle(table.begin(), table.end(), std::mt19937(4));
  std::vector<int32_t> qs = {0, c.q_len}, kv = {kv_len};

  const TensorView qkv = TensorView(upload(gpu, qkv_h.data(), qkv_h.size() * 2, &keep), DType::kBF16, {c.q_len, width});
  const bw::Shape cs{num_blocks, block_size, c.hkv, kHeadDim};
  KvCacheLayer cache{TensorView(upload(gpu, k_h.data(), k_h.size() * 2, &keep), DType::kBF16, cs),
                     TensorView(upload(gpu, v_h.data(), v_h.size() * 2, &keep), DType::kBF16, cs)};
  std::vector<uint16_t> zeros(static_cast<size_t>(c.q_len) * c.hq * kHeadDim);
  TensorView out(upload(gpu, zeros.data(), zeros.size() * 2, &keep), DType::kBF16,
                 {c.q_len, static_cast<int64_t>(c.hq) * kHeadDim});
  AttentionMetadata meta;
  meta.query_start = TensorView(upload(gpu, qs.data(), 8, &keep), DType::kI32, {2});
  meta.kv_lens = TensorView(upload(gpu, kv.data(), 4, &keep), DType::kI32, {1});
  meta.block_tables = TensorView(upload(gpu, table.data(), table.size() * 4, &keep), DType::kI32, {1, num_blocks});
  meta.num_seqs = 1;
  meta.max_query_len = c.q_len;
  meta.max_kv_len = kv_len;
  const AttentionParams p{c.hq, c.hkv, kHeadDim, 1.0f / std::sqrt(static_cast<float>(kHeadDim))};

  // Kernel time through the launcher, on the bench's own stream.
  bw::cuda::AttentionArgs a;
  a.out = out.data;
  a.qkv = qkv.data;
  a.act_type = bw::cuda::ElemType::kBF16;
  a.num_tokens = c.q_len;
  a.num_heads = c.hq;
  a.num_kv_heads = c.hkv;
  a.head_dim = kHeadDim;
  a.scale = p.scale;
  a.k_cache = cache.k.data;
  a.v_cache = cache.v.data;
  a.cache_type = bw::cuda::ElemType::kBF16;
  a.num_blocks = num_blocks;
  a.block_size = block_size;
  a.query_start = meta.query_start.as<const int32_t>();
  a.kv_lens = meta.kv_lens.as<const int32_t>();
  a.block_tables = meta.block_tables.as<const int32_t>();
  a.num_seqs = 1;
  a.table_width = num_blocks;
  a.max_kv_len = kv_len;
  cudaStream_t stream = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess || cudaEventCreate(&e0) != cudaSuccess ||
      cudaEventCreate(&e1) != cudaSuccess) {
    std::fprintf(stderr, "cuda stream/event creation failed\n");
    std::exit(1);
  }
  // Kernel time of each variant.
  constexpr int kVariants[] = {bw::cuda::kPrefillVariant64Rows, bw::cuda::kPrefillVariant128Rows,
                               bw::cuda::kPrefillVariantWgmma};
  constexpr const char* kNames[] = {"64 rows", "128 rows", "wgmma"};
  const bool wgmma = bw::cuda::prefill_attention_wgmma_available();
  const int kNumVariants = wgmma ? 3 : 2;
  // The wgmma kernel cuts each query tile's keys into the pieces the backend would
  // (BW_CUDA_PREFILL_SPLITS=N forces N, as in the backend).
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  const int forced_splits = bw::cuda::env_int("BW_CUDA_PREFILL_SPLITS", 0);
  const int splits = forced_splits > 0 ? forced_splits : bw::cuda::prefill_kv_splits(c.hq, 1, c.q_len, kv_len, sms);
  float* ws = nullptr;
  if (splits > 1 &&
      cudaMalloc(reinterpret_cast<void**>(&ws),
                 static_cast<size_t>(bw::cuda::attention_workspace_floats(a, splits)) * sizeof(float)) != cudaSuccess) {
    std::fprintf(stderr, "workspace allocation failed\n");
    std::exit(1);
  }
  double kernel_us[3] = {};
  for (int v = 0; v < kNumVariants; ++v) {
    std::vector<double> us;
    const bool wgmma_variant = kVariants[v] == bw::cuda::kPrefillVariantWgmma;
    for (int i = 0; i < kWarmups + kRuns; ++i) {
      cudaEventRecord(e0, stream);
      const cudaError_t err =
          bw::cuda::launch_paged_attention_prefill(a, c.q_len, kVariants[v], stream, wgmma_variant ? splits : 1, ws);
      cudaEventRecord(e1, stream);
      if (err != cudaSuccess || cudaEventSynchronize(e1) != cudaSuccess) {
        std::fprintf(stderr, "launch failed: %s\n", cudaGetErrorString(err));
        std::exit(1);
      }
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      if (i >= kWarmups) us.push_back(ms * 1e3);
    }
    kernel_us[v] = median(us);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(stream);
  cudaFree(ws);

  const double backend_us = time_host(gpu, [&] {
    if (!gpu.paged_attention(out, qkv, p, meta, cache).ok()) std::exit(1);
  });
  AttentionMetadata general = meta;
  general.max_query_len = 0;
  const double general_us = time_host(gpu, [&] {
    if (!gpu.paged_attention(out, qkv, p, general, cache).ok()) std::exit(1);
  });

  double pairs = 0;
  for (int j = 0; j < c.q_len; ++j)
    pairs += c.ctx + j + 1;
  const double flops = 4.0 * pairs * c.hq * kHeadDim;
  auto tflops = [&](double us) { return flops / (us * 1e-6) / 1e12; };
  std::printf("prefill attention T=%d ctx=%d hq=%d hkv=%d d=%d bs=%d: kernel", c.q_len, c.ctx, c.hq, c.hkv, kHeadDim,
              block_size);
  for (int v = 0; v < kNumVariants; ++v) {
    std::printf("%s %s %.1f us (%.0f TFLOP/s)", v == 0 ? "" : ",", kNames[v], kernel_us[v], tflops(kernel_us[v]));
    if (kVariants[v] == bw::cuda::kPrefillVariantWgmma && splits > 1) std::printf(" in %d key pieces", splits);
  }
  const int picked = bw::cuda::prefill_attention_variant(a, wgmma);
  std::printf("; backend %.1f us (%.0f TFLOP/s, %s); general kernel %.1f us (%.1f TFLOP/s)\n", backend_us,
              tflops(backend_us), picked >= 1 && picked <= kNumVariants ? kNames[picked - 1] : "?", general_us,
              tflops(general_us));
}

}  // namespace

int main(int argc, char** argv) {
  const int device = argc > 1 ? std::atoi(argv[1]) : 0;
  auto gpu = CudaBackend::create({device, DType::kBF16});
  if (!gpu.ok()) {
    std::fprintf(stderr, "no CUDA backend: %s\n", gpu.status().to_string().c_str());
    return 1;
  }
  std::printf("device: %s\n", (*gpu)->device_name().c_str());
  const bool long_prompts = argc > 2 && std::strcmp(argv[2], "long") == 0;
  const std::vector<Case> cases =
      long_prompts ? std::vector<Case>{{12, 2, 2048, 14336}, {28, 4, 2048, 14336}, {12, 2, 8192, 0}, {28, 4, 8192, 0}}
                   : std::vector<Case>{{12, 2, 2048, 0}, {28, 4, 2048, 0}, {12, 2, 512, 1536}, {28, 4, 512, 1536}};
  const int only_case = bw::cuda::env_int("BW_BENCH_CASE", -1);
  for (size_t i = 0; i < cases.size(); ++i)
    if (only_case < 0 || only_case == static_cast<int>(i)) run_case(**gpu, cases[i]);
  return 0;
}
