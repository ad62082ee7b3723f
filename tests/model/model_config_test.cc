#include "model/model_config.h"

#include <gtest/gtest.h>

#include "model/gguf_names.h"

namespace bw {
namespace {

// The published config.json of DeepSeek-R1-Distill-Llama-8B (legacy rope keys).
constexpr const char* kLlama8B = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 128000,
  "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0,
  "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "vocab_size": 128256})";

TEST(ModelConfigTest, ParsesLegacyLlama3Config) {
  auto c = model_config_from_hf_json(kLlama8B, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->architecture, "llama");
  EXPECT_EQ(c->num_layers, 32);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->rope.rotary_dim, 128);
  EXPECT_FLOAT_EQ(c->rope.theta, 500000.0f);
  EXPECT_EQ(c->rope.scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_FLOAT_EQ(c->rope.scaling.factor, 8.0f);
  EXPECT_EQ(c->rope.scaling.original_max_position, 8192);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, 128000);
  EXPECT_EQ(c->eos_token_ids, std::vector<int32_t>{128001});
  EXPECT_EQ(c->weight_dtype, DType::kBF16);
}

TEST(ModelConfigTest, ParsesTransformers5RopeParametersAndQwen2Bias) {
  const char* json = R"({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 160,
    "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "vocab_size": 256,
    "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}, "tie_word_embeddings": true,
    "eos_token_id": [2, 5], "dtype": "float32", "use_sliding_window": false})";
  auto c = model_config_from_hf_json(json, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->architecture, "qwen2");
  EXPECT_TRUE(c->attention_bias);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_FLOAT_EQ(c->rope.theta, 1e6f);
  EXPECT_EQ(c->rope.scaling.type, RopeScaling::Type::kNone);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{2, 5}));
  EXPECT_EQ(c->head_dim, 16);
}

TEST(ModelConfigTest, ClearErrors) {
  auto bad_json = model_config_from_hf_json("{not json", "x/config.json");
  EXPECT_EQ(bad_json.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(bad_json.status().message().find("x/config.json"), std::string::npos);

  auto arch = model_config_from_hf_json(R"({"architectures": ["MambaForCausalLM"]})", "config.json");
  EXPECT_EQ(arch.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(arch.status().message().find("MambaForCausalLM"), std::string::npos);

  auto missing = model_config_from_hf_json(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64})", "c.json");
  EXPECT_EQ(missing.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(missing.status().message().find("vocab_size"), std::string::npos);

  auto wrong_type = model_config_from_hf_json(
      R"({"architectures": ["LlamaForCausalLM"], "vocab_size": "big", "hidden_size": 64})", "c.json");
  EXPECT_NE(wrong_type.status().message().find("'vocab_size' must be an integer"), std::string::npos);

  auto gqa = model_config_from_hf_json(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10,
    "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 4,
    "num_key_value_heads": 3})",
                                       "c.json");
  EXPECT_EQ(gqa.status().code(), StatusCode::kInvalidArgument);

  auto scaling = model_config_from_hf_json(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10,
    "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 4,
    "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})",
                                           "c.json");
  EXPECT_EQ(scaling.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(scaling.status().message().find("yarn"), std::string::npos);
}

TEST(ModelConfigTest, HfJsonRoundTrip) {
  auto c = model_config_from_hf_json(kLlama8B, "config.json");
  ASSERT_TRUE(c.ok());
  auto again = model_config_from_hf_json(model_config_to_hf_json(*c), "again.json");
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_EQ(again->summary(), c->summary());
}

TEST(GgufNamesTest, MapsHuggingFaceNames) {
  EXPECT_EQ(hf_to_gguf_tensor_name("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(hf_to_gguf_tensor_name("lm_head.weight"), "output.weight");
  EXPECT_EQ(hf_to_gguf_tensor_name("model.layers.17.self_attn.k_proj.bias"), "blk.17.attn_k.bias");
  EXPECT_EQ(hf_to_gguf_tensor_name("model.layers.0.mlp.down_proj.weight"), "blk.0.ffn_down.weight");
  EXPECT_FALSE(hf_to_gguf_tensor_name("model.layers.x.mlp.down_proj.weight").has_value());
  EXPECT_FALSE(hf_to_gguf_tensor_name("model.layers.1.unknown.weight").has_value());
}

}  // namespace
}  // namespace bw
