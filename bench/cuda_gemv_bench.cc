// CUDA GEMV benchmark: kernel time and weight bandwidth of launch_gemv (bf16 weights and
// activations) on the decode shapes of the 1.5B and 7B models, for M = 1, 2, 4, 8, 16,
// next to a device-to-device cudaMemcpy (the same run's bandwidth ceiling). Never
// pass/fail on time.
//
//   build/bench/bw_cuda_gemv_bench [iterations]
//
// Each shape rotates over enough copies of its weights (>= 2, >= 256 MiB in all) that the
// 50 MB L2 does not hold the next launch's weights. Two times per point: the median of
// single launches bracketed by cudaEvents ("single"), and the mean over back-to-back
// launches ("stream", what a CUDA-graph decode step sees, launch gaps included).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/cuda/cuda_kernels.h"

namespace {

using bw::cuda::ElemType;

bool ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
  return false;
}

struct Shape {
  const char* name;
  int64_t n, k;
  bool bias, f32_out;
  int per_step;  // how many a decode step runs (layers; 1 for the LM head)
};

struct Timing {
  float single_us = 0;
  float stream_us = 0;
};

// Times launch_gemv for one shape and M; copies: the weight copies to rotate over.
Timing time_gemv(const Shape& s, int64_t m, const std::vector<void*>& w, void* x, void* bias, void* out, int iters,
                 cudaStream_t stream, cudaEvent_t e0, cudaEvent_t e1) {
  const auto copies = w.size();
  auto launch = [&](size_t i) {
    return bw::cuda::launch_gemv(out, s.f32_out ? ElemType::kF32 : ElemType::kBF16, x, ElemType::kBF16, w[i % copies],
                                 ElemType::kBF16, s.bias ? bias : nullptr, ElemType::kBF16, m, s.n, s.k, false, stream);
  };
  Timing t;
  for (size_t i = 0; i < 2 * copies + 3; ++i)
    if (!ok(launch(i), "launch_gemv")) return t;
  std::vector<float> ms(static_cast<size_t>(iters));
  for (int i = 0; i < iters; ++i) {
    cudaEventRecord(e0, stream);
    launch(static_cast<size_t>(i));
    cudaEventRecord(e1, stream);
    cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms[static_cast<size_t>(i)], e0, e1);
  }
  std::sort(ms.begin(), ms.end());
  t.single_us = ms[ms.size() / 2] * 1000.0f;
  cudaEventRecord(e0, stream);
  for (int i = 0; i < iters; ++i)
    launch(static_cast<size_t>(i));
  cudaEventRecord(e1, stream);
  cudaEventSynchronize(e1);
  float total = 0;
  cudaEventElapsedTime(&total, e0, e1);
  t.stream_us = total * 1000.0f / static_cast<float>(iters);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::max(5, std::atoi(argv[1])) : 50;
  cudaDeviceProp prop{};
  if (!ok(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties")) return 1;
  std::printf("device: %s, %d SMs, L2 %d MiB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  cudaStream_t stream = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  if (!ok(cudaStreamCreate(&stream), "stream") || !ok(cudaEventCreate(&e0), "event") ||
      !ok(cudaEventCreate(&e1), "event")) {
    return 1;
  }

  // Ceiling: a 2 GiB device-to-device copy (read + write bytes / time).
  {
    const size_t bytes = size_t{2} << 30;
    void* a = nullptr;
    void* b = nullptr;
    if (!ok(cudaMalloc(&a, bytes), "cudaMalloc") || !ok(cudaMalloc(&b, bytes), "cudaMalloc")) return 1;
    cudaMemsetAsync(a, 1, bytes, stream);
    std::vector<float> ms(5);
    for (size_t i = 0; i < 6; ++i) {
      cudaEventRecord(e0, stream);
      cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream);
      cudaEventRecord(e1, stream);
      cudaEventSynchronize(e1);
      if (i > 0) cudaEventElapsedTime(&ms[i - 1], e0, e1);
    }
    std::sort(ms.begin(), ms.end());
    std::printf("D2D cudaMemcpy 2 GiB: %.3f ms, %.0f GB/s (read + write)\n", ms[2], 2.0 * bytes / (ms[2] * 1e6));
    cudaFree(a);
    cudaFree(b);
  }

  const Shape shapes[] = {
      {"1.5B qkv+bias", 2048, 1536, true, false, 28},
      {"1.5B o", 1536, 1536, false, false, 28},
      {"1.5B gate_up", 17920, 1536, false, false, 28},
      {"1.5B down", 1536, 8960, false, false, 28},
      {"1.5B lm_head f32", 151936, 1536, false, true, 1},
      {"7B qkv+bias", 4608, 3584, true, false, 28},
      {"7B o", 3584, 3584, false, false, 28},
      {"7B gate_up", 37888, 3584, false, false, 28},
      {"7B down", 3584, 18944, false, false, 28},
      {"7B lm_head f32", 152064, 3584, false, true, 1},
  };
  const int64_t ms_list[] = {1, 2, 4, 8, 16};
  std::printf("%-18s %7s %6s %3s %10s %9s %10s %9s\n", "shape", "N", "K", "M", "single_us", "GB/s", "stream_us",
              "GB/s");
  double step_bytes[2] = {0, 0}, step_us[2] = {0, 0};
  for (const Shape& s : shapes) {
    const size_t wbytes = static_cast<size_t>(s.n * s.k) * 2;
    const size_t copies = std::max<size_t>(2, (size_t{256} << 20) / wbytes + 1);
    std::vector<void*> w(copies, nullptr);
    void* x = nullptr;
    void* bias = nullptr;
    void* out = nullptr;
    bool alloc = true;
    for (void*& p : w) {
      alloc = alloc && ok(cudaMalloc(&p, wbytes), "cudaMalloc w");
      if (alloc) cudaMemsetAsync(p, 0x3c, wbytes, stream);  // bf16 0x3c3c, about 0.0115
    }
    alloc = alloc && ok(cudaMalloc(&x, static_cast<size_t>(16 * s.k) * 2), "cudaMalloc x") &&
            ok(cudaMalloc(&bias, static_cast<size_t>(s.n) * 2), "cudaMalloc bias") &&
            ok(cudaMalloc(&out, static_cast<size_t>(16 * s.n) * 4), "cudaMalloc out");
    if (!alloc) return 1;
    cudaMemsetAsync(x, 0x3c, static_cast<size_t>(16 * s.k) * 2, stream);
    cudaMemsetAsync(bias, 0, static_cast<size_t>(s.n) * 2, stream);
    for (int64_t m : ms_list) {
      const Timing t = time_gemv(s, m, w, x, bias, out, iters, stream, e0, e1);
      std::printf("%-18s %7lld %6lld %3lld %10.2f %9.0f %10.2f %9.0f\n", s.name, static_cast<long long>(s.n),
                  static_cast<long long>(s.k), static_cast<long long>(m), t.single_us,
                  static_cast<double>(wbytes) / (t.single_us * 1e3), t.stream_us,
                  static_cast<double>(wbytes) / (t.stream_us * 1e3));
      if (m == 1) {
        const int model = s.name[0] == '7' ? 1 : 0;
        step_bytes[model] += static_cast<double>(wbytes) * s.per_step;
        step_us[model] += t.stream_us * s.per_step;
      }
    }
    for (void* p : w)
      cudaFree(p);
    cudaFree(x);
    cudaFree(bias);
    cudaFree(out);
  }
  for (int model = 0; model < 2; ++model) {
    std::printf("%s decode step (M=1, matmuls only, stream times): %.1f MB, %.1f us, %.0f GB/s\n",
                model == 0 ? "1.5B" : "7B", step_bytes[model] / 1e6, step_us[model],
                step_bytes[model] / (step_us[model] * 1e3));
  }
  if (!ok(cudaGetLastError(), "last error")) return 1;
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(stream);
  return 0;
}
