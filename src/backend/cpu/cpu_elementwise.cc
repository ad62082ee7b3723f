// Row gathers and elementwise ops: embedding, add, silu_mul. Each output element depends
// on its own inputs only, so any split over rows or elements is deterministic.
#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_ops.h"

namespace bw::cpu {

namespace {

constexpr int64_t kMinElementsPerTask = 16384;

// Rows per task so that a task has at least kMinElementsPerTask elements.
int64_t min_rows(int64_t row_elements) {
  return row_elements <= 0 ? 1 : std::max<int64_t>(1, kMinElementsPerTask / row_elements);
}

}  // namespace

Status embedding(ThreadPool& pool, TensorView out, const TensorView& table, const TensorView& ids) {
  constexpr std::string_view kOp = "embedding";
  RETURN_IF_ERROR(expect_storage_dtype(kOp, "table", table));
  RETURN_IF_ERROR(expect_rank(kOp, "table", table, 2));
  RETURN_IF_ERROR(expect_dtype(kOp, "ids", ids, DType::kI32));
  RETURN_IF_ERROR(expect_rank(kOp, "ids", ids, 1));
  RETURN_IF_ERROR(expect_dtype(kOp, "out", out, DType::kF32));
  RETURN_IF_ERROR(expect_rank(kOp, "out", out, 2));
  const int64_t vocab = table.dim(0), h = table.dim(1), num_tokens = ids.dim(0);
  if (out.dim(0) != num_tokens || out.dim(1) != h) {
    return InvalidArgument("embedding: out {} must be [{}, {}] for ids {} and table {}", out.shape.to_string(),
                           num_tokens, h, ids.shape.to_string(), table.shape.to_string());
  }
  RETURN_IF_ERROR(expect_data(kOp, "table", table));
  RETURN_IF_ERROR(expect_data(kOp, "ids", ids));
  RETURN_IF_ERROR(expect_data(kOp, "out", out));
  const int32_t* id = ids.as<const int32_t>();
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (id[t] < 0 || id[t] >= vocab) {
      return InvalidArgument("embedding: ids[{}] = {} is outside the table's [0, {}) rows", t, id[t], vocab);
    }
  }
  if (overlaps(out, table)) return InvalidArgument("embedding: out {} must not overlap table", describe(out));
  const auto* tp = static_cast<const uint8_t*>(table.data);
  const int64_t row_bytes = h * storage_bytes(table.dtype);
  float* op = out.as<float>();
  pool.parallel_for(
      num_tokens,
      [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t)
          to_f32(tp + id[t] * row_bytes, table.dtype, h, op + t * h);
      },
      min_rows(h));
  return OkStatus();
}

Status add(ThreadPool& pool, TensorView out, const TensorView& a, const TensorView& b) {
  constexpr std::string_view kOp = "add";
  RETURN_IF_ERROR(expect_dtype(kOp, "a", a, DType::kF32));
  RETURN_IF_ERROR(expect_dtype(kOp, "b", b, DType::kF32));
  RETURN_IF_ERROR(expect_dtype(kOp, "out", out, DType::kF32));
  if (!(a.shape == b.shape) || !(out.shape == a.shape)) {
    return InvalidArgument("add: out {}, a {} and b {} must have the same shape", out.shape.to_string(),
                           a.shape.to_string(), b.shape.to_string());
  }
  RETURN_IF_ERROR(expect_data(kOp, "a", a));
  RETURN_IF_ERROR(expect_data(kOp, "b", b));
  RETURN_IF_ERROR(expect_data(kOp, "out", out));
  const float* ap = a.as<const float>();
  const float* bp = b.as<const float>();
  float* op = out.as<float>();
  pool.parallel_for(
      a.numel(),
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          op[i] = ap[i] + bp[i];
      },
      kMinElementsPerTask);
  return OkStatus();
}

Status silu_mul(ThreadPool& pool, TensorView out, const TensorView& gate_up) {
  constexpr std::string_view kOp = "silu_mul";
  RETURN_IF_ERROR(expect_dtype(kOp, "gate_up", gate_up, DType::kF32));
  RETURN_IF_ERROR(expect_rank(kOp, "gate_up", gate_up, 2));
  RETURN_IF_ERROR(expect_dtype(kOp, "out", out, DType::kF32));
  RETURN_IF_ERROR(expect_rank(kOp, "out", out, 2));
  const int64_t rows = gate_up.dim(0), f = out.dim(1);
  if (gate_up.dim(1) != 2 * f || out.dim(0) != rows) {
    return InvalidArgument("silu_mul: gate_up {} must be [T, 2F] for out {} = [T, F]", gate_up.shape.to_string(),
                           out.shape.to_string());
  }
  RETURN_IF_ERROR(expect_data(kOp, "gate_up", gate_up));
  RETURN_IF_ERROR(expect_data(kOp, "out", out));
  if (overlaps(out, gate_up)) {
    return InvalidArgument("silu_mul: out {} must not overlap gate_up {}", out.shape.to_string(),
                           gate_up.shape.to_string());
  }
  const float* gp = gate_up.as<const float>();
  float* op = out.as<float>();
  pool.parallel_for(
      rows,
      [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const float* g = gp + t * 2 * f;
          const float* u = g + f;
          float* o = op + t * f;
          for (int64_t i = 0; i < f; ++i)
            o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
        }
      },
      min_rows(f));
  return OkStatus();
}

}  // namespace bw::cpu
