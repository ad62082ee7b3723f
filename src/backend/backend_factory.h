// Creates the backend named on the command line ("cpu", "cuda", "cuda:N").
// The caller owns the returned backend. Thread-safety: a pure function.
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"
#include "common/status.h"

namespace bw {

// "cpu" gives a CpuBackend with `num_threads` threads (0: every hardware thread).
// "cuda" / "cuda:N" gives a CudaBackend on device N (0 by default) whose activations are
// f32 when `weight_dtype` (the dtype the weights will be loaded in) is f32 ("f32 mode")
// and bf16 otherwise; Unavailable when there is no such device, Unimplemented in a build
// without CUDA. Anything else is InvalidArgument naming the accepted values.
Result<std::unique_ptr<Backend>> create_backend(const std::string& device, int num_threads,
                                                DType weight_dtype = DType::kF32);

// The activation dtype a CUDA backend uses for weights of `weight_dtype`.
DType cuda_activation_dtype(DType weight_dtype);

}  // namespace bw
