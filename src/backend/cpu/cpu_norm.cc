// rms_norm and add_rms_norm, in HF's order of operations (LlamaRMSNorm):
//   variance = mean(x^2) in f32;  out = weight * (x * (1 / sqrt(variance + eps))).
// Rows are independent tasks; the sum of squares is 8 lane-wise f32 partial sums (lane l
// takes i = l mod 8, in order) reduced in a fixed order, so results do not depend on the
// thread count.
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace bw::cpu {

namespace {

constexpr int64_t kMinRowsPerTask = 4;

float sum_of_squares(const float* x, int64_t n) {
  int64_t i = 0;
  float s = 0.0f;
#if BW_CPU_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  s = hsum8(acc);
#endif
  for (; i < n; ++i)
    s = std::fma(x[i], x[i], s);
  return s;
}

// out[i] = weight[i] * (x[i] * inv_rms); out may alias x.
void scale_row(const float* x, const float* weight, float inv_rms, int64_t n, float* out) {
  int64_t i = 0;
#if BW_CPU_AVX2
  const __m256 r = _mm256_set1_ps(inv_rms);
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(weight + i), _mm256_mul_ps(_mm256_loadu_ps(x + i), r)));
  }
#endif
  for (; i < n; ++i)
    out[i] = weight[i] * (x[i] * inv_rms);
}

float inverse_rms(const float* x, int64_t n, float eps) {
  const float variance = sum_of_squares(x, n) / static_cast<float>(n);
  return 1.0f / std::sqrt(variance + eps);
}

// Checks x-like [T, H] f32 tensors against each other and weight [H].
Status check_norm_args(std::string_view op, const TensorView& out, const TensorView& x, const TensorView& weight) {
  RETURN_IF_ERROR(expect_dtype(op, "x", x, DType::kF32));
  RETURN_IF_ERROR(expect_rank(op, "x", x, 2));
  RETURN_IF_ERROR(expect_dtype(op, "out", out, DType::kF32));
  if (!(out.shape == x.shape)) {
    return InvalidArgument("{}: out {} and x {} must have the same shape", op, out.shape.to_string(),
                           x.shape.to_string());
  }
  RETURN_IF_ERROR(expect_storage_dtype(op, "weight", weight));
  if (weight.rank() != 1 || weight.dim(0) != x.dim(1)) {
    return InvalidArgument("{}: weight {} must be [{}] for x {}", op, weight.shape.to_string(), x.dim(1),
                           x.shape.to_string());
  }
  RETURN_IF_ERROR(expect_data(op, "x", x));
  RETURN_IF_ERROR(expect_data(op, "out", out));
  return expect_data(op, "weight", weight);
}

std::vector<float> weight_f32(const TensorView& weight) {
  std::vector<float> w(static_cast<size_t>(weight.numel()));
  to_f32(weight.data, weight.dtype, weight.numel(), w.data());
  return w;
}

}  // namespace

Status rms_norm(ThreadPool& pool, TensorView out, const TensorView& x, const TensorView& weight, float eps) {
  RETURN_IF_ERROR(check_norm_args("rms_norm", out, x, weight));
  const int64_t rows = x.dim(0), h = x.dim(1);
  if (rows == 0 || h == 0) return OkStatus();
  const std::vector<float> w = weight_f32(weight);
  const float* xp = x.as<const float>();
  float* op = out.as<float>();
  pool.parallel_for(
      rows,
      [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const float* xr = xp + t * h;
          scale_row(xr, w.data(), inverse_rms(xr, h, eps), h, op + t * h);
        }
      },
      kMinRowsPerTask);
  return OkStatus();
}

Status add_rms_norm(ThreadPool& pool, TensorView out, TensorView residual, const TensorView& x,
                    const TensorView& weight, float eps) {
  RETURN_IF_ERROR(check_norm_args("add_rms_norm", out, x, weight));
  RETURN_IF_ERROR(expect_dtype("add_rms_norm", "residual", residual, DType::kF32));
  if (!(residual.shape == x.shape)) {
    return InvalidArgument("add_rms_norm: residual {} and x {} must have the same shape", residual.shape.to_string(),
                           x.shape.to_string());
  }
  RETURN_IF_ERROR(expect_data("add_rms_norm", "residual", residual));
  const int64_t rows = x.dim(0), h = x.dim(1);
  if (rows == 0 || h == 0) return OkStatus();
  const std::vector<float> w = weight_f32(weight);
  const float* xp = x.as<const float>();
  float* rp = residual.as<float>();
  float* op = out.as<float>();
  pool.parallel_for(
      rows,
      [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          float* r = rp + t * h;
          const float* xr = xp + t * h;
          for (int64_t i = 0; i < h; ++i)
            r[i] += xr[i];
          scale_row(r, w.data(), inverse_rms(r, h, eps), h, op + t * h);
        }
      },
      kMinRowsPerTask);
  return OkStatus();
}

}  // namespace bw::cpu
