#include "model/presets.h"

#include <fmt/ranges.h>

namespace bw {

namespace {

ModelConfig qwen2(int64_t vocab, int64_t hidden, int64_t ffn, int64_t layers, int64_t heads, int64_t kv_heads,
                  bool tied, float theta, int64_t max_pos) {
  ModelConfig c;
  c.architecture = "qwen2";
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = ffn;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.rms_norm_eps = 1e-6f;
  c.rope.theta = theta;
  c.rope.rotary_dim = static_cast<int>(c.head_dim);
  c.max_position_embeddings = max_pos;
  c.tie_word_embeddings = tied;
  c.attention_bias = true;
  c.weight_dtype = DType::kBF16;
  return c;
}

ModelConfig llama(int64_t vocab, int64_t hidden, int64_t ffn, int64_t layers, int64_t heads, int64_t kv_heads,
                  bool tied, float theta, int64_t max_pos) {
  ModelConfig c = qwen2(vocab, hidden, ffn, layers, heads, kv_heads, tied, theta, max_pos);
  c.architecture = "llama";
  c.attention_bias = false;
  c.rms_norm_eps = 1e-5f;
  return c;
}

void llama3_scaling(ModelConfig& c, float factor, int64_t original) {
  c.rope.scaling.type = RopeScaling::Type::kLlama3;
  c.rope.scaling.factor = factor;
  c.rope.scaling.low_freq_factor = 1.0f;
  c.rope.scaling.high_freq_factor = 4.0f;
  c.rope.scaling.original_max_position = original;
}

std::vector<ModelPreset> build_presets() {
  std::vector<ModelPreset> presets;
  {
    ModelConfig c = qwen2(151936, 1536, 8960, 28, 12, 2, false, 10000.0f, 131072);
    c.bos_token_id = 151646;
    c.eos_token_ids = {151643};
    presets.push_back(
        {"deepseek-r1-distill-qwen-1.5b", "DeepSeek-R1-Distill-Qwen-1.5B shapes (Qwen2, 1.78B params)", c});
  }
  {
    ModelConfig c = qwen2(152064, 3584, 18944, 28, 28, 4, false, 10000.0f, 131072);
    c.bos_token_id = 151646;
    c.eos_token_ids = {151643};
    presets.push_back({"deepseek-r1-distill-qwen-7b", "DeepSeek-R1-Distill-Qwen-7B shapes (Qwen2, 7.6B params)", c});
  }
  {
    ModelConfig c = llama(128256, 4096, 14336, 32, 32, 8, false, 500000.0f, 131072);
    llama3_scaling(c, 8.0f, 8192);
    c.bos_token_id = 128000;
    c.eos_token_ids = {128001};
    presets.push_back(
        {"deepseek-r1-distill-llama-8b", "DeepSeek-R1-Distill-Llama-8B shapes (Llama 3.1, 8.0B params)", c});
  }
  {
    ModelConfig c = llama(512, 64, 160, 2, 4, 2, false, 10000.0f, 512);
    llama3_scaling(c, 8.0f, 64);
    c.bos_token_id = 1;
    c.eos_token_ids = {2};
    c.weight_dtype = DType::kF32;
    presets.push_back({"tiny-llama", "tiny Llama for tests: GQA 4/2, Llama-3 rope scaling, untied", c});
  }
  {
    ModelConfig c = qwen2(512, 64, 160, 2, 4, 2, true, 1000000.0f, 512);
    c.bos_token_id = 1;
    c.eos_token_ids = {2};
    c.weight_dtype = DType::kF32;
    presets.push_back({"tiny-qwen2", "tiny Qwen2 for tests: GQA 4/2, QKV bias, tied embeddings", c});
  }
  return presets;
}

}  // namespace

const std::vector<ModelPreset>& model_presets() {
  static const std::vector<ModelPreset> presets = build_presets();
  return presets;
}

Result<ModelConfig> find_model_preset(const std::string& name) {
  std::vector<std::string> names;
  for (const auto& p : model_presets()) {
    if (p.name == name) return p.config;
    names.push_back(p.name);
  }
  return InvalidArgument("unknown preset '{}' (known: {})", name, fmt::join(names, ", "));
}

}  // namespace bw
