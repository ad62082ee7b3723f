// CpuBackend::matmul against a double-accumulation reference over a sweep of shapes
// (odd K, N not a multiple of 8, the GEMV and GEMM paths, K blocking, several tasks),
// every weight dtype, with and without bias, and 1 vs 4 threads bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "cpu_test_util.h"
#include "support/test_support.h"

namespace bw {
namespace {

using test::poisoned;
using test::Stored;

struct MatmulCase {
  int64_t m, k, n;
};

// out[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]) in double, with the tolerance of an
// f32 accumulation of K products: (K + 2) * eps_f32 * (sum |x w| + |bias|).
void reference_matmul(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>* bias,
                      int64_t m_dim, int64_t k_dim, int64_t n_dim, std::vector<double>* ref, std::vector<double>* tol) {
  ref->assign(static_cast<size_t>(m_dim * n_dim), 0.0);
  tol->assign(static_cast<size_t>(m_dim * n_dim), 0.0);
  for (int64_t m = 0; m < m_dim; ++m) {
    for (int64_t n = 0; n < n_dim; ++n) {
      double s = 0.0, mag = 0.0;
      for (int64_t k = 0; k < k_dim; ++k) {
        const double p = static_cast<double>(x[m * k_dim + k]) * w[n * k_dim + k];
        s += p;
        mag += std::fabs(p);
      }
      if (bias != nullptr) {
        s += (*bias)[n];
        mag += std::fabs((*bias)[n]);
      }
      (*ref)[m * n_dim + n] = s;
      (*tol)[m * n_dim + n] = static_cast<double>(k_dim + 2) * test::dtype_epsilon(DType::kF32) * mag + 1e-30;
    }
  }
}

void check_matmul(CpuBackend& backend, const MatmulCase& c, DType w_dtype, bool with_bias, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << "M=" << c.m << " K=" << c.k << " N=" << c.n << " w=" << test::dtype_str(w_dtype)
                                  << " bias=" << with_bias);
  std::vector<float> x = test::random_floats(static_cast<size_t>(c.m * c.k), seed, -1.0f, 1.0f);
  Stored w(test::random_floats(static_cast<size_t>(c.n * c.k), seed + 1, -1.0f, 1.0f), w_dtype);
  Stored bias(test::random_floats(static_cast<size_t>(c.n), seed + 2, -2.0f, 2.0f), w_dtype);
  std::vector<float> out = poisoned(static_cast<size_t>(c.m * c.n));

  const Status st = backend.matmul(test::f32_view(out, {c.m, c.n}), test::f32_view(x, {c.m, c.k}), w.view({c.n, c.k}),
                                   with_bias ? bias.view({c.n}) : TensorView());
  ASSERT_TRUE(st.ok()) << st.to_string();

  std::vector<double> ref, tol;
  reference_matmul(x, w.values, with_bias ? &bias.values : nullptr, c.m, c.k, c.n, &ref, &tol);
  for (int64_t i = 0; i < c.m * c.n; ++i) {
    ASSERT_TRUE(std::isfinite(out[i])) << "unwritten output at m=" << i / c.n << " n=" << i % c.n;
    ASSERT_NEAR(out[i], ref[i], tol[i]) << "m=" << i / c.n << " n=" << i % c.n;
  }
}

TEST(CpuMatmulTest, SweepOfShapesDtypesAndBias) {
  CpuBackend backend(2);
  uint32_t seed = 1;
  for (int64_t m : {1, 2, 3, 4, 7, 33}) {
    for (int64_t k : {1, 7, 63, 64, 129}) {
      for (int64_t n : {1, 13, 70}) {
        for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
          for (bool with_bias : {false, true})
            check_matmul(backend, {m, k, n}, dt, with_bias, seed++);
        }
      }
    }
  }
}

TEST(CpuMatmulTest, LargerShapesCrossTaskAndKBlockBoundaries) {
  CpuBackend backend(3);
  uint32_t seed = 1000;
  // K > 512 exercises K blocking, N > 32 several w tiles, M > 48 several x tiles.
  const MatmulCase cases[] = {{1, 600, 130},   {2, 513, 97}, {3, 300, 33}, {200, 600, 130},
                              {33, 1030, 200}, {6, 256, 16}, {12, 512, 64}};
  for (const auto& c : cases) {
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16})
      check_matmul(backend, c, dt, true, seed++);
  }
}

TEST(CpuMatmulTest, ZeroSizedDimensions) {
  CpuBackend backend(2);
  // K = 0: out = bias (or 0).
  std::vector<float> x(1), out = poisoned(3 * 5);
  std::vector<float> w(1), bias = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
  ASSERT_TRUE(backend
                  .matmul(test::f32_view(out, {3, 5}), TensorView(x.data(), DType::kF32, Shape{3, 0}),
                          TensorView(w.data(), DType::kF32, Shape{5, 0}), test::f32_view(bias, {5}))
                  .ok());
  for (int64_t i = 0; i < 15; ++i)
    EXPECT_EQ(out[i], bias[i % 5]);
  std::vector<float> out0 = poisoned(8 * 4);
  ASSERT_TRUE(backend
                  .matmul(test::f32_view(out0, {8, 4}), TensorView(x.data(), DType::kF32, Shape{8, 0}),
                          TensorView(w.data(), DType::kF32, Shape{4, 0}), TensorView())
                  .ok());
  for (float v : out0)
    EXPECT_EQ(v, 0.0f);
  // M = 0 writes nothing.
  ASSERT_TRUE(backend
                  .matmul(TensorView(out.data(), DType::kF32, Shape{0, 5}),
                          TensorView(x.data(), DType::kF32, Shape{0, 3}),
                          TensorView(w.data(), DType::kF32, Shape{5, 3}), TensorView())
                  .ok());
}

TEST(CpuMatmulTest, RejectsMismatchedShapesAndDtypes) {
  CpuBackend backend(2);
  std::vector<float> x(4 * 64), w(32 * 65), out(4 * 32), bias(31);
  Status st = backend.matmul(test::f32_view(out, {4, 32}), test::f32_view(x, {4, 64}), test::f32_view(w, {32, 65}),
                             TensorView());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "matmul: x [4, 64] and w [32, 65] disagree on K");

  st = backend.matmul(test::f32_view(out, {4, 32}), test::f32_view(x, {4, 64}), test::f32_view(w, {32, 64}),
                      test::f32_view(bias, {31}));
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("bias [31]"), std::string::npos) << st.message();

  st = backend.matmul(test::f32_view(out, {4, 31}), test::f32_view(x, {4, 64}), test::f32_view(w, {32, 64}),
                      TensorView());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("out [4, 31]"), std::string::npos) << st.message();

  st = backend.matmul(test::f32_view(out, {4, 32}), TensorView(x.data(), DType::kI32, Shape{4, 64}),
                      test::f32_view(w, {32, 64}), TensorView());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);

  st = backend.matmul(test::f32_view(out, {4, 32}), test::f32_view(x, {4, 64}),
                      TensorView(w.data(), DType::kQ8_0, Shape{32, 64}), TensorView());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);

  st =
      backend.matmul(test::f32_view(out, {4, 32}), test::f32_view(x, {256}), test::f32_view(w, {32, 64}), TensorView());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);

  // out aliasing x.
  st =
      backend.matmul(test::f32_view(x, {4, 32}), test::f32_view(x, {4, 64}), test::f32_view(w, {32, 64}), TensorView());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
}

TEST(CpuDeterminismTest, MatmulIsBitIdenticalAcrossThreadCounts) {
  CpuBackend one(1), four(4);
  uint32_t seed = 77;
  const MatmulCase cases[] = {{1, 1536, 300}, {3, 129, 70}, {57, 700, 200}, {200, 300, 130}};
  for (const auto& c : cases) {
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
      std::vector<float> x = test::random_floats(static_cast<size_t>(c.m * c.k), seed++);
      Stored w(test::random_floats(static_cast<size_t>(c.n * c.k), seed++), dt);
      Stored bias(test::random_floats(static_cast<size_t>(c.n), seed++), dt);
      std::vector<float> a = poisoned(static_cast<size_t>(c.m * c.n)), b = a;
      ASSERT_TRUE(
          one.matmul(test::f32_view(a, {c.m, c.n}), test::f32_view(x, {c.m, c.k}), w.view({c.n, c.k}), bias.view({c.n}))
              .ok());
      ASSERT_TRUE(four.matmul(test::f32_view(b, {c.m, c.n}), test::f32_view(x, {c.m, c.k}), w.view({c.n, c.k}),
                              bias.view({c.n}))
                      .ok());
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
          << "M=" << c.m << " K=" << c.k << " N=" << c.n << " w=" << test::dtype_str(dt);
    }
  }
}

}  // namespace
}  // namespace bw
