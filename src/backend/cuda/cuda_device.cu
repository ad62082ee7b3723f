#include "backend/cuda/cuda_device.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace bw::cuda {

namespace {

Status cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  return Unavailable("{} failed at {}:{}: {}", what, file, line, cudaGetErrorString(err));
}

#define BW_CUDA_RETURN_IF_ERROR(call)                                                  \
  do {                                                                                 \
    cudaError_t bw_err_ = (call);                                                      \
    if (bw_err_ != cudaSuccess) return cuda_error(bw_err_, #call, __FILE__, __LINE__); \
  } while (0)

__global__ void f32_to_bf16_kernel(const float* src, __nv_bfloat16* dst, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}

}  // namespace

Result<std::vector<DeviceInfo>> list_devices() {
  int count = 0;
  BW_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&count));
  std::vector<DeviceInfo> devices;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    BW_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, i));
    DeviceInfo info;
    info.index = i;
    info.name = prop.name;
    info.compute_capability_major = prop.major;
    info.compute_capability_minor = prop.minor;
    info.total_memory_bytes = prop.totalGlobalMem;
    info.multiprocessor_count = prop.multiProcessorCount;
    BW_CUDA_RETURN_IF_ERROR(cudaSetDevice(i));
    size_t free_bytes = 0, total_bytes = 0;
    BW_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
    info.free_memory_bytes = free_bytes;
    devices.push_back(std::move(info));
  }
  return devices;
}

Status convert_f32_to_bf16_on_device(int device, const float* host_src, uint16_t* host_dst, int64_t n) {
  if (n <= 0) return OkStatus();
  BW_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  float* d_src = nullptr;
  __nv_bfloat16* d_dst = nullptr;
  BW_CUDA_RETURN_IF_ERROR(cudaMalloc(&d_src, n * sizeof(float)));
  cudaError_t err = cudaMalloc(&d_dst, n * sizeof(__nv_bfloat16));
  if (err == cudaSuccess) err = cudaMemcpy(d_src, host_src, n * sizeof(float), cudaMemcpyHostToDevice);
  if (err == cudaSuccess) {
    const int threads = 256;
    const int64_t blocks = (n + threads - 1) / threads;
    f32_to_bf16_kernel<<<static_cast<unsigned>(blocks), threads>>>(d_src, d_dst, n);
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) err = cudaMemcpy(host_dst, d_dst, n * sizeof(uint16_t), cudaMemcpyDeviceToHost);
  cudaFree(d_src);
  cudaFree(d_dst);
  if (err != cudaSuccess) return cuda_error(err, "f32_to_bf16 on device", __FILE__, __LINE__);
  return OkStatus();
}

}  // namespace bw::cuda
