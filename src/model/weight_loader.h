// WeightLoader: copies tensors from a Checkpoint into backend memory in the dtype the
// forward pass wants: checks each shape against the config, dequantises GGUF blocks,
// converts between float types, undoes llama.cpp's Q/K row permutation, and stacks
// tensors that the forward pass multiplies as one (fused QKV, fused gate/up).
// Owns the buffers it allocates until take_buffers(). Not thread-safe.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "common/thread_pool.h"
#include "model/checkpoint.h"

namespace bw {

struct WeightLoadOptions {
  // The dtype of matmul weights on the device; nullopt keeps a float checkpoint's own
  // dtype and dequantises block-quantised tensors to f32.
  std::optional<DType> weight_dtype;
  ThreadPool* pool = nullptr;  // parallel dequantisation; may be null
};

struct StackPart {
  std::string hf_name;
  Shape expected_shape;  // the shape the checkpoint must hold
  // > 0: the rows are [heads, head_dim] in llama.cpp's adjacent-pair order (GGUF llama
  // Q/K); they are put back into Hugging Face's half-split order.
  int64_t unpermute_heads = 0;
};

class WeightLoader {
 public:
  WeightLoader(const Checkpoint& checkpoint, Backend& backend, WeightLoadOptions options);

  // One tensor of exactly `expected_shape`, as `dtype`.
  Result<TensorView> load(const std::string& hf_name, Shape expected_shape, DType dtype);
  // A matmul weight: dtype chosen by options (see WeightLoadOptions).
  Result<TensorView> load_matmul_weight(const std::string& hf_name, Shape expected_shape);
  // Parts stacked along dimension 0 into one tensor (all parts share the other dims).
  Result<TensorView> load_stacked(std::span<const StackPart> parts, std::optional<DType> dtype);

  std::vector<DeviceBuffer> take_buffers() { return std::move(buffers_); }
  uint64_t bytes_loaded() const { return bytes_loaded_; }

 private:
  DType matmul_dtype(std::span<const TensorEntry* const> entries) const;

  const Checkpoint& checkpoint_;
  Backend& backend_;
  WeightLoadOptions options_;
  std::vector<DeviceBuffer> buffers_;
  uint64_t bytes_loaded_ = 0;
};

}  // namespace bw
