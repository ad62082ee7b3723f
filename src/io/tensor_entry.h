// TensorEntry: one tensor of a weight file (GGUF or safetensors) as its reader returns it.
//
// A plain description plus a pointer into memory the reader owns (the mapped or parsed
// file): an entry never owns its data and must not outlive the reader object it came from.
// Thread-safe to read from any number of threads.
#pragma once

#include <cstdint>
#include <string>

#include "tensor/dtype.h"
#include "tensor/tensor_view.h"

namespace bw {

struct TensorEntry {
  std::string name;
  DType dtype;
  Shape shape;                    // outermost dimension first (PyTorch order; GGUF ne0 is LAST here)
  const uint8_t* data = nullptr;  // points into the mapped/parsed file
  uint64_t nbytes = 0;
  TensorView view() const { return TensorView(data, dtype, shape); }

  int64_t numel() const { return shape.numel(); }
};

}  // namespace bw
