#include "backend/backend.h"

#include <cassert>

namespace bw {

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : backend_(other.backend_), data_(other.data_), size_(other.size_) {
  other.backend_ = nullptr;
  other.data_ = nullptr;
  other.size_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    reset();
    backend_ = other.backend_;
    data_ = other.data_;
    size_ = other.size_;
    other.backend_ = nullptr;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() { reset(); }

void DeviceBuffer::reset() {
  if (backend_ != nullptr && data_ != nullptr) backend_->free(data_, size_);
  backend_ = nullptr;
  data_ = nullptr;
  size_ = 0;
}

TensorView DeviceBuffer::view(DType dtype, Shape shape) const {
  assert(dtype_bytes(dtype, static_cast<uint64_t>(shape.numel())).value_or(UINT64_MAX) <= size_);
  return TensorView(data_, dtype, shape);
}

Status Backend::memory_info(uint64_t* /*free_bytes*/, uint64_t* /*total_bytes*/) const {
  return Unimplemented("{}: device memory information is not available", name());
}

Result<std::unique_ptr<CapturedGraph>> Backend::capture(const std::function<Status()>& /*body*/) {
  return Unimplemented("{}: graph capture is not supported", name());
}

Status Backend::norm_qkv_rope_write_kv(TensorView qkv, const NormedInput& in, const TensorView& w,
                                       const TensorView& bias, const AttentionParams& attn, const RopeParams& rope,
                                       const AttentionMetadata& meta, const KvCacheLayer& cache) {
  RETURN_IF_ERROR(rms_norm(in.scratch, in.x, in.norm_weight, in.eps));
  RETURN_IF_ERROR(matmul(qkv, in.scratch, w, bias));
  return rope_write_kv(qkv, attn, rope, meta, cache);
}

Status Backend::norm_gate_up_silu_mul(TensorView out, TensorView gate_up, const NormedInput& in, const TensorView& w) {
  RETURN_IF_ERROR(rms_norm(in.scratch, in.x, in.norm_weight, in.eps));
  RETURN_IF_ERROR(matmul(gate_up, in.scratch, w, TensorView()));
  return silu_mul(out, gate_up);
}

Status Backend::matmul_add(TensorView residual, TensorView scratch, const TensorView& x, const TensorView& w) {
  RETURN_IF_ERROR(matmul(scratch, x, w, TensorView()));
  return add(residual, residual, scratch);
}

}  // namespace bw
