#include "backend/backend_factory.h"

#include <algorithm>
#include <cctype>

#include "backend/cpu/cpu_backend.h"
#if defined(BW_HAVE_CUDA)
#include "backend/cuda/cuda_backend.h"
#endif

namespace bw {

namespace {

// "cuda" or "cuda:<digits>".
bool is_cuda_device(const std::string& device) {
  if (device == "cuda") return true;
  constexpr std::string_view kPrefix = "cuda:";
  if (device.size() <= kPrefix.size() || device.compare(0, kPrefix.size(), kPrefix) != 0) return false;
  return std::all_of(device.begin() + static_cast<std::ptrdiff_t>(kPrefix.size()), device.end(),
                     [](unsigned char c) { return std::isdigit(c) != 0; });
}

}  // namespace

DType cuda_activation_dtype(DType weight_dtype) { return weight_dtype == DType::kF32 ? DType::kF32 : DType::kBF16; }

Result<std::unique_ptr<Backend>> create_backend(const std::string& device, int num_threads, DType weight_dtype) {
  if (num_threads < 0) {
    return InvalidArgument("backend: num_threads {} must be >= 0 (0 uses every hardware thread)", num_threads);
  }
  if (device == "cpu") return std::unique_ptr<Backend>(std::make_unique<CpuBackend>(num_threads));
  if (is_cuda_device(device)) {
#if defined(BW_HAVE_CUDA)
    CudaBackendOptions options;
    if (device.size() > 5) {
      const std::string index = device.substr(5);
      if (index.size() > 4) return InvalidArgument("unknown device '{}': device index too large", device);
      options.device = std::stoi(index);
    }
    options.activation_dtype = cuda_activation_dtype(weight_dtype);
    ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> backend, CudaBackend::create(options));
    return std::unique_ptr<Backend>(std::move(backend));
#else
    (void)weight_dtype;
    return Unimplemented("this build has no CUDA backend (configure with -DBW_CUDA=ON); use --device cpu");
#endif
  }
  return InvalidArgument("unknown device '{}'; accepted values: cpu, cuda, cuda:N", device);
}

}  // namespace bw
