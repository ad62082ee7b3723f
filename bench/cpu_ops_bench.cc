// CPU backend op benchmark: achieved GFLOP/s and GB/s of matmul (GEMV and GEMM shapes of
// a 1.5B model, every weight dtype, weights hot in cache and streamed from DRAM) and of
// decode attention, next to a measured read-bandwidth peak. Never pass/fail on time.
//
// Built with the project (Release build recommended):
//   build/bench/bw_cpu_ops_bench [num_threads]
// Each number is the best of repeated runs (robust to other processes on the machine).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "backend/cpu/cpu_backend.h"
#include "common/thread_pool.h"

namespace {

using bw::DType;
using bw::Shape;
using bw::TensorView;

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Best wall time of fn over about `budget_s` seconds of repetitions.
template <typename Fn>
double best_time(Fn&& fn, double budget_s = 1.0) {
  fn();
  double best = 1e30;
  const double start = now_s();
  while (now_s() - start < budget_s) {
    const double t0 = now_s();
    fn();
    best = std::min(best, now_s() - t0);
  }
  return best;
}

std::vector<uint8_t> random_weights(int64_t n, DType dtype, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<uint8_t> bytes(static_cast<size_t>(n) * (dtype == DType::kF32 ? 4 : 2));
  for (int64_t i = 0; i < n; ++i) {
    const float f = dist(rng);
    if (dtype == DType::kF32) {
      reinterpret_cast<float*>(bytes.data())[i] = f;
    } else {
      reinterpret_cast<uint16_t*>(bytes.data())[i] = dtype == DType::kF16 ? bw::f32_to_f16(f) : bw::f32_to_bf16(f);
    }
  }
  return bytes;
}

// Read bandwidth of the machine: each thread sums its part of a 256 MiB array as 8
// interleaved streams (as a GEMV reads 8 weight rows; one stream alone gets far less).
double read_bandwidth_gbs(bw::ThreadPool& pool) {
  constexpr int64_t kStreams = 8, kChunk = int64_t{1} << 20, kLen = kChunk / kStreams;
  const int64_t n = int64_t{64} << 20;
  std::vector<float> a(static_cast<size_t>(n), 1.0f);
  std::vector<float> sink(static_cast<size_t>(n / kChunk));
  const double t = best_time([&] {
    pool.parallel_for(n / kChunk, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        const float* p = a.data() + c * kChunk;
#if defined(__AVX2__)
        __m256 s[kStreams];
        for (auto& v : s)
          v = _mm256_setzero_ps();
        for (int64_t i = 0; i < kLen; i += 8) {
          for (int64_t j = 0; j < kStreams; ++j)
            s[j] = _mm256_add_ps(s[j], _mm256_loadu_ps(p + j * kLen + i));
        }
        for (int64_t j = 1; j < kStreams; ++j)
          s[0] = _mm256_add_ps(s[0], s[j]);
        sink[static_cast<size_t>(c)] = _mm256_cvtss_f32(s[0]);
#else
        float s[kStreams] = {};
        for (int64_t i = 0; i < kLen; ++i) {
          for (int64_t j = 0; j < kStreams; ++j) s[j] += p[j * kLen + i];
        }
        sink[static_cast<size_t>(c)] = s[0] + s[kStreams - 1];
#endif
      }
    });
  });
  return static_cast<double>(n) * 4 / t / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  const int num_threads = argc > 1 ? std::atoi(argv[1]) : 0;
  bw::CpuBackend backend(num_threads);
  bw::ThreadPool pool(num_threads);
  std::mt19937 rng(1);
  std::printf("threads: %d, read bandwidth: %.1f GB/s\n", backend.num_threads(), read_bandwidth_gbs(pool));

  const int64_t k_dim = 1536, n_dim = 1536;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    // 32 copies of w (>= 144 MiB) stream from DRAM past any L3; 1 copy stays in cache.
    std::vector<std::vector<uint8_t>> copies;
    for (int i = 0; i < 32; ++i)
      copies.push_back(random_weights(n_dim * k_dim, dtype, rng));
    const double w_bytes = static_cast<double>(copies[0].size());
    for (int64_t m_dim : {1, 4, 16, 128}) {
      std::vector<float> x(static_cast<size_t>(m_dim * k_dim), 0.5f), out(static_cast<size_t>(m_dim * n_dim));
      const TensorView xv(x.data(), DType::kF32, Shape{m_dim, k_dim});
      const TensorView ov(out.data(), DType::kF32, Shape{m_dim, n_dim});
      for (int num_copies : {1, 32}) {
        int next = 0;
        const double t = best_time([&] {
          const TensorView wv(copies[static_cast<size_t>(next)].data(), dtype, Shape{n_dim, k_dim});
          next = (next + 1) % num_copies;
          (void)backend.matmul(ov, xv, wv, TensorView());
        });
        std::printf("matmul %-4s [%4ld x %ld] @ [%ld x %ld]^T, w %s: %8.3f ms %7.1f GFLOP/s %6.1f GB/s of w\n",
                    std::string(bw::dtype_name(dtype)).c_str(), static_cast<long>(m_dim), static_cast<long>(k_dim),
                    static_cast<long>(n_dim), static_cast<long>(k_dim), num_copies == 1 ? "in cache" : "from DRAM",
                    t * 1e3, 2.0 * m_dim * n_dim * k_dim / t / 1e9, w_bytes / t / 1e9);
      }
    }
  }

  // Decode attention: 4 sequences, one query token each, Hq 12, Hkv 2, D 128, bf16 cache.
  for (int kv_len : {1024, 4096}) {
    const int num_seqs = 4, hq = 12, hkv = 2, d = 128, block_size = 16;
    const int blocks_per_seq = kv_len / block_size;
    const int num_blocks = num_seqs * blocks_per_seq;
    std::vector<uint8_t> k = random_weights(int64_t{num_blocks} * block_size * hkv * d, DType::kBF16, rng);
    std::vector<uint8_t> v = random_weights(int64_t{num_blocks} * block_size * hkv * d, DType::kBF16, rng);
    std::vector<float> qkv(static_cast<size_t>(num_seqs) * (hq + 2 * hkv) * d, 0.1f);
    std::vector<float> out(static_cast<size_t>(num_seqs) * hq * d);
    std::vector<int32_t> positions, slots, query_start = {0}, kv_lens, tables;
    for (int s = 0; s < num_seqs; ++s) {
      positions.push_back(kv_len - 1);
      slots.push_back(-1);
      query_start.push_back(s + 1);
      kv_lens.push_back(kv_len);
      for (int b = 0; b < blocks_per_seq; ++b)
        tables.push_back(s * blocks_per_seq + b);
    }
    bw::AttentionMetadata meta;
    meta.positions = TensorView(positions.data(), DType::kI32, Shape{num_seqs});
    meta.slot_mapping = TensorView(slots.data(), DType::kI32, Shape{num_seqs});
    meta.query_start = TensorView(query_start.data(), DType::kI32, Shape{num_seqs + 1});
    meta.kv_lens = TensorView(kv_lens.data(), DType::kI32, Shape{num_seqs});
    meta.block_tables = TensorView(tables.data(), DType::kI32, Shape{num_seqs, blocks_per_seq});
    meta.num_seqs = num_seqs;
    const Shape cache_shape{num_blocks, block_size, hkv, d};
    const bw::KvCacheLayer cache{TensorView(k.data(), DType::kBF16, cache_shape),
                                 TensorView(v.data(), DType::kBF16, cache_shape)};
    const bw::AttentionParams attn{hq, hkv, d, 0.088f};
    const double t = best_time([&] {
      (void)backend.paged_attention(TensorView(out.data(), DType::kF32, Shape{num_seqs, hq * d}),
                                    TensorView(qkv.data(), DType::kF32, Shape{num_seqs, (hq + 2 * hkv) * d}), attn,
                                    meta, cache);
    });
    std::printf("decode attention, 4 seqs x kv %d, Hq 12 Hkv 2 D 128, bf16 cache: %8.3f ms %6.1f GB/s of KV\n", kv_len,
                t * 1e3, static_cast<double>(k.size() + v.size()) / t / 1e9);
  }
  return 0;
}
