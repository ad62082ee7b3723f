// CudaBackend against the CPU reference (CpuBackend) on fresh random inputs: every op,
// several shapes, f32 and bf16 activations, every weight / cache dtype; attention over
// ragged batches mixing decode tokens and prefill chunks, sequences ending exactly on a
// block boundary, shuffled (non-contiguous) block ids, slot -1 skipped, GQA groups larger
// than one block's heads, long contexts through the split-KV path. Outputs are poisoned
// with NaN before each run. f32 tolerances are tight (f32 rounding of the accumulation);
// bf16 ones are a few bf16 epsilons. Skips when no CUDA device is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "backend/backend_factory.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "cuda_test_util.h"
#include "support/test_support.h"

namespace bw {
namespace {

using test::Stored;

class CudaTest : public test::CudaOpTest {
 protected:
  void SetUp() override { start({}); }
};

// Values rounded to `dtype`, as f32 (what the CPU reference gets as input).
std::vector<float> rounded(const std::vector<float>& v, DType dtype) { return Stored(v, dtype).values; }

using test::expect_close;

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v)
    m = std::max(m, static_cast<double>(std::abs(x)));
  return m;
}

constexpr DType kActs[] = {DType::kF32, DType::kBF16};
constexpr DType kStorage[] = {DType::kF32, DType::kF16, DType::kBF16};
// Output tolerance relative to the output scale: f32 accumulation vs one bf16 rounding.
double act_rtol(DType act) { return act == DType::kF32 ? 2e-6 : 0x1p-7; }

TEST(CudaFactoryTest, CreatesCudaBackendsOrSaysWhy) {
  auto r = create_backend("cuda", 0, DType::kBF16);
  if (!r.ok()) GTEST_SKIP() << r.status().to_string();
  EXPECT_EQ((*r)->name(), "cuda:0");
  EXPECT_EQ((*r)->activation_dtype(), DType::kBF16);
  EXPECT_FALSE((*r)->is_host_memory());
  auto f32 = create_backend("cuda:0", 0, DType::kF32);
  ASSERT_TRUE(f32.ok());
  EXPECT_EQ((*f32)->activation_dtype(), DType::kF32);
  EXPECT_EQ(create_backend("cuda:999", 0).status().code(), StatusCode::kUnavailable);
}

TEST_F(CudaTest, MemoryCopiesRoundTrip) {
  std::vector<float> v = test::random_floats(1000, 1);
  auto a = gpu_->allocate(4000), b = gpu_->allocate(4000), z = gpu_->allocate(0);
  ASSERT_TRUE(a.ok() && b.ok() && z.ok());
  ASSERT_TRUE(gpu_->copy_to_device(a->data(), v.data(), 4000).ok());
  ASSERT_TRUE(gpu_->copy_on_device(b->data(), a->data(), 4000).ok());
  std::vector<float> back(1000);
  ASSERT_TRUE(gpu_->copy_to_host(back.data(), b->data(), 4000).ok());
  EXPECT_EQ(back, v);
  EXPECT_EQ(gpu_->allocate(size_t{1} << 50).status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(gpu_->synchronize().ok());
}

TEST_F(CudaTest, EmbeddingGathersRowsAndFlagsBadIds) {
  for (DType act : kActs) {
    for (DType dt : kStorage) {
      for (int64_t h : {1, 7, 64, 129, 1536}) {
        const int64_t vocab = 50;
        Stored table(test::random_floats(static_cast<size_t>(vocab * h), 3 + static_cast<uint32_t>(h)), dt);
        std::vector<int32_t> ids = {0, 49, 7, 7, 23, 1, 48};
        const int64_t n = static_cast<int64_t>(ids.size());
        TensorView out = poisoned(act, {n, h});
        ASSERT_TRUE(gpu_->embedding(out, upload(table, {vocab, h}), upload_i32(ids, {n})).ok());
        std::vector<float> want;
        for (int32_t id : ids)
          want.insert(want.end(), table.values.begin() + id * h, table.values.begin() + (id + 1) * h);
        expect_close(download(out), rounded(want, act), 0, 0, "embedding");
      }
    }
  }
  Stored table(test::random_floats(40, 5), DType::kF32);
  TensorView out = poisoned(DType::kF32, {2, 4});
  ASSERT_TRUE(gpu_->embedding(out, upload(table, {10, 4}), upload_i32({3, 10}, {2})).ok());
  const Status s = gpu_->synchronize();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  EXPECT_TRUE(gpu_->synchronize().ok());  // reported once; the backend keeps working
  EXPECT_EQ(gpu_->embedding(out, upload(table, {10, 4}), upload_i32({1}, {1})).code(),
            StatusCode::kInvalidArgument);  // shape mismatch caught on the host
}

TEST_F(CudaTest, AddAndSiluMul) {
  // Row lengths that are and are not whole 16-byte vectors; 70,001 rows: more than a grid's
  // y dimension holds (silu_mul loops over them).
  std::vector<std::pair<int64_t, int64_t>> shapes = {{70001, 8}};
  for (int64_t rows : {1, 5, 64}) {
    for (int64_t f : {1, 33, 8960})
      shapes.emplace_back(rows, f);
  }
  for (DType act : kActs) {
    for (auto [rows, f] : shapes) {
      const auto a = rounded(test::random_floats(static_cast<size_t>(rows * f), 11, -4, 4), act);
      const auto b = rounded(test::random_floats(static_cast<size_t>(rows * f), 12, -4, 4), act);
      TensorView out = poisoned(act, {rows, f});
      ASSERT_TRUE(gpu_->add(out, upload(Stored(a, act), {rows, f}), upload(Stored(b, act), {rows, f})).ok());
      std::vector<float> want(a.size());
      for (size_t i = 0; i < a.size(); ++i)
        want[i] = a[i] + b[i];
      expect_close(download(out), rounded(want, act), 0, act == DType::kF32 ? 0 : 0x1p-8, "add");

      const auto gu = rounded(test::random_floats(static_cast<size_t>(rows * 2 * f), 13, -6, 6), act);
      TensorView out2 = poisoned(act, {rows, f});
      ASSERT_TRUE(gpu_->silu_mul(out2, upload(Stored(gu, act), {rows, 2 * f})).ok());
      std::vector<float> ref(static_cast<size_t>(rows * f)), gu_copy = gu;
      ASSERT_TRUE(cpu_.silu_mul(test::f32_view(ref, {rows, f}), test::f32_view(gu_copy, {rows, 2 * f})).ok());
      expect_close(download(out2), ref, 1e-6, act == DType::kF32 ? 1e-5 : 0x1p-8, "silu_mul");
    }
  }
}

TEST_F(CudaTest, RmsNormAndFusedAddRmsNorm) {
  for (DType act : kActs) {
    for (DType wt : {DType::kF32, DType::kBF16}) {
      for (auto [rows, h] : {std::pair<int64_t, int64_t>{1, 7}, {3, 64}, {5, 1536}, {2, 3584}}) {
        const auto x = rounded(test::random_floats(static_cast<size_t>(rows * h), 21, -3, 3), act);
        const auto res = rounded(test::random_floats(static_cast<size_t>(rows * h), 22, -3, 3), act);
        Stored w(test::random_floats(static_cast<size_t>(h), 23, 0.5, 1.5), wt);
        const double rtol = act == DType::kF32 ? 1e-5 : 0x1p-7;
        // rms_norm, out aliasing x.
        TensorView xd = upload(Stored(x, act), {rows, h});
        ASSERT_TRUE(gpu_->rms_norm(xd, xd, upload(w, {h}), 1e-6f).ok());
        std::vector<float> ref(x.size()), xc = x;
        ASSERT_TRUE(cpu_.rms_norm(test::f32_view(ref, {rows, h}), test::f32_view(xc, {rows, h}),
                                  test::f32_view(w.values, {h}), 1e-6f)
                        .ok());
        expect_close(download(xd), ref, 1e-6, rtol, "rms_norm");
        // add_rms_norm: residual += x; out = norm(residual).
        TensorView rd = upload(Stored(res, act), {rows, h});
        TensorView out = poisoned(act, {rows, h});
        ASSERT_TRUE(gpu_->add_rms_norm(out, rd, upload(Stored(x, act), {rows, h}), upload(w, {h}), 1e-6f).ok());
        std::vector<float> rc = res, xc2 = x, ref2(x.size());
        ASSERT_TRUE(cpu_.add_rms_norm(test::f32_view(ref2, {rows, h}), test::f32_view(rc, {rows, h}),
                                      test::f32_view(xc2, {rows, h}), test::f32_view(w.values, {h}), 1e-6f)
                        .ok());
        expect_close(download(rd), rounded(rc, act), 1e-6, act == DType::kF32 ? 0 : 0x1p-8, "residual");
        // bf16: the norm is of the bf16-rounded residual.
        expect_close(download(out), ref2, 1e-6, act == DType::kF32 ? 1e-5 : 0x1p-6, "add_rms_norm");
      }
    }
  }
}

class CudaMatmulTest : public CudaTest {
 public:
  // f32_out: the LM head's case, f32 output from bf16 activations.
  void run(DType act, DType wt, int64_t m, int64_t n, int64_t k, bool with_bias, uint32_t seed, bool f32_out = false) {
    const auto x = rounded(test::random_floats(static_cast<size_t>(m * k), seed), act);
    Stored w(test::random_floats(static_cast<size_t>(n * k), seed + 1), wt);
    const auto b = rounded(test::random_floats(static_cast<size_t>(n), seed + 2), act);
    const DType out_dt = f32_out ? DType::kF32 : act;
    TensorView out = poisoned(out_dt, {m, n});
    TensorView bias_view = with_bias ? upload(Stored(b, act), {n}) : TensorView();
    const Status s = gpu_->matmul(out, upload(Stored(x, act), {m, k}), upload(w, {n, k}), bias_view);
    ASSERT_TRUE(s.ok()) << s.to_string();
    std::vector<float> ref(static_cast<size_t>(m * n)), xc = x, bc = b;
    ASSERT_TRUE(cpu_.matmul(test::f32_view(ref, {m, n}), test::f32_view(xc, {m, k}), test::f32_view(w.values, {n, k}),
                            with_bias ? test::f32_view(bc, {n}) : TensorView())
                    .ok());
    // Error bound from the sum of |products| (f32 accumulation in any order), plus one
    // rounding to the output dtype.
    std::vector<float> got = download(out);
    int bad = 0;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double mag = with_bias ? std::abs(b[j]) : 0.0;
        for (int64_t q = 0; q < k; ++q)
          mag += std::abs(static_cast<double>(x[i * k + q]) * w.values[j * k + q]);
        const double want = ref[i * n + j];
        // bf16 output: one rounding of the product and, with a bias epilogue, one more of
        // the sum (cuBLASLt may round before adding the bias).
        const double bias_mag = with_bias ? std::abs(b[j]) : 0.0;
        const double tol = 1e-5 * mag + 1e-6 + (out_dt == DType::kF32 ? 0.0 : 0x1p-8 * (2 * std::abs(want) + bias_mag));
        const double err = std::abs(got[i * n + j] - want);
        if (!(err <= tol)) {
          if (++bad <= 3)
            ADD_FAILURE() << "matmul act " << test::dtype_str(act) << " w " << test::dtype_str(wt) << " m" << m << " n"
                          << n << " k" << k << " [" << i << "," << j << "]: got " << got[i * n + j] << " want " << want;
        }
      }
    }
    EXPECT_EQ(bad, 0);
  }
};

TEST_F(CudaMatmulTest, GemvAndCublasLtMatchTheCpu) {
  uint32_t seed = 100;
  for (DType act : kActs) {
    for (DType wt : kStorage) {
      for (int64_t m : {1, 3, 16, 17, 64}) {
        for (auto [n, k] : {std::pair<int64_t, int64_t>{1, 8}, {33, 37}, {256, 128}, {96, 1536}}) {
          run(act, wt, m, n, k, /*with_bias=*/(m + n) % 2 == 1, seed++);
        }
      }
    }
  }
}

// Above 128 rows a cuBLASLt plan borrows the algorithm chosen for its bucket (M rounded up
// to a multiple of 64): row counts on both sides of bucket edges, each bucket's own M
// first and last, odd N and K among them (an algorithm cuBLASLt refuses for the borrowing
// M falls back to the heuristic's own choice).
TEST_F(CudaMatmulTest, BucketedCublasLtPlansMatchTheCpu) {
  uint32_t seed = 300;
  for (DType act : kActs) {
    for (auto [n, k] : {std::pair<int64_t, int64_t>{256, 128}, {96, 1536}, {33, 37}}) {
      for (int64_t m : {192, 129, 150, 191, 193, 255, 256, 1000, 2047, 2048}) {
        run(act, act, m, n, k, /*with_bias=*/m % 2 == 1, seed++);
      }
    }
  }
}

// The bias added over more rows than a grid's y dimension holds, and with a row length
// that is not a whole number of 16-byte vectors.
TEST_F(CudaMatmulTest, BiasOverManyRows) {
  run(DType::kBF16, DType::kBF16, 70001, 16, 32, true, 60);
  run(DType::kF32, DType::kF32, 70001, 12, 32, true, 61);
  run(DType::kBF16, DType::kBF16, 300, 13, 32, true, 62);
}

TEST_F(CudaMatmulTest, F32OutputFromBf16Activations) {
  for (int64_t m : {1, 5, 40}) {
    run(DType::kBF16, DType::kBF16, m, 300, 256, false, 40 + static_cast<uint32_t>(m), /*f32_out=*/true);
    run(DType::kBF16, DType::kF16, m, 64, 96, true, 50 + static_cast<uint32_t>(m), /*f32_out=*/true);
  }
}

TEST_F(CudaMatmulTest, ForcedGemvMatchesForLargeM) {
  gpu_->set_force_gemv(true);
  run(DType::kBF16, DType::kBF16, 40, 64, 256, true, 7);
  run(DType::kF32, DType::kF32, 33, 64, 96, false, 8);
}

// --- Attention ----------------------------------------------------------------------------

using test::SeqSpec;
using Batch = test::AttentionBatch;

struct AttnCase {
  int hq, hkv, d;
};

class CudaAttentionTest : public CudaTest {
 public:
  // The hints the runner passes: the longest query, and `max_kv_hint`.
  AttentionMetadata device_meta(const Batch& b, int max_kv_hint) {
    return CudaOpTest::device_meta(b, b.max_query_len, max_kv_hint);
  }

  // Random cache and qkv; the GPU's paged_attention (and the CPU's on the same rounded
  // values) over batch b.
  void check_attention(const AttnCase& c, DType act, DType cache_dt, Batch& b, int max_kv_hint, uint32_t seed) {
    AttentionParams p{c.hq, c.hkv, c.d, 1.0f / std::sqrt(static_cast<float>(c.d))};
    const int64_t width = static_cast<int64_t>(c.hq + 2 * c.hkv) * c.d;
    const int64_t cache_elems = static_cast<int64_t>(b.num_blocks) * b.block_size * c.hkv * c.d;
    Stored kc(test::random_floats(static_cast<size_t>(cache_elems), seed, -2, 2), cache_dt);
    Stored vc(test::random_floats(static_cast<size_t>(cache_elems), seed + 1), cache_dt);
    const auto qkv = rounded(test::random_floats(static_cast<size_t>(b.num_tokens * width), seed + 2, -2, 2), act);
    const Shape cs{b.num_blocks, b.block_size, c.hkv, c.d};
    KvCacheLayer gc{upload(kc, cs), upload(vc, cs)};
    TensorView out = poisoned(act, {b.num_tokens, static_cast<int64_t>(c.hq) * c.d});
    const Status st =
        gpu_->paged_attention(out, upload(Stored(qkv, act), {b.num_tokens, width}), p, device_meta(b, max_kv_hint), gc);
    ASSERT_TRUE(st.ok()) << st.to_string();
    std::vector<float> ref(static_cast<size_t>(b.num_tokens * c.hq * c.d)), qc = qkv;
    Stored kc2 = kc, vc2 = vc;
    KvCacheLayer cc{kc2.view(cs), vc2.view(cs)};
    ASSERT_TRUE(cpu_.paged_attention(test::f32_view(ref, {b.num_tokens, static_cast<int64_t>(c.hq) * c.d}),
                                     test::f32_view(qc, {b.num_tokens, width}), p, b.host_meta(), cc)
                    .ok());
    const std::string what = "attention hq" + std::to_string(c.hq) + " hkv" + std::to_string(c.hkv) + " d" +
                             std::to_string(c.d) + " act " + test::dtype_str(act) + " cache " +
                             test::dtype_str(cache_dt) + " bs" + std::to_string(b.block_size);
    expect_close(download(out), ref, act == DType::kF32 ? 2e-5 : 1e-2, act == DType::kF32 ? 1e-4 : 0x1p-7, what);
  }
};

std::vector<SeqSpec> mixed_specs(int bs) {
  return {{1, 37}, {7, 20}, {bs, 2 * bs}, {19, 19}, {1, 1}, {3, 3 + 2 * bs - 1}, {1, 4 * bs}};
}

TEST_F(CudaAttentionTest, MixedBatchesMatchTheCpu) {
  uint32_t seed = 1;
  for (AttnCase c : {AttnCase{4, 2, 16}, AttnCase{12, 2, 128}, AttnCase{8, 8, 64}, AttnCase{32, 2, 64},
                     AttnCase{4, 1, 40}, AttnCase{28, 4, 128}}) {
    for (int bs : {1, 4, 16}) {
      Batch b(mixed_specs(bs), bs, seed++);
      for (DType act : kActs) {
        for (DType cache_dt : kStorage) {
          check_attention(c, act, cache_dt, b, b.max_kv_len(), seed++);
        }
      }
    }
  }
}

TEST_F(CudaAttentionTest, LongContextsSplitAndUnsplitAgree) {
  uint32_t seed = 500;
  for (AttnCase c : {AttnCase{12, 2, 128}, AttnCase{28, 4, 128}}) {
    Batch b({{1, 3000}, {1, 1}, {1, 777}, {2, 1024}}, 16, seed++);
    for (DType act : kActs) {
      check_attention(c, act, DType::kBF16, b, b.max_kv_len(), seed);  // split-KV decode
      check_attention(c, act, DType::kBF16, b, 0, seed);               // hint 0: one pass
      check_attention(c, act, DType::kF32, b, b.max_kv_len(), seed++);
    }
    Batch prefill({{300, 300}, {64, 600}}, 16, seed++);
    check_attention(c, DType::kBF16, DType::kBF16, prefill, prefill.max_kv_len(), seed++);
  }
}

// Decode-only batches take the decode kernel (head dims 16-128) or, for other head dims,
// the general one; hints as the runner gives them (the longest sequence) and as graphs do
// (an upper bound).
TEST_F(CudaAttentionTest, DecodeBatchesMatchTheCpu) {
  uint32_t seed = 900;
  for (AttnCase c : {AttnCase{4, 2, 16}, AttnCase{12, 2, 128}, AttnCase{8, 8, 64}, AttnCase{32, 2, 64},
                     AttnCase{28, 4, 128}, AttnCase{4, 1, 32}, AttnCase{4, 1, 40}}) {
    for (int bs : {1, 16}) {
      Batch b({{1, 37}, {1, 1}, {1, 16}, {1, 17}, {1, 100}, {1, 4 * bs}, {1, 1000}}, bs, seed++);
      for (DType act : kActs) {
        for (DType cache_dt : kStorage) {
          check_attention(c, act, cache_dt, b, b.max_kv_len(), seed++);
          check_attention(c, act, cache_dt, b, 4096, seed++);
        }
      }
    }
  }
  // One sequence, long context: the context splits over many blocks.
  Batch one({{1, 3001}}, 16, seed++);
  for (DType act : kActs)
    check_attention(AttnCase{12, 2, 128}, act, DType::kBF16, one, one.max_kv_len(), seed++);
}

TEST_F(CudaAttentionTest, DecodeKernelReportsAChunkPassedAsDecode) {
  AttnCase c{4, 2, 16};
  Batch b({{1, 5}, {2, 6}}, 4, 3);
  AttentionParams p{c.hq, c.hkv, c.d, 0.25f};
  const Shape cs{b.num_blocks, b.block_size, c.hkv, c.d};
  Stored kc(test::random_floats(static_cast<size_t>(cs.numel()), 1), DType::kF32);
  KvCacheLayer gc{upload(kc, cs), upload(kc, cs)};
  TensorView out = poisoned(DType::kF32, {3, 64});
  Stored qkv(test::random_floats(3 * 128, 2), DType::kF32);
  AttentionMetadata m = device_meta(b, 6);
  m.max_query_len = 1;  // a wrong hint: sequence 1 has two query tokens
  // Three tokens for two sequences: not a decode batch, so the general kernel runs.
  ASSERT_TRUE(gpu_->paged_attention(out, upload(qkv, {3, 128}), p, m, gc).ok());
  EXPECT_TRUE(gpu_->synchronize().ok());
  Batch d({{1, 5}, {1, 6}}, 4, 4);
  AttentionMetadata dm = device_meta(d, 6);
  std::vector<int32_t> bad_start{0, 2, 2};  // sequence 0 claims two tokens, sequence 1 none
  dm.query_start = upload_i32(bad_start, {3});
  TensorView out2 = poisoned(DType::kF32, {2, 64});
  ASSERT_TRUE(gpu_->paged_attention(out2, upload(qkv, {2, 128}), p, dm, gc).ok());
  EXPECT_EQ(gpu_->synchronize().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(gpu_->synchronize().ok());
  Batch bad({{1, 5}}, 4, 5);
  bad.block_tables[1] = 1000;  // the block of positions 4..7
  TensorView out3 = poisoned(DType::kF32, {1, 64});
  ASSERT_TRUE(gpu_->paged_attention(out3, upload(qkv, {1, 128}), p, device_meta(bad, 5), gc).ok());
  EXPECT_EQ(gpu_->synchronize().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(gpu_->synchronize().ok());
}

TEST_F(CudaAttentionTest, BadBlockIdsAreReported) {
  AttnCase c{4, 2, 16};
  Batch b({{2, 5}}, 4, 3);
  b.block_tables[1] = 1000;
  AttentionParams p{c.hq, c.hkv, c.d, 0.25f};
  const Shape cs{b.num_blocks, b.block_size, c.hkv, c.d};
  Stored kc(test::random_floats(static_cast<size_t>(cs.numel()), 1), DType::kF32);
  KvCacheLayer gc{upload(kc, cs), upload(kc, cs)};
  TensorView out = poisoned(DType::kF32, {2, 64});
  Stored qkv(test::random_floats(2 * 128, 2), DType::kF32);
  ASSERT_TRUE(gpu_->paged_attention(out, upload(qkv, {2, 128}), p, device_meta(b, 5), gc).ok());
  EXPECT_EQ(gpu_->synchronize().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(gpu_->synchronize().ok());
}

TEST_F(CudaAttentionTest, RopeWriteKvMatchesTheCpu) {
  uint32_t seed = 900;
  RopeParams plain;
  plain.theta = 10000.0f;
  RopeParams llama3;
  llama3.theta = 500000.0f;
  llama3.scaling.type = RopeScaling::Type::kLlama3;
  llama3.scaling.factor = 8.0f;
  llama3.scaling.original_max_position = 64;
  RopeParams linear;
  linear.theta = 10000.0f;
  linear.scaling.type = RopeScaling::Type::kLinear;
  linear.scaling.factor = 2.0f;
  for (AttnCase c : {AttnCase{4, 2, 16}, AttnCase{12, 2, 128}, AttnCase{4, 4, 40}}) {
    for (int variant = 0; variant < 4; ++variant) {
      RopeParams rope = variant == 1 ? llama3 : variant == 2 ? linear : plain;
      rope.rotary_dim = variant == 3 ? c.d / 2 : c.d;
      if (variant == 3) rope.freq_factors.assign(static_cast<size_t>(rope.rotary_dim / 2), 1.5f);
      for (DType act : kActs) {
        for (DType cache_dt : kStorage) {
          Batch b(mixed_specs(4), 4, seed++);
          b.slot_mapping[3] = -1;  // skipped write
          for (int i = 0; i < b.num_tokens; i += 5)
            b.positions[i] += 3000;  // large angles
          AttentionParams p{c.hq, c.hkv, c.d, 1.0f};
          const int64_t width = static_cast<int64_t>(c.hq + 2 * c.hkv) * c.d;
          const Shape cs{b.num_blocks, b.block_size, c.hkv, c.d};
          const auto qkv = rounded(test::random_floats(static_cast<size_t>(b.num_tokens * width), seed++), act);
          Stored poison(test::poisoned(static_cast<size_t>(cs.numel())), cache_dt);
          TensorView q_dev = upload(Stored(qkv, act), {b.num_tokens, width});
          KvCacheLayer gc{upload(poison, cs), upload(poison, cs)};
          const Status st = gpu_->rope_write_kv(q_dev, p, rope, device_meta(b, b.max_kv_len()), gc);
          ASSERT_TRUE(st.ok()) << st.to_string();
          std::vector<float> qc = qkv;
          Stored kc = poison, vc = poison;
          KvCacheLayer cc{kc.view(cs), vc.view(cs)};
          ASSERT_TRUE(cpu_.rope_write_kv(test::f32_view(qc, {b.num_tokens, width}), p, rope, b.host_meta(), cc).ok());
          const double rtol = act == DType::kF32 ? 1e-5 : 0x1p-7;
          expect_close(download(q_dev), rounded(qc, act), 1e-5, rtol, "rope qkv");
          // Cache: written slots match (NaN poison stays NaN where the CPU left it).
          for (const auto& [dev, host] : {std::pair{gc.k, &kc}, std::pair{gc.v, &vc}}) {
            const std::vector<float> got = download(dev);
            int bad = 0;
            for (size_t i = 0; i < got.size(); ++i) {
              const float want = host->read(i);
              const bool ok = std::isnan(want) ? std::isnan(got[i])
                                               : std::abs(got[i] - want) <=
                                                     1e-5 + 2 * rtol * std::abs(want) + test::dtype_epsilon(cache_dt);
              if (!ok && ++bad <= 3) ADD_FAILURE() << "cache [" << i << "] got " << got[i] << " want " << want;
            }
            EXPECT_EQ(bad, 0);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace bw
