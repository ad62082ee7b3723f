// TensorView: a non-owning view of a contiguous, row-major tensor (last dimension fastest)
// in some backend's memory. Views never own; whoever allocated the memory keeps it alive.
// Shape convention everywhere: outermost dimension first, as in PyTorch
// (a Linear weight is [out_features, in_features]); GGUF's ne0-first order is reversed
// at the reader.
#pragma once

#include <array>
#include <cassert>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "tensor/dtype.h"

namespace bw {

class Shape {
 public:
  static constexpr int kMaxRank = 4;

  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) {
    assert(dims.size() <= kMaxRank);
    for (int64_t d : dims)
      dims_[rank_++] = d;
  }

  int rank() const { return rank_; }
  int64_t operator[](int i) const { return dims_[i]; }
  int64_t& operator[](int i) { return dims_[i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank_; ++i)
      n *= dims_[i];
    return n;
  }
  // The last dimension, and the product of all others.
  int64_t cols() const { return rank_ == 0 ? 1 : dims_[rank_ - 1]; }
  int64_t rows() const { return cols() == 0 ? 0 : numel() / cols(); }
  void push_back(int64_t d) {
    assert(rank_ < kMaxRank);
    dims_[rank_++] = d;
  }
  bool operator==(const Shape& o) const {
    if (rank_ != o.rank_) return false;
    for (int i = 0; i < rank_; ++i) {
      if (dims_[i] != o.dims_[i]) return false;
    }
    return true;
  }
  std::string to_string() const;  // "[2, 3]"

 private:
  std::array<int64_t, kMaxRank> dims_{};
  int rank_ = 0;
};

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  Shape shape;

  TensorView() = default;
  TensorView(void* d, DType t, Shape s) : data(d), dtype(t), shape(s) {}
  TensorView(const void* d, DType t, Shape s) : data(const_cast<void*>(d)), dtype(t), shape(s) {}

  int64_t numel() const { return shape.numel(); }
  // Bytes spanned; 0 when the element count does not fill whole quantisation blocks.
  uint64_t nbytes() const { return dtype_bytes(dtype, static_cast<uint64_t>(numel())).value_or(0); }
  int64_t dim(int i) const { return shape[i]; }
  int rank() const { return shape.rank(); }
  bool empty() const { return data == nullptr; }

  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }

  // Same memory, another shape with the same element count.
  TensorView reshaped(Shape s) const {
    assert(s.numel() == numel());
    return TensorView(data, dtype, s);
  }
  // Rows [begin, end) along the first dimension.
  TensorView slice_rows(int64_t begin, int64_t end) const;
};

}  // namespace bw
