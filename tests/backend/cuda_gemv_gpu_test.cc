// The GEMV kernel (CudaBackend::matmul with set_force_gemv(true), i.e. launch_gemv for
// every M) against the CPU backend on fresh random inputs: M = 1..17 (17 takes a second
// pass over x rows), K and N that are and are not multiples of the 16-byte chunk and of
// the rows per CTA, every weight dtype with f32 and bf16 activations, with and without
// bias, f32 output from bf16 activations, x at offsets that break 16-byte alignment, and
// the real decode shapes of the 1.5B and 7B models (M = 1 and 4, a sample of rows checked
// for the big ones). Outputs are poisoned with NaN first. The tolerance scales with
// sqrt(K) times the norm of the products (f32 accumulation in any order) plus one rounding
// to a 16-bit output. Skips when no CUDA device is present.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "cuda_test_util.h"
#include "support/test_support.h"

namespace bw {
namespace {

using test::Stored;

// The bf16 value nearest to a uniform draw in [-1, 1), as raw bits (fast enough for the
// 545M weights of a 7B LM head).
struct FastBf16 {
  uint64_t s;
  explicit FastBf16(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint16_t next() {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    const float f = static_cast<float>(static_cast<int64_t>(s >> 40) - (int64_t{1} << 23)) * 0x1p-23f;
    return f32_to_bf16(f);
  }
};

class CudaGemvTest : public test::CudaOpTest {
 protected:
  void SetUp() override {
    start({});
    if (gpu_ != nullptr) gpu_->set_force_gemv(true);
  }

  // Compares got[i, col[j]] with the CPU backend's x @ wrows^T (+ bias[col]), where wrows
  // holds the rows col of w (f32 values). Returns the number of mismatches.
  int check(const std::vector<float>& got, int64_t n, const std::vector<float>& x, int64_t m, int64_t k,
            const std::vector<float>& wrows, const std::vector<int64_t>& cols, const std::vector<float>& bias,
            DType out_dt, const std::string& what) {
    const auto nc = static_cast<int64_t>(cols.size());
    std::vector<float> ref(static_cast<size_t>(m * nc)), xc = x, wc = wrows, bc;
    for (int64_t c : cols)
      bc.push_back(bias.empty() ? 0.0f : bias[static_cast<size_t>(c)]);
    const Status s = cpu_.matmul(test::f32_view(ref, {m, nc}), test::f32_view(xc, {m, k}), test::f32_view(wc, {nc, k}),
                                 bias.empty() ? TensorView() : test::f32_view(bc, {nc}));
    EXPECT_TRUE(s.ok()) << s.to_string();
    int bad = 0;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < nc; ++j) {
        double l2 = 0;
        for (int64_t q = 0; q < k; ++q) {
          const double p = static_cast<double>(x[i * k + q]) * wrows[j * k + q];
          l2 += p * p;
        }
        const double want = ref[i * nc + j];
        const double tol = 1e-6 * std::sqrt(static_cast<double>(k)) * std::sqrt(l2) + 1e-6 +
                           (out_dt == DType::kF32 ? 0.0 : 0x1p-8 * std::abs(want));
        const double g = got[static_cast<size_t>(i * n + cols[j])];
        if (!(std::abs(g - want) <= tol) && ++bad <= 3) {
          ADD_FAILURE() << what << " [" << i << "," << cols[j] << "]: got " << g << " want " << want << " tol " << tol;
        }
      }
    }
    return bad;
  }

  // One matmul on random inputs, every row checked. x_offset: bytes the x data starts
  // past a 256-byte aligned allocation.
  void run(DType act, DType wt, int64_t m, int64_t n, int64_t k, bool with_bias, bool f32_out, uint32_t seed,
           size_t x_offset = 0) {
    const std::string what = "act " + test::dtype_str(act) + " w " + test::dtype_str(wt) + " m" + std::to_string(m) +
                             " n" + std::to_string(n) + " k" + std::to_string(k) + (with_bias ? " bias" : "") +
                             (f32_out ? " f32out" : "") + " xoff" + std::to_string(x_offset);
    SCOPED_TRACE(what);
    const Stored x(test::random_floats(static_cast<size_t>(m * k), seed), act);
    const Stored w(test::random_floats(static_cast<size_t>(n * k), seed + 1), wt);
    const Stored b(test::random_floats(static_cast<size_t>(n), seed + 2), act);
    const DType out_dt = f32_out ? DType::kF32 : act;
    TensorView out = poisoned(out_dt, {m, n});
    const Status s =
        gpu_->matmul(out, upload(x, {m, k}, x_offset), upload(w, {n, k}), with_bias ? upload(b, {n}) : TensorView());
    ASSERT_TRUE(s.ok()) << s.to_string();
    std::vector<int64_t> cols(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j)
      cols[static_cast<size_t>(j)] = j;
    EXPECT_EQ(check(download(out), n, x.values, m, k, w.values, cols, with_bias ? b.values : std::vector<float>{},
                    out_dt, what),
              0);
  }

  // A real decode shape with bf16 weights and activations: the whole w on the GPU, a
  // sample of its rows (the first, the last, and random ones) checked.
  void run_real(int64_t n, int64_t k, bool with_bias, bool f32_out, uint32_t seed) {
    std::vector<uint16_t> wbits(static_cast<size_t>(n * k));
    FastBf16 rng(seed);
    for (uint16_t& v : wbits)
      v = rng.next();
    const TensorView wv = upload_raw(wbits.data(), wbits.size() * 2, DType::kBF16, {n, k});
    for (int64_t m : {1, 4, 9, 16})  // the single-row kernel; the tensor-core path without and with x rows 8-15
      run_real_m(m, wv, wbits, with_bias, f32_out, seed + static_cast<uint32_t>(m));
  }
  void run_real_m(int64_t m, const TensorView& wv, const std::vector<uint16_t>& wbits, bool with_bias, bool f32_out,
                  uint32_t seed) {
    const int64_t n = wv.dim(0), k = wv.dim(1);
    const std::string what = "real m" + std::to_string(m) + " n" + std::to_string(n) + " k" + std::to_string(k);
    SCOPED_TRACE(what);
    const Stored x(test::random_floats(static_cast<size_t>(m * k), seed + 1), DType::kBF16);
    const Stored b(test::random_floats(static_cast<size_t>(n), seed + 2), DType::kBF16);
    const DType out_dt = f32_out ? DType::kF32 : DType::kBF16;
    TensorView out = poisoned(out_dt, {m, n});
    const Status s = gpu_->matmul(out, upload(x, {m, k}), wv, with_bias ? upload(b, {n}) : TensorView());
    ASSERT_TRUE(s.ok()) << s.to_string();
    std::vector<int64_t> cols = {0, n - 1};
    std::mt19937 pick(seed);
    std::uniform_int_distribution<int64_t> any(0, n - 1);
    for (int i = 0; i < 62; ++i)
      cols.push_back(any(pick));
    std::vector<float> wrows;
    wrows.reserve(cols.size() * static_cast<size_t>(k));
    for (int64_t c : cols)
      for (int64_t q = 0; q < k; ++q)
        wrows.push_back(bf16_to_f32(wbits[static_cast<size_t>(c * k + q)]));
    const std::vector<float> got = download(out);
    EXPECT_EQ(check(got, n, x.values, m, k, wrows, cols, with_bias ? b.values : std::vector<float>{}, out_dt, what), 0);
    // Every output written (no NaN poison left), not just the sampled rows.
    int nans = 0;
    for (float v : got)
      nans += std::isnan(v) ? 1 : 0;
    EXPECT_EQ(nans, 0) << what;
  }
};

constexpr DType kActs[] = {DType::kF32, DType::kBF16};
constexpr DType kWeights[] = {DType::kF32, DType::kF16, DType::kBF16};

TEST_F(CudaGemvTest, EveryMFrom1To17MatchesTheCpu) {
  uint32_t seed = 1000;
  // K: not a multiple of 4 or 8, a multiple of 4 only, multiples of 8 (one chunk per
  // lane or several, with a ragged last round). N: 1, odd, not a multiple of 8.
  const std::pair<int64_t, int64_t> shapes[] = {{1, 8}, {33, 37}, {7, 1004}, {129, 264}, {13, 2056}};
  for (DType act : kActs) {
    for (DType wt : kWeights) {
      for (int64_t m = 1; m <= 17; ++m) {
        for (auto [n, k] : shapes) {
          run(act, wt, m, n, k, /*with_bias=*/(m + n + k) % 2 == 1, /*f32_out=*/false, seed++);
        }
      }
    }
  }
}

TEST_F(CudaGemvTest, SmallNLargeKSplitsRowsAcrossWarps) {
  // Few rows and long ones: several warps share a row (and a CTA holds rows past N).
  uint32_t seed = 2000;
  for (DType wt : kWeights) {
    for (int64_t m : {1, 2, 5, 16}) {
      run(DType::kBF16, wt, m, 3, 8960, /*with_bias=*/true, /*f32_out=*/false, seed++);
      run(DType::kBF16, wt, m, 11, 4096 + 8, /*with_bias=*/false, /*f32_out=*/false, seed++);
      run(DType::kF32, wt, m, 5, 3000, /*with_bias=*/true, /*f32_out=*/false, seed++);
    }
  }
}

TEST_F(CudaGemvTest, F32OutputFromBf16Activations) {
  uint32_t seed = 3000;
  for (DType wt : kWeights) {
    for (int64_t m : {1, 3, 8, 17}) {
      run(DType::kBF16, wt, m, 300, 256, /*with_bias=*/false, /*f32_out=*/true, seed++);
      run(DType::kBF16, wt, m, 45, 1001, /*with_bias=*/true, /*f32_out=*/true, seed++);
    }
  }
}

TEST_F(CudaGemvTest, BiasInEveryDtype) {
  // The bias is read in its own dtype (f32 bias with bf16 activations, and the reverse).
  for (DType bias_dt : kWeights) {
    const int64_t m = 2, n = 70, k = 512;
    const Stored x(test::random_floats(m * k, 41), DType::kBF16);
    const Stored w(test::random_floats(n * k, 42), DType::kBF16);
    const Stored b(test::random_floats(n, 43), bias_dt);
    TensorView out = poisoned(DType::kBF16, {m, n});
    ASSERT_TRUE(gpu_->matmul(out, upload(x, {m, k}), upload(w, {n, k}), upload(b, {n})).ok());
    std::vector<int64_t> cols(n);
    for (int64_t j = 0; j < n; ++j)
      cols[static_cast<size_t>(j)] = j;
    EXPECT_EQ(check(download(out), n, x.values, m, k, w.values, cols, b.values, DType::kBF16,
                    "bias " + test::dtype_str(bias_dt)),
              0);
  }
}

TEST_F(CudaGemvTest, UnalignedActivations) {
  // x starting 2, 4, 8 or 12 bytes past 16-byte alignment: the kernel must not issue
  // misaligned vector loads (8-byte aligned bf16 x still takes 8-byte loads for f32 w).
  uint32_t seed = 4000;
  for (size_t off : {2, 4, 8, 12}) {
    for (DType wt : kWeights) {
      for (int64_t m : {1, 4, 16}) {
        run(DType::kBF16, wt, m, 40, 1536, /*with_bias=*/true, /*f32_out=*/false, seed++, off);
        if (off % 4 == 0) run(DType::kF32, wt, m, 40, 1536, /*with_bias=*/false, /*f32_out=*/false, seed++, off);
      }
    }
  }
}

TEST_F(CudaGemvTest, SingleRowKernelForManyRows) {
  // M = 1 with at least 16 rows per SM takes the single-row kernel (cuda_gemv_rows.cu):
  // N at that bound (one row per warp) and past it (several rows per warp, some warps
  // with one fewer); K of one chunk, of a ragged last step (33 and 125 chunks), and of
  // many steps; both 2-byte weight types, f32 and bf16 x, bias, f32 output.
  uint32_t seed = 6000;
  int sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  const int64_t bound = 16 * static_cast<int64_t>(sms);
  const std::pair<int64_t, int64_t> shapes[] = {{bound, 264}, {9001, 1000}, {30011, 8}, {12345, 3592}};
  for (DType act : kActs) {
    for (DType wt : {DType::kBF16, DType::kF16}) {
      for (auto [n, k] : shapes) {
        const bool bias = (n + k) % 2 == 0 || wt == DType::kF16;
        run(act, wt, 1, n, k, bias, /*f32_out=*/false, seed++);
        if (act == DType::kBF16) run(act, wt, 1, n, k, !bias, /*f32_out=*/true, seed++);
      }
    }
  }
}

TEST_F(CudaGemvTest, LargeMTakesSeveralPasses) {
  run(DType::kBF16, DType::kBF16, 40, 64, 256, /*with_bias=*/true, /*f32_out=*/false, 51);
  run(DType::kF32, DType::kF16, 33, 17, 96, /*with_bias=*/false, /*f32_out=*/false, 52);
  run(DType::kBF16, DType::kBF16, 35, 100, 1536, /*with_bias=*/false, /*f32_out=*/true, 53);
}

struct RealShape {
  int64_t n, k;
  bool bias, f32_out;
};

TEST_F(CudaGemvTest, DecodeShapesOfThe15BAnd7BModels) {
  const RealShape shapes[] = {
      {2048, 1536, true, false},   {1536, 1536, false, false},  {17920, 1536, false, false},
      {1536, 8960, false, false},  {151936, 1536, false, true}, {4608, 3584, true, false},
      {3584, 3584, false, false},  {37888, 3584, false, false}, {3584, 18944, false, false},
      {152064, 3584, false, true},
  };
  uint32_t seed = 5000;
  for (const RealShape& s : shapes) {
    run_real(s.n, s.k, s.bias, s.f32_out, seed);
    seed += 10;
    buffers_.clear();  // the 7B LM head is 1 GiB
  }
}

}  // namespace
}  // namespace bw
