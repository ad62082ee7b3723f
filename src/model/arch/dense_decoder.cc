#include "model/arch/dense_decoder.h"

#include <cmath>

namespace bw {

namespace {

std::string layer_name(int64_t layer, const char* suffix) { return fmt::format("model.layers.{}.{}", layer, suffix); }

}  // namespace

Result<DenseDecoderWeights> load_dense_decoder_weights(const Checkpoint& checkpoint, Backend& backend,
                                                       const WeightLoadOptions& options, bool unpermute_qk) {
  const ModelConfig& c = checkpoint.config();
  const DType act = backend.activation_dtype();
  WeightLoader loader(checkpoint, backend, options);
  DenseDecoderWeights w;
  const int64_t H = c.hidden_size, F = c.intermediate_size, D = c.head_dim;
  const int64_t q_rows = c.num_heads * D, kv_rows = c.num_kv_heads * D;

  ASSIGN_OR_RETURN(w.embed, loader.load_matmul_weight("model.embed_tokens.weight", {c.vocab_size, H}));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    DenseDecoderLayer layer;
    ASSIGN_OR_RETURN(layer.attn_norm, loader.load(layer_name(l, "input_layernorm.weight"), {H}, act));
    const int64_t q_heads = unpermute_qk ? c.num_heads : 0;
    const int64_t k_heads = unpermute_qk ? c.num_kv_heads : 0;
    const StackPart qkv[] = {
        {layer_name(l, "self_attn.q_proj.weight"), {q_rows, H}, q_heads},
        {layer_name(l, "self_attn.k_proj.weight"), {kv_rows, H}, k_heads},
        {layer_name(l, "self_attn.v_proj.weight"), {kv_rows, H}, 0},
    };
    ASSIGN_OR_RETURN(layer.qkv, loader.load_stacked(qkv, std::nullopt));
    if (c.attention_bias) {
      const StackPart bias[] = {
          {layer_name(l, "self_attn.q_proj.bias"), {q_rows}, q_heads},
          {layer_name(l, "self_attn.k_proj.bias"), {kv_rows}, k_heads},
          {layer_name(l, "self_attn.v_proj.bias"), {kv_rows}, 0},
      };
      ASSIGN_OR_RETURN(layer.qkv_bias, loader.load_stacked(bias, act));
    }
    ASSIGN_OR_RETURN(layer.o_proj, loader.load_matmul_weight(layer_name(l, "self_attn.o_proj.weight"), {H, q_rows}));
    ASSIGN_OR_RETURN(layer.ffn_norm, loader.load(layer_name(l, "post_attention_layernorm.weight"), {H}, act));
    const StackPart gate_up[] = {
        {layer_name(l, "mlp.gate_proj.weight"), {F, H}, 0},
        {layer_name(l, "mlp.up_proj.weight"), {F, H}, 0},
    };
    ASSIGN_OR_RETURN(layer.gate_up, loader.load_stacked(gate_up, std::nullopt));
    ASSIGN_OR_RETURN(layer.down, loader.load_matmul_weight(layer_name(l, "mlp.down_proj.weight"), {H, F}));
    w.layers.push_back(layer);
  }
  ASSIGN_OR_RETURN(w.final_norm, loader.load("model.norm.weight", {H}, act));
  // A checkpoint may store lm_head even when tied (some converters do); use it if present.
  if (checkpoint.find("lm_head.weight") != nullptr) {
    ASSIGN_OR_RETURN(w.lm_head, loader.load_matmul_weight("lm_head.weight", {c.vocab_size, H}));
  } else if (c.tie_word_embeddings) {
    w.lm_head = w.embed;
  } else {
    return DataLoss("{}: missing tensor 'lm_head.weight' and tie_word_embeddings is false", checkpoint.path());
  }
  w.bytes = loader.bytes_loaded();
  w.buffers = loader.take_buffers();
  return w;
}

DenseDecoder::DenseDecoder(ModelConfig config, DenseDecoderWeights weights, Backend& backend)
    : config_(std::move(config)), weights_(std::move(weights)), backend_(backend) {
  attention_.num_heads = static_cast<int>(config_.num_heads);
  attention_.num_kv_heads = static_cast<int>(config_.num_kv_heads);
  attention_.head_dim = static_cast<int>(config_.head_dim);
  attention_.scale = 1.0f / std::sqrt(static_cast<float>(config_.head_dim));
  rope_ = config_.rope;
}

Status DenseDecoder::ensure_workspace(int64_t num_tokens, int64_t num_logits) {
  const int64_t rows = std::max(num_tokens, num_logits);
  if (rows <= workspace_tokens_) return OkStatus();
  ++workspace_epoch_;  // even if an allocation below fails, some buffers may have moved
  const DType act = backend_.activation_dtype();
  const int64_t H = config_.hidden_size, F = config_.intermediate_size;
  auto alloc = [&](DeviceBuffer* buf, int64_t cols) -> Status {
    ASSIGN_OR_RETURN(*buf, backend_.allocate(*dtype_bytes(act, static_cast<uint64_t>(rows * cols))));
    return OkStatus();
  };
  RETURN_IF_ERROR(alloc(&residual_, H));
  RETURN_IF_ERROR(alloc(&hidden_, H));
  RETURN_IF_ERROR(alloc(&qkv_, config_.qkv_size()));
  RETURN_IF_ERROR(alloc(&attn_out_, config_.num_heads * config_.head_dim));
  RETURN_IF_ERROR(alloc(&proj_out_, H));
  RETURN_IF_ERROR(alloc(&gate_up_, 2 * F));
  RETURN_IF_ERROR(alloc(&act_, F));
  RETURN_IF_ERROR(alloc(&last_, H));
  workspace_tokens_ = rows;
  return OkStatus();
}

Status DenseDecoder::forward(const ForwardInput& input, std::span<const KvCacheLayer> kv_cache, TensorView logits) {
  const int64_t T = input.token_ids.numel();
  const int64_t N = input.logits_indices.numel();
  if (static_cast<int64_t>(kv_cache.size()) != config_.num_layers) {
    return InvalidArgument("forward: {} KV cache layers for a model of {} layers", kv_cache.size(), config_.num_layers);
  }
  if (logits.rank() != 2 || logits.dim(0) != N || logits.dim(1) != config_.vocab_size) {
    return InvalidArgument("forward: logits {} must be [{}, {}]", logits.shape.to_string(), N, config_.vocab_size);
  }
  if (T == 0) return InvalidArgument("forward: empty batch");
  RETURN_IF_ERROR(ensure_workspace(T, N));
  const DType act = backend_.activation_dtype();
  const int64_t H = config_.hidden_size, F = config_.intermediate_size;
  TensorView residual = residual_.view(act, {T, H});  // the residual stream
  TensorView hidden = hidden_.view(act, {T, H});      // normed input of a projection
  TensorView qkv = qkv_.view(act, {T, config_.qkv_size()});
  TensorView attn_out = attn_out_.view(act, {T, config_.num_heads * config_.head_dim});
  TensorView proj_out = proj_out_.view(act, {T, H});
  TensorView gate_up = gate_up_.view(act, {T, 2 * F});
  TensorView mlp_act = act_.view(act, {T, F});
  TensorView last = last_.view(act, {N, H});
  const float eps = config_.rms_norm_eps;

  RETURN_IF_ERROR(backend_.embedding(residual, weights_.embed, input.token_ids));
  if (T == 1 && N == 1) {  // a decode step of one sequence: the backend may run it whole
    DecoderStack stack;
    stack.layers = weights_.layers;
    stack.cache = kv_cache;
    stack.final_norm = weights_.final_norm;
    stack.lm_head = weights_.lm_head;
    stack.eps = eps;
    stack.attn = attention_;
    stack.rope = rope_;
    stack.meta = &input.attention;
    stack.residual = residual;
    stack.qkv = qkv;
    stack.attn_out = attn_out;
    stack.act = mlp_act;
    if (backend_.fuses_decoder_stack(stack)) return backend_.decoder_stack(logits, stack);
  }
  for (size_t l = 0; l < weights_.layers.size(); ++l) {
    const DenseDecoderLayer& w = weights_.layers[l];
    // The residual stream is updated in place by the output projections (matmul_add); each
    // projection that follows a norm takes the norm as its input (hidden is scratch).
    const NormedInput attn_in{residual, w.attn_norm, eps, hidden};
    RETURN_IF_ERROR(backend_.norm_qkv_rope_write_kv(qkv, attn_in, w.qkv, w.qkv_bias, attention_, rope_, input.attention,
                                                    kv_cache[l]));
    RETURN_IF_ERROR(backend_.paged_attention(attn_out, qkv, attention_, input.attention, kv_cache[l]));
    RETURN_IF_ERROR(backend_.matmul_add(residual, proj_out, attn_out, w.o_proj));
    const NormedInput ffn_in{residual, w.ffn_norm, eps, hidden};
    RETURN_IF_ERROR(backend_.norm_gate_up_silu_mul(mlp_act, gate_up, ffn_in, w.gate_up));
    RETURN_IF_ERROR(backend_.matmul_add(residual, proj_out, mlp_act, w.down));
  }
  if (N == 0) return OkStatus();  // a step of prefill chunks that sample nothing
  RETURN_IF_ERROR(backend_.rms_norm(hidden, residual, weights_.final_norm, eps));
  // Only the requested rows reach the (large) LM head.
  RETURN_IF_ERROR(backend_.embedding(last, hidden, input.logits_indices));
  RETURN_IF_ERROR(backend_.matmul(logits, last, weights_.lm_head, TensorView()));
  return OkStatus();
}

}  // namespace bw
