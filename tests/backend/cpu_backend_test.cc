// CpuBackend memory, the backend factory, and the small ops (embedding, rms_norm,
// add_rms_norm, add, silu_mul) against double references; argument errors of every op
// are InvalidArgument, never a crash.
#include "backend/cpu/cpu_backend.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/backend_factory.h"
#include "cpu_test_util.h"
#include "support/test_support.h"

namespace bw {
namespace {

using test::poisoned;
using test::Stored;

TEST(CpuBackendTest, Properties) {
  CpuBackend backend(2);
  EXPECT_EQ(backend.name(), "cpu");
  EXPECT_EQ(backend.activation_dtype(), DType::kF32);
  EXPECT_TRUE(backend.is_host_memory());
  EXPECT_EQ(backend.num_threads(), 2);
  EXPECT_TRUE(backend.synchronize().ok());
}

TEST(CpuBackendTest, AllocateIsAlignedAndCopiesRoundTrip) {
  CpuBackend backend(1);
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{63}, size_t{64}, size_t{1000}, size_t{1} << 20}) {
    auto buf = backend.allocate(bytes);
    ASSERT_TRUE(buf.ok()) << buf.status().to_string();
    EXPECT_EQ(buf->size(), bytes);
    EXPECT_NE(buf->data(), nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buf->data()) % 64, 0u);
    std::vector<uint8_t> src(bytes), dst(bytes, 0);
    for (size_t i = 0; i < bytes; ++i)
      src[i] = static_cast<uint8_t>(i * 7 + 1);
    ASSERT_TRUE(backend.copy_to_device(buf->data(), src.data(), bytes).ok());
    ASSERT_TRUE(backend.copy_to_host(dst.data(), buf->data(), bytes).ok());
    EXPECT_EQ(src, dst);
  }
  auto buf = backend.allocate(64);
  ASSERT_TRUE(buf.ok());
  DeviceBuffer moved = std::move(*buf);
  EXPECT_EQ(moved.size(), 64u);
  const TensorView v = moved.view(DType::kF32, {4, 4});
  EXPECT_EQ(v.data, moved.data());
}

TEST(CpuBackendTest, ImpossibleAllocationIsResourceExhausted) {
  CpuBackend backend(1);
  auto huge = backend.allocate(std::numeric_limits<size_t>::max() - 8);
  EXPECT_EQ(huge.status().code(), StatusCode::kResourceExhausted);
  auto past_ptrdiff = backend.allocate(size_t{1} << 63);
  EXPECT_EQ(past_ptrdiff.status().code(), StatusCode::kResourceExhausted);
#if !BW_TEST_UNDER_SANITIZER  // sanitizers abort on these by default
  auto too_big = backend.allocate(size_t{1} << 62);
  EXPECT_EQ(too_big.status().code(), StatusCode::kResourceExhausted);
#endif
}

TEST(CpuFactoryTest, CreatesCpuAndRefusesTheRest) {
  auto cpu = create_backend("cpu", 2);
  ASSERT_TRUE(cpu.ok()) << cpu.status().to_string();
  EXPECT_EQ((*cpu)->name(), "cpu");
  // Without CUDA in the build: Unimplemented; with it but no such device: Unavailable;
  // on a GPU machine "cuda" works (tests/backend/cuda_backend_gpu_test.cc covers that).
  for (const char* cuda : {"cuda", "cuda:0", "cuda:12"}) {
    auto r = create_backend(cuda, 0);
    if (r.ok()) {
      EXPECT_EQ((*r)->name().rfind("cuda:", 0), 0u) << cuda;
      continue;
    }
    EXPECT_TRUE(r.status().code() == StatusCode::kUnimplemented || r.status().code() == StatusCode::kUnavailable)
        << cuda << ": " << r.status().to_string();
    EXPECT_NE(r.status().message().find("use --device cpu"), std::string::npos) << r.status().message();
  }
  for (const char* bad : {"", "gpu", "CPU", "cuda:", "cuda:x", "cuda0"}) {
    auto r = create_backend(bad, 0);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(r.status().message().find("cpu, cuda, cuda:N"), std::string::npos) << r.status().message();
  }
  EXPECT_EQ(create_backend("cpu", -1).status().code(), StatusCode::kInvalidArgument);
}

TEST(CpuElementwiseTest, EmbeddingGathersRowsOfEveryDtype) {
  CpuBackend backend(2);
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int64_t h : {1, 7, 64, 129}) {
      const int64_t vocab = 50;
      Stored table(test::random_floats(static_cast<size_t>(vocab * h), 3 + static_cast<uint32_t>(h)), dt);
      std::vector<int32_t> ids = {0, 49, 7, 7, 23, 1, 48};
      std::vector<float> out = poisoned(ids.size() * static_cast<size_t>(h));
      const int64_t t = static_cast<int64_t>(ids.size());
      ASSERT_TRUE(
          backend.embedding(test::f32_view(out, {t, h}), table.view({vocab, h}), test::i32_view(ids, {t})).ok());
      for (int64_t i = 0; i < t; ++i) {
        for (int64_t j = 0; j < h; ++j)
          ASSERT_EQ(out[i * h + j], table.values[ids[i] * h + j]) << i << "," << j;
      }
    }
  }
}

TEST(CpuElementwiseTest, EmbeddingRejectsOutOfRangeIdsBeforeWriting) {
  CpuBackend backend(2);
  std::vector<float> table = test::random_floats(10 * 4, 1);
  for (int32_t bad : {-1, 10, 1 << 30}) {
    std::vector<int32_t> ids = {1, 2, bad, 3};
    std::vector<float> out = poisoned(16);
    const Status st =
        backend.embedding(test::f32_view(out, {4, 4}), test::f32_view(table, {10, 4}), test::i32_view(ids, {4}));
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(st.message().find("ids[2]"), std::string::npos) << st.message();
    for (float v : out)
      EXPECT_TRUE(std::isnan(v)) << "no row is gathered when an id is bad";
  }
  std::vector<int32_t> ids = {1, 2};
  std::vector<float> out(8);
  EXPECT_EQ(backend
                .embedding(test::f32_view(out, {2, 4}), test::f32_view(table, {10, 4}),
                           TensorView(ids.data(), DType::kI64, Shape{1}))
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(
      backend.embedding(test::f32_view(out, {2, 3}), test::f32_view(table, {10, 4}), test::i32_view(ids, {2})).code(),
      StatusCode::kInvalidArgument);
}

// weight * (x / sqrt(mean(x^2) + eps)) in double.
std::vector<double> reference_rms_norm(const std::vector<float>& x, const std::vector<float>& w, int64_t rows,
                                       int64_t h, float eps) {
  std::vector<double> out(x.size());
  for (int64_t t = 0; t < rows; ++t) {
    double ss = 0.0;
    for (int64_t i = 0; i < h; ++i)
      ss += static_cast<double>(x[t * h + i]) * x[t * h + i];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(h) + eps);
    for (int64_t i = 0; i < h; ++i)
      out[t * h + i] = w[i] * (x[t * h + i] * inv);
  }
  return out;
}

void expect_near_all(const std::vector<float>& got, const std::vector<double>& want, double rel, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << what << " unwritten at " << i;
    ASSERT_NEAR(got[i], want[i], rel * (std::fabs(want[i]) + 1e-3)) << what << " at " << i;
  }
}

TEST(CpuNormTest, RmsNormAndAddRmsNormMatchReference) {
  CpuBackend backend(2);
  uint32_t seed = 40;
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int64_t rows : {1, 5, 33}) {
      for (int64_t h : {1, 7, 64, 129, 1536}) {
        SCOPED_TRACE(testing::Message() << "rows=" << rows << " H=" << h << " w=" << test::dtype_str(dt));
        const float eps = 1e-6f;
        const double rel = static_cast<double>(h + 8) * test::dtype_epsilon(DType::kF32);
        std::vector<float> x = test::random_floats(static_cast<size_t>(rows * h), seed++, -3.0f, 3.0f);
        Stored w(test::random_floats(static_cast<size_t>(h), seed++, 0.5f, 1.5f), dt);
        std::vector<float> out = poisoned(x.size());
        ASSERT_TRUE(
            backend.rms_norm(test::f32_view(out, {rows, h}), test::f32_view(x, {rows, h}), w.view({h}), eps).ok());
        const std::vector<double> want = reference_rms_norm(x, w.values, rows, h, eps);
        expect_near_all(out, want, rel, "rms_norm");
        // In place: out aliases x.
        std::vector<float> inplace = x;
        ASSERT_TRUE(
            backend.rms_norm(test::f32_view(inplace, {rows, h}), test::f32_view(inplace, {rows, h}), w.view({h}), eps)
                .ok());
        EXPECT_EQ(inplace, out);

        std::vector<float> residual = test::random_floats(x.size(), seed++, -3.0f, 3.0f);
        std::vector<float> sum(x.size());
        for (size_t i = 0; i < x.size(); ++i)
          sum[i] = residual[i] + x[i];
        std::vector<float> out2 = poisoned(x.size());
        ASSERT_TRUE(backend
                        .add_rms_norm(test::f32_view(out2, {rows, h}), test::f32_view(residual, {rows, h}),
                                      test::f32_view(x, {rows, h}), w.view({h}), eps)
                        .ok());
        EXPECT_EQ(residual, sum) << "residual += x";
        expect_near_all(out2, reference_rms_norm(sum, w.values, rows, h, eps), rel, "add_rms_norm");
      }
    }
  }
}

TEST(CpuNormTest, RejectsMismatchedShapes) {
  CpuBackend backend(1);
  std::vector<float> x(4 * 8), out(4 * 8), w(7), r(4 * 8);
  Status st = backend.rms_norm(test::f32_view(out, {4, 8}), test::f32_view(x, {4, 8}), test::f32_view(w, {7}), 1e-6f);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("rms_norm: weight [7]"), std::string::npos) << st.message();
  EXPECT_EQ(
      backend.rms_norm(test::f32_view(out, {8, 4}), test::f32_view(x, {4, 8}), test::f32_view(w, {7}), 1e-6f).code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(backend
                .add_rms_norm(test::f32_view(out, {4, 8}), test::f32_view(r, {8, 4}), test::f32_view(x, {4, 8}),
                              TensorView(w.data(), DType::kF32, Shape{8}), 1e-6f)
                .code(),
            StatusCode::kInvalidArgument);
}

TEST(CpuElementwiseTest, AddAndSiluMul) {
  CpuBackend backend(2);
  for (int64_t rows : {1, 3, 40}) {
    for (int64_t f : {1, 9, 64, 1000}) {
      std::vector<float> a = test::random_floats(static_cast<size_t>(rows * f), 1, -8.0f, 8.0f);
      std::vector<float> b = test::random_floats(a.size(), 2, -8.0f, 8.0f);
      std::vector<float> out = poisoned(a.size());
      ASSERT_TRUE(
          backend.add(test::f32_view(out, {rows, f}), test::f32_view(a, {rows, f}), test::f32_view(b, {rows, f})).ok());
      for (size_t i = 0; i < a.size(); ++i)
        ASSERT_EQ(out[i], a[i] + b[i]);
      ASSERT_TRUE(
          backend.add(test::f32_view(a, {rows, f}), test::f32_view(a, {rows, f}), test::f32_view(b, {rows, f})).ok());
      EXPECT_EQ(a, out) << "out may alias a";

      std::vector<float> gate_up = test::random_floats(static_cast<size_t>(rows * 2 * f), 3, -10.0f, 10.0f);
      std::vector<float> act = poisoned(static_cast<size_t>(rows * f));
      ASSERT_TRUE(backend.silu_mul(test::f32_view(act, {rows, f}), test::f32_view(gate_up, {rows, 2 * f})).ok());
      for (int64_t t = 0; t < rows; ++t) {
        for (int64_t i = 0; i < f; ++i) {
          const double g = gate_up[t * 2 * f + i], u = gate_up[t * 2 * f + f + i];
          const double want = g / (1.0 + std::exp(-g)) * u;
          ASSERT_NEAR(act[t * f + i], want, 1e-6 * (std::fabs(want) + 1e-3)) << t << "," << i;
        }
      }
    }
  }
  std::vector<float> a(12), b(12), out(12);
  EXPECT_EQ(backend.add(test::f32_view(out, {3, 4}), test::f32_view(a, {3, 4}), test::f32_view(b, {4, 3})).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(backend.silu_mul(test::f32_view(out, {3, 3}), test::f32_view(a, {3, 4})).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(backend.silu_mul(test::f32_view(a, {3, 2}), test::f32_view(a, {3, 4})).code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace bw
