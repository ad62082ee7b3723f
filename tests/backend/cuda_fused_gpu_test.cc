// The CUDA backend's fused decoder steps (norm_qkv_rope_write_kv, norm_gate_up_silu_mul,
// matmul_add) against the CPU backend's composition of the separate ops, on fresh random
// inputs: ragged K (a partial last 512-byte step), several head shapes, with and without
// the QKV bias, a skipped cache write (slot -1), large rotary angles; batch 1 in bf16 (the
// fused single-row kernel, counted, so the test fails if the fused path stops being taken)
// and the composed fallback (f32, M > 1).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/cuda/cuda_kernels.h"
#include "cuda_test_util.h"
#include "support/test_support.h"

namespace bw {
namespace {

using test::expect_close;
using test::Stored;

class CudaFusedTest : public test::CudaOpTest {
 protected:
  void SetUp() override { start({}); }

  // Random values rounded to `dtype`, as f32.
  static std::vector<float> values(size_t n, uint32_t seed, DType dtype, float offset = 0.0f) {
    std::vector<float> v = test::random_floats(n, seed);
    for (float& x : v)
      x += offset;
    return Stored(v, dtype).values;
  }
  static double max_abs(const std::vector<float>& v) {
    double m = 0;
    for (float x : v)
      m = std::max(m, static_cast<double>(std::abs(x)));
    return m;
  }
  // The fused kernel runs for one bf16 token unless the environment turns it off (the A/B
  // switches); everything else is the composed fallback.
  static bool fused(DType act, int64_t tokens) {
    const auto off = [](const char* name) {
      const char* v = std::getenv(name);
      return v != nullptr && std::string(v) == "0";
    };
    return act == DType::kBF16 && tokens == 1 && !off("BW_CUDA_FUSE") && !off("BW_GEMV_ROWS");
  }
  // Tolerance of bf16 outputs: a few roundings of values of the output's scale.
  static double atol(DType act, const std::vector<float>& want) {
    return (act == DType::kF32 ? 1e-5 : 0x1p-7) * std::max(1.0, max_abs(want));
  }
};

struct QkvCase {
  int hq, hkv, d;
  int64_t k;
  bool bias;
};

TEST_F(CudaFusedTest, NormQkvRopeWriteKvMatchesTheCpu) {
  uint32_t seed = 7100;
  const QkvCase cases[] = {{4, 2, 16, 64, true}, {12, 2, 128, 1536, true}, {8, 1, 64, 1000, false}};
  for (const QkvCase& c : cases) {
    for (DType act : {DType::kBF16, DType::kF32}) {
      for (int tokens : {1, 2}) {
        for (bool skip_write : {false, true}) {
          SCOPED_TRACE(::testing::Message()
                       << "hq " << c.hq << " hkv " << c.hkv << " d " << c.d << " k " << c.k << " act "
                       << test::dtype_str(act) << " tokens " << tokens << (skip_write ? " slot -1" : ""));
          std::vector<test::SeqSpec> specs(static_cast<size_t>(tokens), test::SeqSpec{1, 3037});
          test::AttentionBatch b(specs, 16, seed++);
          if (skip_write) b.slot_mapping[0] = -1;
          const int64_t T = tokens, K = c.k;
          const int64_t width = static_cast<int64_t>(c.hq + 2 * c.hkv) * c.d;
          const AttentionParams p{c.hq, c.hkv, c.d, 1.0f};
          RopeParams rope;
          rope.theta = 10000.0f;
          rope.rotary_dim = c.d;
          const Shape cs{b.num_blocks, b.block_size, c.hkv, c.d};
          const std::vector<float> x = values(static_cast<size_t>(T * K), seed++, act);
          const std::vector<float> g = values(static_cast<size_t>(K), seed++, act, 1.0f);
          const Stored w(values(static_cast<size_t>(width * K), seed++, DType::kBF16), act);
          const std::vector<float> bias = values(static_cast<size_t>(width), seed++, act);
          const Stored poison(test::poisoned(static_cast<size_t>(cs.numel())), act);

          TensorView qkv = poisoned(act, {T, width});
          TensorView scratch = poisoned(act, {T, K});
          KvCacheLayer gc{upload(poison, cs), upload(poison, cs)};
          const NormedInput in{upload(Stored(x, act), {T, K}), upload(Stored(g, act), {K}), 1e-6f, scratch};
          const int64_t launches = cuda::gemv_rows_fused_launches();
          const TensorView bias_dev = c.bias ? upload(Stored(bias, act), {width}) : TensorView();
          const Status st = gpu_->norm_qkv_rope_write_kv(qkv, in, upload(w, {width, K}), bias_dev, p, rope,
                                                         device_meta(b, b.max_query_len, b.max_kv_len()), gc);
          ASSERT_TRUE(st.ok()) << st.to_string();

          std::vector<float> xc = x, gcw = g, wc = w.values, bc = bias, hidden(static_cast<size_t>(T * K));
          std::vector<float> want(static_cast<size_t>(T * width));
          Stored kc = poison, vc = poison;
          KvCacheLayer cc{kc.view(cs), vc.view(cs)};
          const NormedInput cin{test::f32_view(xc, {T, K}), test::f32_view(gcw, {K}), 1e-6f,
                                test::f32_view(hidden, {T, K})};
          ASSERT_TRUE(cpu_.norm_qkv_rope_write_kv(test::f32_view(want, {T, width}), cin, test::f32_view(wc, {width, K}),
                                                  c.bias ? test::f32_view(bc, {width}) : TensorView(), p, rope,
                                                  b.host_meta(), cc)
                          .ok());
          const double tol = atol(act, want);
          const double rtol = act == DType::kF32 ? 1e-5 : 0x1p-7;
          expect_close(download(qkv), want, tol, rtol, "qkv");
          for (const auto& [dev, host] : {std::pair{gc.k, &kc}, std::pair{gc.v, &vc}}) {
            const std::vector<float> got = download(dev);
            int bad = 0;
            for (size_t i = 0; i < got.size(); ++i) {
              const float ref = host->read(i);
              const bool ok =
                  std::isnan(ref) ? std::isnan(got[i]) : std::abs(got[i] - ref) <= tol + rtol * std::abs(ref);
              if (!ok && ++bad <= 3) ADD_FAILURE() << "cache [" << i << "] got " << got[i] << " want " << ref;
            }
            EXPECT_EQ(bad, 0);
          }
          EXPECT_EQ(cuda::gemv_rows_fused_launches() - launches, fused(act, T) ? 1 : 0);
        }
      }
    }
  }
}

TEST_F(CudaFusedTest, NormGateUpSiluMulMatchesTheCpu) {
  uint32_t seed = 7300;
  for (auto [f, k] : {std::pair<int64_t, int64_t>{8, 64}, {300, 1000}, {2240, 1536}}) {
    for (DType act : {DType::kBF16, DType::kF32}) {
      for (int64_t T : {1, 3}) {
        SCOPED_TRACE(::testing::Message() << "f " << f << " k " << k << " act " << test::dtype_str(act) << " T " << T);
        const std::vector<float> x = values(static_cast<size_t>(T * k), seed++, act);
        const std::vector<float> g = values(static_cast<size_t>(k), seed++, act, 1.0f);
        const Stored w(values(static_cast<size_t>(2 * f * k), seed++, DType::kBF16), act);
        TensorView out = poisoned(act, {T, f});
        TensorView gate_up = poisoned(act, {T, 2 * f});
        TensorView scratch = poisoned(act, {T, k});
        const NormedInput in{upload(Stored(x, act), {T, k}), upload(Stored(g, act), {k}), 1e-5f, scratch};
        const int64_t launches = cuda::gemv_rows_fused_launches();
        const Status st = gpu_->norm_gate_up_silu_mul(out, gate_up, in, upload(w, {2 * f, k}));
        ASSERT_TRUE(st.ok()) << st.to_string();

        std::vector<float> xc = x, gcw = g, wc = w.values, hidden(static_cast<size_t>(T * k));
        std::vector<float> gu(static_cast<size_t>(T * 2 * f)), want(static_cast<size_t>(T * f));
        const NormedInput cin{test::f32_view(xc, {T, k}), test::f32_view(gcw, {k}), 1e-5f,
                              test::f32_view(hidden, {T, k})};
        ASSERT_TRUE(cpu_.norm_gate_up_silu_mul(test::f32_view(want, {T, f}), test::f32_view(gu, {T, 2 * f}), cin,
                                               test::f32_view(wc, {2 * f, k}))
                        .ok());
        expect_close(download(out), want, atol(act, want), act == DType::kF32 ? 1e-5 : 0x1p-6, "silu(gate) * up");
        EXPECT_EQ(cuda::gemv_rows_fused_launches() - launches, fused(act, T) ? 1 : 0);
      }
    }
  }
}

TEST_F(CudaFusedTest, MatmulAddAccumulatesIntoTheResidual) {
  uint32_t seed = 7500;
  // 4,224 rows take the single-row kernel at M = 1 on GPUs of up to 264 SMs.
  for (auto [n, k] : {std::pair<int64_t, int64_t>{96, 1536}, {4224, 256}, {33, 40}}) {
    for (DType act : {DType::kBF16, DType::kF32}) {
      for (int64_t m : {1, 5, 12, 40}) {
        SCOPED_TRACE(::testing::Message() << "n " << n << " k " << k << " act " << test::dtype_str(act) << " m " << m);
        const std::vector<float> x = values(static_cast<size_t>(m * k), seed++, act);
        const std::vector<float> r = values(static_cast<size_t>(m * n), seed++, act);
        const Stored w(values(static_cast<size_t>(n * k), seed++, DType::kBF16), DType::kBF16);
        TensorView residual = upload(Stored(r, act), {m, n});
        const Status st =
            gpu_->matmul_add(residual, poisoned(act, {m, n}), upload(Stored(x, act), {m, k}), upload(w, {n, k}));
        ASSERT_TRUE(st.ok()) << st.to_string();
        std::vector<float> xc = x, wc = w.values, prod(static_cast<size_t>(m * n));
        ASSERT_TRUE(cpu_.matmul(test::f32_view(prod, {m, n}), test::f32_view(xc, {m, k}), test::f32_view(wc, {n, k}),
                                TensorView())
                        .ok());
        std::vector<float> want = r;
        for (size_t i = 0; i < want.size(); ++i)
          want[i] += prod[i];
        // bf16: the product and the sum are each rounded once (cuBLASLt: once).
        expect_close(download(residual), want, (act == DType::kF32 ? 1e-5 : 0x1p-7) * max_abs(prod),
                     act == DType::kF32 ? 1e-5 : 0x1p-7, "residual");
      }
    }
  }
}

TEST_F(CudaFusedTest, BadShapesAreInvalidArgument) {
  const DType act = DType::kBF16;
  TensorView x = poisoned(act, {1, 64});
  TensorView g = poisoned(act, {64});
  TensorView w = poisoned(act, {32, 64});
  TensorView scratch = poisoned(act, {1, 64});
  const NormedInput in{x, g, 1e-6f, scratch};
  // out must be [1, F] for w [2F, K].
  EXPECT_EQ(gpu_->norm_gate_up_silu_mul(poisoned(act, {1, 15}), poisoned(act, {1, 32}), in, w).code(),
            StatusCode::kInvalidArgument);
  // The norm weight must match K (the norm runs first, and checks it).
  const NormedInput bad_norm{x, poisoned(act, {63}), 1e-6f, scratch};
  EXPECT_EQ(gpu_->norm_gate_up_silu_mul(poisoned(act, {1, 16}), poisoned(act, {1, 32}), bad_norm, w).code(),
            StatusCode::kInvalidArgument);
  // matmul_add: residual [M, N] for x [M, K] @ w [N, K]^T.
  EXPECT_EQ(gpu_->matmul_add(poisoned(act, {1, 31}), poisoned(act, {1, 31}), x, w).code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace bw
