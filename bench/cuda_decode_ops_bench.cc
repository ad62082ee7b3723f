// What each op of a batch-1 decode step costs inside a CUDA graph: every op is captured 50
// times back to back into one graph through CudaBackend::capture, the graph is replayed,
// and the wall time per op is reported (launch gaps between graph nodes included, as in a
// real decode step). Shapes of DeepSeek-R1-Distill-Qwen-1.5B and -7B, bf16, 512 tokens of
// context; then paged_attention alone at batches 1-256 and contexts up to 32k. Never
// pass/fail on time.
//
//   build/bench/bw_cuda_decode_ops_bench
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"

namespace {

using bw::CudaBackend;
using bw::DeviceBuffer;
using bw::DType;
using bw::Status;
using bw::TensorView;

constexpr int kOpsPerGraph = 50;
constexpr int kReplays = 20;
constexpr int kContext = 512;
constexpr int kBlock = 16;

void check(const Status& st, const char* what) {
  if (!st.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, st.to_string().c_str());
    std::exit(1);
  }
}

struct Shape {
  const char* name;
  int64_t hidden, ffn, hq, hkv, d;
};

class Bench {
 public:
  explicit Bench(CudaBackend& gpu) : gpu_(gpu) {}

  // A device tensor of small random values in `dtype` (bf16 or i32 ids).
  TensorView tensor(DType dtype, bw::Shape shape, float lo = -0.5f, float hi = 0.5f) {
    const auto n = static_cast<size_t>(shape.numel());
    std::vector<uint16_t> h(n);
    std::mt19937 rng(static_cast<uint32_t>(keep_.size() + 1));
    std::uniform_real_distribution<float> dist(lo, hi);
    for (auto& x : h) {
      const float f = dist(rng);
      uint32_t u = 0;
      std::memcpy(&u, &f, 4);
      x = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    auto buf = gpu_.allocate(n * 2);
    check(buf.status(), "allocate");
    check(gpu_.copy_to_device(buf->data(), h.data(), n * 2), "upload");
    TensorView v(buf->data(), dtype, shape);
    keep_.push_back(std::move(*buf));
    return v;
  }
  // A large device tensor of small values: a 1 MiB random pattern repeated (fast to make).
  TensorView filled(DType dtype, bw::Shape shape) {
    const auto bytes = static_cast<size_t>(shape.numel()) * 2;
    std::vector<uint16_t> pattern(size_t{1} << 19);
    std::mt19937 rng(7);
    std::uniform_int_distribution<int> exponent(0x3c00, 0x3eff);  // bf16 of about 0.008 .. 0.5, signed
    for (auto& x : pattern)
      x = static_cast<uint16_t>((exponent(rng) >> 4 << 4) | (rng() & 0x800fu));
    auto buf = gpu_.allocate(bytes);
    check(buf.status(), "allocate");
    auto* base = static_cast<uint8_t*>(buf->data());
    for (size_t off = 0; off < bytes; off += pattern.size() * 2) {
      const size_t n = std::min(pattern.size() * 2, bytes - off);
      check(gpu_.copy_to_device(base + off, pattern.data(), n), "upload");
    }
    TensorView v(buf->data(), dtype, shape);
    keep_.push_back(std::move(*buf));
    return v;
  }
  TensorView ints(const std::vector<int32_t>& v, bw::Shape shape) {
    auto buf = gpu_.allocate(v.size() * 4);
    check(buf.status(), "allocate");
    check(gpu_.copy_to_device(buf->data(), v.data(), v.size() * 4), "upload");
    TensorView t(buf->data(), DType::kI32, shape);
    keep_.push_back(std::move(*buf));
    return t;
  }

  // Microseconds per call of `op` inside a graph of kOpsPerGraph calls.
  template <typename Op>
  double per_op_us(Op&& op) {
    check(op(), "eager warm-up");
    check(gpu_.synchronize(), "sync");
    auto graph = gpu_.capture([&]() -> Status {
      for (int i = 0; i < kOpsPerGraph; ++i)
        RETURN_IF_ERROR(op());
      return bw::OkStatus();
    });
    check(graph.status(), "capture");
    check((*graph)->replay(), "replay");
    check(gpu_.synchronize(), "sync");
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < kReplays; ++r)
      check((*graph)->replay(), "replay");
    check(gpu_.synchronize(), "sync");
    const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    return us / (kReplays * kOpsPerGraph);
  }

 private:
  CudaBackend& gpu_;
  std::vector<DeviceBuffer> keep_;
};

void run(CudaBackend& gpu, const Shape& s) {
  Bench b(gpu);
  const int64_t qkv_w = (s.hq + 2 * s.hkv) * s.d;
  TensorView x = b.tensor(DType::kBF16, {1, s.hidden});
  TensorView out = b.tensor(DType::kBF16, {1, s.hidden});
  TensorView residual = b.tensor(DType::kBF16, {1, s.hidden});
  TensorView norm_w = b.tensor(DType::kBF16, {s.hidden}, 0.9f, 1.1f);
  TensorView gate_up = b.tensor(DType::kBF16, {1, 2 * s.ffn});
  TensorView act = b.tensor(DType::kBF16, {1, s.ffn});
  TensorView qkv = b.tensor(DType::kBF16, {1, qkv_w});
  TensorView attn_out = b.tensor(DType::kBF16, {1, s.hq * s.d});
  const int blocks = (kContext + kBlock - 1) / kBlock + 1;
  const bw::Shape cs{blocks, kBlock, s.hkv, s.d};
  bw::KvCacheLayer cache{b.tensor(DType::kBF16, cs), b.tensor(DType::kBF16, cs)};
  std::vector<int32_t> table(64, 0);
  std::iota(table.begin(), table.begin() + blocks, 0);
  bw::AttentionMetadata meta;
  meta.positions = b.ints({kContext - 1}, {1});
  meta.slot_mapping = b.ints({kContext - 1}, {1});
  meta.query_start = b.ints({0, 1}, {2});
  meta.kv_lens = b.ints({kContext}, {1});
  meta.block_tables = b.ints(table, {1, 64});
  meta.num_seqs = 1;
  meta.max_query_len = 1;
  meta.max_kv_len = 64 * kBlock;  // the bound a graph of width 64 passes
  const bw::AttentionParams p{static_cast<int>(s.hq), static_cast<int>(s.hkv), static_cast<int>(s.d),
                              1.0f / std::sqrt(static_cast<float>(s.d))};
  bw::RopeParams rope;
  rope.theta = 10000.0f;
  rope.rotary_dim = static_cast<int>(s.d);

  std::printf("%s (batch 1, context %d), us per op inside a graph:\n", s.name, kContext);
  std::printf("  %-28s %7.2f\n", "add (floor: 1 x hidden)", b.per_op_us([&] { return gpu.add(out, x, residual); }));
  std::printf("  %-28s %7.2f\n", "rms_norm", b.per_op_us([&] { return gpu.rms_norm(out, x, norm_w, 1e-6f); }));
  std::printf("  %-28s %7.2f\n", "add_rms_norm",
              b.per_op_us([&] { return gpu.add_rms_norm(out, residual, x, norm_w, 1e-6f); }));
  std::printf("  %-28s %7.2f\n", "rope_write_kv",
              b.per_op_us([&] { return gpu.rope_write_kv(qkv, p, rope, meta, cache); }));
  std::printf("  %-28s %7.2f\n", "paged_attention (decode)",
              b.per_op_us([&] { return gpu.paged_attention(attn_out, qkv, p, meta, cache); }));
  std::printf("  %-28s %7.2f\n", "silu_mul", b.per_op_us([&] { return gpu.silu_mul(act, gate_up); }));
  struct Mm {
    const char* name;
    int64_t n, k;
  };
  for (const Mm& m : {Mm{"matmul qkv", qkv_w, s.hidden}, Mm{"matmul o", s.hidden, s.hq * s.d},
                      Mm{"matmul gate_up", 2 * s.ffn, s.hidden}, Mm{"matmul down", s.hidden, s.ffn}}) {
    TensorView w = b.tensor(DType::kBF16, {m.n, m.k});
    TensorView xin = b.tensor(DType::kBF16, {1, m.k});
    TensorView y = b.tensor(DType::kBF16, {1, m.n});
    const double us = b.per_op_us([&] { return gpu.matmul(y, xin, w, TensorView()); });
    std::printf("  %-28s %7.2f  (%.0f GB/s; L2 may hold the weights)\n", m.name, us,
                static_cast<double>(m.n * m.k * 2) / (us * 1e-6) / 1e9);
  }
  // The fused steps a decoder layer runs at batch 1 (what replaces the ops above).
  TensorView w_qkv = b.tensor(DType::kBF16, {qkv_w, s.hidden});
  TensorView w_o = b.tensor(DType::kBF16, {s.hidden, s.hq * s.d});
  TensorView w_gate_up = b.tensor(DType::kBF16, {2 * s.ffn, s.hidden});
  TensorView w_down = b.tensor(DType::kBF16, {s.hidden, s.ffn});
  const bw::NormedInput in{residual, norm_w, 1e-6f, out};
  const auto fused = [&](const char* name, int64_t weights, auto&& op) {
    const double us = b.per_op_us(op);
    std::printf("  %-28s %7.2f  (%.0f GB/s)\n", name, us, static_cast<double>(weights * 2) / (us * 1e-6) / 1e9);
  };
  fused("norm_qkv_rope_write_kv", qkv_w * s.hidden,
        [&] { return gpu.norm_qkv_rope_write_kv(qkv, in, w_qkv, TensorView(), p, rope, meta, cache); });
  fused("matmul_add o", s.hidden * s.hq * s.d, [&] { return gpu.matmul_add(residual, out, attn_out, w_o); });
  fused("norm_gate_up_silu_mul", 2 * s.ffn * s.hidden,
        [&] { return gpu.norm_gate_up_silu_mul(act, gate_up, in, w_gate_up); });
  fused("matmul_add down", s.hidden * s.ffn, [&] { return gpu.matmul_add(residual, out, act, w_down); });
}

// Decode attention at larger batches and longer contexts (every sequence `context` long,
// the graph's bound as max_kv_len): us per op and the K/V bytes read per second.
void attention_sweep(CudaBackend& gpu, const Shape& s) {
  struct Case {
    int batch, context, hint;
  };
  std::printf("%s paged_attention (decode), us per op inside a graph [K/V GB/s]:\n", s.name);
  for (const Case& c :
       {Case{1, 512, 512}, Case{1, 512, 1024}, Case{1, 2048, 2048}, Case{1, 4096, 4096}, Case{1, 4000, 8192},
        Case{1, 32768, 32768}, Case{8, 576, 576}, Case{64, 576, 576}, Case{8, 2048, 2048}, Case{32, 1024, 1024},
        Case{32, 4096, 4096}, Case{128, 2048, 2048}, Case{256, 4096, 4096}}) {
    Bench b(gpu);
    const int64_t qkv_w = (s.hq + 2 * s.hkv) * s.d;
    const int width = (c.hint + kBlock - 1) / kBlock;
    const int per_seq = (c.context + kBlock - 1) / kBlock;
    const int blocks = c.batch * per_seq + 1;
    const bw::Shape cs{blocks, kBlock, s.hkv, s.d};
    bw::KvCacheLayer cache{b.filled(DType::kBF16, cs), b.filled(DType::kBF16, cs)};
    std::vector<int32_t> table(static_cast<size_t>(c.batch) * width, 0), starts(c.batch + 1), lens(c.batch, c.context);
    for (int i = 0; i < c.batch; ++i) {
      for (int j = 0; j < per_seq; ++j)
        table[static_cast<size_t>(i) * width + j] = i * per_seq + j;
    }
    std::iota(starts.begin(), starts.end(), 0);
    bw::AttentionMetadata meta;
    meta.query_start = b.ints(starts, {c.batch + 1});
    meta.kv_lens = b.ints(lens, {c.batch});
    meta.block_tables = b.ints(table, {c.batch, width});
    meta.num_seqs = c.batch;
    meta.max_query_len = 1;
    meta.max_kv_len = c.hint;
    TensorView qkv = b.tensor(DType::kBF16, {c.batch, qkv_w});
    TensorView out = b.tensor(DType::kBF16, {c.batch, s.hq * s.d});
    const bw::AttentionParams p{static_cast<int>(s.hq), static_cast<int>(s.hkv), static_cast<int>(s.d),
                                1.0f / std::sqrt(static_cast<float>(s.d))};
    const double kv_bytes = 2.0 * c.batch * c.context * s.hkv * s.d * 2;
    const double us = b.per_op_us([&] { return gpu.paged_attention(out, qkv, p, meta, cache); });
    std::printf("  batch %3d context %5d (bound %5d): %8.2f [%5.0f]\n", c.batch, c.context, c.hint, us,
                kv_bytes / (us * 1e3));
  }
}

}  // namespace

int main() {
  auto gpu = CudaBackend::create({.device = 0, .activation_dtype = DType::kBF16});
  check(gpu.status(), "cuda");
  std::printf("device: %s\n", (*gpu)->device_name().c_str());
  run(**gpu, Shape{"1.5B", 1536, 8960, 12, 2, 128});
  run(**gpu, Shape{"7B", 3584, 18944, 28, 4, 128});
  attention_sweep(**gpu, Shape{"1.5B", 1536, 8960, 12, 2, 128});
  attention_sweep(**gpu, Shape{"7B", 3584, 18944, 28, 4, 128});
  attention_sweep(**gpu, Shape{"LLM-7B (MHA)", 4096, 11008, 32, 32, 128});  // DeepSeek-LLM-7B: a KV head per query head
  return 0;
}
