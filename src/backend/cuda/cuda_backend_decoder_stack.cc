// CudaBackend::decoder_stack: a batch-1 decode step as one persistent kernel
// (cuda_decoder_stack.cu). This file checks that the step is one the kernel takes, keeps
// the kernel's device-side tables (the layers' weight and cache pointers, the split
// partials, the arrival counters) and launches it.
//
// Anything the kernel does not take (f32 or f16 tensors, a partial rotary dimension,
// head_dim other than 64 / 128, more than 8 query heads per KV head, caches of different
// layouts across layers, a context longer than the kernel is faster for) makes
// fuses_decoder_stack() false, and the model runs the step op by op, where every op
// checks and reports its own errors.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_kernels.h"

namespace bw {

namespace {

// t is bf16 with exactly these dimensions and has 16-byte aligned data (the kernel reads
// rows in 16-byte pieces).
bool is_bf16(const TensorView& t, std::initializer_list<int64_t> dims) {
  if (t.dtype != DType::kBF16 || t.rank() != static_cast<int>(dims.size()) || t.data == nullptr ||
      reinterpret_cast<uintptr_t>(t.data) % 16 != 0) {
    return false;
  }
  int i = 0;
  for (int64_t d : dims)
    if (t.dim(i++) != d) return false;
  return true;
}

bool is_i32(const TensorView& t, int64_t n) {
  return t.dtype == DType::kI32 && t.rank() == 1 && t.dim(0) == n && t.data != nullptr;
}

}  // namespace

bool CudaBackend::stack_args(const DecoderStack& s, cuda::DecoderStackArgs* out) const {
  if (!decoder_stack_ || !decoder_stack_on_ || s.layers.empty() || s.layers.size() != s.cache.size() ||
      s.meta == nullptr) {
    return false;
  }
  const AttentionParams& at = s.attn;
  const int64_t H = s.residual.rank() == 2 ? s.residual.dim(1) : 0;
  const int64_t D = at.head_dim, Hq = at.num_heads, Hkv = at.num_kv_heads;
  const int64_t F = s.act.rank() == 2 ? s.act.dim(1) : 0;
  const int64_t V = s.lm_head.rank() == 2 ? s.lm_head.dim(0) : 0;
  if (Hkv < 1 || Hq % Hkv != 0 || s.rope.rotary_dim != D) return false;
  const int64_t qkv_rows = (Hq + 2 * Hkv) * D;
  if (!is_bf16(s.residual, {1, H}) || !is_bf16(s.qkv, {1, qkv_rows}) || !is_bf16(s.attn_out, {1, Hq * D}) ||
      !is_bf16(s.act, {1, F}) || !is_bf16(s.final_norm, {H}) || !is_bf16(s.lm_head, {V, H})) {
    return false;
  }
  const AttentionMetadata& m = *s.meta;
  if (m.num_seqs != 1 || !is_i32(m.positions, 1) || !is_i32(m.slot_mapping, 1) || !is_i32(m.kv_lens, 1) ||
      m.block_tables.dtype != DType::kI32 || m.block_tables.rank() != 2 || m.block_tables.dim(0) != 1 ||
      m.block_tables.data == nullptr) {
    return false;
  }
  const TensorView& k0 = s.cache[0].k;
  if (k0.rank() != 4) return false;
  const int64_t num_blocks = k0.dim(0), block_size = k0.dim(1);
  for (size_t l = 0; l < s.layers.size(); ++l) {
    const DecoderLayerWeights& w = s.layers[l];
    const KvCacheLayer& c = s.cache[l];
    if (!is_bf16(w.attn_norm, {H}) || !is_bf16(w.qkv, {qkv_rows, H}) || !is_bf16(w.o_proj, {H, Hq * D}) ||
        !is_bf16(w.ffn_norm, {H}) || !is_bf16(w.gate_up, {2 * F, H}) || !is_bf16(w.down, {H, F})) {
      return false;
    }
    if (!w.qkv_bias.empty() && !is_bf16(w.qkv_bias, {qkv_rows})) return false;
    if (!is_bf16(c.k, {num_blocks, block_size, Hkv, D}) || !is_bf16(c.v, {num_blocks, block_size, Hkv, D})) {
      return false;
    }
  }
  cuda::DecoderStackArgs& a = *out;
  a.num_layers = static_cast<int>(s.layers.size());
  a.hidden = static_cast<int>(H);
  a.num_heads = static_cast<int>(Hq);
  a.num_kv_heads = static_cast<int>(Hkv);
  a.head_dim = static_cast<int>(D);
  a.intermediate = static_cast<int>(F);
  a.vocab = V;
  a.eps = s.eps;
  a.scale = at.scale;
  a.residual = s.residual.data;
  a.qkv = s.qkv.data;
  a.attn_out = s.attn_out.data;
  a.act = s.act.data;
  a.final_norm = s.final_norm.data;
  a.lm_head = s.lm_head.data;
  a.positions = m.positions.as<const int32_t>();
  a.slots = m.slot_mapping.as<const int32_t>();
  a.kv_lens = m.kv_lens.as<const int32_t>();
  a.block_tables = m.block_tables.as<const int32_t>();
  a.table_width = static_cast<int>(m.block_tables.dim(1));
  a.block_size = static_cast<int>(block_size);
  a.num_blocks = num_blocks;
  a.error_flag = error_flag_;
  return cuda::decoder_stack_supported(a, num_sms_);  // the kernel's own shape limits
}

bool CudaBackend::fuses_decoder_stack(const DecoderStack& stack) const {
  cuda::DecoderStackArgs a;
  return stack_args(stack, &a);
}

Status CudaBackend::decoder_stack(TensorView logits, const DecoderStack& stack) {
  static constexpr const char* kOp = "decoder_stack";
  RETURN_IF_ERROR(sticky_);
  cuda::DecoderStackArgs a;
  if (!stack_args(stack, &a)) {
    return InvalidArgument("{}: this step is not one the fused kernel takes (see fuses_decoder_stack)", kOp);
  }
  if (logits.dtype != DType::kF32 || logits.rank() != 2 || logits.dim(0) != 1 || logits.dim(1) != a.vocab ||
      logits.data == nullptr || reinterpret_cast<uintptr_t>(logits.data) % 16 != 0) {
    return InvalidArgument("{}: logits {} must be [1, {}] f32 (16-byte aligned)", kOp, logits.shape.to_string(),
                           a.vocab);
  }
  a.logits = logits.as<float>();
  RETURN_IF_ERROR(upload_inv_freq(stack.rope));
  a.inv_freq = static_cast<const float*>(inv_freq_dev_);

  // The layer table: weights and caches do not move between steps, so this uploads once
  // (while not capturing) and every graph replay reads the same table.
  std::vector<cuda::DecoderStackLayer> layers(stack.layers.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    const DecoderLayerWeights& w = stack.layers[l];
    layers[l] = {w.attn_norm.data,
                 w.qkv.data,
                 w.qkv_bias.empty() ? nullptr : w.qkv_bias.data,
                 w.o_proj.data,
                 w.ffn_norm.data,
                 w.gate_up.data,
                 w.down.data,
                 stack.cache[l].k.data,
                 stack.cache[l].v.data};
  }
  const size_t table_bytes = layers.size() * sizeof(cuda::DecoderStackLayer);
  const bool same = layers.size() == stack_layers_host_.size() &&
                    std::equal(layers.begin(), layers.end(), stack_layers_host_.begin(),
                               [](const auto& x, const auto& y) { return std::memcmp(&x, &y, sizeof(x)) == 0; });
  if (!same) {
    RETURN_IF_ERROR(not_while_capturing("uploading the decoder stack's layer table"));
    RETURN_IF_ERROR(ensure_scratch(&stack_layers_, &stack_layers_capacity_, table_bytes));
    ++scratch_epoch_;  // graphs captured with the old table would read the new one
    const cudaError_t err = cudaMemcpyAsync(stack_layers_, layers.data(), table_bytes, cudaMemcpyHostToDevice, stream_);
    if (err != cudaSuccess) return fail(static_cast<int>(err), "cudaMemcpyAsync (layer table)", __FILE__, __LINE__);
    stack_layers_host_ = std::move(layers);  // the copy is staged; the vector is the cache key
  }
  a.layers = static_cast<const cuda::DecoderStackLayer*>(stack_layers_);

  const auto partial_bytes = static_cast<size_t>(cuda::decoder_stack_partial_floats(a, num_sms_)) * sizeof(float);
  RETURN_IF_ERROR(ensure_scratch(&stack_partials_, &stack_partials_capacity_, partial_bytes));
  a.partials = static_cast<float*>(stack_partials_);
  const auto counter_bytes = static_cast<size_t>(cuda::decoder_stack_counters(a)) * sizeof(int32_t);
  if (stack_counters_capacity_ < counter_bytes) {
    RETURN_IF_ERROR(ensure_scratch(&stack_counters_, &stack_counters_capacity_, counter_bytes));
    const cudaError_t err = cudaMemsetAsync(stack_counters_, 0, stack_counters_capacity_, stream_);
    if (err != cudaSuccess) return fail(static_cast<int>(err), "cudaMemsetAsync (stack counters)", __FILE__, __LINE__);
  }
  a.counters = static_cast<int*>(stack_counters_);
  static const int debug = [] {  // measurement aid (cuda_decoder_stack.cu), read once
    const char* v = std::getenv("BW_CUDA_STACK_DEBUG");
    return v != nullptr ? std::atoi(v) : 0;
  }();
  a.debug = debug;
  return check_launch(cuda::launch_decoder_stack(a, num_sms_, stream_), kOp);
}

}  // namespace bw
