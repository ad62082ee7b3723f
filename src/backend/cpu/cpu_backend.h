// CpuBackend: the reference implementation of the Backend interface on host memory,
// multi-threaded with a persistent ThreadPool that the backend owns.
//
// Device memory is 64-byte aligned host memory, so copies are memcpy and ops run
// synchronously (synchronize() has nothing to wait for). Activations are f32; weights,
// embedding tables and KV caches may be f32, f16 or bf16. Every op splits its work into
// tasks that depend only on the shapes, so outputs are bit-identical for any thread count.
// The op implementations live in cpu_<family>.cc (see cpu_ops.h).
//
// Thread-safety: like every Backend, used by one thread at a time.
#pragma once

#include <string>

#include "backend/backend.h"
#include "common/thread_pool.h"

namespace bw {

class CpuBackend final : public Backend {
 public:
  // num_threads counts the calling thread; 0 uses every hardware thread.
  explicit CpuBackend(int num_threads = 0);
  ~CpuBackend() override = default;
  CpuBackend(const CpuBackend&) = delete;
  CpuBackend& operator=(const CpuBackend&) = delete;

  std::string name() const override { return "cpu"; }
  DType activation_dtype() const override { return DType::kF32; }
  bool is_host_memory() const override { return true; }
  int num_threads() const { return pool_.num_threads(); }

  // 64-byte aligned; zero bytes gives a valid (non-null) buffer of size 0.
  Result<DeviceBuffer> allocate(size_t bytes) override;
  Status copy_to_device(void* device_dst, const void* host_src, size_t bytes) override;
  Status copy_to_host(void* host_dst, const void* device_src, size_t bytes) override;
  Status copy_on_device(void* device_dst, const void* device_src, size_t bytes) override;
  Status synchronize() override { return OkStatus(); }

  Status embedding(TensorView out, const TensorView& table, const TensorView& ids) override;
  Status matmul(TensorView out, const TensorView& x, const TensorView& w, const TensorView& bias) override;
  Status rms_norm(TensorView out, const TensorView& x, const TensorView& weight, float eps) override;
  Status add_rms_norm(TensorView out, TensorView residual, const TensorView& x, const TensorView& weight,
                      float eps) override;
  Status add(TensorView out, const TensorView& a, const TensorView& b) override;
  Status rope_write_kv(TensorView qkv, const AttentionParams& attn, const RopeParams& rope,
                       const AttentionMetadata& meta, const KvCacheLayer& cache) override;
  Status paged_attention(TensorView out, const TensorView& qkv, const AttentionParams& attn,
                         const AttentionMetadata& meta, const KvCacheLayer& cache) override;
  Status silu_mul(TensorView out, const TensorView& gate_up) override;

 protected:
  void free(void* data, size_t bytes) override;

 private:
  ThreadPool pool_;
};

}  // namespace bw
