// Creates the backend named on the command line ("cpu", "cuda", "cuda:N").
// The caller owns the returned backend. Thread-safety: a pure function.
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"
#include "common/status.h"

namespace bw {

// "cpu" gives a CpuBackend with `num_threads` threads (0: every hardware thread).
// "cuda" / "cuda:N" is Unimplemented until the CUDA backend lands; anything else is
// InvalidArgument naming the accepted values.
Result<std::unique_ptr<Backend>> create_backend(const std::string& device, int num_threads);

}  // namespace bw
