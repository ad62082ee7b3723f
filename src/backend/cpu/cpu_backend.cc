#include "backend/cpu/cpu_backend.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "backend/cpu/cpu_ops.h"

namespace bw {

namespace {
constexpr size_t kAlignment = 64;
}

CpuBackend::CpuBackend(int num_threads) : pool_(num_threads) {}

Result<DeviceBuffer> CpuBackend::allocate(size_t bytes) {
  // aligned_alloc wants a multiple of the alignment; a zero-byte buffer still gets a
  // unique, valid pointer.
  const size_t rounded = bytes == 0 ? kAlignment : (bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (rounded < bytes || rounded > static_cast<size_t>(PTRDIFF_MAX)) {
    return ResourceExhausted("cpu: cannot allocate {} bytes (larger than any object can be)", bytes);
  }
  void* data = std::aligned_alloc(kAlignment, rounded);
  if (data == nullptr) return ResourceExhausted("cpu: out of host memory allocating {} bytes", bytes);
  return DeviceBuffer(this, data, bytes);
}

void CpuBackend::free(void* data, size_t /*bytes*/) { std::free(data); }

Status CpuBackend::copy_to_device(void* device_dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return OkStatus();
  if (device_dst == nullptr || host_src == nullptr) {
    return InvalidArgument("cpu: copy_to_device of {} bytes with a null pointer", bytes);
  }
  std::memcpy(device_dst, host_src, bytes);
  return OkStatus();
}

Status CpuBackend::copy_to_host(void* host_dst, const void* device_src, size_t bytes) {
  if (bytes == 0) return OkStatus();
  if (host_dst == nullptr || device_src == nullptr) {
    return InvalidArgument("cpu: copy_to_host of {} bytes with a null pointer", bytes);
  }
  std::memcpy(host_dst, device_src, bytes);
  return OkStatus();
}

Status CpuBackend::copy_on_device(void* device_dst, const void* device_src, size_t bytes) {
  if (bytes == 0) return OkStatus();
  if (device_dst == nullptr || device_src == nullptr) {
    return InvalidArgument("cpu: copy_on_device of {} bytes with a null pointer", bytes);
  }
  std::memcpy(device_dst, device_src, bytes);
  return OkStatus();
}

Status CpuBackend::embedding(TensorView out, const TensorView& table, const TensorView& ids) {
  return cpu::embedding(pool_, out, table, ids);
}

Status CpuBackend::matmul(TensorView out, const TensorView& x, const TensorView& w, const TensorView& bias) {
  return cpu::matmul(pool_, out, x, w, bias);
}

Status CpuBackend::rms_norm(TensorView out, const TensorView& x, const TensorView& weight, float eps) {
  return cpu::rms_norm(pool_, out, x, weight, eps);
}

Status CpuBackend::add_rms_norm(TensorView out, TensorView residual, const TensorView& x, const TensorView& weight,
                                float eps) {
  return cpu::add_rms_norm(pool_, out, residual, x, weight, eps);
}

Status CpuBackend::add(TensorView out, const TensorView& a, const TensorView& b) { return cpu::add(pool_, out, a, b); }

Status CpuBackend::rope_write_kv(TensorView qkv, const AttentionParams& attn, const RopeParams& rope,
                                 const AttentionMetadata& meta, const KvCacheLayer& cache) {
  return cpu::rope_write_kv(pool_, qkv, attn, rope, meta, cache);
}

Status CpuBackend::paged_attention(TensorView out, const TensorView& qkv, const AttentionParams& attn,
                                   const AttentionMetadata& meta, const KvCacheLayer& cache) {
  return cpu::paged_attention(pool_, out, qkv, attn, meta, cache);
}

Status CpuBackend::silu_mul(TensorView out, const TensorView& gate_up) { return cpu::silu_mul(pool_, out, gate_up); }

}  // namespace bw
