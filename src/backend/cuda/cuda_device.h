// CUDA device discovery and the first device kernels (dtype conversion). The full CUDA
// backend (issue: CUDA backend) builds on these. Compiled whenever nvcc is present; on a
// machine without a GPU every call returns Unavailable instead of failing to link.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace bw::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int compute_capability_major = 0;
  int compute_capability_minor = 0;
  uint64_t total_memory_bytes = 0;
  uint64_t free_memory_bytes = 0;
  int multiprocessor_count = 0;
};

// Every visible CUDA device; Unavailable when there is no driver or no device.
Result<std::vector<DeviceInfo>> list_devices();

// Converts n f32 values to bf16 (round to nearest even) on device `device`, copying in
// and out of host memory. Matches f32_to_bf16 on the CPU bit for bit.
Status convert_f32_to_bf16_on_device(int device, const float* host_src, uint16_t* host_dst, int64_t n);

}  // namespace bw::cuda
