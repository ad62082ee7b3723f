#include "tensor/tensor_view.h"

#include <fmt/format.h>

namespace bw {

std::string Shape::to_string() const {
  std::string s = "[";
  for (int i = 0; i < rank_; ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(dims_[i]);
  }
  return s + "]";
}

TensorView TensorView::slice_rows(int64_t begin, int64_t end) const {
  assert(rank() >= 1 && begin >= 0 && begin <= end && end <= shape[0]);
  Shape s = shape;
  const int64_t inner = shape[0] == 0 ? 0 : numel() / shape[0];
  s[0] = end - begin;
  const uint64_t offset = dtype_bytes(dtype, static_cast<uint64_t>(begin * inner)).value_or(0);
  return TensorView(static_cast<uint8_t*>(data) + offset, dtype, s);
}

}  // namespace bw
