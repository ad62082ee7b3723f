#include "backend/backend_factory.h"

#include <algorithm>
#include <cctype>

#include "backend/cpu/cpu_backend.h"

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

Result<std::unique_ptr<Backend>> create_backend(const std::string& device, int num_threads) {
  if (num_threads < 0) {
    return InvalidArgument("backend: num_threads {} must be >= 0 (0 uses every hardware thread)", num_threads);
  }
  if (device == "cpu") return std::unique_ptr<Backend>(std::make_unique<CpuBackend>(num_threads));
  if (is_cuda_device(device)) {
    return Unimplemented("the CUDA backend is not built yet (issue: CUDA backend); use --device cpu");
  }
  return InvalidArgument("unknown device '{}'; accepted values: cpu, cuda, cuda:N", device);
}

}  // namespace bw
