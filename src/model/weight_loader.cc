#include "model/weight_loader.h"

#include <cstring>

#include "tensor/quant.h"

namespace bw {

namespace {

// Undoes llama.cpp's permutation of Q/K rows: within each head, stored row 2i + h holds
// Hugging Face row h * (head_dim / 2) + i.
void unpermute_rows(const float* src, float* dst, int64_t heads, int64_t rows, int64_t cols) {
  const int64_t head_dim = rows / heads;
  const int64_t half = head_dim / 2;
  for (int64_t head = 0; head < heads; ++head) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t h = 0; h < 2; ++h) {
        const int64_t stored = head * head_dim + 2 * i + h;
        const int64_t hf = head * head_dim + h * half + i;
        std::memcpy(dst + hf * cols, src + stored * cols, static_cast<size_t>(cols) * sizeof(float));
      }
    }
  }
}

void from_f32(const float* src, DType dtype, void* dst, int64_t n) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      break;
    case DType::kF16:
      convert_f32_to_f16(src, static_cast<uint16_t*>(dst), n);
      break;
    case DType::kBF16:
      convert_f32_to_bf16(src, static_cast<uint16_t*>(dst), n);
      break;
    default:
      break;  // callers only ask for float types
  }
}

}  // namespace

WeightLoader::WeightLoader(const Checkpoint& checkpoint, Backend& backend, WeightLoadOptions options)
    : checkpoint_(checkpoint), backend_(backend), options_(options) {}

DType WeightLoader::matmul_dtype(std::span<const TensorEntry* const> entries) const {
  if (options_.weight_dtype) return *options_.weight_dtype;
  const DType first = entries.empty() ? DType::kF32 : entries[0]->dtype;
  for (const TensorEntry* e : entries) {
    if (e->dtype != first || !is_float(e->dtype)) return DType::kF32;
  }
  return first;
}

Result<TensorView> WeightLoader::load(const std::string& hf_name, Shape expected_shape, DType dtype) {
  StackPart part{hf_name, expected_shape, 0};
  return load_stacked(std::span<const StackPart>(&part, 1), dtype);
}

Result<TensorView> WeightLoader::load_matmul_weight(const std::string& hf_name, Shape expected_shape) {
  StackPart part{hf_name, expected_shape, 0};
  return load_stacked(std::span<const StackPart>(&part, 1), std::nullopt);
}

Result<TensorView> WeightLoader::load_stacked(std::span<const StackPart> parts, std::optional<DType> dtype) {
  if (parts.empty()) return Internal("load_stacked: no parts");
  std::vector<const TensorEntry*> entries;
  int64_t total_rows = 0;
  for (const StackPart& p : parts) {
    ASSIGN_OR_RETURN(const TensorEntry* e, checkpoint_.require(p.hf_name));
    // GGUF stores 1-D tensors and Hugging Face too; compare element-wise shapes exactly.
    if (!(e->shape == p.expected_shape)) {
      return DataLoss("{}: tensor '{}' has shape {}, expected {}", checkpoint_.path(), p.hf_name, e->shape.to_string(),
                      p.expected_shape.to_string());
    }
    bool stacks = p.expected_shape.rank() == parts[0].expected_shape.rank();
    for (int d = 1; stacks && d < p.expected_shape.rank(); ++d) {
      stacks = p.expected_shape[d] == parts[0].expected_shape[d];
    }
    if (!stacks) {
      return Internal("load_stacked: parts {} and {} do not stack", parts[0].hf_name, p.hf_name);
    }
    if (p.unpermute_heads > 0 && (p.expected_shape[0] % (2 * p.unpermute_heads) != 0)) {
      return DataLoss("{}: tensor '{}' rows {} do not split into {} heads of even size", checkpoint_.path(), p.hf_name,
                      p.expected_shape[0], p.unpermute_heads);
    }
    entries.push_back(e);
    total_rows += p.expected_shape[0];
  }
  const DType target = dtype.value_or(matmul_dtype(entries));
  Shape out_shape = parts[0].expected_shape;
  out_shape[0] = total_rows;
  const auto out_bytes = dtype_bytes(target, static_cast<uint64_t>(out_shape.numel()));
  if (!out_bytes)
    return Internal("load_stacked: {} elements of {} do not fill blocks", out_shape.numel(), dtype_name(target));

  ASSIGN_OR_RETURN(DeviceBuffer buffer, backend_.allocate(*out_bytes));
  std::vector<uint8_t> staging;
  uint8_t* out = static_cast<uint8_t*>(buffer.data());
  if (!backend_.is_host_memory()) {
    staging.resize(*out_bytes);
    out = staging.data();
  }

  std::vector<float> f32;
  std::vector<float> permuted;
  uint64_t offset = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const TensorEntry* e = entries[i];
    const int64_t n = e->shape.numel();
    const uint64_t part_bytes = dtype_bytes(target, static_cast<uint64_t>(n)).value_or(0);
    if (e->dtype == target && parts[i].unpermute_heads == 0) {
      std::memcpy(out + offset, e->data, part_bytes);
    } else {
      f32.resize(static_cast<size_t>(n));
      RETURN_IF_ERROR(convert_to_f32(e->dtype, e->data, e->nbytes, f32.data(), n, options_.pool)
                          .with_context(fmt::format("{}: tensor '{}'", checkpoint_.path(), parts[i].hf_name)));
      const float* src = f32.data();
      if (parts[i].unpermute_heads > 0) {
        permuted.resize(f32.size());
        unpermute_rows(f32.data(), permuted.data(), parts[i].unpermute_heads, e->shape[0], n / e->shape[0]);
        src = permuted.data();
      }
      from_f32(src, target, out + offset, n);
    }
    offset += part_bytes;
  }
  if (!staging.empty()) RETURN_IF_ERROR(backend_.copy_to_device(buffer.data(), staging.data(), staging.size()));
  bytes_loaded_ += *out_bytes;
  TensorView view = buffer.view(target, out_shape);
  buffers_.push_back(std::move(buffer));
  return view;
}

}  // namespace bw
