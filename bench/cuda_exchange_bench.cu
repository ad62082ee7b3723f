// What one op boundary of the fused decoder stack costs on this GPU, whatever the kernel
// around it does: every CTA (one per SM) publishes its rows of an activation row, waits
// for all the others, and reloads the whole row. The batch-1 decode of a dense model
// needs one such exchange per projection (QKV, o, gate/up, down) and one or two around
// the attention step, so their cost times the layers bounds the step from below
// (docs/PERF.md). Reported, in SM cycles and microseconds per exchange:
//   1. latency floors: an L2 hit (a pointer chase) and a flag handed from one SM to another;
//   2. the exchange at 2 ... all SMs, two ways: a release counter polled by one thread, then
//      a reload of the row (the stack's way), and LL words (each 32-bit word a bf16 value
//      with the exchange's flag in the other half: readers poll the data itself);
//   3. the exchange on all SMs with the pollers spread over copies of the counter or of the
//      LL words (CTA b polls copy b % copies; every writer updates every copy), and LL
//      polls that back off: whether the exchange waits on contention for the polled lines;
//   4. the exchange on every SM while a weight stream runs on the same SMs: 24 KiB bulk
//      copies into shared memory (at most N in flight per SM, as the stack's producer
//      issues them) with the counter, the LL words and the counter without its release
//      fence (wrong in general; it tells how much of the cost is the fence, which waits
//      for the SM's copies in flight), or L2 prefetches of 24 KiB at a fixed interval (no
//      data into the SM).
// Never pass/fail on time. Needs compute capability 9.0 (bulk copies).
//
//   build/bench/bw_cuda_exchange_bench
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

constexpr int kWorkers = 256;                 // the consumer warps of the stack
constexpr int kThreads = kWorkers + 32;       // + a streaming warp
constexpr int kRow = 1536;                    // hidden size of the 1.5B shape
constexpr int kSlots = 8, kPage = 24 * 1024;  // the stack's ring for that shape
constexpr int kRounds = 2000;

// kCounterNoFence: the counter form with a relaxed arrival (no release fence): wrong in
// general (the reload may see old values), timed only to tell the fence's share.
enum Form : int { kCounter, kLlWords, kCounterNoFence };
constexpr int kMaxReplicas = 32;    // copies of the LL words / counters (spread the pollers)
constexpr int kCounterStride = 32;  // ints between two counter replicas: one per 128-byte line
enum Stream : int { kNoStream, kCopies, kPrefetch };

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define BW_EXCHANGE_BENCH_SM90 1
#endif

__global__ void chase_kernel(const uint32_t* next, int steps, long long* out) {
  uint32_t i = 0;
  const long long t0 = clock64();
  for (int s = 0; s < steps; ++s)
    asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(i) : "l"(next + i) : "memory");
  out[0] = (clock64() - t0) / steps;
  out[1] = i;  // keeps the chase
}

// Two CTAs (on two SMs) pass a counter back and forth; half a round trip is one handoff.
__global__ void handoff_kernel(int* flag, int rounds, long long* out) {
  if (threadIdx.x != 0) return;
  const bool first = blockIdx.x == 0;
  const long long t0 = clock64();
  for (int r = 0; r < rounds; ++r) {
    const int wait_for = first ? 2 * r + 2 : 2 * r + 1;
    if (first) asm volatile("st.relaxed.gpu.global.s32 [%0], %1;" ::"l"(flag), "r"(2 * r + 1) : "memory");
    int v = 0;
    do {
      asm volatile("ld.relaxed.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory");
    } while (v != wait_for);
    if (!first) asm volatile("st.relaxed.gpu.global.s32 [%0], %1;" ::"l"(flag), "r"(2 * r + 2) : "memory");
  }
  if (first) out[0] = (clock64() - t0) / rounds / 2;
}

struct ExchangeArgs {
  __nv_bfloat16* row;  // [2][kRow]: the counter form's row, by round parity
  uint32_t* words;     // [2][kMaxReplicas][kRow]: the LL form's words, by round parity and copy
  int* counter;        // [kMaxReplicas][kCounterStride]: the counter's copies
  int form;
  int replicas;    // LL: copies of the words, counter: copies of the counter; CTA b polls copy b % replicas
  int backoff_ns;  // LL: sleep between two polls that failed
  int stream;
  int in_flight;  // kCopies: copies in flight per SM at most
  int gap;        // kPrefetch: cycles between two prefetches of a page
  const char* weights;
  int64_t share;  // bytes of the weights each CTA streams (round and round)
  float* sink;
  long long* cycles;             // CTA 0's cycles over all rounds
  unsigned long long* streamed;  // bytes the copies brought in
};

#ifdef BW_EXCHANGE_BENCH_SM90
__device__ __forceinline__ void bar_workers() { asm volatile("bar.sync 1, 256;\n" ::: "memory"); }
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The streaming thread: bulk copies into an 8-slot ring (each slot reused once its copy
// landed, at most a.in_flight outstanding) or paced L2 prefetches, until the workers finish.
__device__ void stream_weights(const ExchangeArgs& a, unsigned char* ring, uint64_t* full, volatile int* done) {
  const char* base = a.weights + blockIdx.x * a.share;
  uint64_t policy = 0;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  if (a.stream == kPrefetch) {
    for (int64_t off = 0; !*done; off = off + kPage >= a.share ? 0 : off + kPage) {
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(base + off), "r"(kPage) : "memory");
      for (const long long t = clock64(); clock64() - t < a.gap;) {
      }
    }
    return;
  }
  auto wait_landed = [&](int64_t copy) {  // copy number `copy` (slot copy % kSlots) has landed
    const uint32_t bar = smem_u32(&full[copy % kSlots]), parity = static_cast<uint32_t>((copy / kSlots) & 1);
    uint32_t ok = 0;
    while (!ok)
      asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                   : "=r"(ok)
                   : "r"(bar), "r"(parity)
                   : "memory");
  };
  int64_t n = 0, off = 0;
  for (; !*done; ++n, off = off + kPage >= a.share ? 0 : off + kPage) {
    if (n >= a.in_flight) wait_landed(n - a.in_flight);
    const uint32_t bar = smem_u32(&full[n % kSlots]);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(kPage) : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], "
        "%4;\n" ::"r"(smem_u32(ring + (n % kSlots) * kPage)),
        "l"(base + off), "r"(kPage), "r"(bar), "l"(policy)
        : "memory");
  }
  for (int64_t m = n > a.in_flight ? n - a.in_flight : 0; m < n; ++m)
    wait_landed(m);  // every copy lands before the CTA exits
  atomicAdd(a.streamed, static_cast<unsigned long long>(n) * kPage);
}

// One exchange: this CTA's rows [r0, r1) of round r's row out, the whole row into x.
__device__ void exchange(const ExchangeArgs& a, int r, int r0, int r1, uint32_t* x) {
  const int t = static_cast<int>(threadIdx.x), G = static_cast<int>(gridDim.x);
  auto value = [&](int i) { return __float2bfloat16_rn(1e-3f * static_cast<float>(r + i)); };
  if (a.form == kCounter || a.form == kCounterNoFence) {
    __nv_bfloat16* row = a.row + (r & 1) * kRow;
    for (int i = r0 + t; i < r1; i += kWorkers)
      row[i] = value(i);
    bar_workers();
    if (t == 0) {
      if (a.form == kCounterNoFence) {
        asm volatile("red.relaxed.gpu.global.add.s32 [%0], 1;\n" ::"l"(a.counter) : "memory");
      } else if (a.replicas == 1) {
        asm volatile("red.release.gpu.global.add.s32 [%0], 1;\n" ::"l"(a.counter) : "memory");
      } else {  // one fence, then a relaxed arrival on every copy
        asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
        for (int k = 0; k < a.replicas; ++k)
          asm volatile("red.relaxed.gpu.global.add.s32 [%0], 1;\n" ::"l"(a.counter + k * kCounterStride) : "memory");
      }
      const int* mine = a.counter + (static_cast<int>(blockIdx.x) % a.replicas) * kCounterStride;
      int v = 0;
      do {
        asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(mine) : "memory");
      } while (v < (r + 1) * G);
    }
    bar_workers();
    for (int i = t; i < kRow / 8; i += kWorkers)
      reinterpret_cast<uint4*>(x)[i] = __ldcg(reinterpret_cast<const uint4*>(row) + i);
  } else {
    // Flags r + 1 (never 0: the words start zeroed), two buffers by round parity: a CTA
    // writes round r + 2 only after every CTA has read round r + 1, hence round r.
    const uint32_t flag = static_cast<uint32_t>(r + 1) & 0xffffu;
    uint32_t* words = a.words + (r & 1) * kMaxReplicas * kRow;
    for (int i = r0 + t; i < r1; i += kWorkers) {
      const __nv_bfloat16 b = value(i);
      const uint32_t w = (flag << 16) | *reinterpret_cast<const uint16_t*>(&b);
      for (int k = 0; k < a.replicas; ++k)
        asm volatile("st.relaxed.gpu.global.b32 [%0], %1;\n" ::"l"(words + k * kRow + i), "r"(w) : "memory");
    }
    const uint32_t* mine = words + (static_cast<int>(blockIdx.x) % a.replicas) * kRow;
    for (int i = t; i < kRow / 4; i += kWorkers) {
      uint4 v;
      for (;;) {
        asm volatile("ld.relaxed.gpu.global.v4.b32 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                     : "l"(mine + 4 * i)
                     : "memory");
        if ((v.x >> 16) == flag && (v.y >> 16) == flag && (v.z >> 16) == flag && (v.w >> 16) == flag) break;
        if (a.backoff_ns > 0) __nanosleep(a.backoff_ns);
      }
      x[2 * i] = (v.x & 0xffffu) | (v.y << 16);
      x[2 * i + 1] = (v.z & 0xffffu) | (v.w << 16);
    }
  }
  bar_workers();
}
#endif

__global__ void __launch_bounds__(kThreads, 1) exchange_kernel(ExchangeArgs a) {
#ifdef BW_EXCHANGE_BENCH_SM90
  extern __shared__ __align__(128) unsigned char ring[];
  __shared__ __align__(8) uint64_t full[kSlots];
  __shared__ __align__(16) uint32_t x[kRow / 2];
  __shared__ volatile int done;
  const int t = static_cast<int>(threadIdx.x), G = static_cast<int>(gridDim.x);
  if (t == 0) {
    done = 0;
    for (auto& bar : full)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_u32(&bar)));
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  if (t >= kWorkers) {
    if (t == kWorkers && a.stream != kNoStream) stream_weights(a, ring, full, &done);
    return;
  }
  const int r0 = static_cast<int>(blockIdx.x) * kRow / G, r1 = (static_cast<int>(blockIdx.x) + 1) * kRow / G;
  float acc = 0.0f;
  const long long t0 = clock64();
  for (int r = 0; r < kRounds; ++r) {
    exchange(a, r, r0, r1, x);
    acc += __uint_as_float(x[(r * 7) % (kRow / 2)] << 16);  // the stack's next op would read x here
    bar_workers();
  }
  if (t == 0) {
    if (blockIdx.x == 0) *a.cycles = clock64() - t0;
    done = 1;
  }
  if (acc == 12345.0f) *a.sink = acc;
#else
  (void)a;
#endif
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(err));
    std::exit(1);
  }
}

struct Result {
  double us = 0, cycles = 0, tb_per_s = 0;
};

// The best of three runs of kRounds exchanges.
Result run_exchange(ExchangeArgs a, int ctas, unsigned long long* streamed) {
  check(cudaFuncSetAttribute(exchange_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSlots * kPage),
        "cudaFuncSetAttribute");
  Result best;
  best.us = 1e30;
  for (int it = 0; it < 3; ++it) {
    check(cudaMemset(a.counter, 0, kMaxReplicas * kCounterStride * sizeof(int)), "cudaMemset");
    check(cudaMemset(a.words, 0, 2 * kMaxReplicas * kRow * sizeof(uint32_t)), "cudaMemset");
    check(cudaMemset(streamed, 0, sizeof(*streamed)), "cudaMemset");
    cudaEvent_t e0, e1;
    check(cudaEventCreate(&e0), "cudaEventCreate");
    check(cudaEventCreate(&e1), "cudaEventCreate");
    check(cudaEventRecord(e0), "cudaEventRecord");
    exchange_kernel<<<ctas, kThreads, kSlots * kPage>>>(a);
    check(cudaGetLastError(), "exchange_kernel");
    check(cudaEventRecord(e1), "cudaEventRecord");
    check(cudaEventSynchronize(e1), "exchange_kernel");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
    if (ms * 1e3 / kRounds < best.us) {
      long long cycles = 0;
      unsigned long long bytes = 0;
      check(cudaMemcpy(&cycles, a.cycles, sizeof(cycles), cudaMemcpyDeviceToHost), "cudaMemcpy");
      check(cudaMemcpy(&bytes, streamed, sizeof(bytes), cudaMemcpyDeviceToHost), "cudaMemcpy");
      best.us = ms * 1e3 / kRounds;
      best.cycles = static_cast<double>(cycles) / kRounds;
      best.tb_per_s = static_cast<double>(bytes) / (ms * 1e-3) / 1e12;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
  }
  return best;
}

}  // namespace

int main() {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  if (prop.major < 9) {
    std::printf("bw_cuda_exchange_bench needs compute capability 9.0 or later (bulk copies); this is %d.%d\n",
                prop.major, prop.minor);
    return 0;
  }
  const int sms = prop.multiProcessorCount;
  std::printf("%s, %d SMs\n", prop.name, sms);

  // 1. Latency floors.
  const int n = 1 << 20;  // 4 MiB of indices: L2-resident (ld.cg skips L1)
  std::vector<uint32_t> next(n);
  for (int i = 0; i < n; ++i)
    next[i] = static_cast<uint32_t>((static_cast<uint64_t>(i) * 2654435761u + 12345u) % n);
  uint32_t* d_next = nullptr;
  long long* out = nullptr;
  int* flag = nullptr;
  check(cudaMalloc(&d_next, n * sizeof(uint32_t)), "cudaMalloc");
  check(cudaMalloc(&out, 2 * sizeof(long long)), "cudaMalloc");
  check(cudaMalloc(&flag, sizeof(int)), "cudaMalloc");
  check(cudaMemcpy(d_next, next.data(), n * sizeof(uint32_t), cudaMemcpyHostToDevice), "cudaMemcpy");
  long long host[2] = {};
  for (int warm = 0; warm < 2; ++warm)
    chase_kernel<<<1, 1>>>(d_next, 20000, out);
  check(cudaMemcpy(host, out, sizeof(host), cudaMemcpyDeviceToHost), "chase_kernel");
  std::printf("L2 hit (pointer chase): %lld cycles\n", host[0]);
  check(cudaMemset(flag, 0, sizeof(int)), "cudaMemset");
  handoff_kernel<<<2, 32>>>(flag, 10000, out);
  check(cudaMemcpy(host, out, sizeof(long long), cudaMemcpyDeviceToHost), "handoff_kernel");
  std::printf("a flag from one SM to another: %lld cycles\n", host[0]);

  // 2 to 4. Exchanges.
  ExchangeArgs a{};
  const int64_t weight_bytes = int64_t{3} << 30;
  char* weights = nullptr;
  unsigned long long* streamed = nullptr;
  check(cudaMalloc(&a.row, 2 * kRow * sizeof(__nv_bfloat16)), "cudaMalloc");
  check(cudaMalloc(&a.words, 2 * kMaxReplicas * kRow * sizeof(uint32_t)), "cudaMalloc");
  check(cudaMalloc(&a.counter, kMaxReplicas * kCounterStride * sizeof(int)), "cudaMalloc");
  check(cudaMalloc(&a.sink, sizeof(float)), "cudaMalloc");
  check(cudaMalloc(&a.cycles, sizeof(long long)), "cudaMalloc");
  check(cudaMalloc(&streamed, sizeof(*streamed)), "cudaMalloc");
  check(cudaMalloc(&weights, weight_bytes), "cudaMalloc");
  check(cudaMemset(weights, 1, weight_bytes), "cudaMemset");
  a.replicas = 1;
  a.streamed = streamed;
  a.weights = weights;
  a.share = weight_bytes / sms / kPage * kPage;
  const char* form_name[] = {"counter + reload", "LL words", "counter, no release fence"};  // by Form

  std::printf("\nexchange of a %d-value bf16 row, HBM idle (us per exchange / cycles):\n", kRow);
  std::printf("%8s %22s %22s\n", "CTAs", form_name[kCounter], form_name[kLlWords]);
  for (int ctas : {2, 8, sms / 4, sms / 2, sms}) {
    std::printf("%8d", ctas);
    for (int form : {kCounter, kLlWords}) {
      a.form = form, a.stream = kNoStream;
      const Result r = run_exchange(a, ctas, streamed);
      std::printf(" %13.2f / %6.0f", r.us, r.cycles);
    }
    std::printf("\n");
  }

  std::printf("\nexchange on all %d SMs, HBM idle, pollers spread over copies (us per exchange / cycles):\n", sms);
  std::printf("%8s %22s %22s %22s\n", "copies", form_name[kCounter], form_name[kLlWords], "LL words, 200 ns back-off");
  for (int replicas : {1, 2, 4, 8, 16, 32}) {
    std::printf("%8d", replicas);
    for (int variant = 0; variant < 3; ++variant) {
      a.form = variant == 0 ? kCounter : kLlWords, a.stream = kNoStream;
      a.replicas = replicas, a.backoff_ns = variant == 2 ? 200 : 0;
      const Result r = run_exchange(a, sms, streamed);
      std::printf(" %13.2f / %6.0f", r.us, r.cycles);
    }
    std::printf("\n");
  }
  a.replicas = 1, a.backoff_ns = 0;

  std::printf("\nexchange on all %d SMs under a weight stream on the same SMs:\n", sms);
  std::printf("%-44s %-26s %10s %10s %12s\n", "stream", "form", "us", "cycles", "copies TB/s");
  for (int in_flight : {0, 1, 2, 4, 8}) {
    for (int form : {kCounter, kLlWords, kCounterNoFence}) {
      a.form = form;
      a.stream = in_flight == 0 ? kNoStream : kCopies;
      a.in_flight = in_flight;
      const Result r = run_exchange(a, sms, streamed);
      char name[64];
      std::snprintf(name, sizeof(name), "24 KiB copies into shared memory, %d in flight", in_flight);
      std::printf("%-44s %-26s %10.2f %10.0f %12.2f\n", in_flight == 0 ? "none" : name, form_name[form], r.us, r.cycles,
                  r.tb_per_s);
    }
  }
  a.form = kCounter;
  // 1,500 cycles a page is about an SM's share of HBM at ~2 GHz; 700 asks for twice that.
  for (int gap : {3000, 1500, 700}) {
    a.stream = kPrefetch, a.gap = gap;
    const Result r = run_exchange(a, sms, streamed);
    char name[64];
    std::snprintf(name, sizeof(name), "24 KiB L2 prefetches, one per %d cycles", gap);
    std::printf("%-44s %10.2f %10.0f %12s\n", name, r.us, r.cycles, "-");
  }
  cudaFree(weights);
  cudaFree(streamed);
  cudaFree(a.row);
  cudaFree(a.words);
  cudaFree(a.counter);
  cudaFree(a.sink);
  cudaFree(a.cycles);
  cudaFree(d_next);
  cudaFree(out);
  cudaFree(flag);
  return 0;
}
